"""MemAgent's multi-conversation GRPO without TRL: training samples, trajectories and the pure steps of a training
step (reading in lock step, the reward, the group advantages and their broadcast to conversations, the statistics).

``components.training.memagent`` explains the objective; ``memagent_trainer.MemAgentTrainer`` runs these steps inside
TRL's ``GRPOTrainer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.agent.chunking import Encode, chunk_ids, token_stream
from components.agent.prompts import answer_messages, update_messages
from components.agent.scoring import last_boxed, reward
from components.config import ReaderConfig
from components.errors import MemforgeError
from components.llm.backends import Message
from components.rewards import completion_text

METRIC_PREFIX = "memagent/"  # the trainer logs trajectory_stats under it

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
