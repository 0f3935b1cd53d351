"""Answer scoring: ``\\boxed{}`` extraction, substring EM / EM / F1 and the 0/1 reward, on hand-computed cases
(SQuAD's normalisation itself is tested in ``test_text.py``)."""

from __future__ import annotations

import pytest

from components.agent.scoring import (
    answers_found,
    boxed_answers,
    exact_match,
    f1_score,
    last_boxed,
    reward,
    score_prediction,
    substring_exact_match,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{Paris}.", ["Paris"]),
        ("no box here", []),
        ("\\boxed{1} then \\boxed{2}", ["1", "2"]),
        ("\\boxed{\\frac{1}{2}}", ["\\frac{1}{2}"]),  # nested braces stay balanced
        ("\\boxed{{a}{b}}", ["{a}{b}"]),
        ("\\boxed{unclosed", []),
        ("\\boxed{open {inner} still open", []),
        ("\\boxed{x} and \\boxed{unclosed", ["x"]),
        ("\\boxed{}", [""]),
        ("\\boxed{\\boxed{x}}", ["\\boxed{x}", "x"]),  # a box inside a box is found too, after its parent
    ],
)
def test_boxed_answers(text: str, expected: list[str]) -> None:
    assert boxed_answers(text) == expected


def test_last_boxed_takes_the_last_or_none() -> None:
    assert last_boxed("first \\boxed{a}, final \\boxed{b}") == "b"
    assert last_boxed("\\boxed{a} \\boxed{b") == "a"
    assert last_boxed("Paris") is None


def test_exact_match_against_any_ground_truth() -> None:
    assert exact_match("the Paris", ["paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("Lyon", ["Paris", "lyon."]) == 1.0
    assert exact_match("Paris", []) == 0.0


def test_substring_exact_match_on_whole_words() -> None:
    assert substring_exact_match("She lives in Paris, France.", ["Paris"]) == 1.0
    assert substring_exact_match("Parisian food", ["Paris"]) == 0.0  # whole words only
    assert substring_exact_match("New York City", ["new york"]) == 1.0
    assert substring_exact_match("anything", ["the"]) == 0.0  # an answer that normalises to nothing never matches
    assert substring_exact_match("Berlin", ["Paris", "Berlin"]) == 1.0


def test_answers_found_per_answer() -> None:
    assert answers_found("The code is 4812, then Oslo.", ["4812", "oslo", "812", "the"]) == [True, True, False, False]
    assert answers_found("anything", []) == []


def test_f1_hand_computed() -> None:
    # prediction "new york city" vs gold "york city hall": common 2, precision 2/3, recall 2/3 -> f1 2/3
    assert f1_score("New York City", ["York City Hall"]) == pytest.approx(2 / 3)
    # pred "paris" vs gold "paris france": precision 1, recall 1/2 -> f1 2/3; best over golds
    assert f1_score("Paris", ["Lyon", "Paris France"]) == pytest.approx(2 / 3)
    assert f1_score("Paris", ["Lyon"]) == 0.0
    assert f1_score("a the", ["an"]) == 1.0  # both normalise to nothing
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)  # counts clip: common = 1 x + 1 y


def test_reward_uses_the_last_boxed_answer_only() -> None:
    assert reward("I think \\boxed{Paris}", ["paris"]) == 1.0
    assert reward("Paris", ["Paris"]) == 0.0  # no box, no reward
    assert reward("\\boxed{Lyon} no wait \\boxed{Paris}", ["Paris"]) == 1.0
    assert reward("\\boxed{Paris} no wait \\boxed{Lyon}", ["Paris"]) == 0.0
    assert reward("\\boxed{The Paris.}", ["Lyon", "paris"]) == 1.0  # any ground truth, normalised
    assert reward("\\boxed{Paris, France}", ["Paris"]) == 0.0  # exact, not substring


def test_score_prediction_prefers_the_box_and_falls_back_to_text() -> None:
    boxed = score_prediction("It is \\boxed{New York}", ["new york city"])
    assert boxed == {"sub_em": 0.0, "em": 0.0, "f1": pytest.approx(0.8), "boxed": 1.0}
    plain = score_prediction("It is New York City", ["new york city"])
    assert plain["sub_em"] == 1.0 and plain["em"] == 0.0 and plain["boxed"] == 0.0
    assert plain["f1"] == pytest.approx(2 * 0.6 * 1.0 / 1.6)
