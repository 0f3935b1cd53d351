"""A Prefect task that runs one DVC stage and streams its log lines into Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect.logging import get_run_logger

from components.errors import MemforgeError

SKIP_MARKERS = ("didn't change, skipping", "is cached - skipping")


class StageFailed(MemforgeError):
    """A DVC stage exited non-zero; the message carries the tail of its log."""


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    skipped: bool
    log_tail: str

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "skipped": self.skipped}


def stage_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a stage runs in: this interpreter's bin dir first, so `memforge` and `dvc` resolve."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def dvc_executable() -> str:
    """This environment's `dvc` (beside the interpreter), else the one on PATH."""
    dvc = Path(sys.executable).parent / "dvc"
    return str(dvc) if dvc.exists() else "dvc"


def dvc_command(stage: str) -> list[str]:
    """`dvc repro --single-item <stage>`: upstream stages are their own tasks, run before this one."""
    return [dvc_executable(), "repro", "--single-item", stage]


def restore_outputs(stage: str, repo_dir: str, env: Mapping[str, str] | None = None) -> str:
    """After ``stage`` failed: put its last good outputs back from the DVC cache (DVC removed them before running
    the stage, so the stage's own atomic swap could not keep them); what happened, for the log and the error."""
    command = [dvc_executable(), "checkout", "--force", stage]
    proc = subprocess.run(command, cwd=repo_dir, env=stage_environment(env), capture_output=True, text=True)
    if proc.returncode == 0:
        return f"restored the last good outputs of {stage} from the DVC cache ({' '.join(command[1:])})"
    detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no detail"]
    return (
        f"could not restore the outputs of {stage} from the DVC cache (none cached yet?): {detail[0]}; "
        f"by hand: dvc checkout {stage}"
    )


@task(name="dvc-stage", cache_policy=NONE, task_run_name="dvc repro {stage}")
def run_dvc_stage(stage: str, repo_dir: str = ".", env: Mapping[str, str] | None = None) -> StageOutcome:
    """Run `dvc repro` for one stage, streaming its output line by line to the Prefect log."""
    logger = get_run_logger()
    command = dvc_command(stage)
    logger.info("running %s in %s", " ".join(command), repo_dir)
    tail: list[str] = []
    with subprocess.Popen(
        command,
        cwd=repo_dir,
        env=stage_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info("[%s] %s", stage, line)
                tail = [*tail[-39:], line]
        code = proc.wait()
    text = "\n".join(tail)
    if code != 0:
        restored = restore_outputs(stage, repo_dir, env)
        logger.warning("[%s] %s", stage, restored)
        raise StageFailed(f"dvc repro {stage} exited {code}:\n{text}\n{restored}")
    return StageOutcome(stage=stage, skipped=any(marker in text for marker in SKIP_MARKERS), log_tail=text)
