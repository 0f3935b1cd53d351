"""The four-part memory bank: a core text block plus episodic, semantic and procedural entry stores.

Each agent's operations apply all-or-nothing: every operation is validated against the bank (and
against the operations before it in the same list) first, and a ``MemoryOperationError`` leaves the
bank untouched, id counters included. Entry ids (``epi-1``, ``sem-1``, ``pro-1``, ...) are assigned by
the bank, per part, and never reused. UPDATE and MERGE replace what they change: no stale copy of an
updated or merged entry is left behind, in the entry store or in the retrieval index.

``snapshot()`` is O(1): entry dicts and the embedding matrices (``retrieval.PartIndex``) are shared and
copied lazily by whichever side writes first; entries themselves are frozen and shared for good; the
``EmbeddingCache`` is shared, so a text is embedded once across every snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.config import MemoryConfig
from components.errors import ConfigError, InputError
from components.memory.compression import CheckedCompressor, CoreCompressor, ExtractiveCompressor
from components.memory.embedder import Embedder, EmbeddingCache
from components.memory.retrieval import PartIndex, RetrievedEntry, search
from components.memory.types import (
    ENTRY_PARTS,
    CoreAppend,
    CoreOperation,
    CoreReplace,
    CoreRewrite,
    CoreSkip,
    EntryAdd,
    EntryDelete,
    EntryMerge,
    EntryOperation,
    EntryUpdate,
    MemoryEntry,
    MemoryPart,
    Provenance,
)

FORMAT = "memforge-memory-bank"
FORMAT_VERSION = 1
ID_PREFIX: dict[MemoryPart, str] = {"episodic": "epi", "semantic": "sem", "procedural": "pro"}
_PART_OF_PREFIX = {prefix: part for part, prefix in ID_PREFIX.items()}


class MemoryOperationError(ValueError):
    """An operation the bank cannot apply (unknown id, foreign turn id, ...); the bank was left unchanged."""


class MemoryLoadError(InputError):
    """A saved memory bank that is missing, corrupt, or not in the expected format; names the file."""


@dataclass(frozen=True, slots=True)
class CoreResult:
    """What a core operation did."""

    operation: str
    changed: bool
    compressed: bool
    chars_before: int
    chars_after: int
    replacements: int = 0


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What one agent's entry operations did (ids in operation order)."""

    part: MemoryPart
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    merged: tuple[tuple[tuple[str, ...], str], ...] = ()  # (merged ids, new id)
    deleted: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.merged or self.deleted)


# ---------------------------------------------------------------------------------------------
# small pure helpers


def normalise_timestamp(value: str) -> str:
    """ISO 8601 text (``YYYY-MM-DDTHH:MM``, seconds only when present); ``ValueError`` if it does not parse."""
    parsed = datetime.fromisoformat(value.strip())
    return parsed.isoformat(timespec="minutes" if not (parsed.second or parsed.microsecond) else "auto")


