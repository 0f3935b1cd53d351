"""Judges: is a question answered correctly from a memory? Batched over every (memory, question) pair at once.

Both judges retrieve the same way: per question, the ``top_k`` entries most similar to it over the three
entry parts (``MemoryBank.retrieve``; one search per distinct bank, through the shared ``EmbeddingCache``),
shown with the whole core block. Both report the same provenance, used by contribution-aware weighting:

* ``core_contains``: the normalised gold answer occurs in the normalised core block;
* ``retrieved_parts``: the part of each retrieved entry, best first;
* ``supporting_parts``: the part of each retrieved entry whose normalised ``"YYYY-MM-DD text"`` contains the
  normalised gold answer (the entries that could have answered).

"Contains" is whole-word containment of ``components.text.normalise_text`` results (NFKC, case-folded,
non-word runs -> one space; ``contains_normalised``): "Oslo" is found in "moved to Oslo." but "5" is not found
in "2025". An empty normalised answer is never contained.

``ContainmentJudge``: correct iff ``core_contains`` or some retrieved entry supports the answer, i.e. the
answer is contained in the core block or in ONE retrieved entry (its date as YYYY-MM-DD + its text); a match
straddling two memory items does not count.

``LLMJudge``: the answerer backend answers from ``answer_messages(question, core, retrieved, date)``; the
judge backend grades each answer CORRECT/WRONG against the gold answer (``judge_messages``), parsed
strictly (``parse_judgement``): anything else is WRONG. One ``generate`` call per backend per ``judge``
call; identical prompts are generated once (both from ``components.llm.judging``). An empty or "not answerable"
answer is WRONG without grading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from components.config import Params
from components.llm.judging import generate_unique, parse_judgement
from components.memory.bank import MemoryBank
from components.memory.prompts import NOT_ANSWERABLE, Message, answer_messages
from components.memory.types import MemoryEntry, MemoryPart
from components.text import contains_normalised, normalise_text

if TYPE_CHECKING:
    from components.config import ADRPOConfig
    from components.llm.backends import GenerationBackend, SamplingParams


@dataclass(frozen=True, slots=True, eq=False)
class JudgeItem:
    """One question asked of one memory. ``date`` is "today" for the answerer (the session's date)."""

    bank: MemoryBank
    question: str
    answer: str
    date: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judged question: correctness plus where the answer could have come from."""

    correct: bool
    core_contains: bool
    retrieved_parts: tuple[MemoryPart, ...]
    supporting_parts: tuple[MemoryPart, ...]
    response: str | None = None  # the answerer's answer (LLMJudge)
    judgement: str | None = None  # the judge's raw reply (LLMJudge)


@runtime_checkable
class Judge(Protocol):
    """Judges every item in one batched step; returns one ``Verdict`` per item, in order."""

    top_k: int

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


# ---------------------------------------------------------------------------------------------
# shared retrieval and containment


def entry_text(entry: MemoryEntry) -> str:
    """How an entry is matched: its date (YYYY-MM-DD) then its text."""
    return f"{entry.timestamp[:10]} {entry.text}"


def retrieve_for_items(items: Sequence[JudgeItem], top_k: int) -> list[list[tuple[MemoryEntry, MemoryPart]]]:
    """Per item, the ``top_k`` entries retrieved for its question (one search per distinct bank)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    by_bank: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        by_bank.setdefault(id(item.bank), []).append(index)
    out: list[list[tuple[MemoryEntry, MemoryPart]]] = [[] for _ in items]
    for indices in by_bank.values():
        bank = items[indices[0]].bank
        if not len(bank):
            continue
        hits = bank.retrieve([items[i].question for i in indices], k=top_k)
        for i, row in zip(indices, hits, strict=True):
            out[i] = [(hit.entry, hit.part) for hit in row]
    return out


class _Provenance:
    """Containment provenance with memoised normalisation (entries and cores are shared across snapshots)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[MemoryEntry, str]] = {}
        self._cores: dict[str, str] = {}

    def entry(self, entry: MemoryEntry) -> str:
        hit = self._entries.get(id(entry))
        if hit is None or hit[0] is not entry:
            hit = (entry, normalise_text(entry_text(entry)))
            self._entries[id(entry)] = hit
        return hit[1]

    def core(self, core: str) -> str:
        norm = self._cores.get(core)
        if norm is None:
            norm = self._cores[core] = normalise_text(core)
        return norm

    def verdict(
        self, item: JudgeItem, retrieved: Sequence[tuple[MemoryEntry, MemoryPart]]
    ) -> tuple[bool, tuple[MemoryPart, ...], tuple[MemoryPart, ...]]:
        gold = normalise_text(item.answer)
        core_contains = contains_normalised(gold, self.core(item.bank.core))
        supporting = tuple(part for entry, part in retrieved if contains_normalised(gold, self.entry(entry)))
        return core_contains, tuple(part for _, part in retrieved), supporting


# ---------------------------------------------------------------------------------------------
# containment


class ContainmentJudge:
    """Offline, deterministic: correct iff the gold answer is in the core block or in one retrieved entry."""

    def __init__(self, top_k: int = 10) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        provenance = _Provenance()
        verdicts = []
        for item, retrieved in zip(items, retrieve_for_items(items, self.top_k), strict=True):
            core_contains, parts, supporting = provenance.verdict(item, retrieved)
            verdicts.append(Verdict(core_contains or bool(supporting), core_contains, parts, supporting))
        return verdicts


# ---------------------------------------------------------------------------------------------
# LLM answerer + judge

JUDGE_SYSTEM = (
    "You grade answers given by an assistant that answers questions about a user from its memory. You see the "
    "question, the gold answer and the assistant's response. Reply CORRECT when the response states the same "
    "fact as the gold answer: paraphrases, synonyms, extra harmless detail, different capitalisation or "
    "spelling of names, and other formats of the same date (2023-03-01, March 1 2023, 1 Mar 2023, 1st of March "
    "2023) all count as correct. Reply WRONG when the response states a different fact, contradicts the gold "
    "answer, leaves out the detail the question asks for, lists several candidates without committing to one, "
    "or says it cannot answer. Reply with exactly one word: CORRECT or WRONG."
)


def judge_messages(question: str, gold: str, response: str) -> list[Message]:
    """Chat messages asking the judge to grade ``response`` against ``gold``."""
    user = f"Question: {question}\nGold answer: {gold}\nResponse: {response}\nVerdict (CORRECT or WRONG):"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_NOT_ANSWERABLE = normalise_text(NOT_ANSWERABLE)


class LLMJudge:
    """Answers with ``answerer`` from core + retrieved entries, grades with ``judge_backend``; batched.

    ``answer_params`` / ``judge_params`` override the backends' default sampling (e.g. a few tokens for the
    judge); ``None`` = the backend's configured sampling.
    """

    def __init__(
        self,
        answerer: GenerationBackend,
        judge_backend: GenerationBackend,
        top_k: int = 10,
        *,
        answer_params: SamplingParams | None = None,
        judge_params: SamplingParams | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.answerer = answerer
        self.judge_backend = judge_backend
        self.top_k = top_k
        self.answer_params = answer_params
        self.judge_params = judge_params

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        if not items:
            return []
        provenance = _Provenance()
        retrieved = retrieve_for_items(items, self.top_k)
        prompts = [
            answer_messages(item.question, item.bank.core, [entry for entry, _ in hits], item.date)
            for item, hits in zip(items, retrieved, strict=True)
        ]
        responses = [text.strip() for text in generate_unique(self.answerer, prompts, self.answer_params)]
        graded = [i for i, r in enumerate(responses) if normalise_text(r) not in ("", _NOT_ANSWERABLE)]
        replies = generate_unique(
            self.judge_backend,
            [judge_messages(items[i].question, items[i].answer, responses[i]) for i in graded],
            self.judge_params,
        )
        judgement: dict[int, str] = dict(zip(graded, replies, strict=True))
        verdicts = []
        for index, (item, hits) in enumerate(zip(items, retrieved, strict=True)):
            core_contains, parts, supporting = provenance.verdict(item, hits)
            reply = judgement.get(index)
            correct = reply is not None and parse_judgement(reply) is True
            verdicts.append(Verdict(correct, core_contains, parts, supporting, responses[index], reply))
        return verdicts


def make_judge(
    cfg: ADRPOConfig, answerer: GenerationBackend | None = None, judge_backend: GenerationBackend | None = None
) -> ContainmentJudge | LLMJudge:
    """The judge ``cfg.judge`` names, retrieving ``cfg.answer_top_k`` entries per question.

    ``llm`` needs both backends (e.g. ``create_backend(params.backends.answerer)`` and ``...judge``).
    """
    if cfg.judge == "containment":
        return ContainmentJudge(cfg.answer_top_k)
    if cfg.judge == "llm":
        if answerer is None or judge_backend is None:
            raise ValueError("adrpo.judge is 'llm': pass the answerer and judge backends")
        return LLMJudge(answerer, judge_backend, cfg.answer_top_k)
    raise ValueError(f"unknown judge {cfg.judge!r}; expected containment or llm")


def build_judge(params: Params) -> tuple[ContainmentJudge | LLMJudge, list[GenerationBackend]]:
    """``(judge, backends to close)`` for ``adrpo.judge``; ``llm`` builds ``backends.answerer`` and ``backends.judge``
    (one backend when both are configured alike)."""
    cfg = params.adrpo
    if cfg.judge != "llm":
        return make_judge(cfg), []
    from components.llm.backends import create_backend

    answerer = create_backend(params.backends.answerer)
    try:
        same = params.backends.judge == params.backends.answerer
        judge_backend = answerer if same else create_backend(params.backends.judge)
    except BaseException:
        answerer.close()
        raise
    backends = [answerer] if same else [answerer, judge_backend]
    return make_judge(cfg, answerer, judge_backend), backends
