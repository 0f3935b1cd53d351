"""memagent_train stage: multi-conversation GRPO of the MemAgent reader -> ``models/memagent``.

Reads the RULER-HotpotQA training questions (``{longcontext.output_dir}/hotpotqa_train.jsonl``; disjoint from the
evaluation questions), streams each input from the document pool, and trains ``memagent.train.model_name_or_path``
with ``components.training.memagent`` (reader settings from ``memagent.reader``). Checkpoints go to
``memagent.train.checkpoint_dir`` (a DVC ``persist`` output) and a rerun of the same run resumes from the latest;
checkpoints of a run with other settings or inputs are cleared first (``components.training.checkpoints``).

Under one MLflow run: params, the training set and base model as input datasets, every trainer log per step
(reward, boxed fraction, memory size, advantages, KL, clip ratio), a reward-curve figure, sampled trajectories as a
table, the final metrics. Outputs: the model folder, ``memagent.train.report_path`` (metrics) and
``memagent.train.plot_path`` (``[{step, reward, boxed_fraction}]`` for ``dvc plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params, to_dict
from components.errors import InputError
from components.longcontext.build import TRAIN_FILE
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun


def train_path(params: Params) -> Path:
    return Path(params.longcontext.output_dir) / TRAIN_FILE


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


def run(params: Params, tracked: StageRun) -> StageResult:
    """Train ``memagent.train.model_name_or_path`` on the RULER-HotpotQA training questions."""
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.longcontext.store import LongContextStore
    from components.plots import line_chart
    from components.training.checkpoints import claim_checkpoint_dir, run_fingerprint
    from components.training.memagent import train_memagent

    cfg = params.memagent
    path = train_path(params)
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
        outcome = train_memagent(cfg.train, cfg.reader, samples, on_log=tracked.log_step)
    points = reward_points(outcome.history)
    figure = line_chart(
        {"memagent_train": {"reward": [(p["step"], p["reward"]) for p in points]}},
        f"MemAgent GRPO: {outcome.questions} questions, {outcome.steps} steps",
        "step",
        "mean reward (boxed exact match)",
        ylim=(0, 1),
    )
    return StageResult(
        metrics=outcome.metrics(),
        metrics_path=cfg.train.report_path,
        timings=outcome.timings(),
        plots={cfg.train.plot_path: points},
        artifacts=[(str(Path(cfg.train.output_dir) / MODEL_CARD_FILE), "model")],
        figures={"memagent_train/reward_curve.png": figure},
        tables={"memagent_train/trajectories.json": outcome.trajectories},
    )
