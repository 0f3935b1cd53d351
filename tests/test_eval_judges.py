"""Answer judges of eval_dialogue on hand-made cases: abstention both ways, dates in different formats, several gold
answers, empty answers; the LLM judge's prompts, batching and strict parsing (a tiny real model, a scripted one)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from components.config import AnswerJudgeName, BackendConfig
from components.evaluation.judges import (
    JUDGES,
    LLM_JUDGE_SYSTEM,
    AnswerItem,
    LLMAnswerJudge,
    answer_judge_messages,
    canonical_dates,
    containment_score,
    exact_match_score,
    f1_score,
    gold_abstains,
    is_abstention,
    score_answers,
)
from components.memory.prompts import NOT_ANSWERABLE
from tests.helpers import CountingBackend, ScriptedBackend

OFFLINE = {"containment": containment_score, "f1": f1_score, "em": exact_match_score}


def test_judge_names_are_the_config_names() -> None:
    assert JUDGES == ("containment", "f1", "em", "llm")
    assert set(JUDGES) == set(get_args(AnswerJudgeName))
    assert set(OFFLINE) | {"llm"} == set(JUDGES)


@pytest.mark.parametrize(
    "text",
    [
        NOT_ANSWERABLE,
        "Not answerable.",
        "None",
        "unknown",
        "N/A",
        "I don't know",
        "I don’t know.",  # curly apostrophe
        "The conversation does not mention her sister's name.",
        "That was never mentioned.",
        "There is no information about it.",
        "This question cannot be answered from the memory.",
        "The information provided is not enough. You did not mention a second car.",  # LongMemEval style
    ],
)
def test_abstentions(text: str) -> None:
    assert is_abstention(text)


@pytest.mark.parametrize("text", ["", "Oslo", "none of them", "an unknown caller", "She mentioned Oslo", "no"])
def test_answers_that_do_not_abstain(text: str) -> None:
    assert not is_abstention(text)


def test_gold_abstains_by_category_or_gold_text() -> None:
    assert gold_abstains((NOT_ANSWERABLE,), "adversarial")  # LoCoMo adversarial, as loaded
    assert gold_abstains(("Oslo",), "adversarial")  # the category alone says so
    assert gold_abstains(("Oslo",), "single-session-user_abstention")
    assert gold_abstains(("You did not mention a dog.",), "single-session-user")  # LongMemEval _abs gold text
    assert not gold_abstains(("Oslo",), "single-hop")
    assert not gold_abstains(("7 May 2023",), "temporal")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 May 2023", "2023-05-07"),
        ("May 7, 2023", "2023-05-07"),
        ("2023-05-07", "2023-05-07"),
        ("7th of May, 2023", "2023-05-07"),
        ("May 7th 2023", "2023-05-07"),
        ("Sept. 3 2023", "2023-09-03"),
        ("2023/5/7", "2023-05-07"),  # LongMemEval's dates, unpadded
        ("1:56 pm on 8 May, 2023", "1:56 pm on 2023-05-08"),  # LoCoMo's session dates
        ("05/07/2023", "2023-05-07"),  # year last: month first (US) ...
        ("25/12/2023", "2023-12-25"),  # ... unless the first number cannot be a month
        ("in May 2023", "in 2023-05"),
        ("17 May 2023 and March 2, 2024", "2023-05-17 and 2024-03-02"),
        ("30 February 2023", "30 February 2023"),  # no such day: left as written
        ("13/13/2023", "13/13/2023"),
        ("May 7", "May 7"),  # no year: left as written
        ("2025 was a good year", "2025 was a good year"),
    ],
)
def test_canonical_dates(text: str, expected: str) -> None:
    assert canonical_dates(text) == expected


@pytest.mark.parametrize("gold", ["7 May 2023", "2023-05-07", "May 7, 2023"])
@pytest.mark.parametrize("prediction", ["7 May 2023", "2023-05-07", "May 7, 2023", "7th of May 2023"])
def test_dates_in_any_format_are_the_same_answer(gold: str, prediction: str) -> None:
    for name, score in OFFLINE.items():
        assert score(prediction, (gold,), False) == 1.0, name
    assert containment_score(f"She flew home on {prediction}.", (gold,), False) == 1.0
    assert exact_match_score("8 May 2023", (gold,), False) == 0.0


def test_each_offline_judge_by_hand() -> None:
    gold = ("Oslo, Norway",)
    assert exact_match_score("oslo norway", gold, False) == 1.0  # SQuAD normalisation: case and punctuation
    assert exact_match_score("Oslo", gold, False) == 0.0
    assert f1_score("Oslo", gold, False) == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # precision 1, recall 1/2
    assert f1_score("Bergen", gold, False) == 0.0
    assert containment_score("She lives in Oslo, Norway now.", gold, False) == 1.0
    assert containment_score("Oslo", gold, False) == 0.0  # the whole gold must occur
    assert containment_score("Oslo", ("Oslo",), False) == 1.0
    assert containment_score("5 cats", ("2025",), False) == 0.0
    assert containment_score("In 2025.", ("5",), False) == 0.0  # whole words: "5" is not in "2025"


def test_several_gold_answers_take_the_best() -> None:
    golds = ("a pottery class", "pottery")
    assert exact_match_score("Pottery", golds, False) == 1.0
    assert f1_score("pottery class", golds, False) == 1.0  # SQuAD drops the article of the first gold
    assert containment_score("She signed up for pottery.", golds, False) == 1.0
    assert score_answers(["em"], [AnswerItem("q", golds, "painting", False)]) == {"em": [0.0]}


def test_abstention_both_ways() -> None:
    for name, score in OFFLINE.items():
        assert score("Not answerable", (NOT_ANSWERABLE,), True) == 1.0, name  # gold and prediction abstain
        assert score("I don't know.", (NOT_ANSWERABLE,), True) == 1.0, name
        assert score("Oslo", (NOT_ANSWERABLE,), True) == 0.0, name  # gold abstains, prediction answers
        assert score("Oslo", ("Oslo",), True) == 0.0, name  # abstains by category, the answer is ignored
        assert score("Not answerable", ("Oslo",), False) == 0.0, name  # gold answers, prediction abstains
        assert score("Oslo is not mentioned", ("Oslo",), False) == 0.0, name
        # a gold "none" abstains only when the caller says so (gold_abstains), not inside the scorer
        assert score("none", ("none",), False) == 0.0, name


def test_empty_prediction_scores_zero_everywhere() -> None:
    for name, score in OFFLINE.items():
        for prediction in ("", "  ", "..."):
            assert score(prediction, ("Oslo",), False) == 0.0, name
            assert score(prediction, (NOT_ANSWERABLE,), True) == 0.0, name
    assert f1_score("Oslo", (), False) == 0.0


def test_score_answers_per_judge_in_order_and_bad_names() -> None:
    items = [
        AnswerItem("Where does Ingrid live?", ("Oslo",), "She lives in Oslo.", False),
        AnswerItem("When did she move?", ("7 May 2023",), "May 7, 2023", False),
        AnswerItem("What is her sister called?", (NOT_ANSWERABLE,), "not answerable", True),
        AnswerItem("What is her dog called?", ("Mochi",), "", False),
    ]
    scores = score_answers(["containment", "em", "f1"], items)
    assert list(scores) == ["containment", "em", "f1"]
    assert scores["containment"] == [1.0, 1.0, 1.0, 0.0]
    assert scores["em"] == [0.0, 1.0, 1.0, 0.0]
    assert scores["f1"][0] == pytest.approx(0.4)  # "she lives in oslo" vs "oslo": P 1/4, R 1, F1 2PR/(P+R)
    assert scores["f1"][1:] == [1.0, 1.0, 0.0]
    assert score_answers([], items) == {}
    with pytest.raises(ValueError, match=r"'bleu'.*containment, f1, em, llm"):
        score_answers(["em", "bleu"], items)
    with pytest.raises(ValueError, match="'llm'"):
        score_answers(["llm"], items)


def test_judge_prompt_holds_the_rubric_and_the_gold() -> None:
    system, user = answer_judge_messages(AnswerItem("Where?", ("Oslo", "Oslo, Norway"), "In Oslo", False))
    assert system == {"role": "system", "content": LLM_JUDGE_SYSTEM}
    assert "CORRECT only when the gold answer says the question is not answerable" in LLM_JUDGE_SYSTEM
    assert user["content"].splitlines() == [
        "Question: Where?",
        "Gold answers (any one): Oslo | Oslo, Norway",
        "Response: In Oslo",
        "Verdict (CORRECT or WRONG):",
    ]
    # a gold that abstains by its category only is shown as not answerable
    _, user = answer_judge_messages(AnswerItem("Where?", ("Oslo",), "Bergen", True))
    assert f"Gold answer: {NOT_ANSWERABLE}" in user["content"]


def test_llm_judge_parsing_and_settled_cases() -> None:
    replies = {"Oslo": "CORRECT", "Bergen": "WRONG", "Paris": "**Correct.**", "Rome": "The response is correct"}
    grader = ScriptedBackend(lambda user: replies[user.split("Response: ")[1].splitlines()[0]])
    judge = LLMAnswerJudge(grader)
    items = [
        AnswerItem("Where?", ("Oslo",), "Oslo", False),
        AnswerItem("Where?", ("Oslo",), "Bergen", False),
        AnswerItem("Where?", ("Paris",), "Paris", False),
        AnswerItem("Where?", ("Rome",), "Rome", False),  # unparseable: WRONG
        AnswerItem("Where?", ("Oslo",), "Oslo", False),  # a duplicate prompt: generated once
        AnswerItem("Where?", (NOT_ANSWERABLE,), "I don't know", True),  # settled without asking: 1.0
        AnswerItem("Where?", ("Oslo",), "not answerable", False),  # settled without asking: 0.0
        AnswerItem("Where?", ("Oslo",), "", False),  # nothing to grade: 0.0
    ]
    assert judge.judge(items) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert grader.calls == [4]
    assert all(c[0]["content"] == LLM_JUDGE_SYSTEM for c in grader.conversations)
    assert score_answers(["llm", "em"], items[:2], judge) == {"llm": [1.0, 0.0], "em": [1.0, 0.0]}
    grader.calls.clear()
    assert judge.judge([]) == [] and judge.judge(items[5:]) == [1.0, 0.0, 0.0]
    assert grader.calls == []  # nothing to grade: no generate call


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path):
    from components.llm.backends import create_backend

    backend = create_backend(BackendConfig(model=str(tiny_model_dir), max_new_tokens=4))
    yield backend
    backend.close()


def test_llm_judge_one_batched_call_with_the_tiny_model(tiny_backend) -> None:
    from components.llm.backends import SamplingParams

    grader = CountingBackend(tiny_backend)
    judge = LLMAnswerJudge(grader, SamplingParams(max_new_tokens=2))
    item = AnswerItem("Where does Ingrid live?", ("Oslo",), "In Oslo", False)
    other = AnswerItem("When did she move?", ("7 May 2023",), "In May", False)
    scores = judge.judge([item, other, item, item])
    assert grader.calls == [2]  # one call, each distinct prompt once
    assert [c[0]["content"] for c in grader.conversations] == [LLM_JUDGE_SYSTEM] * 2
    assert "Response: In Oslo" in grader.conversations[0][1]["content"]
    assert scores == [0.0] * 4  # a random tiny model never replies a strict CORRECT
