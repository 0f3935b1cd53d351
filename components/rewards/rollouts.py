"""Session groups: one session, its pre-session memory and questions, and G rollouts of each memory agent.

Rollout ``r`` of a session is the ``r``-th output of each of the four agents, applied TOGETHER to a
snapshot (O(1), copy-on-write) of the pre-session bank. Each agent's operations apply all-or-nothing:
an output that does not parse or does not apply (unknown id, foreign turn id, ...) fails its format
gate and contributes nothing, while the other agents' operations still apply.

The four parts live in separate stores (core block, and per-part entry stores whose ids carry the part),
so whether an agent's output applies does not depend on the other agents' outputs: the format gate
measured on the pre-session bank alone (``format_gate``) is exactly whether the output applied inside
its rollout.

``groups_from_batch`` turns a TRL-style batch (rows of the synth_qa ``prompts`` dataset, each repeated
G times, with one completion per row) into session groups plus a ``BatchLayout`` that maps every batch
position back to its (group, part, rollout).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.config import MemoryConfig
from components.dialogue.schema import Session, session_from_dict
from components.memory.bank import MemoryBank, MemoryOperationError
from components.memory.compression import CoreCompressor
from components.memory.embedder import EmbeddingCache
from components.memory.parser import try_parse
from components.memory.types import (
    ENTRY_PARTS,
    PARTS,
    CoreAppend,
    CoreOperation,
    CoreReplace,
    CoreRewrite,
    EntryAdd,
    EntryMerge,
    EntryOperation,
    EntryUpdate,
    MemoryPart,
)

Operations = CoreOperation | list[EntryOperation]


@dataclass(frozen=True, slots=True)
class SessionQuestion:
    """One synthetic question about the session, with its gold answer."""

    qa_id: str
    question: str
    answer: str
    type: str = ""

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SessionQuestion:
        """From a ``questions`` item of the prompts dataset (extra keys such as ``evidence`` are ignored)."""
        return cls(str(obj["qa_id"]), str(obj["question"]), str(obj["answer"]), str(obj.get("type") or ""))


# ---------------------------------------------------------------------------------------------
# parsing and applying one agent's output


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """An agent output parsed once: its operations (None when it did not parse) and the parse error."""

    part: MemoryPart
    operations: Operations | None
    error: str | None = None

    @property
    def texts(self) -> tuple[str, ...]:
        """Texts the operations would write (to embed ahead, in one batch, before any bank needs them)."""
        ops = self.operations
        if ops is None or self.part == "core":
            return ()
        return tuple(op.text for op in ops if isinstance(op, (EntryAdd, EntryUpdate, EntryMerge)))


def parse_output(part: MemoryPart, text: str) -> ParsedOutput:
    """Parse an agent's output (strictly; see ``components.memory.parser``)."""
    if part not in PARTS:
        raise ValueError(f"unknown memory part {part!r}; expected one of {', '.join(PARTS)}")
    operations, error = try_parse(part, text)
    return ParsedOutput(part, operations, None if error is None else f"parse: {error}")


@dataclass(frozen=True, slots=True)
class AgentApplication:
    """What one agent's output did to a bank: format gate passed, whether the memory changed, why not."""

    part: MemoryPart
    ok: bool
    changed: bool
    operations: Operations | None
    error: str | None = None


def _core_changes(op: CoreOperation) -> bool:
    return isinstance(op, (CoreAppend, CoreReplace, CoreRewrite))


def apply_parsed(bank: MemoryBank, parsed: ParsedOutput, session: Session) -> AgentApplication:
    """Apply a parsed output to ``bank`` (all-or-nothing); a failure leaves the bank unchanged."""
    part, ops = parsed.part, parsed.operations
    if ops is None:
        return AgentApplication(part, False, False, None, parsed.error or "parse: no operations")
    turn_ids = tuple(turn.turn_id for turn in session.turns)
    try:
        if part == "core":
            assert not isinstance(ops, list)
            changed = bank.apply_core(ops, session_id=session.session_id, turn_ids_all=turn_ids).changed
        else:
            assert isinstance(ops, list)
            changed = bank.apply_entries(
                part,
                ops,
                session_id=session.session_id,
                session_timestamp=session.timestamp,
                session_turn_ids=turn_ids,
            ).changed
    except MemoryOperationError as exc:
        return AgentApplication(part, False, False, ops, f"apply: {exc}")
    return AgentApplication(part, True, changed, ops)


def apply_agent(bank: MemoryBank, part: MemoryPart, text: str, session: Session) -> AgentApplication:
    """Parse ``text`` as ``part``'s output and apply it to ``bank`` (all-or-nothing)."""
    return apply_parsed(bank, parse_output(part, text), session)


