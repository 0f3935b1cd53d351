"""sft stage: supervised warm-up of the memory agents on the expert trajectories -> ``models/sft``.

Reads ``{expert.output_dir}/{split}.jsonl`` for ``sft.splits``, turns every (session, part) teacher output into a
prompt-completion example and fine-tunes ``sft.model_name_or_path`` with TRL (loss on the completion only). Under
one MLflow run it logs the params, the trajectory files (and base model) as input datasets with their DVC digests,
loss / learning rate / grad norm at every logged step, the loss curve, the final metrics and the model card.
Outputs: the model folder (merged, ``from_pretrained``-loadable, with ``memforge_model.json``), ``sft.report_path``
(metrics) and ``reports/sft_loss.json`` beside it (``[{step, loss}]`` for ``dvc plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params, to_dict
from components.errors import MemforgeError
from components.training.sft import SFTOutcome, build_sft_dataset, train_sft, trajectory_examples

LOSS_PLOT_FILE = "sft_loss.json"


def trajectory_paths(params: Params) -> list[tuple[str, Path]]:
    """``(split, file)`` for every configured SFT split."""
    return [(split, Path(params.expert.output_dir) / f"{split}.jsonl") for split in params.sft.splits]


def loss_plot_path(params: Params) -> Path:
    """``reports/sft_loss.json``: beside ``sft.report_path``."""
    return Path(params.sft.report_path).parent / LOSS_PLOT_FILE


def loss_figure(points: list[dict[str, float]], title: str) -> Any:
    """Training loss against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p["step"] for p in points], [p["loss"] for p in points], marker="o", markersize=3, color="#4c72b0")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (completion tokens)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def run(params: Params) -> SFTOutcome:
    """The DVC stage entry: fine-tune under an MLflow run, then write the reports."""
    from components.io import write_json_atomic
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.plots import close
    from components.tracking import stage_run

    cfg = params.sft
    paths = trajectory_paths(params)
    with stage_run("sft", params.tracking, params_section={"sft": to_dict(cfg)}) as tracked:
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

        def on_log(logs: dict[str, float], step: int) -> None:
            tracked.log_metrics(logs, step=step)

        outcome = train_sft(cfg, build_sft_dataset(examples), cfg.output_dir, on_log=on_log)
        metrics = outcome.metrics()
        write_json_atomic(cfg.report_path, metrics)
        write_json_atomic(loss_plot_path(params), outcome.loss_history)
        tracked.log_metrics(metrics)
        tracked.log_artifact(cfg.report_path, "sft")
        tracked.log_artifact(loss_plot_path(params), "sft")
        tracked.log_artifact(Path(cfg.output_dir) / MODEL_CARD_FILE, "model")
        figure = loss_figure(
            outcome.loss_history,
            f"sft ({'LoRA' if cfg.use_lora else 'full'}): {outcome.examples_trained} examples, {outcome.steps} steps",
        )
        tracked.log_figure(figure, "sft/loss_curve.png")
        close(figure)
    return outcome
