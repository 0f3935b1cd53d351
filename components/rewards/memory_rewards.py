"""ADRPO rewards: dense (per-session QA from the memory a rollout builds) and attributed (per-part weights).

``score_groups(groups, judge, cfg, count_tokens)`` scores every rollout of every agent in a batch of
session groups (``components.rewards.rollouts.SessionGroup``):

1. every output is parsed once; the texts the outputs would write, the pre-session entries and the questions
   are embedded in ONE cache call per ``EmbeddingCache`` (later searches only hit the cache), and each
   pre-session bank commits its embeddings before it is snapshotted (so snapshots share them);
2. rollout r's memory = the pre-session snapshot with the r-th output of each of the four agents applied
   together (a failing agent contributes nothing); in ``ablation`` mode also, per part p that changed the
   memory in rollout r, the memory without p's operations (if p changed nothing, it equals the full memory);
3. ONE ``judge.judge`` call grades every question of every memory of every group;
4. per rollout r: ``task(r)`` = fraction of the session's questions answered correctly from its memory,
   shared by the four agents of rollout r; per agent rollout (r, p)::

       reward = format_gate(r, p) * task(r) * (1 - lambda * length_penalty(r, p))

   with ``format_gate`` in {0, 1} (the output parsed and applied to the pre-session bank), ``lambda`` =
   ``cfg.length_penalty_lambda`` (in [0, 1], so rewards stay in [0, 1]) and ``length_penalty`` from
   ``components.rewards.penalties`` (core: ``core_length_penalty(tokens, *cfg.core_penalty_tokens)``; other
   parts: ``ratio_length_penalty(tokens, expert_tokens, cfg.length_ratio_free, cfg.length_ratio_full,
   cfg.length_penalty_min_token_gap)``, tokens of the whole output and of the expert's output for that agent);
5. per rollout r, a contribution weight per part (``cfg.attribution``; exact formulas in
   ``components.rewards.attribution``): ``retrieval_share`` (published) from rollout r's own retrievals, so it may
   differs between rollouts; ``answer_hits`` and ``ablation`` per session, the same for its G rollouts. The
   weight of (r, p) multiplies the ADVANTAGE of agent p's completion in rollout r within the (session, part)
   GRPO group: ``A'_i = w_i * (r_i - mean_group(r)) / (std_group(r) + eps)`` (``rewrite_advantages``).

``GroupScores.gather(layout)`` lines the results up with a TRL batch (``groups_from_batch``);
``GroupScores.stats()`` gives flat MLflow metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from components.config import ADRPOConfig
from components.memory.bank import MemoryBank
from components.memory.embedder import EmbeddingCache
from components.memory.types import ENTRY_PARTS, PARTS, MemoryPart
from components.rewards.advantages import DEFAULT_EPS, rewrite_advantages
from components.rewards.attribution import (
    ATTRIBUTION_MODES,
    ablation_weights,
    answer_hit_counts,
    answer_hits_weights,
    retrieval_counts,
    retrieval_share_weights,
)
from components.rewards.judges import Judge, JudgeItem, Verdict
from components.rewards.penalties import core_length_penalty, ratio_length_penalty
from components.rewards.rollouts import BatchLayout, ParsedOutput, SessionGroup, apply_rollout, parse_output


@dataclass(frozen=True, slots=True)
class RolloutScore:
    """One agent's rollout: its reward and every factor of it, plus its attribution weight in this rollout."""

    group_index: int
    group_id: str
    part: MemoryPart
    rollout: int
    reward: float
    format_ok: bool
    task_reward: float
    length_penalty: float
    tokens: int
    weight: float
    error: str | None = None


