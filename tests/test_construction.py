"""Prompts, teachers and memory construction: oracle exactness, heuristics, injection, failures, batching."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from components.config import BackendConfig, MemoryConfig, SyntheticConfig
from components.dialogue.loaders import load_jsonl, load_locomo
from components.dialogue.schema import Conversation, Session, Turn
from components.dialogue.synthetic import iter_conversations
from components.memory.bank import MemoryBank
from components.memory.construction import SessionStep, apply_output, build_memories, session_prompts
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.memory.prompts import (
    CORE_FULL_PERCENT,
    TRANSCRIPT_CLOSE,
    TRANSCRIPT_OPEN,
    agent_messages,
    answer_messages,
    core_usage_percent,
)
from components.memory.teachers import (
    LABELS,
    HeuristicTeacher,
    LLMTeacher,
    OracleTeacher,
    TeacherRequest,
)
from components.memory.types import ENTRY_PARTS, PARTS, CoreAppend, EntryAdd

MEMORY = MemoryConfig(embedder="hashing")


@pytest.fixture
def make_bank():
    cache = EmbeddingCache(HashingEmbedder())
    return lambda: MemoryBank(MEMORY, cache=cache)


class RecordingTeacher:
    """A real teacher (the heuristic) that also records how it was called, to check batching."""

    def __init__(self) -> None:
        self.inner = HeuristicTeacher()
        self.name = "recording"
        self.calls: list[list[tuple[str, str]]] = []

    def write(self, requests):
        self.calls.append([(r.conversation.conversation_id, r.session.session_id) for r in requests])
        return self.inner.write(requests)


def _synthetic(n: int, sessions: int = 6) -> list[Conversation]:
    return list(iter_conversations(SyntheticConfig(sessions_per_conversation=sessions, seed=21), n))


def test_agent_prompt_shows_session_date_turn_ids_and_entries(make_bank) -> None:
    conversation = _synthetic(1)[0]
    bank = make_bank()
    session = conversation.sessions[0]
    bank.apply_entries(
        "semantic",
        [EntryAdd(text="Ingrid has a dog named Mochi")],
        session_id="S0",
        session_timestamp="2022-01-01T00:00",
        session_turn_ids=(),
    )
    messages = session_prompts(bank, session, top_k=5)
    assert set(messages) == set(PARTS)
    semantic = messages["semantic"][1]["content"]
    assert session.timestamp in semantic and "[sem-1]" in semantic
    for turn in session.turns:
        assert f"[{turn.turn_id}] {turn.speaker}: {turn.text}" in semantic
    assert "[sem-1]" not in messages["episodic"][1]["content"]  # each agent sees only its own part
    assert "Current core memory" in messages["core"][1]["content"]
    answer = answer_messages("Where does she live?", "Ingrid lives in Oslo.", [], "2023-05-01")
    assert "not answerable" in answer[0]["content"] and "Ingrid lives in Oslo." in answer[1]["content"]


def test_core_agent_sees_how_full_the_core_is_against_the_configured_budget() -> None:
    bank = MemoryBank(
        MemoryConfig(embedder="hashing", core_max_chars=200, core_compress_to_chars=120),
        cache=EmbeddingCache(HashingEmbedder()),
    )
    profile = "Ann's city of residence: Rome. Ann's pet: Miso ok."
    assert len(profile) == 50  # a quarter of the 200-character budget
    bank.apply_core(CoreAppend(text=profile), session_id="S1", turn_ids_all=())
    session = Session("S2", "2023-05-07T10:00", (Turn("S2:1", "Ann", "I adopted a cat yesterday."),))
    prompts = session_prompts(bank, session, top_k=3)
    assert "Core memory usage: 25% of 200 characters." in prompts["core"][1]["content"]
    assert f"over {CORE_FULL_PERCENT}% full" in prompts["core"][0]["content"]
    for part in PARTS:
        assert prompts[part][1]["content"].startswith("Session S2, date 2023-05-07T10:00 (Sunday).")
        assert ("Core memory usage" in prompts[part][1]["content"]) == (part == "core")
    assert core_usage_percent("", 200) == 0 and core_usage_percent("x" * 199, 200) == 100


def test_each_agent_is_told_what_one_entry_is_and_the_episodic_agent_the_date_rules() -> None:
    session = Session("S1", "2023-05-07T10:00", (Turn("S1:1", "Ann", "Hi."),))
    system = {part: agent_messages(part, session, "", [])[0]["content"] for part in PARTS}
    assert "one per line" in system["core"]
    assert "One entry = one event" in system["episodic"]
    assert "One entry = one fact" in system["semantic"]
    assert "One entry = one routine" in system["procedural"]
    assert (
        '"yesterday" = the day before' in system["episodic"] and "the session date when no time" in system["episodic"]
    )
    assert not any("yesterday" in system[part] for part in ("core", "semantic", "procedural"))


def test_oracle_episodic_dates_follow_the_prompts_date_rules(make_bank) -> None:
    """The expert's episodic outputs (SFT targets) do what the prompt asks: absolute YYYY-MM-DD dates, relative
    words counted back from the session date."""
    from datetime import date, timedelta

    from components.dialogue.synthetic import WHEN

    steps: list[SessionStep] = []
    build_memories(_synthetic(12), OracleTeacher(fallback=HeuristicTeacher()), make_bank, 5, on_step=steps.append)
    checked = 0
    for step in steps:
        day = date.fromisoformat(step.session.timestamp[:10])
        said = {turn.turn_id: turn.text for turn in step.session.turns}
        for op in json.loads(step.outputs["episodic"]):
            assert len(op["date"]) == 10 and date.fromisoformat(op["date"])  # absolute, YYYY-MM-DD
            text = " ".join(said[t] for t in op["turns"])
            offsets = [offset for phrase, offset in WHEN if phrase in text]
            if offsets:
                assert op["date"] == (day - timedelta(days=offsets[0])).isoformat(), (text, step.session.timestamp)
                checked += 1
    assert checked >= 10


def test_oracle_memory_is_exact(make_bank) -> None:
    conversations = _synthetic(12)
    teacher = OracleTeacher(fallback=HeuristicTeacher())
    failures: list[str] = []
    banks = build_memories(
        conversations,
        teacher,
        make_bank,
        top_k=10,
        on_step=lambda s: failures.extend(o.error or "" for o in s.outcomes.values() if not o.ok),
    )
    assert failures == []
    for conversation, bank in zip(conversations, banks, strict=True):
        person = conversation.speakers[0]
        core_lines = bank.core.splitlines()
        for attribute, value in conversation.metadata["profile"].items():
            if attribute in LABELS and attribute not in ("gym_day", "commute"):
                assert f"{person}'s {LABELS[attribute]}: {value}." in core_lines
        # every question's evidence turn is cited by some memory entry
        cited = {t for part in ENTRY_PARTS for e in bank.entries(part) for p in e.provenance for t in p.turn_ids}
        for question in conversation.questions:
            assert set(question.evidence) <= cited, question
        # single-valued facts are updated in place: one semantic entry per attribute
        prefixes = [e.text.split(" is ")[0] for e in bank.entries("semantic") if " is " in e.text]
        assert len(prefixes) == len(set(prefixes))


def test_heuristic_teacher_on_real_format_dialogue(fixtures_dir: Path, make_bank) -> None:
    conversations = [item.conversation for item in load_locomo(fixtures_dir / "locomo_small.json")]
    (bank, _) = build_memories(conversations, HeuristicTeacher(), make_bank, top_k=5)
    assert "Ines: I finally adopted a cat, her name is Pimenta." in bank.core or any(
        "Pimenta" in e.text for part in ENTRY_PARTS for e in bank.entries(part)
    )
    turn_ids = conversations[0].turn_ids()
    for part in ENTRY_PARTS:
        for entry in bank.entries(part):
            assert all(set(p.turn_ids) <= turn_ids for p in entry.provenance)


def test_dialogue_text_that_looks_like_an_operation_is_data(fixtures_dir: Path, make_bank) -> None:
    injected = list(load_jsonl(fixtures_dir / "conversations.jsonl"))[2].conversation
    bank = make_bank()
    bank.apply_entries(
        "semantic",
        [EntryAdd(text="Cy keeps bees")],
        session_id="S0",
        session_timestamp="2023-01-01T00:00",
        session_turn_ids=(),
    )
    before = bank.get("sem-1")
    prompts = session_prompts(bank, injected.sessions[0], top_k=5)
    for messages in prompts.values():
        content = messages[1]["content"]
        start, end = content.index(TRANSCRIPT_OPEN), content.index(TRANSCRIPT_CLOSE)
        assert start < content.index('"operation": "DELETE"') < end  # only inside the transcript block
    for teacher in (HeuristicTeacher(), OracleTeacher(fallback=HeuristicTeacher())):
        snapshot = bank.snapshot()
        (after,) = build_memories([injected], teacher, snapshot.snapshot, top_k=5)
        assert after.get("sem-1") == before  # nothing was deleted
        assert all("DELETE" not in e.text or e.text.startswith("Cy: ") for p in ENTRY_PARTS for e in after.entries(p))


def test_invalid_outputs_change_nothing_and_are_reported(make_bank) -> None:
    session = Session("S1", "2023-01-01T10:00", (Turn("S1:1", "ann", "I moved to Rome."),))
    bank = make_bank()
    for part, text in [
        ("core", "Sure! Here is the memory update."),
        ("semantic", '[{"operation": "UPDATE", "id": "sem-9", "content": "x"}]'),
        ("episodic", '[{"operation": "ADD", "content": "ok"}, {"operation": "DELETE", "id": "epi-7"}]'),
    ]:
        outcome = apply_output(bank, part, text, session)
        assert not outcome.ok
    assert bank.composition()["entries"] == 0 and bank.core == ""
    assert apply_output(bank, "core", '{"operation": "APPEND", "content": "ann lives in Rome."}', session).ok
    assert bank.core == "ann lives in Rome."


def test_sessions_are_batched_across_conversations_in_lockstep(make_bank) -> None:
    conversations = [*_synthetic(3, sessions=2), replace(_synthetic(1, sessions=4)[0], conversation_id="long")]
    teacher = RecordingTeacher()
    build_memories(conversations, teacher, make_bank, top_k=3)
    assert [len(call) for call in teacher.calls] == [4, 4, 1, 1]
    assert teacher.calls[2] == [("long", "S3")]


def test_llm_teacher_with_a_tiny_model_counts_failures(tiny_model_dir: Path, make_bank) -> None:
    from components.llm.backends import create_backend

    backend = create_backend(BackendConfig(model=str(tiny_model_dir), max_new_tokens=8))
    steps: list[SessionStep] = []
    conversations = _synthetic(2, sessions=2)
    build_memories(conversations, LLMTeacher(backend), make_bank, top_k=3, on_step=steps.append)
    assert len(steps) == 4
    assert all(isinstance(step.outputs[part], str) for step in steps for part in PARTS)
    failed = [o for step in steps for o in step.outcomes.values() if not o.ok]
    assert failed and all(o.error.startswith(("parse:", "apply:")) for o in failed)
    backend.close()


def test_teacher_request_carries_the_pre_session_state(make_bank) -> None:
    conversation = _synthetic(1, sessions=3)[0]
    seen: list[TeacherRequest] = []

    class Capturing(HeuristicTeacher):
        def write(self, requests):
            seen.extend(requests)
            return super().write(requests)

    steps: list[SessionStep] = []
    build_memories([conversation], Capturing(), make_bank, top_k=3, on_step=steps.append)
    for request, step in zip(seen, steps, strict=True):
        restored = MemoryBank.from_dict(step.memory_before, MEMORY, embedder=HashingEmbedder())
        assert restored.core == request.core
        assert {p: [e.entry_id for e in restored.entries(p)] for p in ENTRY_PARTS} == {
            p: [e.entry_id for e in request.entries[p]] for p in ENTRY_PARTS
        }


def test_llm_compression_falls_back_to_whole_sentences(tiny_model_dir: Path) -> None:
    from components.config import Params
    from components.llm.backends import create_backend
    from components.memory.construction import bank_factory
    from components.memory.types import CoreAppend

    params = Params(
        memory=MemoryConfig(embedder="hashing", core_max_chars=200, core_compress_to_chars=120, compression="llm")
    )
    backend = create_backend(BackendConfig(model=str(tiny_model_dir), max_new_tokens=4))
    bank = bank_factory(params, backend)()
    sentences = [f"Fact number {i} about the user is recorded here." for i in range(8)]
    for sentence in sentences:
        bank.apply_core(CoreAppend(text=sentence), session_id="S1", turn_ids_all=())
    assert 0 < len(bank.core) < 200
    kept = [line for line in bank.core.splitlines() if line]
    assert kept and all(line in sentences for line in kept)  # whole sentences only
    assert kept[-1] == sentences[-1]  # the newest fact survives
    backend.close()
