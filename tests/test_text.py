"""The one text module: normalisation, whole-word containment, the leak check and SQuAD's answer normalisation."""

from __future__ import annotations

import re

import pytest

from components.text import contains_normalised, contains_words, leaks_answer, normalise_text, squad_answer


def _lowercase_only(text: str) -> str:
    """The normaliser the question generators used before this module: ``lower()``, no NFKC, no case folding."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Moved to Oslo, in May!", "moved to oslo in may"),
        ("snake_case -- and  spaces", "snake case and spaces"),
        ("Hauptstraße", "hauptstrasse"),  # case folding, not just lower()
        ("ＩＫＥＡ　１２３", "ikea 123"),  # NFKC: full-width letters, digits and space
        ("Café", "café"),  # accents stay: only compatibility forms are folded
        ("  ?!  ", ""),
    ],
)
def test_normalise_text(text: str, expected: str) -> None:
    assert normalise_text(text) == expected


def test_containment_is_whole_words_and_never_of_nothing() -> None:
    assert contains_words("Oslo", "She moved to Oslo.")
    assert contains_words("new york", "New-York City")
    assert not contains_words("5", "in 2025")
    assert not contains_words("Oslo", "Oslofjord")
    assert not contains_words("?!", "anything ?! at all")  # an answer without words is never contained
    assert contains_normalised("oslo", "moved to oslo") and not contains_normalised("", "moved to oslo")


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        ("HAUPTSTRASSE", "We met on the Hauptstraße yesterday."),
        ("IKEA", "I bought a shelf at ＩＫＥＡ."),
    ],
)
def test_containment_agrees_with_the_gate_where_lower_case_did_not(answer: str, text: str) -> None:
    """The generators' old ``lower()`` normaliser said "not in the text" here; the gate (now everyone) says it is."""
    assert f" {_lowercase_only(answer)} " not in f" {_lowercase_only(text)} "
    assert contains_words(answer, text)
    assert leaks_answer(f"Was it {text.rstrip('.')}?", answer)


def test_leak_check_is_whole_word_containment_of_the_answer() -> None:
    assert leaks_answer("Is Biscuit the name of Alice's dog?", "biscuit")
    assert not leaks_answer("Which category is it in?", "cat")
    assert not leaks_answer("Which day?", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple, a pear  ", "apple pear"),
        ("THEATRE", "theatre"),  # an article inside a word stays
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_squad_answer(text: str, expected: str) -> None:
    assert squad_answer(text) == expected
