"""Session-level synthetic QA: N questions per session, gated by great-expectations, joined to the RL prompts.

``synth_qa(params)`` writes into ``synth_qa.output_dir``:
- ``{split}.jsonl``: usable QA rows (schema: ``components/qa/schema.py``);
- ``quarantine.jsonl``: rows that failed a row-level expectation, with their reasons;
- ``hf/``: the usable rows as an HF dataset (``save_to_disk``), with a ``split`` column;
- ``prompts/``: one row per (training session, memory agent) from the expert trajectories, carrying
  the agent prompt, the expert's output, the memory before the session and the session's questions:
  the input of ADRPO;
- ``dataset_card.md`` and ``validation.json``.
Held-out (eval) questions are written for measurement only: no trajectory joins them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Params
from components.dialogue.loaders import load_jsonl
from components.dialogue.schema import Conversation
from components.errors import InputError, QualityGateError
from components.io import atomic_directory, dumps_jsonl_record, iter_jsonl
from components.progress import progress
from components.qa.schema import QARow

GENERATION_CHUNK = 256  # sessions per generator call (one batched backend call for the llm generator)


@dataclass
class SynthQAResult:
    sessions: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)
    usable: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    by_generator: Counter[str] = field(default_factory=Counter)
    pass_rates: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> expectation -> rate
    dropped_by_generator: int = 0
    prompts: int = 0
    sessions_without_questions: int = 0  # training sessions left out of the prompts: nothing to ask
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        total, usable = sum(self.rows.values()), sum(self.usable.values())
        out: dict[str, float] = {
            "sessions": sum(self.sessions.values()),
            "rows": total,
            "usable_rows": usable,
            "usable_fraction": usable / max(total, 1),
            "generator_dropped": self.dropped_by_generator,
            "rl_prompts": self.prompts,
            "sessions_without_questions": self.sessions_without_questions,
        }
        out.update({f"usable_{split}": n for split, n in self.usable.items()})
        out.update({f"type_{name}": n for name, n in self.by_type.items()})
        for split, rates in self.pass_rates.items():
            out.update({f"pass_rate_{split}_{name}": rate for name, rate in rates.items()})
        return out

    def timings(self) -> dict[str, float]:
        """Wall-clock measurements (MLflow only: they change on every run)."""
        sessions = sum(self.sessions.values())
        return {"seconds": round(self.seconds, 3), "sessions_per_second": round(sessions / max(self.seconds, 1e-9), 1)}


def _requests(conversations: list[Conversation], params: Params) -> list[tuple[Conversation, int, list[str]]]:
    from components.qa.generators import type_plan

    cfg = params.synth_qa
    return [
        (
            conversation,
            index,
            type_plan(
                cfg.questions_per_session,
                cfg.type_mix,
                index,
                cfg.seed,
                f"{conversation.conversation_id}:{s.session_id}",
            ),
        )
        for conversation in conversations
        for index, s in enumerate(conversation.sessions)
    ]


def generate_rows(generator: Any, requests: list[tuple[Conversation, int, list[str]]], label: str) -> list[QARow]:
    """All requested sessions' questions, in chunks so progress shows and llm batches stay bounded."""
    rows: list[QARow] = []
    with progress(f"synth_qa {label}", unit="sessions", total=len(requests)) as bar:
        for start in range(0, len(requests), GENERATION_CHUNK):
            chunk = requests[start : start + GENERATION_CHUNK]
            for session_rows in generator.generate_many(chunk):
                rows.extend(session_rows)
            bar.advance(len(chunk))
    return rows


def join_prompts(
    trajectory_file: Path, rows_by_session: dict[tuple[str, str], list[QARow]]
) -> tuple[list[dict[str, Any]], int]:
    """One ADRPO prompt per (session, agent) in the expert trajectories, with that session's questions.

    Sessions without a usable question give no dense reward, so their prompts are left out and counted.
    """
    prompts, sessions_without_questions = [], 0
    for _line, record in iter_jsonl(trajectory_file):
        key = (record["conversation_id"], record["session_id"])
        questions = [
            {"qa_id": r.qa_id, "question": r.question, "answer": r.answer, "type": r.type, "evidence": list(r.evidence)}
            for r in rows_by_session.get(key, [])
        ]
        if not questions:
            sessions_without_questions += 1
            continue
        for part, messages in record["prompts"].items():
            prompts.append(
                {
                    "prompt_id": f"{key[0]}:{key[1]}:{part}",
                    "conversation_id": key[0],
                    "session_id": key[1],
                    "session_index": record["session_index"],
                    "split": record["split"],
                    "part": part,
                    "prompt": messages,
                    "expert_output": record["outputs"][part],
                    "memory_before": json.dumps(record["memory_before"], ensure_ascii=False),
                    "session": json.dumps(record["session"], ensure_ascii=False),
                    "questions": questions,
                }
            )
    return prompts, sessions_without_questions


