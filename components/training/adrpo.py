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

Checkpoints, resume, outputs
----------------------------
``train_adrpo`` reads every setting from ``ADRPOConfig`` (``sessions_per_batch``, ``save_steps``, ``seed``, vLLM).
Checkpoints (optimizer and RNG state included; the latest one only) go to ``cfg.checkpoint_dir``, apart from the
model folder, with ``memforge_run.json`` recording the settings and prompts they belong to; a rerun resumes
from the latest checkpoint when that record matches (after a kill) and starts afresh otherwise. The trained model
replaces ``output_dir`` atomically, with a ``memforge_model.json`` card. The trainer keeps the last step's
completions (``completion_rows``: session, part, rollout, text, reward and its factors) for an MLflow table.

Heavy imports (torch, transformers, trl, datasets) happen inside functions.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import json
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
    completion_text,
    groups_from_batch,
    make_judge,
    rewrite_advantages,
    score_groups,
)
from components.training.callbacks import OnLog, TrainingLog, log_forwarder
from components.training.lazy import lazy_class
from components.training.saving import finish_trained_folder, saved_dtype_of

logger = logging.getLogger(__name__)

TRL_PINNED = "1.16"
HOOK = "_generate_and_score_completions"
METRIC_PREFIX = "adrpo/"
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
    """One generation batch's ADRPO scores, aligned with the process's completions (``texts``, batch order)."""

    scores: GroupScores
    layout: BatchLayout
    batch: RewardBatch
    texts: list[str] = field(default_factory=list)


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


