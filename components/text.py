"""How memforge compares texts: one normalisation, whole-word containment, the leak check, SQuAD answers.

* ``normalise_text``: NFKC, case-folded, every run of non-word characters (underscores included) one space,
  stripped. The meaning of "the same words" for question generation, the QA quality gate and the judges:
  "STRASSE" and "straße", or full-width "ＡＢＣ" and "abc", normalise alike.
* ``contains_normalised`` / ``contains_words``: whole-word containment ("Oslo" is in "moved to Oslo." but "5" is
  not in "2025"); an answer that normalises to nothing is never contained.
* ``leaks_answer``: a question gives its answer away when the answer's words occur in it.
* ``squad_answer``: SQuAD's answer normalisation (lower case, ASCII punctuation and the articles a/an/the
  dropped, whitespace collapsed), the evaluation metrics' meaning (``components.agent.scoring``); kept apart
  because the published EM / F1 numbers are defined on it.
"""

from __future__ import annotations

import re
import string
import unicodedata

_NON_WORD = re.compile(r"[\W_]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


NOT_ANSWERABLE = "not answerable"  # the answer when the context does not tell (and LoCoMo's adversarial gold)


def normalise_text(text: str) -> str:
    """NFKC, case-folded, every run of non-word characters one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def contains_normalised(needle: str, haystack: str) -> bool:
    """Whether normalised ``needle`` occurs in normalised ``haystack`` as whole words (never when it is empty)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def contains_words(needle: str, haystack: str) -> bool:
    """Whether ``needle`` occurs in ``haystack`` as whole words, both compared by ``normalise_text``."""
    return contains_normalised(normalise_text(needle), normalise_text(haystack))


def leaks_answer(question: str, answer: str) -> bool:
    """Whether ``question`` gives ``answer`` away: the answer's words occur in it (``contains_words``)."""
    return contains_words(answer, question)


def squad_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, ASCII punctuation and articles dropped, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())
