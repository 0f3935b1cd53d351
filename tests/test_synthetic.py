"""The seeded synthetic dialogue generator: determinism, structure and exact ground truth."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from itertools import pairwise
from typing import Any

import pytest

from components.config import SyntheticConfig
from components.dialogue.schema import Conversation, Question, Turn, conversation_from_dict, conversation_to_dict
from components.dialogue.synthetic import (
    ADDITIVE,
    CATEGORIES,
    CLOSINGS,
    KINDS,
    MONTHS,
    SCHEDULED,
    USER_FILLER,
    generate_conversation,
    iter_conversations,
)

CONFIG = SyntheticConfig()
ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _json(conversation: Conversation) -> str:
    return json.dumps(conversation_to_dict(conversation), sort_keys=False, ensure_ascii=False)


def _turns(conversation: Conversation) -> dict[str, tuple[int, Turn]]:
    """turn id -> (session position, turn)."""
    return {turn.turn_id: (i, turn) for i, session in enumerate(conversation.sessions) for turn in session.turns}


def _facts_by_turn(conversation: Conversation) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for session in conversation.sessions:
        for fact in session.metadata["facts"]:
            for turn_id in fact["turn_ids"]:
                out.setdefault(turn_id, []).append(fact)
    return out


def _month_day(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}"


@pytest.fixture(scope="module")
def corpus() -> list[Conversation]:
    return list(iter_conversations(CONFIG, 300))


# ---------------------------------------------------------------------------------------------
# determinism and streaming


def test_same_seed_is_byte_identical() -> None:
    first = [_json(c) for c in iter_conversations(CONFIG, 25)]
    second = [_json(c) for c in iter_conversations(SyntheticConfig(), 25)]
    assert first == second


def test_different_seed_gives_a_different_corpus() -> None:
    ours = [_json(c) for c in iter_conversations(CONFIG, 10)]
    theirs = [_json(c) for c in iter_conversations(SyntheticConfig(seed=CONFIG.seed + 1), 10)]
    assert all(a != b for a, b in zip(ours, theirs, strict=True))
    # the dialogue itself differs, not just the ids and the seed recorded in metadata
    ours_sessions = [conversation_to_dict(c)["sessions"] for c in iter_conversations(CONFIG, 10)]
    other = SyntheticConfig(seed=CONFIG.seed + 1)
    theirs_sessions = [conversation_to_dict(c)["sessions"] for c in iter_conversations(other, 10)]
    assert all(a != b for a, b in zip(ours_sessions, theirs_sessions, strict=True))


def test_conversation_is_the_same_alone_or_in_a_stream() -> None:
    stream = list(iter_conversations(CONFIG, 12))
    for index in (0, 5, 11):
        assert _json(generate_conversation(index, CONFIG)) == _json(stream[index])
    assert _json(generate_conversation(11, CONFIG)) != _json(generate_conversation(10, CONFIG))


def test_iter_conversations_streams() -> None:
    stream = iter_conversations(CONFIG, 3)
    assert isinstance(stream, Iterator)
    assert not isinstance(stream, (list, tuple))
    assert next(stream).conversation_id == f"syn-{CONFIG.seed}-000000"
    assert [c.conversation_id for c in stream] == [f"syn-{CONFIG.seed}-000001", f"syn-{CONFIG.seed}-000002"]
    assert sum(1 for _ in iter_conversations(SyntheticConfig(num_conversations=4))) == 4


def test_round_trips_through_the_schema() -> None:
    conversation = generate_conversation(3, CONFIG)
    assert conversation_from_dict(json.loads(_json(conversation))) == conversation


# ---------------------------------------------------------------------------------------------
# structure


def test_ids_and_structure(corpus: list[Conversation]) -> None:
    for index, conversation in enumerate(corpus):
        assert conversation.conversation_id == f"syn-{CONFIG.seed}-{index:06d}"
        assert conversation.metadata["generator"] == "memforge-synthetic"
        assert (conversation.metadata["seed"], conversation.metadata["index"]) == (CONFIG.seed, index)
        assert len(conversation.speakers) == 2
        assert len(conversation.sessions) == CONFIG.sessions_per_conversation
        turn_ids = [turn.turn_id for session in conversation.sessions for turn in session.turns]
        assert len(turn_ids) == len(set(turn_ids))
        assert len({s.session_id for s in conversation.sessions}) == len(conversation.sessions)
        previous: datetime | None = None
        for n, session in enumerate(conversation.sessions, start=1):
            assert session.session_id == f"S{n}"
            assert session.turns, "sessions are never empty"
            assert len(session.turns) == 2 * CONFIG.events_per_session + CONFIG.filler_turns
            assert [t.turn_id for t in session.turns] == [f"S{n}:{k}" for k in range(1, len(session.turns) + 1)]
            stamp = datetime.fromisoformat(session.timestamp)
            assert date(2022, 1, 1) <= stamp.date()
            assert previous is None or stamp > previous
            previous = stamp
            for turn in session.turns:
                assert turn.speaker in conversation.speakers
                assert 0 < len(turn.text.strip()) < 300
            # speakers alternate: every user line gets a reply
            speakers = [turn.speaker for turn in session.turns]
            assert all(a != b for a, b in pairwise(speakers))
        assert previous is not None
        for question in conversation.questions:
            assert question.date is not None
            assert datetime.fromisoformat(question.date) > previous


def test_sessions_are_never_empty_without_events_or_filler() -> None:
    config = SyntheticConfig(events_per_session=0, filler_turns=0, sessions_per_conversation=3)
    conversation = generate_conversation(0, config)
    assert all(len(session.turns) == 1 for session in conversation.sessions)
    assert all(session.metadata["facts"] == [] for session in conversation.sessions)
    assert conversation.questions == ()
    assert conversation.metadata["profile"] == {}


def test_odd_filler_count_and_many_events() -> None:
    config = SyntheticConfig(events_per_session=20, filler_turns=3, sessions_per_conversation=4)
    conversation = generate_conversation(1, config)
    for session in conversation.sessions:
        assert len(session.turns) == 2 * 20 + 3
        assert len({t.turn_id for t in session.turns}) == len(session.turns)
        assert session.turns[-1].text in CLOSINGS


# ---------------------------------------------------------------------------------------------
# facts metadata


def test_facts_are_exact_and_complete(corpus: list[Conversation]) -> None:
    fillers = set(USER_FILLER) | set(CLOSINGS)
    for conversation in corpus:
        user = conversation.speakers[0]
        last: dict[str, str] = {}
        for session in conversation.sessions:
            texts = {turn.turn_id: turn.text for turn in session.turns}
            day = datetime.fromisoformat(session.timestamp).date()
            stated = set()
            for fact in session.metadata["facts"]:
                assert set(fact) == {"kind", "attribute", "value", "previous", "turn_ids", "date"}
                assert KINDS[fact["attribute"]] == fact["kind"]
                assert fact["turn_ids"]
                for turn_id in fact["turn_ids"]:
                    assert turn_id in texts, "fact turn ids point into their own session"
                    assert fact["value"] in texts[turn_id]
                    stated.add(turn_id)
                attribute = fact["attribute"]
                if attribute in ADDITIVE:
                    assert fact["previous"] is None
                else:
                    assert fact["previous"] == last.get(attribute)
                    assert fact["value"] != fact["previous"]
                last[attribute] = fact["value"]
                assert ISO_DAY.match(fact["date"])
                when = date.fromisoformat(fact["date"])
                if attribute in SCHEDULED:
                    assert when > day
                    assert _month_day(when) in texts[fact["turn_ids"][0]]
                else:
                    assert 0 <= (day - when).days <= 3
            # completeness: every user line that is not small talk states a fact, and only those do
            for turn in session.turns:
                if turn.speaker == user and turn.text not in fillers:
                    assert turn.turn_id in stated, turn.text
                elif turn.turn_id in stated:
                    pytest.fail(f"fact stated in a non-fact turn: {turn.text}")
        assert conversation.metadata["profile"] == last


def test_events_per_session_facts(corpus: list[Conversation]) -> None:
    for conversation in corpus[:50]:
        for session in conversation.sessions:
            turns = {turn_id for fact in session.metadata["facts"] for turn_id in fact["turn_ids"]}
            assert len(turns) == CONFIG.events_per_session
            job_turns = [f for f in session.metadata["facts"] if f["kind"] == "job"]
            assert len(job_turns) in (0, 2), "a job statement names both employer and role"


# ---------------------------------------------------------------------------------------------
# questions


def _check_question(
    conversation: Conversation,
    question: Question,
    turns: dict[str, tuple[int, Turn]],
    facts_by_turn: dict[str, list[dict[str, Any]]],
) -> None:
    """The category-specific ground-truth check for one question."""
    answer = question.answers[0]
    evidence = [turns[turn_id] for turn_id in question.evidence]
    text = " ".join(turn.text for _, turn in evidence)
    sessions = {position for position, _ in evidence}
    if question.category == "single-session":
        assert len(sessions) == 1
        assert answer in text
    elif question.category == "knowledge-update":
        (turn_id,) = question.evidence
        matches = [f for f in facts_by_turn[turn_id] if f["value"] == answer and f["previous"] is not None]
        assert matches, question
        attribute = matches[0]["attribute"]
        assert conversation.metadata["profile"][attribute] == answer
        later = [
            f
            for s in conversation.sessions[turns[turn_id][0] + 1 :]
            for f in s.metadata["facts"]
            if f["attribute"] == attribute
        ]
        assert not later, "evidence is the latest change"
    elif question.category == "multi-session":
        assert len(sessions) >= 2
        if answer.isdigit():
            assert int(answer) == len(question.evidence)
        else:
            assert answer in evidence[0][1].text
    elif question.category == "temporal":
        if ISO_DAY.match(answer):
            (turn_id,) = question.evidence
            assert answer in {f["date"] for f in facts_by_turn[turn_id]}
            position, turn = turns[turn_id]
            day = datetime.fromisoformat(conversation.sessions[position].timestamp).date()
            when = date.fromisoformat(answer)
            assert _month_day(when) in turn.text or 0 <= (day - when).days <= 3
        else:
            assert question.question.startswith("Which came first")
            assert len(question.evidence) == 2
            assert answer in question.question
            named = [t for t in question.evidence if any(f["value"] in answer for f in facts_by_turn[t])]
            assert len(named) == 1
            (other,) = set(question.evidence) - set(named)
            assert facts_by_turn[named[0]][0]["date"] < facts_by_turn[other][0]["date"]
    else:
        pytest.fail(f"unknown category {question.category}")


def test_questions_have_exact_ground_truth(corpus: list[Conversation]) -> None:
    for conversation in corpus:
        turns = _turns(conversation)
        facts_by_turn = _facts_by_turn(conversation)
        assert len(conversation.questions) <= CONFIG.questions_per_conversation
        assert len({q.question for q in conversation.questions}) == len(conversation.questions)
        dates = {q.date for q in conversation.questions}
        assert len(dates) <= 1
        for j, question in enumerate(conversation.questions, start=1):
            assert question.question_id == f"{conversation.conversation_id}:q{j}"
            assert question.category in CATEGORIES
            assert len(question.answers) == 1
            assert question.answers[0]
            assert len(question.answers[0]) < 60
            assert question.evidence
            assert all(turn_id in turns for turn_id in question.evidence)
            order = [(turns[t][0], int(t.split(":")[1])) for t in question.evidence]
            assert order == sorted(order), "evidence in conversation order"
            assert conversation.speakers[0] in question.question
            _check_question(conversation, question, turns, facts_by_turn)


def test_knowledge_update_answers_are_latest_values(corpus: list[Conversation]) -> None:
    checked = 0
    for conversation in corpus[:100]:
        facts_by_turn = _facts_by_turn(conversation)
        for question in conversation.questions:
            if question.category == "knowledge-update":
                (turn_id,) = question.evidence
                latest = {f["attribute"]: f["value"] for f in facts_by_turn[turn_id]}
                assert question.answers[0] in latest.values()
                assert question.answers[0] in conversation.metadata["profile"].values()
                checked += 1
    assert checked > 50


def test_categories_are_covered(corpus: list[Conversation]) -> None:
    counts = Counter(q.category for conversation in corpus[:20] for q in conversation.questions)
    assert set(counts) == set(CATEGORIES)
    assert all(len(c.questions) == CONFIG.questions_per_conversation for c in corpus)
    per_conversation = [{q.category for q in c.questions} for c in corpus]
    assert sum(len(cats) == 4 for cats in per_conversation) > 0.9 * len(corpus)
    kinds = Counter(
        "count" if q.answers[0].isdigit() else "order" if q.question.startswith("Which came first") else "value"
        for c in corpus
        for q in c.questions
        if q.category in ("multi-session", "temporal")
    )
    assert set(kinds) == {"count", "order", "value"}


def test_question_budget_is_respected() -> None:
    config = SyntheticConfig(questions_per_conversation=3, sessions_per_conversation=2)
    for conversation in iter_conversations(config, 20):
        assert len(conversation.questions) <= 3
    config = SyntheticConfig(questions_per_conversation=0)
    assert generate_conversation(0, config).questions == ()
