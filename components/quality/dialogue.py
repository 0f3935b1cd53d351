"""The great-expectations suite over normalised dialogues, run in streaming batches.

Each batch of conversations is flattened into long pandas tables, one row per conversation, session,
turn, question and evidence reference; every row carries ``item`` (the conversation's position in the
batch) and the positions needed to find its object again. Relational facts that one column cannot
express (is this speaker one of *this* conversation's speakers, was this id seen in an earlier batch,
how far did the clock move since the previous session) become derived columns computed with pandas;
great-expectations 1.x expectations assert on the columns, and their unexpected index lists are mapped
back to conversations and to the file and record each came from.

The GX context, pandas data source, assets and suites are created once per ``DialogueValidator`` and
reused for every batch. Raw text never enters a GX table: pandas 3 stores strings in Arrow, which
cannot hold lone surrogates, so text is represented by derived columns (stripped length, count of
lone surrogates) and ids are stored escaped when they are not valid Unicode.

The expectation names are ``config.DialogueExpectation`` (so ``QualityConfig.critical`` is checked when the
config loads). A conversation that fails an expectation named in ``QualityConfig.critical`` is *critical* (the
stage stops, naming the records); one that fails only other expectations is *quarantined*.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from itertools import islice
from typing import TYPE_CHECKING, Any, get_args

from components.config import DialogueExpectation, QualityConfig
from components.dialogue.schema import Conversation, Question, Session, Turn, parse_timestamp
from components.quality.core import (
    Check,
    CheckTotals,
    SuiteValidator,
    Verdict,
    clean,
    gx_engine,
    safe,
    show,
    suite_statistics,
)

if TYPE_CHECKING:
    import pandas as pd

#: The suite's expectations, in suite order.
EXPECTATION_NAMES: tuple[str, ...] = get_args(DialogueExpectation)

#: Failing rows described per conversation and GX expectation; the rest are counted in one line.
MAX_DETAILS_PER_CHECK = 10

_SURROGATE = re.compile("[\ud800-\udfff]")
_TABLES = ("conversations", "sessions", "turns", "questions", "evidence")


# ---------------------------------------------------------------------------------------------
# public results


@dataclass(frozen=True)
class RecordRef:
    """Where a conversation came from: the source file and the record within it (``line 12``)."""

    source_file: str
    record: str

    def __str__(self) -> str:
        return f"{clean(self.source_file)} [{clean(self.record)}]"


@dataclass
class ConversationVerdict(Verdict):
    """The outcome for one conversation, and where it was read."""

    conversation_id: str
    ref: RecordRef


@dataclass
class ExpectationStats:
    """Rows checked and rows failing one memforge expectation, summed over every table it covers.

    A row fails when any GX expectation implementing the name flags it; for example ``unique_ids``
    counts conversation, session, turn and question rows, ``turn_length`` counts turns.
    A pass rate with nothing evaluated is 1.0.
    """

    evaluated: int = 0
    failed: int = 0

    @property
    def pass_rate(self) -> float:
        return 1.0 if self.evaluated == 0 else (self.evaluated - self.failed) / self.evaluated


@dataclass
class QualitySummary:
    """Counts accumulated over every batch validated so far."""

    expectations: dict[str, ExpectationStats]
    conversations_total: int
    conversations_passed: int
    conversations_quarantined: int
    conversations_critical: int
    validation_result: dict[str, Any]

    def pass_rates(self) -> dict[str, float]:
        return {name: stats.pass_rate for name, stats in self.expectations.items()}

    @property
    def quarantine_fraction(self) -> float:
        return self.conversations_quarantined / self.conversations_total if self.conversations_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready report."""
        return {
            "conversations": {
                "total": self.conversations_total,
                "passed": self.conversations_passed,
                "quarantined": self.conversations_quarantined,
                "critical": self.conversations_critical,
            },
            "expectations": {
                name: {"evaluated": s.evaluated, "failed": s.failed, "pass_rate": s.pass_rate}
                for name, s in self.expectations.items()
            },
            "validation_result": self.validation_result,
        }


def is_critical(verdict: ConversationVerdict, config: QualityConfig) -> bool:
    """True when the conversation failed an expectation listed in ``config.critical``."""
    critical = set(config.critical)
    return any(name in critical for name, _ in verdict.failures)


