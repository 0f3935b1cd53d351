"""prefect.yaml agrees with the code: every pipeline deployment names stages and groups the registry knows, they
share one work pool through YAML anchors, the promote deployment runs by hand, and every deployment's parameters
fit its flow's signature. A run's stages and overrides are checked before anything starts, and overrides become the
argv of a ``dvc exp run`` that DVC applies as the typed config would."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from components.errors import ConfigError
from components.model_registry.promote import ALL_MODELS, MODEL_KEYS
from components.stages.registry import GROUPS, STAGE_NAMES, select_stages
from components.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FLOW_RUN_ID_ENV,
    FLOW_RUN_NAME_ENV,
    FLOW_RUN_TAG,
    mlflow_ui_url,
    run_label,
)
from flows.dvc_tasks import changed_stages, unchanged_prefix
from flows.experiment import (
    WorkspaceSnapshot,
    exp_run_command,
    experiment_name,
    hydra_value,
    set_param_args,
    stage_outcomes,
)
from tests.helpers import REPO_ROOT, git_init

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
PIPELINE = "flows/pipeline.py:memforge_pipeline"
PROMOTE = "flows/promote.py:memforge_promote"


def prefect_config() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))


def deployments() -> list[dict]:
    return prefect_config()["deployments"]


def flow_object(entrypoint: str):
    """The Prefect flow behind a deployment's ``path.py:flow`` entrypoint."""
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def flow_function(entrypoint: str):
    return flow_object(entrypoint).fn


def test_every_deployment_names_registry_stages_or_a_group() -> None:
    for deployment in deployments():
        assert deployment["entrypoint"] in (PIPELINE, PROMOTE), deployment["name"]
        if deployment["entrypoint"] == PROMOTE:
            continue
        parameters = deployment["parameters"]
        assert set(parameters.get("stages", [])) <= set(STAGE_NAMES), deployment["name"]
        assert parameters.get("group", "all") in GROUPS, deployment["name"]
    assert {d["name"] for d in deployments()} == {"default", "membuilder", "memagent", "evaluation", "promote"}


