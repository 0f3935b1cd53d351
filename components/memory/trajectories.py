"""Expert trajectories: for every session of the training splits, the memory before it, the four agent prompts
and the teacher's four outputs (``data/trajectories/{split}.jsonl`` plus ``summary.json``).

Outputs that fail the strict parser (or name entries that do not exist) are counted and dropped, not written, and
they leave the teacher's memory unchanged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Params
from components.dialogue.loaders import load_jsonl
from components.dialogue.schema import session_to_dict
from components.io import atomic_directory, dumps_jsonl_record
from components.memory.construction import SessionStep, bank_factory, build_memories
from components.memory.teachers import make_teacher
from components.memory.types import PARTS
from components.progress import progress

log = logging.getLogger("memforge")

SAMPLE_ROWS = 20


@dataclass
class ExpertResult:
    """Counts per split and overall, for DVC metrics and MLflow."""

    teacher: str
    sessions: Counter[str] = field(default_factory=Counter)
    conversations: Counter[str] = field(default_factory=Counter)
    kept_outputs: Counter[str] = field(default_factory=Counter)  # per part
    dropped_outputs: Counter[str] = field(default_factory=Counter)  # per part
    operations: Counter[str] = field(default_factory=Counter)  # per part
    final_entries: Counter[str] = field(default_factory=Counter)  # per part, summed over conversations
    final_core_chars: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # first words of the error, for a quick read
    samples: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        total = sum(self.kept_outputs.values()) + sum(self.dropped_outputs.values())
        out: dict[str, float] = {
            "sessions": sum(self.sessions.values()),
            "conversations": sum(self.conversations.values()),
            "dropped_fraction": sum(self.dropped_outputs.values()) / max(total, 1),
            "final_core_chars": self.final_core_chars,
        }
        out.update({f"sessions_{split}": n for split, n in self.sessions.items()})
        for part in PARTS:
            out[f"kept_{part}"] = self.kept_outputs[part]
            out[f"dropped_{part}"] = self.dropped_outputs[part]
            out[f"operations_{part}"] = self.operations[part]
            if part != "core":
                out[f"final_entries_{part}"] = self.final_entries[part]
        return out


def trajectory_record(step: SessionStep, split: str, teacher: str) -> dict[str, Any]:
    """One JSON Lines record: only the outputs that parsed and applied are written."""
    kept = {part: step.outputs[part] for part in PARTS if step.outcomes[part].ok}
    return {
        "conversation_id": step.conversation.conversation_id,
        "split": split,
        "session_index": step.session_index,
        "session_id": step.session.session_id,
        "session": session_to_dict(step.session),
        "speakers": list(step.conversation.speakers),
        "memory_before": step.memory_before,
        "prompts": {part: step.prompts[part] for part in kept},
        "outputs": kept,
        "teacher": teacher,
    }


def expert(params: Params) -> ExpertResult:
    """Build trajectories for the configured splits into ``expert.output_dir`` (atomically)."""
    cfg = params.expert
    teacher = make_teacher(params)
    make_bank = bank_factory(params, getattr(teacher, "backend", None))
    result = ExpertResult(teacher=teacher.name)
    dialogues = Path(params.ingest.output_dir)
    with atomic_directory(cfg.output_dir) as staging:
        for split in cfg.splits:
            conversations = [item.conversation for item in load_jsonl(dialogues / f"{split}.jsonl")]
            if cfg.max_conversations:
                conversations = conversations[: cfg.max_conversations]
            total_sessions = sum(len(c.sessions) for c in conversations)
            with (
                (staging / f"{split}.jsonl").open("w", encoding="utf-8") as out,
                progress(f"expert {split}", unit="sessions", total=total_sessions) as bar,
            ):

                def on_step(step: SessionStep, split: str = split, out: Any = out) -> None:
                    _count(result, step, split)
                    record = trajectory_record(step, split, teacher.name)
                    out.write(dumps_jsonl_record(record))
                    if len(result.samples) < SAMPLE_ROWS and step.session_index > 0:
                        result.samples.append(_sample_row(step, split))

                banks = build_memories(
                    conversations,
                    teacher,
                    make_bank,
                    params.memory.top_k,
                    on_step=on_step,
                    on_round=bar.advance,
                )
            result.conversations[split] = len(conversations)
            for bank in banks:
                composition = bank.composition()
                result.final_core_chars += composition["core_chars"]
                for part in PARTS[1:]:
                    result.final_entries[part] += composition[part]
        warn_dropped(result)
        summary = {"teacher": teacher.name, "metrics": result.metrics(), "errors": dict(result.errors.most_common(20))}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


def warn_dropped(result: ExpertResult) -> None:
    """A warning with counts when teacher outputs were unusable (they are dropped, not written)."""
    dropped = sum(result.dropped_outputs.values())
    if dropped:
        total = dropped + sum(result.kept_outputs.values())
        by_part = ", ".join(f"{part} {n}" for part, n in result.dropped_outputs.items() if n)
        common = "; ".join(f"{reason} ({n})" for reason, n in result.errors.most_common(3))
        log.warning(
            "expert: %d of %d teacher outputs unusable and dropped (%s); most common: %s",
            dropped,
            total,
            by_part,
            common,
        )


def _count(result: ExpertResult, step: SessionStep, split: str) -> None:
    result.sessions[split] += 1
    for part, outcome in step.outcomes.items():
        if outcome.ok:
            result.kept_outputs[part] += 1
            result.operations[part] += outcome.operations
        else:
            result.dropped_outputs[part] += 1
            result.errors[f"{part}: {(outcome.error or '')[:60]}"] += 1


def _sample_row(step: SessionStep, split: str) -> dict[str, Any]:
    return {
        "split": split,
        "conversation_id": step.conversation.conversation_id,
        "session_id": step.session.session_id,
        **{f"output_{part}": step.outputs[part][:500] for part in PARTS},
        **{f"ok_{part}": step.outcomes[part].ok for part in PARTS},
    }
