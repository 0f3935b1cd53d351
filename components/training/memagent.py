"""MemAgent's multi-conversation GRPO, on TRL's ``GRPOTrainer`` (pinned: TRL 1.16).

The objective (MemAgent, arXiv 2507.02259)
-------------------------------------------
A *trajectory* answers one question: for every chunk of ``reader.chunk_tokens`` tokens of the question's input, one
*conversation* whose prompt is ``update_messages(question, memory, chunk)`` and whose completion is the new memory
(at most ``reader.memory_tokens`` tokens; it overwrites the old one), then one final conversation
``answer_messages(question, memory)`` -> the answer (at most ``reader.answer_tokens`` tokens). G =
``num_generations`` trajectories per question are sampled (temperature / top_p). The trajectory's reward is
``scoring.reward(answer, answers)`` (0/1 exact match of the last ``\\boxed{}``); its advantage is
``reward - mean(group rewards)`` (no division by the group's std, as in the paper), and that one advantage is
broadcast to every completion token of every conversation of the trajectory. The policy loss is TRL's: PPO clip
(``epsilon``), KL to the reference (``beta``), and loss type ``dapo`` by default, i.e. token-level normalisation over
all completion tokens of the step, which is the paper's multi-conversation DAPO objective.

How it plugs into TRL
---------------------
TRL's ``RepeatSampler`` hands ``_generate_and_score_completions(inputs)`` one generation batch: ``questions_per_step``
dataset rows (``sample_index``, ``sample_id``, ``answers``, ``prompt`` = the question), each repeated G times in a row.
``MemAgentTrainer`` overrides that hook:

1. ``rollout`` reads every question's input chunk by chunk, all trajectories in lock step (one batched generation
   per chunk step, then one for the answers). The chunks are streamed from ``TrainSample.pieces()`` and shared by the
   G trajectories of a question. Generation is TRL's own ``_tokenize_prompts`` (chat template) +
   ``_generate_single_turn`` (``unwrap_model_for_generation`` + ``model.generate`` with TRL's sampling config, or
   TRL's vLLM backend, which takes token-id prompts), with the completion limit switched between the memory and the
   answer length;
2. the answers are scored through TRL's reward hook ``_calculate_rewards`` (dataset columns such as ``answers`` reach
   the reward functions as keyword arguments; rewards are gathered over processes), by default with
   ``boxed_em_reward``;
3. ``group_advantages`` (reward - group mean over the G trajectories) and ``broadcast_advantages`` (one value per
   conversation row) give the per-row advantages;
4. the returned dict has one ROW PER CONVERSATION (a variable number per step): ``prompt_ids`` / ``prompt_mask``
   (left-padded), ``completion_ids`` / ``completion_mask`` (right-padded), ``advantages`` (B,),
   ``num_items_in_batch`` (completion tokens over all processes), ``old_per_token_logps`` (only when TRL would
   compute it: the generation batch is reused across optimizer steps) and ``ref_per_token_logps`` (when
   ``beta != 0``), both computed with TRL's ``_get_per_token_logps_and_entropies``. TRL's ``_compute_loss`` then
   computes the log-probs, ratios, clipping, KL, loss normalisation and its ``kl`` / ``clip_ratio/*`` / ``entropy``
   metrics unchanged.

``check_trl_hook`` verifies, at construction, that the installed TRL has every private method used here with the
expected signature. Heavy imports (torch, transformers, trl, datasets) happen inside functions.

Limits
------
* vLLM (``use_vllm``): rollouts go through TRL's ``VLLMGeneration`` (colocate by default), which takes token-id
  prompts, one completion per row; TRL's vLLM importance-sampling correction is switched off, because the hook does
  not pass vLLM's sampling log-probs on. Not exercised by the CPU tests.
* Several processes: rewards are gathered and each process holds whole groups, so advantages are right; but each
  process reads its own questions, so they make different numbers of generation calls, which generation paths with
  collectives (vLLM server, DeepSpeed ZeRO-3, FSDP) do not allow.
* Memory: TRL's loss runs one forward over all conversation rows of a step (``questions_per_step`` x G x
  (chunks + 1) rows); bound it with ``questions_per_step`` (TRL's gradient checkpointing is on by default).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.agent.chunking import Encode, chunk_ids, token_stream, tokenizer_codec
from components.agent.prompts import answer_messages, update_messages
from components.agent.scoring import last_boxed, reward
from components.config import MemAgentTrainConfig, ReaderConfig
from components.errors import MemforgeError
from components.llm.backends import Message
from components.training.adrpo import TRL_PINNED, latest_checkpoint
from components.training.callbacks import OnLog, TrainingLog, log_forwarder
from components.training.lazy import lazy_class
from components.training.saving import finish_trained_folder, saved_dtype_of

logger = logging.getLogger(__name__)

HOOK = "_generate_and_score_completions"
METRIC_PREFIX = "memagent/"

# The private TRL methods this module relies on, with the leading parameters it passes.
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    HOOK: ("self", "inputs"),
    "_tokenize_prompts": ("self", "prompts"),
    "_generate_single_turn": ("self", "prompt_ids", "images", "multimodal_fields", "num_generations"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep"),
    "_compute_loss": ("self", "model", "inputs"),
}
# The keys of the hook's output that TRL's ``_compute_loss`` must read.
LOSS_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "ref_per_token_logps")

Generate = Callable[[list[list[Message]], int], tuple[list[list[int]], list[list[int]], list[str]]]


# ---------------------------------------------------------------------------------------------
# samples and trajectories


@dataclass(frozen=True)
class TrainSample:
    """One training question; ``pieces()`` yields its input's text pieces (documents) afresh on every call."""

    id: str
    question: str
    answers: tuple[str, ...]
    pieces: Callable[[], Iterable[str]]

    def __post_init__(self) -> None:
        answers = (self.answers,) if isinstance(self.answers, str) else tuple(self.answers)
        object.__setattr__(self, "answers", answers)
        if not str(self.question).strip():
            raise MemforgeError(f"memagent_train: sample {self.id!r} has an empty question")
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise MemforgeError(f"memagent_train: sample {self.id!r} needs at least one non-empty gold answer")
        if not callable(self.pieces):
            raise MemforgeError(f"memagent_train: sample {self.id!r}: pieces must be a zero-argument callable")


