"""Length penalties (MemBuilder's shapes), in tokens, each in [0, 1].

* core: the core block is always shown in full when questions are answered, so its agent's output is
  penalised by absolute length: ``core_length_penalty``;
* episodic, semantic, procedural: penalised by the ratio of the output's length to the expert's output
  for the same session: ``ratio_length_penalty``.

The reward multiplies ``(1 - lambda * penalty)``; see ``components.rewards.memory_rewards``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from components.memory.types import MemoryPart


def _check_pair(values: Sequence[float], name: str, *, positive: bool) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"{name} must be two numbers (low, high), got {tuple(values)!r}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high or (low <= 0 if positive else low < 0):
        raise ValueError(f"{name} must satisfy {'0 <' if positive else '0 <='} low < high, got ({low}, {high})")
    return low, high


def core_length_penalty(tokens: int, low: int = 150, high: int = 400) -> float:
    """Penalty of a core output ``tokens`` long: 0 up to ``low``, 1 from ``high`` on, linear between.

    ``p = min(1, max(0, (tokens - low) / (high - low)))``; e.g. with (150, 400): 149 -> 0, 150 -> 0,
    275 -> 0.5, 400 -> 1, 401 -> 1.
    """
    lo, hi = _check_pair((low, high), "core penalty tokens", positive=False)
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return min(1.0, max(0.0, (tokens - lo) / (hi - lo)))


def ratio_length_penalty(tokens: int, expert_tokens: int, free: Sequence[float] = (0.5, 1.3)) -> float:
    """Penalty of an entry agent's output by its length ratio ``r = tokens / expert_tokens``.

    With ``free = (a, b)`` (default (0.5, 1.3)):

    * ``a <= r <= b``: ``p = 0``;
    * ``r < a`` (too short):  ``p = (a - r) / a``            (0 at r = a, 1 at r = 0);
    * ``r > b`` (too long):   ``p = min(1, (r - b) / b)``    (0 at r = b, 1 from r = 2b on);

    so 0.4 -> 0.2, 0.5 -> 0, 1.0 -> 0, 1.3 -> 0, 2.0 -> 0.538..., 3.0 -> 1 (capped).
    ``expert_tokens == 0`` (the expert wrote nothing, so no ratio): 0 when ``tokens == 0`` too, else 1.
    """
    a, b = _check_pair(free, "length ratio free range", positive=True)
    if tokens < 0 or expert_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {tokens} and {expert_tokens}")
    if expert_tokens == 0:
        return 0.0 if tokens == 0 else 1.0
    ratio = tokens / expert_tokens
    if ratio < a:
        return (a - ratio) / a
    if ratio > b:
        return min(1.0, (ratio - b) / b)
    return 0.0


def length_penalty(
    part: MemoryPart,
    tokens: int,
    expert_tokens: int,
    core_tokens: Sequence[int] = (150, 400),
    free: Sequence[float] = (0.5, 1.3),
) -> float:
    """``core_length_penalty`` for core (``expert_tokens`` unused), ``ratio_length_penalty`` for other parts."""
    if part == "core":
        return core_length_penalty(tokens, *_check_int_pair(core_tokens))
    return ratio_length_penalty(tokens, expert_tokens, free)


def _check_int_pair(values: Sequence[int]) -> tuple[int, int]:
    if len(values) != 2:
        raise ValueError(f"core penalty tokens must be two numbers (low, high), got {tuple(values)!r}")
    return int(values[0]), int(values[1])
