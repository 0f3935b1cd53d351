"""memagent_train stage: multi-conversation GRPO of the MemAgent reader -> ``models/memagent``.

Reads the RULER-HotpotQA training questions (``{longcontext.output_dir}/hotpotqa_train.jsonl``; disjoint from the
evaluation questions), streams each input from the document pool, and trains ``memagent.train.model_name_or_path``
with ``components.training.memagent`` (reader settings from ``memagent.reader``). Checkpoints go to
``memagent.train.checkpoint_dir`` (a DVC ``persist`` output) and a rerun of the same run resumes from the latest;
checkpoints of a run with other settings or inputs are cleared first (``components.training.checkpoints``).

Under one MLflow run: params, the training set and base model as input datasets, every trainer log per step
(reward, boxed fraction, memory size, advantages, KL, clip ratio), a reward-curve figure, sampled trajectories as a
table, the final metrics. Outputs: the model folder, ``memagent.train.report_path`` (metrics) and, beside it,
``memagent_reward.json`` (``[{step, reward, boxed_fraction}]`` for ``dvc plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params, to_dict
from components.errors import InputError

TRAIN_FILE = "hotpotqa_train.jsonl"
REWARD_PLOT_FILE = "memagent_reward.json"


def train_path(params: Params) -> Path:
    return Path(params.longcontext.output_dir) / TRAIN_FILE


def reward_plot_path(params: Params) -> Path:
    """``reports/memagent_reward.json``: beside ``memagent.train.report_path``."""
    return Path(params.memagent.train.report_path).parent / REWARD_PLOT_FILE


def reward_points(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """``[{step, reward, boxed_fraction}]`` from the trainer logs that carry a reward."""
    points = []
    for entry in history:
        if "memagent/reward_mean" in entry:
            points.append(
                {
                    "step": int(entry["step"]),
                    "reward": entry["memagent/reward_mean"],
                    "boxed_fraction": entry.get("memagent/boxed_fraction", 0.0),
                }
            )
    return points


def train_samples(path: Path, store: Any) -> list[Any]:
    """The training questions as ``TrainSample``s whose pieces stream from ``store``."""
    from components.longcontext.schema import iter_samples
    from components.longcontext.store import iter_context
    from components.training.memagent import TrainSample

    samples = [
        TrainSample(
            id=s.id,
            question=s.question,
            answers=s.answers,
            pieces=lambda s=s: iter_context(s, store),
        )
        for s in iter_samples(path)
    ]
    if not samples:
        raise InputError(path, "no training questions")
    return samples


def run(params: Params) -> Any:
    """The DVC stage entry: train under an MLflow run, then write the reports."""
    from components.io import write_json_atomic
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.longcontext.store import LongContextStore
    from components.plots import close, line_chart
    from components.tracking import stage_run
    from components.training.checkpoints import claim_checkpoint_dir, run_fingerprint
    from components.training.memagent import train_memagent

    cfg = params.memagent
    path = train_path(params)
    section = {"memagent": {"reader": to_dict(cfg.reader), "train": to_dict(cfg.train)}}
    with stage_run("memagent_train", params.tracking, params_section=section) as tracked:
        if not path.is_file():
            raise InputError(path, "training set not found; run the longcontext_data stage")
        tracked.log_input_dataset(path, name="hotpotqa-train", context="training")
        inputs = [path]
        if Path(cfg.train.model_name_or_path).is_dir():
            tracked.log_input_dataset(cfg.train.model_name_or_path, name="base-model", context="model")
            inputs.append(Path(cfg.train.model_name_or_path))
        fingerprint = run_fingerprint({**to_dict(cfg.train), "reader": to_dict(cfg.reader)}, inputs)
        claim_checkpoint_dir(cfg.train.checkpoint_dir, fingerprint)
        with LongContextStore.open(params.longcontext.output_dir) as store:
            samples = train_samples(path, store)

            def on_log(logs: dict[str, float], step: int) -> None:
                tracked.log_metrics(logs, step=step)

            outcome = train_memagent(cfg.train, cfg.reader, samples, on_log=on_log)
        metrics = outcome.metrics()
        points = reward_points(outcome.history)
        write_json_atomic(cfg.train.report_path, metrics)
        write_json_atomic(reward_plot_path(params), points)
        tracked.log_metrics(metrics)
        tracked.log_artifact(cfg.train.report_path, "memagent_train")
        tracked.log_artifact(reward_plot_path(params), "memagent_train")
        tracked.log_artifact(Path(cfg.train.output_dir) / MODEL_CARD_FILE, "model")
        if outcome.trajectories:
            tracked.log_table(outcome.trajectories, "memagent_train/trajectories.json")
        figure = line_chart(
            {"memagent_train": {"reward": [(p["step"], p["reward"]) for p in points]}},
            f"MemAgent GRPO: {outcome.questions} questions, {outcome.steps} steps",
            "step",
            "mean reward (boxed exact match)",
            ylim=(0, 1),
        )
        tracked.log_figure(figure, "memagent_train/reward_curve.png")
        close(figure)
    return outcome
