"""Run one registered stage: open its MLflow run, call its ``run``, publish the ``StageResult``.

This is what ``memforge stage NAME`` (and so every ``dvc.yaml`` stage) executes; every stage goes through it, so
opening the run, logging the params sections the stage reads, and publishing the results happen in one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.config import Params, to_dict
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


LOCK_DIR = ".memforge/locks"  # one lock per stage and workspace (the working directory)


def run_stage(name: str, params: Params) -> StageResult:
    """Run stage ``name`` under its MLflow run and publish what it returns; a second run of the same stage in the
    same workspace fails at once (``AlreadyRunning``, naming the pid) instead of racing the first."""
    from components.io import exclusive_lock
    from components.tracking import stage_run

    stage = get_stage(name)
    module = importlib.import_module(stage.module)
    with (
        exclusive_lock(Path(LOCK_DIR) / f"{name}.lock", f"stage {name}"),
        stage_run(name, params.tracking, params_section=params_sections(params, stage.params)) as tracked,
    ):
        result = module.run(params, tracked)
        if not isinstance(result, StageResult):
            raise TypeError(f"{stage.module}.run returned {type(result).__name__}, not a StageResult")
        publish(tracked, name, result)
    return result
