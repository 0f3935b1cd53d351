"""Memory construction: run a teacher or policy over conversations, session by session.

Conversations advance in lockstep, so session i of every conversation goes to the model in one
batched call (four agents each). Each agent's output is parsed strictly and applied all-or-nothing;
an output that fails to parse or to apply changes nothing and is recorded as a failure. A callback
sees every step (memory before, prompts, outputs, outcomes): the expert stage writes trajectories
from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.config import Params
from components.dialogue.schema import Conversation, Session
from components.memory.bank import MemoryBank, MemoryOperationError
from components.memory.parser import try_parse
from components.memory.prompts import agent_messages
from components.memory.teachers import Teacher, TeacherRequest
from components.memory.types import ENTRY_PARTS, PARTS, MemoryPart

log = logging.getLogger("memforge")
QUERY_CHARS = 2000


@dataclass(frozen=True)
class AgentOutcome:
    """What one agent's output did: parsed and applied, or why not."""

    part: MemoryPart
    ok: bool
    operations: int
    error: str | None = None


@dataclass
class SessionStep:
    """One session of one conversation: the state before it, what the model saw and wrote, and the result."""

    conversation: Conversation
    session: Session
    session_index: int
    memory_before: dict[str, Any]
    prompts: dict[MemoryPart, list[dict[str, str]]]
    outputs: dict[MemoryPart, str]
    outcomes: dict[MemoryPart, AgentOutcome] = field(default_factory=dict)
    composition: dict[str, int] = field(default_factory=dict)


def bank_factory(params: Params, teacher_backend: Any | None = None) -> Callable[[], MemoryBank]:
    """New empty banks configured from ``params.memory``, sharing one embedding cache.

    With ``memory.compression: llm`` the core block is condensed by ``teacher_backend`` (created from
    ``backends.teacher`` when not given), checked and with extractive compression as the fallback.
    """
    from components.memory.embedder import EmbeddingCache, create_embedder

    cache = EmbeddingCache(create_embedder(params.memory))
    compressor = None
    if params.memory.compression == "llm":
        from components.llm.backends import create_backend
        from components.memory.compression import llm_compressor

        compressor = llm_compressor(teacher_backend or create_backend(params.backends.teacher))
    return lambda: MemoryBank(params.memory, cache=cache, compressor=compressor)


def session_query(session: Session) -> str:
    """Retrieval query for a session: its text, bounded."""
    return " ".join(turn.text for turn in session.turns)[:QUERY_CHARS]


def session_prompts(bank: MemoryBank, session: Session, top_k: int) -> dict[MemoryPart, list[dict[str, str]]]:
    """The four agents' prompts: each sees the top-k entries of its own part most related to the session."""
    query = session_query(session)
    prompts: dict[MemoryPart, list[dict[str, str]]] = {
        "core": agent_messages("core", session, bank.core, [], core_max_chars=bank.config.core_max_chars)
    }
    for part in ENTRY_PARTS:
        retrieved = bank.retrieve([query], parts=(part,), k=top_k)[0] if len(bank.entries(part)) else []
        prompts[part] = agent_messages(part, session, bank.core, [hit.entry for hit in retrieved])
    return prompts


def apply_output(bank: MemoryBank, part: MemoryPart, text: str, session: Session) -> AgentOutcome:
    """Parse one agent's output and apply it all-or-nothing; failures leave the bank unchanged."""
    operations, error = try_parse(part, text)
    if error is not None:
        return AgentOutcome(part, ok=False, operations=0, error=f"parse: {error}")
    turn_ids = tuple(turn.turn_id for turn in session.turns)
    try:
        if part == "core":
            bank.apply_core(operations, session_id=session.session_id, turn_ids_all=turn_ids)
            count = 1
        else:
            bank.apply_entries(
                part,
                operations,
                session_id=session.session_id,
                session_timestamp=session.timestamp,
                session_turn_ids=turn_ids,
            )
            count = len(operations)
    except MemoryOperationError as exc:
        return AgentOutcome(part, ok=False, operations=0, error=f"apply: {exc}")
    return AgentOutcome(part, ok=True, operations=count)


def build_memories(
    conversations: Sequence[Conversation],
    teacher: Teacher,
    make_bank: Callable[[], MemoryBank],
    top_k: int,
    on_step: Callable[[SessionStep], None] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> list[MemoryBank]:
    """Build one memory per conversation; returns the final banks in input order."""
    banks = [make_bank() for _ in conversations]
    rounds = max((len(c.sessions) for c in conversations), default=0)
    for index in range(rounds):
        active = [i for i, c in enumerate(conversations) if index < len(c.sessions)]
        steps = []
        for i in active:
            conversation, bank = conversations[i], banks[i]
            session = conversation.sessions[index]
            steps.append(
                SessionStep(
                    conversation=conversation,
                    session=session,
                    session_index=index,
                    memory_before=bank.to_dict(),
                    prompts=session_prompts(bank, session, top_k),
                    outputs={},
                )
            )
        requests = [
            TeacherRequest(
                conversation=step.conversation,
                session=step.session,
                core=banks[i].core,
                entries={part: banks[i].entries(part) for part in ENTRY_PARTS},
                prompts=step.prompts,
            )
            for i, step in zip(active, steps, strict=True)
        ]
        for i, step, outputs in zip(active, steps, teacher.write(requests), strict=True):
            step.outputs = outputs
            step.outcomes = {part: apply_output(banks[i], part, outputs[part], step.session) for part in PARTS}
            step.composition = banks[i].composition()
            if on_step is not None:
                on_step(step)
        if on_round is not None:
            on_round(len(active))
    return banks
