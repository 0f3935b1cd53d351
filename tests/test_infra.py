"""The team stack and scale-out files: the compose file against the compose spec, its variables against
infra/env.example, no secret in the repository, the image's pins, the accelerate and DeepSpeed configs as accelerate
reads them, the launch commands generated from params, and the Kubernetes work pool's base job template."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import Params, load_params, render_params
from components.errors import MemforgeError
from components.training.launch import ACCELERATE_CONFIGS, ACCELERATE_DIR, launch_plan
from tests.helpers import REPO_ROOT

INFRA = REPO_ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / "env.example"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-base-job-template.json"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; $$ escapes a dollar
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
PLACEHOLDER = "change-me"


def env_example() -> dict[str, str]:
    """NAME=value lines of infra/env.example."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: a set value, else the default; a missing required one is an error."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        found = env.get(name)
        empty = found is None or (found == "" and operator.startswith(":"))
        if operator.endswith("?") and empty:
            raise KeyError(f"{name}: {argument}")
        if operator.endswith("-") and empty:
            return argument
        return found or ""

    return VARIABLE.sub(value, text).replace("$$", "$")


def compose_validator() -> Any:
    """A validator for the compose spec's JSON schema, as check-jsonschema vendors it (``vendor.compose-spec``)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def schema_errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(document)]


def test_compose_file_validates_against_the_compose_spec_as_written_and_interpolated() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert schema_errors(yaml.safe_load(text)) == []
    resolved = yaml.safe_load(interpolate(text, env_example()))
    assert schema_errors(resolved) == []
    assert {"postgres", "minio", "buckets", "prefect-server", "mlflow", "worker", "worker-gpu"} <= set(
        resolved["services"]
    )
    mlflow = " ".join(resolved["services"]["mlflow"]["command"])
    assert '--backend-store-uri "postgresql://' in mlflow and '--registry-store-uri "postgresql://' in mlflow
    assert '--artifacts-destination "s3://' in mlflow
    gpu = resolved["services"]["worker-gpu"]
    assert gpu["build"]["args"] == {"VARIANT": "cuda"} and gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_schema_rejects_a_broken_compose_file() -> None:
    broken = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    broken["services"]["postgres"]["restart"] = ["always"]
    broken["services"]["minio"]["unknown_key"] = True
    assert len(schema_errors(broken)) == 2


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = {match.group(1) for match in VARIABLE.finditer(COMPOSE.read_text(encoding="utf-8"))}
    documented = set(env_example())
    assert sorted(used - documented) == [], "document these in infra/env.example"
    assert sorted(documented - used) == [], "infra/env.example documents variables compose.yaml does not read"


def test_credentials_are_required_from_the_environment_and_never_written_in_the_repository() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for match in VARIABLE.finditer(text):
        if SECRET_NAME.search(match.group(1)) and match.group(1) != "HF_TOKEN":
            assert match.group(2) == ":?", f"{match.group(0)}: a credential must be required, with no default"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(text, {k: v for k, v in env_example().items() if k != "POSTGRES_PASSWORD"})
    for name, value in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "" or PLACEHOLDER in value, f"infra/env.example: {name} must hold a placeholder"
    # every environment entry of every service whose name looks secret takes its value from a variable
    for service, spec in yaml.safe_load(text)["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert VARIABLE.fullmatch(str(value)), f"{service}.environment.{name} is written out: {value!r}"


def test_the_team_env_file_is_not_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--", "infra/.env", ".env"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


def test_the_image_installs_the_projects_pins() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    constraints = (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8")
    (torch_pin,) = re.findall(r"^torch==(\S+)", constraints, re.MULTILINE)
    assert f"ARG TORCH_VERSION={torch_pin}\n" in dockerfile
    assert 'pip install -c constraints.txt -e ".${extras}"' in dockerfile  # prefect, mlflow, ... as pyproject pins
    assert "pip install --no-deps -r requirements-assets.txt" in dockerfile
    team = (INFRA / "docker" / "requirements-team.txt").read_text(encoding="utf-8")
    requirements = [line for line in team.splitlines() if line and not line.startswith("#")]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.]*", r) for r in requirements)


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    sources = [source for line in dockerfile.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]]
    kept = [
        line[1:].removesuffix("/**")
        for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert sources
    for source in sources:
        assert source in kept, f"{source} is copied but left out of the build context"
        assert (REPO_ROOT / source).exists(), source


@pytest.mark.parametrize("script", ["worker-entrypoint.sh", "postgres-init.sh"])
def test_stack_shell_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(INFRA / "docker" / script)], check=True)


def test_accelerate_configs_load_with_accelerates_own_loader() -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    assert sorted(p.stem for p in (REPO_ROOT / ACCELERATE_DIR).glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)
    ddp = load_config_from_file(str(REPO_ROOT / ACCELERATE_DIR / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and not ddp.deepspeed_config
    for name, stage in (("zero2", 2), ("zero3", 3)):
        config = load_config_from_file(str(REPO_ROOT / ACCELERATE_DIR / f"{name}.yaml"))
        assert config.distributed_type == DistributedType.DEEPSPEED
        assert config.deepspeed_config["zero_stage"] == stage
        assert config.deepspeed_config["offload_optimizer_device"] == "none"
        assert config.deepspeed_config["zero3_init_flag"] is (stage == 3)
    assert load_config_from_file(str(REPO_ROOT / ACCELERATE_DIR / "zero3.yaml")).deepspeed_config[
        "zero3_save_16bit_model"
    ]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A params file whose training settings differ from the defaults, so the commands must have read them."""
    base = tmp_path / "base.yaml"
    base.write_text(render_params(Params()), encoding="utf-8")
    changed = load_params(
        base,
        {
            "adrpo.model_name_or_path": "/models/writer-7b",
            "adrpo.bf16": True,
            "memagent.train.model_name_or_path": "/models/reader",
            "model.max_context_tokens": 8192,
        },
    )
    file = tmp_path / "params.yaml"
    file.write_text(render_params(changed), encoding="utf-8")
    return file


