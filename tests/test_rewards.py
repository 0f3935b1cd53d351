"""ADRPO rewards: format gate, length penalties, rollout grouping, judges, reward formula, attribution, advantages.

Two hand-built sessions (A: Oslo + Mochi, B: Kyoto date + yoga routine) with G=2 rollouts per agent are scored
end to end on real banks (HashingEmbedder); the scenario and its hand-computed rewards and weights are in
``tests/helpers.py``, every other expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from components.config import ADRPOConfig, BackendConfig
from components.errors import ConfigError
from components.memory.bank import MemoryBank
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.memory.types import PARTS
from components.rewards import (
    ContainmentJudge,
    JudgeItem,
    LLMJudge,
    SessionGroup,
    ablation_weights,
    answer_hits_weights,
    apply_agent,
    apply_rollout,
    completion_text,
    core_length_penalty,
    format_gate,
    group_advantages,
    groups_from_batch,
    grpo_group_id,
    length_penalty,
    make_judge,
    parse_judgement,
    retrieval_share_weights,
    rewrite_advantages,
    score_groups,
)
from tests.helpers import (
    ABLATION_WEIGHTS,
    ANSWER_HITS_WEIGHTS,
    CORE_A0,
    EPI_B0,
    EXPECTED_REWARDS,
    EXPERT_A,
    EXPERT_B,
    MEMORY,
    QUESTIONS_A,
    QUESTIONS_B,
    RETRIEVAL_WEIGHTS,
    ROLLOUTS_A,
    ROLLOUTS_B,
    SEM_A1,
    SESSION_A,
    SESSION_B,
    CountingBackend,
    ScriptedBackend,
    add,
    bank_after_a,
    core,
    count_tokens,
    entries,
    session_prompt_rows,
)

CFG = ADRPOConfig()  # lambda 0.8, core (150, 400), free (0.5, 1.3), full (0.2, 2.0), gap 200, alpha 4, top_k 10
SQRT_HALF = 1 / math.sqrt(2)


@pytest.fixture
def cache() -> EmbeddingCache:
    return EmbeddingCache(HashingEmbedder())


def make_groups(cache: EmbeddingCache) -> list[SessionGroup]:
    return [
        SessionGroup("c1:s1", MemoryBank(MEMORY, cache=cache), SESSION_A, QUESTIONS_A, EXPERT_A, ROLLOUTS_A),
        SessionGroup("c1:s2", bank_after_a(cache), SESSION_B, QUESTIONS_B, EXPERT_B, ROLLOUTS_B),
    ]


class CountingJudge(ContainmentJudge):
    """The real containment judge, counting its calls."""

    def __init__(self, top_k: int = 10) -> None:
        super().__init__(top_k)
        self.calls: list[int] = []

    def judge(self, items):
        self.calls.append(len(items))
        return super().judge(items)


# ---------------------------------------------------------------------------------------------
# format gate


def test_format_gate_valid_unparseable_and_invalid_ids(cache) -> None:
    bank = bank_after_a(cache)
    before = (bank.core, len(bank), bank.next_id("semantic"))
    valid = {
        "core": core("REPLACE", old="Oslo", new="Bergen"),
        "episodic": EPI_B0,
        "semantic": entries({"operation": "UPDATE", "id": "sem-1", "content": "Ingrid's dog Mochi is 3."}),
        "procedural": "```json\n[]\n```",
    }
    for part, text in valid.items():
        assert format_gate(part, text, bank, SESSION_B), part
    invalid = [
        ("core", "not json at all"),  # unparseable
        ("core", '{"operation": "APPEND", "content": "x"'),  # truncated
        ("core", "[]"),  # a list where one object is expected
        ("core", core("REPLACE", old="Paris", new="Rome")),  # old text absent from the core
        ("semantic", '[{"operation": "ADD"}]'),  # missing content
        ("semantic", entries({"operation": "UPDATE", "id": "sem-9", "content": "x"})),  # unknown id
        ("episodic", entries({"operation": "DELETE", "id": "sem-1"})),  # another part's id
        ("semantic", entries({"operation": "MERGE", "ids": ["sem-1", "sem-2"], "content": "x"})),  # sem-2 absent
        ("procedural", entries({"operation": "ADD", "content": "x", "turns": ["t1"]})),  # turn of another session
        ("episodic", entries(add("x", "yesterday"))),  # not a date
    ]
    for part, text in invalid:
        assert not format_gate(part, text, bank, SESSION_B), (part, text)
    assert (bank.core, len(bank), bank.next_id("semantic")) == before  # gates never touch the bank


# ---------------------------------------------------------------------------------------------
# length penalties


def test_core_length_penalty_shape() -> None:
    assert [core_length_penalty(t) for t in (0, 149, 150, 275, 400, 401, 10_000)] == [0, 0, 0, 0.5, 1, 1, 1]
    assert core_length_penalty(200, 100, 300) == 0.5
    assert length_penalty("core", 275, 0) == 0.5
    with pytest.raises(ValueError, match="low < high"):
        core_length_penalty(10, 400, 150)


# (the entry agents' ratio penalty, at and around every breakpoint: tests/test_rewards_published.py)


# ---------------------------------------------------------------------------------------------
# session grouping


def test_rollout_r_of_each_agent_applies_together_and_failures_contribute_nothing(cache) -> None:
    group = make_groups(cache)[1]  # session B on the session-A memory
    bank = group.bank_before
    first, second = group.apply(0), group.apply(1)
    # rollout 0: all four apply; the memory has the episodic and procedural ADDs of rollout 0, nothing of rollout 1
    assert first.format_ok == dict.fromkeys(PARTS, True)
    assert [e.text for e in first.bank.entries("episodic")] == ["Ingrid flew to Kyoto."]
    assert first.bank.entries("episodic")[0].timestamp.startswith("2023-03-01")
    assert [e.text for e in first.bank.entries("procedural")] == ["Every Sunday morning Ingrid does yoga."]
    assert first.bank.core == "Ingrid lives in Oslo."  # SKIP
    # rollout 1: semantic fails (unknown id) and applies nothing; core, episodic and procedural still apply
    assert second.format_ok == {"core": True, "episodic": True, "semantic": False, "procedural": True}
    assert "sem-7" in (second.agents["semantic"].error or "")
    assert second.bank.core == "Ingrid lives in Oslo.\nIngrid practises yoga on Sundays."
    assert second.bank.entries("episodic")[0].timestamp.startswith("2023-03-05")
    assert [e.text for e in second.bank.entries("procedural")] == ["Ingrid does yoga on Sunday mornings."]
    assert [e.text for e in second.bank.entries("semantic")] == ["Ingrid has a dog named Mochi."]
    # the gate measured alone on the pre-session bank is the gate inside the rollout
    for r, applied in ((0, first), (1, second)):
        for part in PARTS:
            assert format_gate(part, group.rollouts[part][r], bank, SESSION_B) == applied.agents[part].ok
    # the pre-session bank is untouched by the snapshots
    assert bank.core == "Ingrid lives in Oslo." and len(bank) == 1 and not bank.entries("episodic")
    # leaving a part out (the ablation memories)
    without = apply_rollout(bank, SESSION_B, group.outputs(0), leave_out="procedural")
    assert "procedural" not in without.agents and not without.bank.entries("procedural")
    assert len(without.bank.entries("episodic")) == 1


def test_session_group_teacher_forces_missing_parts_and_validates(cache) -> None:
    bank = MemoryBank(MEMORY, cache=cache)
    group = SessionGroup("g", bank, SESSION_A, QUESTIONS_A, EXPERT_A, {"semantic": (SEM_A1, "[]")})
    assert group.scored_parts == ("semantic",) and group.num_generations == 2
    assert group.outputs(1) == {**EXPERT_A, "semantic": "[]"}
    assert group.apply(0).bank.core == "Ingrid lives in Oslo."  # the expert's core
    with pytest.raises(ValueError, match="same number"):
        SessionGroup("g", bank, SESSION_A, QUESTIONS_A, EXPERT_A, {"core": ("a",), "semantic": ("a", "b")})
    with pytest.raises(ValueError, match="at least one question"):
        SessionGroup("g", bank, SESSION_A, (), EXPERT_A, ROLLOUTS_A)
    with pytest.raises(ValueError, match="expert output"):
        SessionGroup("g", bank, SESSION_A, QUESTIONS_A, {"core": CORE_A0}, ROLLOUTS_A)
    with pytest.raises(IndexError):
        group.outputs(2)


# ---------------------------------------------------------------------------------------------
# containment judge


def test_containment_judge_core_entry_date_and_absent(cache) -> None:
    bank = MemoryBank(MEMORY, cache=cache)
    assert apply_agent(bank, "core", core("APPEND", content="Ingrid lives in Oslo, Norway."), SESSION_A).ok
    assert apply_agent(bank, "semantic", entries(add("Ingrid's dog is called Mochi.")), SESSION_A).ok
    assert apply_agent(bank, "episodic", entries(add("Ingrid flew to Kyoto.", "2023-03-01")), SESSION_A).ok
    assert apply_agent(bank, "procedural", entries(add("Ingrid runs 5 km every Monday.")), SESSION_A).ok
    items = [
        JudgeItem(bank, "Where does Ingrid live?", "oslo"),  # via core (case-folded)
        JudgeItem(bank, "What is the name of Ingrid's dog?", "Mochi!"),  # via a retrieved entry
        JudgeItem(bank, "When did Ingrid fly to Kyoto?", "2023-03-01"),  # via an entry's date
        JudgeItem(bank, "Which car does Ingrid drive?", "Volvo"),  # absent
        JudgeItem(bank, "How far does Ingrid run?", "5 km"),  # token-aligned: found
        JudgeItem(bank, "Which year?", "202"),  # "202" is no whole token of "2023 02 10" (or of anything): not found
    ]
    core_hit, entry_hit, date_hit, absent, km, partial = ContainmentJudge(top_k=10).judge(items)
    assert core_hit.correct and core_hit.core_contains and not core_hit.supporting_parts
    assert set(core_hit.retrieved_parts) == {"episodic", "semantic", "procedural"}
    assert entry_hit.correct and not entry_hit.core_contains and entry_hit.supporting_parts == ("semantic",)
    assert date_hit.correct and date_hit.supporting_parts == ("episodic",)
    assert not absent.correct and not absent.core_contains and not absent.supporting_parts
    assert km.correct and km.supporting_parts == ("procedural",)
    assert not partial.correct
    # top_k bounds what is seen: with k=1 only the best entry for the question is searched
    (only_one,) = ContainmentJudge(top_k=1).judge([JudgeItem(bank, "What is the name of Ingrid's dog?", "Mochi")])
    assert len(only_one.retrieved_parts) == 1
    # an empty bank: nothing retrieved, core only
    empty = MemoryBank(MEMORY, cache=cache)
    (nothing,) = ContainmentJudge().judge([JudgeItem(empty, "Where?", "Oslo")])
    assert not nothing.correct and nothing.retrieved_parts == ()


# ---------------------------------------------------------------------------------------------
# rewards, attribution and advantages end to end


def _rewards_by_group_part(scores) -> dict:
    return {
        (group.group_id, part): tuple(s.reward for s in part_scores)
        for group in scores.groups
        for part, part_scores in group.scores.items()
    }


def test_reward_is_gate_times_task_times_length_factor(cache) -> None:
    judge = CountingJudge()
    scores = score_groups(make_groups(cache), judge, CFG, count_tokens)
    assert judge.calls == [8]  # ONE call: 2 groups x 2 rollouts x 2 questions
    got = _rewards_by_group_part(scores)
    assert got.keys() == EXPECTED_REWARDS.keys()
    for key, expected in EXPECTED_REWARDS.items():
        assert got[key] == pytest.approx(expected), key
    a, b = scores.groups
    assert a.task_rewards == (1.0, 0.5) and b.task_rewards == (1.0, 0.5)
    sem_a1 = a.scores["semantic"][1]
    assert (sem_a1.format_ok, sem_a1.task_reward, sem_a1.tokens) == (True, 0.5, 400)
    assert sem_a1.length_penalty == pytest.approx(1.0)
    core_a1 = a.scores["core"][1]
    assert not core_a1.format_ok and core_a1.reward == 0.0 and core_a1.error.startswith("parse:")
    assert b.scores["episodic"][1].length_penalty == pytest.approx(1 / 3)
    assert b.scores["core"][1].length_penalty == 1.0
    # every rollout score carries its factors; the product holds for all of them
    for s in scores.flat():
        assert s.reward == pytest.approx(float(s.format_ok) * s.task_reward * (1 - 0.8 * s.length_penalty))


def test_retrieval_share_weights_and_advantages_by_hand(cache) -> None:
    judge = CountingJudge()
    scores = score_groups(make_groups(cache), judge, CFG, count_tokens)
    assert len(judge.calls) == 1 and scores.attribution == "retrieval_share"
    a, b = scores.groups
    # per rollout: entries retrieved for the 2 questions (all entries: fewer than top_k); core is never retrieved
    assert a.contributions == ({"core": 0.0, "episodic": 0.0, "semantic": 2.0, "procedural": 0.0},) * 2
    assert b.contributions == ({"core": 0.0, "episodic": 2.0, "semantic": 2.0, "procedural": 2.0},) * 2
    assert {g.group_id: [dict(w) for w in g.weights] for g in scores.groups} == {
        g: [w, w] for g, w in RETRIEVAL_WEIGHTS.items()
    }
    batch = scores.batch()  # flat order: group A then B; parts core, episodic, semantic, procedural; r0, r1
    np.testing.assert_allclose(
        batch.rewards,
        np.concatenate([[0.6, 0, 1, 0, 1, 0.1, 1, 0.5], [1, 0.1, 1, 11 / 30, 1, 0, 1, 0.5]]),
        atol=1e-12,
    )
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    np.testing.assert_array_equal(batch.weights, np.concatenate([[1, 1, 1, 1, 4, 4, 1, 1], [1, 1, 4, 4, 1, 1, 1, 1]]))
    # no std scaling: A'_i = w * (r_i - mean), mean of a pair = midpoint, so +-w * (r0 - r1) / 2
    #  A: core .6 -> +-.3, epi 1 -> +-.5, sem .9 * 4 -> +-1.8, pro .5 -> +-.25
    #  B: core .9 -> +-.45, epi (19/30) * 4 -> +-19/15, sem 1 -> +-.5, pro .5 -> +-.25
    unscaled = np.concatenate(
        [[0.3, -0.3, 0.5, -0.5, 1.8, -1.8, 0.25, -0.25], [0.45, -0.45, 19 / 15, -19 / 15, 0.5, -0.5, 0.25, -0.25]]
    )
    np.testing.assert_allclose(batch.advantages(scale_by_std=False), unscaled, atol=1e-12)
    # std scaling, eps 0: a pair (x, y), x != y, has unbiased std |x - y| / sqrt(2), so A = +-w / sqrt(2)
    scaled = np.concatenate([[1, -1, 1, -1, 4, -4, 1, -1], [1, -1, 4, -4, 1, -1, 1, -1]]) * SQRT_HALF
    np.testing.assert_allclose(batch.advantages(eps=0.0), scaled, atol=1e-12)
    # default eps (1e-4): A = w * (d / 2) / (d / sqrt(2) + 1e-4), d = |r0 - r1|
    d = np.repeat(np.abs(batch.rewards[0::2] - batch.rewards[1::2]), 2)
    signs = np.tile([1, -1], 8)
    np.testing.assert_allclose(batch.advantages(), batch.weights * signs * (d / 2) / (d * SQRT_HALF + 1e-4))


def test_answer_hits_weights_by_hand(cache) -> None:
    scores = score_groups(make_groups(cache), CountingJudge(), ADRPOConfig(attribution="answer_hits"), count_tokens)
    a, b = scores.groups
    # pooled over both rollouts: the same contributions and weights for r0 and r1
    assert a.contributions == ({"core": 1.0, "episodic": 0.0, "semantic": 2.0, "procedural": 0.0},) * 2
    assert b.contributions == ({"core": 1.0, "episodic": 1.0, "semantic": 0.0, "procedural": 2.0},) * 2
    assert {g.group_id: [dict(w) for w in g.weights] for g in scores.groups} == {
        g: [w, w] for g, w in ANSWER_HITS_WEIGHTS.items()
    }
    for key, expected in EXPECTED_REWARDS.items():  # the weights never touch the rewards
        assert _rewards_by_group_part(scores)[key] == pytest.approx(expected), key
    batch = scores.batch()
    np.testing.assert_array_equal(batch.weights, np.concatenate([[1, 1, 1, 1, 4, 4, 1, 1], [1, 1, 1, 1, 1, 1, 4, 4]]))
    scaled = np.concatenate([[1, -1, 1, -1, 4, -4, 1, -1], [1, -1, 1, -1, 1, -1, 4, -4]]) * SQRT_HALF
    np.testing.assert_allclose(batch.advantages(eps=0.0), scaled, atol=1e-12)


def test_ablation_weights_and_advantages_by_hand(cache) -> None:
    judge = CountingJudge()
    cfg = ADRPOConfig(attribution="ablation")
    scores = score_groups(make_groups(cache), judge, cfg, count_tokens)
    # ONE call; memories: A r0 full + no-core + no-sem, A r1 full + no-sem, B r0 full + no-epi + no-pro,
    # B r1 full + no-core + no-epi + no-pro = 12 memories x 2 questions (parts that changed nothing are not ablated)
    assert judge.calls == [24] and scores.memories_judged == 12
    a, b = scores.groups
    assert a.ablated_task_rewards["core"] == (0.5, 0.5)  # r1's core failed: its ablation is the full memory
    assert a.ablated_task_rewards["semantic"] == (0.5, 0.0)
    assert b.ablated_task_rewards["procedural"] == (0.5, 0.5)
    for r in range(2):  # per session: the same for both rollouts
        assert a.contributions[r] == pytest.approx({"core": 0.25, "episodic": 0.0, "semantic": 0.5, "procedural": 0})
        assert b.contributions[r] == pytest.approx({"core": 0.0, "episodic": 0.25, "semantic": 0.0, "procedural": 0.25})
    assert {g.group_id: [dict(w) for w in g.weights] for g in scores.groups} == {
        g: [w, w] for g, w in ABLATION_WEIGHTS.items()
    }
    got = _rewards_by_group_part(scores)
    for key, expected in EXPECTED_REWARDS.items():  # the weights never touch the rewards
        assert got[key] == pytest.approx(expected), key
    batch = scores.batch()
    np.testing.assert_array_equal(batch.weights, np.concatenate([[2, 2, 1, 1, 4, 4, 1, 1], [1, 1, 4, 4, 1, 1, 4, 4]]))
    #  A: core .3 * 2 -> .6, epi .5, sem .45 * 4 -> 1.8, pro .25;  B: core .45, epi 19/60 * 4 -> 19/15, sem .5, pro 1
    unscaled = np.concatenate(
        [[0.6, -0.6, 0.5, -0.5, 1.8, -1.8, 0.25, -0.25], [0.45, -0.45, 19 / 15, -19 / 15, 0.5, -0.5, 1.0, -1.0]]
    )
    np.testing.assert_allclose(batch.advantages(scale_by_std=False), unscaled, atol=1e-12)
    scaled = np.concatenate([[2, -2, 1, -1, 4, -4, 1, -1], [1, -1, 4, -4, 1, -1, 4, -4]]) * SQRT_HALF
    np.testing.assert_allclose(batch.advantages(eps=0.0), scaled, atol=1e-12)


def test_one_judge_call_and_one_embedding_call_per_score_groups(cache) -> None:
    for mode in ("retrieval_share", "answer_hits", "ablation"):
        local = EmbeddingCache(HashingEmbedder())
        judge = CountingJudge()
        scores = score_groups(make_groups(local), judge, ADRPOConfig(attribution=mode), count_tokens)
        assert len(judge.calls) == 1 and scores.judge_calls == 1, mode
        assert local.calls == 1, mode  # questions, old entries and every new text: one batched embedding
        score_groups(make_groups(local), CountingJudge(), ADRPOConfig(attribution=mode), count_tokens)
        assert local.calls == 1, mode  # a second step re-uses every embedding
    empty_judge = CountingJudge()
    assert score_groups([], empty_judge, CFG, count_tokens).groups == () and empty_judge.calls == []


def test_rewrite_advantages_hand_computed_numpy_and_torch() -> None:
    # G=3 group (0, .5, 1): mean .5, unbiased std .5 -> (-1, 0, 1); G=2 group (.2, .2): all 0;
    # singleton (.7): 0; weights 2 for the first group, 3 for the second, 1 for the singleton
    rewards = [0.0, 0.5, 1.0, 0.2, 0.2, 0.7]
    ids = ["s1:core", "s1:core", "s1:core", ("s2", "semantic"), ("s2", "semantic"), 9]
    weights = [2, 2, 2, 3, 3, 1]
    np.testing.assert_allclose(group_advantages(rewards, ids, eps=0.0), [-1, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(rewrite_advantages(rewards, ids, weights, eps=0.0), [-2, 0, 2, 0, 0, 0])
    np.testing.assert_allclose(rewrite_advantages(rewards, ids, weights, scale_by_std=False), [-1, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(rewrite_advantages(rewards, ids, weights), np.array([-2, 0, 2, 0, 0, 0]) / 1.0002)
    # groups need not be contiguous
    np.testing.assert_allclose(
        group_advantages([1.0, 3.0, 0.0, 5.0], [0, 1, 0, 1], scale_by_std=False), [0.5, -1, -0.5, 1]
    )
    torch = pytest.importorskip("torch")
    tensor = torch.tensor(rewards, dtype=torch.float32)
    out = rewrite_advantages(tensor, torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor(weights), eps=0.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (6,)
    np.testing.assert_allclose(out.numpy(), [-2, 0, 2, 0, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="elements"):
        rewrite_advantages(rewards, ids[:5], weights)
    with pytest.raises(ValueError, match="positive"):
        rewrite_advantages(rewards, ids, [0, 1, 1, 1, 1, 1])


def test_weight_formulas() -> None:
    assert answer_hits_weights({"core": 3, "semantic": 3, "episodic": 1}, 4) == {
        "core": 4.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0,  # ties: every dominant part gets alpha
    }  # fmt: skip
    assert answer_hits_weights({}, 4) == dict.fromkeys(PARTS, 1.0)
    assert retrieval_share_weights({"core": 9, "semantic": 3, "episodic": 1}, 4) == {
        "core": 1.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0,  # core is never weighted
    }  # fmt: skip
    assert ablation_weights({"core": 0.1, "episodic": 0.4, "semantic": -0.2}, 4) == {
        "core": 1.0, "episodic": 4.0, "semantic": 1.0, "procedural": 1.0,
    }  # fmt: skip
    assert ablation_weights({"core": 0.3, "episodic": 0.4}, 4)["core"] == pytest.approx(3.0)
    assert ablation_weights({"core": -0.1}, 4) == dict.fromkeys(PARTS, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        ablation_weights({}, 0.5)


def test_stats_for_mlflow(cache) -> None:
    stats = score_groups(make_groups(cache), CountingJudge(), CFG, count_tokens).stats()
    assert stats["groups"] == 2 and stats["rollout_scores"] == 16 and stats["judge_calls"] == 1
    assert stats["questions_judged"] == 8 and stats["task_reward_mean"] == 0.75
    assert stats["format_failure_rate"] == pytest.approx(3 / 16)  # A core r1, A epi r1, B sem r1
    assert stats["format_failure_rate_core"] == pytest.approx(1 / 4)
    assert stats["reward_mean"] == pytest.approx(np.mean([r for v in EXPECTED_REWARDS.values() for r in v]))
    assert stats["reward_mean_semantic"] == pytest.approx((1 + 0.1 + 1 + 0) / 4)
    assert stats["attribution_weight_mean_semantic"] == 2.5 and stats["attribution_weight_mean_core"] == 1.0
    assert stats["attribution_dominant_rate_episodic"] == 0.5  # session B's two rollouts of four
    assert stats["attribution_dominant_rate_procedural"] == 0.0
    assert stats["length_penalty_mean_core"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert stats["zero_std_group_rate"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("length_penalty_lambda", 1.5),
        ("core_penalty_tokens", (400, 150)),
        ("length_ratio_free", (0.5,)),
        ("length_ratio_full", (0.2,)),
        ("length_ratio_full", (0.6, 2.0)),  # must enclose the free range
        ("length_ratio_full", (0.2, 1.3)),
        ("length_penalty_min_token_gap", -1),
        ("attribution_alpha", 0.5),
    ],
)
def test_invalid_reward_settings_are_refused_when_the_config_is_built(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ADRPOConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# TRL-style batches


def test_groups_from_batch_and_gather_follow_the_trainer_batch(cache) -> None:
    rows = session_prompt_rows(cache)
    rollouts = {"s1": ROLLOUTS_A, "s2": ROLLOUTS_B}
    # TRL layout: each prompt repeated G=2 times in a row; prompts in any order, completions as chat messages
    order = [("s2", "semantic"), ("s1", "core"), ("s2", "core"), ("s1", "semantic"), ("s1", "episodic")]
    order += [("s2", "procedural"), ("s1", "procedural"), ("s2", "episodic")]
    batch_rows, completions, keys = [], [], []
    for sid, part in order:
        for r in range(2):
            batch_rows.append(rows[sid, part])
            completions.append([{"role": "assistant", "content": rollouts[sid][part][r]}])
            keys.append((f"c1:{sid}", part, r))
    local = EmbeddingCache(HashingEmbedder())
    groups, layout = groups_from_batch(batch_rows, completions, cache=local, memory_config=MEMORY)
    assert [g.group_id for g in groups] == ["c1:s2", "c1:s1"] and len(layout) == 16
    assert groups[0].bank_before.core == "Ingrid lives in Oslo." and len(groups[0].bank_before) == 1
    assert groups[1].metadata["prompt_ids"]["core"] == "c1:s1:core"
    scores = score_groups(groups, CountingJudge(), CFG, count_tokens)
    batch = scores.gather(layout)
    expected = [EXPECTED_REWARDS[group_id, part][r] for group_id, part, r in keys]
    np.testing.assert_allclose(batch.rewards, expected, atol=1e-12)
    np.testing.assert_array_equal(batch.weights, [RETRIEVAL_WEIGHTS[g][p] for g, p, _ in keys])
    ids = batch.group_ids.tolist()
    assert ids[0::2] == ids[1::2] and len(set(ids)) == 8  # one GRPO group per (session, part)
    assert ids[0] == grpo_group_id(0, "semantic")
    advantages = rewrite_advantages(batch.rewards, batch.group_ids, batch.weights, eps=0.0)
    weights = np.array([RETRIEVAL_WEIGHTS[g][p] for g, p, _ in keys])
    np.testing.assert_allclose(advantages, weights * np.tile([1, -1], 8) * SQRT_HALF, atol=1e-12)
    # a session without all four agents in the batch cannot build its rollouts
    with pytest.raises(ValueError, match="procedural"):
        groups_from_batch(batch_rows[:10], completions[:10], cache=local, memory_config=MEMORY)
    with pytest.raises(ValueError, match="completions"):
        groups_from_batch(batch_rows, completions[:3], cache=local)
    assert completion_text("x") == "x" and completion_text({"role": "assistant", "content": "y"}) == "y"


# ---------------------------------------------------------------------------------------------
# LLM judge


def test_parse_judgement_is_strict() -> None:
    parsed = {
        "CORRECT": True,
        " correct.": True,
        "**CORRECT**": True,
        "Verdict: WRONG": False,
        "<think>is it right? WRONG?</think>\nCORRECT": True,
        "WRONG\nThe response names another city.": False,
    }
    for text, expected in parsed.items():
        assert parse_judgement(text) is expected, text
    for text in ("", "INCORRECT", "Correct answer", "CORRECT or WRONG", "The response is correct", "maybe"):
        assert parse_judgement(text) is None, text


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path):
    from components.llm.backends import create_backend

    backend = create_backend(BackendConfig(model=str(tiny_model_dir), max_new_tokens=4))
    yield backend
    backend.close()


def test_llm_judge_batches_one_generate_per_backend_with_the_tiny_model(cache, tiny_backend) -> None:
    answerer, grader = CountingBackend(tiny_backend), CountingBackend(tiny_backend)
    judge = LLMJudge(answerer, grader, top_k=CFG.answer_top_k)
    for mode in ("retrieval_share", "answer_hits", "ablation"):
        answerer.calls.clear()
        grader.calls.clear()
        scores = score_groups(make_groups(cache), judge, ADRPOConfig(attribution=mode), tiny_backend.count_tokens)
        assert len(answerer.calls) == 1 and len(grader.calls) <= 1, mode
        assert answerer.calls[0] <= scores.questions_judged  # identical prompts are generated once
        for group in scores.groups:
            for verdicts in group.verdicts:
                assert all(isinstance(v.response, str) for v in verdicts)
        assert all(0.0 <= s.reward <= 1.0 for s in scores.flat())
        assert set(scores.stats()) >= {"reward_mean", "format_failure_rate", "attribution_weight_mean_core"}
    # identical questions on one memory: one answerer prompt
    bank = bank_after_a(cache)
    answerer.calls.clear()
    verdicts = judge.judge([JudgeItem(bank, "Where does Ingrid live?", "Oslo", "2023-03-05")] * 3)
    assert answerer.calls == [1] and len(verdicts) == 3 and all(v.core_contains for v in verdicts)


def test_llm_judge_grading_and_robustness(cache) -> None:
    bank = bank_after_a(cache)
    answerer = ScriptedBackend(lambda user: "Oslo" if "Question: Where" in user else "not answerable")
    grader = ScriptedBackend(lambda user: "CORRECT" if "Response: Oslo" in user else "garbage")
    judge = LLMJudge(answerer, grader, top_k=5)
    items = [
        JudgeItem(bank, "Where does Ingrid live?", "Oslo, Norway", "2023-03-05"),
        JudgeItem(bank, "Where does Ingrid live now?", "Bergen", "2023-03-05"),
        JudgeItem(bank, "What is the dog called?", "Mochi", "2023-03-05"),
    ]
    first, second, third = judge.judge(items)
    assert answerer.calls == [3] and grader.calls == [2]  # "not answerable" is WRONG without grading
    assert first.correct and first.judgement == "CORRECT" and first.response == "Oslo"
    assert second.correct  # the (scripted) judge said CORRECT: the LLM judge follows the judge, not containment
    assert not third.correct and third.judgement is None and third.supporting_parts == ("semantic",)
    garbage = LLMJudge(answerer, ScriptedBackend(lambda user: "I think so"), top_k=5)
    assert not any(v.correct for v in garbage.judge(items))  # unparseable = WRONG
    assert judge.judge([]) == []
    assert isinstance(make_judge(CFG), ContainmentJudge)
    assert isinstance(make_judge(ADRPOConfig(judge="llm"), answerer, grader), LLMJudge)
    with pytest.raises(ValueError, match="backends"):
        make_judge(ADRPOConfig(judge="llm"))
