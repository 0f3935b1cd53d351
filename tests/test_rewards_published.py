"""MemBuilder's published reward details: the entry agents' length penalty and per-rollout attribution.

Every expected value is computed by hand in the comment next to it (defaults: free range (0.5, 1.3), full penalty
at ratio <= 0.2 and >= 2.0, no penalty under a 200-token gap, alpha 4).
"""

from __future__ import annotations

import numpy as np
import pytest

from components.config import ADRPOConfig
from components.memory.bank import MemoryBank
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.memory.types import PARTS
from components.rewards import (
    ATTRIBUTION_MODES,
    SessionGroup,
    Verdict,
    dominant_part,
    length_penalty,
    ratio_length_penalty,
    retrieval_counts,
    retrieval_share_weights,
    score_groups,
)
from components.rewards.judges import ContainmentJudge
from tests.helpers import MEMORY, QUESTIONS_A, SESSION_A, add, core, entries

# ---------------------------------------------------------------------------------------------
# length penalty of the episodic, semantic and procedural agents


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # expert 1,000 tokens, so every case below differs from it by >= 200 tokens unless noted
        (2_500, 1.0),  # ratio 2.5: capped
        (2_001, 1.0),
        (2_000, 1.0),  # ratio 2.0: full
        (1_999, 0.699 / 0.7),  # (1.999 - 1.3) / 0.7
        (1_650, 0.5),  # (1.65 - 1.3) / 0.7
        (1_301, 0.001 / 0.7),  # just past the free range
        (1_300, 0.0),  # ratio 1.3: free range edge
        (1_000, 0.0),
        (800, 0.0),  # gap 200, ratio 0.8: inside the free range
        (500, 0.0),  # ratio 0.5: free range edge
        (499, 0.001 / 0.3),  # (0.5 - 0.499) / 0.3
        (350, 0.5),  # (0.5 - 0.35) / 0.3
        (201, 0.299 / 0.3),
        (200, 1.0),  # ratio 0.2: full
        (199, 1.0),
        (0, 1.0),  # wrote nothing where the expert wrote 1,000 tokens
    ],
)
def test_ratio_penalty_at_and_around_every_breakpoint(tokens: int, expected: float) -> None:
    assert ratio_length_penalty(tokens, 1_000) == pytest.approx(expected, abs=1e-12)


def test_ratio_penalty_token_gap_and_empty_expert() -> None:
    # expert 100 tokens: ratio 2.99 but |299 - 100| = 199 < 200 -> 0; 300 tokens: gap 200, ratio 3 -> 1
    assert ratio_length_penalty(299, 100) == 0.0
    assert ratio_length_penalty(300, 100) == 1.0
    # too short: expert 300, output 99 -> gap 201, ratio 0.33: (0.5 - 0.33) / 0.3 = 0.5667; 101 -> gap 199 -> 0
    assert ratio_length_penalty(99, 300) == pytest.approx((0.5 - 0.33) / 0.3)
    assert ratio_length_penalty(101, 300) == 0.0
    # the expert wrote nothing: never penalised, whatever the output's length
    assert ratio_length_penalty(0, 0) == 0.0
    assert ratio_length_penalty(5_000, 0) == 0.0
    # no gap: the ratio alone decides (expert 10: 14 -> ratio 1.4 -> 0.1 / 0.7; 4 -> ratio 0.4 -> 0.1 / 0.3)
    assert ratio_length_penalty(14, 10, min_token_gap=0) == pytest.approx(0.1 / 0.7)
    assert ratio_length_penalty(4, 10, min_token_gap=0) == pytest.approx(0.1 / 0.3)
    # other bands: free (0.8, 1.2), full (0.0, 3.0): ratio 2.1 -> 0.9 / 1.8 = 0.5; ratio 0.4 -> 0.4 / 0.8 = 0.5
    assert ratio_length_penalty(2_100, 1_000, (0.8, 1.2), (0.0, 3.0)) == pytest.approx(0.5)
    assert ratio_length_penalty(400, 1_000, (0.8, 1.2), (0.0, 3.0)) == pytest.approx(0.5)
    assert length_penalty("semantic", 1_650, 1_000) == pytest.approx(0.5)
    assert length_penalty("core", 275, 0) == 0.5  # core: absolute tokens, the expert unused


def test_ratio_penalty_refuses_bad_bands() -> None:
    with pytest.raises(ValueError, match="full low < free low"):
        ratio_length_penalty(1, 1, free=(0.5, 1.3), full=(0.6, 2.0))
    with pytest.raises(ValueError, match="full low < free low"):
        ratio_length_penalty(1, 1, free=(0.5, 1.3), full=(0.2, 1.3))
    with pytest.raises(ValueError, match="low < high"):
        ratio_length_penalty(1, 1, free=(1.3, 0.5))
    with pytest.raises(ValueError, match="min_token_gap"):
        ratio_length_penalty(1, 1, min_token_gap=-1)
    with pytest.raises(ValueError, match=">= 0"):
        ratio_length_penalty(-1, 1)


def test_config_carries_the_published_numbers() -> None:
    cfg = ADRPOConfig()
    assert (cfg.length_ratio_free, cfg.length_ratio_full, cfg.length_penalty_min_token_gap) == (
        (0.5, 1.3),
        (0.2, 2.0),
        200,
    )
    assert (cfg.attribution, cfg.attribution_alpha) == ("retrieval_share", 4.0)
    assert set(ATTRIBUTION_MODES) == {"retrieval_share", "answer_hits", "ablation"}
    for mode in ATTRIBUTION_MODES:
        assert ADRPOConfig(attribution=mode).attribution == mode


