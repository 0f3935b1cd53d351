"""Plain helpers shared by test modules (pytest fixtures live in ``conftest.py``; test modules import only this
module and ``llm_fixtures``, never each other)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from components.config import MemoryConfig, Params
from components.dialogue.schema import Session, Turn, session_to_dict
from components.memory.bank import MemoryBank
from components.memory.embedder import EmbeddingCache
from components.memory.types import PARTS
from components.rewards import SessionQuestion, apply_agent

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def memforge_bin() -> str:
    """The `memforge` console script of this interpreter."""
    candidate = Path(sys.executable).parent / "memforge"
    return str(candidate) if candidate.exists() else shutil.which("memforge") or "memforge"


def git_init(path: Path) -> None:
    """A git repo with an identity, for DVC tests."""
    for args in (["init", "-q"], ["config", "user.email", "ci@memforge.test"], ["config", "user.name", "memforge ci"]):
        subprocess.run(["git", *args], cwd=path, check=True)


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


# ---------------------------------------------------------------------------------------------
# Generation backends for the LLM judges' tests (rewards, evaluation): a counting wrapper around a real backend,
# and a scripted one for grading logic without a model.


class CountingBackend:
    """Wraps a real backend, counting generate calls (``calls``: prompts per call) and keeping every prompt."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.conversations: list = []

    def generate(self, conversations, params=None):
        self.calls.append(len(conversations))
        self.conversations.extend(conversations)
        return self.inner.generate(conversations, params)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        pass


class ScriptedBackend:
    """Answers from a fixed function of the last message (grading logic without a model)."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.calls: list[int] = []
        self.conversations: list = []

    def generate(self, conversations, params=None):
        from components.llm.backends import Generation

        self.calls.append(len(conversations))
        self.conversations.extend(conversations)
        return [[Generation(self.reply(c[-1]["content"]), 1, 1, "stop")] for c in conversations]


# ---------------------------------------------------------------------------------------------
# A hand-built ADRPO scenario (test_rewards, test_adrpo): two sessions (A: Oslo + Mochi, B: Kyoto date + yoga
# routine) with G=2 rollouts per memory agent, scored end to end on real banks (HashingEmbedder); every reward and
# weight is computed by hand in the comments next to it.

MEMORY = MemoryConfig(embedder="hashing")


def core(op: str, **fields: str) -> str:
    return json.dumps({"operation": op, **fields})


def entries(*ops: dict) -> str:
    return json.dumps(list(ops))


def add(content: str, date: str | None = None) -> dict:
    return {"operation": "ADD", "content": content, **({"date": date} if date else {})}


SESSION_A = Session(
    "s1",
    "2023-02-10T09:00",
    (Turn("t1", "user", "I live in Oslo now."), Turn("t2", "user", "My dog is called Mochi.")),
)
SESSION_B = Session(
    "s2",
    "2023-03-05T18:00",
    (Turn("t3", "user", "I flew to Kyoto on March 1."), Turn("t4", "user", "I do yoga every Sunday morning.")),
)
QUESTIONS_A = (
    SessionQuestion("c1:s1:q1", "Where does Ingrid live?", "Oslo"),
    SessionQuestion("c1:s1:q2", "What is the name of Ingrid's dog?", "Mochi"),
)
QUESTIONS_B = (
    SessionQuestion("c1:s2:q1", "When did Ingrid fly to Kyoto?", "2023-03-01", "temporal"),
    SessionQuestion("c1:s2:q2", "What does Ingrid do every Sunday morning?", "yoga"),
)

CORE_A0 = core("APPEND", content="Ingrid lives in Oslo.")
SEM_A0 = entries(add("Ingrid has a dog named Mochi."))
SEM_A1 = entries(add("Ingrid's dog is called Mochi."))
EPI_B0 = entries(add("Ingrid flew to Kyoto.", "2023-03-01"))
EPI_B1 = entries(add("Ingrid flew to Kyoto."))  # no date: stamped with the session's date, 2023-03-05
PRO_B0 = entries(add("Every Sunday morning Ingrid does yoga."))
PRO_B1 = entries(add("Ingrid does yoga on Sunday mornings."))
CORE_B1 = core("APPEND", content="Ingrid practises yoga on Sundays.")

EXPERT_A = {"core": CORE_A0, "episodic": "[]", "semantic": SEM_A0, "procedural": "[]"}
ROLLOUTS_A = {
    "core": (CORE_A0, "not json at all"),  # r1: unparseable -> gate 0
    "episodic": ("[]", entries({"operation": "DELETE", "id": "epi-9"})),  # r1: unknown id -> gate 0
    "semantic": (SEM_A0, SEM_A1),
    "procedural": ("[]", "[]"),
}
EXPERT_B = {"core": core("SKIP"), "episodic": EPI_B0, "semantic": "[]", "procedural": PRO_B0}
ROLLOUTS_B = {
    "core": (core("SKIP"), CORE_B1),
    "episodic": (EPI_B0, EPI_B1),
    "semantic": ("[]", entries({"operation": "UPDATE", "id": "sem-7", "content": "x"})),  # r1: unknown id
    "procedural": (PRO_B0, PRO_B1),
}
# token counts: 10 unless listed (entry outputs differ from the expert's by >= 200 tokens, so their ratio counts)
TOKENS = {CORE_A0: 275, SEM_A0: 150, SEM_A1: 400, CORE_B1: 401, EPI_B0: 500, EPI_B1: 200}


def count_tokens(text: str) -> int:
    return TOKENS.get(text, 10)


def bank_after_a(cache: EmbeddingCache) -> MemoryBank:
    """The bank before session B: the expert's session A memory (core Oslo, sem-1 Mochi)."""
    bank = MemoryBank(MEMORY, cache=cache)
    for part in PARTS:
        assert apply_agent(bank, part, EXPERT_A[part], SESSION_A).ok
    return bank


