"""Multi-GPU launch commands for the two GRPO training stages, generated from params.

The single-machine path is ``memforge stage adrpo`` (what ``dvc.yaml`` runs). Scaled out, the same stage runs under
``accelerate launch`` with one of the configs in ``infra/accelerate/`` (``ddp``, ``zero2``, ``zero3``), and its
rollouts may come from a ``trl vllm-serve`` process on GPUs of its own. ``launch_plan`` writes both commands from
the params the stage itself reads, so they cannot drift from it:

* the vLLM server serves the stage's ``model_name_or_path`` with the stage's precision (``bf16``) and the model's
  window (``model.max_context_tokens``), on the first ``vllm_gpus`` GPUs;
* the trainer runs ``python -m components.cli stage NAME`` (the command ``dvc.yaml`` runs) on the other GPUs, one
  process each, with ``--mixed_precision`` from the stage's ``bf16`` (DeepSpeed refuses a config whose precision
  differs from the trainer's) and, when a server is launched, ``-S`` overrides pointing the stage at it
  (``use_vllm``, ``vllm_mode=server``, ``vllm_server_base_url``). ``params.yaml`` is never edited.

``memagent_train`` reads each process's own questions, so its processes make different numbers of generation calls;
the paths that need equal counts (a vLLM server, ZeRO-3) are refused for it above one training process.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.config import DEFAULT_PARAMS_FILE, GRPOSettings, Params
from components.errors import MemforgeError

# training stage -> its params section (a GRPOSettings)
STAGE_SECTIONS: Mapping[str, str] = {"adrpo": "adrpo", "memagent_train": "memagent.train"}
ACCELERATE_DIR = "infra/accelerate"
ACCELERATE_CONFIGS = ("ddp", "zero2", "zero3")
# stages whose processes make different numbers of generation calls (components.training.memagent, "Limits")
UNEQUAL_GENERATION_STAGES = frozenset({"memagent_train"})
COLLECTIVE_CONFIGS = frozenset({"zero3"})  # ZeRO-3 gathers the sharded weights at every generation call
DEFAULT_VLLM_HOST = "127.0.0.1"
DEFAULT_VLLM_PORT = 8000


@dataclass(frozen=True)
class Command:
    """One process to start: its arguments and the environment variables set for it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as one shell line: ``VAR=value ... argv``, quoted."""
        assignments = [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


@dataclass(frozen=True)
class LaunchPlan:
    """A scaled-out run of a training stage: the vLLM server (None when there is none) and the trainer."""

    stage: str
    config: str
    trainer: Command
    server: Command | None = None
    server_url: str = ""

    def commands(self) -> list[Command]:
        """The commands in start order: the server (when there is one) first."""
        return [self.server, self.trainer] if self.server else [self.trainer]


def grpo_section(params: Params, stage: str) -> GRPOSettings:
    """The params section of training ``stage`` (``adrpo`` -> ``params.adrpo``, ``memagent_train`` ->
    ``params.memagent.train``)."""
    if stage not in STAGE_SECTIONS:
        raise MemforgeError(f"launch: stage {stage!r} is not a GRPO training stage; choose {', '.join(STAGE_SECTIONS)}")
    section: Any = params
    for part in STAGE_SECTIONS[stage].split("."):
        section = getattr(section, part)
    return section


def accelerate_config_path(config: str) -> str:
    """``infra/accelerate/<config>.yaml`` (relative to the repository root, where stages run)."""
    if config not in ACCELERATE_CONFIGS:
        raise MemforgeError(f"launch: --config {config!r} is not one of {', '.join(ACCELERATE_CONFIGS)}")
    return f"{ACCELERATE_DIR}/{config}.yaml"


def gpu_list(first: int, count: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` for ``count`` GPUs from index ``first``: ``"1,2,3"``."""
    return ",".join(str(index) for index in range(first, first + count))


