"""expert stage: teacher trajectories for supervised warm-up and RL (``components.memory.trajectories``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.memory.trajectories import ExpertResult, expert
from components.memory.types import PARTS
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def composition_figure(result: ExpertResult) -> Any:
    """Final memory composition (entries per part) beside kept vs dropped teacher outputs."""
    from components.plots import horizontal_bars

    return horizontal_bars(
        {
            "entries per part (all conversations)": {part: float(result.final_entries[part]) for part in PARTS[1:]},
            "teacher outputs dropped (fraction)": {
                part: result.dropped_outputs[part] / max(result.dropped_outputs[part] + result.kept_outputs[part], 1)
                for part in PARTS
            },
        },
        title=f"expert ({result.teacher}): memory composition",
    )


def run(params: Params, tracked: StageRun) -> StageResult:
    """Build the trajectories of ``expert.splits`` into ``expert.output_dir``."""
    for split in params.expert.splits:
        path = Path(params.ingest.output_dir) / f"{split}.jsonl"
        tracked.log_input_dataset(path, name=f"dialogues-{split}", context="training")
    result = expert(params)
    return StageResult(
        metrics=result.metrics(),
        metrics_path=params.expert.report_path,
        artifacts=[(str(Path(params.expert.output_dir) / "summary.json"), "trajectories")],
        figures={"trajectories/memory_composition.png": composition_figure(result)},
        tables={"trajectories/samples.json": result.samples},
    )
