"""Answers in ``\\boxed{}``: extraction, and substring EM (MemAgent's metric), EM and F1 on SQuAD-normalised text.

Answers are compared by ``components.text.squad_answer`` (SQuAD's normalisation); "occurs in" is whole-word
containment (``components.text.contains_normalised``). ``reward`` is memagent_train's 0/1 reward: the exact
match of the LAST boxed answer against any ground truth, after normalisation; no boxed answer scores 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from components.text import contains_normalised, squad_answer

_BOXED = "\\boxed{"


def boxed_answers(text: str) -> list[str]:
    """Every ``\\boxed{...}`` content in ``text``, in order; braces inside are balanced, an unclosed box is skipped."""
    found: list[str] = []
    start = text.find(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append(text[start + len(_BOXED) : i - 1])
        start = text.find(_BOXED, start + len(_BOXED))
    return found


def last_boxed(text: str) -> str | None:
    """The last boxed answer, or None when the text has none."""
    answers = boxed_answers(text)
    return answers[-1] if answers else None


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised ground truth."""
    pred = squad_answer(prediction)
    return float(any(pred == squad_answer(a) for a in answers))


def answers_found(prediction: str, answers: Sequence[str]) -> list[bool]:
    """Per answer: whether it occurs in the prediction as whole words, both SQuAD-normalised (never when it
    normalises to nothing)."""
    pred = squad_answer(prediction)
    return [contains_normalised(squad_answer(a), pred) for a in answers]


def substring_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any ground truth occurs in the prediction (``answers_found``; MemAgent's metric)."""
    return float(any(answers_found(prediction, answers)))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Best token-level F1 of the prediction against the ground truths."""
    pred_tokens = squad_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = squad_answer(answer).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not pred_tokens and not gold_tokens:
            best = 1.0
    return best


def reward(completion: str, answers: Sequence[str]) -> float:
    """memagent_train's reward: exact match of the last ``\\boxed{}`` answer against any ground truth (0/1)."""
    answer = last_boxed(completion)
    return 0.0 if answer is None else exact_match(answer, answers)


def score_prediction(completion: str, answers: Sequence[str]) -> dict[str, float]:
    """Evaluation scores of one final answer: the boxed answer when there is one, else the whole text."""
    boxed = last_boxed(completion)
    prediction = completion if boxed is None else boxed
    return {
        "sub_em": substring_exact_match(prediction, answers),
        "em": exact_match(prediction, answers),
        "f1": f1_score(prediction, answers),
        "boxed": float(boxed is not None),
    }
