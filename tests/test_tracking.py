"""MLflow tracking on a real SQLite store: params, metrics, artifacts, datasets and nesting read back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.tracking import (
    PARENT_RUN_ENV,
    dvc_digest,
    end_pipeline_run,
    resolve_tracking_uri,
    stage_run,
    start_pipeline_run,
)
from components.tracking.runs import REDACTED


def _client(tracking_config) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))


def test_default_store_is_sqlite_in_store_dir(tracking_config, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = resolve_tracking_uri(tracking_config)
    assert uri == f"sqlite:///{Path(tracking_config.store_dir).resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(tracking_config) == "http://mlflow.example:5000"


def test_stage_run_logs_params_metrics_artifacts_and_inputs(tracking_config, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n', encoding="utf-8")
    section = {"ingest": {"splits": {"seed": 13}, "sources": [{"format": "jsonl"}], "api_key": "sk-secret"}}
    with stage_run("ingest", tracking_config, params_section=section) as run:
        run.log_metrics({"pass_rate_unique_ids": 1.0, "sessions": 82})
        run.log_dict({"ok": True}, "quality/result.json")
        run.log_input_dataset(data, name="train", context="source")
        run_id = run.run_id

    client = _client(tracking_config)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["ingest.splits.seed"] == "13"
    assert json.loads(logged.data.params["ingest.sources"]) == [{"format": "jsonl"}]
    assert logged.data.params["ingest.api_key"] == REDACTED
    assert "sk-secret" not in json.dumps(logged.data.params)
    assert logged.data.metrics == {"pass_rate_unique_ids": 1.0, "sessions": 82.0}
    assert logged.data.tags["memforge.stage"] == "ingest"
    assert logged.data.tags["mlflow.source.git.commit"]
    artifact = client.download_artifacts(run_id, "quality/result.json", str(tmp_path / "dl"))
    assert json.loads(Path(artifact).read_text(encoding="utf-8")) == {"ok": True}
    inputs = logged.inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.name == "train"
    assert json.loads(inputs[0].dataset.source)["dvc_md5"] == dvc_digest(data)
    assert inputs[0].tags[0].value == "source"


def test_hyperparameters_named_like_tokens_are_logged_as_values(tracking_config) -> None:
    """Only credentials are redacted: counts called *_tokens and the name of a key's variable are real values."""
    section = {
        "memagent.reader": {"chunk_tokens": 512, "memory_tokens": 64},
        "backends": {"teacher": {"max_new_tokens": 256, "api_key_env": "OPENAI_API_KEY"}},
        "model.max_context_tokens": 2048,
    }
    with stage_run("eval_longcontext", tracking_config, params_section=section) as run:
        run_id = run.run_id
    params = _client(tracking_config).get_run(run_id).data.params
    assert params["memagent.reader.chunk_tokens"] == "512" and params["memagent.reader.memory_tokens"] == "64"
    assert params["backends.teacher.max_new_tokens"] == "256"
    assert params["backends.teacher.api_key_env"] == "OPENAI_API_KEY"
    assert params["model.max_context_tokens"] == "2048"
    assert REDACTED not in params.values()


def test_a_known_key_never_reaches_an_error_tag_or_a_param(tracking_config) -> None:
    from components.secrets import remember

    key = "sk-live-0123456789abcdef"
    remember(key)  # what a backend does when it reads its key from the environment
    with pytest.raises(RuntimeError), stage_run("expert", tracking_config, params_section={"x": {"note": key}}) as run:
        run_id = run.run_id
        raise RuntimeError(f"endpoint said: invalid key {key}")
    logged = _client(tracking_config).get_run(run_id)
    assert logged.info.status == "FAILED"
    assert key not in logged.data.tags["memforge.error"] and "[REDACTED]" in logged.data.tags["memforge.error"]
    assert key not in json.dumps(logged.data.params)


