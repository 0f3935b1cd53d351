"""Ingestion: dialogue sources -> validated, split JSON Lines.

Streams every source through the great-expectations suite in batches. Conversations that fail a critical
expectation stop ingestion with a summary naming file and record; those that fail only non-critical ones go to
``quarantine.jsonl`` with their reasons. Everything is written into a staging folder that replaces the output
folder only when ingestion succeeds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from components.config import IngestConfig
from components.dialogue.loaders import LoadedConversation, iter_source
from components.dialogue.schema import conversation_to_dict
from components.dialogue.splits import SPLIT_NAMES, assign_splits
from components.errors import InputError, QualityGateError
from components.io import atomic_directory, dumps_jsonl_record
from components.progress import progress
from components.quality.dialogue import DialogueValidator, RecordRef, format_critical_summary, is_critical

VALIDATED_POOL = ".validated.jsonl"


@dataclass(frozen=True)
class IngestResult:
    """What the stage wrote and measured."""

    conversations_read: int
    conversations_kept: int
    conversations_quarantined: int
    sessions: int
    sessions_dropped_empty: int
    turns: int
    questions: int
    split_counts: dict[str, int]
    seconds: float
    pass_rates: dict[str, float]

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics, the same for the same inputs (the DVC metrics file)."""
        out: dict[str, float] = {
            "conversations_read": self.conversations_read,
            "conversations_kept": self.conversations_kept,
            "conversations_quarantined": self.conversations_quarantined,
            "quarantine_fraction": self.conversations_quarantined / max(self.conversations_read, 1),
            "sessions": self.sessions,
            "sessions_dropped_empty": self.sessions_dropped_empty,
            "turns": self.turns,
            "questions": self.questions,
        }
        out.update({f"split_{name}": count for name, count in self.split_counts.items()})
        out.update({f"pass_rate_{name}": rate for name, rate in self.pass_rates.items()})
        return out

    def timings(self) -> dict[str, float]:
        """Wall-clock measurements (MLflow only: they change on every run)."""
        return {
            "seconds": round(self.seconds, 3),
            "sessions_per_second": round(self.sessions / max(self.seconds, 1e-9), 1),
        }


def iter_conversations(cfg: IngestConfig) -> Iterator[LoadedConversation]:
    """Every configured source in order, as one stream."""
    for source in cfg.sources:
        if source.format == "synthetic":
            from components.dialogue.synthetic import generate_conversation

            label = f"synthetic:seed={cfg.synthetic.seed}"
            for index in range(cfg.synthetic.num_conversations):
                yield LoadedConversation(label, f"conversation {index}", generate_conversation(index, cfg.synthetic))
        else:
            yield from iter_source(source.format, source.path, source.drop_empty_sessions)


