"""Human-readable views of a memory bank (CLI output, logged artifacts)."""

from __future__ import annotations

from components.memory.bank import MemoryBank
from components.memory.types import ENTRY_PARTS


def render_memory(bank: MemoryBank) -> str:
    """Core block, then each part's entries with date and provenance."""
    lines = ["== core ==", bank.core or "(empty)"]
    for part in ENTRY_PARTS:
        entries = bank.entries(part)
        lines.append(f"== {part} ({len(entries)}) ==")
        for entry in entries:
            sources = ", ".join(f"{p.session_id}:{'/'.join(p.turn_ids[:3])}" for p in entry.provenance)
            lines.append(f"[{entry.entry_id}] ({entry.timestamp[:10]}) {entry.text}   <- {sources}")
    return "\n".join(lines)
