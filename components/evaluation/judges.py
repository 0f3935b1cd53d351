"""Answer judges: is a model's answer to a question about a conversation right, against the gold answers?

Not the ADRPO reward judge (``components.rewards.judges``, which asks whether a MEMORY holds the answer): these
grade the final answer of ``eval_dialogue``. Every judge gives one score in [0, 1] per answer:

* ``em`` and ``f1``: SQuAD exact match and token F1 (``components.agent.scoring``), best over the gold answers;
* ``containment``: 1.0 when a gold answer occurs in the prediction as whole words, both compared by
  ``components.text.normalise_text`` (``contains_words``; the ADRPO containment judge's meaning);
* ``llm``: a backend grades CORRECT/WRONG with a generous LoCoMo-style rubric (``LLM_JUDGE_SYSTEM``), as
  MemBuilder's and Mem0's evaluations do.

Before comparing, dates on both sides are rewritten in ISO form (``canonical_dates``), so "7 May 2023",
"May 7th, 2023" and "2023-05-07" are the same answer to every offline judge.

Abstention counts both ways. When the gold says the question cannot be answered (``gold_abstains``: a LoCoMo
adversarial question, a LongMemEval abstention question, or a gold answer that is itself an abstention), an
answer scores 1.0 exactly when it abstains (``is_abstention``). When the gold gives an answer, an abstaining
answer scores 0.0. An answer with no words (empty) answers nothing and scores 0.0 on every judge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, get_args

from components.agent import scoring
from components.config import AnswerJudgeName
from components.llm.judging import generate_unique, parse_judgement
from components.memory.prompts import NOT_ANSWERABLE
from components.qa.dates import MONTHS
from components.text import contains_words, normalise_text

if TYPE_CHECKING:
    from components.llm.backends import GenerationBackend, Message, SamplingParams

JUDGES: tuple[str, ...] = get_args(AnswerJudgeName)  # ("containment", "f1", "em", "llm")

# ---------------------------------------------------------------------------------------------
# abstention

# An answer abstains when its normalised text IS one of these (short words that are real answers inside a
# sentence: "none of them", "an unknown caller") ...
_ABSTAIN_ANSWERS = frozenset(normalise_text(a) for a in ("none", "unknown", "N/A", "no answer"))
# ... or CONTAINS one of these phrases (whole words). Small on purpose: what answerers and the gold files say.
_ABSTAIN_PHRASES = tuple(
    normalise_text(p)
    for p in (
        NOT_ANSWERABLE,  # memforge's answerer prompt, LoCoMo adversarial golds as loaded
        "unanswerable",
        "cannot be answered",
        "can't be answered",
        "cannot answer",
        "can't answer",
        "cannot be determined",
        "not mentioned",
        "never mentioned",
        "did not mention",  # LongMemEval abstention golds: "You did not mention ..."
        "didn't mention",
        "does not mention",
        "doesn't mention",
        "no mention",
        "no information",
        "not enough information",
        "information provided is not enough",  # LongMemEval abstention golds
        "I don't know",
        "I do not know",
    )
)
_ABSTAIN_CATEGORIES = ("adversarial", "abstention")  # LoCoMo category 5; LongMemEval abstention questions


def is_abstention(text: str) -> bool:
    """Whether the answer says the question cannot be answered: its normalised text is "none", "unknown", "n/a"
    or "no answer", or it contains a phrase such as "not answerable", "not mentioned", "no information",
    "cannot be answered" or "I don't know" (``_ABSTAIN_PHRASES``). An empty answer is not an abstention."""
    norm = normalise_text(text)
    return norm in _ABSTAIN_ANSWERS or any(f" {p} " in f" {norm} " for p in _ABSTAIN_PHRASES)


def gold_abstains(answers: Sequence[str], category: str) -> bool:
    """Whether the gold says the question is not answerable: the category names it (LoCoMo's "adversarial",
    any category containing "abstention") or a gold answer is an abstention (``is_abstention``; LoCoMo
    adversarial questions load with the answer "not answerable", LongMemEval's say "You did not mention ...")."""
    folded = category.casefold()
    return any(name in folded for name in _ABSTAIN_CATEGORIES) or any(is_abstention(a) for a in answers)


# ---------------------------------------------------------------------------------------------
# dates

_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_DAY = r"(?<!\d)(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(\d{4})(?!\d)"
_DAY_MONTH_YEAR = re.compile(rf"{_DAY}\s+(?:of\s+)?\b({_MONTH})\b\.?,?\s+{_YEAR}", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH})\b\.?\s+{_DAY}\b,?\s+{_YEAR}", re.IGNORECASE)
_MONTH_YEAR = re.compile(rf"(?:{_DAY}\s+(?:of\s+)?)?\b({_MONTH})\b\.?,?\s+{_YEAR}", re.IGNORECASE)
_NUMERIC = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_ISO = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")


