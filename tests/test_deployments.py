"""prefect.yaml and dvc.yaml agree with the code: every stage a deployment or the pipeline names exists."""

from __future__ import annotations

import yaml

from components.cli import STAGES
from components.config import Params
from tests.conftest import REPO_ROOT


def dvc_stages() -> list[str]:
    return list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def test_dvc_stages_are_the_cli_stages_and_the_default_pipeline_in_order() -> None:
    assert dvc_stages() == list(STAGES) == list(Params().pipeline.stages)


def test_every_deployment_runs_known_stages_in_pipeline_order() -> None:
    deployments = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    order = dvc_stages()
    for deployment in deployments:
        assert deployment["entrypoint"] == "flows/pipeline.py:memforge_pipeline"
        stages = deployment["parameters"].get("stages", order)
        assert set(stages) <= set(order), deployment["name"]
        assert stages == sorted(stages, key=order.index), deployment["name"]
    assert {"default", "membuilder", "memagent"} <= {d["name"] for d in deployments}
