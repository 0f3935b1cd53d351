"""Streaming chunking: every token exactly once and in order, exact chunk sizes, lazy consumption of the pieces,
and chunk texts that never split a character.

The property tests use UTF-8 bytes as token ids (a real byte-level codec, so characters really do straddle chunk
boundaries); the tokenizer tests use the tiny model's byte-level BPE tokenizer.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.agent.chunking import chunk_ids, chunk_text, token_stream, tokenizer_codec
from components.agent.reader import MAX_CARRY, REPLACEMENT, chunk_texts, complete_prefix


@functools.cache
def tiny_codec(folder: Path) -> tuple[Any, Any]:
    """The tiny model's tokenizer as ``(encode, decode)``, loaded once."""
    from transformers import AutoTokenizer

    return tokenizer_codec(AutoTokenizer.from_pretrained(folder))


def utf8_encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def utf8_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


class CountingPieces:
    """An iterator over pieces that records how many have been pulled."""

    def __init__(self, pieces: list[str]) -> None:
        self._pieces = iter(pieces)
        self.pulled = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.pulled += 1
        return piece


TEXT = st.text(alphabet=st.sampled_from(list("ab c\n.é—中😀")), max_size=40)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(TEXT, max_size=8), chunk_tokens=st.integers(1, 17), separator=st.sampled_from(["\n\n", "", " "]))
def test_every_token_exactly_once_in_order_and_chunk_sizes(
    pieces: list[str], chunk_tokens: int, separator: str
) -> None:
    chunks = list(chunk_ids(token_stream(pieces, utf8_encode, separator), chunk_tokens))
    assert list(itertools.chain.from_iterable(chunks)) == utf8_encode(separator.join(pieces))
    assert all(len(c) == chunk_tokens for c in chunks[:-1])
    assert all(1 <= len(c) <= chunk_tokens for c in chunks)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(TEXT, max_size=8), chunk_tokens=st.integers(1, 17))
def test_chunk_texts_never_split_a_character(pieces: list[str], chunk_tokens: int) -> None:
    text = "\n\n".join(pieces)
    chunks = list(chunk_texts(chunk_ids(token_stream(pieces, utf8_encode), chunk_tokens), utf8_decode))
    assert list(itertools.chain.from_iterable(ids for ids, _ in chunks)) == utf8_encode(text)
    assert "".join(t for _, t in chunks) == text
    assert all(REPLACEMENT not in t and t == utf8_decode(ids) for ids, t in chunks)
    assert all(len(ids) < chunk_tokens + MAX_CARRY for ids, _ in chunks)


def test_token_stream_joins_pieces_with_the_separator_and_skips_empty_ids() -> None:
    lists = list(token_stream(["ab", "", "c"], utf8_encode, "|"))
    assert lists == [utf8_encode("ab"), utf8_encode("|"), utf8_encode("|c")]
    assert list(token_stream([], utf8_encode)) == []
    assert list(token_stream([""], utf8_encode)) == []


def test_chunk_ids_pulls_only_the_pieces_each_chunk_needs() -> None:
    pieces = [f"piece {i:02d}" for i in range(30)]  # 8 bytes, then 10 with the separator
    source = CountingPieces(pieces)
    chunker = chunk_ids(token_stream(source, utf8_encode), 25)
    assert source.pulled == 0  # nothing is read before the first chunk is asked for
    cumulative = list(itertools.accumulate(len(utf8_encode(("\n\n" if i else "") + p)) for i, p in enumerate(pieces)))
    for k, chunk in enumerate(chunker, start=1):
        if len(chunk) < 25:  # the last chunk needs the end of the input
            assert source.pulled == len(pieces)
            break
        needed = next(i + 1 for i, total in enumerate(cumulative) if total >= 25 * k)
        assert source.pulled == needed  # never a piece ahead of the chunk being yielded


def test_chunk_ids_rejects_a_non_positive_size() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        list(chunk_ids([[1, 2]], 0))


def test_complete_prefix_drops_only_a_split_character() -> None:
    ids = utf8_encode("ab😀")
    assert complete_prefix(ids, utf8_decode) == (len(ids), "ab😀")
    assert complete_prefix(ids[:-1], utf8_decode) == (2, "ab")
    assert complete_prefix(ids[2:4], utf8_decode) == (0, "")  # only part of one character
    assert complete_prefix([], utf8_decode) == (0, "")


def test_real_tokenizer_chunks_cover_the_text(tiny_model_dir: Path) -> None:
    encode, decode = tiny_codec(tiny_model_dir)
    text = "Alice moved to Berlin — in März 2024 😀. " * 20
    assert encode(text) == list(itertools.chain.from_iterable(chunk_ids([encode(text)], 7)))
    assert decode(encode(text)) == text  # no special tokens added, none dropped
    texts = list(chunk_text([text], encode, decode, 7))
    assert all(len(encode(t)) >= 1 for t in texts) and len(texts) == -(-len(encode(text)) // 7)
    joined = "".join(t for _, t in chunk_texts(chunk_ids([encode(text)], 7), decode))
    assert joined == text and REPLACEMENT not in joined


WORDS = st.sampled_from(["Alice", "moved", "to", "Berlin", "in", "2024", "naïve", "Café", "😀", "—", ".", ",", "中文"])
SPACES = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  ", "\t", ""])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.tuples(WORDS, SPACES), min_size=1, max_size=60), block_bytes=st.integers(4, 64))
def test_file_pieces_tokenise_as_the_whole_file(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, parts: list[tuple[str, str]], block_bytes: int
) -> None:
    from components.agent.reader import file_pieces

    encode, _ = tiny_codec(tiny_model_dir)
    text = "".join(w + s for w, s in parts)
    path = tmp_path_factory.mktemp("pieces") / "input.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(file_pieces(path, block_bytes))
    assert "".join(pieces) == text
    assert list(itertools.chain.from_iterable(encode(p) for p in pieces)) == encode(text)