def vllm_server_command(
    params: Params, stage: str, *, gpus: int, tensor_parallel: int, host: str, port: int
) -> Command:
    """``trl vllm-serve`` for ``stage``'s model on GPUs ``0..gpus-1``: ``tensor_parallel`` GPUs per model copy, the
    rest data-parallel copies."""
    cfg = grpo_section(params, stage)
    if tensor_parallel < 1 or gpus % tensor_parallel:
        raise MemforgeError(f"launch: --vllm-tensor-parallel {tensor_parallel} must divide --vllm-gpus {gpus}")
    argv = (
        "trl",
        "vllm-serve",
        "--model",
        cfg.model_name_or_path,
        "--tensor-parallel-size",
        str(tensor_parallel),
        "--data-parallel-size",
        str(gpus // tensor_parallel),
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        "bfloat16" if cfg.bf16 else "auto",
        "--max-model-len",
        str(params.model.max_context_tokens),
    )
    return Command(argv=argv, env={"CUDA_VISIBLE_DEVICES": gpu_list(0, gpus)})


def server_overrides(stage: str, url: str) -> list[str]:
    """The ``-S`` overrides that point ``stage`` at a running ``trl vllm-serve``."""
    key = STAGE_SECTIONS[stage]
    return [f"{key}.use_vllm=true", f"{key}.vllm_mode=server", f"{key}.vllm_server_base_url={url}"]


def trainer_command(
    params: Params,
    stage: str,
    config: str,
    *,
    first_gpu: int,
    processes: int,
    overrides: Sequence[str] = (),
    params_file: str = DEFAULT_PARAMS_FILE,
) -> Command:
    """``accelerate launch`` of ``memforge stage NAME`` (as ``components.cli``) with ``processes`` processes on GPUs
    from ``first_gpu``; ``overrides`` are ``-S key=value`` pairs passed to the stage."""
    cfg = grpo_section(params, stage)
    argv = (
        "accelerate",
        "launch",
        "--config_file",
        accelerate_config_path(config),
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "bf16" if cfg.bf16 else "no",
        "-m",
        "components.cli",
        "--params",
        params_file,
        "stage",
        stage,
        *(arg for pair in overrides for arg in ("-S", pair)),
    )
    return Command(argv=argv, env={"CUDA_VISIBLE_DEVICES": gpu_list(first_gpu, processes)})


def launch_plan(
    params: Params,
    stage: str,
    config: str,
    *,
    gpus: int,
    vllm_gpus: int = 0,
    vllm_tensor_parallel: int = 1,
    vllm_host: str = DEFAULT_VLLM_HOST,
    vllm_port: int = DEFAULT_VLLM_PORT,
    overrides: Sequence[str] = (),
    params_file: str = DEFAULT_PARAMS_FILE,
) -> LaunchPlan:
    """The commands that train ``stage`` on ``gpus`` GPUs of one machine with accelerate ``config``: the first
    ``vllm_gpus`` serve rollouts (``trl vllm-serve``; none when 0), the others train, one process each.

    ``params`` is what the stage will load (``params_file`` with ``overrides`` applied); ``overrides`` are passed on
    to the stage before the server ones. Without a server the stage generates as its params say (transformers, or
    vLLM colocated or at ``vllm_server_base_url``)."""
    cfg = grpo_section(params, stage)
    accelerate_config_path(config)
    if vllm_gpus < 0:
        raise MemforgeError(f"launch: --vllm-gpus must be 0 or more, got {vllm_gpus}")
    processes = gpus - vllm_gpus
    if processes < 1:
        raise MemforgeError(f"launch: --gpus {gpus} leaves no GPU to train on after --vllm-gpus {vllm_gpus}")
    uses_server = vllm_gpus > 0 or (cfg.use_vllm and cfg.vllm_mode == "server")
    if stage in UNEQUAL_GENERATION_STAGES and processes > 1 and (uses_server or config in COLLECTIVE_CONFIGS):
        raise MemforgeError(
            f"launch: {stage} on {processes} training processes cannot use "
            f"{'a vLLM server' if uses_server else config}: its processes read their own questions and make "
            "different numbers of generation calls; train it on one process, or with ddp/zero2 and no vLLM server"
        )
    if not vllm_gpus:
        trainer = trainer_command(
            params, stage, config, first_gpu=0, processes=processes, overrides=overrides, params_file=params_file
        )
        return LaunchPlan(stage=stage, config=config, trainer=trainer)
    url = f"http://{vllm_host}:{vllm_port}"
    server = vllm_server_command(
        params, stage, gpus=vllm_gpus, tensor_parallel=vllm_tensor_parallel, host=vllm_host, port=vllm_port
    )
    trainer = trainer_command(
        params,
        stage,
        config,
        first_gpu=vllm_gpus,
        processes=processes,
        overrides=[*overrides, *server_overrides(stage, url)],
        params_file=params_file,
    )
    return LaunchPlan(stage=stage, config=config, trainer=trainer, server=server, server_url=url)
