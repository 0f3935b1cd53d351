"""ADRPO (MemBuilder): GRPO with dense, attributed rewards, on TRL's ``GRPOTrainer`` (pinned: TRL 1.16).

How it plugs into TRL
---------------------
``GRPOTrainer._generate_and_score_completions(inputs)`` generates G completions per prompt, calls the reward
functions, turns rewards into per-completion advantages (shape (B,), one per completion of the process's batch)
and returns them in its output dict under ``"advantages"``; the loss multiplies every completion token's
log-prob ratio by that advantage. ``ADRPOTrainer`` (``components.training.adrpo_trainer``, imported when
training starts) overrides it:

1. TRL's single reward function is an ``ADRPOReward`` object: from the batch rows (columns of the synth_qa
   ``prompts`` dataset: ``part``, ``memory_before``, ``session``, ``questions``, ``expert_output``, ...) and the
   decoded completions it rebuilds the session groups (``groups_from_batch``), scores them with ``score_groups``
   (ONE judge call per generation batch) and returns the per-completion rewards (so TRL's ``reward`` logs are the
   ADRPO rewards); the scores are kept for step 2, nothing is scored twice;
2. after ``super()`` returns, ``output["advantages"]`` (the process's slice) is REPLACED by
   ``rewrite_advantages(rewards, group_ids, weights)``: ``A'_i = w_i * (r_i - mean_g) / (std_g + eps)`` within each
   (session, part) GRPO group, ``w_i`` being completion i's rollout's weight for its part. The attribution weights
   therefore scale the ADVANTAGE term of the policy loss (not the rewards): a dominant part's agent gets a
   proportionally larger update;
3. ``ScoredBatch.logged_stats`` (``score_groups(...).stats()``) is logged through ``self._metrics[mode]["adrpo/..."]``
   (reward mean/std overall and per part, format failure rates, attribution weights per part, length penalties,
   judge counts), so it appears in the trainer logs next to TRL's own metrics.

``adrpo_trainer.check_trl_hook`` verifies, at construction, that the installed TRL has this hook; at run time the
override also checks that the output carries ``"advantages"`` of the expected length.

Batching constraint
-------------------
Rollout r of a session applies the r-th output of each of its FOUR agents together, so all four prompts of a
session, with their G completions each, must be in one generation batch (per process). Hence:

* ``per_device_train_batch_size = 4 * sessions_per_batch * G`` (``adrpo_batch_size``), with
  ``gradient_accumulation_steps = steps_per_generation = 1`` (the generation batch is one device batch);
* the dataset ordered by session, four consecutive rows per session in ``PARTS`` order (``order_by_session``,
  which also shuffles SESSIONS with a seed), and TRL's row shuffling OFF (``shuffle_dataset=False``): TRL's
  ``RepeatSampler`` then yields each prompt G times in a row, in dataset order, in chunks of
  ``4 * sessions_per_batch`` prompts, i.e. whole sessions. A batch that splits a session fails loudly in
  ``groups_from_batch``.

Checkpoints, resume, outputs
----------------------------
Prompts longer than ``max_prompt_length`` are cut in the middle of the transcript (``fit_prompts``, the SFT cut;
TRL 1.16 does not truncate), and the number cut is a metric (``prompts_truncated``).
``train_adrpo`` reads every setting from ``ADRPOConfig`` (``sessions_per_batch``, ``save_steps``, ``seed``, vLLM;
TRL's arguments come from ``components.training.arguments``, shared with sft and memagent_train).
Checkpoints (optimizer and RNG state included; the latest one only) go to ``cfg.checkpoint_dir``, apart from the
model folder, with ``memforge_run.json`` recording the settings and prompts they belong to; a rerun resumes
from the latest checkpoint when that record matches (after a kill) and starts afresh otherwise. The trained model
replaces ``output_dir`` atomically, with a ``memforge_model.json`` card (``saving.save_trained``, as every trained
model). The trainer keeps the last step's completions (``ScoredBatch.rows``: session, part, rollout, text, reward
and its factors) for an MLflow table.

Heavy imports (torch, transformers, trl, datasets) happen inside functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components.config import ADRPOConfig, MemoryConfig
from components.errors import InputError, MemforgeError
from components.memory.types import PARTS
from components.rewards import (
    BatchLayout,
    GroupScores,
    Judge,
    RewardBatch,
    completion_text,
    groups_from_batch,
    make_judge,
    score_groups,
)
from components.training.arguments import grpo_arguments
from components.training.callbacks import OnLog, TrainingLog, log_forwarder
from components.training.checkpoints import claim_checkpoint_dir, latest_checkpoint
from components.training.outcome import GRPOOutcome, last_stats
from components.training.saving import gathered_state_dict, load_trainable, save_trained
from components.training.sft import FitReport, fit_examples

logger = logging.getLogger(__name__)

METRIC_PREFIX = "adrpo/"
_TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


# ---------------------------------------------------------------------------------------------
# batching: whole sessions per batch


def adrpo_batch_size(num_generations: int, sessions_per_batch: int = 1) -> int:
    """Completions per device batch: four agents x ``sessions_per_batch`` sessions x G rollouts (``ADRPOConfig``
    checks both counts when it is built)."""
    return len(PARTS) * sessions_per_batch * num_generations


def _session_key(row: Mapping[str, Any]) -> str:
    if row.get("conversation_id") is not None and row.get("session_id") is not None:
        return f"{row['conversation_id']}:{row['session_id']}"
    return str(row["prompt_id"]).rsplit(":", 1)[0]


def order_by_session(rows: Sequence[Mapping[str, Any]], seed: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Rows grouped by session, four per session in ``PARTS`` order; sessions shuffled when ``seed`` is given.

    Sessions without all four parts (or with a part twice) are dropped; returns (rows, sessions dropped).
    """
    by_session: dict[str, dict[str, dict[str, Any]]] = {}
    duplicated: set[str] = set()
    for row in rows:
        key = _session_key(row)
        parts = by_session.setdefault(key, {})
        if row.get("part") in parts:
            duplicated.add(key)
        parts[str(row.get("part"))] = dict(row)
    keys = [k for k, parts in by_session.items() if k not in duplicated and set(parts) == set(PARTS)]
    dropped = len(by_session) - len(keys)
    if seed is not None:
        random.Random(seed).shuffle(keys)
    return [by_session[key][part] for key in keys for part in PARTS], dropped