def _batches(items: Iterable[LoadedConversation], size: int) -> Iterator[list[LoadedConversation]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


QUARANTINE_TEXT_CHARS = 500  # a quarantined turn keeps this prefix and its size, never a 50 MB text in full


def bounded_text(text: str, limit: int = QUARANTINE_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the cut said with the original size."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text):,} characters]"


def _quarantine_record(item: LoadedConversation, failures: list[tuple[str, str]]) -> dict[str, Any]:
    """Why a conversation was quarantined, where it came from, and the conversation with every turn bounded."""
    conversation = conversation_to_dict(item.conversation)
    for session in conversation["sessions"]:
        for turn in session["turns"]:
            turn["text"] = bounded_text(turn["text"])
    return {
        "conversation_id": item.conversation.conversation_id,
        "source_file": item.source_file,
        "record": item.record,
        "reasons": [{"expectation": name, "detail": bounded_text(detail)} for name, detail in failures],
        "conversation": conversation,
    }


def ingest(cfg: IngestConfig) -> tuple[IngestResult, dict[str, Any]]:
    """Run the stage; returns the result and the great-expectations validation result.

    Raises ``InputError`` for unreadable sources and ``QualityGateError`` (with the validation result
    attached as ``.validation_result``) when a critical expectation fails or too much is quarantined.
    """
    started = time.perf_counter()
    validator = DialogueValidator(cfg.quality)
    kept_ids: list[str] = []
    critical_verdicts = []
    counts = {"read": 0, "quarantined": 0, "sessions": 0, "turns": 0, "questions": 0, "dropped_sessions": 0}
    reasons: Counter[str] = Counter()  # quarantined conversations per failed expectation
    with atomic_directory(cfg.output_dir) as staging:
        pool_path = staging / VALIDATED_POOL
        with (
            pool_path.open("w", encoding="utf-8") as pool,
            (staging / "quarantine.jsonl").open("w", encoding="utf-8") as quarantine,
            progress("ingest", unit="conversations") as bar,
        ):
            for batch in _batches(iter_conversations(cfg), cfg.quality.batch_conversations):
                refs = [(RecordRef(item.source_file, item.record), item.conversation) for item in batch]
                for item, verdict in zip(batch, validator.validate_batch(refs), strict=True):
                    counts["read"] += 1
                    conversation = item.conversation
                    counts["dropped_sessions"] += len(conversation.metadata.get("dropped_empty_sessions", ()))
                    if not verdict.failures:
                        pool.write(dumps_jsonl_record(conversation_to_dict(conversation)))
                        kept_ids.append(conversation.conversation_id)
                        counts["sessions"] += len(conversation.sessions)
                        counts["turns"] += conversation.num_turns
                        counts["questions"] += len(conversation.questions)
                    elif is_critical(verdict, cfg.quality):
                        critical_verdicts.append(verdict)
                    else:
                        counts["quarantined"] += 1
                        reasons.update(name for name, _ in verdict.failures)
                        quarantine.write(dumps_jsonl_record(_quarantine_record(item, verdict.failures)))
                bar.advance(len(batch))
        summary = validator.summary()
        _enforce_gates(cfg, counts, critical_verdicts, summary, reasons)
        split_counts = _write_splits(staging, pool_path, kept_ids, cfg)
    result = IngestResult(
        conversations_read=counts["read"],
        conversations_kept=len(kept_ids),
        conversations_quarantined=counts["quarantined"],
        sessions=counts["sessions"],
        sessions_dropped_empty=counts["dropped_sessions"],
        turns=counts["turns"],
        questions=counts["questions"],
        split_counts=split_counts,
        seconds=time.perf_counter() - started,
        pass_rates=summary.pass_rates(),
    )
    return result, summary.validation_result


def _enforce_gates(
    cfg: IngestConfig, counts: dict[str, int], critical: list[Any], summary: Any, reasons: Counter[str]
) -> None:
    if counts["read"] == 0:
        sources = ", ".join(f"{s.format}:{s.path}" for s in cfg.sources)
        raise InputError(sources or "ingest.sources", "no conversations were read from the configured sources")
    if critical:
        error = QualityGateError(format_critical_summary(critical))
        error.validation_result = summary.validation_result  # type: ignore[attr-defined]
        raise error
    fraction = counts["quarantined"] / counts["read"]
    if fraction > cfg.quality.max_quarantine_fraction:
        error = QualityGateError(
            f"{counts['quarantined']} of {counts['read']} conversations ({fraction:.0%}) were quarantined, more than "
            f"ingest.quality.max_quarantine_fraction={cfg.quality.max_quarantine_fraction}; failed expectations: "
            + ", ".join(f"{name} ({n})" for name, n in reasons.most_common())
            + f". Nothing was written to {cfg.output_dir}; the failed MLflow run's artifact "
            "ingest/ingest_validation.json lists every failing record"
        )
        error.validation_result = summary.validation_result  # type: ignore[attr-defined]
        raise error


def _write_splits(staging: Path, pool_path: Path, kept_ids: list[str], cfg: IngestConfig) -> dict[str, int]:
    """Second streaming pass: deal the validated pool into split files; record the assignment."""
    assignment = assign_splits(kept_ids, cfg.splits)
    handles = {name: (staging / f"{name}.jsonl").open("w", encoding="utf-8") for name in SPLIT_NAMES}
    split_counts = dict.fromkeys(SPLIT_NAMES, 0)
    try:
        with pool_path.open("r", encoding="utf-8") as pool:
            for line, conversation_id in zip(pool, kept_ids, strict=True):
                split = assignment[conversation_id]
                handles[split].write(line)
                split_counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    pool_path.unlink()
    manifest = {
        "seed": cfg.splits.seed,
        "fractions": {"sft": cfg.splits.sft, "rl": cfg.splits.rl, "eval": cfg.splits.eval},
        "counts": split_counts,
        "assignment": dict(sorted(assignment.items())),
    }
    (staging / "splits.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return split_counts
