"""synth_qa stage: session-level synthetic QA behind its quality gate (``components.datasets.synth_qa``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.datasets.synth_qa import SynthQAResult, synth_qa
from components.errors import QualityGateError
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def run(params: Params, tracked: StageRun) -> StageResult:
    """Generate and gate the QA of ``synth_qa.splits``; a failed gate logs its validation result first."""
    cfg = params.synth_qa
    for split in cfg.splits:
        tracked.log_input_dataset(
            Path(params.ingest.output_dir) / f"{split}.jsonl", name=f"dialogues-{split}", context="source"
        )
    try:
        result = synth_qa(params)
    except QualityGateError as exc:
        tracked.log_dict(getattr(exc, "validation_result", {}), "synth_qa/validation.json")
        raise
    out = Path(cfg.output_dir)
    return StageResult(
        metrics=result.metrics(),
        metrics_path=cfg.report_path,
        timings=result.timings(),
        artifacts=[(str(out / name), "qa") for name in ("dataset_card.md", "validation.json", "quarantine.jsonl")],
        figures={"qa/qa_composition.png": qa_figure(result)},
    )


def qa_figure(result: SynthQAResult) -> Any:
    """Question types and generators beside the per-expectation pass rates (first split)."""
    from components.plots import horizontal_bars

    first = next(iter(result.pass_rates.values()), {})
    return horizontal_bars(
        {
            "usable questions by type": {k: float(v) for k, v in result.by_type.items()},
            "pass rate by expectation": first,
        },
        title=f"synth_qa: {sum(result.usable.values())} usable of {sum(result.rows.values())}",
    )