# ---------------------------------------------------------------------------------------------
# published attribution on constructed retrieval counts


def verdict(*retrieved: str) -> Verdict:
    return Verdict(correct=False, core_contains=True, retrieved_parts=retrieved, supporting_parts=())


def test_retrieval_counts_count_every_retrieved_entry_by_part() -> None:
    # two questions: (epi, sem, sem) and (sem, pro); answers play no part, core is never counted
    counts = retrieval_counts([verdict("episodic", "semantic", "semantic"), verdict("semantic", "procedural")])
    assert counts == {"core": 0, "episodic": 1, "semantic": 3, "procedural": 1}
    assert retrieval_counts([]) == dict.fromkeys(PARTS, 0)


def test_single_dominant_part_gets_alpha_core_always_one() -> None:
    assert retrieval_share_weights({"episodic": 1, "semantic": 3, "procedural": 2}) == {
        "core": 1.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0,
    }  # fmt: skip
    # core's count (if any is passed) is ignored: core is shown whole, never retrieved
    assert retrieval_share_weights({"core": 50, "procedural": 1}, alpha=2.5) == {
        "core": 1.0, "episodic": 1.0, "semantic": 1.0, "procedural": 2.5,
    }  # fmt: skip
    # nothing retrieved: uniform
    assert retrieval_share_weights({"episodic": 0, "semantic": 0, "procedural": 0}) == dict.fromkeys(PARTS, 1.0)
    assert dominant_part({}) is None
    with pytest.raises(ValueError, match="alpha"):
        retrieval_share_weights({"episodic": 1}, alpha=0.5)


@pytest.mark.parametrize(
    ("counts", "dominant"),
    [
        ({"episodic": 2, "semantic": 2, "procedural": 2}, "episodic"),  # three-way tie: first in order
        ({"episodic": 1, "semantic": 2, "procedural": 2}, "semantic"),  # semantic before procedural
        ({"episodic": 3, "semantic": 1, "procedural": 3}, "episodic"),
        ({"episodic": 0, "semantic": 0, "procedural": 1}, "procedural"),
    ],
)
def test_ties_go_to_episodic_then_semantic_then_procedural(counts: dict, dominant: str) -> None:
    assert dominant_part(counts) == dominant
    weights = retrieval_share_weights(counts)
    assert [p for p, w in weights.items() if w == 4.0] == [dominant] and weights["core"] == 1.0


# ---------------------------------------------------------------------------------------------
# per rollout, end to end


def test_weights_are_per_rollout_and_scale_that_rollouts_advantage() -> None:
    """Session A on an empty memory, G=2: rollout 0 writes two episodic entries, rollout 1 two procedural ones.

    Both questions retrieve every entry of the rollout's memory (fewer than top_k), so rollout 0 counts episodic 4,
    rollout 1 procedural 4: weights episodic 4 in r0, procedural 4 in r1, all else 1. Rewards by hand (containment,
    token counts 10 each, so no length penalty): the core APPEND holds "Oslo" in both rollouts, r0's episodic entry
    holds "Mochi", r1's entries do not: task (1.0, 0.5); every agent's reward equals its rollout's task.
    """
    cache = EmbeddingCache(HashingEmbedder())
    oslo = core("APPEND", content="Ingrid lives in Oslo.")
    epi = entries(add("Ingrid got a dog named Mochi.", "2023-02-10"), add("Ingrid moved house.", "2023-02-10"))
    pro = entries(add("Ingrid walks the dog every morning."), add("Ingrid makes coffee first."))
    expert = {"core": oslo, "episodic": "[]", "semantic": "[]", "procedural": "[]"}
    rollouts = {"core": (oslo, oslo), "episodic": (epi, "[]"), "semantic": ("[]", "[]"), "procedural": ("[]", pro)}
    group = SessionGroup("g", MemoryBank(MEMORY, cache=cache), SESSION_A, QUESTIONS_A, expert, rollouts)
    scores = score_groups([group], ContainmentJudge(top_k=10), ADRPOConfig(), lambda text: 10)
    (scored,) = scores.groups
    assert scored.task_rewards == (1.0, 0.5)
    assert [dict(c) for c in scored.contributions] == [
        {"core": 0.0, "episodic": 4.0, "semantic": 0.0, "procedural": 0.0},
        {"core": 0.0, "episodic": 0.0, "semantic": 0.0, "procedural": 4.0},
    ]
    assert [dict(w) for w in scored.weights] == [
        {"core": 1.0, "episodic": 4.0, "semantic": 1.0, "procedural": 1.0},
        {"core": 1.0, "episodic": 1.0, "semantic": 1.0, "procedural": 4.0},
    ]
    batch = scores.batch()  # parts in PARTS order, rollouts 0, 1
    np.testing.assert_array_equal(batch.rewards, [1, 0.5] * 4)
    np.testing.assert_array_equal(batch.weights, [1, 1, 4, 1, 1, 1, 1, 4])
    # G=2 rewards (1, .5): A = +-.25 unscaled, then each completion's own weight: episodic r0 x4, procedural r1 x4
    np.testing.assert_allclose(
        batch.advantages(scale_by_std=False), [0.25, -0.25, 1.0, -0.25, 0.25, -0.25, 0.25, -1.0], atol=1e-12
    )
    stats = scores.stats()
    assert stats["attribution_weight_mean_episodic"] == 2.5 and stats["attribution_weight_mean_core"] == 1.0
    assert stats["attribution_dominant_rate_episodic"] == 0.5 and stats["attribution_dominant_rate_procedural"] == 0.5
