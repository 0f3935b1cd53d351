"""MemAgent's training-set filter: drop questions the base model already answers with no context at all.

Each candidate is asked with ``answer_messages(question, "")`` (the reader's final-answer prompt over an empty
memory), greedily, in batches; a completion whose last ``\\boxed{}`` exactly matches a gold answer
(``components.agent.scoring.reward``) marks the question as answerable from parametric knowledge, and it is dropped.
Candidates are checked in preference order only until enough are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from components.agent.prompts import answer_messages
from components.agent.scoring import reward
from components.llm.backends import GenerationBackend, SamplingParams
from components.longcontext.sources import QAQuestion

MAX_NEW_TOKENS = 64


@dataclass
class FilterResult:
    kept: list[QAQuestion] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # question ids answered correctly without context
    checked: int = 0


def filter_answerable(
    candidates: Sequence[QAQuestion],
    wanted: int,
    backend: GenerationBackend,
    max_new_tokens: int = MAX_NEW_TOKENS,
    on_checked: Callable[[int], None] | None = None,
) -> FilterResult:
    """Keep the first ``wanted`` candidates the model cannot answer without context.

    Each round asks exactly as many new candidates as are still missing, in one batched ``generate`` call.
    ``on_checked(n)`` (e.g. a progress bar's ``advance``) is told how many were checked.
    """
    result = FilterResult()
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    position = 0
    while len(result.kept) < wanted and position < len(candidates):
        batch = list(candidates[position : position + wanted - len(result.kept)])
        position += len(batch)
        generations = backend.generate([answer_messages(q.question, "") for q in batch], params)
        for question, gens in zip(batch, generations, strict=True):
            if reward(gens[0].text, question.answers) >= 1.0:
                result.dropped.append(question.qid)
            else:
                result.kept.append(question)
        result.checked += len(batch)
        if on_checked is not None:
            on_checked(len(batch))
    return result
