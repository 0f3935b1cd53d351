"""Contribution-aware weights: how much each memory part's agent is credited for a session's QA.

A weight belongs to one agent's completion in one rollout and scales that completion's ADVANTAGE (not its
reward): ``A'_i = w_i * (r_i - mean_group(r)) / (std_group(r) + eps)`` within the (session, part) GRPO group;
see ``components.rewards.advantages.rewrite_advantages``. Every weight is >= 1.

Three modes (``ADRPOConfig.attribution``), all measured on the memories the policy built this step (never on the
expert memory):

* ``retrieval_share`` (published, the default): per ROLLOUT r, ``count_p`` = the number of entries of part p
  (episodic, semantic, procedural) among the ``top_k`` retrieved for each of the session's questions from rollout
  r's memory, summed over the questions (``Verdict.retrieved_parts``), whether or not they hold the answer.
  The single dominant part (largest count) gets ``alpha``, the two other entry parts 1, core always 1 (core is
  shown whole, never retrieved); all 1 when nothing was retrieved. Ties go to the first of the tied parts in the
  order episodic, semantic, procedural (``ENTRY_PARTS``): the reference takes ``max`` over its counts in that
  order, which returns the first maximum. So the weights differ between rollouts of one session.
  Source: MemBuilder ``training/reward_server/server.py`` (``build_and_qa``: ``retrieval_counts`` by the
  ``[EPISODIC]`` / ``[SEMANTIC]`` / ``[PROCEDURAL]`` tag of each retrieved memory, ``dominant_agent``),
  ``reward_function.py`` (``attribution_weight`` per sample; ``attribution_alpha`` 4.0) and ``attribution.py``
  (``compute_attribution_weights``: core 1, uniform when nothing was retrieved; the advantage of each sample
  multiplied by its weight).
* ``answer_hits`` (memforge's variant): per SESSION, pooled over its G rollouts, ``count_p`` = the retrieved
  entries of part p that contain the gold answer (``Verdict.supporting_parts``), plus 1 for core per question
  whose core block contains it (``Verdict.core_contains``). ``w_p = alpha`` for every part with the largest count
  (ties all get alpha; core included), 1 for the others; all 1 when every count is 0. The same weights for all
  rollouts of the session.
* ``ablation`` (memforge's variant): per session, ``drop_p = mean_r [task(r) - task(r without p)]`` where
  "r without p" applies rollout r's other three agents only. ``w_p = max(1, alpha * drop_p / max_q drop_q)``
  when ``max_q drop_q > 0`` (the largest drop gets alpha, the others proportionally, floored at 1); all 1 when no
  drop is positive. The same weights for all rollouts of the session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from components.memory.types import ENTRY_PARTS, PARTS, MemoryPart
from components.rewards.judges import Verdict

ATTRIBUTION_MODES = ("retrieval_share", "answer_hits", "ablation")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha >= 1.0:
        raise ValueError(f"attribution alpha must be >= 1 (weights are floored at 1), got {alpha}")
    return alpha


# ---------------------------------------------------------------------------------------------
# retrieval_share (published)


def retrieval_counts(verdicts: Iterable[Verdict]) -> dict[MemoryPart, int]:
    """Retrieved entries per entry part over ``verdicts`` (one rollout's questions); core is never retrieved: 0."""
    counts: dict[MemoryPart, int] = dict.fromkeys(PARTS, 0)
    for verdict in verdicts:
        for part in verdict.retrieved_parts:
            counts[part] += 1
    return counts


def dominant_part(counts: Mapping[MemoryPart, float]) -> MemoryPart | None:
    """The entry part with the most retrievals, ties to the first in ``ENTRY_PARTS`` order; None when all are 0."""
    best: MemoryPart | None = None
    for part in ENTRY_PARTS:
        value = float(counts.get(part, 0))
        if value > 0 and (best is None or value > float(counts.get(best, 0))):
            best = part
    return best


def retrieval_share_weights(counts: Mapping[MemoryPart, float], alpha: float = 4.0) -> dict[MemoryPart, float]:
    """``alpha`` for the single ``dominant_part`` of ``counts``, 1 for every other part; core always 1."""
    alpha = _check_alpha(alpha)
    dominant = dominant_part(counts)
    return {part: alpha if part == dominant else 1.0 for part in PARTS}


# ---------------------------------------------------------------------------------------------
# answer_hits (memforge)


def answer_hit_counts(verdicts: Iterable[Verdict]) -> dict[MemoryPart, int]:
    """Answer-bearing hits per part: retrieved entries containing the answer, and core when it contains it."""
    counts: dict[MemoryPart, int] = dict.fromkeys(PARTS, 0)
    for verdict in verdicts:
        counts["core"] += int(verdict.core_contains)
        for part in verdict.supporting_parts:
            counts[part] += 1
    return counts


def answer_hits_weights(counts: Mapping[MemoryPart, float], alpha: float = 4.0) -> dict[MemoryPart, float]:
    """``alpha`` for every part with the most answer hits (core included), 1 for the others; all 1 when none has any."""
    alpha = _check_alpha(alpha)
    values = {part: float(counts.get(part, 0)) for part in PARTS}
    top = max(values.values())
    if top <= 0:
        return dict.fromkeys(PARTS, 1.0)
    return {part: alpha if value == top else 1.0 for part, value in values.items()}


# ---------------------------------------------------------------------------------------------
# ablation (memforge)


def ablation_weights(drops: Mapping[MemoryPart, float], alpha: float = 4.0) -> dict[MemoryPart, float]:
    """``w_p = max(1, alpha * drop_p / max drop)``; all 1 when no drop is positive."""
    alpha = _check_alpha(alpha)
    values = {part: float(drops.get(part, 0.0)) for part in PARTS}
    top = max(values.values())
    if top <= 0:
        return dict.fromkeys(PARTS, 1.0)
    return {part: max(1.0, alpha * value / top) for part, value in values.items()}