# ---------------------------------------------------------------------------------------------
# the reward function (scores once per generation batch, keeps the scores for the advantage rewrite)


@dataclass
class ScoredBatch:
    """One generation batch's ADRPO scores, aligned with the process's completions (``texts``, batch order)."""

    scores: GroupScores
    layout: BatchLayout
    batch: RewardBatch
    texts: list[str] = field(default_factory=list)

    def rows(self, advantages: Sequence[float], step: int) -> list[dict[str, Any]]:
        """One row per completion: what was written, its reward and every factor, its advantage (an MLflow table)."""
        rows = []
        for index, (group_index, part, rollout) in enumerate(self.layout.positions):
            score = self.scores.groups[group_index].scores[part][rollout]
            rows.append(
                {
                    "step": step,
                    "session": score.group_id,
                    "part": part,
                    "rollout": rollout,
                    "completion": self.texts[index] if index < len(self.texts) else "",
                    "reward": score.reward,
                    "advantage": float(advantages[index]),
                    "format_ok": score.format_ok,
                    "task_reward": score.task_reward,
                    "length_penalty": score.length_penalty,
                    "attribution_weight": score.weight,
                    "tokens": score.tokens,
                    "error": score.error or "",
                }
            )
        return rows

    def logged_stats(self, advantages: Sequence[float]) -> dict[str, float]:
        """The batch's statistics under their ``adrpo/`` log names, with the mean absolute attributed advantage."""
        stats = {METRIC_PREFIX + key: float(value) for key, value in self.scores.stats().items()}
        stats[METRIC_PREFIX + "advantage_abs_mean"] = float(np.mean(np.abs(np.asarray(advantages, dtype=float))))
        return stats