@dataclass(frozen=True)
class GroupScore:
    """One session group's results.

    ``task_rewards[r]``: fraction of questions answered from rollout r's memory. ``contributions[r][p]``: what
    the weight of part p in rollout r was computed from: rollout r's retrieved entries of p (retrieval_share), the
    session's answer-bearing hits of p (answer_hits) or p's mean task-reward drop when left out (ablation); the
    last two are the same for every r. ``weights[r][p]``: the attribution weight of agent p's completion in
    rollout r. ``ablated_task_rewards[p][r]``: task reward of rollout r without p (ablation mode only; equals
    ``task_rewards[r]`` when p changed nothing in r). ``verdicts[r][q]``: question q on rollout r's memory.
    """

    group_id: str
    task_rewards: tuple[float, ...]
    contributions: tuple[Mapping[MemoryPart, float], ...]
    weights: tuple[Mapping[MemoryPart, float], ...]
    scores: Mapping[MemoryPart, tuple[RolloutScore, ...]]
    verdicts: tuple[tuple[Verdict, ...], ...]
    ablated_task_rewards: Mapping[MemoryPart, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardBatch:
    """Aligned (B,) arrays: rewards, GRPO group ids (one per (session, part)) and attribution weights."""

    rewards: np.ndarray
    group_ids: np.ndarray
    weights: np.ndarray

    def advantages(self, scale_by_std: bool = True, eps: float = DEFAULT_EPS) -> np.ndarray:
        """``rewrite_advantages(rewards, group_ids, weights)``."""
        return rewrite_advantages(self.rewards, self.group_ids, self.weights, scale_by_std, eps)


def grpo_group_id(group_index: int, part: MemoryPart) -> int:
    """Integer id of the (session group, part) GRPO group."""
    return group_index * len(PARTS) + PARTS.index(part)


@dataclass(frozen=True)
class GroupScores:
    """Scores of a batch of session groups, with flat views for the trainer and metrics for MLflow."""

    groups: tuple[GroupScore, ...]
    attribution: str
    memories_judged: int = 0
    questions_judged: int = 0
    judge_calls: int = 0

    def flat(self) -> list[RolloutScore]:
        """Every rollout score: by group, then part (PARTS order), then rollout."""
        return [score for group in self.groups for scores in group.scores.values() for score in scores]

    def batch(self) -> RewardBatch:
        """``flat()`` as aligned arrays."""
        return _batch(self.flat())

    def gather(self, layout: BatchLayout) -> RewardBatch:
        """Arrays aligned with a trainer batch: element b is the score at ``layout.positions[b]``."""
        picked = []
        for group_index, part, rollout in layout.positions:
            if not 0 <= group_index < len(self.groups):
                raise IndexError(f"layout names group {group_index}, but {len(self.groups)} were scored")
            scores = self.groups[group_index].scores.get(part)
            if scores is None or not 0 <= rollout < len(scores):
                raise IndexError(f"group {group_index} has no score for {part} rollout {rollout}")
            picked.append(scores[rollout])
        return _batch(picked)

    def stats(self) -> dict[str, float]:
        """Flat metrics: reward/task/penalty means and stds, format failure rates, weights; overall and per part.

        ``attribution_weight_mean_{p}``: part p's weight averaged over every rollout of every group;
        ``attribution_dominant_rate_{p}``: the share of rollouts in which p alone or jointly has the largest weight
        and it is above 1.
        """
        scores = self.flat()
        out: dict[str, float] = {
            "groups": float(len(self.groups)),
            "rollout_scores": float(len(scores)),
            "memories_judged": float(self.memories_judged),
            "questions_judged": float(self.questions_judged),
            "judge_calls": float(self.judge_calls),
        }
        if not scores:
            return out
        out.update(_summary(scores, ""))
        tasks = np.array([t for group in self.groups for t in group.task_rewards], dtype=np.float64)
        out["task_reward_mean"] = float(tasks.mean())
        out["task_reward_std"] = float(tasks.std())
        flat_groups = [s for group in self.groups for s in group.scores.values()]
        out["zero_std_group_rate"] = float(np.mean([len({s.reward for s in g}) == 1 for g in flat_groups]))
        rollout_weights = [weights for group in self.groups for weights in group.weights]
        for part in PARTS:
            part_scores = [s for s in scores if s.part == part]
            if part_scores:
                out.update(_summary(part_scores, f"_{part}"))
            out[f"attribution_weight_mean_{part}"] = float(np.mean([w[part] for w in rollout_weights]))
            out[f"attribution_dominant_rate_{part}"] = float(
                np.mean([w[part] > 1 and w[part] == max(w.values()) for w in rollout_weights])
            )
        return out


def _summary(scores: Sequence[RolloutScore], suffix: str) -> dict[str, float]:
    rewards = np.array([s.reward for s in scores], dtype=np.float64)
    return {
        f"reward_mean{suffix}": float(rewards.mean()),
        f"reward_std{suffix}": float(rewards.std()),
        f"format_failure_rate{suffix}": float(np.mean([not s.format_ok for s in scores])),
        f"length_penalty_mean{suffix}": float(np.mean([s.length_penalty for s in scores])),
    }


def _batch(scores: Sequence[RolloutScore]) -> RewardBatch:
    return RewardBatch(
        rewards=np.array([s.reward for s in scores], dtype=np.float64),
        group_ids=np.array([grpo_group_id(s.group_index, s.part) for s in scores], dtype=np.int64),
        weights=np.array([s.weight for s in scores], dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------------
# scoring


@dataclass(frozen=True)
class _Settings:
    lam: float
    core_tokens: tuple[int, int]
    free: tuple[float, float]
    full: tuple[float, float]
    min_token_gap: int
    alpha: float
    attribution: str


def _settings(cfg: ADRPOConfig) -> _Settings:
    """The reward settings of ``cfg`` (ADRPOConfig checked their ranges when it was built)."""
    core, free, full = cfg.core_penalty_tokens, cfg.length_ratio_free, cfg.length_ratio_full
    if cfg.attribution not in ATTRIBUTION_MODES:
        raise ValueError(f"unknown attribution mode {cfg.attribution!r}; expected one of {ATTRIBUTION_MODES}")
    return _Settings(
        float(cfg.length_penalty_lambda),
        (int(core[0]), int(core[1])),
        (float(free[0]), float(free[1])),
        (float(full[0]), float(full[1])),
        int(cfg.length_penalty_min_token_gap),
        float(cfg.attribution_alpha),
        cfg.attribution,
    )


def _attribute(
    settings: _Settings,
    verdicts: Sequence[Sequence[Verdict]],
    tasks: Sequence[float],
    ablated: Mapping[MemoryPart, Sequence[float]],
) -> tuple[tuple[dict[MemoryPart, float], ...], tuple[dict[MemoryPart, float], ...]]:
    """Per rollout, (contributions, weights) of one session group under ``settings.attribution``."""
    g = len(tasks)
    if settings.attribution == "retrieval_share":
        counts = [retrieval_counts(verdicts[r]) for r in range(g)]
        contributions = tuple({part: float(c[part]) for part in PARTS} for c in counts)
        return contributions, tuple(retrieval_share_weights(c, settings.alpha) for c in counts)
    if settings.attribution == "answer_hits":
        pooled = answer_hit_counts(v for r in range(g) for v in verdicts[r])
        shared = {part: float(pooled[part]) for part in PARTS}
        weights = answer_hits_weights(pooled, settings.alpha)
    else:
        shared = {part: float(np.mean([tasks[r] - ablated[part][r] for r in range(g)])) for part in PARTS}
        weights = ablation_weights(shared, settings.alpha)
    return (shared,) * g, (weights,) * g


class _Memo:
    """Per-call memo of parses and token counts (identical outputs across rollouts are common)."""

    def __init__(self, count_tokens: Callable[[str], int]) -> None:
        self._count = count_tokens
        self._tokens: dict[str, int] = {}
        self._parsed: dict[tuple[str, str], ParsedOutput] = {}

    def tokens(self, text: str) -> int:
        count = self._tokens.get(text)
        if count is None:
            count = int(self._count(text))
            if count < 0:
                raise ValueError(f"count_tokens returned {count} (< 0)")
            self._tokens[text] = count
        return count

    def parse(self, part: MemoryPart, text: str) -> ParsedOutput:
        key = (part, text)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parsed[key] = parse_output(part, text)
        return parsed


def _warm_caches(groups: Sequence[SessionGroup], parsed: Sequence[Sequence[Mapping[MemoryPart, ParsedOutput]]]) -> None:
    """One embedding call per distinct cache: questions, pre-session entries, and every text an output would write."""
    caches: dict[int, tuple[EmbeddingCache, dict[str, None]]] = {}
    for group, rollouts in zip(groups, parsed, strict=True):
        cache = group.bank_before.embedding_cache
        if cache is None:
            continue
        texts = caches.setdefault(id(cache), (cache, {}))[1]
        texts.update(dict.fromkeys(q.question for q in group.questions))
        for part in ENTRY_PARTS:
            texts.update(dict.fromkeys(entry.text for entry in group.bank_before.entries(part)))
        for outputs in rollouts:
            for output in outputs.values():
                texts.update(dict.fromkeys(output.texts))
    for cache, texts in caches.values():
        if texts:
            cache.embed(list(texts))
    for group in groups:
        if group.bank_before.embedding_cache is not None:
            group.bank_before.embed_pending()  # cache hits only: snapshots share the committed rows


def _task(verdicts: Sequence[Verdict]) -> float:
    return sum(v.correct for v in verdicts) / len(verdicts)


def score_groups(
    groups: Iterable[SessionGroup], judge: Judge, cfg: ADRPOConfig, count_tokens: Callable[[str], int]
) -> GroupScores:
    """Rewards, their factors and attribution weights for every rollout of every part of every group.

    One ``judge.judge`` call for all questions of all memories of all groups (none when ``groups`` is empty).
    See the module docstring for the exact formulas.
    """
    settings = _settings(cfg)
    groups = list(groups)
    if not groups:
        return GroupScores((), settings.attribution)
    memo = _Memo(count_tokens)
    parsed = [
        [{p: memo.parse(p, text) for p, text in group.outputs(r).items()} for r in range(group.num_generations)]
        for group in groups
    ]
    _warm_caches(groups, parsed)

    # memories: per group, per rollout, the full memory and (ablation) one per part that changed it
    memories: list[tuple[int, int, MemoryPart | None, MemoryBank]] = []
    applied_by_group = []
    for gi, group in enumerate(groups):
        applied_rollouts = []
        for r in range(group.num_generations):
            applied = apply_rollout(group.bank_before, group.session, parsed[gi][r])
            applied_rollouts.append(applied)
            memories.append((gi, r, None, applied.bank))
            if settings.attribution == "ablation":
                for part, outcome in applied.agents.items():
                    if outcome.changed:
                        ablated = apply_rollout(group.bank_before, group.session, parsed[gi][r], leave_out=part)
                        memories.append((gi, r, part, ablated.bank))
        applied_by_group.append(applied_rollouts)

    items = [
        JudgeItem(bank, q.question, q.answer, groups[gi].session.timestamp[:10])
        for gi, _, _, bank in memories
        for q in groups[gi].questions
    ]
    verdicts = judge.judge(items)
    if len(verdicts) != len(items):
        raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(items)} questions")

    # per memory verdicts and task rewards
    full: dict[tuple[int, int], tuple[Verdict, ...]] = {}
    ablated_task: dict[tuple[int, int, MemoryPart], float] = {}
    start = 0
    for gi, r, left_out, _ in memories:
        count = len(groups[gi].questions)
        chunk = tuple(verdicts[start : start + count])
        start += count
        if left_out is None:
            full[gi, r] = chunk
        else:
            ablated_task[gi, r, left_out] = _task(chunk)

    results = []
    for gi, group in enumerate(groups):
        g = group.num_generations
        tasks = tuple(_task(full[gi, r]) for r in range(g))
        ablated: dict[MemoryPart, tuple[float, ...]] = {}
        if settings.attribution == "ablation":
            ablated = {part: tuple(ablated_task.get((gi, r, part), tasks[r]) for r in range(g)) for part in PARTS}
        verdicts_by_rollout = tuple(full[gi, r] for r in range(g))
        contributions, weights = _attribute(settings, verdicts_by_rollout, tasks, ablated)
        scores: dict[MemoryPart, tuple[RolloutScore, ...]] = {}
        for part in group.scored_parts:
            expert_tokens = memo.tokens(group.expert_outputs[part]) if part != "core" else 0
            part_scores = []
            for r, text in enumerate(group.rollouts[part]):
                outcome = applied_by_group[gi][r].agents[part]
                tokens = memo.tokens(text)
                if part == "core":
                    penalty = core_length_penalty(tokens, *settings.core_tokens)
                else:
                    penalty = ratio_length_penalty(
                        tokens, expert_tokens, settings.free, settings.full, settings.min_token_gap
                    )
                gate = 1.0 if outcome.ok else 0.0
                reward = gate * tasks[r] * (1.0 - settings.lam * penalty)
                part_scores.append(
                    RolloutScore(
                        gi, group.group_id, part, r, reward, outcome.ok, tasks[r], penalty, tokens, weights[r][part],
                        outcome.error,
                    )
                )  # fmt: skip
            scores[part] = tuple(part_scores)
        results.append(
            GroupScore(
                group_id=group.group_id,
                task_rewards=tasks,
                contributions=contributions,
                weights=weights,
                scores=scores,
                verdicts=verdicts_by_rollout,
                ablated_task_rewards=ablated,
            )
        )
    return GroupScores(
        groups=tuple(results),
        attribution=settings.attribution,
        memories_judged=len(memories),
        questions_judged=len(items),
        judge_calls=1,
    )
