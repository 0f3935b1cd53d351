"""The normalised conversation schema shared by every stage.

A conversation is ``{conversation_id, speakers, sessions[], questions[], metadata}``; a session is
``{session_id, timestamp, turns[], metadata}``; a turn is ``{turn_id, speaker, text}``; a question is
``{question_id, question, answers[], category, evidence[], date}``. Turn ids are unique within a
conversation and stable, so memory entries can carry their provenance. Timestamps are ISO 8601.

``from_dict`` checks structure only (required keys, types, no unknown keys). Semantic checks (ids
unique, sessions non-empty, timestamps parseable and monotonic, speakers known, evidence that exists)
belong to the quality suite, which can quarantine a record instead of failing the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class SchemaError(ValueError):
    """A record that does not have the normalised structure; the message gives the field path."""


@dataclass(frozen=True, slots=True)
class Turn:
    turn_id: str
    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    timestamp: str
    turns: tuple[Turn, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Question:
    question_id: str
    question: str
    answers: tuple[str, ...]
    category: str
    evidence: tuple[str, ...] = ()
    date: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    speakers: tuple[str, ...]
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return sum(len(session.turns) for session in self.sessions)

    def turn_ids(self) -> set[str]:
        return {turn.turn_id for session in self.sessions for turn in session.turns}


def parse_timestamp(value: str) -> datetime | None:
    """Parse a normalised (ISO 8601) timestamp; ``None`` when it does not parse."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def turn_to_dict(turn: Turn) -> dict[str, Any]:
    return {"turn_id": turn.turn_id, "speaker": turn.speaker, "text": turn.text}


def session_to_dict(session: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "session_id": session.session_id,
        "timestamp": session.timestamp,
        "turns": [turn_to_dict(turn) for turn in session.turns],
    }
    if session.metadata:
        out["metadata"] = session.metadata
    return out


def question_to_dict(question: Question) -> dict[str, Any]:
    out: dict[str, Any] = {
        "question_id": question.question_id,
        "question": question.question,
        "answers": list(question.answers),
        "category": question.category,
        "evidence": list(question.evidence),
    }
    if question.date is not None:
        out["date"] = question.date
    return out


def conversation_to_dict(conversation: Conversation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conversation_id": conversation.conversation_id,
        "speakers": list(conversation.speakers),
        "sessions": [session_to_dict(session) for session in conversation.sessions],
        "questions": [question_to_dict(question) for question in conversation.questions],
    }
    if conversation.metadata:
        out["metadata"] = conversation.metadata
    return out


def _require_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _check_keys(obj: dict[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise SchemaError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        raise SchemaError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _id(value: Any, where: str) -> str:
    """Ids may be written as numbers in source files; they are normalised to strings."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SchemaError(f"{where}: expected a string id, got {type(value).__name__}")
    return str(value)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _metadata(obj: dict[str, Any], where: str) -> dict[str, Any]:
    return _require_mapping(obj.get("metadata", {}), f"{where}.metadata")


def turn_from_dict(obj: Any, where: str = "turn") -> Turn:
    obj = _require_mapping(obj, where)
    _check_keys(obj, where, {"turn_id", "speaker", "text"}, set())
    return Turn(
        turn_id=_id(obj["turn_id"], f"{where}.turn_id"),
        speaker=_string(obj["speaker"], f"{where}.speaker"),
        text=_string(obj["text"], f"{where}.text"),
    )


def session_from_dict(obj: Any, where: str = "session") -> Session:
    obj = _require_mapping(obj, where)
    _check_keys(obj, where, {"session_id", "timestamp", "turns"}, {"metadata"})
    turns = _list(obj["turns"], f"{where}.turns")
    return Session(
        session_id=_id(obj["session_id"], f"{where}.session_id"),
        timestamp=_string(obj["timestamp"], f"{where}.timestamp"),
        turns=tuple(turn_from_dict(turn, f"{where}.turns[{i}]") for i, turn in enumerate(turns)),
        metadata=_metadata(obj, where),
    )


def question_from_dict(obj: Any, where: str = "question") -> Question:
    obj = _require_mapping(obj, where)
    _check_keys(obj, where, {"question_id", "question", "answers", "category"}, {"evidence", "date"})
    answers = _list(obj["answers"], f"{where}.answers")
    evidence = _list(obj.get("evidence", []), f"{where}.evidence")
    date = obj.get("date")
    return Question(
        question_id=_id(obj["question_id"], f"{where}.question_id"),
        question=_string(obj["question"], f"{where}.question"),
        answers=tuple(_string(a, f"{where}.answers[{i}]") for i, a in enumerate(answers)),
        category=_string(obj["category"], f"{where}.category"),
        evidence=tuple(_id(e, f"{where}.evidence[{i}]") for i, e in enumerate(evidence)),
        date=None if date is None else _string(date, f"{where}.date"),
    )


def conversation_from_dict(obj: Any) -> Conversation:
    """Build a ``Conversation`` from its JSON form; raises ``SchemaError`` naming the bad field."""
    where = "conversation"
    obj = _require_mapping(obj, where)
    _check_keys(obj, where, {"conversation_id", "speakers", "sessions"}, {"questions", "metadata"})
    speakers = _list(obj["speakers"], f"{where}.speakers")
    sessions = _list(obj["sessions"], f"{where}.sessions")
    questions = _list(obj.get("questions", []), f"{where}.questions")
    return Conversation(
        conversation_id=_id(obj["conversation_id"], f"{where}.conversation_id"),
        speakers=tuple(_string(s, f"{where}.speakers[{i}]") for i, s in enumerate(speakers)),
        sessions=tuple(session_from_dict(s, f"sessions[{i}]") for i, s in enumerate(sessions)),
        questions=tuple(question_from_dict(q, f"questions[{i}]") for i, q in enumerate(questions)),
        metadata=_metadata(obj, where),
    )
