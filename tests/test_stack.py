"""``infra/stack.py`` (``make up`` / ``make down``): a real Prefect server, process worker and MLflow server on
loopback, prefect.yaml's deployments registered, the registry reachable, the environment that points clients at
them, and clear errors that leave nothing running. One stack per session (``local_stack``); the UI pages are
rendered by headless Chromium where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from components.tracking.runs import MODEL_TRAINING_VIEW
from tests.helpers import REPO_ROOT
from tests.stack_fixtures import LocalStack, isolated_stack_args, process_alive, stack_command

pytestmark = pytest.mark.server

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def get_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def prefect_yaml_deployments() -> set[str]:
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    return {deployment["name"] for deployment in spec["deployments"]}


def port_open(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as sock:
        sock.settimeout(3)
        return sock.connect_ex((parsed.hostname, parsed.port)) == 0


@pytest.fixture(scope="module")
def registered_model(local_stack: LocalStack) -> str:
    """A throwaway registered model on the stack's MLflow registry."""
    from mlflow import MlflowClient

    name = f"stack-test-{uuid.uuid4().hex[:8]}"
    MlflowClient(tracking_uri=local_stack.mlflow_uri).create_registered_model(name, description="infra/stack.py test")
    return name


def test_up_serves_prefect_and_mlflow_on_loopback(local_stack: LocalStack) -> None:
    for url in (local_stack.prefect_api_url, local_stack.mlflow_uri):
        assert urlparse(url).hostname == "127.0.0.1"
        assert port_open(url)
    assert get_json(f"{local_stack.prefect_api_url}/health") is True
    with urllib.request.urlopen(f"{local_stack.mlflow_uri}/health", timeout=30) as response:
        assert response.read().strip() == b"OK"
    assert set(local_stack.pids) == {"prefect-server", "mlflow-server", "prefect-worker"}
    assert all(process_alive(pid) for pid in local_stack.pids.values())


def test_prefect_yaml_deployments_are_registered_with_a_worker_on_their_pool(local_stack: LocalStack) -> None:
    deployments = get_json(f"{local_stack.prefect_api_url}/deployments/filter", {})
    assert {d["name"] for d in deployments} == prefect_yaml_deployments()
    assert {name.split("/")[1] for name in local_stack.deployments} == prefect_yaml_deployments()
    assert "memforge" in {d["work_pool_name"] for d in deployments}
    workers = get_json(f"{local_stack.prefect_api_url}/work_pools/memforge/workers/filter", {})
    assert any(worker["status"] == "ONLINE" for worker in workers), workers


def test_the_mlflow_registry_is_database_backed_and_reachable(local_stack: LocalStack, registered_model: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.mlflow_uri)
    found = client.search_registered_models(filter_string=f"name = '{registered_model}'")
    assert [model.name for model in found] == [registered_model]
    assert (Path(local_stack.state["mlflow_store"]) / "mlflow.db").is_file()


def test_an_experiment_url_names_the_experiment_created_with_its_kind(local_stack: LocalStack) -> None:
    from mlflow import MlflowClient

    from components.config import TrackingConfig
    from components.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_ui_url

    tracking = TrackingConfig(experiment=f"stack-test-{uuid.uuid4().hex[:8]}")
    url = experiment_ui_url(tracking, local_stack.mlflow_uri)
    experiment = MlflowClient(tracking_uri=local_stack.mlflow_uri).get_experiment_by_name(tracking.experiment)
    assert url == f"{local_stack.mlflow_uri}/#/experiments/{experiment.experiment_id}/runs?{MODEL_TRAINING_VIEW}"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_env_points_clients_at_the_stack(local_stack: LocalStack) -> None:
    """`eval "$(python infra/stack.py env)"`, then the Prefect CLI and memforge's tracking URI use the stack."""
    script = (
        f'eval "$({json.dumps(str(REPO_ROOT / ".venv/bin/python"))} infra/stack.py env '
        f'--state-dir {json.dumps(str(local_stack.state_dir))})" && '
        'python -c "from components.config import TrackingConfig; '
        'from components.tracking import resolve_tracking_uri; print(resolve_tracking_uri(TrackingConfig()))" && '
        "prefect --no-prompt deployment ls"
    )
    env = {key: value for key, value in local_stack.env().items() if not key.startswith(("PREFECT_API", "MLFLOW_"))}
    env["PATH"] = f"{REPO_ROOT / '.venv/bin'}:{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == local_stack.mlflow_uri
    assert all(name.split("/")[1] in done.stdout for name in local_stack.deployments)


