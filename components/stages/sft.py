"""sft stage: supervised warm-up of the memory agents on the expert trajectories -> ``models/sft``.

Reads ``{expert.output_dir}/{split}.jsonl`` for ``sft.splits``, turns every (session, part) teacher output into a
prompt-completion example and fine-tunes ``sft.model_name_or_path`` with TRL (loss on the completion only). The
MLflow run gets the trajectory files (and base model) as input datasets with their DVC digests, loss / learning
rate / grad norm at every logged step, the loss curve, the final metrics and the model card. Outputs: the model
folder (merged, ``from_pretrained``-loadable, with ``memforge_model.json``), ``sft.report_path`` (metrics) and
``sft.plot_path`` (``[{step, loss}]`` for ``dvc plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import MemforgeError
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def trajectory_paths(params: Params) -> list[tuple[str, Path]]:
    """``(split, file)`` for every configured SFT split."""
    return [(split, Path(params.expert.output_dir) / f"{split}.jsonl") for split in params.sft.splits]


def loss_figure(points: list[dict[str, float]], title: str) -> Any:
    """Training loss against optimizer step."""
    from components.plots import line_chart

    series = {"loss": [(p["step"], p["loss"]) for p in points]}
    return line_chart({title: series}, "sft", "step", "loss (completion tokens)")


def run(params: Params, tracked: StageRun) -> StageResult:
    """Fine-tune ``sft.model_name_or_path`` on the trajectories of ``sft.splits``."""
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.training.sft import build_sft_dataset, train_sft, trajectory_examples

    cfg = params.sft
    paths = trajectory_paths(params)
    for split, path in paths:
        tracked.log_input_dataset(path, name=f"trajectories-{split}", context="training")
    if Path(cfg.model_name_or_path).is_dir():
        tracked.log_input_dataset(cfg.model_name_or_path, name="base-model", context="model")
    examples = trajectory_examples(path for _, path in paths)
    if not examples:
        files = ", ".join(str(path) for _, path in paths) or "(no sft.splits)"
        raise MemforgeError(
            f"sft: no training examples: {files} hold no teacher outputs (every output failed to parse, or the "
            "splits are empty); check the expert stage's report, or sft.splits"
        )
    outcome = train_sft(cfg, build_sft_dataset(examples), cfg.output_dir, on_log=tracked.log_step)
    title = f"{'LoRA' if cfg.use_lora else 'full'}: {outcome.examples_trained} examples, {outcome.steps} steps"
    return StageResult(
        metrics=outcome.metrics(),
        metrics_path=cfg.report_path,
        timings=outcome.timings(),
        plots={cfg.plot_path: outcome.loss_history},
        artifacts=[(str(Path(cfg.output_dir) / MODEL_CARD_FILE), "model")],
        figures={"sft/loss_curve.png": loss_figure(outcome.loss_history, title)},
    )
