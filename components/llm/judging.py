"""Asking an LLM for verdicts: one ``generate`` call per batch, each distinct prompt generated once, and the
CORRECT/WRONG reply read strictly.

Shared by the ADRPO reward judge (``components.rewards.judges``) and the evaluation answer judge
(``components.evaluation.judges``); each writes its own rubric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.llm.backends import GenerationBackend, Message, SamplingParams

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LINE = re.compile(
    r"^(?:(?:verdict|grade|answer|judgement|judgment)\s*:\s*)?[\s*_`'\"\[(]*(correct|wrong)[\s*_`'\"\]).!]*$",
    re.IGNORECASE,
)


def parse_judgement(text: str) -> bool | None:
    """True for CORRECT, False for WRONG, None when the reply is anything else (the caller counts it WRONG).

    Strict: a leading ``<think>...</think>`` block is dropped; the first non-empty line must then be the
    single word CORRECT or WRONG (any case), optionally after "Verdict:" and wrapped in markdown emphasis,
    quotes, brackets or a final period. Later lines (an explanation) are ignored. "INCORRECT", "Correct
    answer", "CORRECT or WRONG" and "The response is correct" are unparseable.
    """
    if not isinstance(text, str):
        return None
    body = _THINK.sub("", text, count=1)
    first = next((line.strip() for line in body.splitlines() if line.strip()), "")
    match = _LINE.match(first)
    if match is None:
        return None
    return match.group(1).upper() == "CORRECT"


def _key(messages: Sequence[Message]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def generate_unique(
    backend: GenerationBackend, conversations: Sequence[Sequence[Message]], params: SamplingParams | None
) -> list[str]:
    """One ``generate`` call over the distinct conversations (none when there are none); the first text of each,
    returned per input conversation, in order."""
    unique: dict[str, int] = {}
    distinct: list[Sequence[Message]] = []
    slots = []
    for messages in conversations:
        key = _key(messages)
        if key not in unique:
            unique[key] = len(distinct)
            distinct.append(messages)
        slots.append(unique[key])
    if not distinct:
        return []
    generations = backend.generate(distinct, params)
    if len(generations) != len(distinct):
        raise RuntimeError(f"backend returned {len(generations)} results for {len(distinct)} prompts")
    texts = [gens[0].text if gens else "" for gens in generations]
    return [texts[slot] for slot in slots]
