"""Untrusted text shown to a model as data: delimited blocks whose delimiters the data cannot forge.

A dialogue turn, a memory written from dialogue, or a retrieved excerpt is data, never instructions. Every prompt
that shows such text puts it in a block (``<<<TRANSCRIPT`` ... ``TRANSCRIPT>>>``, ``<<<MEMORY`` ... ``MEMORY>>>``)
and says so in its instructions; ``neutralise`` breaks up any run of three or more angle brackets inside the data,
so no text can close a block and write outside it, and (for one-line items such as turns) shows line breaks as
``⏎``, so a turn cannot forge a line of its own (a fake turn id or speaker). A prompt whose released text fences
data in XML-like tags (MemAgent's ``<section>`` ... ``</section>``) passes those tag names as ``tags``, and every
opening or closing tag of those names inside the data is broken up (``< /section>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DELIMITER_RUN = re.compile(r"<{3,}|>{3,}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n|\u2028|\u2029")
LINE_BREAK_SHOWN = " ⏎ "


def opener(label: str) -> str:
    """The line that opens a ``label`` block: ``<<<LABEL``."""
    return f"<<<{label}"


def closer(label: str) -> str:
    """The line that closes a ``label`` block: ``LABEL>>>``."""
    return f"{label}>>>"


def neutralise(text: str, *, one_line: bool = False, tags: Iterable[str] = ()) -> str:
    """``text`` safe inside a block: runs of ``<<<`` / ``>>>`` spaced out (``< < <``); with ``tags``, every
    ``<tag`` / ``</tag`` of those names (any case) written ``< tag`` / ``< /tag``; with ``one_line``, line breaks
    shown as ``⏎``."""
    text = _DELIMITER_RUN.sub(lambda match: " ".join(match.group(0)), text)
    names = "|".join(re.escape(tag) for tag in tags)
    if names:
        text = re.sub(rf"<(/?)(?=(?:{names})\b)", r"< \1", text, flags=re.IGNORECASE)
    return _LINE_BREAK.sub(LINE_BREAK_SHOWN, text) if one_line else text


def data_block(label: str, lines: Iterable[str]) -> str:
    """``lines`` (already neutralised) between the ``label`` block's delimiters."""
    return "\n".join([opener(label), *lines, closer(label)])