def test_a_busy_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        args = [*isolated_stack_args(tmp_path), "--mlflow-port", str(busy)]
        done = stack_command("up", tmp_path, *args, timeout_s=120)
    assert done.returncode == 1
    assert f"port {busy} on 127.0.0.1 is busy" in done.stderr
    assert "--mlflow-port" in done.stderr
    assert not STARTED.search(done.stderr)
    assert not (tmp_path / "stack.json").exists()


def test_a_server_that_does_not_come_up_is_reported_and_everything_started_is_stopped(tmp_path: Path) -> None:
    done = stack_command("up", tmp_path, *isolated_stack_args(tmp_path), "--startup-timeout", "1", timeout_s=300)
    assert done.returncode == 1
    assert re.search(r"error: (prefect|mlflow)-server did not come up within 1 s; last lines of \S+\.log", done.stderr)
    started = {name: int(pid) for name, pid in STARTED.findall(done.stderr)}
    assert set(started) == {"prefect-server", "mlflow-server"}
    assert not any(process_alive(pid) for pid in started.values())
    assert not (tmp_path / "stack.json").exists()
    again = stack_command("down", tmp_path, timeout_s=60)
    assert again.returncode == 0 and "nothing to stop" in again.stderr


def chromium_binary() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def render(chromium: str, url: str, screenshot: Path) -> str:
    """The page's DOM after its scripts ran (a virtual-time budget lets the single-page apps fetch and render),
    and a screenshot of it."""
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=30000"]  # fmt: skip
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return done.stdout


def test_the_uis_show_the_deployments_and_the_registered_model(
    local_stack: LocalStack, registered_model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Headless Chromium renders the Prefect UI's deployments page, the MLflow models page and memforge's experiment
    as `make up` prints it; the screenshots stay in pytest's temporary directory (kept for the last runs)."""
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    shots = tmp_path_factory.mktemp("ui-screenshots")
    print(f"UI screenshots in {shots}")
    prefect_dom = render(chromium, f"{local_stack.prefect_ui_url}/deployments", shots / "prefect-deployments.png")
    mlflow_dom = render(chromium, f"{local_stack.mlflow_uri}/#/models", shots / "mlflow-models.png")
    missing = {name for name in prefect_yaml_deployments() if f">{name}<" not in prefect_dom}
    assert not missing, f"deployments {missing} not on the Prefect UI page (screenshot in {shots})"
    assert registered_model in mlflow_dom, f"{registered_model} not on the MLflow models page (screenshot in {shots})"
    experiment_url = local_stack.state["mlflow_experiment_url"]  # what `make up` prints as the MLflow UI
    experiment_page = rf"{re.escape(local_stack.mlflow_uri)}/#/experiments/\d+/runs\?{MODEL_TRAINING_VIEW}"
    assert re.fullmatch(experiment_page, experiment_url), experiment_url
    experiment_dom = render(chromium, experiment_url, shots / "mlflow-experiment.png")
    # MLflow's model training view (its sidebar has the model registry), not the GenAI one (judges, sessions)
    assert "Model registry" in experiment_dom and "Judges" not in experiment_dom, f"screenshot in {shots}"
    pngs = ("prefect-deployments.png", "mlflow-models.png", "mlflow-experiment.png")
    assert all((shots / png).stat().st_size > 10_000 for png in pngs)
