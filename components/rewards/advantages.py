"""GRPO group advantages and their contribution-aware rewrite; numpy arrays, lists or torch tensors.

``group_advantages`` is GRPO's (as TRL computes it, per group of G completions of one prompt)::

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)      scale_by_std=True   (std: unbiased, ddof=1, like torch.std)
    A_i =  r_i - mean_g(r)                          scale_by_std=False

where g is the group of element i (any hashable label per element, need not be contiguous). A group whose
rewards are all equal (a single element included) gets advantage exactly 0 (no 0/0 even with ``eps=0``).
``rewrite_advantages`` multiplies by the per-element part weight::

    A'_i = w_i * A_i

In ADRPO a group is one (session, part); each element (one rollout's completion for that part) carries its own
rollout's weight for the part (``components.rewards.attribution``: under the published ``retrieval_share``, alpha
for the agent of the memory type that rollout's retrieval was dominated by). The weight rescales the advantage
only: the reward (and hence the group mean and std) is untouched, and a group whose rewards are all equal stays
at 0.

Computation is in float64 numpy; a torch input gives a torch output with the input's dtype and device
(torch is imported only when a torch tensor comes in).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

DEFAULT_EPS = 1e-4  # TRL's GRPO epsilon in the std denominator


def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".", 1)[0] == "torch"


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if _is_torch(value):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _codes(group_ids: Any, size: int) -> np.ndarray:
    if _is_torch(group_ids):
        group_ids = group_ids.detach().cpu().numpy()
    if isinstance(group_ids, np.ndarray):
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be one-dimensional, got shape {group_ids.shape}")
        labels: Sequence[Hashable] = group_ids.tolist()
    else:
        labels = list(group_ids)
    if len(labels) != size:
        raise ValueError(f"group_ids has {len(labels)} elements, rewards has {size}")
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64, count=size)


def _like(result: np.ndarray, reference: Any) -> Any:
    if _is_torch(reference):
        import torch

        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(result, dtype=dtype, device=reference.device)
    return result


def _group_advantages(rewards: np.ndarray, codes: np.ndarray, scale_by_std: bool, eps: float) -> np.ndarray:
    if not rewards.size:
        return np.zeros(0, dtype=np.float64)
    groups = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=groups)
    means = np.bincount(codes, weights=rewards, minlength=groups) / counts
    highs, lows = np.full(groups, -np.inf), np.full(groups, np.inf)
    np.maximum.at(highs, codes, rewards)
    np.minimum.at(lows, codes, rewards)
    flat = (highs == lows)[codes]  # all rewards equal (or a single element): advantage exactly 0
    centered = np.where(flat, 0.0, rewards - means[codes])
    if not scale_by_std:
        return centered
    squares = np.bincount(codes, weights=centered * centered, minlength=groups)
    std = np.sqrt(np.where(counts > 1, squares / np.maximum(counts - 1, 1), 0.0))
    return centered / np.where(flat, 1.0, std[codes] + eps)


def group_advantages(rewards: Any, group_ids: Any, scale_by_std: bool = True, eps: float = DEFAULT_EPS) -> Any:
    """GRPO advantages of ``rewards`` (B,) within the groups ``group_ids`` (B,); same type as ``rewards``."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    values = _as_numpy(rewards, "rewards")
    return _like(_group_advantages(values, _codes(group_ids, values.size), scale_by_std, eps), rewards)


def rewrite_advantages(
    rewards: Any, group_ids: Any, part_weights: Any, scale_by_std: bool = True, eps: float = DEFAULT_EPS
) -> Any:
    """ADRPO's advantages: ``part_weights * group_advantages(rewards, group_ids)``, shape (B,), type of ``rewards``.

    ``part_weights[i]`` is the contribution weight of element i's (session, part); weights must be > 0.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    values = _as_numpy(rewards, "rewards")
    weights = _as_numpy(part_weights, "part_weights")
    if weights.size != values.size:
        raise ValueError(f"part_weights has {weights.size} elements, rewards has {values.size}")
    if np.any(weights <= 0):
        raise ValueError("part_weights must be positive")
    advantages = _group_advantages(values, _codes(group_ids, values.size), scale_by_std, eps)
    return _like(weights * advantages, rewards)