def format_critical_summary(
    verdicts: Iterable[ConversationVerdict], config: QualityConfig | None = None, limit: int = 20
) -> str:
    """A multi-line message naming file, record and conversation of each failing verdict.

    With ``config``, only critical verdicts are listed and only their critical failures are shown;
    without it, every failing verdict and failure is. At most ``limit`` records are listed.
    """
    critical = None if config is None else set(config.critical)
    failing = [v for v in verdicts if v.failures and (config is None or is_critical(v, config))]
    if not failing:
        return "no conversation failed a critical quality expectation"
    names = sorted(
        {name for v in failing for name, _ in v.failures if critical is None or name in critical},
        key=EXPECTATION_NAMES.index,
    )
    files = sorted({clean(v.ref.source_file) for v in failing})
    lines = [
        f"{len(failing)} conversation(s) failed critical data-quality expectation(s) {', '.join(names)} "
        f"in {', '.join(files[:5])}{f' and {len(files) - 5} more file(s)' if len(files) > 5 else ''}:"
    ]
    for verdict in failing[:limit]:
        shown = [(n, d) for n, d in verdict.failures if critical is None or n in critical]
        lines.append(f"  {verdict.ref} conversation {show(verdict.conversation_id)}:")
        lines.extend(f"    - {name}: {detail}" for name, detail in shown[:5])
        if len(shown) > 5:
            lines.append(f"    - ... and {len(shown) - 5} more failure(s)")
    if len(failing) > limit:
        lines.append(f"  ... and {len(failing) - limit} more record(s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# string helpers


def _lone_surrogates(values: list[str]) -> list[int] | None:
    """Per value, the number of lone surrogates; ``None`` when there are none at all (the usual case)."""
    try:
        "".join(values).encode("utf-8")
        return None
    except UnicodeEncodeError:
        return [len(_SURROGATE.findall(v)) for v in values]


def _surrogate_counts(size: int, *columns: list[str]) -> Any:
    """Per row, the lone surrogates summed over ``columns`` (an int64 array of ``size``)."""
    import numpy as np

    total = np.zeros(size, dtype=np.int64)
    for column in columns:
        counts = _lone_surrogates(column)
        if counts is not None:
            total += np.asarray(counts, dtype=np.int64)
    return total


def _epoch(timestamp: str) -> float:
    """Seconds since the epoch (naive timestamps read as UTC); NaN when it does not parse as ISO 8601."""
    parsed = parse_timestamp(timestamp)
    if parsed is None:
        return math.nan
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        return math.nan


def _surrogate_fields(fields: Iterable[tuple[str, str]]) -> str:
    parts = []
    for label, value in fields:
        found = _SURROGATE.findall(value)
        if found:
            codes = ", ".join(f"U+{ord(c):04X}" for c in found[:3]) + (", ..." if len(found) > 3 else "")
            parts.append(f"{label} has {len(found)} lone surrogate(s) ({codes})")
    return "; ".join(parts) + " - not encodable as UTF-8"


# ---------------------------------------------------------------------------------------------
# per-batch tables


def _build_tables(conversations: list[Conversation], seen: set[str]) -> dict[str, pd.DataFrame]:
    """Long-format tables for one batch; every row carries ``item`` (position in the batch)."""
    import numpy as np
    import pandas as pd

    c_ids: list[str] = []
    c_blobs: list[str] = []
    sp_item: list[int] = []
    sp_name: list[str] = []
    s_item: list[int] = []
    s_pos: list[int] = []
    s_id: list[str] = []
    s_turns: list[int] = []
    s_epoch: list[float] = []
    s_blobs: list[str] = []
    t_item: list[int] = []
    t_session: list[int] = []
    t_pos: list[int] = []
    t_id: list[str] = []
    t_speaker: list[str] = []
    t_text: list[str] = []
    q_item: list[int] = []
    q_pos: list[int] = []
    q_id: list[str] = []
    q_blobs: list[str] = []
    e_item: list[int] = []
    e_question: list[int] = []
    e_pos: list[int] = []
    e_id: list[str] = []

    for item, conv in enumerate(conversations):
        c_ids.append(conv.conversation_id)
        c_blobs.append("\x00".join((conv.conversation_id, *conv.speakers)))
        sp_item.extend([item] * len(conv.speakers))
        sp_name.extend(conv.speakers)
        for s, session in enumerate(conv.sessions):
            turns = session.turns
            s_item.append(item)
            s_pos.append(s)
            s_id.append(session.session_id)
            s_turns.append(len(turns))
            s_epoch.append(_epoch(session.timestamp))
            s_blobs.append(session.session_id + "\x00" + session.timestamp)
            n = len(turns)
            t_item.extend([item] * n)
            t_session.extend([s] * n)
            t_pos.extend(range(n))
            for turn in turns:
                t_id.append(turn.turn_id)
                t_speaker.append(turn.speaker)
                t_text.append(turn.text)
        for q, question in enumerate(conv.questions):
            q_item.append(item)
            q_pos.append(q)
            q_id.append(question.question_id)
            q_blobs.append(
                "\x00".join(
                    (
                        question.question_id,
                        question.question,
                        question.category,
                        question.date or "",
                        *question.answers,
                        *question.evidence,
                    )
                )
            )
            k = len(question.evidence)
            e_item.extend([item] * k)
            e_question.extend([q] * k)
            e_pos.extend(range(k))
            e_id.extend(question.evidence)

    i32 = np.int32
    conversations_df = pd.DataFrame(
        {
            "item": np.arange(len(conversations), dtype=i32),
            "conversation_id": safe(c_ids),
            "seen_earlier": np.fromiter((cid in seen for cid in c_ids), dtype=bool, count=len(c_ids)),
            "bad_chars": _surrogate_counts(len(c_ids), c_blobs),
        }
    )

    sessions_df = pd.DataFrame(
        {
            "item": np.asarray(s_item, dtype=i32),
            "session": np.asarray(s_pos, dtype=i32),
            "session_id": safe(s_id),
            "num_turns": np.asarray(s_turns, dtype=np.int64),
            "timestamp_epoch": np.asarray(s_epoch, dtype=np.float64),
            "bad_chars": _surrogate_counts(len(s_id), s_blobs),
        }
    )
    # Seconds since the latest earlier session of the same conversation whose timestamp parsed.
    epoch = sessions_df["timestamp_epoch"]
    previous = epoch.groupby(sessions_df["item"]).ffill().groupby(sessions_df["item"]).shift(1)
    sessions_df["gap_seconds"] = epoch - previous

    t_item_arr = np.asarray(t_item, dtype=i32)
    t_speaker_safe = safe(t_speaker)
    known_speakers = pd.MultiIndex.from_arrays([np.asarray(sp_item, dtype=i32), safe(sp_name)])
    turns_df = pd.DataFrame(
        {
            "item": t_item_arr,
            "session": np.asarray(t_session, dtype=i32),
            "turn": np.asarray(t_pos, dtype=i32),
            "turn_id": safe(t_id),
            "speaker_known": pd.MultiIndex.from_arrays([t_item_arr, t_speaker_safe]).isin(known_speakers),
            "text_chars": np.fromiter((len(text.strip()) for text in t_text), dtype=np.int64, count=len(t_text)),
            "bad_chars": _surrogate_counts(len(t_id), t_id, t_speaker, t_text),
        }
    )

    questions_df = pd.DataFrame(
        {
            "item": np.asarray(q_item, dtype=i32),
            "question": np.asarray(q_pos, dtype=i32),
            "question_id": safe(q_id),
            "bad_chars": _surrogate_counts(len(q_id), q_blobs),
        }
    )

    e_item_arr = np.asarray(e_item, dtype=i32)
    turn_keys = pd.MultiIndex.from_arrays([t_item_arr, turns_df["turn_id"]])
    evidence_df = pd.DataFrame(
        {
            "item": e_item_arr,
            "question": np.asarray(e_question, dtype=i32),
            "evidence": np.asarray(e_pos, dtype=i32),
            "evidence_found": pd.MultiIndex.from_arrays([e_item_arr, safe(e_id)]).isin(turn_keys),
        }
    )
    return {
        "conversations": conversations_df,
        "sessions": sessions_df,
        "turns": turns_df,
        "questions": questions_df,
        "evidence": evidence_df,
    }


# ---------------------------------------------------------------------------------------------
# the checks: one GX expectation each; ``describe(conversation, row)`` turns a failing row into a message

_Row = dict[str, Any]  # one table row: positions (item, session, turn, question, evidence) and derived values
_BETWEEN = "ExpectColumnValuesToBeBetween"


def _session(conv: Conversation, row: _Row) -> Session:
    return conv.sessions[row["session"]]


def _session_id(conv: Conversation, row: _Row) -> str:
    return show(_session(conv, row).session_id)


def _turn(conv: Conversation, row: _Row) -> Turn:
    return _session(conv, row).turns[row["turn"]]


def _turn_label(conv: Conversation, row: _Row) -> str:
    return f"turn {show(_turn(conv, row).turn_id)} (session {_session_id(conv, row)})"


def _question(conv: Conversation, row: _Row) -> Question:
    return conv.questions[row["question"]]


def _previous_timestamp(conv: Conversation, index: int) -> str:
    for session in reversed(conv.sessions[:index]):
        if parse_timestamp(session.timestamp) is not None:
            return show(session.timestamp)
    return "?"


def _checks(config: QualityConfig) -> list[Check]:
    """The GX expectations of the suite, in ``EXPECTATION_NAMES`` order, with their describers."""
    lo, hi, most = config.min_turn_chars, config.max_turn_chars, config.max_turns_per_session

    def dup_conversation(c: Conversation, r: _Row) -> str:
        return f"conversation_id {show(c.conversation_id)} occurs more than once in this batch"

    def seen_conversation(c: Conversation, r: _Row) -> str:
        return f"conversation_id {show(c.conversation_id)} already appeared in an earlier batch"

    def dup_session(c: Conversation, r: _Row) -> str:
        return f"session_id {_session_id(c, r)} (session #{r['session']}) is not unique in the conversation"

    def dup_turn(c: Conversation, r: _Row) -> str:
        return f"turn_id {show(_turn(c, r).turn_id)} (session {_session_id(c, r)}) is not unique in the conversation"

    def dup_question(c: Conversation, r: _Row) -> str:
        question_id = show(_question(c, r).question_id)
        return f"question_id {question_id} (question #{r['question']}) is not unique in the conversation"

    def empty_session(c: Conversation, r: _Row) -> str:
        return f"session {_session_id(c, r)} (session #{r['session']}) has no turns"

    def bad_timestamp(c: Conversation, r: _Row) -> str:
        return f"session {_session_id(c, r)} timestamp {show(_session(c, r).timestamp)} is not ISO 8601"

    def backwards(c: Conversation, r: _Row) -> str:
        return (
            f"session {_session_id(c, r)} timestamp {show(_session(c, r).timestamp)} is {-r['gap_seconds']:g} s "
            f"before the previous session's {_previous_timestamp(c, r['session'])}"
        )

    def unknown_speaker(c: Conversation, r: _Row) -> str:
        return (
            f"{_turn_label(c, r)} speaker {show(_turn(c, r).speaker)} is not one of the conversation's "
            f"speakers {show(', '.join(c.speakers))}"
        )

    def missing_evidence(c: Conversation, r: _Row) -> str:
        evidence = _question(c, r).evidence[r["evidence"]]
        return (
            f"question {show(_question(c, r).question_id)} cites evidence {show(evidence)}, "
            "which is not a turn id of this conversation"
        )

    def turn_length(c: Conversation, r: _Row) -> str:
        return f"{_turn_label(c, r)} text has {r['text_chars']} characters after stripping (allowed {lo}..{hi})"

    def long_session(c: Conversation, r: _Row) -> str:
        return f"session {_session_id(c, r)} has {r['num_turns']} turns (at most {most} allowed)"

    def utf8_conversation(c: Conversation, r: _Row) -> str:
        speakers = [(f"speakers[{i}]", s) for i, s in enumerate(c.speakers)]
        return "conversation: " + _surrogate_fields([("conversation_id", c.conversation_id), *speakers])

    def utf8_session(c: Conversation, r: _Row) -> str:
        session = _session(c, r)
        fields = [("session_id", session.session_id), ("timestamp", session.timestamp)]
        return f"session {_session_id(c, r)} (session #{r['session']}): " + _surrogate_fields(fields)

    def utf8_turn(c: Conversation, r: _Row) -> str:
        turn = _turn(c, r)
        fields = [("turn_id", turn.turn_id), ("speaker", turn.speaker), ("text", turn.text)]
        return f"{_turn_label(c, r)}: " + _surrogate_fields(fields)

    def utf8_question(c: Conversation, r: _Row) -> str:
        q = _question(c, r)
        fields = [("question_id", q.question_id), ("question", q.question), ("category", q.category)]
        fields += [("date", q.date or "")]
        fields += [(f"answers[{i}]", a) for i, a in enumerate(q.answers)]
        fields += [(f"evidence[{i}]", e) for i, e in enumerate(q.evidence)]
        return f"question {show(q.question_id)} (question #{r['question']}): " + _surrogate_fields(fields)

    no_bad_chars = {"column": "bad_chars", "min_value": 0, "max_value": 0}
    return [
        Check(
            "unique_ids.conversation_in_batch",
            "unique_ids",
            "conversations",
            "ExpectColumnValuesToBeUnique",
            {"column": "conversation_id"},
            dup_conversation,
        ),
        Check(
            "unique_ids.conversation_in_stream",
            "unique_ids",
            "conversations",
            "ExpectColumnValuesToBeInSet",
            {"column": "seen_earlier", "value_set": [False]},
            seen_conversation,
        ),
        Check(
            "unique_ids.session",
            "unique_ids",
            "sessions",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["item", "session_id"]},
            dup_session,
        ),
        Check(
            "unique_ids.turn",
            "unique_ids",
            "turns",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["item", "turn_id"]},
            dup_turn,
        ),
        Check(
            "unique_ids.question",
            "unique_ids",
            "questions",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["item", "question_id"]},
            dup_question,
        ),
        Check(
            "session_has_turns",
            "session_has_turns",
            "sessions",
            "ExpectColumnValuesToBeBetween",
            {"column": "num_turns", "min_value": 1},
            empty_session,
        ),
        Check(
            "timestamp_parses",
            "timestamp_parses",
            "sessions",
            "ExpectColumnValuesToNotBeNull",
            {"column": "timestamp_epoch"},
            bad_timestamp,
        ),
        Check(
            "timestamps_monotonic",
            "timestamps_monotonic",
            "sessions",
            "ExpectColumnValuesToBeBetween",
            {"column": "gap_seconds", "min_value": 0},
            backwards,
        ),
        Check(
            "speaker_known",
            "speaker_known",
            "turns",
            "ExpectColumnValuesToBeInSet",
            {"column": "speaker_known", "value_set": [True]},
            unknown_speaker,
        ),
        Check(
            "evidence_exists",
            "evidence_exists",
            "evidence",
            "ExpectColumnValuesToBeInSet",
            {"column": "evidence_found", "value_set": [True]},
            missing_evidence,
        ),
        Check(
            "turn_length",
            "turn_length",
            "turns",
            "ExpectColumnValuesToBeBetween",
            {"column": "text_chars", "min_value": lo, "max_value": hi},
            turn_length,
        ),
        Check(
            "session_length",
            "session_length",
            "sessions",
            "ExpectColumnValuesToBeBetween",
            {"column": "num_turns", "max_value": most},
            long_session,
        ),
        Check("valid_utf8.conversation", "valid_utf8", "conversations", _BETWEEN, no_bad_chars, utf8_conversation),
        Check("valid_utf8.session", "valid_utf8", "sessions", _BETWEEN, no_bad_chars, utf8_session),
        Check("valid_utf8.turn", "valid_utf8", "turns", _BETWEEN, no_bad_chars, utf8_turn),
        Check("valid_utf8.question", "valid_utf8", "questions", _BETWEEN, no_bad_chars, utf8_question),
    ]


