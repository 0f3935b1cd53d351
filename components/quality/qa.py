"""The great-expectations suite that decides which synthetic QA rows may be used.

Every row gets derived columns computed with Python and numpy (field type errors, stripped question,
answer word count, leak flag, missing evidence count, exact support flag, answer-evidence similarity,
duplicate flag and the highest similarity to an earlier question of the same session); the embeddings
behind the similarities come from ONE ``Embedder.embed`` call per ``validate``. great-expectations 1.x
expectations then decide pass and fail on those columns, and their unexpected index lists are mapped
back to rows. Two small dataset-level tables (one row per question type, one row per requested
session) are validated the same way.

Policy:

* a row that fails a row-level expectation (``ROW_EXPECTATIONS``) is *quarantined*, with its reasons;
* a failed dataset-level expectation (``DATASET_EXPECTATIONS``: ``type_mix`` over the usable rows,
  ``session_coverage``) is *critical*: the stage stops;
* the stage also stops when ``usable / total < min_usable_fraction``; the message gives the fraction,
  the threshold and the expectations that quarantined most rows.

Containment, leaks and exact duplicates compare ``components.text.normalise_text`` results, the meaning the
generators use too. As in the dialogue suite, raw text enters a GX table only escaped (``core.escaped``); the
GX context, data source, assets and suites are built once per ``QAValidator``. The dataset card is
``components.quality.card``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.config import SynthQAConfig
from components.dialogue.schema import Conversation, parse_timestamp
from components.qa.dates import date_stated, parse_day
from components.qa.schema import QUESTION_TYPES, QARow
from components.quality.core import (
    MAX_EXAMPLES,
    Check,
    CheckTotals,
    SuiteValidator,
    Verdict,
    clean,
    escaped,
    gx_engine,
    safe,
    show,
    suite_statistics,
)
from components.text import contains_normalised, leaks_answer, normalise_text

if TYPE_CHECKING:
    import pandas as pd

    from components.memory.embedder import Embedder

QA_EXPECTATION_NAMES: tuple[str, ...] = (
    "required_fields",
    "question_mark",
    "answer_short",
    "answer_not_leaked",
    "evidence_exists",
    "answer_supported",
    "not_duplicate",
    "type_mix",
    "session_coverage",
)
#: Failing one of these quarantines the row.
ROW_EXPECTATIONS: tuple[str, ...] = QA_EXPECTATION_NAMES[:7]
#: Failing one of these stops the stage.
DATASET_EXPECTATIONS: tuple[str, ...] = QA_EXPECTATION_NAMES[7:]
#: Uncovered sessions / off-target types named in a critical message.
MAX_NAMED = 10

_TABLES = ("rows", "types", "sessions")
_MISSING = object()
_STRING_FIELDS = ("qa_id", "conversation_id", "session_id", "question", "generator")
_TARGET_FIELD = {"single-session": "single_session", "multi-session": "multi_session", "temporal": "temporal"}


def target_shares(cfg: SynthQAConfig) -> dict[str, float]:
    """The target share of each question type."""
    return {qtype: float(getattr(cfg.type_mix, attr)) for qtype, attr in _TARGET_FIELD.items()}


# ---------------------------------------------------------------------------------------------
# session contexts (shared per conversation: no text is copied per session)


@dataclass(frozen=True, slots=True, eq=False)
class ConversationIndex:
    """Lookups over one conversation, shared by the ``SessionContext`` of each of its sessions.

    Holds references to the conversation's turn texts (not copies). When an id repeats, the first
    occurrence wins (the dialogue suite quarantines such conversations before this stage).
    """

    conversation_id: str
    session_ids: tuple[str, ...]
    session_timestamps: tuple[str, ...]
    session_days: tuple[str, ...]  # YYYY-MM-DD of each session ("" when the timestamp does not parse)
    session_position: dict[str, int]
    turn_text: dict[str, str]
    turn_session: dict[str, int]  # turn id -> position of its session

    @classmethod
    def from_conversation(cls, conversation: Conversation) -> ConversationIndex:
        session_position: dict[str, int] = {}
        turn_text: dict[str, str] = {}
        turn_session: dict[str, int] = {}
        for position, session in enumerate(conversation.sessions):
            session_position.setdefault(session.session_id, position)
            for turn in session.turns:
                if turn.turn_id not in turn_text:
                    turn_text[turn.turn_id] = turn.text
                    turn_session[turn.turn_id] = position
        timestamps = tuple(session.timestamp for session in conversation.sessions)
        return cls(
            conversation_id=conversation.conversation_id,
            session_ids=tuple(session.session_id for session in conversation.sessions),
            session_timestamps=timestamps,
            session_days=tuple(_day(ts) for ts in timestamps),
            session_position=session_position,
            turn_text=turn_text,
            turn_session=turn_session,
        )


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What one session's questions may cite: turns and dates of this session and the earlier ones."""

    index: ConversationIndex
    position: int

    @property
    def conversation_id(self) -> str:
        return self.index.conversation_id

    @property
    def session_id(self) -> str:
        return self.index.session_ids[self.position]

    @property
    def timestamp(self) -> str:
        return self.index.session_timestamps[self.position]

    def turn_session_position(self, turn_id: str) -> int | None:
        """Position of the session holding ``turn_id`` when it is this session or an earlier one."""
        position = self.index.turn_session.get(turn_id)
        return position if position is not None and position <= self.position else None

    def turn_text(self, turn_id: str) -> str | None:
        """The text of an available turn; ``None`` for an unknown turn or one from a later session."""
        return None if self.turn_session_position(turn_id) is None else self.index.turn_text[turn_id]

    def session_position(self, session_id: str) -> int | None:
        """Position of an available session (this one or earlier); ``None`` otherwise."""
        position = self.index.session_position.get(session_id)
        return position if position is not None and position <= self.position else None

    def session_date(self, session_id: str) -> str | None:
        """The ISO timestamp of an available session."""
        position = self.session_position(session_id)
        return None if position is None else self.index.session_timestamps[position]

    def turn_ids(self) -> Iterator[str]:
        """Ids of every available turn."""
        return (tid for tid, position in self.index.turn_session.items() if position <= self.position)


