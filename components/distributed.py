"""The processes of a multi-process launch (``accelerate launch``, ``torchrun``): which one this is, and a barrier.

A stage launched over N processes runs its training in every process; what touches shared state (the stage lock,
the MLflow run, the checkpoint folder, the saved model, the reports) is done by the main process alone, and the
others wait for it where they need its result (``wait_for_everyone``). A plain ``memforge stage NAME`` is one
process: rank 0, world size 1, and the barrier does nothing.

The rank and world size come from the environment the launchers set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), so
asking costs no torch import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def process_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank: ``$RANK``, else ``$LOCAL_RANK`` (one machine), else 0 (not launched)."""
    env = os.environ if env is None else env
    for name in ("RANK", "LOCAL_RANK"):
        value = env.get(name, "").strip()
        if value:
            return int(value)
    return 0


def world_size(env: Mapping[str, str] | None = None) -> int:
    """How many processes the launch started: ``$WORLD_SIZE``, else 1."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "").strip() or 1)


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """True in the process that writes shared state: rank 0, or the only process."""
    return process_rank(env) == 0


def wait_for_everyone() -> None:
    """Block until every process of the launch reaches this call; nothing to wait for in a single process.

    The process group is the one the Trainer uses (accelerate's ``PartialState``, backend and device chosen from the
    launch's environment, ``--cpu`` included); a barrier before the Trainer exists starts it as the Trainer would.
    """
    if world_size() <= 1:
        return
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).wait_for_everyone()
