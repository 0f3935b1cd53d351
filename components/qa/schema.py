"""A synthetic QA row: one question about one session, with its answer, type, evidence and generator.

Rows are the dense reward data: after a policy writes memory for a session, the session's questions
are answered from that memory. ``session_index`` is the session's position in its conversation;
multi-session and temporal questions may cite evidence from earlier sessions (``evidence_sessions``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

QuestionType = Literal["single-session", "multi-session", "temporal"]
QUESTION_TYPES: tuple[QuestionType, ...] = ("single-session", "multi-session", "temporal")
GENERATORS = ("oracle", "extractive", "llm")


@dataclass(frozen=True, slots=True)
class QARow:
    qa_id: str  # f"{conversation_id}:{session_id}:q{n}"
    conversation_id: str
    session_id: str
    session_index: int
    session_date: str  # ISO timestamp of the session the question is about
    question: str
    answer: str
    type: QuestionType
    evidence: tuple[str, ...]  # turn ids (of this session, or earlier ones for multi-session / temporal)
    evidence_sessions: tuple[str, ...]  # session ids the evidence turns belong to
    generator: str  # "oracle" | "extractive" | "llm" (or "llm:<model>")

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["evidence"] = list(self.evidence)
        row["evidence_sessions"] = list(self.evidence_sessions)
        return row

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> QARow:
        return cls(**{**obj, "evidence": tuple(obj["evidence"]), "evidence_sessions": tuple(obj["evidence_sessions"])})