class ADRPOReward:
    """TRL reward function: ADRPO rewards for a batch of ``prompts``-dataset rows; keeps the scores for the trainer.

    ``call_seconds`` records how long each call took (parsing, banks, embedding, judging): the reward time a
    benchmark subtracts from a step.
    """

    __name__ = "adrpo"

    def __init__(
        self,
        cfg: ADRPOConfig,
        judge: Judge,
        count_tokens: Callable[[str], int],
        memory_config: MemoryConfig | None = None,
        cache: Any = None,
    ) -> None:
        from components.memory.embedder import EmbeddingCache, create_embedder

        self.cfg = cfg
        self.judge = judge
        self.count_tokens = count_tokens
        self.memory_config = memory_config
        if cache is None:
            cache = EmbeddingCache(create_embedder(memory_config or MemoryConfig()))
        self.cache = cache  # shared across steps: each text is embedded once
        self.last: ScoredBatch | None = None
        self.calls = 0
        self.call_seconds: list[float] = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        started = time.perf_counter()
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS and k != "completion_ids"}
        rows = [{k: values[i] for k, values in columns.items()} for i in range(len(completions))]
        groups, layout = groups_from_batch(rows, completions, cache=self.cache, memory_config=self.memory_config)
        scores = score_groups(groups, self.judge, self.cfg, self.count_tokens)
        batch = scores.gather(layout)
        self.last = ScoredBatch(scores, layout, batch, [completion_text(c) for c in completions])
        self.calls += 1
        self.call_seconds.append(time.perf_counter() - started)
        return [float(r) for r in batch.rewards]

    def take(self) -> ScoredBatch:
        """The scores of the batch just rewarded (each batch is taken once)."""
        if self.last is None:
            raise MemforgeError("adrpo: no scored batch; the ADRPO reward function did not run for this batch")
        last, self.last = self.last, None
        return last


# ---------------------------------------------------------------------------------------------
# training entry point


@dataclass(kw_only=True)
class ADRPOOutcome(GRPOOutcome):
    """What an ADRPO run did (``GRPOOutcome``: ``metrics()``, ``timings()``, the card's ``summary()``).

    ``history`` holds every trainer log (``adrpo/...`` stats included) with its step; ``completions`` the last
    step's completions, one row each (``ScoredBatch.rows``).
    """

    kind: ClassVar[str] = "adrpo"

    prompts: int
    sessions: int
    sessions_dropped: int
    prompt_fit: FitReport = field(default_factory=FitReport)
    completions: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            **super().metrics(),
            "prompts": float(self.prompts),
            "sessions": float(self.sessions),
            "sessions_dropped": float(self.sessions_dropped),
            "prompts_truncated": float(self.prompt_fit.shortened),
            "prompts_over_length": float(self.prompt_fit.over_length),
            "prompt_tokens_max": float(self.prompt_fit.max_tokens_after),
        }

    def reward_history(self) -> list[dict[str, float]]:
        """``[{step, reward, reward_std, task_reward, format_failure_rate, length_penalty}]`` per logged step."""
        keys = {
            "reward": "reward_mean",
            "reward_std": "reward_std",
            "task_reward": "task_reward_mean",
            "format_failure_rate": "format_failure_rate",
            "length_penalty": "length_penalty_mean",
        }
        points = []
        for entry in self.history:
            if METRIC_PREFIX + "reward_mean" in entry:
                point: dict[str, float] = {"step": int(entry["step"])}
                point.update(
                    {name: entry[METRIC_PREFIX + key] for name, key in keys.items() if METRIC_PREFIX + key in entry}
                )
                points.append(point)
        return points

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "prompts": self.prompts,
            "sessions": self.sessions,
            "prompt_fit": dataclasses.asdict(self.prompt_fit),
        }


def grpo_args(cfg: ADRPOConfig) -> Any:
    """``trl.GRPOConfig`` for ADRPO (``grpo_arguments``: precision, activation checkpointing, vLLM, logging,
    checkpoints in ``cfg.checkpoint_dir``, seed) with ADRPO's own fields: whole sessions per batch
    (``adrpo_batch_size``), no row shuffling (``order_by_session`` shuffles sessions), the completion length."""
    return grpo_arguments(
        cfg,
        "adrpo",
        max_completion_length=cfg.max_completion_length,
        per_device_train_batch_size=adrpo_batch_size(cfg.num_generations, cfg.sessions_per_batch),
        shuffle_dataset=False,
    )


# ---------------------------------------------------------------------------------------------
# checkpoints and resume


# fields that do not change what a resumed run would have computed (run length, output places, generation engine)
_RESUME_NEUTRAL = frozenset(
    {"max_steps", "save_steps", "log_completions", "checkpoint_dir", "output_dir", "report_path", "use_vllm"}
)