def _iso(year: str | int, month: str | int, day: str | int) -> str | None:
    try:
        return date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None


def _month(name: str) -> int:
    return MONTHS[name.lower()]


def _month_of_year(match: re.Match[str]) -> str:
    day, month, year = match.groups()
    return match.group(0) if day else f"{year}-{_month(month):02d}"  # a day: not a date (else it is ISO already)


def _us_numeric(match: re.Match[str]) -> str:
    first, second, year = match.groups()
    month, day = (second, first) if int(first) > 12 else (first, second)
    return _iso(year, month, day) or match.group(0)


def canonical_dates(text: str) -> str:
    """``text`` with every full date written as ``YYYY-MM-DD`` and every month of a year as ``YYYY-MM``.

    Read: "7 May 2023", "7th of May, 2023", "8 May, 2023" (LoCoMo's session dates), "May 7, 2023", "May 7th 2023",
    abbreviated months ("Sept. 3 2023"), ISO days with any padding and "-", "/" or "." ("2023/5/7", LongMemEval's
    dates), and "May 2023". Numeric dates with the year last ("05/07/2023") are read month first, the US way
    English-language answerers write them, unless the first number cannot be a month ("25/12/2023" is
    2023-12-25). A day or month that does not exist (30 February), a month and day without a year ("May 7") and
    relative dates ("last week") are left as written.
    """
    text = _DAY_MONTH_YEAR.sub(lambda m: _iso(m[3], _month(m[2]), m[1]) or m[0], text)
    text = _MONTH_DAY_YEAR.sub(lambda m: _iso(m[3], _month(m[1]), m[2]) or m[0], text)
    text = _MONTH_YEAR.sub(_month_of_year, text)
    text = _NUMERIC.sub(_us_numeric, text)
    return _ISO.sub(lambda m: _iso(m[1], m[2], m[3]) or m[0], text)


# ---------------------------------------------------------------------------------------------
# offline judges


def _offline_score(
    metric: Callable[[str, list[str]], float], prediction: str, answers: Sequence[str], abstains: bool
) -> float:
    """``metric`` of the dated-canonical prediction against the dated-canonical golds, after the abstention and
    empty-answer rules of the module docstring."""
    if not normalise_text(prediction):
        return 0.0
    predicted_abstention = is_abstention(prediction)
    if abstains or predicted_abstention:
        return float(abstains and predicted_abstention)
    return metric(canonical_dates(prediction), [canonical_dates(a) for a in answers])


def _contained(prediction: str, answers: list[str]) -> float:
    return float(any(contains_words(answer, prediction) for answer in answers))


def exact_match_score(prediction: str, answers: Sequence[str], abstains: bool) -> float:
    """1.0 when the SQuAD-normalised prediction equals a SQuAD-normalised gold answer, dates in ISO form."""
    return _offline_score(scoring.exact_match, prediction, answers, abstains)


def f1_score(prediction: str, answers: Sequence[str], abstains: bool) -> float:
    """Best SQuAD token F1 of the prediction against the gold answers, dates in ISO form."""
    return _offline_score(scoring.f1_score, prediction, answers, abstains)


def containment_score(prediction: str, answers: Sequence[str], abstains: bool) -> float:
    """1.0 when a gold answer occurs in the prediction as whole words (``contains_words``), dates in ISO form."""
    return _offline_score(_contained, prediction, answers, abstains)


_OFFLINE: dict[str, Callable[[str, Sequence[str], bool], float]] = {
    "containment": containment_score,
    "f1": f1_score,
    "em": exact_match_score,
}