# Hand-computed rewards, reward = gate * task(r) * (1 - 0.8 * penalty):
#  A: task = (1.0, 0.5)   r0 answers Oslo (core) and Mochi (sem); r1 only Mochi (core unparseable)
#     core  r0: 275 tokens -> pen 0.5 -> 1.0 * 0.6 = 0.6;   r1: gate 0 -> 0
#     epi   r0: 1.0;                                         r1: gate 0 -> 0
#     sem   r0: ratio 1 -> 1.0;                              r1: 400/150, ratio 2.67 -> pen 1 -> 0.5 * 0.2 = 0.1
#     pro   r0: 1.0;                                         r1: 0.5
#  B: task = (1.0, 0.5)   r0 answers the date (epi-1 dated 2023-03-01) and yoga (pro); r1 only yoga (core + pro)
#     core  r0: SKIP, 10 tokens -> 1.0;                      r1: 401 tokens -> pen 1 -> 0.5 * 0.2 = 0.1
#     epi   r0: 1.0;               r1: 200/500 = 0.4 -> pen (0.5 - 0.4) / (0.5 - 0.2) = 1/3 -> 0.5 * (1 - 0.8/3) = 11/30
#     sem   r0: [] -> 1.0;                                   r1: gate 0 -> 0
#     pro   r0: 1.0;                                         r1: 0.5
EXPECTED_REWARDS = {
    ("c1:s1", "core"): (0.6, 0.0),
    ("c1:s1", "episodic"): (1.0, 0.0),
    ("c1:s1", "semantic"): (1.0, 0.1),
    ("c1:s1", "procedural"): (1.0, 0.5),
    ("c1:s2", "core"): (1.0, 0.1),
    ("c1:s2", "episodic"): (1.0, 11 / 30),
    ("c1:s2", "semantic"): (1.0, 0.0),
    ("c1:s2", "procedural"): (1.0, 0.5),
}
# retrieval_share (published, the default), per rollout: entries retrieved (top 10) for the session's 2 questions
#  A r0, r1: one entry in memory (semantic) -> semantic 2 -> semantic 4, others 1
#  B r0, r1: three entries (sem-1, one episodic, one procedural) -> 2 each, a tie -> episodic (first in order) 4
#  (the same in both rollouts here, so one mapping per session)
RETRIEVAL_WEIGHTS = {
    "c1:s1": {"core": 1.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0},
    "c1:s2": {"core": 1.0, "episodic": 4.0, "semantic": 1.0, "procedural": 1.0},
}
# answer_hits, pooled over both rollouts' memories (answer-bearing hits):
#  A: core 1 (Oslo in r0's core), semantic 2 (Mochi entry in r0 and r1) -> semantic 4, others 1
#  B: episodic 1 (r0 date), procedural 2 (r0, r1), core 1 (r1's core says yoga) -> procedural 4, others 1
ANSWER_HITS_WEIGHTS = {
    "c1:s1": {"core": 1.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0},
    "c1:s2": {"core": 1.0, "episodic": 1.0, "semantic": 1.0, "procedural": 4.0},
}
# ablation, drop_p = mean_r [task(r) - task(r without p)], w_p = max(1, 4 * drop_p / max drop):
#  A r0: without core 0.5 (drop .5), without sem 0.5 (drop .5); r1: without sem 0 (drop .5)
#     drops core .25, sem .5, epi 0, pro 0 -> core 2, sem 4, epi 1, pro 1
#  B r0: without epi 0.5 (drop .5), without pro 0.5 (drop .5); r1: every part left out keeps 0.5 (drop 0)
#     drops epi .25, pro .25, core 0, sem 0 -> epi 4, pro 4, core 1, sem 1
ABLATION_WEIGHTS = {
    "c1:s1": {"core": 2.0, "episodic": 1.0, "semantic": 4.0, "procedural": 1.0},
    "c1:s2": {"core": 1.0, "episodic": 4.0, "semantic": 1.0, "procedural": 4.0},
}