def build_session_contexts(conversations: Iterable[Conversation]) -> dict[tuple[str, str], SessionContext]:
    """``(conversation_id, session_id) -> SessionContext`` for every session; one shared index per
    conversation, so memory grows with the corpus, not with sessions x turns."""
    contexts: dict[tuple[str, str], SessionContext] = {}
    for conversation in conversations:
        index = ConversationIndex.from_conversation(conversation)
        for session_id, position in index.session_position.items():
            contexts.setdefault((index.conversation_id, session_id), SessionContext(index, position))
    return contexts


def _day(timestamp: str) -> str:
    parsed = parse_timestamp(timestamp)
    return "" if parsed is None else parsed.date().isoformat()


# ---------------------------------------------------------------------------------------------
# public results


@dataclass
class QAVerdict(Verdict):
    """The outcome for one row (``index`` = its position in the validated sequence)."""

    qa_id: str
    index: int = -1


@dataclass
class QAQualityReport:
    """Verdicts, pass rates and counts of one ``QAValidator.validate`` call.

    ``critical`` holds a message for each reason the stage must stop (failed dataset-level expectations,
    and a usable fraction below the validator's ``min_usable_fraction``); ``critical_expectations`` the
    matching names (``min_usable_fraction`` for the latter). ``dataset_failures`` maps each failed
    dataset-level expectation to its message.
    """

    verdicts: list[QAVerdict]
    pass_rates: dict[str, float]
    failed_counts: dict[str, int]
    usable: int
    total: int
    type_counts: dict[str, int]
    usable_type_counts: dict[str, int]
    critical: list[str]
    critical_expectations: list[str]
    dataset_failures: dict[str, str]
    validation_result: dict[str, Any]

    def usable_fraction(self) -> float:
        return self.usable / self.total if self.total else 0.0

    def usable_rows(self, rows: Sequence[QARow]) -> list[QARow]:
        """The rows that passed every row-level expectation (``rows`` = the sequence validated)."""
        return [rows[v.index] for v in self.verdicts if v.passed]

    def quarantined(self, rows: Sequence[QARow]) -> list[tuple[QARow, QAVerdict]]:
        """The failing rows with their verdicts."""
        return [(rows[v.index], v) for v in self.verdicts if not v.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (no per-row verdicts)."""
        return {
            "rows": {"total": self.total, "usable": self.usable, "usable_fraction": self.usable_fraction()},
            "pass_rates": dict(self.pass_rates),
            "failed_counts": dict(self.failed_counts),
            "type_counts": dict(self.type_counts),
            "usable_type_counts": dict(self.usable_type_counts),
            "critical": list(self.critical),
            "validation_result": self.validation_result,
        }


def _usable_fraction_message(report: QAQualityReport, threshold: float) -> str | None:
    fraction = report.usable_fraction()
    if report.total and fraction >= threshold:
        return None
    if not report.total:
        return f"min_usable_fraction: no QA rows to validate (usable fraction 0 < min_usable_fraction {threshold:g})"
    ranked = sorted(
        ((n, report.failed_counts.get(n, 0)) for n in ROW_EXPECTATIONS if report.failed_counts.get(n, 0)),
        key=lambda item: -item[1],
    )
    top = ", ".join(f"{name} ({count} row(s), pass rate {report.pass_rates[name]:.3f})" for name, count in ranked[:3])
    return (
        f"min_usable_fraction: only {report.usable} of {report.total} rows are usable "
        f"(usable fraction {fraction:.3f} < min_usable_fraction {threshold:g}); "
        f"top failing expectations: {top or 'none'}"
    )


def quality_gate_message(report: QAQualityReport, cfg: SynthQAConfig) -> str | None:
    """Why the stage must stop, or ``None`` when the usable rows may be used."""
    lines = [report.dataset_failures[name] for name in DATASET_EXPECTATIONS if name in report.critical_expectations]
    fraction = _usable_fraction_message(report, cfg.min_usable_fraction)
    if fraction:
        lines.append(fraction)
    if not lines:
        return None
    names = [line.split(":", 1)[0] for line in lines]
    header = f"synthetic QA failed critical quality check(s) {', '.join(names)}:"
    return "\n".join([header, *(f"  - {line}" for line in lines)])


# ---------------------------------------------------------------------------------------------
# per-row features


@dataclass
class _Features:
    """Rows plus the derived values the GX tables are built from (index = row position)."""

    rows: Sequence[Any]
    contexts: list[SessionContext | None]
    field_problems: dict[int, list[str]]
    qa_ids: list[str]
    qtype: list[str | None]
    question: list[str | None]  # stripped, when a non-empty string
    word_count: np.ndarray  # float: NaN when the answer is not a string
    leaked: list[bool | None]
    evidence_missing: np.ndarray  # float: NaN when not applicable
    answer_exact: np.ndarray  # bool: contained in an evidence turn, or an evidence session's date
    similarity: np.ndarray  # float: NaN when not computed (exact support, no evidence, bad answer)
    same_as_earlier: list[bool | None]
    max_prior_similarity: np.ndarray  # float: NaN for the first question of a session and exact repeats
    prior_row: np.ndarray  # int: the earlier row most similar (or identical), -1 when none
    id_counts: Counter[str] = field(default_factory=Counter)  # qa_id -> rows carrying it


def _field_problems(row: Any) -> list[tuple[str, str]]:
    """``(field, problem)`` for each missing, null or mistyped field of one row (empty when well-formed)."""
    problems: list[tuple[str, str]] = []
    get = row.get if isinstance(row, dict) else lambda name, default: getattr(row, name, default)
    for name in (*_STRING_FIELDS, "answer", "type", "session_date"):
        value = get(name, _MISSING)
        if value is _MISSING or value is None:
            problems.append((name, f"{name} is missing"))
        elif not isinstance(value, str):
            problems.append((name, f"{name} must be a string, got {type(value).__name__}"))
        elif name in _STRING_FIELDS and not value.strip():
            problems.append((name, f"{name} is empty"))
        elif name == "session_date" and parse_timestamp(value) is None:
            problems.append((name, f"session_date {show(value)} is not an ISO 8601 timestamp"))
    index = get("session_index", _MISSING)
    if index is _MISSING or index is None:
        problems.append(("session_index", "session_index is missing"))
    elif isinstance(index, bool) or not isinstance(index, int) or index < 0:
        problems.append(("session_index", f"session_index must be a non-negative integer, got {show(repr(index))}"))
    for name in ("evidence", "evidence_sessions"):
        value = get(name, _MISSING)
        if value is _MISSING or value is None:
            problems.append((name, f"{name} is missing"))
        elif not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
            problems.append((name, f"{name} must be a list of non-empty strings"))
        elif name == "evidence" and not value:
            problems.append((name, "evidence is empty"))
    return problems


def row_field(row: Any, name: str) -> Any:
    """Field ``name`` of a row given as a ``QARow`` or a mapping (``None`` when absent)."""
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def _compute_features(
    rows: Sequence[Any],
    sessions: Mapping[tuple[str, str], SessionContext],
    embedder: Embedder,
) -> _Features:
    n = len(rows)
    field_problems: dict[int, list[str]] = {}  # row -> problems (rows with none are left out)
    contexts: list[SessionContext | None] = [None] * n
    qa_ids: list[str] = []
    qtype: list[str | None] = [None] * n
    question: list[str | None] = [None] * n
    word_count = np.full(n, np.nan)
    leaked: list[bool | None] = [None] * n
    evidence_missing = np.full(n, np.nan)
    answer_exact = np.zeros(n, dtype=bool)
    similarity = np.full(n, np.nan)

    texts: dict[str, int] = {}  # text -> slot of the single embed call
    question_slot = np.full(n, -1, dtype=np.int64)
    pairs: list[tuple[int, int, int]] = []  # (row, answer slot, evidence slot)
    norm_turns: dict[tuple[int, str], str] = {}  # (id(index), turn id) -> normalised text
    groups: dict[tuple[str, str], list[int]] = {}

    def slot(text: str) -> int:
        found = texts.get(text)
        if found is None:
            found = texts[text] = len(texts)
        return found

    for i, row in enumerate(rows):
        problems = _field_problems(row)
        if problems:
            field_problems[i] = [problem for _, problem in problems]
        bad = {name for name, _ in problems}
        qa_id = row_field(row, "qa_id")
        qa_ids.append(qa_id if isinstance(qa_id, str) else f"<row {i}>")
        if "type" not in bad:
            qtype[i] = row_field(row, "type")
        if "question" not in bad:
            question[i] = row_field(row, "question").strip()
        answer = None if "answer" in bad else row_field(row, "answer")
        if answer is not None:
            word_count[i] = len(answer.split())
        norm_answer = normalise_text(answer) if answer else ""
        if question[i] is not None and answer is not None:
            leaked[i] = leaks_answer(question[i], answer)
        ids_ok = "conversation_id" not in bad and "session_id" not in bad
        if ids_ok:
            key = (row_field(row, "conversation_id"), row_field(row, "session_id"))
            contexts[i] = ctx = sessions.get(key)
            if question[i] is not None:
                groups.setdefault(key, []).append(i)
                question_slot[i] = slot(question[i])
        else:
            ctx = None
        if not ids_ok or "evidence" in bad or "evidence_sessions" in bad:
            continue
        evidence = row_field(row, "evidence")
        if ctx is None:
            evidence_missing[i] = len(evidence) + len(row_field(row, "evidence_sessions"))
            continue
        index = ctx.index
        found_turns: list[str] = []
        positions: set[int] = set()
        missing = 0
        for turn_id in evidence:
            position = ctx.turn_session_position(turn_id)
            if position is None:
                missing += 1
            else:
                found_turns.append(turn_id)
                positions.add(position)
        for session_id in row_field(row, "evidence_sessions"):
            position = ctx.session_position(session_id)
            if position is None:
                missing += 1
            else:
                positions.add(position)
        evidence_missing[i] = missing
        if not found_turns or not norm_answer:
            continue
        for turn_id in found_turns:
            norm = norm_turns.get((id(index), turn_id))
            if norm is None:
                norm = norm_turns[(id(index), turn_id)] = normalise_text(index.turn_text[turn_id])
            if contains_normalised(norm_answer, norm):
                answer_exact[i] = True
                break
        if not answer_exact[i] and positions:
            day = answer.strip().rstrip(".")
            answer_exact[i] = any(index.session_days[p] == day for p in positions if index.session_days[p])
        if not answer_exact[i] and parse_day(answer) is not None:  # "on March 1" / "yesterday" -> 2023-03-01
            answer_exact[i] = any(
                date_stated(answer, index.turn_text[t], index.session_days[index.turn_session[t]]) for t in found_turns
            )
        if not answer_exact[i]:
            evidence_text = "\n".join(index.turn_text[t] for t in found_turns)
            pairs.append((i, slot(answer), slot(evidence_text)))

    vectors = _embed_once(embedder, list(texts)) if texts else np.zeros((0, 1), dtype=np.float32)
    if pairs:
        rows_idx, a_slots, e_slots = (np.asarray(col, dtype=np.int64) for col in zip(*pairs, strict=True))
        similarity[rows_idx] = np.einsum("ij,ij->i", vectors[a_slots], vectors[e_slots]).astype(np.float64)

    same_as_earlier, max_prior, prior_row = _duplicates(n, groups, question, question_slot, vectors)
    return _Features(
        rows=rows,
        contexts=contexts,
        field_problems=field_problems,
        qa_ids=qa_ids,
        qtype=qtype,
        question=question,
        word_count=word_count,
        leaked=leaked,
        evidence_missing=evidence_missing,
        answer_exact=answer_exact,
        similarity=similarity,
        same_as_earlier=same_as_earlier,
        max_prior_similarity=max_prior,
        prior_row=prior_row,
        id_counts=Counter(qa_ids),
    )


def _embed_once(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """One embed call for every text (escaped first if any holds a lone surrogate)."""
    vectors = np.asarray(embedder.embed(safe(texts)), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
    return vectors


def _duplicates(
    n: int,
    groups: dict[tuple[str, str], list[int]],
    question: list[str | None],
    question_slot: np.ndarray,
    vectors: np.ndarray,
) -> tuple[list[bool | None], np.ndarray, np.ndarray]:
    """Per row: same normalised text as an earlier question of its session; the highest cosine with an
    earlier question of the session (NaN for the first, and for exact repeats); and which earlier row
    that is (the first identical one for an exact repeat)."""
    same: list[bool | None] = [None] * n
    max_prior = np.full(n, np.nan)
    prior_row = np.full(n, -1, dtype=np.int64)
    by_size: dict[int, list[list[int]]] = {}
    for members in groups.values():
        seen: dict[str, int] = {}
        for i in members:
            norm = normalise_text(question[i])  # type: ignore[arg-type]
            first = seen.setdefault(norm, i)
            same[i] = first != i
            if first != i:
                prior_row[i] = first
        if len(members) > 1:
            by_size.setdefault(len(members), []).append(members)
    for size, member_lists in by_size.items():
        members_arr = np.asarray(member_lists, dtype=np.int64)  # (groups, size), rows in order
        lower = np.tril(np.ones((size, size), dtype=bool), k=-1)  # j < i: earlier questions only
        chunk = max(1, 4_000_000 // (size * max(size, vectors.shape[1])))
        for start in range(0, len(members_arr), chunk):
            block = members_arr[start : start + chunk]
            emb = vectors[question_slot[block]]  # (g, size, d)
            sims = np.einsum("gid,gjd->gij", emb, emb)
            sims = np.where(lower, sims, -np.inf)
            best = sims.argmax(axis=2)  # (g, size)
            best_sim = np.take_along_axis(sims, best[..., None], axis=2)[..., 0]
            rows_flat = block[:, 1:].ravel()
            exact = np.asarray([same[r] for r in rows_flat], dtype=bool)
            chosen = np.take_along_axis(block, best, axis=1)[:, 1:].ravel()
            # an exact repeat is the same_text check's failure; its similarity is left out (NaN)
            max_prior[rows_flat] = np.where(exact, np.nan, best_sim[:, 1:].ravel())
            prior_row[rows_flat] = np.where(exact, prior_row[rows_flat], chosen)
    return same, max_prior, prior_row


# ---------------------------------------------------------------------------------------------
# the checks: one GX expectation each; ``describe(row position, features or table)`` gives the message


def _row_checks(cfg: SynthQAConfig) -> list[Check]:
    most, support, dup = cfg.max_answer_words, cfg.support_similarity, cfg.duplicate_similarity

    def fields(i: int, f: _Features) -> str:
        return "; ".join(f.field_problems.get(i, ["malformed row"]))

    def type_value(i: int, f: _Features) -> str:
        return f"type {show(str(f.qtype[i]))} is not one of {', '.join(QUESTION_TYPES)}"

    def unique_id(i: int, f: _Features) -> str:
        return f"qa_id {show(f.qa_ids[i])} occurs {f.id_counts[f.qa_ids[i]]} times"

    def question_mark(i: int, f: _Features) -> str:
        return f"question {show(str(f.question[i]))} does not end with '?'"

    def answer_short(i: int, f: _Features) -> str:
        count = int(f.word_count[i])
        return "answer is empty" if count == 0 else f"answer has {count} words (at most {most} allowed)"

    def leaked(i: int, f: _Features) -> str:
        row = f.rows[i]
        return f"answer {show(row_field(row, 'answer'))} appears in the question {show(row_field(row, 'question'))}"

    def evidence(i: int, f: _Features) -> str:
        row, ctx = f.rows[i], f.contexts[i]
        where = f"conversation {show(row_field(row, 'conversation_id'))} session {show(row_field(row, 'session_id'))}"
        if ctx is None:
            return f"{where} is not in the dialogues, so none of its evidence exists"
        problems = []
        for turn_id in row_field(row, "evidence"):
            if ctx.turn_session_position(turn_id) is None:
                later = turn_id in ctx.index.turn_session
                problems.append(f"turn {show(turn_id)} " + ("is from a later session" if later else "does not exist"))
        for session_id in row_field(row, "evidence_sessions"):
            if ctx.session_position(session_id) is None:
                later = session_id in ctx.index.session_position
                problems.append(
                    f"evidence session {show(session_id)} " + ("is a later session" if later else "does not exist")
                )
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        return f"{where}: {shown}"

    def supported(i: int, f: _Features) -> str:
        row = f.rows[i]
        cited = ", ".join(show(t) for t in row_field(row, "evidence")[:5])
        return (
            f"answer {show(row_field(row, 'answer'))} is not in evidence turn(s) {cited}, is not the date of an "
            f"evidence session, and its similarity to them is {f.similarity[i]:.3f} < {support:g}"
        )

    def same_text(i: int, f: _Features) -> str:
        return f"question repeats earlier question {show(f.qa_ids[f.prior_row[i]])} of the same session"

    def near_duplicate(i: int, f: _Features) -> str:
        return (
            f"question is a near-duplicate of earlier question {show(f.qa_ids[f.prior_row[i]])} "
            f"(cosine {f.max_prior_similarity[i]:.3f} >= {dup:g})"
        )

    between = "ExpectColumnValuesToBeBetween"
    in_set = "ExpectColumnValuesToBeInSet"
    return [
        Check(
            "required_fields", "required_fields", "rows", between, {"column": "field_errors", "max_value": 0}, fields
        ),
        Check(
            "required_fields.type",
            "required_fields",
            "rows",
            in_set,
            {"column": "type", "value_set": list(QUESTION_TYPES)},
            type_value,
        ),
        Check(
            "required_fields.qa_id",
            "required_fields",
            "rows",
            "ExpectColumnValuesToBeUnique",
            {"column": "qa_id"},
            unique_id,
        ),
        Check(
            "question_mark",
            "question_mark",
            "rows",
            "ExpectColumnValuesToMatchRegex",
            {"column": "question", "regex": r"\?$"},
            question_mark,
        ),
        Check(
            "answer_short",
            "answer_short",
            "rows",
            between,
            {"column": "word_count", "min_value": 1, "max_value": most},
            answer_short,
        ),
        Check(
            "answer_not_leaked", "answer_not_leaked", "rows", in_set, {"column": "leaked", "value_set": [False]}, leaked
        ),
        Check(
            "evidence_exists",
            "evidence_exists",
            "rows",
            between,
            {"column": "evidence_missing", "max_value": 0},
            evidence,
        ),
        Check(
            "answer_supported",
            "answer_supported",
            "rows",
            between,
            {"column": "similarity", "min_value": support},
            supported,
            condition=("answer_exact", False),
        ),
        Check(
            "not_duplicate.same_text",
            "not_duplicate",
            "rows",
            in_set,
            {"column": "same_as_earlier", "value_set": [False]},
            same_text,
        ),
        Check(
            "not_duplicate.similar",
            "not_duplicate",
            "rows",
            between,
            {"column": "max_prior_similarity", "max_value": dup, "strict_max": True},
            near_duplicate,
        ),
    ]


def _dataset_checks(cfg: SynthQAConfig) -> list[Check]:
    def off_mix(i: int, t: Any) -> str:
        return (
            f"{t['type'][i]} share {t['share'][i]:.3f} vs target {t['target'][i]:.2f} "
            f"({int(t['usable_rows'][i])} usable rows)"
        )

    def uncovered(i: int, t: Any) -> str:
        return f"{clean(t['conversation_id'][i])}/{clean(t['session_id'][i])}: {t['reason'][i]}"

    return [
        Check(
            "type_mix",
            "type_mix",
            "types",
            "ExpectColumnValuesToBeBetween",
            {"column": "share_deviation", "max_value": cfg.mix_tolerance},
            off_mix,
        ),
        Check(
            "session_coverage",
            "session_coverage",
            "sessions",
            "ExpectColumnValuesToBeBetween",
            {"column": "usable_rows", "min_value": 1},
            uncovered,
        ),
    ]


def _rows_frame(f: _Features) -> pd.DataFrame:
    import pandas as pd

    n = len(f.rows)
    field_errors = np.zeros(n, dtype=np.int64)
    for i, problems in f.field_problems.items():
        field_errors[i] = len(problems)
    return pd.DataFrame(
        {
            "qa_id": escaped(f.qa_ids),
            "type": escaped(f.qtype),
            "field_errors": field_errors,
            "question": escaped(f.question),
            "word_count": f.word_count,
            "leaked": pd.array(f.leaked, dtype="boolean"),
            "evidence_missing": f.evidence_missing,
            "answer_exact": f.answer_exact,
            "similarity": f.similarity,
            "same_as_earlier": pd.array(f.same_as_earlier, dtype="boolean"),
            "max_prior_similarity": f.max_prior_similarity,
        }
    )


# ---------------------------------------------------------------------------------------------
# the validator


class QAValidator(SuiteValidator):
    """Validates synthetic QA rows against their dialogues with three great-expectations suites.

    ``embedder`` is any ``Embedder`` (wrap it in an ``EmbeddingCache`` to reuse vectors across calls).
    ``cfg``'s thresholds were checked when it was built (``SynthQAConfig``).
    """

    def __init__(self, cfg: SynthQAConfig, embedder: Embedder) -> None:
        super().__init__("qa", QA_EXPECTATION_NAMES, _TABLES, _row_checks(cfg) + _dataset_checks(cfg))
        self.cfg = cfg
        self.embedder = embedder

    # -- public -----------------------------------------------------------------------------

    def validate(
        self,
        rows: Sequence[QARow],
        sessions: Mapping[tuple[str, str], SessionContext],
        requested: Iterable[tuple[str, str]] | None = None,
    ) -> QAQualityReport:
        """Validate ``rows`` against their sessions; ``requested`` = the sessions that need questions
        (default: every key of ``sessions``)."""
        features = _compute_features(rows, sessions, self.embedder)
        totals = {check.key: CheckTotals() for check in self.checks}
        verdicts, failed_rows = self._row_level(features, totals)
        usable_mask = np.fromiter((v.passed for v in verdicts), dtype=bool, count=len(verdicts))
        total = len(rows)
        usable = int(usable_mask.sum())

        type_counts = Counter(_type_label(t, rows[i]) for i, t in enumerate(features.qtype))
        usable_type_counts = Counter(features.qtype[i] for i in np.flatnonzero(usable_mask))
        types = _type_table(usable_type_counts, usable, target_shares(self.cfg))
        coverage = _coverage_table(rows, verdicts, sessions, requested)
        dataset_failures, dataset_rates = self._dataset_level({"types": types, "sessions": coverage}, totals, usable)

        pass_rates = {name: (1.0 - len(failed_rows[name]) / total if total else 1.0) for name in ROW_EXPECTATIONS}
        pass_rates.update({name: dataset_rates.get(name, 1.0) for name in DATASET_EXPECTATIONS})
        report = QAQualityReport(
            verdicts=verdicts,
            pass_rates=pass_rates,
            failed_counts={name: len(failed_rows[name]) for name in ROW_EXPECTATIONS}
            | {name: int(totals[name].unexpected_count) for name in DATASET_EXPECTATIONS},
            usable=usable,
            total=total,
            type_counts=dict(type_counts),
            usable_type_counts={t: usable_type_counts.get(t, 0) for t in QUESTION_TYPES},
            critical=[],
            critical_expectations=[],
            dataset_failures=dataset_failures,
            validation_result={},
        )
        fraction_message = _usable_fraction_message(report, self.cfg.min_usable_fraction)
        covered_total = max(len(coverage.get("usable_rows", [])), 1)
        uncovered = int(totals["session_coverage"].unexpected_count) / covered_total
        for name in DATASET_EXPECTATIONS:
            tolerated = name == "session_coverage" and uncovered <= self.cfg.max_uncovered_fraction
            if name in dataset_failures and not tolerated:
                report.critical.append(dataset_failures[name])
                report.critical_expectations.append(name)
        if fraction_message:
            report.critical.append(fraction_message)
            report.critical_expectations.append("min_usable_fraction")
        report.validation_result = self._validation_result(report, totals, types, coverage)
        return report

    # -- internals --------------------------------------------------------------------------

    def _row_level(
        self, features: _Features, totals: dict[str, CheckTotals]
    ) -> tuple[list[QAVerdict], dict[str, set[int]]]:
        """Run the rows suite; one verdict per row and the failing rows of each row-level expectation."""
        found: dict[int, list[tuple[int, str, str]]] = {}  # failing row -> (check rank, name, detail)
        failed_rows: dict[str, set[int]] = {name: set() for name in ROW_EXPECTATIONS}
        if features.rows:
            for run in self.run("rows", _rows_frame(features)):
                check, bad = run.check, run.rows.tolist()
                totals[check.key].add(run)
                failed_rows[check.name].update(bad)
                for i in bad:
                    detail = check.describe(i, features)
                    found.setdefault(i, []).append((self.rank(check), check.name, detail))
                    totals[check.key].add_example({"qa_id": clean(features.qa_ids[i]), "detail": clean(detail)})
        verdicts = [QAVerdict(qa_id, index=i) for i, qa_id in enumerate(features.qa_ids)]
        for i, failures in found.items():
            failures.sort(key=lambda item: item[0])
            verdicts[i].failures = [(name, detail) for _, name, detail in failures]
        return verdicts, failed_rows

    def _dataset_level(
        self, tables: dict[str, dict[str, list[Any]]], totals: dict[str, CheckTotals], usable: int
    ) -> tuple[dict[str, str], dict[str, float]]:
        """Run the types and sessions suites; the critical message and the pass rate of each expectation."""
        import pandas as pd

        failures: dict[str, str] = {}
        rates: dict[str, float] = {}
        for table, columns in tables.items():
            if not columns["usable_rows"]:  # nothing requested: nothing to cover
                continue
            frame = pd.DataFrame(
                {k: (escaped(v) if k in ("conversation_id", "session_id") else v) for k, v in columns.items()}
            )
            for run in self.run(table, frame):
                check, bad = run.check, run.rows
                totals[check.key].add(run)
                rates[check.name] = 1.0 - bad.size / run.evaluated if run.evaluated else 1.0
                for i in bad[:MAX_EXAMPLES]:
                    totals[check.key].add_example({"detail": clean(check.describe(int(i), columns))})
                if bad.size:
                    failures[check.name] = self._dataset_message(check, bad, columns, usable)
        return failures, rates

    def _dataset_message(self, check: Check, bad: np.ndarray, columns: dict[str, list[Any]], usable: int) -> str:
        shown = "; ".join(check.describe(int(i), columns) for i in bad[:MAX_NAMED])
        more = f"; ... and {bad.size - MAX_NAMED} more" if bad.size > MAX_NAMED else ""
        if check.name == "type_mix":
            return (
                f"type_mix: over the {usable} usable rows, {bad.size} question type(s) are off the target mix by "
                f"more than mix_tolerance {self.cfg.mix_tolerance:g}: {shown}{more}"
            )
        return (
            f"session_coverage: {bad.size} of {len(columns['usable_rows'])} requested session(s) have no usable "
            f"row: {shown}{more}"
        )

    def _validation_result(
        self,
        report: QAQualityReport,
        totals: dict[str, CheckTotals],
        types: dict[str, list[Any]],
        coverage: dict[str, list[Any]],
    ) -> dict[str, Any]:
        results = [totals[check.key].result(check, _levels(check)) for check in self.checks]
        statistics = suite_statistics(results)
        uncovered = [
            f"{clean(c)}/{clean(s)}"
            for c, s, u in zip(
                coverage["conversation_id"], coverage["session_id"], coverage["usable_rows"], strict=True
            )
            if not u
        ]
        return {
            "success": statistics["unsuccessful_expectations"] == 0 and not report.critical,
            "engine": gx_engine(),
            "suites": list(self.suite_names),
            "statistics": statistics,
            "rows": {
                "total": report.total,
                "usable": report.usable,
                "quarantined": report.total - report.usable,
                "usable_fraction": report.usable_fraction(),
                "min_usable_fraction": self.cfg.min_usable_fraction,
            },
            "type_mix": [
                {
                    "type": types["type"][i],
                    "usable_rows": int(types["usable_rows"][i]),
                    "share": float(types["share"][i]),
                    "target": float(types["target"][i]),
                    "deviation": float(types["share_deviation"][i]),
                }
                for i in range(len(types["type"]))
            ],
            "session_coverage": {
                "requested": len(coverage["usable_rows"]),
                "covered": len(coverage["usable_rows"]) - len(uncovered),
                "uncovered_examples": uncovered[:MAX_EXAMPLES],
            },
            "critical": [clean(message) for message in report.critical],
            "results": results,
        }


def _levels(check: Check) -> dict[str, str]:
    """A check's level and what its failure does, as the validation result labels them."""
    row_level = check.name in ROW_EXPECTATIONS
    return {"level": "row" if row_level else "dataset", "on_failure": "quarantine" if row_level else "critical"}


def _type_table(usable_type_counts: Counter[Any], usable: int, targets: dict[str, float]) -> dict[str, list[Any]]:
    """One entry per question type: usable rows, share of the usable rows, target and deviation."""
    counts = [usable_type_counts.get(t, 0) for t in QUESTION_TYPES]
    shares = [count / usable if usable else 0.0 for count in counts]
    return {
        "type": list(QUESTION_TYPES),
        "usable_rows": counts,
        "share": shares,
        "target": [targets[t] for t in QUESTION_TYPES],
        # rounded so that a share exactly at the tolerance is not failed by float noise
        "share_deviation": [round(abs(share - targets[t]), 9) for share, t in zip(shares, QUESTION_TYPES, strict=True)],
    }


def _coverage_table(
    rows: Sequence[Any],
    verdicts: list[QAVerdict],
    sessions: Mapping[tuple[str, str], SessionContext],
    requested: Iterable[tuple[str, str]] | None,
) -> dict[str, list[Any]]:
    """One entry per requested session: rows, usable rows and, when none is usable, why."""
    keys = list(dict.fromkeys(sessions if requested is None else requested))
    row_count: Counter[tuple[str, str]] = Counter()
    usable_count: Counter[tuple[str, str]] = Counter()
    reasons: dict[tuple[str, str], Counter[str]] = {}
    for row, verdict in zip(rows, verdicts, strict=True):
        key = (row_field(row, "conversation_id"), row_field(row, "session_id"))
        if not isinstance(key[0], str) or not isinstance(key[1], str):
            continue
        row_count[key] += 1
        if verdict.passed:
            usable_count[key] += 1
        else:
            reasons.setdefault(key, Counter()).update(verdict.failed_expectations())
    columns: dict[str, list[Any]] = {
        "conversation_id": [],
        "session_id": [],
        "rows": [],
        "usable_rows": [],
        "reason": [],
    }
    for key in keys:
        columns["conversation_id"].append(key[0])
        columns["session_id"].append(key[1])
        columns["rows"].append(row_count.get(key, 0))
        columns["usable_rows"].append(usable_count.get(key, 0))
        if usable_count.get(key):
            columns["reason"].append("")
        elif not row_count.get(key):
            columns["reason"].append("no questions were generated")
        else:
            top = ", ".join(f"{name} x{count}" for name, count in reasons[key].most_common(3))
            columns["reason"].append(f"all {row_count[key]} row(s) quarantined ({top})")
    return columns


def _type_label(value: str | None, row: Any) -> str:
    if value is not None:
        return value
    raw = row_field(row, "type")
    return "<missing>" if raw is None else f"<{type(raw).__name__}>"