def accelerate_view(argv: tuple[str, ...]) -> Any:
    """How ``accelerate launch`` reads ``argv``: its CLI merged with the config file the command names."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert argv[:2] == ("accelerate", "launch")
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(list(argv[2:])))
    return args


def test_adrpo_with_a_vllm_server_golden(params_file: Path) -> None:
    params = load_params(params_file, {"adrpo.max_steps": 50})
    plan = launch_plan(
        params, "adrpo", "zero2", gpus=8, vllm_gpus=2, overrides=["adrpo.max_steps=50"], params_file=str(params_file)
    )
    assert plan.server is not None
    assert plan.server.argv == (
        "trl", "vllm-serve", "--model", "/models/writer-7b", "--tensor-parallel-size", "1",
        "--data-parallel-size", "2", "--host", "127.0.0.1", "--port", "8000", "--dtype", "bfloat16",
        "--max-model-len", "8192",
    )  # fmt: skip
    assert plan.server.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert plan.trainer.argv == (
        "accelerate", "launch", "--config_file", "infra/accelerate/zero2.yaml", "--num_processes", "6",
        "--mixed_precision", "bf16", "-m", "components.cli", "--params", str(params_file), "stage", "adrpo",
        "-S", "adrpo.max_steps=50", "-S", "adrpo.use_vllm=true", "-S", "adrpo.vllm_mode=server",
        "-S", "adrpo.vllm_server_base_url=http://127.0.0.1:8000",
    )  # fmt: skip
    assert plan.trainer.env == {"CUDA_VISIBLE_DEVICES": "2,3,4,5,6,7"}
    assert plan.server.shell().startswith("CUDA_VISIBLE_DEVICES=0,1 trl vllm-serve --model ")


@pytest.mark.parametrize(("config", "zero_stage"), [("ddp", None), ("zero2", 2), ("zero3", 3)])
def test_the_trainer_command_reaches_accelerate_and_the_stage_as_intended(
    params_file: Path, config: str, zero_stage: int | None
) -> None:
    from components.cli import build_parser, overrides

    params = load_params(params_file)
    plan = launch_plan(params, "adrpo", config, gpus=4, vllm_gpus=1, vllm_port=8123, params_file=str(params_file))
    seen = accelerate_view(plan.trainer.argv)
    assert (seen.num_processes, seen.mixed_precision, seen.use_deepspeed) == (3, "bf16", zero_stage is not None)
    assert getattr(seen, "zero_stage", None) == zero_stage
    assert seen.module and seen.training_script == "components.cli"
    stage_args = build_parser().parse_args(seen.training_script_args)
    assert (stage_args.command, stage_args.name, stage_args.params) == ("stage", "adrpo", str(params_file))
    loaded = load_params(stage_args.params, overrides(stage_args.set)).adrpo
    assert (loaded.use_vllm, loaded.vllm_mode, loaded.vllm_server_base_url) == (True, "server", plan.server_url)
    assert plan.server_url == "http://127.0.0.1:8123" and "8123" in plan.server.argv  # type: ignore[union-attr]


def test_without_a_vllm_server_the_stage_keeps_its_own_generation_settings(params_file: Path) -> None:
    params = load_params(params_file)
    plan = launch_plan(params, "memagent_train", "ddp", gpus=2, params_file=str(params_file))
    assert plan.server is None and plan.commands() == [plan.trainer]
    assert "-S" not in plan.trainer.argv
    assert accelerate_view(plan.trainer.argv).mixed_precision == "no"  # memagent.train.bf16 is false here
    assert plan.trainer.env == {"CUDA_VISIBLE_DEVICES": "0,1"}


def test_memagent_with_a_vllm_server_trains_on_one_process(params_file: Path) -> None:
    plan = launch_plan(load_params(params_file), "memagent_train", "zero3", gpus=2, vllm_gpus=1)
    assert plan.server is not None and plan.server.argv[3] == "/models/reader"
    assert "memagent.train.vllm_mode=server" in plan.trainer.argv
    assert accelerate_view(plan.trainer.argv).num_processes == 1


@pytest.mark.parametrize(
    ("stage", "config", "gpus", "vllm_gpus", "tensor_parallel", "message"),
    [
        ("memagent_train", "zero3", 4, 0, 1, "cannot use zero3"),
        ("memagent_train", "ddp", 4, 1, 1, "cannot use a vLLM server"),
        ("adrpo", "zero2", 2, 2, 1, "leaves no GPU to train on"),
        ("adrpo", "zero2", 4, 3, 2, "must divide"),
        ("adrpo", "fsdp", 4, 0, 1, "is not one of ddp, zero2, zero3"),
        ("sft", "ddp", 4, 0, 1, "not a GRPO training stage"),
    ],
)
def test_impossible_launches_are_refused_with_the_reason(
    stage: str, config: str, gpus: int, vllm_gpus: int, tensor_parallel: int, message: str
) -> None:
    with pytest.raises(MemforgeError, match=message):
        launch_plan(Params(), stage, config, gpus=gpus, vllm_gpus=vllm_gpus, vllm_tensor_parallel=tensor_parallel)


def test_memforge_launch_prints_the_plans_commands(params_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from components.cli import main

    argv = ["--params", str(params_file), "launch", "adrpo", "--config", "zero3", "--gpus", "4", "--vllm-gpus", "1"]
    assert main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    plan = launch_plan(load_params(params_file), "adrpo", "zero3", gpus=4, vllm_gpus=1, params_file=str(params_file))
    assert printed == [c.shell() for c in plan.commands()]


def render_k8s_job(**values: Any) -> dict[str, Any]:
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text(encoding="utf-8"))
    properties = template["variables"]["properties"]
    defaults = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    return apply_values(template["job_configuration"], {**defaults, "command": "prefect flow-run execute", **values})


def test_kubernetes_base_job_template_is_a_valid_work_pool_template_requesting_gpus() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = json.loads(K8S_TEMPLATE.read_text(encoding="utf-8"))
    WorkPoolCreate(name="memforge-gpu-k8s", type="kubernetes", base_job_template=template)  # Prefect's own check
    for gpus in (1, 4):
        pod = render_k8s_job(gpus=gpus)["job_manifest"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert container["args"] == "prefect flow-run execute"
