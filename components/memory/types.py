"""Memory entries and the typed operations the memory agents emit.

The core part is one text block (APPEND, REPLACE, REWRITE, SKIP). The episodic, semantic and
procedural parts hold entries (ADD, UPDATE, MERGE, DELETE). Each entry carries its provenance: the
session and the turn ids it came from. MERGE and UPDATE keep the provenance of what they replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MemoryPart = Literal["core", "episodic", "semantic", "procedural"]
ENTRY_PARTS: tuple[MemoryPart, ...] = ("episodic", "semantic", "procedural")
PARTS: tuple[MemoryPart, ...] = ("core", *ENTRY_PARTS)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an entry's content came from."""

    session_id: str
    turn_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One episodic, semantic or procedural memory. ``timestamp`` is ISO 8601 (the event's or session's date)."""

    entry_id: str
    part: MemoryPart
    text: str
    timestamp: str
    provenance: tuple[Provenance, ...]


# --- core operations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreAppend:
    text: str


@dataclass(frozen=True, slots=True)
class CoreReplace:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CoreRewrite:
    text: str


@dataclass(frozen=True, slots=True)
class CoreSkip:
    pass


CoreOperation = CoreAppend | CoreReplace | CoreRewrite | CoreSkip


# --- entry operations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryAdd:
    text: str
    timestamp: str | None = None  # the event's date (episodic); None = the session's timestamp
    turn_ids: tuple[str, ...] = ()  # source turns; () = the whole session


@dataclass(frozen=True, slots=True)
class EntryUpdate:
    entry_id: str
    text: str
    turn_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EntryMerge:
    entry_ids: tuple[str, ...]
    text: str
    turn_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EntryDelete:
    entry_id: str


EntryOperation = EntryAdd | EntryUpdate | EntryMerge | EntryDelete
Operation = CoreOperation | EntryOperation
