"""Seeded splits by conversation: a conversation (and so every session in it) lands in one split."""

from __future__ import annotations

import random
from collections.abc import Iterable

from components.config import SplitConfig

SPLIT_NAMES = ("sft", "rl", "eval")


def split_counts(total: int, cfg: SplitConfig) -> dict[str, int]:
    """Conversations per split: rounded fractions, each non-empty split kept non-empty when possible."""
    fractions = {"sft": cfg.sft, "rl": cfg.rl, "eval": cfg.eval}
    counts = {name: int(total * fractions[name]) for name in SPLIT_NAMES}
    # hand the rounding remainder to the splits with the largest fractional parts
    remainder = total - sum(counts.values())
    by_fraction = sorted(SPLIT_NAMES, key=lambda n: (total * fractions[n]) - counts[n], reverse=True)
    for name in by_fraction[:remainder]:
        counts[name] += 1
    # a split asked for should not come out empty when there are enough conversations to go round
    wanted = [n for n in SPLIT_NAMES if fractions[n] > 0]
    if total >= len(wanted):
        for name in wanted:
            if counts[name] == 0:
                donor = max(SPLIT_NAMES, key=lambda n: counts[n])
                counts[donor] -= 1
                counts[name] += 1
    return counts


def assign_splits(conversation_ids: Iterable[str], cfg: SplitConfig) -> dict[str, str]:
    """Map each conversation id to a split; independent of input order, fixed by ``cfg.seed``."""
    ids = sorted(set(conversation_ids))
    random.Random(cfg.seed).shuffle(ids)
    counts = split_counts(len(ids), cfg)
    assignment: dict[str, str] = {}
    start = 0
    for name in SPLIT_NAMES:
        for conversation_id in ids[start : start + counts[name]]:
            assignment[conversation_id] = name
        start += counts[name]
    return assignment
