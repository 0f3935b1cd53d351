"""longcontext_data stage: the RULER-style long-context sets for MemAgent (``components.longcontext.build``)."""

from __future__ import annotations

from components.config import Params
from components.io import file_digest
from components.longcontext.build import build
from components.longcontext.sources import DISTRIBUTION, SOURCE_FILES, source_file
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def run(params: Params, tracked: StageRun) -> StageResult:
    """Build the sets of ``longcontext`` into ``longcontext.output_dir`` with the tokenizer of ``model.output_dir``."""
    cfg = params.longcontext
    for name in SOURCE_FILES:
        path = source_file(name)
        tracked.log_input_dataset(path, name=f"{DISTRIBUTION}:{name}", context="source", digest=file_digest(path))
    result, _manifest = build(cfg, params.model.output_dir)
    return StageResult(
        metrics=result.metrics(),
        metrics_path=cfg.report_path,
        timings=result.timings(),
        artifacts=[(f"{cfg.output_dir}/manifest.json", "longcontext")],
    )
