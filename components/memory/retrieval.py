"""Cosine top-k over memory entries: a per-part embedding matrix shared copy-on-write across snapshots.

``PartIndex`` holds one part's embeddings as an LSM-style stack:

* **segments**: frozen, read-only ``(n, d)`` float32 blocks with their entry ids. Every snapshot shares them;
  nothing ever writes to one. A deleted row is hidden by a per-segment ``alive`` mask (copied on the first
  delete after a fork, a few KB, never the vectors).
* **tail**: a small private block (at most ``TAIL_ROWS`` rows) that new embeddings are appended to; a delete
  there swaps the last row in. A fork shares the tail until one side writes, which then copies it (<= 1.5 MB).
  A full tail is frozen into a segment, and adjacent segments are merged binary-counter style (dropping dead
  rows), so there are O(log n) segments and each row is copied O(log n) times in all.
* **pending**: entries added or updated since the last search, embedded lazily in one batched call (through
  the bank's ``EmbeddingCache``) when the part is next searched.

A search is one matrix product per segment, dead rows set to -inf, then ``np.argpartition`` for the top k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from components.memory.types import MemoryEntry, MemoryPart

TAIL_ROWS = 1024


@dataclass(frozen=True, slots=True)
class RetrievedEntry:
    """One search hit: the entry (with its provenance), its cosine similarity to the query, and its part."""

    entry: MemoryEntry
    score: float
    part: MemoryPart


@dataclass(frozen=True, slots=True, eq=False)
class _Segment:
    vectors: np.ndarray  # (n, d) float32, read-only
    ids: tuple[str, ...]
    row_of: Mapping[str, int]  # never mutated after construction


def _frozen(matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    matrix.flags.writeable = False
    return matrix


def _segment(vectors: np.ndarray, ids: Sequence[str]) -> _Segment:
    ids = tuple(ids)
    return _Segment(_frozen(vectors), ids, {entry_id: row for row, entry_id in enumerate(ids)})


class PartIndex:
    """Embeddings of one part's entries; ``fork()`` is O(1) and both sides stay independent."""

    def __init__(self) -> None:
        self._segments: tuple[_Segment, ...] = ()
        self._alive: list[np.ndarray | None] = []  # per segment; None = all rows alive
        self._alive_owned: set[int] = set()  # segment positions whose mask this index may write
        self._tail: np.ndarray | None = None  # (capacity, d)
        self._tail_ids: list[str] = []
        self._tail_row: dict[str, int] = {}
        self._tail_owned = True
        self._pending: dict[str, str] = {}  # entry id -> text awaiting an embedding
        self._pending_owned = True
        self._size = 0  # rows alive in segments + tail

    # --- copy-on-write -----------------------------------------------------------------------

    def fork(self) -> PartIndex:
        """An independent index sharing every array with this one until either side writes."""
        other = PartIndex.__new__(PartIndex)
        other._segments = self._segments
        other._alive = list(self._alive)
        other._alive_owned = set()
        self._alive_owned = set()
        other._tail, other._tail_ids, other._tail_row = self._tail, self._tail_ids, self._tail_row
        other._pending = self._pending
        other._tail_owned = other._pending_owned = False
        self._tail_owned = self._pending_owned = False
        other._size = self._size
        return other

    def _own_tail(self) -> None:
        if not self._tail_owned:
            if self._tail is not None:  # copy the used rows only; the capacity stays
                used = len(self._tail_ids)
                tail = np.empty_like(self._tail)
                tail[:used] = self._tail[:used]
                self._tail = tail
            self._tail_ids = list(self._tail_ids)
            self._tail_row = dict(self._tail_row)
            self._tail_owned = True

    def _own_pending(self) -> dict[str, str]:
        if not self._pending_owned:
            self._pending = dict(self._pending)
            self._pending_owned = True
        return self._pending

    # --- bookkeeping -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries known to the index (embedded or pending)."""
        return self._size + len(self._pending)

    @property
    def pending(self) -> Mapping[str, str]:
        return self._pending

    @property
    def segment_sizes(self) -> list[int]:
        return [len(segment.ids) for segment in self._segments]

    def put(self, entry_id: str, text: str) -> None:
        """Record an added or re-texted entry; its embedding is computed on the next search."""
        self.discard(entry_id)
        self._own_pending()[entry_id] = text

    def discard(self, entry_id: str) -> None:
        """Forget ``entry_id`` (no-op when absent)."""
        if entry_id in self._pending:
            del self._own_pending()[entry_id]
            return
        if entry_id in self._tail_row:
            self._drop_tail_row(entry_id)
            return
        for position, segment in enumerate(self._segments):
            row = segment.row_of.get(entry_id)
            if row is None:
                continue
            mask = self._alive[position]
            if mask is not None and not mask[row]:
                continue  # already dead here; a newer copy may live in a later segment
            if mask is None or position not in self._alive_owned:
                mask = np.ones(len(segment.ids), dtype=bool) if mask is None else mask.copy()
                self._alive[position] = mask
                self._alive_owned.add(position)
            mask[row] = False
            self._size -= 1
            return

    def _drop_tail_row(self, entry_id: str) -> None:
        self._own_tail()
        assert self._tail is not None
        row = self._tail_row.pop(entry_id)
        last = len(self._tail_ids) - 1
        if row != last:
            moved = self._tail_ids[last]
            self._tail[row] = self._tail[last]
            self._tail_ids[row] = moved
            self._tail_row[moved] = row
        self._tail_ids.pop()
        self._size -= 1

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append embedded rows for ``ids`` (removing them from pending)."""
        if not ids:
            return
        pending = self._own_pending()
        for entry_id in ids:
            pending.pop(entry_id, None)
        self._own_tail()
        vectors = np.asarray(vectors, dtype=np.float32)
        start = 0
        while start < len(ids):
            room = self._ensure_room(vectors.shape[1], len(ids) - start)
            stop = start + room
            base = len(self._tail_ids)
            assert self._tail is not None
            self._tail[base : base + room] = vectors[start:stop]
            for offset, entry_id in enumerate(ids[start:stop]):
                self._tail_row[entry_id] = base + offset
            self._tail_ids.extend(ids[start:stop])
            self._size += room
            start = stop

    def _ensure_room(self, dim: int, wanted: int) -> int:
        """Grow (or freeze) the tail so that some rows fit; returns how many of ``wanted`` fit now."""
        if self._tail is not None and self._tail.shape[1] != dim:
            raise ValueError(f"embedding dimension changed from {self._tail.shape[1]} to {dim}")
        used = len(self._tail_ids)
        if used == TAIL_ROWS:
            self._freeze_tail()
            used = 0
        capacity = 0 if self._tail is None else self._tail.shape[0]
        if used + wanted > capacity and capacity < TAIL_ROWS:
            grown = np.empty((min(TAIL_ROWS, max(64, 2 * capacity, used + wanted)), dim), dtype=np.float32)
            if self._tail is not None:
                grown[:used] = self._tail[:used]
            self._tail = grown
        assert self._tail is not None
        return min(wanted, self._tail.shape[0] - used)

    def _freeze_tail(self) -> None:
        """Turn the full tail into a segment and merge segments binary-counter style."""
        assert self._tail is not None  # owned here: nobody else holds it, so it is frozen without a copy
        segments = [*self._segments, _segment(self._tail[: len(self._tail_ids)], self._tail_ids)]
        alive: list[np.ndarray | None] = [*self._alive, None]
        while len(segments) >= 2 and _live(segments[-2], alive[-2]) <= 2 * _live(segments[-1], alive[-1]):
            segments[-2:], alive[-2:] = [_merge(segments[-2:], alive[-2:])], [None]
        for position, (segment, mask) in enumerate(zip(segments, alive, strict=True)):
            if mask is not None and 2 * _live(segment, mask) < len(segment.ids):  # mostly dead: rewrite it
                segments[position], alive[position] = _merge([segment], [mask]), None
        owned = {id(self._alive[i]) for i in self._alive_owned}
        kept = [(segment, mask) for segment, mask in zip(segments, alive, strict=True) if segment.ids]
        self._segments = tuple(segment for segment, _ in kept)
        self._alive = [mask for _, mask in kept]
        self._alive_owned = {i for i, mask in enumerate(self._alive) if mask is not None and id(mask) in owned}
        self._tail_ids, self._tail_row = [], {}
        self._tail = np.empty((TAIL_ROWS, self._tail.shape[1]), dtype=np.float32)
        self._tail_owned = True

    # --- search ------------------------------------------------------------------------------

    def scores(self, queries: np.ndarray) -> tuple[np.ndarray, list[tuple[int, Sequence[str]]]]:
        """Cosine scores ``(m, n)`` of every embedded row (dead rows -inf) and the column -> id blocks."""
        blocks: list[np.ndarray] = []
        names: list[tuple[int, Sequence[str]]] = []
        offset = 0
        for segment, mask in zip(self._segments, self._alive, strict=True):
            block = queries @ segment.vectors.T
            if mask is not None:
                block[:, ~mask] = -np.inf
            blocks.append(block)
            names.append((offset, segment.ids))
            offset += len(segment.ids)
        if self._tail_ids:
            assert self._tail is not None
            blocks.append(queries @ self._tail[: len(self._tail_ids)].T)
            names.append((offset, self._tail_ids))
        if not blocks:
            return np.zeros((queries.shape[0], 0), dtype=np.float32), names
        return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)), names


def _live(segment: _Segment, mask: np.ndarray | None) -> int:
    return len(segment.ids) if mask is None else int(mask.sum())


def _merge(segments: Sequence[_Segment], masks: Sequence[np.ndarray | None]) -> _Segment:
    vectors = [s.vectors if m is None else s.vectors[m] for s, m in zip(segments, masks, strict=True)]
    ids: list[str] = []
    for segment, mask in zip(segments, masks, strict=True):
        ids.extend(segment.ids if mask is None else (i for i, keep in zip(segment.ids, mask, strict=True) if keep))
    return _segment(np.concatenate(vectors, axis=0), ids)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices and scores of the ``k`` best columns, best first (-inf columns dropped later)."""
    n = scores.shape[1]
    if k >= n:
        columns = np.argsort(-scores, axis=1, kind="stable")
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        columns = np.take_along_axis(part, order, axis=1)
    return columns, np.take_along_axis(scores, columns, axis=1)


