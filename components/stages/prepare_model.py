"""prepare_model stage: materialise the base model (weights, tokenizer, chat template) in ``models/base``."""

from __future__ import annotations

from pathlib import Path

from components.config import Params
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun

SHAPE_METRICS = ("parameter_count", "vocab_size", "tokenizer_size", "max_context_tokens", "size_bytes")


def run(params: Params, tracked: StageRun) -> StageResult:
    """Prepare ``model.name_or_path`` into ``model.output_dir``; the card's sizes are the metrics."""
    from components.llm.model_assets import MODEL_CARD_FILE, prepare_model

    cfg = params.model
    prepared = prepare_model(cfg, cfg.output_dir)
    card = prepared.card()
    return StageResult(
        metrics={key: card[key] for key in SHAPE_METRICS},
        metrics_path=cfg.report_path,
        timings={"seconds": prepared.seconds},
        artifacts=[(str(Path(cfg.output_dir) / MODEL_CARD_FILE), "model")],
        tags={"memforge.model.source": str(card.get("source", cfg.name_or_path))},
    )
