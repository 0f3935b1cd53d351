"""The committed dvc.lock is the result of the committed code and params: on a fresh clone, ``dvc status`` reports
no changed code or params dependency (only outputs that a clone does not have), and the committed metrics are the
locked ones.

When this fails after a code change, rerun the changed stages (``dvc repro``) and commit the new ``dvc.lock`` and
metrics; for a change that cannot alter any output (a comment, a refactor), ``dvc commit -f STAGE`` records it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).parent / "dvc")


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the committed HEAD: what a user gets from ``git clone``."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout of memforge")
    clone = tmp_path_factory.mktemp("clone") / "memforge"
    run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], REPO)
    return clone


ALWAYS_CHANGED = "always changed"  # what `dvc status --json` lists for an `always_changed: true` stage


def pipeline_outputs(clone: Path) -> set[str]:
    """Every path a stage writes (resolved as dvc.lock records them)."""
    lock = yaml.safe_load((clone / "dvc.lock").read_text(encoding="utf-8"))
    return {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def stale_dependencies(status: dict, outputs: set[str]) -> dict[str, list[str]]:
    """Per stage, the changed deps that are code or params (not another stage's output, absent from a clone)."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if entry == ALWAYS_CHANGED:  # a stage with state DVC cannot see (register): runs on every repro
                continue
            if not isinstance(entry, dict):
                stale.setdefault(stage, []).append(str(entry))
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # params.yaml: {section: "modified"}
                    stale.setdefault(stage, []).extend(f"{path}:{key}" for key in change)
                elif not any(path == out or path.startswith(f"{out}/") for out in outputs):
                    stale.setdefault(stage, []).append(f"{path} ({change})")
    return stale


def test_fresh_clone_has_no_changed_code_or_params_dependency(fresh_clone: Path) -> None:
    status = json.loads(run([DVC, "status", "--json"], fresh_clone))
    stale = stale_dependencies(status, pipeline_outputs(fresh_clone))
    assert not stale, f"dvc.lock does not match the committed code or params: {stale}"


def test_committed_metrics_are_the_locked_ones(fresh_clone: Path) -> None:
    """Metrics live in git (for `dvc exp show` and `dvc metrics diff`) and match what dvc.lock recorded."""
    shown = json.loads(run([DVC, "metrics", "show", "--json"], fresh_clone))
    (workspace,) = shown.values()  # the workspace is the only revision shown
    metrics = workspace["data"]
    assert metrics and all("error" not in entry for entry in metrics.values()), metrics
    status = json.loads(run([DVC, "status", "--json"], fresh_clone))
    for stage, entries in status.items():
        for entry in entries:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            changed = {path for path in outs if path in metrics}
            assert not changed, f"{stage}: committed metrics differ from dvc.lock: {changed}"
