"""The great-expectations dialogue suite: each expectation catches its defect and names the record.

Conversations are built by hand from the schema dataclasses. Throughput at 10^5 sessions is measured in
``benchmarks/bench_ingest.py``, not asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

if __name__ == "__main__":  # pragma: no cover - benchmark entry point
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from components.config import DialogueExpectation, QualityConfig
from components.dialogue.schema import Conversation, Question, Session, Turn
from components.quality.dialogue import (
    EXPECTATION_NAMES,
    MAX_DETAILS_PER_CHECK,
    ConversationVerdict,
    DialogueValidator,
    RecordRef,
    format_critical_summary,
    is_critical,
)

CONFIG = QualityConfig(min_turn_chars=1, max_turn_chars=200, max_turns_per_session=4)


# ---------------------------------------------------------------------------------------------
# builders


def make_conversation(cid: str = "c0", sessions: int = 3, turns: int = 2) -> Conversation:
    """A clean conversation: increasing timestamps, alternating known speakers, evidence that exists."""
    built = []
    for s in range(sessions):
        built.append(
            Session(
                session_id=f"{cid}-s{s}",
                timestamp=f"2023-05-{s + 1:02d}T09:30:00",
                turns=tuple(
                    Turn(f"D{s}:{t}", ("Alice", "Bob")[t % 2], f"message {t} of session {s}") for t in range(turns)
                ),
            )
        )
    questions = (
        Question("q0", "What did Alice say first?", ("message 0",), "single-hop", ("D0:0",)),
        Question("q1", "When did they talk?", ("May 2023",), "temporal", ("D0:1", "D1:0"), date="2023-06-01"),
    )
    return Conversation(cid, ("Alice", "Bob"), tuple(built), questions)


def replace_session(conv: Conversation, index: int, **changes: object) -> Conversation:
    sessions = list(conv.sessions)
    sessions[index] = dataclasses.replace(sessions[index], **changes)
    return dataclasses.replace(conv, sessions=tuple(sessions))


def replace_turn(conv: Conversation, session: int, turn: int, **changes: object) -> Conversation:
    turns = list(conv.sessions[session].turns)
    turns[turn] = dataclasses.replace(turns[turn], **changes)
    return replace_session(conv, session, turns=tuple(turns))


def replace_question(conv: Conversation, index: int, **changes: object) -> Conversation:
    questions = list(conv.questions)
    questions[index] = dataclasses.replace(questions[index], **changes)
    return dataclasses.replace(conv, questions=tuple(questions))


def failed_names(verdict: ConversationVerdict) -> set[str]:
    return {name for name, _ in verdict.failures}


def examples(validator: DialogueValidator, name: str) -> list[dict[str, str]]:
    results = validator.summary().validation_result["results"]
    return [example for r in results if r["expectation"] == name for example in r["examples"]]


@pytest.fixture
def validator() -> DialogueValidator:
    return DialogueValidator(CONFIG)


# ---------------------------------------------------------------------------------------------
# clean data


def test_expectation_names_are_the_suite() -> None:
    assert set(EXPECTATION_NAMES) == {
        "unique_ids",
        "session_has_turns",
        "timestamp_parses",
        "timestamps_monotonic",
        "speaker_known",
        "evidence_exists",
        "turn_length",
        "session_length",
        "valid_utf8",
    }
    assert len(EXPECTATION_NAMES) == 9
    assert set(QualityConfig().critical) <= set(EXPECTATION_NAMES)


def test_clean_conversation_passes_every_expectation(validator: DialogueValidator) -> None:
    ref = RecordRef("data/clean.jsonl", "line 1")
    [verdict] = validator.validate_batch([(ref, make_conversation("clean"))])
    assert verdict.failures == []
    assert verdict.passed
    assert verdict.conversation_id == "clean"
    assert verdict.ref == ref

    summary = validator.summary()
    assert summary.pass_rates() == dict.fromkeys(EXPECTATION_NAMES, 1.0)
    assert all(stats.evaluated > 0 for stats in summary.expectations.values())
    assert summary.expectations["turn_length"].evaluated == 6  # 3 sessions x 2 turns
    assert summary.expectations["session_length"].evaluated == 3
    assert summary.expectations["evidence_exists"].evaluated == 3
    assert (summary.conversations_total, summary.conversations_passed) == (1, 1)
    assert summary.conversations_quarantined == summary.conversations_critical == 0
    result = summary.validation_result
    assert result["success"] is True
    assert result["engine"].startswith("great_expectations 1.")
    assert all(r["success"] and r["unexpected_count"] == 0 and r["examples"] == [] for r in result["results"])


# ---------------------------------------------------------------------------------------------
# one planted defect per expectation

Defect = Callable[[Conversation], Conversation]

DEFECTS: list[tuple[str, str, Defect, str]] = [
    (
        "unique_ids",
        "duplicate-session-id",
        lambda c: replace_session(c, 2, session_id=c.sessions[1].session_id),
        "session_id 'bad-s1' (session #2) is not unique",
    ),
    ("unique_ids", "duplicate-turn-id", lambda c: replace_turn(c, 2, 1, turn_id="D1:1"), "turn_id 'D1:1'"),
    ("unique_ids", "duplicate-question-id", lambda c: replace_question(c, 1, question_id="q0"), "question_id 'q0'"),
    ("session_has_turns", "empty-session", lambda c: replace_session(c, 2, turns=()), "has no turns"),
    (
        "timestamp_parses",
        "not-iso",
        lambda c: replace_session(c, 1, timestamp="last Tuesday at noon"),
        "'last Tuesday at noon' is not ISO 8601",
    ),
    (
        "timestamps_monotonic",
        "goes-back",
        lambda c: replace_session(c, 2, timestamp="2023-04-30T09:30:00"),
        "before the previous session's '2023-05-02T09:30:00'",
    ),
    ("speaker_known", "stranger", lambda c: replace_turn(c, 1, 0, speaker="Mallory"), "speaker 'Mallory'"),
    (
        "evidence_exists",
        "dangling-evidence",
        lambda c: replace_question(c, 1, evidence=("D0:1", "D9:9")),
        "cites evidence 'D9:9'",
    ),
    ("turn_length", "blank-turn", lambda c: replace_turn(c, 1, 1, text="   \n "), "0 characters after stripping"),
    ("turn_length", "long-turn", lambda c: replace_turn(c, 0, 1, text="x" * 201), "201 characters"),
    (
        "session_length",
        "long-session",
        lambda c: replace_session(
            c, 1, turns=tuple(Turn(f"D1:{t}", ("Alice", "Bob")[t % 2], f"turn {t}") for t in range(5))
        ),
        "has 5 turns (at most 4 allowed)",
    ),
    ("valid_utf8", "surrogate-in-text", lambda c: replace_turn(c, 2, 0, text="caf\ud800 au lait"), "U+D800"),
    ("valid_utf8", "surrogate-in-answer", lambda c: replace_question(c, 0, answers=("ok", "\udfff")), "answers[1]"),
    (
        "valid_utf8",
        "surrogate-in-speaker",
        lambda c: replace_turn(
            dataclasses.replace(c, speakers=("Alice", "Bob", "B\udc80ob")), 0, 1, speaker="B\udc80ob"
        ),
        "speakers[2]",
    ),
]


@pytest.mark.parametrize(
    ("name", "defect", "detail"),
    [pytest.param(name, defect, detail, id=case_id) for name, case_id, defect, detail in DEFECTS],
)
def test_each_expectation_catches_its_defect(
    validator: DialogueValidator, name: str, defect: Defect, detail: str
) -> None:
    bad_ref = RecordRef("data/source-b.jsonl", "line 7")
    items = [
        (RecordRef("data/source-a.jsonl", "line 1"), make_conversation("good-1")),
        (bad_ref, defect(make_conversation("bad"))),
        (RecordRef("data/source-a.jsonl", "line 2"), make_conversation("good-2")),
    ]
    verdicts = validator.validate_batch(items)

    assert [v.conversation_id for v in verdicts] == ["good-1", "bad", "good-2"]
    assert verdicts[0].failures == []
    assert verdicts[2].failures == []
    bad = verdicts[1]
    assert bad.ref == bad_ref
    assert failed_names(bad) == {name}, bad.failures
    assert any(detail in text for _, text in bad.failures), bad.failures

    summary = validator.summary()
    assert summary.expectations[name].failed >= 1
    assert summary.expectations[name].pass_rate < 1.0
    for other in set(EXPECTATION_NAMES) - {name}:
        assert summary.expectations[other].failed == 0, other
    assert (summary.conversations_total, summary.conversations_passed) == (3, 2)
    found = examples(validator, name)
    assert found, summary.validation_result
    assert {(e["source_file"], e["record"], e["conversation_id"]) for e in found} == {
        ("data/source-b.jsonl", "line 7", "bad")
    }
    assert any(detail in e["detail"] for e in found)
    failing = [r for r in summary.validation_result["results"] if r["expectation"] == name and not r["success"]]
    assert failing
    assert all(r["expectation_type"].startswith("expect_") for r in failing)
    json.dumps(summary.validation_result, ensure_ascii=False).encode("utf-8")  # no lone surrogates leak out


def test_duplicate_conversation_ids_in_one_batch_fail_every_copy(validator: DialogueValidator) -> None:
    verdicts = validator.validate_batch(
        [
            (RecordRef("a.jsonl", "line 1"), make_conversation("same")),
            (RecordRef("a.jsonl", "line 2"), make_conversation("other")),
            (RecordRef("b.jsonl", "line 9"), make_conversation("same")),
        ]
    )
    assert [failed_names(v) for v in verdicts] == [{"unique_ids"}, set(), {"unique_ids"}]
    assert "occurs more than once in this batch" in verdicts[2].failures[0][1]
    assert validator.summary().expectations["unique_ids"].failed == 2


def test_duplicate_conversation_id_across_batches_is_caught(validator: DialogueValidator) -> None:
    first = validator.validate_batch([(RecordRef("a.jsonl", "line 1"), make_conversation("conv-1"))])
    assert first[0].failures == []
    second = validator.validate_batch(
        [
            (RecordRef("b.jsonl", "line 1"), make_conversation("conv-2")),
            (RecordRef("b.jsonl", "line 2"), make_conversation("conv-1")),
        ]
    )
    assert second[0].failures == []
    assert second[1].failures == [("unique_ids", "conversation_id 'conv-1' already appeared in an earlier batch")]
    assert [(e["source_file"], e["record"]) for e in examples(validator, "unique_ids")] == [("b.jsonl", "line 2")]
    summary = validator.summary()
    assert summary.validation_result["batches"] == 2
    assert summary.conversations_total == 3
    assert summary.conversations_critical == 1


def test_validate_stream_batches_and_remembers_ids() -> None:
    validator = DialogueValidator(dataclasses.replace(CONFIG, batch_conversations=2))
    stream = [(RecordRef("s.jsonl", f"line {i}"), make_conversation(f"c{i % 3}")) for i in range(5)]
    verdicts = list(validator.validate_stream(stream))
    assert [bool(v.failures) for v in verdicts] == [False, False, False, True, True]
    assert validator.summary().validation_result["batches"] == 3


def test_many_failing_rows_are_capped_per_conversation(validator: DialogueValidator) -> None:
    conv = make_conversation("noisy", sessions=1, turns=4)
    long_session = tuple(Turn(f"D0:{t}", "Alice", "") for t in range(MAX_DETAILS_PER_CHECK + 5))
    conv = replace_session(conv, 0, turns=long_session)
    [verdict] = validator.validate_batch([(RecordRef("n.jsonl", "line 1"), conv)])
    turn_length = [detail for name, detail in verdict.failures if name == "turn_length"]
    assert len(turn_length) == MAX_DETAILS_PER_CHECK + 1
    assert turn_length[-1] == "... and 5 more row(s) failing turn_length"
    stats = validator.summary().expectations["turn_length"]
    assert (stats.evaluated, stats.failed) == (15, 15)


# ---------------------------------------------------------------------------------------------
# critical vs quarantine, and the stop message


def test_is_critical_honours_config() -> None:
    failures = [("turn_length", "turn 't1' too short")]
    verdict = ConversationVerdict("c", RecordRef("f.jsonl", "line 3"), failures=failures)
    assert not is_critical(verdict, QualityConfig())
    assert is_critical(verdict, QualityConfig(critical=("turn_length",)))
    assert not is_critical(ConversationVerdict("c", RecordRef("f.jsonl", "line 3")), QualityConfig())
    utf8 = ConversationVerdict("c", RecordRef("f.jsonl", "line 3"), failures=[("valid_utf8", "bad")])
    assert is_critical(utf8, QualityConfig())
    assert not is_critical(utf8, QualityConfig(critical=()))


def test_critical_summary_names_file_record_and_conversation() -> None:
    validator = DialogueValidator(CONFIG)
    items = [
        (
            RecordRef("data/locomo.json", "sample 3 (conv-26)"),
            replace_session(make_conversation("conv-26"), 1, turns=()),
        ),
        (RecordRef("data/x.jsonl", "line 4"), replace_turn(make_conversation("quiet"), 0, 0, speaker="Eve")),
        (RecordRef("data/x.jsonl", "line 5"), make_conversation("fine")),
    ]
    verdicts = validator.validate_batch(items)
    critical = [v for v in verdicts if is_critical(v, CONFIG)]
    assert [v.conversation_id for v in critical] == ["conv-26"]
    message = format_critical_summary(critical)
    assert "data/locomo.json [sample 3 (conv-26)]" in message
    assert "conversation 'conv-26'" in message
    assert "session_has_turns: session 'conv-26-s1' (session #1) has no turns" in message
    assert "evidence_exists" in message  # emptying session 1 also left evidence D1:0 dangling
    assert "quiet" not in message
    # with the config, only critical verdicts and only their critical failures are listed
    filtered = format_critical_summary(verdicts, CONFIG)
    assert "data/locomo.json [sample 3 (conv-26)]" in filtered
    assert "has no turns" in filtered
    assert "evidence_exists" not in filtered
    assert "quiet" not in filtered


def test_critical_summary_caps_the_listing() -> None:
    verdicts = [
        ConversationVerdict(
            f"c\ud800{i}", RecordRef("big.jsonl", f"line {i}"), failures=[("valid_utf8", "lone surrogate")]
        )
        for i in range(25)
    ]
    message = format_critical_summary(verdicts, QualityConfig(), limit=20)
    assert "25 conversation(s) failed" in message
    assert "big.jsonl [line 0]" in message
    assert "big.jsonl [line 19]" in message
    assert "big.jsonl [line 20]" not in message
    assert message.splitlines()[-1].strip() == "... and 5 more record(s)"
    message.encode("utf-8")  # printable even though the ids are not valid Unicode


def test_summary_counts_on_a_mixed_batch() -> None:
    config = dataclasses.replace(CONFIG, critical=("unique_ids", "timestamp_parses"))
    validator = DialogueValidator(config)
    items = [
        (RecordRef("m.jsonl", "line 1"), make_conversation("ok-1")),
        (RecordRef("m.jsonl", "line 2"), replace_turn(make_conversation("quarantine"), 0, 0, speaker="Zed")),
        (RecordRef("m.jsonl", "line 3"), replace_session(make_conversation("critical"), 0, timestamp="soon")),
        (
            RecordRef("m.jsonl", "line 4"),
            replace_turn(replace_session(make_conversation("both"), 2, timestamp="??"), 1, 1, text="\ud83d"),
        ),
        (RecordRef("m.jsonl", "line 5"), make_conversation("ok-2")),
    ]
    verdicts = validator.validate_batch(items)
    assert [failed_names(v) for v in verdicts] == [
        set(),
        {"speaker_known"},
        {"timestamp_parses"},
        {"timestamp_parses", "valid_utf8"},
        set(),
    ]
    assert [is_critical(v, config) for v in verdicts] == [False, False, True, True, False]

    summary = validator.summary()
    assert summary.conversations_total == 5
    assert summary.conversations_passed == 2
    assert summary.conversations_quarantined == 1
    assert summary.conversations_critical == 2
    assert summary.quarantine_fraction == pytest.approx(0.2)
    turns, sessions = 5 * 3 * 2, 5 * 3
    assert summary.expectations["speaker_known"].evaluated == turns
    assert summary.expectations["speaker_known"].failed == 1
    assert summary.pass_rates()["speaker_known"] == pytest.approx((turns - 1) / turns)
    assert summary.expectations["timestamp_parses"].evaluated == sessions
    assert summary.pass_rates()["timestamp_parses"] == pytest.approx((sessions - 2) / sessions)
    assert summary.expectations["valid_utf8"].failed == 1
    # valid_utf8 covers every row with text: conversations, sessions, turns and questions
    assert summary.expectations["valid_utf8"].evaluated == 5 + sessions + turns + 5 * 2
    assert summary.pass_rates()["turn_length"] == 1.0

    result = summary.validation_result
    text = json.dumps(result, ensure_ascii=False)
    text.encode("utf-8")
    assert json.loads(text)["conversations"] == {"total": 5, "passed": 2, "quarantined": 1, "critical": 2}
    assert result["success"] is False
    by_check = {r["check"]: r for r in result["results"]}
    assert by_check["timestamp_parses"]["unexpected_count"] == 2
    assert by_check["timestamp_parses"]["element_count"] == sessions
    assert by_check["timestamp_parses"]["critical"] is True
    assert by_check["speaker_known"]["critical"] is False
    assert [e["record"] for e in by_check["timestamp_parses"]["examples"]] == ["line 3", "line 4"]
    assert json.dumps(summary.to_dict())


def test_validation_result_examples_are_bounded() -> None:
    validator = DialogueValidator(CONFIG)
    for batch in range(3):
        items = [
            (
                RecordRef("many.jsonl", f"line {batch}-{i}"),
                replace_session(make_conversation(f"c{batch}-{i}"), 0, turns=()),
            )
            for i in range(15)
        ]
        validator.validate_batch(items)
    [entry] = [r for r in validator.summary().validation_result["results"] if r["check"] == "session_has_turns"]
    assert entry["unexpected_count"] == 45
    assert len(entry["examples"]) == 20
    assert entry["examples_truncated"] is True
    assert entry["batches"] == 3


def test_empty_batch_and_conversation_without_questions(validator: DialogueValidator) -> None:
    assert validator.validate_batch([]) == []
    conv = dataclasses.replace(make_conversation("bare", sessions=1), questions=())
    [verdict] = validator.validate_batch([(RecordRef("e.jsonl", "line 1"), conv)])
    assert verdict.failures == []
    assert validator.summary().expectations["evidence_exists"].evaluated == 0


def test_inconsistent_turn_bounds_are_a_config_error() -> None:
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match=r"min_turn_chars \(50\) exceeds max_turn_chars \(10\)"):
        QualityConfig(min_turn_chars=50, max_turn_chars=10)


def test_critical_names_are_exactly_the_implemented_checks() -> None:
    """``QualityConfig.critical`` accepts the names the suite implements, no more, no fewer, in suite order."""
    from components.errors import ConfigError

    names = get_args(DialogueExpectation)
    assert list(dict.fromkeys(check.name for check in DialogueValidator(CONFIG).checks)) == list(names)
    assert names == EXPECTATION_NAMES
    assert QualityConfig(critical=names).critical == names
    with pytest.raises(ConfigError, match="unknown expectation"):
        QualityConfig(critical=("unique_ids", "made_up"))


# ---------------------------------------------------------------------------------------------
# throughput