def test_deployment_parameters_are_flow_parameters() -> None:
    for deployment in deployments():
        accepted = set(inspect.signature(flow_function(deployment["entrypoint"])).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        # and of the types the flow declares (Prefect's own check, as a run from the UI gets)
        flow_object(deployment["entrypoint"]).validate_parameters(deployment["parameters"])


def test_every_deployment_shares_one_work_pool_through_an_anchor() -> None:
    config = prefect_config()
    pool = config["definitions"]["work_pools"]["memforge"]
    for deployment in config["deployments"]:
        assert deployment["work_pool"] is pool, deployment["name"]  # an alias: the same object, not a copy
    assert PREFECT_YAML.read_text(encoding="utf-8").count("name: memforge\n") == 2  # the project and the pool


def test_nightly_evaluation_is_scheduled_and_active() -> None:
    [evaluation] = [d for d in deployments() if d["name"] == "evaluation"]
    [schedule] = evaluation["schedules"]
    assert schedule["active"] is True and schedule["cron"].split()[2:] == ["*", "*", "*"]  # every day
    assert select_stages(group=evaluation["parameters"]["group"]) == ["eval_longcontext", "eval_dialogue"]


def test_ui_form_has_descriptions_and_stage_choices() -> None:
    from prefect.utilities.callables import parameter_schema

    for deployment in deployments():
        schema = parameter_schema(flow_object(deployment["entrypoint"])).model_dump()["properties"]
        assert all(field.get("description") for field in schema.values()), deployment["name"]
    schema = parameter_schema(flow_object(PIPELINE)).model_dump()["properties"]
    assert schema["stages"]["anyOf"][0]["items"]["enum"] == list(STAGE_NAMES)
    assert schema["group"]["enum"] == list(GROUPS)


def test_promote_deployment_is_manual_and_names_registered_models() -> None:
    [promote] = [d for d in deployments() if d["entrypoint"] == PROMOTE]
    assert promote["name"] == "promote" and not promote.get("schedules")
    assert promote["parameters"].get("model", ALL_MODELS) in (*MODEL_KEYS, ALL_MODELS)


def test_groups_select_their_systems_in_pipeline_order() -> None:
    assert select_stages(group="all") == list(STAGE_NAMES)
    assert STAGE_NAMES[-1] == "register"  # both trained models and both evaluations: the whole pipeline only
    membuilder = ["prepare_model", "ingest", "expert", "synth_qa", "sft", "adrpo", "eval_dialogue"]
    assert select_stages(group="membuilder") == membuilder
    memagent = ["prepare_model", "longcontext_data", "memagent_train", "eval_longcontext"]
    assert select_stages(group="memagent") == memagent
    assert select_stages(["adrpo", "ingest"]) == ["ingest", "adrpo"]


def test_unknown_stage_or_group_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown stage 'ingets'; stages: prepare_model, ingest"):
        select_stages(["ingets"])
    with pytest.raises(ConfigError, match="unknown stage group 'memory'"):
        select_stages(group="memory")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# a run's request, checked before anything starts


def test_unknown_stage_or_override_key_fails_before_any_prefect_call(tmp_path: Path) -> None:
    from flows.pipeline import memforge_pipeline

    params = tmp_path / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    # .fn: the flow's body without Prefect; the request is refused before it asks Prefect for anything
    with pytest.raises(ConfigError, match=r"unknown key 'ingest\.splits\.sed'.*-S ingest\.splits\.sed"):
        memforge_pipeline.fn(params_overrides={"ingest.splits.sed": 3}, repo_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"ingest\.splits\.seed: expected an integer"):
        memforge_pipeline.fn(params_overrides={"ingest.splits.seed": "x"}, repo_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown stage 'ingets'"):
        memforge_pipeline.fn(stages=["ingets"], repo_dir=str(tmp_path))
    with pytest.raises(Exception, match=r"stages\.0: Input should be 'prepare_model'"):  # Prefect's own check
        memforge_pipeline.validate_parameters({"stages": ["ingets"]})


def test_memforge_run_refuses_a_bad_override_before_a_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    params = tmp_path / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["--params", str(params), "run", "-S", "ingest.splits.sed=3"]) == 2
    assert "unknown key 'ingest.splits.sed'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# overrides as a DVC experiment


def test_exp_run_argv_from_overrides() -> None:
    raw = {"ingest": {"splits": {"seed": 13}}, "sft": {"learning_rate": 1e-5}}
    overrides = {"ingest.splits": {"seed": 3}, "sft.learning_rate": 2e-5, "sft.output_dir": "models/sft:v2"}
    command = exp_run_command("dvc", ["ingest", "sft"], overrides, raw, "brave-owl-0a1b2c3d")
    assert command == [
        "dvc",
        "exp",
        "run",
        "--name",
        "brave-owl-0a1b2c3d",
        "-S",
        "ingest.splits.seed=3",
        "-S",
        "sft.learning_rate=2e-05",
        "-S",
        "++sft.output_dir='models/sft:v2'",  # not in the file yet: Hydra's add-or-set
        "ingest",
        "sft",
    ]
    assert experiment_name("brave owl/1", "0a1b2c3d-4e5f-6789-abcd-ef0123456789") == "brave-owl-1-0a1b2c3d"


def apply_with_dvc(params_text: str, args: list[str], tmp: Path) -> dict:
    """What ``dvc exp run`` writes into params.yaml for these ``-S`` args (DVC's own Hydra code), read as YAML 1.2
    the way DVC and ``load_params`` read it (PyYAML's 1.1 would take ``5e-324`` for a string)."""
    from dvc.utils.hydra import apply_overrides

    from components.config import parse_yaml

    file = tmp / "params.yaml"
    file.write_text(params_text, encoding="utf-8")
    apply_overrides(file, [arg for arg in args if arg != "-S"])
    return parse_yaml(file.read_text(encoding="utf-8"), str(file))


def test_dvc_applies_the_overrides_as_the_typed_config_does(tmp_path: Path) -> None:
    from components.config import load_params, to_dict

    text = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    overrides = {
        "ingest.splits.seed": 5,
        "ingest.sources": [{"format": "jsonl", "path": "/data/it's here: ${HOME}.jsonl"}],
        "sft.learning_rate": 3e-6,
        "memory.embedder": "hashing",
        "pipeline.retries": 0,
    }
    applied = apply_with_dvc(text, set_param_args(overrides, yaml.safe_load(text)), tmp_path)
    (tmp_path / "applied.yaml").write_text(yaml.safe_dump(applied), encoding="utf-8")
    expected = load_params(REPO_ROOT / "params.yaml", overrides)
    assert to_dict(load_params(tmp_path / "applied.yaml")) == to_dict(expected)


@settings(max_examples=60)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3),
        max_leaves=6,
    )
)
@example(5e-324)  # exponent without a dot: a number in YAML 1.2, a string in 1.1
@example(1e-05)
def test_hydra_values_round_trip_through_dvc(value: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        applied = apply_with_dvc("a:\n  b: 0\n", ["-S", f"a.b={hydra_value(value)}"], Path(tmp))
    assert applied["a"]["b"] == value


def test_stage_outcomes_from_a_dvc_log() -> None:
    log = "\n".join(
        [
            "Reproducing experiment 'brave-owl'",
            "Stage 'prepare_model' didn't change, skipping",
            "Running stage 'ingest':",
            "> memforge stage ingest",
            "Stage 'expert' is cached - skipping run, checking out outputs",
            "Updating lock file 'dvc.lock'",
        ]
    )
    assert stage_outcomes(log) == {"prepare_model": True, "ingest": False, "expert": True}


def test_the_unchanged_prefix_stops_at_the_first_changed_stage() -> None:
    stages = ["prepare_model", "ingest", "expert", "register"]
    assert unchanged_prefix(stages, {"register"}) == 3  # a no-op run: only the always_changed stage is a task
    assert unchanged_prefix(stages, {"ingest", "register"}) == 1  # expert may change once ingest reruns
    assert unchanged_prefix(stages, set()) == 4
    assert unchanged_prefix(stages, None) == 0  # DVC could not tell: every stage is a task


def test_dvc_status_names_the_stages_dvc_repro_would_run(tmp_path: Path) -> None:
    git_init(tmp_path)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: echo a > a.txt, outs: [a.txt]}\n"
        "  b: {cmd: cat a.txt > b.txt, deps: [a.txt], outs: [b.txt]}\n"
        "  c: {cmd: echo c, always_changed: true}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(bin_dir / "dvc"), "repro", "-q"], cwd=tmp_path, env=env, check=True)
    assert changed_stages(str(tmp_path), ["a", "b", "c"]) == {"c"}
    (tmp_path / "a.txt").write_text("edited\n", encoding="utf-8")
    assert changed_stages(str(tmp_path), ["a", "b", "c"]) == {"a", "b", "c"}
    (tmp_path / "dvc.yaml").write_text("stages:\n  a: [not, a, stage]\n", encoding="utf-8")
    assert changed_stages(str(tmp_path), ["a"]) is None  # unknown: every stage then runs as a task


