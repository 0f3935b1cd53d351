"""Length penalties (MemBuilder's shapes), in tokens, each in [0, 1].

* core: the core block is always shown in full when questions are answered, so its agent's output is
  penalised by absolute length: ``core_length_penalty``;
* episodic, semantic, procedural: penalised by the ratio of the output's length to the expert's output
  for the same session: ``ratio_length_penalty``.

The reward multiplies ``(1 - lambda * penalty)``; see ``components.rewards.memory_rewards``.

Source: MemBuilder ``training/reward_server/reward_function.py`` (``_compute_agent_length_penalty``, the rule the
batch reward ``compute_score_batch`` applies per agent) with the numbers of ``reward_config.json``
(``core_length_start_penalty`` 150, ``core_length_max_penalty`` 400, ``other_length_lower_tolerance`` 0.5,
``other_length_upper_tolerance`` 1.3, ``other_length_lower_min_ratio`` 0.2, ``other_length_upper_max_ratio`` 2.0,
``other_length_min_diff_tokens`` 200). Where memforge departs from it:

* token counts: memforge counts both the policy's output and the expert's output as whole texts with the policy's
  tokenizer (``count_tokens``); the reference counts the model's memory contents as characters // 4 but the
  expert's as characters (``len(str(memory))``), so its two sides are in different units;
* the reference's other length rule (``_compute_length_penalty``, core by growth over the expert's core, the four
  penalties averaged) is not used by its batch reward, and not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from components.memory.types import MemoryPart

DEFAULT_CORE_TOKENS = (150, 400)
DEFAULT_FREE = (0.5, 1.3)
DEFAULT_FULL = (0.2, 2.0)
DEFAULT_MIN_TOKEN_GAP = 200


def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"{name} must be two numbers (low, high), got {tuple(values)!r}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or not 0 <= low < high:
        raise ValueError(f"{name} must satisfy 0 <= low < high, got ({low}, {high})")
    return low, high


def _check_ratio_bands(free: Sequence[float], full: Sequence[float]) -> tuple[float, float, float, float]:
    """``(full_low, free_low, free_high, full_high)``, checked: ``0 <= full_low < free_low < free_high < full_high``."""
    free_low, free_high = _pair(free, "length ratio free range")
    full_low, full_high = _pair(full, "length ratio full-penalty bounds")
    if not (full_low < free_low and free_high < full_high):
        raise ValueError(
            f"length ratio bounds must satisfy full low < free low < free high < full high, "
            f"got full {(full_low, full_high)} and free {(free_low, free_high)}"
        )
    return full_low, free_low, free_high, full_high


def core_length_penalty(tokens: int, low: int = 150, high: int = 400) -> float:
    """Penalty of a core output ``tokens`` long: 0 up to ``low``, 1 from ``high`` on, linear between.

    ``p = min(1, max(0, (tokens - low) / (high - low)))``; e.g. with (150, 400): 149 -> 0, 150 -> 0,
    275 -> 0.5, 400 -> 1, 401 -> 1 (the reference's core rule, its ``theta_min`` / ``theta_max``).
    """
    lo, hi = _pair((low, high), "core penalty tokens")
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return min(1.0, max(0.0, (tokens - lo) / (hi - lo)))


def ratio_length_penalty(
    tokens: int,
    expert_tokens: int,
    free: Sequence[float] = DEFAULT_FREE,
    full: Sequence[float] = DEFAULT_FULL,
    min_token_gap: int = DEFAULT_MIN_TOKEN_GAP,
) -> float:
    """Penalty of an entry agent's output by its length ratio ``r = tokens / expert_tokens``.

    With ``free = (a, b)`` (default (0.5, 1.3)), ``full = (lo, hi)`` (default (0.2, 2.0)) and
    ``min_token_gap = g`` (default 200), in this order:

    * ``expert_tokens == 0`` (the expert wrote nothing, so no ratio): ``p = 0``;
    * ``|tokens - expert_tokens| < g``: ``p = 0`` (a small absolute difference is never penalised);
    * ``a <= r <= b``: ``p = 0``;
    * ``r > b`` (too long):  ``p = min(1, (r - b) / (hi - b))``   (0 at r = b, 1 from r = hi on);
    * ``r < a`` (too short): ``p = min(1, (a - r) / (a - lo))``   (0 at r = a, 1 at r <= lo).

    E.g. expert 1,000 tokens: 1,650 -> 0.5, 2,000 -> 1, 350 -> 0.5, 200 -> 1, 0 -> 1; expert 100 tokens:
    any output up to 299 tokens -> 0 (gap < 200), 300 -> 1 (ratio 3).
    """
    full_low, free_low, free_high, full_high = _check_ratio_bands(free, full)
    if tokens < 0 or expert_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {tokens} and {expert_tokens}")
    if min_token_gap < 0:
        raise ValueError(f"min_token_gap must be >= 0, got {min_token_gap}")
    if expert_tokens == 0 or abs(tokens - expert_tokens) < min_token_gap:
        return 0.0
    ratio = tokens / expert_tokens
    if ratio > free_high:
        return min(1.0, (ratio - free_high) / (full_high - free_high))
    if ratio < free_low:
        return min(1.0, (free_low - ratio) / (free_low - full_low))
    return 0.0


def length_penalty(
    part: MemoryPart,
    tokens: int,
    expert_tokens: int,
    core_tokens: Sequence[int] = DEFAULT_CORE_TOKENS,
    free: Sequence[float] = DEFAULT_FREE,
    full: Sequence[float] = DEFAULT_FULL,
    min_token_gap: int = DEFAULT_MIN_TOKEN_GAP,
) -> float:
    """``core_length_penalty`` for core (``expert_tokens`` unused), ``ratio_length_penalty`` for other parts."""
    if part == "core":
        low, high = _pair(core_tokens, "core penalty tokens")
        return core_length_penalty(tokens, int(low), int(high))
    return ratio_length_penalty(tokens, expert_tokens, free, full, min_token_gap)
