"""RULER's QA tasks as in MemAgent: a question's gold paragraphs hidden among distractors from the whole dev pool.

One machinery serves both sources (``QAPool``): RULER-HotpotQA (``qa_2``: two supporting paragraphs) and
RULER-SQuAD (``qa_1``: one gold paragraph). Every RNG is seeded with the source's name, so the sets of one source
never depend on another's settings.

- Questions: one seeded permutation of the dev questions; evaluation takes its first ``eval_questions``, training
  candidates come from its end (reversed), so the two are disjoint and each is stable when the other grows.
- Inputs (``layout``): the gold paragraphs plus distractors drawn one by one from the source's deduplicated pool
  with a per-question RNG, each document getting a random sort key. The input of length ``L`` holds the gold
  documents and the first ``L - gold`` distractors, ordered by key. So the inputs of one question are nested (a
  shorter one is a subsequence of a longer one, gold always present and uniformly placed), and a length's input
  does not depend on which other lengths are built.
- Training inputs (HotpotQA only) exclude every evaluation question's gold paragraphs, so training never reads
  the evidence of an evaluation answer.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from components.longcontext.schema import LongContextSample
from components.longcontext.sources import QAPool, QAQuestion


def rng_for(seed: int, *parts: object) -> random.Random:
    """An independent RNG per purpose (string seeds hash with SHA-512: stable across runs and processes)."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


def split_questions(pool: QAPool, eval_count: int, seed: int) -> tuple[list[QAQuestion], list[QAQuestion]]:
    """``(evaluation questions, training candidates in preference order)`` of ``pool``; disjoint."""
    questions = pool.questions
    if eval_count > len(questions):
        raise ValueError(f"{eval_count} evaluation questions, but the {pool.name} set has {len(questions)}")
    order = list(range(len(questions)))
    rng_for(seed, pool.name, "questions").shuffle(order)
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


def layout(question: QAQuestion, pool: QAPool, max_length: int, seed: int, excluded: Collection[int] = ()) -> Layout:
    """Gold + distractors from ``pool`` up to ``max_length`` documents (module docstring); ``excluded`` never
    appears."""
    gold = list(question.gold_ids)
    available = pool.pool_size - len(set(excluded) | set(gold))
    if max_length < len(gold) or max_length - len(gold) > available:
        raise ValueError(
            f"question {question.qid}: {max_length} documents need {len(gold)} gold + {max_length - len(gold)} "
            f"distractors, but {available} distractors are available"
        )
    rng = rng_for(seed, pool.name, "distractors", question.qid)
    keyed = [(rng.random(), doc, len(gold)) for doc in gold]
    seen = set(gold) | set(excluded)
    while len(keyed) < max_length:
        doc = pool.id_base + rng.randrange(pool.pool_size)
        if doc not in seen:
            seen.add(doc)
            keyed.append((rng.random(), doc, len(keyed) + 1))
    keyed.sort()
    return Layout(array("i", (doc for _, doc, _ in keyed)), array("i", (n for _, _, n in keyed)))


def make_sample(task: str, question: QAQuestion, docs: Sequence[int], split: str, tokens: int) -> LongContextSample:
    """The ``task`` sample record of ``question`` over the input ``docs``."""
    suffix = f"-{len(docs):05d}" if split == "eval" else ""
    gold = set(question.gold_ids)
    return LongContextSample(
        id=f"{task}-{split}-{question.qid}{suffix}",
        task=task,
        split=split,
        question=question.question,
        answers=question.answers,
        doc_ids=tuple(docs),
        length_tokens=tokens,
        gold_doc_ids=tuple(d for d in docs if d in gold),
        source_id=question.qid,
        meta=dict(question.meta),
    )


def eval_gold(questions: Sequence[QAQuestion]) -> set[int]:
    """Every gold paragraph of the evaluation questions (kept out of training inputs)."""
    return {doc for q in questions for doc in q.gold_ids}
