"""The document pool and the two ways to read a sample: streamed piece by piece, or as one (truncated) text.

``iter_context(sample, store)`` yields the input one piece at a time, so the MemAgent reader
(``components.agent.chunking.token_stream`` / ``chunk_ids``) streams millions of tokens while holding one piece:

- HotpotQA and SQuAD: ``"Document {i}:\\n{title}\\n{text}"`` for ``i = 1..length_docs`` (RULER's and MemAgent's
  layout; a SQuAD paragraph's title is its article's);
- needle tasks: the essay passages, with each needle sentence inserted at its recorded sentence boundary.

``context_text(sample, store)`` is ``SEPARATOR.join(iter_context(sample, store))`` exactly. With ``max_tokens`` it
is the full-context baseline's input: when the stream is longer than ``max_tokens`` tokens, the MIDDLE is cut (the
first ``max_tokens // 2`` and the last ``max_tokens - max_tokens // 2`` tokens are kept, as LongBench and MemAgent's
baselines do), so the start and the end of the input survive and a model with a short window sees both. The result
re-encodes to at most ``max_tokens`` tokens; memory stays within one window of token ids.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from components.errors import InputError
from components.longcontext.schema import SEPARATOR, Document, LongContextSample, document_from_dict

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]

DOCUMENTS_FILE = "documents.jsonl"
DOCUMENT_HEADER = "Document {i}:\n"


class LongContextStore:
    """Read-only, lazily indexed ``documents.jsonl``: an offset per ``doc_id``, texts read on demand (LRU-cached).

    Opening scans the file once to validate every record and index it (bad JSON, a bad field or a repeated id is an
    ``InputError`` with the line); only offsets stay in memory, so a pool of any size costs a few bytes per document.
    """

    def __init__(self, path: str | os.PathLike[str], cache_size: int = 4096) -> None:
        self.path = Path(path)
        self._cache_size = cache_size
        self._cache: OrderedDict[int, Document] = OrderedDict()
        self._lock = threading.Lock()
        self._offsets = self._index()
        self._handle = self.path.open("rb")

    @classmethod
    def open(cls, output_dir: str | os.PathLike[str]) -> LongContextStore:
        """The pool of a ``longcontext_data`` output folder."""
        return cls(Path(output_dir) / DOCUMENTS_FILE)

    def _index(self) -> dict[int, int]:
        if not self.path.is_file():
            raise InputError(self.path, "document pool not found (run the longcontext_data stage)")
        offsets: dict[int, int] = {}
        offset = 0
        with self.path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if raw.strip():
                    doc = _parse_document(raw, self.path, line_no)
                    if doc.doc_id in offsets:
                        raise InputError(self.path, f"duplicate doc_id {doc.doc_id}", record=f"line {line_no}")
                    offsets[doc.doc_id] = offset
                offset += len(raw)
        return offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._offsets

    def ids(self) -> list[int]:
        return sorted(self._offsets)

    def get(self, doc_id: int) -> Document:
        """The document ``doc_id``; an unknown id is an ``InputError`` naming the pool."""
        with self._lock:
            cached = self._cache.get(doc_id)
            if cached is not None:
                self._cache.move_to_end(doc_id)
                return cached
            if doc_id not in self._offsets:
                raise InputError(self.path, f"no document with doc_id {doc_id}")
            self._handle.seek(self._offsets[doc_id])
            doc = _parse_document(self._handle.readline(), self.path, f"doc_id {doc_id}")
            self._cache[doc_id] = doc
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return doc

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> LongContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_document(raw: bytes, path: Path, record: object) -> Document:
    where = record if isinstance(record, str) else f"line {record}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 at byte {exc.start} of the line", record=where) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", record=where) from None
    try:
        return document_from_dict(obj)
    except ValueError as exc:
        raise InputError(path, str(exc), record=where) from None


# ---------------------------------------------------------------------------------------------
# rendering


def render_document(index: int, doc: Document) -> str:
    """Numbered piece ``index`` (1-based) of a HotpotQA or SQuAD input: ``Document {index}:\\n{title}\\n{text}``."""
    return f"{DOCUMENT_HEADER.format(i=index)}{document_body(doc.title, doc.text)}"


def document_body(title: str, text: str) -> str:
    """The part of a numbered (HotpotQA or SQuAD) piece after its header."""
    return f"{title}\n{text}"


def insert_needles(text: str, placements: Sequence[tuple[int, str]]) -> str:
    """``text`` with each ``(char, needle)`` inserted at ``char`` (a sentence boundary, or ``len(text)``).

    Needles at one offset keep their order and are joined by a space; a space separates a needle from text it
    touches.
    """
    by_offset: dict[int, list[str]] = {}
    for char, needle in placements:
        if not 0 <= char <= len(text):
            raise ValueError(f"needle offset {char} is outside the text (length {len(text)})")
        by_offset.setdefault(char, []).append(needle)
    parts, previous = [], 0
    for char in sorted(by_offset):
        parts.append(text[previous:char])
        before = " " if char > 0 and not text[char - 1].isspace() else ""
        after = " " if char < len(text) and not text[char].isspace() else ""
        parts.append(before + " ".join(by_offset[char]) + after)
        previous = char
    parts.append(text[previous:])
    return "".join(parts)


def render_piece(sample: LongContextSample, store: LongContextStore, index: int) -> str:
    """Piece ``index`` (0-based) of the sample's input: a numbered document, or a passage with its needles."""
    doc_id = sample.doc_ids[index]
    if not sample.is_haystack:
        return render_document(index + 1, store.get(doc_id))
    text = store.get(doc_id).text
    placements = [(n.char, n.text) for n in sample.needles if n.piece == index]
    if not placements:
        return text
    try:
        return insert_needles(text, placements)
    except ValueError as exc:
        raise InputError(store.path, f"sample {sample.id}: {exc}", record=f"doc_id {doc_id}") from None


