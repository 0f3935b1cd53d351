"""prefect.yaml agrees with the code: every pipeline deployment names stages and groups the registry knows, the
promote deployment runs by hand, and every deployment passes only parameters its flow takes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from components.errors import ConfigError
from components.model_registry.promote import ALL_MODELS, MODEL_KEYS
from components.stages.registry import GROUPS, STAGE_NAMES, select_stages

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
PIPELINE = "flows/pipeline.py:memforge_pipeline"
PROMOTE = "flows/promote.py:memforge_promote"


def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]


def flow_function(entrypoint: str):
    """The function behind a deployment's ``path.py:flow`` entrypoint."""
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name).fn


def test_every_deployment_names_registry_stages_or_a_group() -> None:
    for deployment in deployments():
        assert deployment["entrypoint"] in (PIPELINE, PROMOTE), deployment["name"]
        if deployment["entrypoint"] == PROMOTE:
            continue
        parameters = deployment["parameters"]
        assert set(parameters.get("stages", [])) <= set(STAGE_NAMES), deployment["name"]
        assert parameters.get("group", "all") in GROUPS, deployment["name"]
    assert {"default", "membuilder", "memagent"} <= {d["name"] for d in deployments()}


def test_deployment_parameters_are_flow_parameters() -> None:
    for deployment in deployments():
        accepted = set(inspect.signature(flow_function(deployment["entrypoint"])).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]


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