def completion_rows(scored: ScoredBatch, advantages: Sequence[float], step: int) -> list[dict[str, Any]]:
    """One row per completion of a scored batch: what was written, its reward and every factor (an MLflow table)."""
    rows = []
    for index, (group_index, part, rollout) in enumerate(scored.layout.positions):
        score = scored.scores.groups[group_index].scores[part][rollout]
        rows.append(
            {
                "step": step,
                "session": score.group_id,
                "part": part,
                "rollout": rollout,
                "completion": scored.texts[index] if index < len(scored.texts) else "",
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
            self.adrpo_samples: list[dict[str, Any]] = []  # the last scored batch, one row per completion

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
            self.adrpo_samples = completion_rows(scored, advantages, int(self.state.global_step) + 1)
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


__getattr__ = lazy_class("ADRPOTrainer", _grpo_trainer_cls)


# ---------------------------------------------------------------------------------------------
# training entry point


@dataclass
class ADRPOOutcome:
    """What an ADRPO run did; ``metrics()`` feeds DVC and MLflow, ``summary()`` the model card.

    ``history`` holds every trainer log (``adrpo/...`` stats included) with its step; ``completions`` the last
    step's completions, one row each (``completion_rows``).
    """

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
    completions: list[dict[str, Any]] = field(default_factory=list)
    total_params: int = 0
    saved_dtype: str = "float32"
    device: str = "cpu"

    def metrics(self) -> dict[str, float]:
        steady = self.step_seconds[1:] or self.step_seconds
        out = {
            "prompts": float(self.prompts),
            "sessions": float(self.sessions),
            "sessions_dropped": float(self.sessions_dropped),
            "steps": float(self.steps),
            "train_loss": self.train_loss,
            "resumed": float(self.resumed_from is not None),
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(float(np.median(steady)), 4) if steady else 0.0,
        }
        out.update({f"final_{k}": v for k, v in self.last_stats.items()})
        return out

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
        """The ``adrpo`` section of the model card."""
        return {
            "base_model": self.base_model,
            "prompts": self.prompts,
            "sessions": self.sessions,
            "steps": self.steps,
            "train_loss": self.train_loss,
            "resumed_from": self.resumed_from,
            "final": dict(self.last_stats),
            "total_params": self.total_params,
            "device": self.device,
        }


def vllm_kwargs(cfg: ADRPOConfig) -> dict[str, Any]:
    """``GRPOConfig`` vLLM fields for ``cfg``: the mode, plus the server URL (server) or memory share (colocate).

    An empty ``vllm_server_base_url`` leaves TRL's default server (``vllm_server_host:vllm_server_port``, i.e.
    ``trl vllm-serve`` on port 8000 of this machine).
    """
    if not cfg.use_vllm:
        return {"use_vllm": False}
    if cfg.vllm_mode == "server":
        url = cfg.vllm_server_base_url.strip()
        return {"use_vllm": True, "vllm_mode": "server", **({"vllm_server_base_url": url} if url else {})}
    if cfg.vllm_mode == "colocate":
        if not 0 < cfg.vllm_gpu_memory_utilization <= 1:
            raise MemforgeError(
                f"adrpo.vllm_gpu_memory_utilization must be in (0, 1], got {cfg.vllm_gpu_memory_utilization}"
            )
        return {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        }
    raise MemforgeError(f"adrpo.vllm_mode must be 'colocate' or 'server', got {cfg.vllm_mode!r}")


def grpo_args(cfg: ADRPOConfig) -> Any:
    """``trl.GRPOConfig`` for ADRPO: whole sessions per batch, no row shuffling, checkpoints in ``cfg.checkpoint_dir``
    every ``cfg.save_steps`` steps (0 = none; the latest one only is kept), vLLM when ``cfg.use_vllm`` (needs CUDA),
    CPU (and no activation checkpointing) when no CUDA, no reporters."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    if cfg.use_vllm and not cuda:
        raise MemforgeError("adrpo.use_vllm needs a CUDA GPU (vLLM is CUDA-only); set adrpo.use_vllm: false on CPU")
    if cfg.save_steps < 0:
        raise MemforgeError(f"adrpo.save_steps must be >= 0 (0 = no checkpoints), got {cfg.save_steps}")
    return GRPOConfig(
        output_dir=str(cfg.checkpoint_dir),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=adrpo_batch_size(cfg.num_generations, cfg.sessions_per_batch),
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        shuffle_dataset=False,
        **vllm_kwargs(cfg),
        bf16=cfg.bf16 and cuda,
        fp16=False,
        use_cpu=not cuda,
        activation_checkpointing=True,  # TRL default, on CPU too: without it 8 rollouts of 4K-token prompts take 23 GB
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=1,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_nan_inf_filter=False,
        dataloader_num_workers=0,
        log_completions=False,
    )


# ---------------------------------------------------------------------------------------------
# checkpoints and resume


def latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The highest ``checkpoint-N`` folder under ``folder``, or None."""
    path = Path(folder)
    if not path.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return str(max(found)[1]) if found else None


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
    from components.training.checkpoints import claim_checkpoint_dir

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

    Sessions are shuffled with ``cfg.seed``, ``cfg.sessions_per_batch`` whole sessions per step. Checkpoints (every
    ``cfg.save_steps`` steps) go to ``cfg.checkpoint_dir``; a run finding one there from the same settings and
    prompts resumes from the latest. ``output_dir`` is replaced atomically by the trained model (plus tokenizer and
    ``memforge_model.json``), reloaded and smoke-tested before the swap. ``judge`` defaults to ``make_judge(cfg)``
    (``llm`` needs it passed in, built with the answerer and judge backends). ``on_log(logs, step)`` receives every
    trainer log, ADRPO's ``adrpo/...`` stats included.
    """
    import torch
    from datasets import Dataset

    from components.io import atomic_directory
    from components.llm.model_assets import (
        load_model_folder,
        normalise_tokenizer,
    )

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

    saved_dtype = saved_dtype_of(Path(cfg.model_name_or_path))
    model, tokenizer = load_model_folder(Path(cfg.model_name_or_path), "float32")
    if not getattr(tokenizer, "chat_template", None):
        raise MemforgeError(f"adrpo: {cfg.model_name_or_path}: the tokenizer has no chat template")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    _warn_long_prompts(ordered, tokenizer, cfg.max_prompt_length)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    reward = ADRPOReward(cfg, judge if judge is not None else make_judge(cfg), count_tokens, memory_config)
    log = TrainingLog()
    trainer_cls = __getattr__("ADRPOTrainer")
    trainer = trainer_cls(
        model=model,
        args=grpo_args(cfg),
        train_dataset=Dataset.from_list(ordered),
        processing_class=tokenizer,
        callbacks=[log_forwarder(on_log, log)],
        adrpo_reward=reward,
    )
    resume = resume_point(checkpoints, resume_fingerprint(cfg, ordered, memory_config))
    result = trainer.train(resume_from_checkpoint=resume)
    if log.diverged or not math.isfinite(result.training_loss):
        raise MemforgeError(
            f"adrpo: training diverged (loss or gradient norm not finite); lower adrpo.learning_rate (now "
            f"{cfg.learning_rate}); {out} was left as it was"
        )
    adrpo_logs = [entry for entry in log.entries if any(k.startswith(METRIC_PREFIX) for k in entry)]
    last = {
        k[len(METRIC_PREFIX) :]: v
        for k, v in (adrpo_logs[-1] if adrpo_logs else {}).items()
        if k.startswith(METRIC_PREFIX)
    }
    outcome = ADRPOOutcome(
        output_dir=str(out),
        base_model=str(cfg.model_name_or_path),
        prompts=len(ordered),
        sessions=sessions,
        sessions_dropped=dropped,
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss),
        seconds=0.0,
        resumed_from=resume,
        step_seconds=log.step_seconds,
        history=log.entries,
        last_stats=last,
        completions=list(trainer.adrpo_samples),
        total_params=sum(p.numel() for p in trainer.model.parameters()),
        saved_dtype=saved_dtype,
        device=str(trainer.args.device),
    )
    with atomic_directory(out) as staging:
        trained = trainer.model
        trained.config.use_cache = True
        trained.to(getattr(torch, saved_dtype)).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        del trainer, trained, model
        gc.collect()
        finish_trained_folder(
            staging,
            tokenizer,
            kind="adrpo",
            base=Path(cfg.model_name_or_path),
            final_dir=outcome.output_dir,
            dtype=outcome.saved_dtype,
            parameter_count=outcome.total_params,
            fallback_context_tokens=cfg.max_prompt_length + cfg.max_completion_length,
            summary=outcome.summary(),
        )
    outcome.seconds = time.perf_counter() - started
    return outcome


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