@dataclass
class Trajectory:
    """One sampled reading of a question: its conversations (token ids), final memory, answer, reward, advantage."""

    sample: TrainSample
    memory: str = ""
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    answer: str = ""
    reward: float = math.nan
    advantage: float = 0.0

    @property
    def conversations(self) -> int:
        """Chunk conversations + the answer conversation."""
        return len(self.completion_ids)

    @property
    def memory_lengths(self) -> list[int]:
        """Tokens of each memory update (every conversation but the last)."""
        return [len(ids) for ids in self.completion_ids[:-1]]

    def record(self, step: int) -> dict[str, Any]:
        """A row of the sampled-trajectories table."""
        return {
            "step": step,
            "sample_id": self.sample.id,
            "question": self.sample.question,
            "gold": " | ".join(self.sample.answers),
            "final_memory": self.memory,
            "answer": self.answer,
            "reward": float(self.reward),
            "advantage": float(self.advantage),
            "conversations": self.conversations,
        }


# ---------------------------------------------------------------------------------------------
# pure pieces


def group_advantages(rewards: Sequence[float], group_ids: Sequence[Hashable]) -> np.ndarray:
    """``reward - mean(rewards of its group)``; NaN rewards (unscorable) leave the mean and get advantage 0."""
    values = np.asarray(rewards, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(group_ids):
        raise MemforgeError(f"memagent_train: {values.shape} rewards for {len(group_ids)} group ids")
    out = np.zeros_like(values)
    groups: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        groups.setdefault(gid, []).append(i)
    for members in groups.values():
        scored = [i for i in members if np.isfinite(values[i])]
        if scored:
            mean = float(np.mean(values[scored]))
            out[scored] = values[scored] - mean
    return out


def broadcast_advantages(
    trajectory_advantages: Sequence[float], conversations_per_trajectory: Sequence[int]
) -> np.ndarray:
    """One advantage per conversation row, trajectory-major: trajectory i's value repeated for its conversations."""
    values = np.asarray(trajectory_advantages, dtype=np.float64)
    counts = np.asarray(conversations_per_trajectory, dtype=np.int64)
    if values.shape != counts.shape or (counts < 0).any():
        raise MemforgeError(
            f"memagent_train: {values.shape} trajectory advantages for conversation counts {counts.tolist()}"
        )
    return np.repeat(values, counts)


def completion_text(completion: Any) -> str:
    """A completion as text: a string as is; chat messages -> the last message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def boxed_em_reward(prompts: Sequence[Any], completions: Sequence[Any], answers: Sequence[Sequence[str]], **_: Any):
    """TRL reward function: ``scoring.reward`` (0/1 EM of the last ``\\boxed{}``) of each final answer."""
    return [reward(completion_text(c), gold) for c, gold in zip(completions, answers, strict=True)]


def rollout(
    samples: Sequence[TrainSample],
    reader: ReaderConfig,
    encode: Encode,
    decode: Callable[[list[int]], str],
    generate: Generate,
) -> list[Trajectory]:
    """One trajectory per entry of ``samples`` (repeat a sample for several trajectories), read in lock step.

    Each distinct sample's input streams through ``chunk_ids`` once (its chunks are shared by its trajectories);
    ``generate(conversations, max_new_tokens)`` returns (prompt ids, completion ids, completion texts).
    """
    trajectories = [Trajectory(sample) for sample in samples]
    streams: dict[int, Iterator[list[int]]] = {}
    for sample in samples:
        if id(sample) not in streams:
            streams[id(sample)] = chunk_ids(token_stream(sample.pieces(), encode), reader.chunk_tokens)
    while streams:
        chunks = {key: next(stream, None) for key, stream in streams.items()}
        texts = {key: decode(ids) for key, ids in chunks.items() if ids is not None}
        streams = {key: stream for key, stream in streams.items() if key in texts}
        active = [t for t in trajectories if id(t.sample) in texts]
        if not active:
            break
        conversations = [update_messages(t.sample.question, t.memory, texts[id(t.sample)]) for t in active]
        prompt_ids, completion_ids, outputs = generate(conversations, reader.memory_tokens)
        for t, p, c, text in zip(active, prompt_ids, completion_ids, outputs, strict=True):
            t.prompt_ids.append(list(p))
            t.completion_ids.append(list(c))
            t.memory = text.strip()
    conversations = [answer_messages(t.sample.question, t.memory) for t in trajectories]
    prompt_ids, completion_ids, outputs = generate(conversations, reader.answer_tokens)
    for t, p, c, text in zip(trajectories, prompt_ids, completion_ids, outputs, strict=True):
        t.prompt_ids.append(list(p))
        t.completion_ids.append(list(c))
        t.answer = text
    return trajectories


def trajectory_stats(trajectories: Sequence[Trajectory], memory_tokens: int) -> dict[str, float]:
    """Reader statistics of one step's trajectories (rewards, boxed answers, conversations, memory lengths)."""
    rewards = np.array([t.reward for t in trajectories], dtype=np.float64)
    advantages = np.array([t.advantage for t in trajectories], dtype=np.float64)
    memory = [n for t in trajectories for n in t.memory_lengths]
    scored = rewards[np.isfinite(rewards)]
    return {
        "reward_mean": float(scored.mean()) if scored.size else 0.0,
        "reward_std": float(scored.std()) if scored.size else 0.0,
        "boxed_fraction": float(np.mean([last_boxed(t.answer) is not None for t in trajectories])),
        "conversations_per_trajectory": float(np.mean([t.conversations for t in trajectories])),
        "memory_tokens_mean": float(np.mean(memory)) if memory else 0.0,
        "memory_clipped_ratio": float(np.mean([n >= memory_tokens for n in memory])) if memory else 0.0,
        "answer_tokens_mean": float(np.mean([len(t.completion_ids[-1]) for t in trajectories])),
        "advantage_mean": float(advantages.mean()),
        "advantage_std": float(advantages.std()),
        "advantage_abs_mean": float(np.abs(advantages).mean()),
        "advantage_max": float(advantages.max()),
        "advantage_min": float(advantages.min()),
    }


# ---------------------------------------------------------------------------------------------
# the TRL hook guard


def check_trl_hook(trainer_cls: type | None = None) -> None:
    """Raise ``MemforgeError`` unless ``trainer_cls`` (default: TRL's ``GRPOTrainer``) has what this trainer uses.

    Checks the installed TRL version (pinned to ``TRL_PINNED``), that every method of ``REQUIRED_METHODS`` exists with
    those leading parameters, that the hook builds an ``"advantages"`` entry, and that ``_compute_loss`` reads the keys
    of ``LOSS_KEYS``.
    """
    import trl

    if trainer_cls is None:
        from trl import GRPOTrainer

        trainer_cls = GRPOTrainer
        version = str(getattr(trl, "__version__", "?"))
        if not re.match(rf"^{re.escape(TRL_PINNED)}(\.|$)", version):
            raise MemforgeError(
                f"memagent_train: TRL {version} is installed but the trainer is pinned to TRL {TRL_PINNED}.x; it "
                f"overrides private GRPOTrainer methods that other versions may change; install trl=={TRL_PINNED}.*"
            )
    name = getattr(trainer_cls, "__name__", repr(trainer_cls))
    for method, expected in REQUIRED_METHODS.items():
        function = getattr(trainer_cls, method, None)
        if not callable(function):
            raise MemforgeError(
                f"memagent_train: {name} has no {method}{expected[1:]} method; the multi-conversation trainer needs it "
                f"(TRL {TRL_PINNED}); the installed TRL is not compatible"
            )
        try:
            params = tuple(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            params = ()
        if params[: len(expected)] != expected:
            raise MemforgeError(f"memagent_train: {name}.{method} has signature {params}; expected {expected} first")
    if not _source_mentions(getattr(trainer_cls, HOOK), ("advantages",)):
        raise MemforgeError(
            f"memagent_train: {name}.{HOOK} does not return an 'advantages' entry (TRL {TRL_PINNED} layout); the "
            "installed TRL is not compatible"
        )
    missing = [key for key in LOSS_KEYS if not _source_mentions(trainer_cls._compute_loss, (key,))]
    if missing:
        raise MemforgeError(
            f"memagent_train: {name}._compute_loss does not read {missing}; the hook's output would not reach the "
            f"loss (TRL {TRL_PINNED} layout); the installed TRL is not compatible"
        )


def _source_mentions(function: Any, keys: Sequence[str]) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return all(f'"{key}"' in source or f"'{key}'" in source for key in keys)


# ---------------------------------------------------------------------------------------------
# the trainer


def _memagent_trainer_cls() -> type:
    import torch
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import pad, use_adapter

    class MemAgentTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose generation batch expands into every conversation of every trajectory (see module)."""

        def __init__(
            self, *args: Any, samples: Sequence[TrainSample], reader: ReaderConfig, log_trajectories: int = 4, **kw: Any
        ) -> None:
            check_trl_hook()
            check_trl_hook(type(self))
            if kw.get("reward_funcs") is None:
                kw["reward_funcs"] = [boxed_em_reward]
            super().__init__(*args, **kw)
            if self.args.steps_per_generation != 1:
                raise MemforgeError(
                    "memagent_train: steps_per_generation must be 1 (TRL splits a generation batch into equal row "
                    f"slices, and a step's conversation count varies); got {self.args.steps_per_generation}"
                )
            self.memagent_samples = list(samples)
            self.memagent_reader = reader
            self.memagent_codec = tokenizer_codec(self._tokenizer)
            self.memagent_log_trajectories = log_trajectories
            self.memagent_window = getattr(self.model.config, "max_position_embeddings", None)
            self.memagent_last: dict[str, Any] = {}
            if self.accelerator.num_processes > 1:
                logger.warning(
                    "memagent_train: %d processes: each reads its own questions, so processes make different numbers "
                    "of generation calls per step; generation paths with collectives (vLLM server, DeepSpeed ZeRO-3, "
                    "FSDP) need equal counts and are not supported",
                    self.accelerator.num_processes,
                )

        @contextmanager
        def _completion_limit(self, tokens: int) -> Iterator[None]:
            """Generate at most ``tokens`` new tokens inside the block (transformers and vLLM paths)."""
            config = getattr(self, "generation_config", None)
            kwargs = getattr(self, "generation_kwargs", None)
            vllm = getattr(self, "vllm_generation", None) if self.use_vllm else None
            saved = (
                getattr(config, "max_new_tokens", None),
                (kwargs or {}).get("max_new_tokens"),
                getattr(vllm, "max_completion_length", None),
            )
            if config is not None:
                config.max_new_tokens = tokens
            if kwargs is not None:
                kwargs["max_new_tokens"] = tokens
            if vllm is not None:
                vllm.max_completion_length = tokens
            try:
                yield
            finally:
                if config is not None:
                    config.max_new_tokens = saved[0]
                if kwargs is not None:
                    kwargs["max_new_tokens"] = saved[1]
                if vllm is not None:
                    vllm.max_completion_length = saved[2]

        def _memagent_generate(
            self, conversations: list[list[Message]], max_new_tokens: int
        ) -> tuple[list[list[int]], list[list[int]], list[str]]:
            """Chat-template the conversations and sample one completion each, with TRL's generation path."""
            prompt_ids, _, _ = self._tokenize_prompts(conversations)
            prompt_ids = [list(ids) for ids in prompt_ids]
            with self._completion_limit(max_new_tokens):
                completion_ids, _ = self._generate_single_turn(prompt_ids, None, {}, 1)
            completion_ids = [list(ids) for ids in completion_ids]
            if self.memagent_window:
                longest = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True))
                if longest > self.memagent_window:
                    raise MemforgeError(
                        f"memagent_train: a conversation of {longest} tokens exceeds the model's window of "
                        f"{self.memagent_window}; lower memagent.reader.chunk_tokens or memory_tokens"
                    )
            return prompt_ids, completion_ids, self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

        def _memagent_logps(self, model: Any, ids: Any, mask: Any, keep: int) -> Any:
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, ids, mask, keep, batch_size=self.args.per_device_train_batch_size
            )
            return logps

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            device = self.accelerator.device
            mode = "train" if self.model.training else "eval"
            metrics = self._metrics[mode]
            G = self.num_generations if mode == "train" else self.num_generations_eval
            samples = [self.memagent_samples[int(row["sample_index"])] for row in inputs]
            if len(samples) % G or any(
                len({id(s) for s in samples[i : i + G]}) != 1 for i in range(0, len(samples), G)
            ):
                raise MemforgeError(
                    f"memagent_train: the generation batch does not hold whole groups of G={G} rows per question"
                )

            encode, decode = self.memagent_codec
            trajectories = rollout(samples, self.memagent_reader, encode, decode, self._memagent_generate)

            # rewards through TRL's reward hook (gathered over processes), advantages = reward - group mean
            prompts = [answer_messages(t.sample.question, t.memory) for t in trajectories]
            completions = [[{"role": "assistant", "content": t.answer}] for t in trajectories]
            rewards_per_func = self._calculate_rewards(
                inputs, prompts, completions, [t.completion_ids[-1] for t in trajectories]
            )
            unscorable = torch.isnan(rewards_per_func).all(dim=1)
            all_rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
            all_rewards[unscorable] = torch.nan
            all_rewards = all_rewards.cpu().numpy().astype(np.float64)
            all_advantages = group_advantages(all_rewards, np.arange(len(all_rewards)) // G)
            local = slice(
                self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs)
            )
            for t, r, a in zip(trajectories, all_rewards[local], all_advantages[local], strict=True):
                t.reward, t.advantage = float(r), float(a)
            counts = [t.conversations for t in trajectories]
            row_advantages = broadcast_advantages([t.advantage for t in trajectories], counts)

            # one row per conversation, trajectory-major
            prompt_rows = [torch.tensor(p) for t in trajectories for p in t.prompt_ids]
            completion_rows = [torch.tensor(c) for t in trajectories for c in t.completion_ids]
            pad_id, multiple = self._tokenizer.pad_token_id, self.pad_to_multiple_of
            prompt_ids = pad(prompt_rows, pad_id, "left", multiple).to(device)
            prompt_mask = pad([torch.ones_like(p) for p in prompt_rows], 0, "left", multiple).to(device)
            completion_ids = pad(completion_rows, pad_id, "right", multiple).to(device)
            completion_mask = pad([torch.ones_like(c) for c in completion_rows], 0, "right", multiple).to(device)
            num_items_in_batch = self.accelerator.gather(completion_mask.sum()).sum()
            advantages = torch.tensor(row_advantages, dtype=torch.float32, device=device)

            ids = torch.cat([prompt_ids, completion_ids], dim=1)
            mask = torch.cat([prompt_mask, completion_mask], dim=1)
            keep = completion_ids.size(1)
            old_per_token_logps = ref_per_token_logps = None
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                # as TRL: old log-probs only when this batch is reused across optimizer steps
                if self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations):
                    old_per_token_logps = self._memagent_logps(self.model, ids, mask, keep)
                if self.beta != 0.0:
                    if self.ref_model is not None:
                        ref_per_token_logps = self._memagent_logps(self.ref_model, ids, mask, keep)
                    else:
                        unwrapped = self.accelerator.unwrap_model(self.model)
                        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                            ref_per_token_logps = self._memagent_logps(self.model, ids, mask, keep)

            # logs: TRL's reward keys, then the reader's
            for i, name in enumerate(self.reward_func_names):
                metrics[f"rewards/{name}/mean"].append(float(torch.nanmean(rewards_per_func[:, i]).item()))
            scored = all_rewards[np.isfinite(all_rewards)]
            groups = all_rewards.reshape(-1, G)
            metrics["reward"].append(float(scored.mean()) if scored.size else 0.0)
            metrics["reward_std"].append(float(scored.std(ddof=1)) if scored.size > 1 else 0.0)
            metrics["frac_reward_zero_std"].append(float(np.mean(np.nanstd(groups, axis=1) == 0.0)))
            for name, values in self._pending_metrics.items():  # from reward functions' log_metric, as TRL does
                metrics[name].append(float(np.mean(values)) if values else math.nan)
            self._pending_metrics.clear()
            self._pending_extra_logs.clear()  # TRL's completions table is not kept (the trajectories are)
            tokens = int(self.accelerator.gather(prompt_mask.sum() + completion_mask.sum()).sum().item())
            if mode == "train":
                self.state.num_input_tokens_seen += tokens
            stats = trajectory_stats(trajectories, self.memagent_reader.memory_tokens)
            stats.update(
                chunks_per_question=stats["conversations_per_trajectory"] - 1.0,
                rows=float(len(completion_rows)),
                prompt_tokens_max=float(max(len(p) for p in prompt_rows)),
            )
            for key, value in stats.items():
                metrics[METRIC_PREFIX + key].append(value)

            step = int(self.state.global_step) + 1
            self.memagent_last = {
                "step": step,
                "rewards": np.array([t.reward for t in trajectories]),
                "advantages": np.array([t.advantage for t in trajectories]),
                "row_advantages": row_advantages,
                "conversations": counts,
                "trajectories": trajectories,
                "records": [t.record(step) for t in trajectories[: self.memagent_log_trajectories]],
            }
            output: dict[str, Any] = {
                "prompt_ids": prompt_ids,
                "prompt_mask": prompt_mask,
                "completion_ids": completion_ids,
                "completion_mask": completion_mask,
                "advantages": advantages,
                "num_items_in_batch": num_items_in_batch,
            }
            if old_per_token_logps is not None:
                output["old_per_token_logps"] = old_per_token_logps
            if ref_per_token_logps is not None:
                output["ref_per_token_logps"] = ref_per_token_logps
            return output

    return MemAgentTrainer


