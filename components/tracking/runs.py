"""One MLflow run per stage, with explicit run ids (MLflow's active run is per thread).

Default store: ``<store_dir>/mlflow.db`` (SQLite, so the model registry works) and
``<store_dir>/artifacts``; ``MLFLOW_TRACKING_URI`` points it anywhere else. A pipeline passes its
run id to stages in ``MEMFORGE_PARENT_RUN_ID`` (not ``MLFLOW_RUN_ID``, which MLflow would treat as
the run to resume).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import TrackingConfig
from components.errors import ConfigError
from components.io import file_digest
from components.secrets import REDACTED, is_secret_name, scrub

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_RUN_ENV = "MEMFORGE_PARENT_RUN_ID"
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value
# The orchestrator's run (a Prefect flow run) that started this process, passed down to the stages like the parent.
FLOW_RUN_ID_ENV = "MEMFORGE_FLOW_RUN_ID"
FLOW_RUN_NAME_ENV = "MEMFORGE_FLOW_RUN_NAME"
FLOW_RUN_TAG = "prefect.flow_run_id"
# MLflow 3's UI opens an experiment by this tag's kind; without it, it guesses (and may pick the GenAI view).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI keeps its GenAI / Model training switch per browser (GenAI first) whatever the experiment's kind;
# this query on a UI address opens the page in the model training view.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
SERVER_CHECK_TIMEOUT_S = 5.0  # for a tracking server's health endpoint


def local_store_uri(cfg: TrackingConfig) -> str:
    """The repo-local SQLite store: ``<store_dir>/mlflow.db``."""
    return f"sqlite:///{Path(cfg.store_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the repo-local SQLite store (its folder created)."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env_uri:
        return env_uri
    Path(cfg.store_dir).resolve().mkdir(parents=True, exist_ok=True)
    return local_store_uri(cfg)


def _artifact_root(cfg: TrackingConfig, uri: str) -> str | None:
    """Artifact location for new experiments in the local store; servers and other stores choose their own."""
    if uri != local_store_uri(cfg):
        return None
    root = Path(cfg.store_dir).resolve() / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def shown_uri(uri: str) -> str:
    """``uri`` without the user and password a server URI may carry, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def check_tracking_server(uri: str, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """A tracking server (``http(s)://``) that does not answer its health endpoint is a ``ConfigError`` at once,
    saying what to do (MLflow's own client would retry for minutes). Any HTTP answer counts as up."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy or an auth layer may refuse /health)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"the MLflow tracking server at {shown_uri(uri)} (MLFLOW_TRACKING_URI) does not answer: {reason}; "
            "start it (make up) or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None


def mlflow_ui_url(server_uri: str, route: str) -> str | None:
    """The MLflow UI address of ``route`` (``experiments/ID/runs/RUN``) on a tracking server, in the model training
    view and without credentials; ``None`` for a store no UI is served from."""
    if not server_uri.startswith(("http://", "https://")):
        return None
    return f"{shown_uri(server_uri).rstrip('/')}/#/{route}?{MODEL_TRAINING_VIEW}"


def experiment_ui_url(cfg: TrackingConfig, server_uri: str) -> str | None:
    """The UI address of memforge's experiment (``cfg.experiment``, created with its kind when missing) on the
    tracking server at ``server_uri``: its runs, in the model training view."""
    _, experiment_id = _client(cfg, server_uri)
    return mlflow_ui_url(server_uri, f"experiments/{experiment_id}/runs")


def _client(cfg: TrackingConfig, uri: str | None = None) -> tuple[MlflowClient, str]:
    """A client on ``uri`` (default: ``resolve_tracking_uri``) and the id of the experiment ``cfg.experiment``,
    created with memforge's experiment kind when missing."""
    from mlflow import MlflowClient

    # No mlflow.set_tracking_uri: in MLflow 3 it also exports MLFLOW_TRACKING_URI, which would pin
    # every later run in this process (and its subprocesses) to this store.
    uri = uri or resolve_tracking_uri(cfg)
    check_tracking_server(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before the tag was set
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return client, experiment.experiment_id
    try:
        return client, client.create_experiment(
            cfg.experiment, artifact_location=_artifact_root(cfg, uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        return client, experiment.experiment_id


def git_commit(cwd: str | Path = ".") -> str:
    """The checked-out commit, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def flatten_params(section: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys for nested params. A setting that holds a credential (``api_key``; not ``max_new_tokens`` nor
    ``api_key_env``, which names a variable) is redacted, and every value passes through the secret scrubber."""
    flat: dict[str, str] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif is_secret_name(name):
            flat[name] = REDACTED
        else:
            text = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, tuple, dict)) else str(value)
            flat[name] = scrub(text)[:MAX_PARAM_CHARS]
    return flat


# Files at least this large are looked up in DVC's hash cache first: reading a smaller one costs less than
# opening the cache.
STATE_LOOKUP_BYTES = 4 << 20


def _dvc_state(path: Path) -> tuple[Any, Any] | None:
    """DVC's hash cache for the repository holding ``path`` (its state database: md5s keyed on inode, mtime and
    size) and the filesystem it reads; ``None`` where no DVC repository holds it."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return _open_state(Repo.find_root(str(path)))
    except NotDvcRepoError:
        return None


@functools.lru_cache(maxsize=8)
def _open_state(root: str) -> tuple[Any, Any]:
    from dvc.repo import Repo

    repo = Repo(root)
    return repo.state, repo.fs


def cached_md5(path: Path) -> str:
    """A file's md5; a large file DVC hashed before, unchanged since (same inode, mtime and size), is read from
    DVC's hash cache instead of hashed again (only reads it: DVC records what it hashes)."""
    if path.stat().st_size >= STATE_LOOKUP_BYTES and (state := _dvc_state(path.parent.resolve())):
        cache, fs = state
        _, hash_info = cache.get(str(path.resolve()), fs)
        if hash_info is not None and hash_info.name == "md5":
            return str(hash_info.value)
    return file_digest(path)


def dvc_digest(path: str | Path) -> str:
    """DVC's digest of a file or folder as it is in the workspace now (never ``dvc.lock``'s record, which is stale
    once a file is edited): files hash as their md5; folders as the md5 of the sorted ``(relpath, md5)`` listing
    with DVC's ``.dir`` suffix, as DVC computes them. Large files DVC hashed already come from its hash cache
    (``cached_md5``), so digesting a model folder after ``dvc repro`` reads no weights.
    """
    target = Path(path)
    if target.is_file():
        return cached_md5(target)
    if target.is_dir():
        entries = [
            {"md5": cached_md5(p), "relpath": p.relative_to(target).as_posix()}
            for p in sorted(target.rglob("*"))
            if p.is_file()
        ]
        listing = json.dumps(entries, sort_keys=True).encode()
        return hashlib.md5(listing).hexdigest() + ".dir"
    return "missing"


@dataclass
class StageRun:
    """Handle on one stage's MLflow run; every call names the run id explicitly."""

    client: MlflowClient
    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        """A trainer's logs at ``step`` (the ``on_log`` callback every training stage passes)."""
        self.log_metrics(metrics, step=step)

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Param

        flat = flatten_params(params, prefix)
        batch = [Param(key, value) for key, value in flat.items()]
        for start in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        target = Path(path)
        if target.is_dir():
            self.client.log_artifacts(self.run_id, str(target), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(target), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_input_dataset(
        self,
        path: str | Path,
        *,
        name: str,
        context: str,
        digest: str | None = None,
        profile: Mapping[str, Any] | None = None,
    ) -> str:
        """Record an input file or folder with its DVC digest; returns the digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = digest or dvc_digest(path)
        dataset = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local",
            source=json.dumps({"uri": str(path), "dvc_md5": digest}),
            profile=json.dumps(dict(profile or {})),
        )
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])
        return digest

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """A list of row dicts as an MLflow table artifact (JSON, shown in the UI's evaluation view)."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)


@contextlib.contextmanager
def stage_run(
    stage: str,
    tracking: TrackingConfig,
    params_section: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Open a run for ``stage``: params, git commit and parent link logged; status set on exit.

    The parent comes from ``parent_run_id`` or ``$MEMFORGE_PARENT_RUN_ID``. A failing stage ends its
    run FAILED with the error message as a tag, and the exception propagates.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client, experiment_id = _client(tracking)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    name, flow_tags = run_label(stage)
    tags = {
        MLFLOW_RUN_NAME: name,
        "memforge.stage": stage,
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.type": "JOB",
        **flow_tags,
    }
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    close_ghost_runs(client, experiment_id, stage)
    run = client.create_run(experiment_id, run_name=name, tags={**tags, **process_tags()})
    handle = StageRun(client=client, run_id=run.info.run_id)
    try:
        if params_section:
            handle.log_params(params_section)
        yield handle
    except BaseException as exc:
        from components.errors import Terminated

        status = "KILLED" if isinstance(exc, (Terminated, KeyboardInterrupt)) else "FAILED"
        with contextlib.suppress(Exception):
            client.set_tag(run.info.run_id, "memforge.error", scrub(str(exc) or type(exc).__name__)[:5000])
            client.set_terminated(run.info.run_id, status=status)
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def run_label(stage: str, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The run name and tags for ``stage``: under a flow run (``$MEMFORGE_FLOW_RUN_ID``/``_NAME``) the name is
    ``<stage>-<flow run name>``, so runs of one stage tell apart, and the run carries the flow run's id."""
    env = os.environ if env is None else env
    flow_run_id, flow_run_name = env.get(FLOW_RUN_ID_ENV, ""), env.get(FLOW_RUN_NAME_ENV, "")
    if not flow_run_id:
        return stage, {}
    return f"{stage}-{flow_run_name or flow_run_id[:8]}", {FLOW_RUN_TAG: flow_run_id}


HOST_TAG = "memforge.host"
PID_TAG = "memforge.pid"


def process_tags() -> dict[str, str]:
    """The host and pid of this process, recorded on its runs so a later run can tell whether it is gone."""
    import socket

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def close_ghost_runs(client: MlflowClient, experiment_id: str, stage: str) -> list[str]:
    """Close as KILLED the RUNNING runs of ``stage`` whose process on this host is gone (a SIGKILL, a crash, a
    machine that lost power); returns their ids. Runs of live processes, or of other hosts, are left alone."""
    import socket

    from components.io import pid_alive

    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`memforge.stage` = '{stage}' and attributes.status = 'RUNNING'",
        max_results=100,
    )
    closed = []
    for ghost in running:
        tags = ghost.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        client.set_tag(ghost.info.run_id, "memforge.error", f"process {pid} on {host} ended without closing its run")
        client.set_terminated(ghost.info.run_id, status="KILLED")
        closed.append(ghost.info.run_id)
    return closed


def start_pipeline_run(
    tracking: TrackingConfig,
    name: str,
    params: Mapping[str, Any] | None = None,
    flow_env: Mapping[str, str] | None = None,
) -> str:
    """Create the parent run of a pipeline; stages nest under it via ``MEMFORGE_PARENT_RUN_ID``. ``flow_env``
    (``MEMFORGE_FLOW_RUN_ID``/``_NAME``, default: this process's environment) names it and tags its flow run."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    client, experiment_id = _client(tracking)
    label, flow_tags = run_label(name, flow_env)
    run = client.create_run(
        experiment_id,
        run_name=label,
        tags={
            MLFLOW_RUN_NAME: label,
            "memforge.stage": "pipeline",
            "mlflow.source.git.commit": git_commit(),
            **flow_tags,
        },
    )
    if params:
        StageRun(client, run.info.run_id).log_params(params)
    return run.info.run_id


def end_pipeline_run(
    tracking: TrackingConfig, run_id: str, status: str, summary: Mapping[str, Any] | None = None
) -> None:
    client, _ = _client(tracking)
    if summary:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "pipeline_summary.json"
            file.write_text(json.dumps(dict(summary), indent=2), encoding="utf-8")
            client.log_artifact(run_id, str(file))
    client.set_terminated(run_id, status=status)
