"""Expert teachers: the four agents' outputs for a session, given the memory before it.

- ``oracle``: exact operations from the synthetic generator's ground truth (``Session.metadata["facts"]``).
- ``heuristic``: offline rules for real dialogues without ground truth: first-person statements
  become profile lines, dated events, facts and routines.
- ``llm``: any generation backend, prompted like the agents (a strong model behind an endpoint).

Teachers return raw text per part, exactly what a policy would emit, so the same strict parser gates
them all. The rule-based teachers write canonical JSON with the parser's renderers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.config import Params
from components.dialogue.schema import Conversation, Session
from components.memory.parser import render_core_operation, render_entry_operations
from components.memory.types import (
    PARTS,
    CoreAppend,
    CoreOperation,
    CoreReplace,
    CoreRewrite,
    CoreSkip,
    EntryAdd,
    EntryOperation,
    EntryUpdate,
    MemoryEntry,
    MemoryPart,
)
from components.text import normalise_text

Message = dict[str, str]


@dataclass(frozen=True)
class TeacherRequest:
    """One session to write memory for: the conversation, the session, and the memory before it."""

    conversation: Conversation
    session: Session
    core: str
    entries: dict[MemoryPart, list[MemoryEntry]]  # every entry of each entry part, before the session
    prompts: dict[MemoryPart, list[Message]] = field(default_factory=dict)


class Teacher(Protocol):
    name: str

    def write(self, requests: Sequence[TeacherRequest]) -> list[dict[MemoryPart, str]]:
        """Raw output text per part for each request, in order."""
        ...


# ---------------------------------------------------------------------------------------------
# oracle: the synthetic generator's ground truth

CORE_KINDS = {"move", "job", "preference", "relationship"}
SEMANTIC_KINDS = {"relationship", "move", "job", "preference"}
ROUTINE_KINDS = {"routine"}
LABELS = {
    "city": "city of residence",
    "employer": "employer",
    "role": "job title",
    "partner": "partner",
    "favorite_food": "favourite food",
    "favorite_music": "favourite music",
    "hobby": "hobby",
    "gym_day": "gym days",
    "commute": "commute",
}


def _label(attribute: str) -> str:
    return LABELS.get(attribute, attribute.replace("_", " "))


def _core_line(person: str, attribute: str, value: str) -> str:
    return f"{person}'s {_label(attribute)}: {value}."


def _core_lines(core: str) -> list[str]:
    return [line for line in core.splitlines() if line.strip()]


def oracle_core_operation(person: str, core: str, facts: Sequence[dict[str, Any]]) -> CoreOperation:
    """One core operation that brings the profile up to date with this session's facts.

    Additive facts (pets, friends) never replace; single-valued attributes do. One change to an
    existing line is a REPLACE, only new lines an APPEND, anything else a REWRITE of the block.
    """
    lines = _core_lines(core)
    prefix_of = {attr: f"{person}'s {_label(attr)}: " for attr in LABELS}
    replaced: list[tuple[str, str]] = []
    added: list[str] = []
    for fact in facts:
        if fact["kind"] not in CORE_KINDS:
            continue
        attribute, value = fact["attribute"], fact["value"]
        if attribute in ("pet", "friend"):
            line = f"{person}'s {attribute}: {value}."
            if line not in lines and line not in added:
                added.append(line)
            continue
        new_line = _core_line(person, attribute, value)
        old_line = next((line for line in lines if line.startswith(prefix_of.get(attribute, "\0"))), None)
        if old_line is None:
            added = [line for line in added if not line.startswith(prefix_of[attribute])] + [new_line]
        elif old_line != new_line:
            replaced = [(o, n) for o, n in replaced if o != old_line] + [(old_line, new_line)]
    if not replaced and not added:
        return CoreSkip()
    if len(replaced) == 1 and not added:
        return CoreReplace(old=replaced[0][0], new=replaced[0][1])
    if not replaced:
        return CoreAppend(text="\n".join(added))
    updated = [dict(replaced).get(line, line) for line in lines] + added
    return CoreRewrite(text="\n".join(updated))


def _event_text(person: str, fact: dict[str, Any]) -> str:
    attribute, value, previous = fact["attribute"], fact["value"], fact.get("previous")
    if fact["kind"] == "move":
        return f"{person} moved to {value}" + (f" from {previous}." if previous else ".")
    if fact["kind"] == "job" and attribute == "employer":
        return f"{person} started working at {value}" + (f" (previously {previous})." if previous else ".")
    return ""


def _source_text(session: Session, turn_ids: Sequence[str]) -> str:
    wanted = set(turn_ids)
    return " ".join(turn.text for turn in session.turns if turn.turn_id in wanted)


def oracle_entry_operations(
    part: MemoryPart, person: str, session: Session, facts: Sequence[dict[str, Any]], existing: Sequence[MemoryEntry]
) -> list[EntryOperation]:
    """Exact ADD/UPDATE operations for one entry part from the session's ground-truth facts."""
    operations: list[EntryOperation] = []
    for fact in facts:
        turns = tuple(fact["turn_ids"])
        source = _source_text(session, turns)
        if part == "episodic":
            text = _event_text(person, fact)
            if fact["kind"] == "event":
                text = f"{person} ({fact['attribute']}, {fact['value']}): {source}"
            if text:
                operations.append(EntryAdd(text=text, timestamp=fact["date"], turn_ids=turns))
        elif (part == "semantic" and fact["kind"] in SEMANTIC_KINDS) or (
            part == "procedural" and fact["kind"] in ROUTINE_KINDS
        ):
            operations.append(_fact_operation(person, fact, source, turns, existing))
    return operations