__getattr__ = lazy_class("MemAgentTrainer", _memagent_trainer_cls)


# ---------------------------------------------------------------------------------------------
# configuration, checks, entry point


def grpo_args(cfg: MemAgentTrainConfig, reader: ReaderConfig) -> Any:
    """``trl.GRPOConfig``: one generation batch (``questions_per_step`` x G trajectories) per optimizer step."""
    import torch
    from trl import GRPOConfig

    if cfg.num_generations < 2 or cfg.questions_per_step < 1:
        raise MemforgeError(
            f"memagent_train: need num_generations >= 2 and questions_per_step >= 1, got {cfg.num_generations}, "
            f"{cfg.questions_per_step}"
        )
    cuda = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if cfg.use_vllm:
        extra = dict(
            vllm_mode=cfg.vllm_mode,
            vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            vllm_importance_sampling_correction=False,  # the hook does not pass vLLM's sampling log-probs on
        )
        if cfg.vllm_server_base_url:
            extra["vllm_server_base_url"] = cfg.vllm_server_base_url
    return GRPOConfig(
        output_dir=str(cfg.checkpoint_dir),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        num_generations=cfg.num_generations,
        max_completion_length=max(reader.memory_tokens, reader.answer_tokens),
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.questions_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        shuffle_dataset=True,
        use_vllm=cfg.use_vllm,
        bf16=cfg.bf16 and cuda,
        fp16=False,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_nan_inf_filter=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        log_completions=False,
        **extra,
    )