def search(
    indexes: Iterable[tuple[MemoryPart, PartIndex]],
    queries: np.ndarray,
    k: int,
    lookup: Mapping[MemoryPart, Mapping[str, MemoryEntry]],
) -> list[list[RetrievedEntry]]:
    """Top-``k`` entries over the given parts for each query row (all embeddings must be committed)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    blocks: list[np.ndarray] = []
    names: list[tuple[int, MemoryPart, Sequence[str]]] = []
    offset = 0
    for part, index in indexes:
        block, spans = index.scores(queries)
        blocks.append(block)
        names.extend((offset + start, part, ids) for start, ids in spans)
        offset += block.shape[1]
    if not blocks or offset == 0:
        return [[] for _ in range(queries.shape[0])]
    scores = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    columns, best = top_k(scores, k)
    starts = np.array([start for start, _, _ in names])
    results: list[list[RetrievedEntry]] = []
    for row_columns, row_scores in zip(columns, best, strict=True):
        hits: list[RetrievedEntry] = []
        for column, score in zip(row_columns.tolist(), row_scores.tolist(), strict=True):
            if score == -np.inf:
                break
            block = int(np.searchsorted(starts, column, side="right")) - 1
            start, part, ids = names[block]
            hits.append(RetrievedEntry(lookup[part][ids[column - start]], float(score), part))
        results.append(hits)
    return results