def session_prompt_rows(cache: EmbeddingCache) -> dict[tuple[str, str], dict]:
    """Rows of the synth_qa prompts dataset for sessions A and B (as join_prompts writes them)."""
    sessions = {"s1": (SESSION_A, MemoryBank(MEMORY, cache=cache), QUESTIONS_A, EXPERT_A)}
    sessions["s2"] = (SESSION_B, bank_after_a(cache), QUESTIONS_B, EXPERT_B)
    rows = {}
    for sid, (session, bank, questions, expert) in sessions.items():
        for part in PARTS:
            rows[sid, part] = {
                "prompt_id": f"c1:{sid}:{part}",
                "conversation_id": "c1",
                "session_id": sid,
                "session_index": int(sid[1:]) - 1,
                "split": "rl",
                "part": part,
                "prompt": [{"role": "user", "content": "..."}],
                "expert_output": expert[part],
                "memory_before": json.dumps(bank.to_dict()),
                "session": json.dumps(session_to_dict(session)),
                "questions": [
                    {"qa_id": q.qa_id, "question": q.question, "answer": q.answer, "type": q.type, "evidence": []}
                    for q in questions
                ],
            }
    return rows


def small_corpus_params(root: Path) -> Params:
    """Params for the fixtures' hand-written conversations plus 10 synthetic ones, every output under ``root``:
    the small corpus the ingest -> expert -> synth_qa fixtures build on."""
    from components.config import ExpertConfig, IngestConfig, SourceConfig, SyntheticConfig, SynthQAConfig

    return Params(
        ingest=IngestConfig(
            sources=(SourceConfig("jsonl", str(FIXTURES / "conversations.jsonl")), SourceConfig("synthetic", "")),
            synthetic=SyntheticConfig(num_conversations=10, sessions_per_conversation=4),
            output_dir=str(root / "data" / "dialogues"),
            report_path=str(root / "reports" / "ingest_quality.json"),
        ),
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(
            output_dir=str(root / "data" / "trajectories"), report_path=str(root / "reports" / "expert.json")
        ),
        synth_qa=SynthQAConfig(
            output_dir=str(root / "data" / "qa"),
            report_path=str(root / "reports" / "synth_qa.json"),
            mix_tolerance=0.25,
            max_uncovered_fraction=0.1,  # the hand-written injection-only session has nothing to ask about
        ),
    )
