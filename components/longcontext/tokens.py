"""Token lengths as the reader sees them, counted fast enough for the paper's 3.5M-token inputs.

The reader tokenises an input piece by piece (``token_stream``: ``encode(piece)`` for the first piece,
``encode(separator + piece)`` after), so the length of an input is the sum of its pieces' counts. A numbered
(HotpotQA or SQuAD) piece is ``"Document {i}:\\n"`` + ``"{title}\\n{text}"``; its count is taken as header count
(cached per position) + body count (cached per document), which is exact for tokenisers that never merge across a
newline (byte-level BPE: SmolLM2, Qwen, Llama 3). ``TokenCounter`` checks that on ``verify`` pieces of every
input (spread from its first to its last piece) by encoding them whole; on any mismatch it switches to encoding
every piece whole (exact, slower) and says so in ``method``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from components.errors import ModelLoadError
from components.longcontext.schema import SEPARATOR
from components.longcontext.store import DOCUMENT_HEADER, document_body

log = logging.getLogger("memforge")

EncodeBatch = Callable[[Sequence[str]], list[list[int]]]
BATCH = 512


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer of a prepared model folder (``model.output_dir``); a missing folder says how to make it."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelLoadError(
            f"{path}: model folder not found; the long-context sets are measured with the base model's tokenizer, "
            "so run `memforge stage prepare_model` (or `dvc repro prepare_model`) first"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelLoadError(f"{path}: no tokenizer (tokenizer.json / tokenizer_config.json)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # tokenizers raises a bare Exception on a bad tokenizer.json
        raise ModelLoadError(f"{path}: cannot load the tokenizer: {type(exc).__name__}: {exc}") from exc


def batch_encoder(tokenizer: Any) -> EncodeBatch:
    """Encode many texts in one call (fast tokenizers run the batch natively), no special tokens."""

    def encode_batch(texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return encode_batch


class TokenCounter:
    """Counts of pieces as ``token_stream`` would produce them; see the module docstring for the method."""

    def __init__(self, encode_batch: EncodeBatch, separator: str = SEPARATOR, verify: int = 8) -> None:
        self._encode_batch = encode_batch
        self.separator = separator
        self._verify_per_input = verify
        self.verified = 0
        self.exact = False
        self._bodies: dict[int, int] = {}
        self._headers: list[int] = []  # _headers[i - 1] = tokens of the header of document i (i > 1: with sep)
        self._header_prefix: list[int] = [0]
        self._pieces: dict[tuple[int, bool], int] = {}

    @property
    def method(self) -> str:
        if self.exact:
            return "exact: every piece encoded whole (header + body counts did not add up for this tokenizer)"
        return f"header + body counts per piece, checked against whole-piece encoding on {self.verified} pieces"

    def count(self, text: str) -> int:
        return len(self._encode_batch([text])[0])

    def prepare_bodies(
        self, docs: Iterable[tuple[int, str, str]], on_batch: Callable[[int], None] | None = None
    ) -> None:
        """Cache the body counts of ``(doc_id, title, text)`` documents, in batches."""
        batch: list[tuple[int, str]] = []
        for doc_id, title, text in docs:
            if doc_id not in self._bodies:
                batch.append((doc_id, document_body(title, text)))
            if len(batch) >= BATCH:
                self._count_bodies(batch, on_batch)
                batch = []
        self._count_bodies(batch, on_batch)

    def _count_bodies(self, batch: list[tuple[int, str]], on_batch: Callable[[int], None] | None) -> None:
        if not batch:
            return
        for (doc_id, _), ids in zip(batch, self._encode_batch([body for _, body in batch]), strict=True):
            self._bodies[doc_id] = len(ids)
        if on_batch is not None:
            on_batch(len(batch))

    def _header_sum(self, n: int) -> int:
        """Tokens of the headers of documents 1..n (with the separator before each but the first)."""
        while len(self._headers) < n:
            start = len(self._headers) + 1
            stop = min(n, start + 4 * BATCH - 1)
            texts = [self._header_text(i) for i in range(start, stop + 1)]
            for ids in self._encode_batch(texts):
                self._headers.append(len(ids))
                self._header_prefix.append(self._header_prefix[-1] + len(ids))
        return self._header_prefix[n]

    def _header_text(self, index: int) -> str:
        return ("" if index == 1 else self.separator) + DOCUMENT_HEADER.format(i=index)

    def documents(self, docs: Sequence[tuple[int, str, str]]) -> int:
        """Tokens of numbered pieces ``Document 1..n`` for ``(doc_id, title, text)`` in reading order."""
        if not self.exact:
            self._verify(docs)
        if self.exact:
            texts = [self._header_text(i) + document_body(t, x) for i, (_, t, x) in enumerate(docs, start=1)]
            return sum(
                len(ids)
                for start in range(0, len(texts), BATCH)
                for ids in self._encode_batch(texts[start : start + BATCH])
            )
        self.prepare_bodies(docs)
        return self._header_sum(len(docs)) + sum(self._bodies[doc_id] for doc_id, _, _ in docs)

    def _verify(self, docs: Sequence[tuple[int, str, str]]) -> None:
        """Encode up to ``verify`` pieces spread over the input (first and last included) whole."""
        take = min(len(docs), self._verify_per_input)
        if take == 0:
            return
        positions = sorted({round(k * (len(docs) - 1) / max(take - 1, 1)) for k in range(take)})
        chosen = [(p + 1, docs[p]) for p in positions]
        self.prepare_bodies(d for _, d in chosen)
        self._header_sum(positions[-1] + 1)
        whole = self._encode_batch([self._header_text(i) + document_body(t, x) for i, (_, t, x) in chosen])
        for (i, (doc_id, _, _)), ids in zip(chosen, whole, strict=True):
            if len(ids) != self._headers[i - 1] + self._bodies[doc_id]:
                log.warning("longcontext: piece counts are not additive for this tokenizer; counting exactly")
                self.exact = True
                break
        self.verified += len(chosen)

    def cached(self, key: int, first: bool) -> int | None:
        """The count of the piece cached under ``key`` (and first-or-not), if counted before."""
        return self._pieces.get((key, first))

    def piece_counts(self, items: Sequence[tuple[str, int | None, bool]]) -> list[int]:
        """Counts of ``(text, cache key, is first piece)``, encoded as ``token_stream`` does (separator before
        all but the first); a piece with a cache key (a doc id) is encoded once."""
        counts: list[int | None] = [None if key is None else self._pieces.get((key, first)) for _, key, first in items]
        todo = [i for i, c in enumerate(counts) if c is None]
        for start in range(0, len(todo), BATCH):
            part = todo[start : start + BATCH]
            texts = [items[i][0] if items[i][2] else self.separator + items[i][0] for i in part]
            for i, ids in zip(part, self._encode_batch(texts), strict=True):
                counts[i] = len(ids)
                _, key, first = items[i]
                if key is not None:
                    self._pieces[(key, first)] = len(ids)
        return [int(c or 0) for c in counts]

    def pieces(self, texts: Sequence[str], cache_keys: Sequence[int | None] | None = None) -> int:
        """Tokens of a whole input given as pieces in reading order (``cache_keys``: doc ids of unchanged pieces)."""
        keys = list(cache_keys) if cache_keys is not None else [None] * len(texts)
        return sum(self.piece_counts([(t, k, i == 0) for i, (t, k) in enumerate(zip(texts, keys, strict=True))]))
