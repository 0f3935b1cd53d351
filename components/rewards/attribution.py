"""Contribution-aware weights: how much each memory part's agent is credited for a session's QA.

A weight is per (session, part), constant over the session's G rollouts, and scales that GRPO group's
ADVANTAGES (not its rewards): ``A'_i = w_part * (r_i - mean_group(r)) / (std_group(r) + eps)``; see
``components.rewards.advantages.rewrite_advantages``.

Both modes measure contributions on the memories the policy actually built this step: pooled over the
session's G rollout memories (not the expert memory).

* ``retrieval_share``: ``count_p`` = over every rollout r and question q of the session, the number of
  retrieved entries of part p that contain the gold answer (``Verdict.supporting_parts``), plus 1 for core
  when the core block contains it (``Verdict.core_contains``). ``w_p = alpha`` for the dominant part(s)
  (``count_p == max_q count_q``; ties all get alpha) and 1 for the others; all 1 when every count is 0.
* ``ablation``: ``drop_p = mean_r [task(r) - task(r without p)]`` where "r without p" applies rollout r's
  other three agents only (p's operations left out). ``w_p = max(1, alpha * drop_p / max_q drop_q)`` when
  ``max_q drop_q > 0`` (the largest drop gets alpha, the others proportionally, floored at 1; a negative
  drop, where leaving p out helps, gets 1); all 1 when no drop is positive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from components.memory.types import PARTS, MemoryPart
from components.rewards.judges import Verdict


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha >= 1.0:
        raise ValueError(f"attribution alpha must be >= 1 (weights are floored at 1), got {alpha}")
    return alpha


def retrieval_counts(verdicts: Iterable[Verdict]) -> dict[MemoryPart, int]:
    """Supporting hits per part: retrieved entries containing the answer, and core when it contains it."""
    counts: dict[MemoryPart, int] = dict.fromkeys(PARTS, 0)
    for verdict in verdicts:
        counts["core"] += int(verdict.core_contains)
        for part in verdict.supporting_parts:
            counts[part] += 1
    return counts


def retrieval_share_weights(counts: Mapping[MemoryPart, float], alpha: float = 4.0) -> dict[MemoryPart, float]:
    """``alpha`` for the part(s) with the most supporting hits, 1 for the others (all 1 when none has any)."""
    alpha = _check_alpha(alpha)
    values = {part: float(counts.get(part, 0)) for part in PARTS}
    top = max(values.values())
    if top <= 0:
        return dict.fromkeys(PARTS, 1.0)
    return {part: alpha if value == top else 1.0 for part, value in values.items()}


def ablation_weights(drops: Mapping[MemoryPart, float], alpha: float = 4.0) -> dict[MemoryPart, float]:
    """``w_p = max(1, alpha * drop_p / max drop)``; all 1 when no drop is positive."""
    alpha = _check_alpha(alpha)
    values = {part: float(drops.get(part, 0.0)) for part in PARTS}
    top = max(values.values())
    if top <= 0:
        return dict.fromkeys(PARTS, 1.0)
    return {part: max(1.0, alpha * value / top) for part, value in values.items()}
