"""The local stack (``infra/stack.py``) as a pytest fixture: one real Prefect server, process worker and MLflow
server per session, on free loopback ports, with its state, databases and logs in a temporary directory.

``local_stack`` drives the same command line a user runs (``infra/stack.py up`` / ``down``), registers
``prefect.yaml``'s deployments from this checkout, and always stops the stack at the end of the session, whatever
happened, failing the teardown if a recorded process survived. Registered in tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT

STACK_SCRIPT = REPO_ROOT / "infra" / "stack.py"
UP_TIMEOUT_S = 900  # two shared cores: server imports and `prefect deploy` are slow
DOWN_TIMEOUT_S = 180


@dataclass(frozen=True)
class LocalStack:
    """A running stack: its addresses, its state directory and what ``infra/stack.py`` recorded."""

    prefect_api_url: str
    prefect_ui_url: str
    mlflow_uri: str
    state_dir: Path
    state: dict[str, Any]

    @property
    def prefect_home(self) -> Path:
        return Path(self.state["prefect_home"])

    @property
    def deployments(self) -> list[str]:
        """``flow/deployment`` names registered from prefect.yaml."""
        return list(self.state["deployments"])

    @property
    def pids(self) -> dict[str, int]:
        """The process group leaders ``up`` started, by name (prefect-server, mlflow-server, prefect-worker)."""
        return {name: int(record["pid"]) for name, record in self.state["processes"].items()}

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a subprocess that talks to this stack: ``base`` (default ``os.environ``) plus
        PREFECT_API_URL, PREFECT_UI_URL, MLFLOW_TRACKING_URI and the stack's PREFECT_HOME."""
        env = dict(os.environ if base is None else base)
        env.update(
            PREFECT_API_URL=self.prefect_api_url,
            PREFECT_UI_URL=self.prefect_ui_url,
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            PREFECT_HOME=str(self.prefect_home),
        )
        return env


def stack_command(command: str, state_dir: Path, *extra: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python infra/stack.py COMMAND --state-dir STATE_DIR ...``, output captured."""
    argv = [sys.executable, str(STACK_SCRIPT), command, "--state-dir", str(state_dir), *extra]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


def isolated_stack_args(state_dir: Path) -> list[str]:
    """Databases inside ``state_dir`` and free ports, so a test stack touches nothing of the user's."""
    return [
        "--prefect-home", str(state_dir / "prefect"), "--mlflow-store", str(state_dir / "mlflow"),
        "--prefect-port", "0", "--mlflow-port", "0",
    ]  # fmt: skip


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_stack(state_dir: Path, pids: dict[str, int]) -> None:
    """``down``, then fail loudly if it failed or a recorded process is still alive."""
    done = stack_command("down", state_dir, timeout_s=DOWN_TIMEOUT_S)
    survivors = {name: pid for name, pid in pids.items() if process_alive(pid)}
    if done.returncode != 0 or survivors:
        raise RuntimeError(f"infra/stack.py down (exit {done.returncode}) left {survivors}:\n{done.stderr}")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The real local stack for the session; stopped at the end whatever happened."""
    state_dir = tmp_path_factory.mktemp("local-stack")
    state_file = state_dir / "stack.json"
    try:
        done = stack_command("up", state_dir, *isolated_stack_args(state_dir), timeout_s=UP_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"infra/stack.py up failed (exit {done.returncode}):\n{done.stderr}")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        yield LocalStack(
            prefect_api_url=state["prefect_api_url"],
            prefect_ui_url=state["prefect_ui_url"],
            mlflow_uri=state["mlflow_uri"],
            state_dir=state_dir,
            state=state,
        )
    finally:
        # an interrupted `up` leaves its partial record in stack.json: `down` stops that too
        recorded = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {"processes": {}}
        stop_stack(state_dir, {name: int(record["pid"]) for name, record in recorded["processes"].items()})