def _fact_operation(
    person: str, fact: dict[str, Any], source: str, turns: tuple[str, ...], existing: Sequence[MemoryEntry]
) -> EntryOperation:
    """UPDATE the entry holding a single-valued attribute when it changed; otherwise ADD."""
    attribute, value = fact["attribute"], fact["value"]
    if attribute in ("pet", "friend"):
        return EntryAdd(text=f"{person}'s {attribute} {value}: {source}", turn_ids=turns)
    prefix = f"{person}'s {_label(attribute)} is "
    text = f"{prefix}{value} ({source})"
    holder = next((entry for entry in existing if entry.text.startswith(prefix)), None)
    if holder is not None:
        return EntryUpdate(entry_id=holder.entry_id, text=text, turn_ids=turns)
    return EntryAdd(text=text, turn_ids=turns)


@dataclass
class OracleTeacher:
    """Exact operations from synthetic ground truth; sessions without it go to ``fallback``."""

    fallback: Teacher
    name: str = "oracle"

    def write(self, requests: Sequence[TeacherRequest]) -> list[dict[MemoryPart, str]]:
        outputs: list[dict[MemoryPart, str] | None] = []
        unlabelled = []
        for request in requests:
            facts = request.session.metadata.get("facts")
            if facts is None:
                outputs.append(None)
                unlabelled.append(request)
                continue
            person = request.conversation.speakers[0]
            result: dict[MemoryPart, str] = {
                "core": render_core_operation(oracle_core_operation(person, request.core, facts))
            }
            for part in PARTS[1:]:
                ops = oracle_entry_operations(part, person, request.session, facts, request.entries[part])
                result[part] = render_entry_operations(ops)
            outputs.append(result)
        fallback = iter(self.fallback.write(unlabelled)) if unlabelled else iter(())
        return [out if out is not None else next(fallback) for out in outputs]


# ---------------------------------------------------------------------------------------------
# heuristic: offline rules for real dialogues

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_PROFILE = re.compile(
    r"\b(my name is|i am a|i'm a|i live in|i'm based in|i moved to|i work (?:at|as|for)|my job|my (?:wife|husband|"
    r"partner|girlfriend|boyfriend|son|daughter|sister|brother|mother|father|mom|dad)|i (?:love|prefer|hate)|"
    r"my favou?rite)\b",
    re.IGNORECASE,
)
_EVENT = re.compile(
    r"\b(yesterday|today|tomorrow|last (?:week|month|year|night|weekend)|next (?:week|month|year|weekend)|"
    r"ago|on (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)|(?:january|february|march|april|may|"
    r"june|july|august|september|october|november|december)\s+\d{1,2}|i (?:went|visited|attended|bought|got|"
    r"started|finished|met|adopted|booked))\b",
    re.IGNORECASE,
)
_ROUTINE = re.compile(
    r"\b(every (?:day|morning|evening|week|weekend|monday|tuesday|wednesday|thursday|friday|saturday|sunday)|"
    r"i usually|i always|i often|each (?:morning|week)|my routine|steps? (?:are|is)|first,? i|how i)\b",
    re.IGNORECASE,
)
_FACT = re.compile(r"\b(i|i'm|i've|my|we|our)\b", re.IGNORECASE)
MAX_SENTENCE_CHARS = 300


