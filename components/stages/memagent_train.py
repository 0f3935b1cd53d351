"""memagent_train stage: multi-conversation GRPO of the MemAgent reader -> ``models/memagent``.

Reads the RULER-HotpotQA training questions (``{longcontext.output_dir}/hotpotqa_train.jsonl``; disjoint from the
evaluation questions), streams each input from the document pool, and trains ``memagent.train.model_name_or_path``
with ``components.training.memagent`` (reader settings from ``memagent.reader``). With ``memagent.warmup.enabled``
(memforge's addition for small models) the reader is first fine-tuned on reading trajectories built from the same
questions (``components.longcontext.warmup``, ``components.training.reader_warmup``) into
``{memagent.train.checkpoint_dir}/warmup``, and GRPO starts from it; a rerun of the same run reuses it. Checkpoints
go to ``memagent.train.checkpoint_dir`` (a DVC ``persist`` output) and a rerun of the same run resumes from the latest;
checkpoints of a run with other settings or inputs are cleared first (``components.training.checkpoints``).

Under one MLflow run: params, the training set and base model as input datasets, the warm-up's trainer logs per
step (``warmup/loss``, ...), its trajectories as a table and its metrics (``warmup/...``: loss, trajectories, the
warmed-up reader's boxed fraction on ``memagent.warmup.check_questions`` training questions), every GRPO trainer log
per step (reward, boxed fraction, memory size, advantages, KL, clip ratio), a reward-curve figure, sampled
trajectories as a table, the final metrics. Outputs: the model folder, ``memagent.train.report_path`` (metrics) and
``memagent.train.plot_path`` (``[{step, reward, boxed_fraction}]`` for ``dvc plots``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Warmup:
    """What the warm-up gives the stage: the reader GRPO starts from (None: no warm-up), the warm-up's metrics and
    timings, and its first trajectories as table rows (none when a finished warm-up was reused)."""

    start_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def warm_up(params: Params, store: Any, samples: list[Any], tracked: StageRun, resumable: bool) -> Warmup:
    """The reader's supervised warm-up, or, when ``resumable``, the one this run already finished."""
    from components.agent.chunking import tokenizer_codec
    from components.agent.reader import load_tokenizer
    from components.longcontext.schema import iter_samples
    from components.longcontext.warmup import warmup_trajectories
    from components.training.reader_warmup import (
        METRIC_PREFIX,
        boxed_check,
        finished_warmup,
        record_finished_warmup,
        trajectory_rows,
        warm_up_reader,
        warmup_paths,
    )

    cfg = params.memagent
    folder, _ = warmup_paths(cfg.train.checkpoint_dir)
    done = finished_warmup(cfg.train.checkpoint_dir) if resumable else None
    if done is not None:
        return Warmup(str(folder), {**done, "reused": 1.0})
    encode, decode = tokenizer_codec(load_tokenizer(cfg.train.model_name_or_path))
    trajectories = warmup_trajectories(iter_samples(train_path(params)), store, cfg.reader, encode, decode)

    def log(logs: dict[str, float], step: int) -> None:
        tracked.log_step({f"{METRIC_PREFIX}{key}": value for key, value in logs.items()}, step)

    outcome = warm_up_reader(cfg.warmup, cfg.train, trajectories, folder, on_log=log)
    outcome.check = boxed_check(folder, cfg.reader, samples[: cfg.warmup.check_questions], seed=cfg.train.seed)
    metrics = outcome.metrics()
    record_finished_warmup(cfg.train.checkpoint_dir, metrics)
    timings = {f"warmup_{key}": value for key, value in outcome.sft.timings().items()}
    rows = trajectory_rows(trajectories, cfg.train.log_trajectories)
    return Warmup(str(folder), {**metrics, "reused": 0.0}, timings, rows)


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
    shaping = {**to_dict(cfg.train), "reader": to_dict(cfg.reader), "warmup": to_dict(cfg.warmup)}
    resumable = claim_checkpoint_dir(cfg.train.checkpoint_dir, run_fingerprint(shaping, inputs))
    warmup = Warmup()
    with LongContextStore.open(params.longcontext.output_dir) as store:
        samples = train_samples(path, store)
        if cfg.warmup.enabled:
            warmup = warm_up(params, store, samples, tracked, resumable)
        outcome = train_memagent(cfg.train, cfg.reader, samples, on_log=tracked.log_step, start_from=warmup.start_from)
    points = reward_points(outcome.history)
    figure = line_chart(
        {"memagent_train": {"reward": [(p["step"], p["reward"]) for p in points]}},
        f"MemAgent GRPO: {outcome.questions} questions, {outcome.steps} steps",
        "step",
        "mean reward (boxed exact match)",
        ylim=(0, 1),
    )
    return StageResult(
        metrics={**outcome.metrics(), **({"warmup": warmup.metrics} if warmup.metrics else {})},
        metrics_path=cfg.train.report_path,
        timings={**outcome.timings(), **warmup.timings},
        plots={cfg.train.plot_path: points},
        artifacts=[(str(Path(cfg.train.output_dir) / MODEL_CARD_FILE), "model")],
        figures={"memagent_train/reward_curve.png": figure},
        tables={
            "memagent_train/trajectories.json": outcome.trajectories,
            **({"memagent_train/warmup_trajectories.json": warmup.rows} if warmup.rows else {}),
        },
    )