def format_gate(part: MemoryPart, text: str, bank_before: MemoryBank, session: Session) -> bool:
    """1 (True) when ``text`` parses as ``part``'s output AND applies cleanly to a snapshot of ``bank_before``.

    Cheap: the snapshot is O(1) and nothing is embedded; ``bank_before`` is never changed.
    """
    return apply_agent(bank_before.snapshot(), part, text, session).ok


@dataclass(frozen=True, slots=True, eq=False)
class AppliedRollout:
    """One rollout's memory: the pre-session snapshot with every passing agent's operations applied."""

    bank: MemoryBank
    agents: Mapping[MemoryPart, AgentApplication]

    @property
    def format_ok(self) -> dict[MemoryPart, bool]:
        return {part: outcome.ok for part, outcome in self.agents.items()}


def apply_rollout(
    bank_before: MemoryBank,
    session: Session,
    outputs: Mapping[MemoryPart, str | ParsedOutput],
    *,
    leave_out: MemoryPart | None = None,
) -> AppliedRollout:
    """Apply the agents' outputs TOGETHER to one snapshot of ``bank_before`` (which stays unchanged).

    Parts apply in ``PARTS`` order; a failing agent's operations are not applied and the others still are.
    ``leave_out`` skips one part (its outcome is not recorded): the ablation memories are built this way.
    """
    bank = bank_before.snapshot()
    agents: dict[MemoryPart, AgentApplication] = {}
    for part in PARTS:
        if part not in outputs or part == leave_out:
            continue
        output = outputs[part]
        parsed = output if isinstance(output, ParsedOutput) else parse_output(part, output)
        if parsed.part != part:
            raise ValueError(f"output for {part} was parsed as {parsed.part}")
        agents[part] = apply_parsed(bank, parsed, session)
    return AppliedRollout(bank, agents)


# ---------------------------------------------------------------------------------------------
# session groups


@dataclass(frozen=True, eq=False)
class SessionGroup:
    """One session with G rollouts per scored part.

    ``rollouts[part][r]`` is the r-th output of ``part``'s agent; every scored part has the same G. A part
    absent from ``rollouts`` is teacher-forced: its expert output is applied in every rollout (so the
    memory is complete) and it gets no score. ``expert_outputs`` must hold every entry part that is scored
    (the length ratio's reference) and every part that is teacher-forced.
    """

    group_id: str
    bank_before: MemoryBank
    session: Session
    questions: tuple[SessionQuestion, ...]
    expert_outputs: Mapping[MemoryPart, str]
    rollouts: Mapping[MemoryPart, Sequence[str]]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rollouts = {part: tuple(texts) for part, texts in self.rollouts.items()}
        experts = dict(self.expert_outputs)
        where = f"session group {self.group_id!r}"
        unknown = sorted(set(rollouts) - set(PARTS)) + sorted(set(experts) - set(PARTS))
        if unknown:
            raise ValueError(f"{where}: unknown part(s) {unknown}; expected {', '.join(PARTS)}")
        if not rollouts:
            raise ValueError(f"{where}: no rollouts")
        sizes = {len(texts) for texts in rollouts.values()}
        if len(sizes) != 1 or 0 in sizes:
            counts = {part: len(texts) for part, texts in rollouts.items()}
            raise ValueError(f"{where}: every part needs the same number (>= 1) of rollouts, got {counts}")
        for part, texts in rollouts.items():
            if not all(isinstance(text, str) for text in texts):
                raise ValueError(f"{where}: {part} rollouts must be strings")
        needed = [p for p in PARTS if p not in rollouts or p in ENTRY_PARTS]
        missing = [p for p in needed if not isinstance(experts.get(p), str)]
        if missing:
            raise ValueError(f"{where}: expert output(s) missing for {', '.join(missing)}")
        questions = tuple(self.questions)
        if not questions:
            raise ValueError(f"{where}: a session group needs at least one question (the dense reward)")
        object.__setattr__(self, "rollouts", {p: rollouts[p] for p in PARTS if p in rollouts})
        object.__setattr__(self, "expert_outputs", experts)
        object.__setattr__(self, "questions", questions)

    @property
    def num_generations(self) -> int:
        """G: rollouts per scored part."""
        return len(next(iter(self.rollouts.values())))

    @property
    def scored_parts(self) -> tuple[MemoryPart, ...]:
        """Parts with rollouts, in ``PARTS`` order."""
        return tuple(self.rollouts)

    def outputs(self, rollout: int) -> dict[MemoryPart, str]:
        """The four texts applied in ``rollout``: each scored part's r-th output, the expert's for the others."""
        if not 0 <= rollout < self.num_generations:
            raise IndexError(f"rollout {rollout} out of range 0..{self.num_generations - 1}")
        return {p: self.rollouts[p][rollout] if p in self.rollouts else self.expert_outputs[p] for p in PARTS}

    def apply(self, rollout: int) -> AppliedRollout:
        """Rollout ``rollout``'s memory (a snapshot of the pre-session bank; the bank itself is unchanged)."""
        return apply_rollout(self.bank_before, self.session, self.outputs(rollout))