# ---------------------------------------------------------------------------------------------
# the validator


class DialogueValidator(SuiteValidator):
    """Validates conversations batch by batch with one great-expectations suite per table.

    The GX context, data source, assets and suites are built once here; ``validate_batch`` only builds
    the batch's tables and runs the suites. Conversation ids are remembered across batches, so a
    conversation id repeated anywhere in the stream is caught (within a batch every copy fails; across
    batches the later copy fails).
    """

    def __init__(self, config: QualityConfig) -> None:
        super().__init__("dialogue", EXPECTATION_NAMES, _TABLES, _checks(config))
        self.config = config
        self._seen: set[str] = set()
        self._stats = {name: ExpectationStats() for name in EXPECTATION_NAMES}
        self._totals = {check.key: CheckTotals() for check in self.checks}
        self._batches = 0
        self._counts = {"total": 0, "passed": 0, "quarantined": 0, "critical": 0}

    # -- public -----------------------------------------------------------------------------

    def validate_batch(self, items: Sequence[tuple[RecordRef, Conversation]]) -> list[ConversationVerdict]:
        """Validate one batch; returns one verdict per item, in order."""
        import numpy as np

        if not items:
            return []
        conversations = [conv for _, conv in items]
        tables = _build_tables(conversations, self._seen)
        found: list[list[tuple[int, int, str, str]]] = [[] for _ in items]  # (check rank, row, name, detail)
        for table, frame in tables.items():
            if frame.empty:
                continue
            failed_rows: dict[str, Any] = {}
            for run in self.run(table, frame):
                check, rows = run.check, run.rows
                totals = self._totals[check.key]
                totals.add(run)
                if rows.size:
                    previous = failed_rows.get(check.name)
                    failed_rows[check.name] = rows if previous is None else np.union1d(previous, rows)
                    self._describe(check, frame, rows, items, found, totals)
            for name in {check.name for check in self.checks if check.table == table}:
                self._stats[name].evaluated += len(frame)
                self._stats[name].failed += int(failed_rows[name].size) if name in failed_rows else 0
        self._seen.update(conv.conversation_id for conv in conversations)
        self._batches += 1

        verdicts = []
        critical = set(self.config.critical)
        for (ref, conv), failures in zip(items, found, strict=True):
            failures.sort(key=lambda f: (f[0], f[1]))
            verdict = ConversationVerdict(
                conv.conversation_id, ref, failures=[(name, detail) for _, _, name, detail in failures]
            )
            verdicts.append(verdict)
            self._counts["total"] += 1
            if verdict.passed:
                self._counts["passed"] += 1
            elif any(name in critical for name, _ in verdict.failures):
                self._counts["critical"] += 1
            else:
                self._counts["quarantined"] += 1
        return verdicts

    def validate_stream(self, items: Iterable[tuple[RecordRef, Conversation]]) -> Iterator[ConversationVerdict]:
        """Validate a stream in batches of ``config.batch_conversations``; yields verdicts in order."""
        iterator = iter(items)
        while batch := list(islice(iterator, max(1, self.config.batch_conversations))):
            yield from self.validate_batch(batch)

    def summary(self) -> QualitySummary:
        """Counts and the aggregated GX validation result over every batch so far."""
        return QualitySummary(
            expectations={name: ExpectationStats(s.evaluated, s.failed) for name, s in self._stats.items()},
            conversations_total=self._counts["total"],
            conversations_passed=self._counts["passed"],
            conversations_quarantined=self._counts["quarantined"],
            conversations_critical=self._counts["critical"],
            validation_result=self._validation_result(),
        )

    # -- internals --------------------------------------------------------------------------

    def _describe(
        self,
        check: Check,
        frame: pd.DataFrame,
        rows: Any,
        items: Sequence[tuple[RecordRef, Conversation]],
        found: list[list[tuple[int, int, str, str]]],
        totals: CheckTotals,
    ) -> None:
        """Messages for the first few failing rows of each conversation; a count line for the rest."""
        import numpy as np
        import pandas as pd

        row_items = frame["item"].to_numpy()[rows]
        shown = pd.Series(rows).groupby(row_items).head(MAX_DETAILS_PER_CHECK).to_numpy()
        records = frame.loc[shown].to_dict("index")
        rank = self.rank(check)
        for row in shown:
            record = records[row]
            item = int(record["item"])
            ref, conv = items[item]
            detail = check.describe(conv, record)
            found[item].append((rank, int(row), check.name, detail))
            totals.add_example(
                {
                    "source_file": clean(ref.source_file),
                    "record": clean(ref.record),
                    "conversation_id": clean(conv.conversation_id),
                    "detail": clean(detail),
                }
            )
        per_item = np.bincount(row_items, minlength=len(items))
        for item in np.flatnonzero(per_item > MAX_DETAILS_PER_CHECK):
            more = int(per_item[item]) - MAX_DETAILS_PER_CHECK
            found[item].append((rank, 1 << 62, check.name, f"... and {more} more row(s) failing {check.key}"))

    def _validation_result(self) -> dict[str, Any]:
        results = [
            self._totals[check.key].result(check, {"critical": check.name in self.config.critical}, with_batches=True)
            for check in self.checks
        ]
        statistics = suite_statistics(results)
        return {
            "success": statistics["unsuccessful_expectations"] == 0,
            "engine": gx_engine(),
            "suites": list(self.suite_names),
            "batches": self._batches,
            "statistics": statistics,
            "conversations": dict(self._counts),
            "results": results,
        }
