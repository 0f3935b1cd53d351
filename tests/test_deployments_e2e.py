"""The Prefect UI path, end to end on the real local stack: deployments from prefect.yaml, a run with a parameter
override triggered through the Prefect API, and what it leaves: a Completed flow run, a DVC experiment in
``dvc exp show``, params.yaml as it was, MLflow runs that logged the override and carry the flow run's id, and a
link from the flow run to its MLflow run. Two runs triggered together in one workspace both complete, one after
the other, each with its own params.

The workspace is a clone of this repository's last commit (its outputs are DVC's to rebuild), and the runs choose
the ``ingest`` stage alone: a real change of params, seconds of work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.tracking.runs import FLOW_RUN_TAG, MODEL_TRAINING_VIEW
from tests.helpers import REPO_ROOT, git_init
from tests.stack_fixtures import LocalStack

pytestmark = [pytest.mark.server, pytest.mark.slow]

DEPLOYMENT = "memforge-pipeline/default"
SEED_KEY = "ingest.splits.seed"
RUN_TIMEOUT_S = 600
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, local_stack: LocalStack) -> Path:
    """A clone of this repository with prefect.yaml's deployments registered from it (the worker runs there)."""
    clone = tmp_path_factory.mktemp("workspace") / "memforge"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    git_init(clone)  # an identity for the experiments' commits
    deploy = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=clone,
        env=local_stack.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return clone


@pytest.fixture
def prefect_api(local_stack: LocalStack) -> Iterator[None]:
    """This process's Prefect client talks to the stack's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: local_stack.prefect_api_url}):
        yield


def trigger(parameters: dict[str, Any]) -> str:
    """Start a run of the deployment through the Prefect API (as the UI's Run button does); its flow run id."""
    from prefect.deployments import run_deployment

    return str(run_deployment(DEPLOYMENT, parameters=parameters, timeout=0).id)


def wait(flow_run_id: str) -> Any:
    """The flow run once it reached a final state."""
    from prefect import get_client

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {RUN_TIMEOUT_S} s")


def ingest_overrides(seed: int) -> dict[str, Any]:
    return {"stages": ["ingest"], "params_overrides": {SEED_KEY: seed}}


def experiments(workspace: Path) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``'s experiments, by name: their params.yaml."""
    shown = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--json"], cwd=workspace, capture_output=True, text=True, check=True
    )
    return {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
        for row in json.loads(shown.stdout)
        for experiment in row.get("experiments") or []
        for rev in experiment["revs"]
    }


def mlflow_runs(local_stack: LocalStack, flow_run_id: str) -> dict[str, Any]:
    """The MLflow runs a flow run made, by ``memforge.stage``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.mlflow_uri)
    experiment = client.get_experiment_by_name("memforge")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'")
    return {run.data.tags["memforge.stage"]: run for run in runs}


def mlflow_link(flow_run_id: str) -> str:
    """The flow run's ``mlflow-run`` artifact."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["mlflow-run"])
            )
        )
    return str(artifact.data)


def test_a_ui_override_is_a_dvc_experiment_tracked_in_mlflow(
    workspace: Path, local_stack: LocalStack, prefect_api: None
) -> None:
    params_before = (workspace / "params.yaml").read_bytes()
    flow_run = wait(trigger(ingest_overrides(5)))
    assert flow_run.state.is_completed(), flow_run.state.message
    flow_run_id = str(flow_run.id)

    assert (workspace / "params.yaml").read_bytes() == params_before
    name = next(name for name in experiments(workspace) if name.endswith(flow_run_id.replace("-", "")[:8]))
    assert experiments(workspace)[name]["ingest"]["splits"]["seed"] == 5

    runs = mlflow_runs(local_stack, flow_run_id)
    assert set(runs) == {"pipeline", "ingest"}
    assert runs["ingest"].data.params[SEED_KEY] == "5"  # the stage read the experiment's params
    assert runs["ingest"].info.run_name == f"ingest-{flow_run.name}"
    assert runs["ingest"].data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id
    assert all(run.info.status == "FINISHED" for run in runs.values())
    pipeline_run = runs["pipeline"].info
    run_page = f"#/experiments/{pipeline_run.experiment_id}/runs/{pipeline_run.run_id}?{MODEL_TRAINING_VIEW}"
    assert f"{local_stack.mlflow_uri}/{run_page}" in mlflow_link(flow_run_id)


def test_two_triggers_in_one_workspace_queue_and_each_keeps_its_params(
    workspace: Path, local_stack: LocalStack, prefect_api: None
) -> None:
    params_before = (workspace / "params.yaml").read_bytes()
    started = {seed: trigger(ingest_overrides(seed)) for seed in (7, 8)}
    finished = {seed: wait(flow_run_id) for seed, flow_run_id in started.items()}
    assert all(flow_run.state.is_completed() for flow_run in finished.values())

    windows = []
    for seed, flow_run_id in started.items():
        runs = mlflow_runs(local_stack, flow_run_id)
        assert runs["ingest"].data.params[SEED_KEY] == str(seed)  # never the other run's params
        windows.append((runs["pipeline"].info.start_time, runs["pipeline"].info.end_time))
    first, second = sorted(windows)
    assert first[1] <= second[0], windows  # one after the other: the workspace lock
    assert (workspace / "params.yaml").read_bytes() == params_before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True, text=True)
    assert status.stdout == ""  # dvc.lock and the git-tracked reports are back too


def stage_process(workspace: Path, stage: str) -> int | None:
    """The pid of a ``memforge stage STAGE`` process running in ``workspace``, if one is."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone, or not ours to read
            continue
        if b"stage" in argv and stage.encode() in argv[argv.index(b"stage") + 1 :] and cwd == workspace:
            return int(proc.name)
    return None


def kill_when_running(workspace: Path, stage: str, timeout_s: float = 300) -> int:
    """SIGKILL the stage's process as soon as it runs (nothing can clean up inside it); its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (pid := stage_process(workspace, stage)) is not None:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no `memforge stage {stage}` process started in {workspace} within {timeout_s:.0f} s")


def test_a_stage_killed_mid_run_is_retried_and_the_pipeline_completes(
    workspace: Path, local_stack: LocalStack, prefect_api: None
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = trigger({"stages": ["ingest"]})
    killed = kill_when_running(workspace, "ingest")
    flow_run = wait(flow_run_id)
    assert flow_run.state.is_completed(), flow_run.state.message

    with get_client(sync_client=True) as client:
        [task_run] = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert task_run.run_count == 2, f"the killed task (pid {killed}) ran {task_run.run_count} time(s)"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.mlflow_uri)
    experiment = client.get_experiment_by_name("memforge")
    ingest_runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}' and tags.`memforge.stage` = 'ingest'",
    )
    # the retry closed the killed attempt's run (its process is gone) and finished its own
    assert sorted(run.info.status for run in ingest_runs) in (["FINISHED", "KILLED"], ["FINISHED"])
