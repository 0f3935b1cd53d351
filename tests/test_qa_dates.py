"""Date answers stated by evidence: calendar mentions and relative phrases, resolved against the session date."""

from __future__ import annotations

import pytest

from components.qa.dates import date_stated


@pytest.mark.parametrize(
    ("answer", "text", "session_day", "expected"),
    [
        ("2023-03-01", "We're throwing a party for Leo's birthday on March 1.", "2022-12-16", True),
        ("2023-03-01", "Party on the 1st of March!", "2022-12-16", True),
        ("2023-03-01", "Flight leaves Mar. 1st", "2022-12-16", True),
        ("2023-03-02", "We're throwing a party on March 1.", "2022-12-16", False),
        ("2022-12-15", "I moved here from Austin yesterday.", "2022-12-16T18:44", True),
        ("2022-12-13", "We adopted a dog three days ago.", "2022-12-16", True),
        ("2022-12-14", "We adopted a dog 2 days ago.", "2022-12-16", True),
        ("2022-12-16", "Started at Acme this morning.", "2022-12-16", True),
        ("2022-12-17", "Started at Acme this morning.", "2022-12-16", False),
        ("2022-12-10", "Moved last week.", "2022-12-16", False),  # not resolvable exactly: not guessed
        ("May 3", "Flying out on May 3.", "2022-12-16", False),  # only ISO day answers are checked here
        ("2022-12-15", "I moved yesterday.", "not a date", False),
    ],
)
def test_date_stated(answer: str, text: str, session_day: str, expected: bool) -> None:
    assert date_stated(answer, text, session_day) is expected
