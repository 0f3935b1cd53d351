"""The memory bank: operation effects, all-or-nothing application, core cap, snapshots, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import MemoryConfig
from components.errors import ConfigError, InputError
from components.memory.bank import MemoryBank, MemoryLoadError, MemoryOperationError, merge_provenance
from components.memory.compression import ExtractiveCompressor, checked_compressor, cut_at_word, split_sentences
from components.memory.embedder import HashingEmbedder
from components.memory.types import (
    CoreAppend,
    CoreReplace,
    CoreRewrite,
    CoreSkip,
    EntryAdd,
    EntryDelete,
    EntryMerge,
    EntryUpdate,
    Provenance,
)

S1 = {"session_id": "S1", "session_timestamp": "2024-03-01T09:30", "session_turn_ids": ["S1-t1", "S1-t2", "S1-t3"]}
S2 = {"session_id": "S2", "session_timestamp": "2024-04-02T18:00", "session_turn_ids": ["S2-t1", "S2-t2"]}


def make_bank(**config: int | str) -> MemoryBank:
    return MemoryBank(MemoryConfig(**config), embedder=HashingEmbedder(128))  # type: ignore[arg-type]


@pytest.fixture
def bank() -> MemoryBank:
    bank = make_bank()
    bank.apply_entries(
        "semantic",
        [
            EntryAdd("User is a nurse", turn_ids=("S1-t1",)),
            EntryAdd("User has a cat named Miso"),
            EntryAdd("Likes jazz"),
        ],
        **S1,
    )
    bank.apply_entries("episodic", [EntryAdd("Trip to Porto", "2024-02-10", ("S1-t2",))], **S1)
    bank.apply_core(CoreAppend("Name: Ana."), session_id="S1", turn_ids_all=S1["session_turn_ids"])
    return bank


def state(bank: MemoryBank) -> dict:
    """Everything observable about a bank, including its id counters."""
    return {
        "data": bank.to_dict(),
        "next": [bank.next_id(p) for p in ("episodic", "semantic", "procedural")],
        "composition": bank.composition(),
    }


# --- entry operations -----------------------------------------------------------------------


def test_add_assigns_ids_timestamps_and_provenance(bank: MemoryBank) -> None:
    miso = bank.get("sem-2")
    assert miso is not None and miso.part == "semantic" and miso.text == "User has a cat named Miso"
    assert miso.timestamp == "2024-03-01T09:30"  # the session's
    assert miso.provenance == (Provenance("S1", ("S1-t1", "S1-t2", "S1-t3")),)  # no turns given: the whole session
    assert bank.get("sem-1").provenance == (Provenance("S1", ("S1-t1",)),)  # type: ignore[union-attr]
    trip = bank.get("epi-1")
    assert trip is not None and trip.timestamp == "2024-02-10T00:00"  # the event's date, normalised
    assert [e.entry_id for e in bank.entries("semantic")] == ["sem-1", "sem-2", "sem-3"]
    assert len(bank) == 4 and bank.get("pro-1") is None and bank.get("nonsense") is None


def test_ids_are_monotonic_and_never_reused(bank: MemoryBank) -> None:
    bank.apply_entries("semantic", [EntryDelete("sem-3")], **S2)
    result = bank.apply_entries("semantic", [EntryAdd("Plays chess"), EntryAdd("Drinks tea")], **S2)
    assert result.added == ("sem-4", "sem-5")
    merged = bank.apply_entries("semantic", [EntryMerge(("sem-4", "sem-5"), "Plays chess over tea")], **S2)
    assert merged.merged == ((("sem-4", "sem-5"), "sem-6"),)
    assert bank.apply_entries("procedural", [EntryAdd("Reply in Portuguese")], **S2).added == ("pro-1",)


def test_update_replaces_in_place_and_extends_provenance(bank: MemoryBank) -> None:
    result = bank.apply_entries(
        "semantic", [EntryUpdate("sem-2", "User has two cats, Miso and Tofu", ("S2-t2",))], **S2
    )
    assert result.updated == ("sem-2",) and result.changed
    updated = bank.get("sem-2")
    assert updated is not None and updated.text == "User has two cats, Miso and Tofu"
    assert updated.timestamp == "2024-03-01T09:30"  # UPDATE keeps the entry's date
    assert updated.provenance == (Provenance("S1", ("S1-t1", "S1-t2", "S1-t3")), Provenance("S2", ("S2-t2",)))
    assert [e.entry_id for e in bank.entries("semantic")] == ["sem-1", "sem-2", "sem-3"]  # same place
    # a second update in the same session merges into that session's record instead of repeating it
    bank.apply_entries("semantic", [EntryUpdate("sem-2", "User has two cats", ("S2-t1",))], **S2)
    assert bank.get("sem-2").provenance[-1] == Provenance("S2", ("S2-t2", "S2-t1"))  # type: ignore[union-attr]


def test_merge_unions_provenance_and_takes_latest_timestamp() -> None:
    bank = make_bank()
    bank.apply_entries("episodic", [EntryAdd("Booked flights", "2024-01-05", ("S1-t1",))], **S1)
    bank.apply_entries("episodic", [EntryAdd("Flew to Tokyo", "2024-04-01T07:15", ("S2-t1",))], **S2)
    result = bank.apply_entries(
        "episodic", [EntryMerge(("epi-1", "epi-2"), "Booked and took a flight to Tokyo", ("S2-t2",))], **S2
    )
    assert result.merged == ((("epi-1", "epi-2"), "epi-3"),)
    merged = bank.get("epi-3")
    assert merged is not None and merged.timestamp == "2024-04-01T07:15"
    assert merged.provenance == (Provenance("S1", ("S1-t1",)), Provenance("S2", ("S2-t1", "S2-t2")))
    assert [e.entry_id for e in bank.entries("episodic")] == ["epi-3"]


def test_update_and_merge_leave_no_stale_copies(bank: MemoryBank) -> None:
    bank.retrieve("cat", k=10)  # commit embeddings of the old texts first
    bank.apply_entries("semantic", [EntryUpdate("sem-2", "User owns a parrot called Kiwi")], **S2)
    bank.apply_entries("semantic", [EntryMerge(("sem-1", "sem-3"), "Nurse who likes jazz")], **S2)
    texts = [e.text for e in bank.entries("semantic")]
    assert texts == ["User owns a parrot called Kiwi", "Nurse who likes jazz"]
    dumped = json.dumps(bank.to_dict())
    for stale in ("Miso", "User is a nurse", "Likes jazz"):
        assert stale not in dumped
    hits = bank.retrieve(["cat named Miso", "User is a nurse", "Likes jazz"], parts=("semantic",), k=10)
    for row in hits:
        assert sorted(h.entry.entry_id for h in row) == ["sem-2", "sem-4"]  # every row: the live entries only
        assert {h.entry.text for h in row} == set(texts)
    assert bank.composition()["semantic"] == 2


def test_delete_removes(bank: MemoryBank) -> None:
    result = bank.apply_entries("episodic", [EntryDelete("epi-1")], **S2)
    assert result.deleted == ("epi-1",) and bank.entries("episodic") == [] and bank.get("epi-1") is None
    assert bank.retrieve("Porto trip", parts=("episodic",)) == [[]]


def test_empty_list_changes_nothing(bank: MemoryBank) -> None:
    before = state(bank)
    assert not bank.apply_entries("procedural", [], **S2).changed
    assert state(bank) == before


# --- all or nothing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([EntryUpdate("sem-9", "x")], r"semantic operation 3 of 3 \(UPDATE\): entry 'sem-9' does not exist"),
        ([EntryDelete("epi-1")], "entry 'epi-1' belongs to episodic memory, not semantic"),
        ([EntryDelete("sem-1"), EntryUpdate("sem-1", "x")], "entry 'sem-1' was deleted by operation 3"),
        ([EntryMerge(("sem-1", "sem-2"), "x"), EntryDelete("sem-2")], "entry 'sem-2' was merged by operation 3"),
        ([EntryMerge(("sem-1", "sem-1"), "x")], "needs at least two distinct entry ids"),
        ([EntryMerge(("sem-1",), "x")], "needs at least two distinct entry ids"),
        ([EntryAdd("x", turn_ids=("S1-t1",))], r"turn id\(s\) 'S1-t1' are not turns of session 'S2'"),
        ([EntryAdd("x", "next tuesday")], "date 'next tuesday' is not ISO 8601"),
        ([EntryAdd("   ")], "text must be a non-empty string"),
        ([EntryUpdate("sem-1", "")], "text must be a non-empty string"),
        ([CoreSkip()], "not an entry operation"),
    ],
)
def test_invalid_operation_anywhere_leaves_bank_untouched(bank: MemoryBank, ops: list, message: str) -> None:
    bank.retrieve("nurse")  # commit embeddings, so the index is part of what must not change
    before = state(bank)
    prefix = [EntryAdd("Valid new fact", turn_ids=("S2-t1",)), EntryUpdate("sem-3", "Loves jazz")]
    with pytest.raises(MemoryOperationError, match=message):
        bank.apply_entries("semantic", [*prefix, *ops], **S2)
    assert state(bank) == before
    assert bank.next_id("semantic") == "sem-4"
    assert {h.entry.text for h in bank.retrieve("Valid new fact Loves jazz", k=10)[0]} == {
        "User is a nurse",
        "User has a cat named Miso",
        "Likes jazz",
        "Trip to Porto",
    }


def test_bad_session_timestamp_and_unknown_part(bank: MemoryBank) -> None:
    before = state(bank)
    with pytest.raises(MemoryOperationError, match="timestamp 'yesterday' is not ISO 8601"):
        bank.apply_entries("semantic", [EntryAdd("x")], **{**S2, "session_timestamp": "yesterday"})
    with pytest.raises(ValueError, match="unknown entry part 'core'"):
        bank.apply_entries("core", [EntryAdd("x")], **S2)  # type: ignore[arg-type]
    assert state(bank) == before


# --- core -----------------------------------------------------------------------------------


def test_core_operations(bank: MemoryBank) -> None:
    turns = S2["session_turn_ids"]
    result = bank.apply_core(CoreAppend("Lives in Lisbon."), session_id="S2", turn_ids_all=turns)
    assert bank.core == "Name: Ana.\nLives in Lisbon." and result.changed and result.chars_after == len(bank.core)
    assert bank.core_provenance == (Provenance("S1", tuple(S1["session_turn_ids"])), Provenance("S2", tuple(turns)))
    result = bank.apply_core(CoreReplace("Lisbon", "Porto"), session_id="S2", turn_ids_all=turns)
    assert bank.core == "Name: Ana.\nLives in Porto." and result.replacements == 1
    assert not bank.apply_core(CoreSkip(), session_id="S2", turn_ids_all=turns).changed
    bank.apply_core(CoreRewrite("Ana, nurse, Porto."), session_id="S2", turn_ids_all=turns)
    assert bank.core == "Ana, nurse, Porto."
    with pytest.raises(MemoryOperationError, match="'old' text 'Madrid' does not occur in the core block"):
        bank.apply_core(CoreReplace("Madrid", "Rome"), session_id="S2", turn_ids_all=turns)
    with pytest.raises(MemoryOperationError, match="text must be a non-empty string"):
        bank.apply_core(CoreAppend(" "), session_id="S2", turn_ids_all=turns)
    assert bank.core == "Ana, nurse, Porto."


def test_core_cap_compresses_below_target_keeping_whole_newest_sentences() -> None:
    bank = make_bank(core_max_chars=300, core_compress_to_chars=160)
    sentences = [f"Fact number {i} about the user is recorded here." for i in range(8)]
    results = [bank.apply_core(CoreAppend(s), session_id="S1", turn_ids_all=["t"]) for s in sentences]
    compressed_at = next(i for i, r in enumerate(results) if r.compressed)
    assert len("\n".join(sentences[: compressed_at + 1])) > 300  # it fired when the cap was passed
    assert all(not r.compressed for r in results[:compressed_at])
    after = results[compressed_at]
    assert after.chars_after < 160 and after.chars_before < 300
    kept = [s for _, s in split_sentences(bank.core)]
    assert all(s in sentences for s in kept)  # whole sentences only
    assert sentences[7] in kept  # the newest one survives
    assert kept == sorted(kept, key=sentences.index)  # in their original order
    assert len(bank.core) <= 300


def test_core_rewrite_over_cap_is_compressed() -> None:
    bank = make_bank(core_max_chars=100, core_compress_to_chars=60)
    text = " ".join(["The user likes tea."] * 3 + ["The user likes tea!", "The user moved to Rome in 2021."] * 2)
    result = bank.apply_core(CoreRewrite(text), session_id="S1", turn_ids_all=["t"])
    assert result.compressed and bank.core == "The user likes tea! The user moved to Rome in 2021."


def test_extractive_compressor() -> None:
    compress = ExtractiveCompressor()
    text = "Ana is 34. Ana lives in Lisbon.\nana is 34!\nShe works nights. Ana lives in Lisbon"
    # exact/near-exact repeats keep their newest copy; lines keep their shape
    assert compress(text, 200) == "ana is 34!\nShe works nights. Ana lives in Lisbon"
    assert compress(text, 40) == "She works nights. Ana lives in Lisbon"
    assert compress(text, 25) == "Ana lives in Lisbon"
    # a newest sentence longer than the target: cut at a word boundary and marked
    long = "First. " + "word " * 30 + "end."
    cut = compress(long, 40)
    assert len(cut) < 40 and cut.endswith("…") and cut.removesuffix("…").split() == ["word"] * (len(cut) // 5)
    assert cut_at_word("x" * 50, 10) == "x" * 8 + "…"
    assert compress("", 10) == ""


def test_checked_compressor_falls_back() -> None:
    too_long = checked_compressor(lambda text, target: text)
    text = "One fact. Two facts. Three facts."
    assert too_long(text, 20) == "Three facts." and too_long.fallbacks == 1
    assert "21" not in too_long.last_fallback_reason and ">= 20 chars" in too_long.last_fallback_reason

    def boom(text: str, target: int) -> str:
        raise TimeoutError("backend down")

    failing = checked_compressor(boom)
    assert failing(text, 20) == "Three facts." and "TimeoutError" in failing.last_fallback_reason
    good = checked_compressor(lambda text, target: "Facts: 1-3.")
    assert good(text, 20) == "Facts: 1-3." and good.fallbacks == 0


def test_llm_compression_needs_a_compressor() -> None:
    with pytest.raises(ConfigError, match="no compressor was given"):
        MemoryBank(MemoryConfig(compression="llm"))
    calls: list[int] = []

    def summarise(text: str, target: int) -> str:
        calls.append(target)
        return "x" * target  # one char too many: the bank must not accept it

    bank = MemoryBank(
        MemoryConfig(compression="llm", core_max_chars=50, core_compress_to_chars=30), compressor=summarise
    )
    bank.apply_core(CoreRewrite("A first fact is here. " * 4), session_id="S1", turn_ids_all=["t"])
    assert calls == [30] and bank.core == "A first fact is here."


# --- snapshots ------------------------------------------------------------------------------


def test_snapshots_are_independent(bank: MemoryBank) -> None:
    bank.retrieve("anything")
    original = state(bank)
    snap = bank.snapshot()
    assert state(snap) == original

    snap.apply_entries("semantic", [EntryUpdate("sem-1", "User is a doctor"), EntryDelete("sem-3")], **S2)
    snap.apply_entries("episodic", [EntryAdd("Went hiking")], **S2)
    snap.apply_core(CoreAppend("Has a parrot."), session_id="S2", turn_ids_all=["S2-t1"])
    snap.retrieve("doctor hiking")
    assert state(bank) == original

    other = bank.snapshot()
    bank.apply_entries("semantic", [EntryMerge(("sem-1", "sem-2"), "Nurse with a cat")], **S2)
    bank.apply_core(CoreRewrite("Ana."), session_id="S2", turn_ids_all=["S2-t1"])
    assert state(other) == original  # a sibling snapshot does not see the original's writes
    assert snap.get("sem-1").text == "User is a doctor" and snap.get("sem-3") is None  # type: ignore[union-attr]
    assert snap.core == "Name: Ana.\nHas a parrot." and bank.core == "Ana."
    assert {h.entry.entry_id for h in other.retrieve("Nurse cat doctor", k=10)[0]} == {
        "sem-1",
        "sem-2",
        "sem-3",
        "epi-1",
    }
    assert snap.next_id("episodic") == "epi-3" and bank.next_id("episodic") == "epi-2"  # counters are per copy


def test_snapshot_of_a_snapshot_across_segments() -> None:
    base = MemoryBank(embedder=HashingEmbedder(2048))
    base.apply_entries("semantic", [EntryAdd(f"Fact {i} about item{i}") for i in range(3000)], **S1)  # sem-8: item7
    base.embed_pending()  # commits 3000 rows: frozen segments plus a tail
    frozen = json.dumps(base.to_dict())
    first = base.snapshot()
    first.apply_entries("semantic", [EntryDelete(f"sem-{i}") for i in range(1, 1501)], **S2)
    second = first.snapshot()
    second.apply_entries("semantic", [EntryAdd(f"New fact about item{i}") for i in range(2000)], **S2)

    def exact(bank: MemoryBank, query: str) -> set[str]:  # ids scoring 1.0 (hashed words can collide)
        return {h.entry.entry_id for h in bank.retrieve(query, k=50)[0] if h.score > 0.999}

    assert "sem-3008" in exact(second, "New fact about item7") and "sem-8" not in exact(second, "Fact 7 about item7")
    hits = first.retrieve("Fact 7 about item7", k=20)[0]
    assert len(hits) == 20 and all(int(h.entry.entry_id.split("-")[1]) > 1500 for h in hits)
    assert "sem-8" in exact(base, "Fact 7 about item7") and not exact(base, "New fact about item7")
    assert json.dumps(base.to_dict()) == frozen
    assert (len(base), len(first), len(second)) == (3000, 1500, 3500)


# --- persistence ----------------------------------------------------------------------------


def test_save_load_round_trip(bank: MemoryBank, tmp_path: Path) -> None:
    bank.apply_entries("semantic", [EntryUpdate("sem-1", "User is a head nurse"), EntryDelete("sem-3")], **S2)
    path = tmp_path / "nested" / "memory.json"
    bank.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["memory.json"]  # no temp file left behind
    loaded = MemoryBank.load(path, embedder=HashingEmbedder(128))
    assert state(loaded) == state(bank)
    assert loaded.entries("semantic") == bank.entries("semantic") and loaded.core_provenance == bank.core_provenance
    assert loaded.apply_entries("semantic", [EntryAdd("New")], **S2).added == ("sem-4",)  # counter survived
    assert loaded.retrieve("head nurse", k=1)[0][0].entry.entry_id == "sem-1"


def _saved(bank: MemoryBank, tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "memory.json"
    bank.save(path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "unsupported format version 2"),
        (lambda d: d.update(format="something-else"), "not a memforge memory bank"),
        (lambda d: d.pop("core"), r"missing key\(s\) core"),
        (lambda d: d.update(extra=1), r"unknown key\(s\) extra"),
        (lambda d: d["entries"]["semantic"][0].update(id="epi-7"), r"entries.semantic\[0\].*not a semantic id"),
        (lambda d: d["entries"]["semantic"][1].update(id="sem-1"), "duplicate id 'sem-1'"),
        (lambda d: d["entries"]["semantic"][0].update(text=5), "entries.semantic\\[0\\].text: expected str"),
        (lambda d: d["entries"]["episodic"][0].update(timestamp="soon"), "'soon' is not ISO 8601"),
        (lambda d: d["next_ids"].update(semantic=2), "'sem-2' is not below next_ids.semantic = 2"),
        (lambda d: d["next_ids"].update(semantic=True), "next_ids.semantic: expected int, found bool"),
        (lambda d: d["entries"]["semantic"][0]["provenance"].append({"session_id": "S9"}), "missing key"),
    ],
)
def test_wrong_schema_is_a_load_error_naming_the_file(bank: MemoryBank, tmp_path: Path, mutate, message: str) -> None:
    path, data = _saved(bank, tmp_path)
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(MemoryLoadError, match=message) as info:
        MemoryBank.load(path)
    assert str(path) in str(info.value) and isinstance(info.value, InputError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"", "malformed JSON: Expecting value"),
        (b"[1, 2]", "top level: expected dict, found list"),
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_missing_or_corrupt_file_is_a_load_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "memory.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MemoryLoadError, match=message) as info:
        MemoryBank.load(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_a_load_error(bank: MemoryBank, tmp_path: Path) -> None:
    path, _ = _saved(bank, tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MemoryLoadError, match=r"memory.json: malformed JSON"):
        MemoryBank.load(path)


def test_composition(bank: MemoryBank) -> None:
    chars = sum(len(e.text) for p in ("episodic", "semantic") for e in bank.entries(p))
    assert bank.composition() == {
        "episodic": 1,
        "semantic": 3,
        "procedural": 0,
        "entries": 4,
        "core_chars": len("Name: Ana."),
        "entry_chars": chars,
        "total_chars": chars + len("Name: Ana."),
    }


def test_merge_provenance_helper() -> None:
    merged = merge_provenance([Provenance("a", ("1", "2"))], [Provenance("b", ("1",)), Provenance("a", ("2", "3"))])
    assert merged == (Provenance("a", ("1", "2", "3")), Provenance("b", ("1",)))
