"""Scoring long-context samples: alternatives (HotpotQA, SQuAD) or answers that must all be present (needles).

A sample with ``required_answers`` is correct only when every required string occurs in the prediction as a whole
normalised phrase (``all_found``); ``fraction_found`` is RULER's partial credit (``string_match_all``). A sample
without them is scored against its ``answers`` alternatives by ``components.agent.scoring``.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.agent.scoring import answers_found, last_boxed, reward, score_prediction
from components.longcontext.schema import LongContextSample


def all_found(prediction: str, required: Sequence[str]) -> bool:
    """Every required answer occurs in the prediction (normalised, whole words); False when none are required."""
    hits = answers_found(prediction, required)
    return bool(hits) and all(hits)


def fraction_found(prediction: str, required: Sequence[str]) -> float:
    """The share of required answers that occur in the prediction (RULER's partial credit)."""
    hits = answers_found(prediction, required)
    return sum(hits) / len(hits) if hits else 0.0


def score_sample(completion: str, sample: LongContextSample) -> dict[str, float]:
    """``score_prediction`` scores, plus ``all_found`` / ``recall`` (and ``correct``) for needle samples.

    ``correct`` is the headline 0/1: ``all_found`` when answers are required, else substring EM (MemAgent's metric).
    """
    scores = score_prediction(completion, sample.answers)
    if sample.required_answers:
        boxed = last_boxed(completion)
        prediction = completion if boxed is None else boxed
        scores["all_found"] = float(all_found(prediction, sample.required_answers))
        scores["recall"] = fraction_found(prediction, sample.required_answers)
        scores["correct"] = scores["all_found"]
    else:
        scores["correct"] = scores["sub_em"]
    return scores


def sample_reward(completion: str, sample: LongContextSample) -> float:
    """0/1 training reward: the last ``\\boxed{}`` holds all required answers, or exactly matches an alternative."""
    if not sample.required_answers:
        return reward(completion, sample.answers)
    boxed = last_boxed(completion)
    return 0.0 if boxed is None else float(all_found(boxed, sample.required_answers))
