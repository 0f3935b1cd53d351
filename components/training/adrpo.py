"""ADRPO (MemBuilder): GRPO with dense, attributed rewards, on TRL's ``GRPOTrainer`` (pinned: TRL 1.16).

How it plugs into TRL
---------------------
``GRPOTrainer._generate_and_score_completions(inputs)`` generates G completions per prompt, calls the reward
functions, turns rewards into per-completion advantages (shape (B,), one per completion of the process's batch)
and returns them in its output dict under ``"advantages"``; the loss multiplies every completion token's
log-prob ratio by that advantage. ``ADRPOTrainer`` overrides it:

1. TRL's single reward function is an ``ADRPOReward`` object: from the batch rows (columns of the synth_qa
   ``prompts`` dataset: ``part``, ``memory_before``, ``session``, ``questions``, ``expert_output``, ...) and the
   decoded completions it rebuilds the session groups (``groups_from_batch``), scores them with ``score_groups``
   (ONE judge call per generation batch) and returns the per-completion rewards (so TRL's ``reward`` logs are the
   ADRPO rewards); the scores are kept for step 2, nothing is scored twice;
2. after ``super()`` returns, ``output["advantages"]`` (the process's slice) is REPLACED by
   ``rewrite_advantages(rewards, group_ids, weights)``: ``A'_i = w_part(i) * (r_i - mean_g) / (std_g + eps)``
   within each (session, part) GRPO group. The attribution weights therefore scale the ADVANTAGE term of the
   policy loss (not the rewards): a dominant part's agent gets a proportionally larger update;
3. ``score_groups(...).stats()`` is logged through ``self._metrics[mode]["adrpo/..."]`` (reward mean/std overall and
   per part, format failure rates, attribution weights per part, length penalties, judge counts), so it appears in
   the trainer logs next to TRL's own metrics.

``check_trl_hook`` verifies, at construction, that the installed TRL has this hook; at run time the override also
checks that the output carries ``"advantages"`` of the expected length.

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

Heavy imports (torch, transformers, trl, datasets) happen inside functions.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.config import ADRPOConfig, MemoryConfig
from components.errors import MemforgeError
from components.memory.types import PARTS
from components.rewards import (
    BatchLayout,
    GroupScores,
    Judge,
    RewardBatch,
    groups_from_batch,
    make_judge,
    rewrite_advantages,
    score_groups,
)
from components.training.callbacks import OnLog, TrainingLog, log_forwarder

logger = logging.getLogger(__name__)

TRL_PINNED = "1.16"
HOOK = "_generate_and_score_completions"
METRIC_PREFIX = "adrpo/"
CHECKPOINT_DIR = "checkpoints"
_TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


# ---------------------------------------------------------------------------------------------
# the TRL hook guard


def check_trl_hook(trainer_cls: type | None = None) -> None:
    """Raise ``MemforgeError`` unless ``trainer_cls`` (default: TRL's ``GRPOTrainer``) has the hook ADRPO overrides.

    Checks the installed TRL version (pinned to ``TRL_PINNED``), that ``_generate_and_score_completions(inputs)``
    exists and is callable, and that its source builds an ``"advantages"`` entry in the output dict.
    """
    import trl

    if trainer_cls is None:
        from trl import GRPOTrainer

        trainer_cls = GRPOTrainer
        version = str(getattr(trl, "__version__", "?"))
        if not re.match(rf"^{re.escape(TRL_PINNED)}(\.|$)", version):
            raise MemforgeError(
                f"adrpo: TRL {version} is installed but ADRPO is pinned to TRL {TRL_PINNED}.x; it overrides the "
                f"private GRPOTrainer.{HOOK}, which other TRL versions may change; install trl=={TRL_PINNED}.*"
            )
    name = getattr(trainer_cls, "__name__", repr(trainer_cls))
    hook = getattr(trainer_cls, HOOK, None)
    if not callable(hook):
        raise MemforgeError(
            f"adrpo: {name} has no {HOOK}(inputs) method; ADRPO rewrites the advantages that this GRPOTrainer hook "
            f"returns (TRL {TRL_PINNED}); the installed TRL is not compatible"
        )
    try:
        params = list(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        params = []
    if params[:2] != ["self", "inputs"]:
        raise MemforgeError(f"adrpo: {name}.{HOOK} has signature {params}; expected (self, inputs)")
    try:
        source = inspect.getsource(hook)
    except (OSError, TypeError):
        source = ""
    if '"advantages"' not in source and "'advantages'" not in source:
        raise MemforgeError(
            f"adrpo: {name}.{HOOK} does not return an 'advantages' entry; ADRPO replaces that entry with its "
            f"attributed advantages (TRL {TRL_PINNED} layout); the installed TRL is not compatible"
        )


# ---------------------------------------------------------------------------------------------
# batching: whole sessions per batch


def adrpo_batch_size(num_generations: int, sessions_per_batch: int = 1) -> int:
    """Completions per device batch: four agents x ``sessions_per_batch`` sessions x G rollouts."""
    if num_generations < 2 or sessions_per_batch < 1:
        raise MemforgeError(
            f"adrpo: need num_generations >= 2 and sessions_per_batch >= 1, got {num_generations}, {sessions_per_batch}"
        )
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
    """One generation batch's ADRPO scores, aligned with the process's completions."""

    scores: GroupScores
    layout: BatchLayout
    batch: RewardBatch


class ADRPOReward:
    """TRL reward function: ADRPO rewards for a batch of ``prompts``-dataset rows; keeps the scores for the trainer."""

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

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS and k != "completion_ids"}
        rows = [{k: values[i] for k, values in columns.items()} for i in range(len(completions))]
        groups, layout = groups_from_batch(rows, completions, cache=self.cache, memory_config=self.memory_config)
        scores = score_groups(groups, self.judge, self.cfg, self.count_tokens)
        batch = scores.gather(layout)
        self.last = ScoredBatch(scores, layout, batch)
        self.calls += 1
        return [float(r) for r in batch.rewards]

    def take(self) -> ScoredBatch:
        """The scores of the batch just rewarded (each batch is taken once)."""
        if self.last is None:
            raise MemforgeError("adrpo: no scored batch; the ADRPO reward function did not run for this batch")
        last, self.last = self.last, None
        return last


# ---------------------------------------------------------------------------------------------
# the trainer


def _grpo_trainer_cls() -> type:
    from trl import GRPOTrainer

    class ADRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose advantages are ADRPO's attributed ones (see the module docstring)."""

        def __init__(self, *args: Any, adrpo_reward: ADRPOReward, **kwargs: Any) -> None:
            check_trl_hook()
            check_trl_hook(type(self))
            if kwargs.get("reward_funcs") is None:
                kwargs["reward_funcs"] = [adrpo_reward]
            funcs = kwargs["reward_funcs"]
            funcs = funcs if isinstance(funcs, list) else [funcs]
            if funcs != [adrpo_reward]:
                raise MemforgeError("adrpo: the ADRPO reward must be the trainer's only reward function")
            super().__init__(*args, **kwargs)
            args_ = self.args
            if args_.steps_per_generation != 1 or args_.num_iterations != 1:
                # supported by the rewrite (it covers the whole generation batch), but the batch-size rule assumes 1
                logger.info(
                    "adrpo: steps_per_generation=%s num_iterations=%s", args_.steps_per_generation, args_.num_iterations
                )
            if args_.shuffle_dataset:
                raise MemforgeError(
                    "adrpo: shuffle_dataset must be False (a session's four prompts must stay together; shuffle "
                    "sessions with order_by_session instead)"
                )
            if args_.generation_batch_size % (len(PARTS) * self.num_generations):
                raise MemforgeError(
                    f"adrpo: generation batch of {args_.generation_batch_size} completions does not hold whole "
                    f"sessions (4 agents x G={self.num_generations}); use adrpo_batch_size()"
                )
            self.adrpo_reward = adrpo_reward
            self.adrpo_last: dict[str, Any] = {}

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            output = super()._generate_and_score_completions(inputs)
            if "advantages" not in output:
                raise MemforgeError(f"adrpo: GRPOTrainer.{HOOK} returned no 'advantages' (keys: {sorted(output)})")
            scored = self.adrpo_reward.take()
            trl_advantages = output["advantages"]
            batch = scored.batch
            if trl_advantages.dim() != 1 or trl_advantages.shape[0] != batch.rewards.shape[0]:
                raise MemforgeError(
                    f"adrpo: TRL advantages have shape {tuple(trl_advantages.shape)}, but {batch.rewards.shape[0]} "
                    "completions were scored on this process"
                )
            advantages = rewrite_advantages(batch.rewards, batch.group_ids, batch.weights)
            output["advantages"] = torch.as_tensor(advantages, dtype=trl_advantages.dtype, device=trl_advantages.device)
            self.adrpo_last = {
                "rewards": batch.rewards.copy(),
                "group_ids": batch.group_ids.copy(),
                "weights": batch.weights.copy(),
                "trl_advantages": trl_advantages.detach().cpu().numpy().copy(),
                "advantages": np.asarray(advantages, dtype=np.float64).copy(),
                "scores": scored.scores,
            }
            mode = "train" if self.model.training else "eval"
            logged = self._logs["advantages"]
            if self.accelerator.num_processes == 1 and len(logged) >= len(advantages):
                # the completions table shows the advantages the loss uses (TRL logged its own just before)
                for _ in range(len(advantages)):
                    logged.pop()
                logged.extend(float(a) for a in advantages)
            for key, value in scored.scores.stats().items():
                self._metrics[mode][METRIC_PREFIX + key].append(float(value))
            self._metrics[mode][METRIC_PREFIX + "advantage_abs_mean"].append(float(np.mean(np.abs(advantages))))
            return output

    return ADRPOTrainer


_TRAINER_CLS: type | None = None


def __getattr__(name: str) -> Any:
    """``ADRPOTrainer`` is built on first access (TRL is imported lazily)."""
    global _TRAINER_CLS
    if name == "ADRPOTrainer":
        if _TRAINER_CLS is None:
            _TRAINER_CLS = _grpo_trainer_cls()
        return _TRAINER_CLS
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# training entry point


@dataclass
class ADRPOOutcome:
    """What an ADRPO run did; ``metrics()`` feeds DVC and MLflow."""

    output_dir: str
    base_model: str
    prompts: int
    sessions: int
    sessions_dropped: int
    steps: int
    train_loss: float
    seconds: float
    resumed_from: str | None = None
    step_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    last_stats: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        steady = self.step_seconds[1:] or self.step_seconds
        out = {
            "prompts": float(self.prompts),
            "sessions": float(self.sessions),
            "sessions_dropped": float(self.sessions_dropped),
            "steps": float(self.steps),
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(float(np.median(steady)), 4) if steady else 0.0,
        }
        out.update({f"final_{k}": v for k, v in self.last_stats.items()})
        return out


def grpo_args(
    cfg: ADRPOConfig,
    output_dir: str | os.PathLike[str],
    *,
    sessions_per_batch: int = 1,
    save_steps: int | None = None,
    seed: int = 0,
) -> Any:
    """``trl.GRPOConfig`` for ADRPO: whole sessions per batch, no row shuffling, CPU when no CUDA, no reporters."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=adrpo_batch_size(cfg.num_generations, sessions_per_batch),
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        shuffle_dataset=False,
        use_vllm=cfg.use_vllm,
        bf16=cfg.bf16 and cuda,
        fp16=False,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        seed=seed,
        data_seed=seed,
        logging_nan_inf_filter=False,
        dataloader_num_workers=0,
        log_completions=False,
    )


def latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The highest ``checkpoint-N`` folder under ``folder``, or None."""
    path = Path(folder)
    if not path.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return str(max(found)[1]) if found else None


def train_adrpo(
    cfg: ADRPOConfig,
    prompts_dataset: Any,
    output_dir: str | os.PathLike[str],
    memory_config: MemoryConfig | None = None,
    on_log: OnLog | None = None,
    *,
    judge: Judge | None = None,
    sessions_per_batch: int = 1,
    save_steps: int | None = None,
    seed: int = 0,
) -> ADRPOOutcome:
    """Train ``cfg.model_name_or_path`` with ADRPO on the synth_qa ``prompts`` dataset; save it into ``output_dir``.

    Checkpoints (every ``save_steps`` steps when given) go to ``output_dir/checkpoints``; a run finding one there
    resumes from the latest. ``judge`` defaults to ``make_judge(cfg)`` (``llm`` needs it passed in, built with the
    answerer and judge backends). ``on_log(logs, step)`` receives every trainer log, ADRPO's ``adrpo/...`` included.
    """
    from datasets import Dataset

    from components.llm.model_assets import load_model_folder, normalise_tokenizer

    check_trl_hook()
    started = time.perf_counter()
    if prompts_dataset is None or len(prompts_dataset) == 0:
        raise MemforgeError("adrpo: no prompts to train on; run the synth_qa stage")
    rows = prompts_dataset.to_list() if hasattr(prompts_dataset, "to_list") else [dict(r) for r in prompts_dataset]
    ordered, dropped = order_by_session(rows, seed=seed)
    sessions = len(ordered) // len(PARTS)
    if sessions < sessions_per_batch:
        raise MemforgeError(
            f"adrpo: {sessions} complete session(s) (all four agents) but sessions_per_batch={sessions_per_batch}"
        )
    if dropped:
        logger.warning("adrpo: %d session(s) without all four agent prompts left out", dropped)

    model, tokenizer = load_model_folder(Path(cfg.model_name_or_path), "float32")
    if not getattr(tokenizer, "chat_template", None):
        raise MemforgeError(f"adrpo: {cfg.model_name_or_path}: the tokenizer has no chat template")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    _warn_long_prompts(ordered, tokenizer, cfg.max_prompt_length)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    reward = ADRPOReward(cfg, judge if judge is not None else make_judge(cfg), count_tokens, memory_config)
    out = Path(output_dir)
    checkpoints = out / CHECKPOINT_DIR
    log = TrainingLog()
    trainer_cls = __getattr__("ADRPOTrainer")
    trainer = trainer_cls(
        model=model,
        args=grpo_args(cfg, checkpoints, sessions_per_batch=sessions_per_batch, save_steps=save_steps, seed=seed),
        train_dataset=Dataset.from_list(ordered),
        processing_class=tokenizer,
        callbacks=[log_forwarder(on_log, log)],
        adrpo_reward=reward,
    )
    resume = latest_checkpoint(checkpoints)
    result = trainer.train(resume_from_checkpoint=resume)
    if not math.isfinite(result.training_loss):
        raise MemforgeError(f"adrpo: training diverged (loss {result.training_loss}); lower adrpo.learning_rate")
    out.mkdir(parents=True, exist_ok=True)
    trained = trainer.model
    trained.config.use_cache = True
    trained.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    adrpo_logs = [entry for entry in log.entries if any(k.startswith(METRIC_PREFIX) for k in entry)]
    last = {
        k[len(METRIC_PREFIX) :]: v
        for k, v in (adrpo_logs[-1] if adrpo_logs else {}).items()
        if k.startswith(METRIC_PREFIX)
    }
    return ADRPOOutcome(
        output_dir=str(out),
        base_model=str(cfg.model_name_or_path),
        prompts=len(ordered),
        sessions=sessions,
        sessions_dropped=dropped,
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - started,
        resumed_from=resume,
        step_seconds=log.step_seconds,
        history=log.entries,
        last_stats=last,
    )


def _warn_long_prompts(rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_prompt_length: int) -> None:
    """TRL 1.16's GRPOConfig has no prompt truncation: report prompts longer than ``adrpo.max_prompt_length``."""
    long = 0
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
        long += len(ids["input_ids"]) > max_prompt_length
    if long:
        logger.warning(
            "adrpo: %d prompt(s) exceed max_prompt_length=%d tokens (not truncated)", long, max_prompt_length
        )