def iter_context(sample: LongContextSample, store: LongContextStore) -> Iterator[str]:
    """The sample's input, one piece (document or essay passage) at a time, in reading order."""
    for index in range(sample.length_docs):
        yield render_piece(sample, store, index)


def context_text(
    sample: LongContextSample,
    store: LongContextStore,
    max_tokens: int | None = None,
    *,
    encode: Encode | None = None,
    decode: Decode | None = None,
    separator: str = SEPARATOR,
) -> str:
    """The whole input as one string; with ``max_tokens``, middle-truncated to that many tokens (module docstring).

    ``encode`` / ``decode`` (``components.agent.chunking.tokenizer_codec``) are required with ``max_tokens``. Only
    the pieces at the two ends are read and encoded, so cutting a 3.5M-token input to a window costs one window.
    """
    if max_tokens is None:
        return separator.join(iter_context(sample, store))
    if encode is None or decode is None:
        raise ValueError("context_text with max_tokens needs encode and decode")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")

    def piece(index: int) -> str:
        text = render_piece(sample, store, index)
        return text if index == 0 else separator + text

    texts: list[str] = []
    head: list[int] = []
    index = 0
    while index < sample.length_docs and len(head) <= max_tokens:
        texts.append(piece(index))
        head.extend(encode(texts[-1]))
        index += 1
    if len(head) <= max_tokens:
        return "".join(texts)
    head_budget = max_tokens // 2
    tail_budget = max_tokens - head_budget
    tail_parts: list[list[int]] = []
    collected, index = 0, sample.length_docs - 1
    while collected < tail_budget:  # the stream is longer than max_tokens, so the pieces suffice
        tail_parts.append(encode(piece(index)))
        collected += len(tail_parts[-1])
        index -= 1
    tail = [i for part in reversed(tail_parts) for i in part][-tail_budget:]
    return _fit(head[:head_budget], tail, max_tokens, encode, decode)


def middle_cut(text: str, max_tokens: int, encode: Encode, decode: Decode) -> str:
    """``text`` when it has at most ``max_tokens`` tokens; else its middle cut out as ``context_text`` cuts an input
    (the first ``max_tokens // 2`` and the last ``max_tokens - max_tokens // 2`` tokens kept, then shortened until
    the result re-encodes to at most ``max_tokens`` tokens)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    ids = encode(text)
    if len(ids) <= max_tokens:
        return text
    head = max_tokens // 2
    return _fit(ids[:head], ids[len(ids) - (max_tokens - head) :], max_tokens, encode, decode)


def _fit(head: list[int], tail: list[int], max_tokens: int, encode: Encode, decode: Decode) -> str:
    """``decode(head) + decode(tail)``, shortened until it re-encodes to at most ``max_tokens`` tokens."""
    while True:
        text = decode(head) + decode(tail)
        excess = len(encode(text)) - max_tokens
        if excess <= 0:
            return text
        cut_tail = min(len(tail), (excess + 1) // 2)
        tail = tail[cut_tail:]
        head = head[: max(0, len(head) - (excess - cut_tail))]
