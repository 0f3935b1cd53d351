"""RULER-HotpotQA as in MemAgent: a question's gold paragraphs hidden among distractors from the whole dev pool.

- Questions: one seeded permutation of the dev questions; evaluation takes its first ``eval_questions``, training
  candidates come from its end (reversed), so the two are disjoint and each is stable when the other grows.
- Inputs (``layout``): the gold paragraphs (by supporting-fact title) plus distractors drawn one by one from the
  deduplicated pool with a per-question RNG, each document getting a random sort key. The input of length ``L``
  holds the gold documents and the first ``L - gold`` distractors, ordered by key. So the inputs of one question are
  nested (a shorter one is a subsequence of a longer one, gold always present and uniformly placed), and a length's
  input does not depend on which other lengths are built.
- Training inputs exclude every evaluation question's gold paragraphs, so training never reads the evidence of an
  evaluation answer.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from components.longcontext.schema import LongContextSample
from components.longcontext.sources import HotpotData, HotpotQuestion


def rng_for(seed: int, *parts: object) -> random.Random:
    """An independent RNG per purpose (string seeds hash with SHA-512: stable across runs and processes)."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


def split_questions(
    questions: Sequence[HotpotQuestion], eval_count: int, seed: int
) -> tuple[list[HotpotQuestion], list[HotpotQuestion]]:
    """``(evaluation questions, training candidates in preference order)``; disjoint."""
    if eval_count > len(questions):
        raise ValueError(f"eval_questions={eval_count} but the dev set has {len(questions)} questions")
    order = list(range(len(questions)))
    rng_for(seed, "hotpotqa", "questions").shuffle(order)
    chosen = [questions[i] for i in order[:eval_count]]
    candidates = [questions[i] for i in reversed(order[eval_count:])]
    return chosen, candidates


@dataclass(frozen=True)
class Layout:
    """A question's largest input: ``ids`` in reading order and, per document, the smallest length that holds it."""

    ids: array
    min_length: array

    def docs(self, length: int) -> list[int]:
        """The input of ``length`` documents (gold included), in reading order."""
        return [doc for doc, needed in zip(self.ids, self.min_length, strict=True) if needed <= length]


def layout(
    question: HotpotQuestion, pool_size: int, max_length: int, seed: int, excluded: Collection[int] = ()
) -> Layout:
    """Gold + distractors up to ``max_length`` documents (module docstring); ``excluded`` never appears."""
    gold = list(question.gold_ids)
    available = pool_size - len(set(excluded) | set(gold))
    if max_length < len(gold) or max_length - len(gold) > available:
        raise ValueError(
            f"question {question.qid}: {max_length} documents need {len(gold)} gold + {max_length - len(gold)} "
            f"distractors, but {available} distractors are available"
        )
    rng = rng_for(seed, "hotpotqa", "distractors", question.qid)
    keyed = [(rng.random(), doc, len(gold)) for doc in gold]
    seen = set(gold) | set(excluded)
    while len(keyed) < max_length:
        doc = rng.randrange(pool_size)
        if doc not in seen:
            seen.add(doc)
            keyed.append((rng.random(), doc, len(keyed) + 1))
    keyed.sort()
    return Layout(array("i", (doc for _, doc, _ in keyed)), array("i", (n for _, _, n in keyed)))


def make_sample(question: HotpotQuestion, docs: Sequence[int], split: str, tokens: int) -> LongContextSample:
    """The sample record of ``question`` over the input ``docs``."""
    suffix = f"-{len(docs):05d}" if split == "eval" else ""
    gold = set(question.gold_ids)
    return LongContextSample(
        id=f"hotpotqa-{split}-{question.qid}{suffix}",
        task="hotpotqa",
        split=split,
        question=question.question,
        answers=(question.answer,),
        doc_ids=tuple(docs),
        length_tokens=tokens,
        gold_doc_ids=tuple(d for d in docs if d in gold),
        source_id=question.qid,
        meta={"type": question.type, "level": question.level},
    )


def doc_triples(data: HotpotData, docs: Sequence[int]) -> list[tuple[int, str, str]]:
    """``(doc_id, title, text)`` for token counting."""
    return [(d, data.titles[d], data.texts[d]) for d in docs]


def eval_gold(questions: Sequence[HotpotQuestion]) -> set[int]:
    """Every gold paragraph of the evaluation questions (kept out of training inputs)."""
    return {doc for q in questions for doc in q.gold_ids}