def resume_fingerprint(cfg: ADRPOConfig, rows: Sequence[Mapping[str, Any]], memory_config: MemoryConfig | None) -> dict:
    """What checkpoints must have been trained with to be resumed: the settings, the starting policy's files and
    the ordered prompt rows (digests)."""
    from components.config import to_dict
    from components.io import file_digest

    settings = {k: v for k, v in to_dict(cfg).items() if k not in _RESUME_NEUTRAL and not k.startswith("vllm_")}
    memory = to_dict(memory_config) if memory_config is not None and dataclasses.is_dataclass(memory_config) else None
    policy = Path(cfg.model_name_or_path)
    files = sorted(f for f in policy.iterdir() if f.is_file()) if policy.is_dir() else []
    weights = {f.name: file_digest(f) for f in files if f.suffix in (".safetensors", ".bin") or f.name == "config.json"}
    prompts = json.dumps(list(rows), sort_keys=True, ensure_ascii=False, default=str)
    return {
        "adrpo": settings,
        "memory": memory,
        "policy_md5": weights,
        "prompts_sha256": hashlib.sha256(prompts.encode("utf-8")).hexdigest(),
    }


def resume_point(checkpoint_dir: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> str | None:
    """The checkpoint to resume from, or None; checkpoints of a run with another fingerprint are removed, with a
    warning (``components.training.checkpoints.claim_checkpoint_dir``, shared with memagent_train)."""
    return latest_checkpoint(checkpoint_dir) if claim_checkpoint_dir(checkpoint_dir, fingerprint) else None


# ---------------------------------------------------------------------------------------------
# training entry point


def train_adrpo(
    cfg: ADRPOConfig,
    prompts_dataset: Any,
    output_dir: str | os.PathLike[str],
    memory_config: MemoryConfig | None = None,
    on_log: OnLog | None = None,
    *,
    judge: Judge | None = None,
) -> ADRPOOutcome:
    """Train ``cfg.model_name_or_path`` with ADRPO on the synth_qa ``prompts`` rows; save it into ``output_dir``.

    Sessions are shuffled with ``cfg.seed``, ``cfg.sessions_per_batch`` whole sessions per step; prompts longer
    than ``cfg.max_prompt_length`` are cut as SFT cuts them (``fit_prompts``; counted in the outcome's metrics as
    ``prompts_truncated``). Checkpoints (every
    ``cfg.save_steps`` steps) go to ``cfg.checkpoint_dir``; a run finding one there from the same settings and
    prompts resumes from the latest. ``output_dir`` is replaced atomically by the trained model (plus tokenizer and
    ``memforge_model.json``), reloaded and smoke-tested before the swap. ``judge`` defaults to ``make_judge(cfg)``
    (``llm`` needs it passed in, built with the answerer and judge backends). ``on_log(logs, step)`` receives every
    trainer log, ADRPO's ``adrpo/...`` stats included.
    """
    from datasets import Dataset

    from components.training.adrpo_trainer import ADRPOTrainer, check_trl_hook

    check_trl_hook()
    started = time.perf_counter()
    out, checkpoints = Path(output_dir), Path(cfg.checkpoint_dir)
    if checkpoints.resolve().is_relative_to(out.resolve()):
        raise MemforgeError(
            f"adrpo.checkpoint_dir ({checkpoints}) must not lie inside the model folder ({out}): the model folder "
            "is replaced whole when training ends"
        )
    if prompts_dataset is None or len(prompts_dataset) == 0:
        raise MemforgeError("adrpo: no prompts to train on; run the synth_qa stage")
    rows = prompts_dataset.to_list() if hasattr(prompts_dataset, "to_list") else [dict(r) for r in prompts_dataset]
    ordered, dropped = order_by_session(rows, seed=cfg.seed)
    sessions = len(ordered) // len(PARTS)
    if sessions < cfg.sessions_per_batch:
        raise MemforgeError(
            f"adrpo: {sessions} complete session(s) (all four agents) but sessions_per_batch={cfg.sessions_per_batch}"
        )
    if dropped:
        logger.warning("adrpo: %d session(s) without all four agent prompts left out", dropped)

    model, tokenizer, saved_dtype = load_trainable(cfg.model_name_or_path)
    tokenizer.padding_side = "left"
    ordered, prompt_fit = fit_prompts(ordered, tokenizer, cfg.max_prompt_length)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    reward = ADRPOReward(cfg, judge if judge is not None else make_judge(cfg), count_tokens, memory_config)
    log = TrainingLog()
    trainer = ADRPOTrainer(
        model=model,
        args=grpo_args(cfg),
        train_dataset=Dataset.from_list(ordered),
        processing_class=tokenizer,
        callbacks=[log_forwarder(on_log, log)],
        adrpo_reward=reward,
    )
    resume = resume_point(checkpoints, resume_fingerprint(cfg, ordered, memory_config))
    result = trainer.train(resume_from_checkpoint=resume)
    log.check_finite(
        result.training_loss,
        who="adrpo",
        learning_rate_key="adrpo.learning_rate",
        learning_rate=cfg.learning_rate,
        output_dir=str(out),
    )
    outcome = ADRPOOutcome(
        output_dir=str(out),
        base_model=str(cfg.model_name_or_path),
        prompts=len(ordered),
        sessions=sessions,
        sessions_dropped=dropped,
        prompt_fit=prompt_fit,
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss),
        resumed_from=resume,
        step_seconds=log.step_seconds,
        history=log.entries,
        last_stats=last_stats(log.entries, METRIC_PREFIX),
        completions=list(trainer.adrpo_samples),
        total_params=sum(p.numel() for p in model.parameters()),
        saved_dtype=saved_dtype,
        device=str(trainer.args.device),
    )
    model, weights = trainer.model, gathered_state_dict(trainer)
    del trainer  # frees the optimizer state before the saved model is reloaded and checked
    window = cfg.max_prompt_length + cfg.max_completion_length
    save_trained(model, tokenizer, outcome, fallback_context_tokens=window, state_dict=weights)
    outcome.seconds = time.perf_counter() - started
    return outcome


