"""Is a date answer stated by its evidence? Month-day mentions and relative phrases, resolved exactly.

Temporal answers are ISO days (``2023-03-01``). Dialogue states them as "on March 1", "1 March",
"yesterday" or "two days ago", relative to the session's date. This resolves those forms; it does
not guess (no "last week", no weekday arithmetic).
"""

from __future__ import annotations

import re
from datetime import date, timedelta

MONTHS = {
    name: number
    for number, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
         ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
         ("november", "nov"), ("december", "dec")],
        start=1,
    )
    for name in names
}  # fmt: skip
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_MONTH_DAY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", re.IGNORECASE)
_DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\b", re.IGNORECASE)
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "a": 1}
_DAYS_AGO = re.compile(r"\b(\d+|one|two|three|four|five|six|seven|a)\s+days?\s+ago\b", re.IGNORECASE)
_RELATIVE = {"today": 0, "this morning": 0, "this afternoon": 0, "this evening": 0, "tonight": 0,
             "yesterday": 1, "tomorrow": -1}  # fmt: skip
_RELATIVE_RE = re.compile(r"\b(" + "|".join(_RELATIVE) + r")\b", re.IGNORECASE)


def parse_day(text: str) -> date | None:
    """``YYYY-MM-DD`` (or an ISO timestamp's day) -> date; None otherwise."""
    try:
        return date.fromisoformat(text.strip().rstrip(".")[:10])
    except ValueError:
        return None


def mentioned_days(text: str, session_day: date | None) -> set[date | tuple[int, int]]:
    """Days the text states: exact dates from relative phrases, ``(month, day)`` pairs from calendar mentions."""
    found: set[date | tuple[int, int]] = set()
    for month, day in _MONTH_DAY.findall(text):
        found.add((MONTHS[month.lower()], int(day)))
    for day, month in _DAY_MONTH.findall(text):
        found.add((MONTHS[month.lower()], int(day)))
    if session_day is not None:
        for phrase in _RELATIVE_RE.findall(text):
            found.add(session_day - timedelta(days=_RELATIVE[phrase.lower()]))
        for count in _DAYS_AGO.findall(text):
            offset = int(count) if count.isdigit() else _NUMBERS[count.lower()]
            found.add(session_day - timedelta(days=offset))
    return found


def date_stated(answer: str, text: str, session_day: str) -> bool:
    """True when ``answer`` (an ISO day) is the day ``text`` states, read on ``session_day``."""
    wanted = parse_day(answer)
    if wanted is None:
        return False
    found = mentioned_days(text, parse_day(session_day))
    return wanted in found or (wanted.month, wanted.day) in found