# ---------------------------------------------------------------------------------------------
# TRL-style batches


@dataclass(frozen=True)
class BatchLayout:
    """Per batch position: ``(group index, part, rollout)`` of the completion at that position."""

    positions: tuple[tuple[int, MemoryPart, int], ...]

    def __len__(self) -> int:
        return len(self.positions)


def completion_text(completion: Any) -> str:
    """A completion as text: a string as is; a chat completion (list of messages) -> the last message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping) and isinstance(completion.get("content"), str):
        return completion["content"]
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    raise TypeError(f"expected a completion string or chat messages, got {type(completion).__name__}")


def _json_value(value: Any, name: str, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: {name} is not valid JSON: {exc.msg}") from None
    return value


def _session_key(row: Mapping[str, Any]) -> str:
    if row.get("conversation_id") is not None and row.get("session_id") is not None:
        return f"{row['conversation_id']}:{row['session_id']}"
    prompt_id = str(row["prompt_id"])
    return prompt_id.rsplit(":", 1)[0]


def groups_from_batch(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[Any],
    *,
    cache: EmbeddingCache | None = None,
    memory_config: MemoryConfig | None = None,
    compressor: CoreCompressor | None = None,
) -> tuple[list[SessionGroup], BatchLayout]:
    """Session groups from a batch of ``prompts`` rows (one per completion, e.g. each prompt repeated G times).

    Rows of one session (``conversation_id:session_id``) form one group; the r-th completion of a part in
    batch order is that part's rollout r. Every session in the batch must have all four parts with the same
    number of completions (the sampler keeps a session's four prompts in one batch). Banks are rebuilt from
    ``memory_before`` with ``cache`` (share one ``EmbeddingCache`` across steps: texts are embedded once).
    """
    if len(rows) != len(completions):
        raise ValueError(f"{len(rows)} rows but {len(completions)} completions")
    order: dict[str, int] = {}
    first_row: list[Mapping[str, Any]] = []
    texts: list[dict[MemoryPart, list[str]]] = []
    experts: list[dict[MemoryPart, str]] = []
    prompt_ids: list[dict[MemoryPart, str]] = []
    positions: list[tuple[int, MemoryPart, int]] = []
    for index, (row, completion) in enumerate(zip(rows, completions, strict=True)):
        part = row.get("part")
        if part not in PARTS:
            raise ValueError(f"batch row {index}: unknown part {part!r}; expected one of {', '.join(PARTS)}")
        key = _session_key(row)
        group = order.setdefault(key, len(order))
        if group == len(first_row):
            first_row.append(row)
            texts.append({})
            experts.append({})
            prompt_ids.append({})
        outputs = texts[group].setdefault(part, [])
        positions.append((group, part, len(outputs)))
        outputs.append(completion_text(completion))
        experts[group].setdefault(part, str(row["expert_output"]))
        prompt_ids[group].setdefault(part, str(row.get("prompt_id", f"{key}:{part}")))
    groups: list[SessionGroup] = []
    for key, group in order.items():
        missing = [p for p in PARTS if p not in texts[group]]
        if missing:
            raise ValueError(
                f"session {key!r}: the batch has no completions for {', '.join(missing)}; all four agents of a "
                "session must be in one batch (rollout r applies the r-th output of each agent together)"
            )
        row = first_row[group]
        where = f"session {key!r}"
        memory = _json_value(row["memory_before"], "memory_before", where)
        bank = MemoryBank.from_dict(memory, memory_config, cache=cache, compressor=compressor, source=where)
        session = session_from_dict(_json_value(row["session"], "session", where), f"{where}.session")
        questions = tuple(SessionQuestion.from_dict(q) for q in _json_value(row["questions"], "questions", where))
        groups.append(
            SessionGroup(
                group_id=key,
                bank_before=bank,
                session=session,
                questions=questions,
                expert_outputs=experts[group],
                rollouts=texts[group],
                metadata={"prompt_ids": prompt_ids[group]},
            )
        )
    return groups, BatchLayout(tuple(positions))
