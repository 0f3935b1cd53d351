"""Streaming chunking: every token exactly once and in order, exact chunk sizes, lazy consumption of the pieces,
and chunk texts that never split a character.

The property tests use UTF-8 bytes as token ids (a real byte-level codec, so characters really do straddle chunk
boundaries); the tokenizer tests use the tiny model's byte-level BPE tokenizer.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from components.agent.chunking import chunk_ids, chunk_text, token_stream, tokenizer_codec
from components.agent.reader import MAX_CARRY, REPLACEMENT, chunk_texts, complete_prefix
from tests.helpers import CountingPieces


@functools.cache
def tiny_codec(folder: Path) -> tuple[Any, Any]:
    """The tiny model's tokenizer as ``(encode, decode)``, loaded once."""
    from transformers import AutoTokenizer

    return tokenizer_codec(AutoTokenizer.from_pretrained(folder))


def utf8_encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def utf8_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


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
SPACED = [" ", "  ", "\t", " \n", "! ", "\u00a0 "]  # hold a space or tab: exact for every byte-level BPE
SEPARATORS = [*SPACED, "\u00a0", "\u2009", "\n", "\n\n", "\r\n", "!\n"]  # hold whitespace: exact for GPT-2
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@functools.cache
def pretokenised_encode(folder: Path, style: str) -> Any:
    """The tiny model's BPE behind GPT-2's pre-tokeniser (as trained) or Llama-3's pattern, as an ``encode``."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if style == "llama3":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return tokenizer_codec(tokenizer)[0]


def pieces_of(text: str, folder: Path, block_bytes: int) -> list[str]:
    from components.agent.reader import file_pieces

    path = folder / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    return list(file_pieces(path, block_bytes))


def assert_pieces_tokenise_as_whole(text: str, folder: Path, block_bytes: int, model_dir: Path, style: str) -> None:
    """The file's pieces join to the text, and their token ids joined are the whole text's."""
    encode = pretokenised_encode(model_dir, style)
    pieces = pieces_of(text, folder, block_bytes)
    assert "".join(pieces) == text
    assert list(itertools.chain.from_iterable(encode(p) for p in pieces)) == encode(text)


def texts(separators: list[str]) -> st.SearchStrategy[str]:
    """Texts of words, each followed by one of ``separators``."""
    return st.lists(st.tuples(WORDS, st.sampled_from(separators)), min_size=1, max_size=60).map(
        lambda parts: "".join(w + s for w, s in parts)
    )


@settings(max_examples=60, deadline=None)
@given(text=texts(SEPARATORS), block_bytes=st.integers(4, 64))
@example(text="Alice 2024 😀 Alice ", block_bytes=4)  # found by CI: a cut after a space split " Alice"
@example(text="x\n\ny\r\nz  w\n\nv\r\nu\n\n", block_bytes=4)
def test_file_pieces_tokenise_as_the_whole_file_for_gpt2(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, text: str, block_bytes: int
) -> None:
    """With whitespace every few words, pieces are cut only where GPT-2's pre-tokeniser cuts too."""
    assert_pieces_tokenise_as_whole(text, tmp_path_factory.mktemp("pieces"), block_bytes, tiny_model_dir, "gpt2")


@settings(max_examples=60, deadline=None)
@given(text=texts(SPACED), block_bytes=st.integers(4, 64))
@example(text="Wait! \nAlice.  2024\t😀 ", block_bytes=4)
def test_file_pieces_tokenise_as_the_whole_file_for_llama3(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, text: str, block_bytes: int
) -> None:
    """With a space or tab every few words, pieces are cut only where Llama-3's pre-tokeniser cuts too."""
    assert_pieces_tokenise_as_whole(text, tmp_path_factory.mktemp("pieces"), block_bytes, tiny_model_dir, "llama3")


@settings(max_examples=60, deadline=None)
@given(text=texts([*SEPARATORS, ""]), block_bytes=st.integers(4, 64))
@example(text="中文" * 200, block_bytes=16)
def test_file_pieces_are_lossless_and_bounded_without_whitespace(
    tmp_path_factory: pytest.TempPathFactory, text: str, block_bytes: int
) -> None:
    """Long runs with no whitespace cannot be cut exactly; they still stream whole, in bounded pieces."""
    pieces = pieces_of(text, tmp_path_factory.mktemp("pieces"), block_bytes)
    assert "".join(pieces) == text and all(pieces)
    assert max(len(p) for p in pieces) <= 6 * block_bytes
