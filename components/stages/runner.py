"""Run one registered stage: open its MLflow run, call its ``run``, publish the ``StageResult``.

This is what ``memforge stage NAME`` (and so every ``dvc.yaml`` stage) executes; every stage goes through it, so
opening the run, logging the params sections the stage reads, and publishing the results happen in one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
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


def run_stage(name: str, params: Params) -> StageResult:
    """Run stage ``name`` under its MLflow run and publish what it returns."""
    from components.tracking import stage_run

    stage = get_stage(name)
    module = importlib.import_module(stage.module)
    with stage_run(name, params.tracking, params_section=params_sections(params, stage.params)) as tracked:
        result = module.run(params, tracked)
        if not isinstance(result, StageResult):
            raise TypeError(f"{stage.module}.run returned {type(result).__name__}, not a StageResult")
        publish(tracked, name, result)
    return result