def check_reader(reader: ReaderConfig) -> None:
    """Every reader length must be at least one token."""
    for name in ("chunk_tokens", "memory_tokens", "answer_tokens"):
        if getattr(reader, name) < 1:
            raise MemforgeError(
                f"memagent_train: memagent.reader.{name} must be at least 1, got {getattr(reader, name)}"
            )


def context_needed(update_overhead: int, answer_overhead: int, reader: ReaderConfig) -> int:
    """Longest conversation in tokens: template + question + chunk + memory (+ new memory), or the answer's."""
    update = update_overhead + reader.chunk_tokens + 2 * reader.memory_tokens
    answer = answer_overhead + reader.memory_tokens + reader.answer_tokens
    return max(update, answer)


def check_context(samples: Sequence[TrainSample], tokenizer: Any, reader: ReaderConfig, window: int | None) -> int:
    """The longest conversation any sample can need (prompts are bounded, so nothing is truncated); raise if it
    exceeds the model's ``window``."""

    def length(messages: list[Message]) -> int:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(rendered["input_ids"])

    longest = 0
    for sample in samples:
        needed = context_needed(
            length(update_messages(sample.question, "", "")), length(answer_messages(sample.question, "")), reader
        )
        if window and needed > window:
            raise MemforgeError(
                f"memagent_train: sample {sample.id!r} can need {needed} tokens per conversation (template + question "
                f"+ chunk_tokens={reader.chunk_tokens} + 2 x memory_tokens={reader.memory_tokens}) but the model's "
                f"window is {window}; lower memagent.reader.chunk_tokens or memory_tokens"
            )
        longest = max(longest, needed)
    return longest