def test_workspace_snapshot_puts_back_params_lock_and_git_tracked_metrics(tmp_path: Path) -> None:
    git_init(tmp_path)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo\n    params: [a]\n    outs: [out]\n"
        "    metrics:\n      - reports/m.json:\n          cache: false\n",
        encoding="utf-8",
    )
    files = {"params.yaml": b"# kept as is\na: 1  # note\n", "dvc.lock": b"schema: '2.0'\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    snapshot = WorkspaceSnapshot.take(tmp_path)
    assert set(snapshot.files) == {tmp_path / "params.yaml", tmp_path / "dvc.lock", tmp_path / "reports/m.json"}
    (tmp_path / "params.yaml").write_text("a: 5\n", encoding="utf-8")  # what dvc exp run leaves behind
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/m.json").write_text("{}", encoding="utf-8")
    assert sorted(snapshot.restore()) == ["dvc.lock", "params.yaml", "reports/m.json"]
    assert {name: (tmp_path / name).read_bytes() for name in files} == files
    assert not (tmp_path / "reports/m.json").exists()


# ---------------------------------------------------------------------------------------------
# MLflow: runs named and tagged after their flow run; the experiment opens as model training


def test_runs_under_a_flow_are_named_after_it_and_carry_its_id() -> None:
    env = {FLOW_RUN_ID_ENV: "0a1b2c3d-4e5f", FLOW_RUN_NAME_ENV: "brave-owl"}
    assert run_label("ingest", env) == ("ingest-brave-owl", {FLOW_RUN_TAG: "0a1b2c3d-4e5f"})
    assert run_label("ingest", {}) == ("ingest", {})


def test_stage_runs_carry_the_flow_run_and_the_experiment_is_model_training(
    tracking_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from components.tracking import resolve_tracking_uri, stage_run

    monkeypatch.setenv(FLOW_RUN_ID_ENV, "0a1b2c3d-4e5f")
    monkeypatch.setenv(FLOW_RUN_NAME_ENV, "brave-owl")
    with stage_run("ingest", tracking_config) as run:
        pass
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    logged = client.get_run(run.run_id)
    assert logged.info.run_name == "ingest-brave-owl" and logged.data.tags[FLOW_RUN_TAG] == "0a1b2c3d-4e5f"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_mlflow_ui_urls_open_the_model_training_view_on_a_server_without_credentials() -> None:
    run_page = "experiments/1/runs/abc"
    expected = "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    assert mlflow_ui_url("http://127.0.0.1:5000/", run_page) == expected
    assert mlflow_ui_url("http://bob:pa55@127.0.0.1:5000", run_page) == expected
    assert mlflow_ui_url("sqlite:///tmp/mlflow.db", run_page) is None