def timestamp_key(value: str) -> datetime:
    """A comparable datetime (aware timestamps converted to naive UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def merge_provenance(*groups: Iterable[Provenance]) -> tuple[Provenance, ...]:
    """Union of provenance records: one per session (first-seen order), turn ids deduplicated in order."""
    sessions: dict[str, dict[str, None]] = {}
    for group in groups:
        for record in group:
            sessions.setdefault(record.session_id, {}).update(dict.fromkeys(record.turn_ids))
    return tuple(Provenance(session, tuple(turns)) for session, turns in sessions.items())


def part_of_id(entry_id: str) -> MemoryPart | None:
    """The part an entry id belongs to, from its prefix (``None`` when it has none of ours)."""
    prefix, _, number = entry_id.partition("-")
    return _PART_OF_PREFIX.get(prefix) if number.isdigit() else None


def _op_name(op: object) -> str:
    names = {
        CoreAppend: "APPEND",
        CoreReplace: "REPLACE",
        CoreRewrite: "REWRITE",
        CoreSkip: "SKIP",
        EntryAdd: "ADD",
        EntryUpdate: "UPDATE",
        EntryMerge: "MERGE",
        EntryDelete: "DELETE",
    }
    return names.get(type(op), type(op).__name__)


def _clean_text(value: object, field: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MemoryOperationError(f"{where}: {field} must be a non-empty string, found {value!r}")
    return value.strip()


# ---------------------------------------------------------------------------------------------
# one part's store


class _PartStore:
    """Entries of one part (insertion ordered) + id counter + index; the dict is copied on first write after a fork."""

    __slots__ = ("chars", "entries", "index", "next_id", "owned")

    def __init__(self) -> None:
        self.entries: dict[str, MemoryEntry] = {}
        self.owned = True
        self.next_id = 1
        self.chars = 0
        self.index = PartIndex()

    def fork(self) -> _PartStore:
        other = _PartStore.__new__(_PartStore)
        other.entries, other.next_id, other.chars = self.entries, self.next_id, self.chars
        other.index = self.index.fork()
        other.owned = self.owned = False
        return other

    def writable(self) -> dict[str, MemoryEntry]:
        if not self.owned:
            self.entries = dict(self.entries)
            self.owned = True
        return self.entries

    def put(self, entry: MemoryEntry) -> None:
        entries = self.writable()
        old = entries.get(entry.entry_id)
        self.chars += len(entry.text) - (len(old.text) if old else 0)
        entries[entry.entry_id] = entry
        self.index.put(entry.entry_id, entry.text)

    def remove(self, entry_id: str) -> MemoryEntry:
        entry = self.writable().pop(entry_id)
        self.chars -= len(entry.text)
        self.index.discard(entry_id)
        return entry


# ---------------------------------------------------------------------------------------------
# the bank


class MemoryBank:
    """Core block + episodic/semantic/procedural entries, with cheap snapshots and cosine retrieval.

    An embedder is needed only for ``retrieve``: pass ``cache`` (an ``EmbeddingCache``, e.g. one shared by
    every bank of a stage) or ``embedder`` (wrapped in a new cache; an ``EmbeddingCache`` is used as is).
    Every snapshot shares its bank's cache. ``compressor`` shrinks
    the core block when it passes ``config.core_max_chars`` (default: ``ExtractiveCompressor``; with
    ``config.compression == "llm"`` it must be given, e.g. ``checked_compressor(llm_fn)``).
    """

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        embedder: Embedder | EmbeddingCache | None = None,
        cache: EmbeddingCache | None = None,
        compressor: CoreCompressor | None = None,
    ) -> None:
        if cache is not None and embedder is not None:
            raise ValueError("pass either embedder= or cache=, not both")
        self.config = config or MemoryConfig()
        if compressor is None and self.config.compression == "llm":
            raise ConfigError("memory.compression is 'llm' but no compressor was given; pass checked_compressor(fn)")
        if compressor is None:
            compressor = ExtractiveCompressor()
        elif not isinstance(compressor, (ExtractiveCompressor, CheckedCompressor)):
            compressor = CheckedCompressor(compressor)
        self._compressor: CoreCompressor = compressor
        if embedder is not None:
            cache = embedder if isinstance(embedder, EmbeddingCache) else EmbeddingCache(embedder)
        self._cache = cache
        self._core = ""
        self._core_provenance: tuple[Provenance, ...] = ()
        self._stores: dict[MemoryPart, _PartStore] = {part: _PartStore() for part in ENTRY_PARTS}

    # --- reading -----------------------------------------------------------------------------

    @property
    def core(self) -> str:
        return self._core

    @property
    def core_provenance(self) -> tuple[Provenance, ...]:
        """Sessions (with their turns) whose core operations changed the core block."""
        return self._core_provenance

    @property
    def embedding_cache(self) -> EmbeddingCache | None:
        return self._cache

    def __len__(self) -> int:
        """Number of entries over the three entry parts."""
        return sum(len(store.entries) for store in self._stores.values())

    def entries(self, part: MemoryPart) -> list[MemoryEntry]:
        """The part's entries in insertion order (an UPDATE keeps an entry's place)."""
        return list(self._store(part).entries.values())

    def get(self, entry_id: str) -> MemoryEntry | None:
        part = part_of_id(entry_id)
        return None if part is None else self._stores[part].entries.get(entry_id)

    def next_id(self, part: MemoryPart) -> str:
        """The id the next ADD or MERGE in ``part`` will get."""
        return f"{ID_PREFIX[part]}-{self._store(part).next_id}"

    def composition(self) -> dict[str, int]:
        """Entries per part, core and total characters (for logging)."""
        counts = {part: len(store.entries) for part, store in self._stores.items()}
        entry_chars = sum(store.chars for store in self._stores.values())
        return {
            **counts,
            "entries": sum(counts.values()),
            "core_chars": len(self._core),
            "entry_chars": entry_chars,
            "total_chars": len(self._core) + entry_chars,
        }

    def _store(self, part: str) -> _PartStore:
        store = self._stores.get(part)  # type: ignore[call-overload]
        if store is None:
            raise ValueError(f"unknown entry part {part!r}; expected one of {', '.join(ENTRY_PARTS)}")
        return store

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> MemoryBank:
        """An independent copy in O(1): both sides share storage until either writes (copy-on-write)."""
        other = MemoryBank.__new__(MemoryBank)
        other.config, other._compressor, other._cache = self.config, self._compressor, self._cache
        other._core, other._core_provenance = self._core, self._core_provenance
        other._stores = {part: store.fork() for part, store in self._stores.items()}
        return other

    # --- core --------------------------------------------------------------------------------

    def apply_core(self, op: CoreOperation, *, session_id: str, turn_ids_all: Sequence[str]) -> CoreResult:
        """Apply the core agent's operation; ``MemoryOperationError`` (bank unchanged) if it cannot apply.

        APPEND adds a line; REPLACE replaces every occurrence of ``old`` (which must occur); REWRITE replaces
        the block. A result over ``core_max_chars`` is compressed below ``core_compress_to_chars``.
        """
        name = _op_name(op)
        where = f"core {name}"
        before = self._core
        replacements = 0
        if isinstance(op, CoreSkip):
            return CoreResult(name, False, False, len(before), len(before))
        if isinstance(op, CoreAppend):
            text = _clean_text(op.text, "text", where)
            after = f"{before}\n{text}" if before else text
        elif isinstance(op, CoreReplace):
            old, new = _clean_text(op.old, "old", where), _clean_text(op.new, "new", where)
            replacements = before.count(old)
            if not replacements:
                raise MemoryOperationError(f"{where}: 'old' text {old!r} does not occur in the core block")
            after = before.replace(old, new)
        elif isinstance(op, CoreRewrite):
            after = _clean_text(op.text, "text", where)
        else:
            raise MemoryOperationError(f"not a core operation: {op!r}")
        compressed = len(after) > self.config.core_max_chars
        if compressed:
            after = self._compress(after)
        if after != before:
            self._core = after
            self._core_provenance = merge_provenance(
                self._core_provenance, [Provenance(session_id, tuple(turn_ids_all))]
            )
        return CoreResult(name, after != before, compressed, len(before), len(after), replacements)

    def _compress(self, text: str) -> str:
        target = self.config.core_compress_to_chars
        result = self._compressor(text, target)
        if len(result) >= target:
            raise MemoryOperationError(f"core compression returned {len(result)} chars, expected fewer than {target}")
        return result

    # --- entries -----------------------------------------------------------------------------

    def apply_entries(
        self,
        part: MemoryPart,
        ops: Sequence[EntryOperation],
        *,
        session_id: str,
        session_timestamp: str,
        session_turn_ids: Sequence[str],
    ) -> EntryResult:
        """Apply one agent's operations all-or-nothing; ``MemoryOperationError`` leaves the bank untouched."""
        store = self._store(part)
        try:
            session_time = normalise_timestamp(session_timestamp)
        except (TypeError, ValueError, AttributeError):
            raise MemoryOperationError(
                f"session {session_id}: timestamp {session_timestamp!r} is not ISO 8601"
            ) from None
        turns_all = tuple(session_turn_ids)
        planned = self._validate_entries(part, store, ops, session_id, frozenset(turns_all))
        return self._apply_planned(part, store, planned, session_id, session_time, turns_all)

    def _validate_entries(
        self,
        part: MemoryPart,
        store: _PartStore,
        ops: Sequence[EntryOperation],
        session_id: str,
        session_turns: frozenset[str],
    ) -> list[EntryOperation]:
        """Check every operation against the bank and the operations before it; returns cleaned operations."""
        gone: dict[str, str] = {}  # id -> what removed it earlier in this list
        cleaned: list[EntryOperation] = []
        for number, op in enumerate(ops, 1):
            where = f"{part} operation {number} of {len(ops)} ({_op_name(op)})"
            if isinstance(op, EntryDelete):
                cleaned.append(EntryDelete(self._check_live(part, store, op.entry_id, gone, where)))
                gone[op.entry_id] = f"deleted by operation {number}"
                continue
            if not isinstance(op, (EntryAdd, EntryUpdate, EntryMerge)):
                raise MemoryOperationError(f"{part} operation {number}: not an entry operation: {op!r}")
            text = _clean_text(op.text, "text", where)
            turns = self._check_turns(op.turn_ids, session_turns, session_id, where)
            if isinstance(op, EntryAdd):
                cleaned.append(EntryAdd(text, self._check_date(op.timestamp, where), turns))
            elif isinstance(op, EntryUpdate):
                cleaned.append(EntryUpdate(self._check_live(part, store, op.entry_id, gone, where), text, turns))
            else:
                raw = tuple(op.entry_ids) if isinstance(op.entry_ids, (tuple, list)) else ()
                ids = tuple(self._check_live(part, store, entry_id, gone, where) for entry_id in raw)
                if len(ids) < 2 or len(set(ids)) != len(ids):
                    raise MemoryOperationError(
                        f"{where}: needs at least two distinct entry ids, found {op.entry_ids!r}"
                    )
                cleaned.append(EntryMerge(ids, text, turns))
                gone.update(dict.fromkeys(ids, f"merged by operation {number}"))
        return cleaned

    def _check_live(
        self, part: MemoryPart, store: _PartStore, entry_id: object, gone: Mapping[str, str], where: str
    ) -> str:
        if not isinstance(entry_id, str):
            raise MemoryOperationError(f"{where}: entry id must be a string, found {entry_id!r}")
        if entry_id in gone:
            raise MemoryOperationError(f"{where}: entry {entry_id!r} was {gone[entry_id]}")
        if entry_id not in store.entries:
            other = part_of_id(entry_id)
            if other is not None and other != part and self.get(entry_id) is not None:
                raise MemoryOperationError(f"{where}: entry {entry_id!r} belongs to {other} memory, not {part}")
            raise MemoryOperationError(f"{where}: entry {entry_id!r} does not exist in {part} memory")
        return entry_id

    @staticmethod
    def _check_turns(turns: object, session_turns: frozenset[str], session_id: str, where: str) -> tuple[str, ...]:
        if not isinstance(turns, (tuple, list)):
            raise MemoryOperationError(f"{where}: turn ids must be a tuple of strings, found {turns!r}")
        unknown = [turn for turn in turns if not isinstance(turn, str) or turn not in session_turns]
        if unknown:
            raise MemoryOperationError(
                f"{where}: turn id(s) {', '.join(map(repr, unknown))} are not turns of session {session_id!r}"
            )
        return tuple(dict.fromkeys(turns))

    @staticmethod
    def _check_date(value: object, where: str) -> str | None:
        if value is None:
            return None
        try:
            return normalise_timestamp(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, AttributeError):
            raise MemoryOperationError(f"{where}: date {value!r} is not ISO 8601 (YYYY-MM-DD)") from None

    def _apply_planned(
        self,
        part: MemoryPart,
        store: _PartStore,
        ops: list[EntryOperation],
        session_id: str,
        session_time: str,
        turns_all: tuple[str, ...],
    ) -> EntryResult:
        added: list[str] = []
        updated: list[str] = []
        merged: list[tuple[tuple[str, ...], str]] = []
        deleted: list[str] = []

        def source(turns: tuple[str, ...]) -> tuple[Provenance, ...]:
            return (Provenance(session_id, turns or turns_all),)

        for op in ops:
            if isinstance(op, EntryAdd):
                entry = self._new_entry(part, store, op.text, op.timestamp or session_time, source(op.turn_ids))
                added.append(entry.entry_id)
            elif isinstance(op, EntryUpdate):
                old = store.entries[op.entry_id]
                provenance = merge_provenance(old.provenance, source(op.turn_ids))
                store.put(MemoryEntry(old.entry_id, part, op.text, old.timestamp, provenance))
                updated.append(op.entry_id)
            elif isinstance(op, EntryMerge):
                olds = [store.remove(entry_id) for entry_id in op.entry_ids]
                provenance = merge_provenance(*(old.provenance for old in olds), source(op.turn_ids))
                latest = max((old.timestamp for old in olds), key=timestamp_key)
                entry = self._new_entry(part, store, op.text, latest, provenance)
                merged.append((op.entry_ids, entry.entry_id))
            else:
                assert isinstance(op, EntryDelete)
                store.remove(op.entry_id)
                deleted.append(op.entry_id)
        return EntryResult(part, tuple(added), tuple(updated), tuple(merged), tuple(deleted))

    @staticmethod
    def _new_entry(
        part: MemoryPart, store: _PartStore, text: str, timestamp: str, provenance: tuple[Provenance, ...]
    ) -> MemoryEntry:
        entry = MemoryEntry(f"{ID_PREFIX[part]}-{store.next_id}", part, text, timestamp, provenance)
        store.next_id += 1
        store.put(entry)
        return entry

    # --- retrieval ---------------------------------------------------------------------------

    def retrieve(
        self, query: str | Sequence[str], *, parts: Sequence[MemoryPart] = ENTRY_PARTS, k: int | None = None
    ) -> list[list[RetrievedEntry]]:
        """Per query, the ``k`` (default ``config.top_k``) entries of ``parts`` most cosine-similar to it, best first.

        Entries added or changed since the last search are embedded first, together with the queries, in
        one batched call through the embedding cache; unchanged entries are never embedded again.
        """
        queries, parts = self._prepare_search(query, parts)
        if not queries:
            return []
        vectors = self._embed_for_search(parts, queries)
        return search(((p, self._stores[p].index) for p in parts), vectors, self._k(k), self._lookup(parts))

    def retrieve_by_part(
        self, query: str | Sequence[str], *, parts: Sequence[MemoryPart] = ENTRY_PARTS, k: int | None = None
    ) -> list[dict[MemoryPart, list[RetrievedEntry]]]:
        """Per query, the top ``k`` of each part separately (how MemBuilder fills a prompt)."""
        queries, parts = self._prepare_search(query, parts)
        if not queries:
            return []
        vectors = self._embed_for_search(parts, queries)
        lookup, k_value = self._lookup(parts), self._k(k)
        per_part = {part: search([(part, self._stores[part].index)], vectors, k_value, lookup) for part in parts}
        return [{part: per_part[part][row] for part in parts} for row in range(len(queries))]

    def embed_pending(self, parts: Sequence[MemoryPart] = ENTRY_PARTS) -> int:
        """Embed entries added or changed since the last search now (one batched call); returns how many.

        Call it on a pre-session bank before taking several snapshots, so they share the new rows
        instead of each committing its own copy of them.
        """
        _, parts = self._prepare_search([], parts)
        count = sum(len(self._stores[part].index.pending) for part in parts)
        if count:
            self._embed_for_search(parts, [])
        return count

    def _prepare_search(
        self, query: str | Sequence[str], parts: Sequence[MemoryPart]
    ) -> tuple[list[str], tuple[MemoryPart, ...]]:
        if self._cache is None:
            raise ValueError("this memory bank has no embedder: pass cache= or embedder= to MemoryBank to retrieve")
        for part in parts:
            self._store(part)
        queries = [query] if isinstance(query, str) else list(query)
        return queries, tuple(dict.fromkeys(parts))

    def _k(self, k: int | None) -> int:
        return self.config.top_k if k is None else k

    def _lookup(self, parts: Sequence[MemoryPart]) -> dict[MemoryPart, Mapping[str, MemoryEntry]]:
        return {part: self._stores[part].entries for part in parts}

    def _embed_for_search(self, parts: Sequence[MemoryPart], queries: list[str]) -> np.ndarray:
        """Embed the parts' pending entries and the queries in one cache call; commit the entry rows."""
        assert self._cache is not None
        pending = [(part, list(self._stores[part].index.pending.items())) for part in parts]
        texts = [text for _, items in pending for _, text in items] + queries
        vectors = self._cache.embed(texts)
        start = 0
        for part, items in pending:
            self._stores[part].index.add_vectors(
                [entry_id for entry_id, _ in items], vectors[start : start + len(items)]
            )
            start += len(items)
        return vectors[start:]

    # --- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The bank as plain JSON-ready data (no embeddings: they are recomputed, through the cache)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "core": self._core,
            "core_provenance": [_provenance_to_dict(p) for p in self._core_provenance],
            "next_ids": {part: store.next_id for part, store in self._stores.items()},
            "entries": {
                part: [_entry_to_dict(entry) for entry in store.entries.values()]
                for part, store in self._stores.items()
            },
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bank as JSON atomically (temp file + rename)."""
        from components.io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(
        cls,
        obj: Any,
        config: MemoryConfig | None = None,
        *,
        embedder: Embedder | EmbeddingCache | None = None,
        cache: EmbeddingCache | None = None,
        compressor: CoreCompressor | None = None,
        source: str | os.PathLike[str] = "<memory bank>",
    ) -> MemoryBank:
        """Rebuild a bank from ``to_dict`` data; anything off is a ``MemoryLoadError`` naming ``source``."""
        bank = cls(config, embedder=embedder, cache=cache, compressor=compressor)
        try:
            _fill_from_dict(bank, obj)
        except _SchemaError as exc:
            raise MemoryLoadError(source, exc.reason, exc.record) from None
        return bank

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        config: MemoryConfig | None = None,
        *,
        embedder: Embedder | EmbeddingCache | None = None,
        cache: EmbeddingCache | None = None,
        compressor: CoreCompressor | None = None,
    ) -> MemoryBank:
        """Read a bank written by ``save``; a missing, corrupt or wrong-schema file is a ``MemoryLoadError``."""
        from components.io import read_text_strict

        file = Path(path)
        try:
            text = read_text_strict(file)
        except InputError as exc:
            raise MemoryLoadError(file, exc.reason, exc.record) from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MemoryLoadError(file, f"malformed JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
        return cls.from_dict(obj, config, embedder=embedder, cache=cache, compressor=compressor, source=file)


# ---------------------------------------------------------------------------------------------
# (de)serialisation


class _SchemaError(Exception):
    def __init__(self, reason: str, record: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.record = reason, record


def _provenance_to_dict(record: Provenance) -> dict[str, Any]:
    return {"session_id": record.session_id, "turn_ids": list(record.turn_ids)}


def _entry_to_dict(entry: MemoryEntry) -> dict[str, Any]:
    return {
        "id": entry.entry_id,
        "text": entry.text,
        "timestamp": entry.timestamp,
        "provenance": [_provenance_to_dict(p) for p in entry.provenance],
    }


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _SchemaError(f"{where}: expected {names}, found {type(value).__name__}", where)
    return value


def _keys(obj: Any, where: str, keys: set[str]) -> dict[str, Any]:
    _expect(obj, dict, where)
    missing, unknown = sorted(keys - set(obj)), sorted(set(obj) - keys)
    if missing or unknown:
        detail = "; ".join(
            text
            for text in (
                f"missing key(s) {', '.join(missing)}" if missing else "",
                f"unknown key(s) {', '.join(unknown)}" if unknown else "",
            )
            if text
        )
        raise _SchemaError(f"{where}: {detail}", where)
    return obj


def _provenance_from(value: Any, where: str) -> tuple[Provenance, ...]:
    records = []
    for index, item in enumerate(_expect(value, list, where)):
        at = f"{where}[{index}]"
        _keys(item, at, {"session_id", "turn_ids"})
        turns = _expect(item["turn_ids"], list, f"{at}.turn_ids")
        for turn_index, turn in enumerate(turns):
            _expect(turn, str, f"{at}.turn_ids[{turn_index}]")
        records.append(Provenance(_expect(item["session_id"], str, f"{at}.session_id"), tuple(turns)))
    return tuple(records)


def _entry_from(item: Any, part: MemoryPart, where: str) -> MemoryEntry:
    _keys(item, where, {"id", "text", "timestamp", "provenance"})
    entry_id = _expect(item["id"], str, f"{where}.id")
    if part_of_id(entry_id) != part:
        raise _SchemaError(f"{where}.id: {entry_id!r} is not a {part} id ({ID_PREFIX[part]}-N)", where)
    text = _expect(item["text"], str, f"{where}.text")
    if not text.strip():
        raise _SchemaError(f"{where}.text: empty entry text", where)
    timestamp = _expect(item["timestamp"], str, f"{where}.timestamp")
    try:
        timestamp_key(timestamp)
    except ValueError:
        raise _SchemaError(f"{where}.timestamp: {timestamp!r} is not ISO 8601", where) from None
    return MemoryEntry(entry_id, part, text, timestamp, _provenance_from(item["provenance"], f"{where}.provenance"))


def _fill_from_dict(bank: MemoryBank, obj: Any) -> None:
    _expect(obj, dict, "top level")
    if obj.get("format") != FORMAT:
        raise _SchemaError(f"not a memforge memory bank (format {obj.get('format')!r}, expected {FORMAT!r})")
    if obj.get("version") != FORMAT_VERSION:
        raise _SchemaError(f"unsupported format version {obj.get('version')!r} (this memforge reads {FORMAT_VERSION})")
    _keys(obj, "top level", {"format", "version", "core", "core_provenance", "next_ids", "entries"})
    bank._core = _expect(obj["core"], str, "core")
    bank._core_provenance = _provenance_from(obj["core_provenance"], "core_provenance")
    next_ids = _keys(obj["next_ids"], "next_ids", set(ENTRY_PARTS))
    entries = _keys(obj["entries"], "entries", set(ENTRY_PARTS))
    for part in ENTRY_PARTS:
        store = bank._stores[part]
        next_id = _expect(next_ids[part], int, f"next_ids.{part}")
        for index, item in enumerate(_expect(entries[part], list, f"entries.{part}")):
            where = f"entries.{part}[{index}]"
            entry = _entry_from(item, part, where)
            if entry.entry_id in store.entries:
                raise _SchemaError(f"{where}.id: duplicate id {entry.entry_id!r}", where)
            if int(entry.entry_id.partition("-")[2]) >= next_id:
                raise _SchemaError(f"{where}.id: {entry.entry_id!r} is not below next_ids.{part} = {next_id}", where)
            store.put(entry)
        store.next_id = next_id
