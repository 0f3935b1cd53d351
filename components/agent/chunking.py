"""Streaming token chunking: text pieces in, chunks of exactly ``chunk_tokens`` token ids out (the last shorter).

Pieces (documents, essay paragraphs) are tokenised one at a time and joined with ``separator``; at most one
chunk's ids plus one piece's ids are held at once, so an input of millions of tokens streams through. Every token of
the stream lands in exactly one chunk, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

Encode = Callable[[str], list[int]]


def token_stream(pieces: Iterable[str], encode: Encode, separator: str = "\n\n") -> Iterator[list[int]]:
    """The token ids of each piece (a ``separator`` between consecutive pieces), one list per piece."""
    first = True
    for piece in pieces:
        text = piece if first else separator + piece
        first = False
        ids = encode(text)
        if ids:
            yield ids


def chunk_ids(token_lists: Iterable[list[int]], chunk_tokens: int) -> Iterator[list[int]]:
    """Regroup a stream of token-id lists into chunks of ``chunk_tokens`` ids; the last chunk may be shorter."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        while len(buffer) >= chunk_tokens:
            yield buffer[:chunk_tokens]
            del buffer[:chunk_tokens]
    if buffer:
        yield buffer


def chunk_text(
    pieces: Iterable[str],
    encode: Encode,
    decode: Callable[[list[int]], str],
    chunk_tokens: int,
    separator: str = "\n\n",
) -> Iterator[str]:
    """Chunks of a piece stream as text (each ``chunk_tokens`` tokens of the stream, decoded)."""
    for ids in chunk_ids(token_stream(pieces, encode, separator), chunk_tokens):
        yield decode(ids)


def tokenizer_codec(tokenizer: object) -> tuple[Encode, Callable[[list[int]], str]]:
    """``encode`` / ``decode`` for a Hugging Face tokenizer, without special tokens."""

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]

    return encode, decode
