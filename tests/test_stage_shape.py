"""Every stage has one shape: ``run(params, tracked) -> StageResult``, published by the one helper.

The runner opens the stage's MLflow run and publishes what ``run`` returns; no stage writes reports, logs results
or draws with matplotlib by itself.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import Params, TrackingConfig
from components.stages.registry import STAGE_NAMES, get_stage
from components.stages.runner import params_sections
from components.tracking import resolve_tracking_uri, stage_run
from components.tracking.publish import StageResult, numeric_leaves, publish

STAGES_DIR = Path(__file__).resolve().parent.parent / "components" / "stages"
# what only the runner and the publishing helper do
PUBLISHING_CALLS = {
    "write_json_atomic",
    "atomic_writer",
    "log_metrics",
    "log_figure",
    "log_table",
    "log_artifact",
    "stage_run",
}


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_stage_runs_with_params_and_its_mlflow_run_and_returns_a_stage_result(name: str) -> None:
    module = importlib.import_module(get_stage(name).module)
    signature = inspect.signature(module.run)
    assert list(signature.parameters) == ["params", "tracked"]
    assert signature.return_annotation in ("StageResult", StageResult)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_no_stage_publishes_or_draws_by_itself(name: str) -> None:
    tree = ast.parse((STAGES_DIR / f"{name}.py").read_text(encoding="utf-8"))
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not called & PUBLISHING_CALLS, f"{name} publishes by itself: {sorted(called & PUBLISHING_CALLS)}"
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any(module.startswith("matplotlib") for module in imported), f"{name} draws: use components.plots"


def test_params_sections_resolve_dotted_names() -> None:
    logged = params_sections(Params(), ["memagent.reader", "model.max_context_tokens", "sft"])
    assert logged["memagent.reader"]["chunk_tokens"] == Params().memagent.reader.chunk_tokens
    assert logged["model.max_context_tokens"] == Params().model.max_context_tokens
    assert logged["sft"]["learning_rate"] == Params().sft.learning_rate


def test_numeric_leaves_flatten_nested_metrics() -> None:
    tree = {"memagent": {"hotpotqa": {"5": {"sub_em": 0.5, "n": 2}}}, "ok": True, "name": "x", "rows": [1]}
    assert numeric_leaves(tree) == {"memagent/hotpotqa/5/sub_em": 0.5, "memagent/hotpotqa/5/n": 2.0, "ok": 1.0}


def test_publish_writes_the_dvc_files_and_logs_the_same_to_mlflow(tmp_path: Path) -> None:
    from components.plots import line_chart

    tracking = TrackingConfig(experiment="shape", store_dir=str(tmp_path / "mlflow"))
    card = tmp_path / "card.json"
    card.write_text('{"kind": "test"}', encoding="utf-8")
    result = StageResult(
        metrics={"rows": 3, "by_split": {"sft": 2}},
        metrics_path=str(tmp_path / "reports/demo.json"),
        timings={"seconds": 1.5},
        plots={str(tmp_path / "reports/demo_curve.json"): [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]},
        reports={str(tmp_path / "reports/demo_validation.json"): {"success": True}},
        lines={str(tmp_path / "reports/demo_rows.jsonl"): [{"id": "a", "ok": True}, {"id": "b", "ok": False}]},
        artifacts=[(str(card), "model"), (str(tmp_path / "absent.json"), "model")],
        figures={"demo/curve.png": line_chart({"demo": {"loss": [(1, 2.0), (2, 1.0)]}}, "demo", "step", "loss")},
        tables={"demo/rows.json": [{"a": 1}, {"a": 2}], "demo/empty.json": []},
        tags={"memforge.demo": "yes"},
    )
    with stage_run("demo", tracking) as tracked:
        publish(tracked, "demo", result)
        run_id = tracked.run_id

    assert json.loads(Path(result.metrics_path).read_text()) == {"rows": 3, "by_split": {"sft": 2}}
    assert json.loads((tmp_path / "reports/demo_curve.json").read_text())[1] == {"step": 2, "loss": 1.0}
    assert json.loads((tmp_path / "reports/demo_validation.json").read_text()) == {"success": True}
    lines = (tmp_path / "reports/demo_rows.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": "a", "ok": True}, {"id": "b", "ok": False}]
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking))
    run = client.get_run(run_id)
    assert run.data.metrics == {"rows": 3.0, "by_split/sft": 2.0, "seconds": 1.5}
    assert run.data.tags["memforge.demo"] == "yes"
    artifacts = {a.path for folder in ("demo", "model") for a in client.list_artifacts(run_id, folder)}
    assert artifacts == {
        "demo/demo.json",
        "demo/demo_curve.json",
        "demo/demo_validation.json",
        "demo/demo_rows.jsonl",
        "demo/curve.png",
        "demo/rows.json",
        "model/card.json",
    }
