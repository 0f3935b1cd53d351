"""prepare_model stage: materialise the base model (weights, tokenizer, chat template) in ``models/base``."""

from __future__ import annotations

from pathlib import Path

from components.config import Params, to_dict


def run(params: Params) -> dict[str, object]:
    """The DVC stage entry: prepare the model under an MLflow run; returns the model card."""
    from components.llm.model_assets import prepare_model
    from components.tracking import stage_run

    cfg = params.model
    with stage_run("prepare_model", params.tracking, params_section={"model": to_dict(cfg)}) as tracked:
        prepared = prepare_model(cfg, cfg.output_dir)
        card = prepared.to_dict()
        numeric = {
            key: float(value)
            for key, value in card.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        tracked.log_metrics(numeric)
        tracked.log_dict(card, "model/memforge_model.json")
        tracked.set_tags({"memforge.model.source": str(card.get("source", cfg.name_or_path))})
        card_file = Path(cfg.output_dir) / "memforge_model.json"
        if card_file.exists():
            tracked.log_artifact(card_file, "model")
    return card