def _user_speaker(conversation: Conversation) -> str:
    return "user" if "user" in conversation.speakers else conversation.speakers[0]


def _statements(session: Session, speaker: str) -> list[tuple[str, str]]:
    """(turn id, sentence) for each short sentence the user said in the session."""
    found = []
    for turn in session.turns:
        if turn.speaker != speaker:
            continue
        for sentence in _SENTENCE.split(turn.text.strip()):
            sentence = sentence.strip()
            if 12 <= len(sentence) <= MAX_SENTENCE_CHARS:
                found.append((turn.turn_id, sentence))
    return found


def heuristic_operations(
    conversation: Conversation, session: Session, core: str, entries: dict[MemoryPart, list[MemoryEntry]]
) -> tuple[CoreOperation, dict[MemoryPart, list[EntryOperation]]]:
    """Classify the user's sentences: profile -> core, dated -> episodic, habitual -> procedural, else semantic."""
    speaker = _user_speaker(conversation)
    known = {normalise_text(entry.text) for part_entries in entries.values() for entry in part_entries}
    known |= {normalise_text(line) for line in _core_lines(core)}
    profile: list[str] = []
    by_part: dict[MemoryPart, list[EntryOperation]] = {"episodic": [], "semantic": [], "procedural": []}
    for turn_id, sentence in _statements(session, speaker):
        key = normalise_text(sentence)
        if key in known:
            continue
        known.add(key)
        text = f"{speaker}: {sentence}"
        if _PROFILE.search(sentence):
            profile.append(text)
        elif _ROUTINE.search(sentence):
            by_part["procedural"].append(EntryAdd(text=text, turn_ids=(turn_id,)))
        elif _EVENT.search(sentence):
            by_part["episodic"].append(EntryAdd(text=text, timestamp=session.timestamp, turn_ids=(turn_id,)))
        elif _FACT.search(sentence):
            by_part["semantic"].append(EntryAdd(text=text, turn_ids=(turn_id,)))
    core_op: CoreOperation = CoreAppend(text="\n".join(profile)) if profile else CoreSkip()
    return core_op, by_part


@dataclass
class HeuristicTeacher:
    """Offline rule-based teacher for dialogues without ground truth."""

    name: str = "heuristic"

    def write(self, requests: Sequence[TeacherRequest]) -> list[dict[MemoryPart, str]]:
        outputs = []
        for request in requests:
            core_op, by_part = heuristic_operations(
                request.conversation, request.session, request.core, request.entries
            )
            result: dict[MemoryPart, str] = {"core": render_core_operation(core_op)}
            result.update({part: render_entry_operations(ops) for part, ops in by_part.items()})
            outputs.append(result)
        return outputs


# ---------------------------------------------------------------------------------------------
# llm: a generation backend prompted like the agents


@dataclass
class LLMTeacher:
    """A (strong) model behind any backend; all parts of all sessions go out in one batch."""

    backend: Any  # components.llm.backends.GenerationBackend
    name: str = "llm"

    def write(self, requests: Sequence[TeacherRequest]) -> list[dict[MemoryPart, str]]:
        conversations = [request.prompts[part] for request in requests for part in PARTS]
        generations = self.backend.generate(conversations)
        texts = iter(choices[0].text for choices in generations)
        return [{part: next(texts) for part in PARTS} for _ in requests]


def make_teacher(params: Params) -> Teacher:
    """The configured teacher; oracle falls back to the heuristic on conversations without ground truth."""
    heuristic = HeuristicTeacher()
    if params.expert.teacher == "heuristic":
        return heuristic
    if params.expert.teacher == "oracle":
        return OracleTeacher(fallback=heuristic)
    from components.llm.backends import create_backend

    return LLMTeacher(backend=create_backend(params.backends.teacher))
