"""Run one registered stage: open its MLflow run, call its ``run``, publish the ``StageResult``.

This is what ``memforge stage NAME`` (and so every ``dvc.yaml`` stage) executes; every stage goes through it, so
opening the run, logging the params sections the stage reads, and publishing the results happen in one place.

Under a multi-process launch (``memforge launch``: ``accelerate launch ... -m components.cli stage NAME``) every
process runs the stage, and only the main one takes the lock, opens the MLflow run (closing ghost runs) and
publishes; the others start once it holds them, and their stage gets an ``UnloggedRun``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from components.config import Params, to_dict
from components.distributed import is_main_process, wait_for_everyone
from components.stages.registry import get_stage
from components.tracking.publish import StageResult, publish


def params_sections(params: Params, sections: Iterable[str]) -> dict[str, Any]:
    """``{"memagent.reader": {...}, "model.max_context_tokens": 2048}`` for dotted section names."""
    logged: dict[str, Any] = {}
    for dotted in sections:
        value: Any = params
        for part in dotted.split("."):
            value = getattr(value, part)
        logged[dotted] = to_dict(value)
    return logged


class UnloggedRun:
    """The ``tracked`` handle of a stage in a process other than the main one of a multi-process launch: the main
    process's ``StageRun`` records the stage once, so every call here records nothing. It has ``StageRun``'s
    logging methods (no MLflow client, no run id); ``log_input_dataset`` returns the digest as ``StageRun``'s
    does."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record nothing: the main process logs the metrics."""

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        """Record nothing: the main process's trainer logs the same (reduced) step metrics."""

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Record nothing: the main process logs the params."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Record nothing: the main process tags the run."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Record nothing: the main process logs the artifacts."""

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Record nothing: the main process logs the artifacts."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Record nothing: the main process logs the artifacts."""

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Record nothing: the main process logs the figures."""

    def log_input_dataset(
        self,
        path: str | Path,
        *,
        name: str,
        context: str,
        digest: str | None = None,
        profile: Mapping[str, Any] | None = None,
    ) -> str:
        """The DVC digest of ``path`` (as ``StageRun.log_input_dataset`` returns it); the main process records it."""
        from components.tracking import dvc_digest

        return digest or dvc_digest(path)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Record nothing: the main process logs the tables."""


LOCK_DIR = ".memforge/locks"  # one lock per stage and workspace (the working directory)


def run_stage(name: str, params: Params) -> StageResult:
    """Run stage ``name`` under its MLflow run and publish what it returns; a second run of the same stage in the
    same workspace fails at once (``AlreadyRunning``, naming the pid) instead of racing the first.

    In a multi-process launch the main process does all of that; the others wait until it holds the lock and the
    run, then run the stage (its training needs every process) with an ``UnloggedRun``, and publish nothing."""
    from components.io import exclusive_lock
    from components.tracking import stage_run

    stage = get_stage(name)
    module = importlib.import_module(stage.module)
    main = is_main_process()
    with contextlib.ExitStack() as held:
        if main:
            held.enter_context(exclusive_lock(Path(LOCK_DIR) / f"{name}.lock", f"stage {name}"))
            tracked: Any = held.enter_context(
                stage_run(name, params.tracking, params_section=params_sections(params, stage.params))
            )
        else:
            tracked = UnloggedRun()
        wait_for_everyone()
        result = module.run(params, tracked)
        if not isinstance(result, StageResult):
            raise TypeError(f"{stage.module}.run returned {type(result).__name__}, not a StageResult")
        if main:
            publish(tracked, name, result)
    return result
