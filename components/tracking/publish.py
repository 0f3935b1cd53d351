"""One shape for what a stage returns, and the one helper that publishes it to DVC and MLflow.

A stage's ``run(params, tracked)`` returns a ``StageResult``; ``publish`` writes its DVC files (the metrics file,
plot tables, other JSON reports) atomically and logs the same things to the stage's MLflow run (metrics, timings,
those files as artifacts, figures, tables, tags). No stage writes reports or logs results by itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.tracking.runs import StageRun


@dataclass(frozen=True)
class StageResult:
    """What a stage measured and made.

    ``metrics`` is the DVC metrics file (values comparable across runs and experiments; may nest), written to
    ``metrics_path``. ``timings`` are wall-clock measurements: they change on every run, so they go to MLflow only.
    ``plots`` and ``reports`` map a file path to the JSON written there (plot rows for ``dvc plots``; other reports);
    ``lines`` maps a file path to the records written there as JSON Lines (per-question rows).
    ``artifacts`` are ``(local path, MLflow artifact folder)`` pairs logged as they are; ``figures`` (from
    ``components.plots``) and ``tables`` (rows) map an MLflow artifact file to its content.
    """

    metrics: Mapping[str, Any]
    metrics_path: str
    timings: Mapping[str, float] = field(default_factory=dict)
    plots: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    reports: Mapping[str, Any] = field(default_factory=dict)
    lines: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    artifacts: Sequence[tuple[str, str]] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)
    tables: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def logged_metrics(self) -> dict[str, float]:
        """The numeric leaves of ``metrics`` (nested keys joined by '/') and the timings: what MLflow gets."""
        return {**numeric_leaves(self.metrics), **{key: float(value) for key, value in self.timings.items()}}

    def written_files(self) -> list[str]:
        """Every file ``publish`` writes, metrics first."""
        return [self.metrics_path, *self.plots, *self.reports, *self.lines]


def numeric_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a/b": 1.0}`` for ``{"a": {"b": 1}}``; strings and lists are skipped, booleans count as 0/1."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(numeric_leaves(value, f"{name}/"))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


def publish(tracked: StageRun, stage: str, result: StageResult) -> None:
    """Write the result's DVC files and log everything to the stage's MLflow run (artifacts under ``stage/``)."""
    from components.io import atomic_writer, dumps_jsonl_record, write_json_atomic
    from components.plots import close

    contents = {result.metrics_path: result.metrics, **result.plots, **result.reports}
    for path, content in contents.items():
        write_json_atomic(path, content)
    for path, records in result.lines.items():
        with atomic_writer(path) as handle:
            for record in records:
                handle.write(dumps_jsonl_record(dict(record)))
    tracked.log_metrics(result.logged_metrics())
    for path in result.written_files():
        tracked.log_artifact(path, stage)
    for local, folder in result.artifacts:
        if Path(local).exists():
            tracked.log_artifact(local, folder)
    for artifact_file, figure in result.figures.items():
        tracked.log_figure(figure, artifact_file)
        close(figure)
    for artifact_file, rows in result.tables.items():
        if rows:
            tracked.log_table([dict(row) for row in rows], artifact_file)
    if result.tags:
        tracked.set_tags(result.tags)
