"""Needle-in-a-haystack on the Paul Graham essays, after RULER's ``niah`` tasks (learned from, not copied).

A needle is ``"One of the special magic numbers for {key} is: {value}."`` with a seeded adjective-noun key and a
seeded 7-digit value (never a number that occurs in the essays). The haystack is a run of consecutive essay
passages from a seeded start, filled until its measured length (needles included, model tokenizer, counted the way
the reader streams it) lies in ``[target * (1 - tolerance), target]``. Needles go at sentence boundaries at depths
drawn without replacement from RULER's 40 evenly spaced depths (0..100%).

Tasks (keys written, values per key, keys asked):

- ``single``     1, 1, 1: one needle, one question;
- ``multikey``   4, 1, 1: three distractor needles with other keys, one asked;
- ``multivalue`` 1, 4, 1: one key with four values, all must be returned;
- ``multiquery`` 4, 1, 4: four keys asked at once, all four values must be returned.

Scoring: ``required_answers`` holds every value the answer must contain (``answers.all_found``; RULER's partial
credit is ``answers.fraction_found``). ``answers`` holds the single value (single, multikey) or the values joined by
``", "`` in question order (multivalue, multiquery), for the alternative-matching scorers.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from components.errors import MemforgeError
from components.longcontext.ruler_qa import rng_for
from components.longcontext.schema import LongContextSample, Needle
from components.longcontext.sources import ESSAY_ID_BASE, sentence_starts
from components.longcontext.store import insert_needles
from components.longcontext.tokens import TokenCounter

NEEDLE_TEMPLATE = "One of the special magic numbers for {key} is: {value}."
TASK_SHAPES: dict[str, tuple[int, int, int]] = {
    "single": (1, 1, 1),
    "multikey": (4, 1, 1),
    "multivalue": (1, 4, 1),
    "multiquery": (4, 1, 4),
}
DEPTHS: tuple[int, ...] = tuple(round(i * 100 / 39) for i in range(40))
VALUE_DIGITS = 7
PREFETCH = 256  # passages counted per tokenizer call while filling a haystack

ADJECTIVES = (
    "amber", "ancient", "bitter", "brave", "breezy", "bright", "calm", "clever", "cold", "crimson", "curious",
    "dusty", "eager", "electric", "fancy", "fierce", "fragile", "gentle", "giant", "golden", "grumpy", "hidden",
    "hollow", "humble", "icy", "jolly", "lively", "lonely", "lucky", "misty", "modern", "noisy", "odd", "pale",
    "polite", "proud", "quiet", "rapid", "rusty", "secret", "shiny", "silent", "silver", "sleepy", "smooth",
    "spicy", "steady", "stormy", "sunny", "swift", "tame", "tender", "tiny", "velvet", "vivid", "wandering",
    "wild", "wise", "wooden", "zesty",
)  # fmt: skip
NOUNS = (
    "anchor", "apple", "arrow", "badger", "banjo", "basket", "beacon", "bicycle", "blanket", "boulder", "bucket",
    "cabin", "candle", "canyon", "castle", "cello", "comet", "compass", "crystal", "dolphin", "drum", "falcon",
    "feather", "fountain", "garden", "glacier", "harbor", "helmet", "island", "jacket", "kettle", "ladder",
    "lantern", "lemon", "meadow", "mirror", "needle", "orchard", "otter", "paddle", "pebble", "pepper", "piano",
    "pillow", "planet", "puzzle", "quilt", "rabbit", "river", "saddle", "spoon", "teapot", "thistle", "tiger",
    "tower", "trumpet", "tulip", "violin", "walrus", "willow",
)  # fmt: skip


@dataclass(frozen=True)
class NeedleSet:
    """The needles of one sample and what is asked about them."""

    needles: tuple[str, ...]
    question: str
    answers: tuple[str, ...]
    required: tuple[str, ...]
    query_keys: tuple[str, ...]
    keys: tuple[str, ...]


def forbidden_values(passages: Sequence[str], digits: int = VALUE_DIGITS) -> frozenset[str]:
    """Every ``digits``-long digit string inside a number of the essays (a value must not be one)."""
    found: set[str] = set()
    for text in passages:
        for run in re.findall(rf"\d{{{digits},}}", text):
            found.update(run[i : i + digits] for i in range(len(run) - digits + 1))
    return frozenset(found)


def _value(rng: random.Random, taken: set[str], forbidden: frozenset[str]) -> str:
    while True:
        value = str(rng.randint(10 ** (VALUE_DIGITS - 1), 10**VALUE_DIGITS - 1))
        if value not in taken and value not in forbidden:
            taken.add(value)
            return value


def _question(task: str, keys: Sequence[str]) -> str:
    if task in ("single", "multikey"):
        return f"What is the special magic number for {keys[0]} mentioned in the provided text?"
    listed = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    return f"What are all the special magic numbers for {listed} mentioned in the provided text?"


def make_needle_set(task: str, rng: random.Random, forbidden: frozenset[str]) -> NeedleSet:
    """Keys, values, needle sentences (shuffled), the question and the gold answers of one sample."""
    if task not in TASK_SHAPES:
        raise ValueError(f"unknown needle task {task!r}; expected one of {', '.join(TASK_SHAPES)}")
    num_keys, per_key, asked = TASK_SHAPES[task]
    keys = [f"{a}-{n}" for a, n in rng.sample([(a, n) for a in ADJECTIVES for n in NOUNS], num_keys)]
    taken: set[str] = set()
    values = {key: [_value(rng, taken, forbidden) for _ in range(per_key)] for key in keys}
    needles = [NEEDLE_TEMPLATE.format(key=key, value=value) for key in keys for value in values[key]]
    rng.shuffle(needles)
    query_keys = rng.sample(keys, asked)
    required = tuple(value for key in query_keys for value in values[key])
    answers = required if len(required) == 1 else (", ".join(required),)
    return NeedleSet(tuple(needles), _question(task, query_keys), answers, required, tuple(query_keys), tuple(keys))


def place_needles(texts: Sequence[str], needles: Sequence[str], depths: Sequence[int]) -> tuple[Needle, ...]:
    """Each needle at the sentence boundary nearest its depth (percent of the haystack's characters)."""
    total = sum(len(t) for t in texts)
    cumulative = [0]
    for text in texts:
        cumulative.append(cumulative[-1] + len(text))
    placed = []
    for needle, depth in zip(needles, depths, strict=True):
        goal = depth / 100 * total
        piece = max(0, min(len(texts) - 1, next(i for i in range(len(texts)) if cumulative[i + 1] >= goal)))
        local = goal - cumulative[piece]
        char = min(sentence_starts(texts[piece]), key=lambda s: (abs(s - local), s))
        actual = (cumulative[piece] + char) / total if total else 0.0
        placed.append(Needle(needle, piece, char, round(actual, 4)))
    return tuple(placed)


def _with_needles(texts: Sequence[str], needles: Sequence[Needle]) -> list[str]:
    out = list(texts)
    for piece in {n.piece for n in needles}:
        out[piece] = insert_needles(texts[piece], [(n.char, n.text) for n in needles if n.piece == piece])
    return out


@dataclass(frozen=True)
class Haystack:
    passages: tuple[int, ...]  # passage indices, in reading order
    needles: tuple[Needle, ...]
    tokens: int


def build_haystack(
    passages: Sequence[str],
    needles: Sequence[str],
    depths: Sequence[int],
    target: int,
    tolerance: float,
    start: int,
    counter: TokenCounter,
) -> Haystack:
    """Consecutive passages from ``start`` (wrapping) plus needles, measured in ``[target*(1-tol), target]``.

    A passage that would overshoot is skipped while the haystack is still short (a long passage near the end);
    if the measured length still overshoots, trailing passages are dropped.
    """
    low = math.ceil(target * (1 - tolerance))
    needle_tokens = sum(counter.count(" " + n) for n in needles)
    chosen: list[int] = []
    total, index, skipped = needle_tokens, start, 0
    while skipped <= len(passages):
        cost = _passage_cost(counter, passages, index, first=not chosen)
        if total + cost <= target:
            chosen.append(index)
            total += cost
            skipped = 0
        elif total >= low:
            break
        else:
            skipped += 1
        index = (index + 1) % len(passages)
    while chosen:
        texts = [passages[i] for i in chosen]
        placed = place_needles(texts, needles, depths)
        changed = {n.piece for n in placed}
        keys = [None if p in changed else ESSAY_ID_BASE + i for p, i in enumerate(chosen)]
        tokens = counter.pieces(_with_needles(texts, placed), keys)
        if tokens <= target:
            if tokens < low:
                break
            return Haystack(tuple(chosen), placed, tokens)
        chosen.pop()
    raise MemforgeError(
        f"cannot build a needle haystack of {target} tokens within length_tolerance={tolerance}: the essay passages "
        "are too coarse for so small a target; raise the length or the tolerance"
    )


def _passage_cost(counter: TokenCounter, passages: Sequence[str], index: int, first: bool) -> int:
    """Tokens of passage ``index`` as a piece; a miss counts the next ``PREFETCH`` passages in one batch."""
    cached = counter.cached(ESSAY_ID_BASE + index, first)
    if cached is not None:
        return cached
    ahead = [(index + k) % len(passages) for k in range(min(PREFETCH, len(passages)))]
    items = [(passages[j], ESSAY_ID_BASE + j, first and j == index) for j in ahead]
    return counter.piece_counts(items)[0]


def needle_sample(
    task: str,
    target: int,
    index: int,
    passages: Sequence[str],
    forbidden: frozenset[str],
    tolerance: float,
    seed: int,
    counter: TokenCounter,
) -> LongContextSample:
    """Sample ``index`` of ``task`` at ``target`` tokens: seeded needles, start passage and depths."""
    rng = rng_for(seed, "needle", task, target, index)
    spec = make_needle_set(task, rng, forbidden)
    depths = sorted(rng.sample(DEPTHS, len(spec.needles)))
    start = rng.randrange(len(passages))
    hay = build_haystack(passages, spec.needles, depths, target, tolerance, start, counter)
    doc_ids = tuple(ESSAY_ID_BASE + i for i in hay.passages)
    gold = tuple(dict.fromkeys(doc_ids[n.piece] for n in sorted(hay.needles, key=lambda n: n.piece)))
    return LongContextSample(
        id=f"needle_{task}-{target:07d}-{index:03d}",
        task=f"needle_{task}",
        split="eval",
        question=spec.question,
        answers=spec.answers,
        doc_ids=doc_ids,
        length_tokens=hay.tokens,
        required_answers=spec.required,
        gold_doc_ids=gold,
        target_tokens=target,
        needles=hay.needles,
        meta={"keys": list(spec.keys), "query_keys": list(spec.query_keys), "start_passage": start},
    )