def synth_qa(params: Params) -> SynthQAResult:
    """Generate, validate and write the QA data and the joined RL prompts (atomically)."""
    from datasets import Dataset

    from components.memory.embedder import EmbeddingCache, create_embedder
    from components.qa.generators import create_generator
    from components.quality.card import dataset_card
    from components.quality.qa import QAValidator, build_session_contexts, quality_gate_message

    cfg = params.synth_qa
    started = time.perf_counter()
    backend = None
    if cfg.generator == "llm":
        from components.llm.backends import create_backend

        backend = create_backend(params.backends.teacher)
    generator = create_generator(cfg, backend)
    validator = QAValidator(cfg, EmbeddingCache(create_embedder(params.memory)))
    result = SynthQAResult()
    dialogues, trajectories = Path(params.ingest.output_dir), Path(params.expert.output_dir)
    usable_all: list[dict[str, Any]] = []
    cards, validations = [], {}
    with (
        atomic_directory(cfg.output_dir) as staging,
        (staging / "quarantine.jsonl").open("w", encoding="utf-8") as quarantine,
    ):
        for split in cfg.splits:
            source = dialogues / f"{split}.jsonl"
            if not source.exists():
                raise InputError(source, f"split '{split}' has no dialogues (run the ingest stage first)")
            conversations = [item.conversation for item in load_jsonl(source)]
            requests = _requests(conversations, params)
            rows = generate_rows(generator, requests, split)
            report = validator.validate(rows, build_session_contexts(conversations))
            message = quality_gate_message(report, cfg)
            if message:
                error = QualityGateError(f"synth_qa split '{split}': {message}")
                error.validation_result = report.validation_result  # type: ignore[attr-defined]
                raise error
            failed = {v.qa_id: v.failures for v in report.verdicts if v.failures}
            with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as out:
                for row in rows:
                    if row.qa_id in failed:
                        reasons = [{"expectation": n, "detail": d} for n, d in failed[row.qa_id]]
                        quarantine.write(dumps_jsonl_record({"split": split, "reasons": reasons, "row": row.to_dict()}))
                        continue
                    out.write(dumps_jsonl_record(row.to_dict()))
                    usable_all.append({**row.to_dict(), "split": split})
                    result.by_type[row.type] += 1
                    result.by_generator[row.generator] += 1
            result.sessions[split] = len(requests)
            result.rows[split] = len(rows)
            result.usable[split] = len(rows) - len(failed)
            result.pass_rates[split] = report.pass_rates
            validations[split] = report.validation_result
            card = dataset_card(report, rows, cfg)
            body = card.split("\n", 1)[1] if card.startswith("# ") else card  # one title for the whole card
            cards.append(f"## split: {split}\n{body}")
        result.dropped_by_generator = getattr(getattr(generator, "stats", None), "dropped", 0)
        Dataset.from_list(usable_all).save_to_disk(str(staging / "hf"))
        by_session: dict[tuple[str, str], list[QARow]] = {}
        for row in usable_all:
            qa = QARow.from_dict({k: v for k, v in row.items() if k != "split"})
            by_session.setdefault((qa.conversation_id, qa.session_id), []).append(qa)
        prompts = []
        for split in params.expert.splits:
            trajectory_file = trajectories / f"{split}.jsonl"
            if trajectory_file.exists():
                joined, skipped = join_prompts(trajectory_file, by_session)
                prompts.extend(joined)
                result.sessions_without_questions += skipped
        result.prompts = len(prompts)
        if prompts:
            Dataset.from_list(prompts).save_to_disk(str(staging / "prompts"))
        (staging / "dataset_card.md").write_text("# memforge synthetic QA\n\n" + "\n\n".join(cards), encoding="utf-8")
        (staging / "validation.json").write_text(json.dumps(validations, indent=1) + "\n", encoding="utf-8")
    if backend is not None:
        backend.close()
    result.seconds = time.perf_counter() - started
    return result
