"""Prefect tasks that run DVC: one stage (`dvc repro`) or one experiment (`dvc exp run`), logging into Prefect."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from components.errors import MemforgeError
from flows.experiment import WorkspaceSnapshot, stage_outcomes


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


def changed_stages(repo_dir: str, stages: list[str]) -> set[str] | None:
    """The stages among ``stages`` that ``dvc repro`` would run now (changed deps, params, outs or command, or
    ``always_changed``), from one in-process ``dvc status``: no DVC process per stage. None when DVC cannot tell
    (the reason is logged); every stage then runs as its own task, which reports the error."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    dvc_yaml = Path(repo_dir).resolve() / "dvc.yaml"  # targets resolve against the cwd, not the repo
    try:
        with Repo(repo_dir) as repo:
            status = repo.status(targets=[f"{dvc_yaml}:{stage}" for stage in stages])
    except DvcException as exc:
        run_logger().warning("dvc status failed (%s); every stage runs as its own task", exc)
        return None
    return {address.rsplit(":", 1)[-1] for address in status}  # "[path/]dvc.yaml:stage" or "stage"


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run (its lines reach the UI), else this module's logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def unchanged_prefix(stages: list[str], changed: set[str] | None) -> int:
    """How many of ``stages`` (in pipeline order) lead up to the first changed one: nothing upstream of them runs,
    so they stay unchanged and need no ``dvc repro``. From the first changed stage on, each runs as a task and DVC
    decides (a stage unchanged now may change when an upstream one reruns). All of them when none changed; none
    when ``changed`` is unknown."""
    if changed is None:
        return 0
    return next((index for index, stage in enumerate(stages) if stage in changed), len(stages))


def restore_outputs(stages: str | list[str], repo_dir: str, env: Mapping[str, str] | None = None) -> str:
    """Put the outputs of ``stages`` back from the DVC cache as ``dvc.lock`` records them: after a stage failed (DVC
    removed its outputs before running it, so the stage's own atomic swap could not keep them) or after an
    experiment (the workspace's own results); what happened, for the log and the error."""
    names = [stages] if isinstance(stages, str) else stages
    stage = " ".join(names)
    command = [dvc_executable(), "checkout", "--force", *names]
    proc = subprocess.run(command, cwd=repo_dir, env=stage_environment(env), capture_output=True, text=True)
    if proc.returncode == 0:
        return f"restored the last good outputs of {stage} from the DVC cache ({' '.join(command[1:])})"
    detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no detail"]
    return (
        f"could not restore the outputs of {stage} from the DVC cache (none cached yet?): {detail[0]}; "
        f"by hand: dvc checkout {stage}"
    )


def stream(command: list[str], repo_dir: str, env: Mapping[str, str] | None, label: str) -> tuple[int, str]:
    """Run ``command`` in ``repo_dir``, each output line to the Prefect log as ``[label] line``; its exit code and
    full output."""
    logger = get_run_logger()
    logger.info("running %s in %s", " ".join(command), repo_dir)
    lines: list[str] = []
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
                logger.info("[%s] %s", label, line)
                lines.append(line)
        code = proc.wait()
    return code, "\n".join(lines)


def tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


@task(name="dvc-stage", cache_policy=NONE, task_run_name="dvc repro {stage}")
def run_dvc_stage(stage: str, repo_dir: str = ".", env: Mapping[str, str] | None = None) -> StageOutcome:
    """Run `dvc repro` for one stage, streaming its output line by line to the Prefect log."""
    code, log = stream(dvc_command(stage), repo_dir, env, stage)
    if code != 0:
        restored = restore_outputs(stage, repo_dir, env)
        get_run_logger().warning("[%s] %s", stage, restored)
        raise StageFailed(f"dvc repro {stage} exited {code}:\n{tail(log)}\n{restored}")
    return StageOutcome(stage=stage, skipped=stage_outcomes(log).get(stage, False), log_tail=tail(log))


@task(name="dvc-experiment", cache_policy=NONE, task_run_name="dvc exp run {name}")
def run_dvc_experiment(
    name: str,
    command: list[str],
    snapshot: WorkspaceSnapshot,
    repo_dir: str = ".",
    env: Mapping[str, str] | None = None,
) -> list[StageOutcome]:
    """Run one ``dvc exp run`` (``flows.experiment.exp_run_command``) and put the workspace back as ``snapshot``
    holds it, whether it succeeded or not (so a retry starts from the same workspace); one outcome per stage DVC
    reported."""
    logger = get_run_logger()
    code, log = stream(command, repo_dir, env, f"exp {name}")
    ran = [stage for stage, skipped in stage_outcomes(log).items() if not skipped]
    changed = snapshot.restore()
    logger.info("workspace restored (params.yaml, dvc.lock, git-tracked metrics): %s", ", ".join(changed) or "-")
    restored = restore_outputs(ran, repo_dir, env) if ran else ""
    logger.info("%s", restored or "no stage ran")
    if code != 0:
        raise StageFailed(f"dvc exp run {name} exited {code}:\n{tail(log)}\n{restored}")
    return [StageOutcome(stage=stage, skipped=skipped, log_tail="") for stage, skipped in stage_outcomes(log).items()]
