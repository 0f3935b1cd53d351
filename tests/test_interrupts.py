"""Interrupted stages (issue 12 item 1): SIGTERM ends a stage as Ctrl-C does; after a SIGKILL the next run of the
stage closes the ghost MLflow run and removes the staging folder. Real `memforge stage expert` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.config import ExpertConfig, IngestConfig, MemoryConfig, Params, TrackingConfig, render_params
from components.dialogue.schema import conversation_to_dict
from components.dialogue.synthetic import iter_conversations
from components.io import dumps_jsonl_record
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow
STAGING_WAIT_S = 120


def write_workspace(root: Path, conversations: int) -> Params:
    """params.yaml and an sft split of ``conversations`` synthetic conversations: the expert stage's inputs."""
    params = Params(
        ingest=IngestConfig(output_dir=str(root / "data/dialogues")),
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(splits=("sft",), output_dir=str(root / "data/trajectories")),
        tracking=TrackingConfig(experiment="interrupts", store_dir=str(root / "mlflow")),
    )
    (root / "params.yaml").write_text(render_params(params), encoding="utf-8")
    dialogues = root / "data/dialogues"
    dialogues.mkdir(parents=True, exist_ok=True)
    with (dialogues / "sft.jsonl").open("w", encoding="utf-8") as out:
        for conversation in iter_conversations(params.ingest.synthetic, conversations):
            out.write(dumps_jsonl_record(conversation_to_dict(conversation)))
    return params


def start_stage(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "components.cli", "stage", "expert"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def staging_folders(root: Path) -> list[Path]:
    return sorted((root / "data").glob(".trajectories.*"))


def wait_for_staging(process: subprocess.Popen[str], root: Path) -> None:
    deadline = time.monotonic() + STAGING_WAIT_S
    while not staging_folders(root):
        assert process.poll() is None, f"the stage ended before it started writing:\n{process.communicate()[1]}"
        assert time.monotonic() < deadline, "the stage never created its staging folder"
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the stage's writing loop


def expert_runs(params: Params) -> list:
    from mlflow import MlflowClient

    from components.tracking import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(params.tracking))
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    return client.search_runs([experiment.experiment_id], "tags.`memforge.stage` = 'expert'", order_by=["start_time"])


def test_a_second_run_of_a_running_stage_fails_at_once_naming_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.io import AlreadyRunning
    from components.stages.runner import run_stage

    params = write_workspace(tmp_path, conversations=400)
    process = start_stage(tmp_path)
    try:
        wait_for_staging(process, tmp_path)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(AlreadyRunning, match=rf"stage expert is already running \(pid {process.pid}\)"):
            run_stage("expert", params)
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert [run.info.status for run in expert_runs(params)] == ["RUNNING"]  # the refused run opened none


def test_sigterm_ends_a_stage_like_ctrl_c(tmp_path: Path) -> None:
    params = write_workspace(tmp_path, conversations=400)
    process = start_stage(tmp_path)
    wait_for_staging(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated by signal" in stderr
    assert staging_folders(tmp_path) == []  # no half-written output left behind
    assert not (tmp_path / "data/trajectories").exists()
    (run,) = expert_runs(params)
    assert run.info.status == "KILLED"


def test_after_sigkill_the_next_run_closes_the_ghost_run_and_removes_staging(tmp_path: Path) -> None:
    params = write_workspace(tmp_path, conversations=400)
    process = start_stage(tmp_path)
    wait_for_staging(process, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    assert staging_folders(tmp_path), "SIGKILL leaves the staging folder (nothing can clean up inside the process)"
    (ghost,) = expert_runs(params)
    assert ghost.info.status == "RUNNING"

    write_workspace(tmp_path, conversations=2)  # the next run is short
    rerun = start_stage(tmp_path)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr

    assert staging_folders(tmp_path) == []
    assert (tmp_path / "data/trajectories/sft.jsonl").is_file()
    ghost_after, latest = expert_runs(params)
    assert ghost_after.info.run_id == ghost.info.run_id and ghost_after.info.status == "KILLED"
    assert f"process {ghost.data.tags['memforge.pid']}" in ghost_after.data.tags["memforge.error"]
    assert latest.info.status == "FINISHED"