def test_stage_nests_under_pipeline_run_from_environment(tracking_config, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = start_pipeline_run(tracking_config, "pipeline", {"stages": ["ingest"]})
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    with stage_run("ingest", tracking_config) as run:
        child_id = run.run_id
    end_pipeline_run(tracking_config, parent, "FINISHED", {"stages": ["ingest"]})
    client = _client(tracking_config)
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FINISHED"
    assert "pipeline_summary.json" in [a.path for a in client.list_artifacts(parent)]


def test_failing_stage_marks_run_failed_with_reason(tracking_config) -> None:
    with pytest.raises(ValueError, match="bad record"), stage_run("ingest", tracking_config) as run:
        run_id = run.run_id
        raise ValueError("bad record")
    logged = _client(tracking_config).get_run(run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["memforge.error"] == "bad record"


def test_dvc_digest_matches_dvc_and_reads_the_workspace_not_the_lock(tmp_path: Path) -> None:
    file = tmp_path / "x.txt"
    file.write_bytes(b"hello\n")
    assert dvc_digest(file) == "b1946ac92492d2347c6235b4d2611184"  # md5 of b"hello\n"
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    before = dvc_digest(folder)
    assert before.endswith(".dir")
    lock = tmp_path / "dvc.lock"  # what DVC recorded before the edit below
    lock.write_text(f"schema: '2.0'\nstages:\n  s:\n    outs:\n    - path: d\n      md5: {before}\n", encoding="utf-8")
    (folder / "a.txt").write_bytes(b"edited after dvc.lock was written")
    assert dvc_digest(folder) not in (before, "missing")


def test_dvc_digest_equals_dvcs_own_hash_of_a_folder(tmp_path: Path) -> None:
    """The digest memforge logs to MLflow is the one DVC records: checked against `dvc add` in a real repo."""
    import subprocess
    import sys

    import yaml

    from tests.helpers import git_init

    git_init(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n", encoding="utf-8")
    (data / "sub" / "b.json").write_text('{"b": 1}\n', encoding="utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((tmp_path / "data.dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]
    assert dvc_digest(data) == recorded


def test_dvc_digest_reads_a_large_file_dvc_hashed_from_its_cache_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `dvc add`, a model-sized file is not read again; once edited, it is hashed afresh."""
    import hashlib
    import sys

    import yaml

    from components.tracking import runs
    from tests.helpers import git_init

    git_init(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    weights = tmp_path / "model" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * (runs.STATE_LOOKUP_BYTES // 256 + 1))
    (tmp_path / "model" / "config.json").write_text("{}\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "model"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((tmp_path / "model.dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]

    hashed: list[str] = []
    real_file_digest = runs.file_digest
    monkeypatch.setattr(runs, "file_digest", lambda path: hashed.append(Path(path).name) or real_file_digest(path))
    assert dvc_digest(tmp_path / "model") == recorded
    assert hashed == ["config.json"]  # the small file is hashed; the large one comes from DVC's cache

    with weights.open("ab") as handle:
        handle.write(b"fine-tuned")
    assert dvc_digest(weights) == hashlib.md5(weights.read_bytes()).hexdigest()
    assert hashed[-1] == "weights.bin"


def test_git_commit_is_recorded_inside_a_repo(tracking_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import git_init

    repo = tmp_path / "repo"
    repo.mkdir()
    git_init(repo)
    (repo / "f").write_text("x", encoding="utf-8")
    subprocess.run(["git", "add", "f"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    with stage_run("ingest", tracking_config) as run:
        run_id = run.run_id
    assert _client(tracking_config).get_run(run_id).data.tags["mlflow.source.git.commit"] == head


def test_a_tracking_server_that_does_not_answer_fails_at_once_naming_it_without_its_password(
    tracking_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from components.errors import ConfigError

    with socket.socket() as probe:  # a loopback port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    unreachable = f"tracking server at http://127.0.0.1:{port} .*does not answer"
    with pytest.raises(ConfigError, match=unreachable) as raised, stage_run("ingest", tracking_config):
        pass
    assert "s3cret" not in str(raised.value)
    assert "make up" in str(raised.value)