# ---------------------------------------------------------------------------------------------
# LLM judge


@dataclass(frozen=True, slots=True)
class AnswerItem:
    """One answered question: the gold ``answers`` and whether they say it is not answerable (``abstains``)."""

    question: str
    answers: tuple[str, ...]
    prediction: str
    abstains: bool


LLM_JUDGE_SYSTEM = (
    "You grade a response to a question about people's past conversations against the gold answer. Be generous. "
    "Reply CORRECT when the response states the fact the gold answer gives or touches on the same topic, even "
    "when it is much longer, worded differently or adds detail; when several gold answers are listed, matching "
    "one is enough. For a question about time, reply CORRECT when the response refers to the same date or period "
    "in any format (2023-05-07, 7 May 2023, May 7th, 2023) or by a relative phrase that comes to the same time. "
    "Reply WRONG when the response gives a different fact, contradicts the gold answer, gives the fact about a "
    "different person than the question asks about, or does not answer. A response saying the question cannot "
    "be answered (not answerable, no information, not mentioned, I don't know) is CORRECT only when the gold "
    "answer says the question is not answerable; when the gold answer gives any specific information, such a "
    "response is WRONG, and when the gold answer says the question is not answerable, a response that answers "
    "it anyway is WRONG. Reply with exactly one word: CORRECT or WRONG."
)


def answer_judge_messages(item: AnswerItem) -> list[Message]:
    """Chat messages asking the judge to grade ``item.prediction``. A gold that abstains by its category only
    (its text is an answer) is shown as "not answerable"."""
    answers = item.answers
    if item.abstains and not any(is_abstention(a) for a in answers):
        answers = (NOT_ANSWERABLE,)
    label = "Gold answers (any one)" if len(answers) > 1 else "Gold answer"
    gold = f"{label}: {' | '.join(answers)}"
    user = f"Question: {item.question}\n{gold}\nResponse: {item.prediction}\nVerdict (CORRECT or WRONG):"
    return [{"role": "system", "content": LLM_JUDGE_SYSTEM}, {"role": "user", "content": user}]


class LLMAnswerJudge:
    """Grades answers CORRECT (1.0) / WRONG (0.0) with ``backend``: one ``generate`` call per ``judge`` call over
    the distinct prompts; a reply that is not strictly CORRECT or WRONG (``parse_judgement``) is WRONG.

    Settled without asking: an empty answer (0.0) and an abstaining one (1.0 exactly when the gold abstains), the
    rubric's own rule applied the way the offline judges apply it. ``sampling`` = None: the backend's default.
    """

    def __init__(self, backend: GenerationBackend, sampling: SamplingParams | None = None) -> None:
        self.backend = backend
        self.sampling = sampling

    def judge(self, items: Sequence[AnswerItem]) -> list[float]:
        scores = [0.0] * len(items)
        graded = []
        for index, item in enumerate(items):
            if not normalise_text(item.prediction):
                continue
            if is_abstention(item.prediction):
                scores[index] = float(item.abstains)
            else:
                graded.append(index)
        prompts = [answer_judge_messages(items[i]) for i in graded]
        for index, reply in zip(graded, generate_unique(self.backend, prompts, self.sampling), strict=True):
            scores[index] = float(parse_judgement(reply) is True)
        return scores


def score_answers(
    judges: Sequence[str], items: Sequence[AnswerItem], llm: LLMAnswerJudge | None = None
) -> dict[str, list[float]]:
    """Per judge name (in the order given), one score per item, in order. ``llm`` is needed for the "llm" judge."""
    for name in judges:
        if name not in JUDGES:
            raise ValueError(f"unknown answer judge {name!r}; expected one of: {', '.join(JUDGES)}")
        if name == "llm" and llm is None:
            raise ValueError("answer judge 'llm' needs an LLMAnswerJudge (pass llm=...)")
    scores: dict[str, list[float]] = {}
    for name in judges:
        if name in scores:
            continue
        if name == "llm":
            assert llm is not None
            scores[name] = llm.judge(items)
        else:
            score = _OFFLINE[name]
            scores[name] = [score(item.prediction, item.answers, item.abstains) for item in items]
    return scores
