"""The flow run a process works for, handed to MLflow: its runs are named after it and tagged with its id."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from components.tracking.runs import FLOW_RUN_ID_ENV, FLOW_RUN_NAME_ENV


def flow_identity() -> dict[str, str]:
    """This flow run's id and name, as the environment passes them to the stages (empty outside a flow run)."""
    from prefect.runtime import flow_run

    return {FLOW_RUN_ID_ENV: str(flow_run.id or ""), FLOW_RUN_NAME_ENV: str(flow_run.name or "")}


@contextlib.contextmanager
def flow_environment() -> Iterator[dict[str, str]]:
    """This process's environment carries the flow run's identity while the block runs (for MLflow runs made in
    the flow's own process, such as promotion's), and is put back after."""
    identity = flow_identity()
    before = {key: os.environ.get(key) for key in identity}
    os.environ.update(identity)
    try:
        yield identity
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