def sample_rows(samples: Sequence[TrainSample]) -> list[dict[str, Any]]:
    """Dataset rows (TRL needs a ``prompt`` column; the other columns reach reward functions as keyword arguments)."""
    return [
        {"prompt": s.question, "sample_index": i, "sample_id": s.id, "answers": list(s.answers)}
        for i, s in enumerate(samples)
    ]


def build_memagent_trainer(
    train_cfg: MemAgentTrainConfig,
    reader_cfg: ReaderConfig,
    samples: Sequence[TrainSample],
    *,
    callbacks: Sequence[Any] = (),
    reward_funcs: Sequence[Any] | None = None,
) -> Any:
    """A ``MemAgentTrainer`` on ``train_cfg.model_name_or_path`` (loaded in float32) and the samples."""
    from datasets import Dataset

    from components.llm.model_assets import load_model_folder, normalise_tokenizer

    check_trl_hook()
    check_reader(reader_cfg)
    samples = list(samples)
    if len(samples) < train_cfg.questions_per_step:
        raise MemforgeError(
            f"memagent_train: {len(samples)} training question(s) but questions_per_step={train_cfg.questions_per_step}"
        )
    model, tokenizer = load_model_folder(Path(train_cfg.model_name_or_path), "float32")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    check_context(samples, tokenizer, reader_cfg, getattr(model.config, "max_position_embeddings", None))
    trainer_cls = __getattr__("MemAgentTrainer")
    return trainer_cls(
        model=model,
        args=grpo_args(train_cfg, reader_cfg),
        train_dataset=Dataset.from_list(sample_rows(samples)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        reward_funcs=list(reward_funcs) if reward_funcs is not None else None,
        samples=samples,
        reader=reader_cfg,
        log_trajectories=train_cfg.log_trajectories,
    )


@dataclass
class MemAgentOutcome:
    """What a memagent_train run did; ``metrics()`` feeds DVC and MLflow, ``trajectories`` the MLflow table."""

    output_dir: str
    base_model: str
    questions: int
    steps: int
    train_loss: float
    seconds: float
    resumed_from: str | None = None
    step_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    last_stats: dict[str, float] = field(default_factory=dict)
    trajectories: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        steady = self.step_seconds[1:] or self.step_seconds
        out = {
            "questions": float(self.questions),
            "steps": float(self.steps),
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(float(np.median(steady)), 4) if steady else 0.0,
        }
        out.update({f"final_{k}": v for k, v in self.last_stats.items()})
        return out

    def summary(self) -> dict[str, Any]:
        """The ``memagent`` section of the model card."""
        return {
            "base_model": self.base_model,
            "questions": self.questions,
            "steps": self.steps,
            "train_loss": self.train_loss,
            "resumed_from": self.resumed_from,
            "final": dict(self.last_stats),
        }


def train_memagent(
    train_cfg: MemAgentTrainConfig,
    reader_cfg: ReaderConfig,
    samples: Sequence[TrainSample],
    on_log: OnLog | None = None,
) -> MemAgentOutcome:
    """Train the reader with multi-conversation GRPO; save it (model + tokenizer) to ``train_cfg.output_dir``.

    Checkpoints go to ``train_cfg.checkpoint_dir`` every ``save_steps`` steps; a rerun resumes from the latest one.
    ``on_log(logs, step)`` receives every trainer log (TRL's keys and ``memagent/...``).
    """
    started = time.perf_counter()
    samples = list(samples)
    if not samples:
        raise MemforgeError("memagent_train: no training questions; run the long-context data stage")
    log = TrainingLog()
    trainer = build_memagent_trainer(train_cfg, reader_cfg, samples, callbacks=[log_forwarder(on_log, log)])
    resume = latest_checkpoint(train_cfg.checkpoint_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    if not math.isfinite(result.training_loss):
        raise MemforgeError(
            f"memagent_train: training diverged (loss {result.training_loss}); lower memagent.train.learning_rate"
        )
    logged = [entry for entry in log.entries if any(k.startswith(METRIC_PREFIX) for k in entry)]
    final = logged[-1] if logged else {}
    last = {k[len(METRIC_PREFIX) :]: v for k, v in final.items() if k.startswith(METRIC_PREFIX)}
    for key in ("kl", "clip_ratio/region_mean", "entropy"):
        if key in final:
            last[key.replace("/", "_")] = final[key]
    outcome = MemAgentOutcome(
        output_dir=str(train_cfg.output_dir),
        base_model=str(train_cfg.model_name_or_path),
        questions=len(samples),
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss),
        seconds=0.0,
        resumed_from=resume,
        step_seconds=log.step_seconds,
        history=log.entries,
        last_stats=last,
        trajectories=list(trainer.memagent_last.get("records", [])),
    )
    save_trained_reader(trainer, train_cfg, reader_cfg, outcome)
    outcome.seconds = time.perf_counter() - started
    return outcome


def save_trained_reader(
    trainer: Any, train_cfg: MemAgentTrainConfig, reader_cfg: ReaderConfig, outcome: MemAgentOutcome
) -> None:
    """Save the trained reader to ``train_cfg.output_dir`` atomically, in the base model's dtype, checked by a
    reload and with its ``memforge_model.json`` (as the sft and adrpo models)."""
    import torch

    from components.io import atomic_directory

    base = Path(train_cfg.model_name_or_path)
    dtype = saved_dtype_of(base)
    model, tokenizer = trainer.model, trainer.processing_class
    model.config.use_cache = True
    parameter_count = sum(p.numel() for p in model.parameters())
    with atomic_directory(train_cfg.output_dir) as staging:
        model.to(getattr(torch, dtype)).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        finish_trained_folder(
            staging,
            tokenizer,
            kind="memagent",
            base=base,
            final_dir=outcome.output_dir,
            dtype=dtype,
            parameter_count=parameter_count,
            fallback_context_tokens=int(getattr(model.config, "max_position_embeddings", 0) or reader_cfg.chunk_tokens),
            summary=outcome.summary(),
        )