def fit_prompts(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_prompt_length: int
) -> tuple[list[dict[str, Any]], FitReport]:
    """``rows`` with every prompt fitted to ``adrpo.max_prompt_length`` tokens, generation prompt included (TRL 1.16's
    ``GRPOTrainer`` does not truncate prompts): an over-long agent prompt loses the middle of its transcript exactly
    as an SFT prompt does (``sft.fit_prompt``: system prompt, session header and memories, newest turns and the
    instruction kept). The report counts the prompts cut (``shortened``) and those that still do not fit."""
    fitted, report = fit_examples(rows, tokenizer, max_prompt_length)
    if report.shortened:
        logger.info(
            "adrpo: %d of %d prompt(s) cut in the middle of the transcript to max_prompt_length=%d tokens",
            report.shortened,
            len(fitted),
            max_prompt_length,
        )
    if report.over_length:
        logger.warning(
            "adrpo: %d prompt(s) stay longer than max_prompt_length=%d tokens even with the transcript cut "
            "(longest %d); raise adrpo.max_prompt_length",
            report.over_length,
            max_prompt_length,
            report.max_tokens_before,
        )
    return fitted, report


def load_prompts(path: str | Path, splits: Sequence[str]) -> Any:
    """The prompts dataset at ``path`` restricted to ``splits``; an ``InputError`` naming ``path`` when it is
    missing, unreadable, malformed or holds no row of those splits."""
    from datasets import Dataset, load_from_disk

    folder = Path(path)
    if not (folder / "dataset_info.json").is_file() and not (folder / "state.json").is_file():
        raise InputError(folder, "no prompts dataset here; run the synth_qa stage (it joins the RL prompts)")
    try:
        dataset = load_from_disk(str(folder), keep_in_memory=True)  # never write cache files into a DVC output
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError or pyarrow errors
        raise InputError(folder, f"cannot load the prompts dataset: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dataset, Dataset):
        raise InputError(folder, f"expected one dataset with a 'split' column, found {type(dataset).__name__}")
    needed = {"prompt", "part", "split", "expert_output", "memory_before", "session", "questions"}
    missing = sorted(needed - set(dataset.column_names))
    if missing:
        raise InputError(folder, f"the prompts dataset lacks column(s) {', '.join(missing)}; rerun synth_qa")
    wanted = set(splits)
    kept = dataset.filter(lambda split: split in wanted, input_columns="split", keep_in_memory=True)
    if len(kept) == 0:
        present = ", ".join(sorted(set(dataset["split"]))) or "none"
        raise InputError(
            folder, f"no prompts of adrpo.splits {sorted(wanted)} (splits present: {present}); check expert.splits"
        )
    return kept
