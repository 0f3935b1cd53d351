"""One builder of TRL arguments for the three trainers: the same precision, activation checkpointing, logging,
checkpoints and seed for sft, adrpo and memagent_train, one vLLM handling for the two GRPO trainers, and the GRPO
settings both GRPO sections inherit, checked when they are built."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest

from components.config import (
    ADRPOConfig,
    GRPOSettings,
    MemAgentTrainConfig,
    Params,
    ReaderConfig,
    SFTConfig,
    build_dataclass,
)
from components.errors import ConfigError, MemforgeError
from components.training import adrpo, memagent, sft
from components.training.arguments import cuda_available, shared_arguments, trainer_arguments, vllm_arguments

# What the one builder sets alike for every trainer (output_dir, save and log steps, seed vary with the section).
ALIKE = (
    "bf16",
    "fp16",
    "use_cpu",
    "activation_checkpointing",
    "activation_checkpointing_kwargs",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "logging_nan_inf_filter",
    "report_to",
    "dataloader_num_workers",
)


def three_trainer_arguments(tmp_path: Path, *, bf16: bool) -> dict[str, object]:
    """The TRL config objects the three trainers build for sections that all ask for bf16 (or none does)."""
    return {
        "sft": sft.trl_config(SFTConfig(bf16=bf16, seed=3), tmp_path / "scratch"),
        "adrpo": adrpo.grpo_args(ADRPOConfig(bf16=bf16, seed=3, checkpoint_dir=str(tmp_path / "adrpo"))),
        "memagent": memagent.grpo_args(
            MemAgentTrainConfig(bf16=bf16, seed=3, checkpoint_dir=str(tmp_path / "memagent")), ReaderConfig()
        ),
    }


# ---------------------------------------------------------------------------------------------
# the shared settings


@pytest.mark.parametrize("cuda", [False, True])
def test_shared_settings_on_cpu_and_gpu(cuda: bool) -> None:
    args = shared_arguments(output_dir="out", seed=9, bf16=True, logging_steps=2, save_steps=0, cuda=cuda)
    assert (args["bf16"], args["use_cpu"], args["fp16"]) == (cuda, not cuda, False)  # bf16: a GPU only
    assert args["activation_checkpointing"] is True  # on CPU as well
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert (args["report_to"], args["logging_steps"], args["logging_nan_inf_filter"]) == ("none", 2, False)
    assert (args["save_strategy"], args["save_total_limit"]) == ("no", 1)  # the latest checkpoint only, by default
    assert (args["seed"], args["data_seed"], args["dataloader_num_workers"]) == (9, 9, 0)
    every = shared_arguments(
        output_dir="out", seed=9, bf16=False, logging_steps=1, save_steps=5, keep_checkpoints=None, cuda=cuda
    )
    assert (every["save_strategy"], every["save_steps"], every["save_total_limit"], every["bf16"]) == (
        "steps",
        5,
        None,
        False,
    )


@pytest.mark.parametrize("bf16", [False, True])
def test_the_three_trainers_get_the_same_precision_checkpointing_and_logging(tmp_path: Path, bf16: bool) -> None:
    built = three_trainer_arguments(tmp_path, bf16=bf16)
    cuda = cuda_available()
    for name, args in built.items():
        assert args.activation_checkpointing is True, name  # sft used to switch it off on CPU
        assert args.activation_checkpointing_kwargs == {"use_reentrant": False}, name
        assert (args.bf16, args.use_cpu) == (bf16 and cuda, not cuda), name  # sft used to ask bf16 on CPU too
        assert (args.seed, args.data_seed, args.report_to) == (3, 3, []), name
    alike = {name: {key: getattr(args, key) for key in ALIKE} for name, args in built.items()}
    assert alike["sft"] == alike["adrpo"] == alike["memagent"]


def test_a_trainer_cannot_override_a_shared_setting(tmp_path: Path) -> None:
    from trl import SFTConfig as TRLSFTConfig

    with pytest.raises(TypeError, match="activation_checkpointing"):
        trainer_arguments(TRLSFTConfig, output_dir=tmp_path, seed=0, bf16=False, activation_checkpointing=False)


# ---------------------------------------------------------------------------------------------
# vLLM: one set of arguments, one check


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"use_vllm": False}, {"use_vllm": False}),
        (
            {"use_vllm": True, "vllm_gpu_memory_utilization": 0.5},
            {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.5},
        ),
        (
            {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu-1:8000"},
            {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu-1:8000"},
        ),
        ({"use_vllm": True, "vllm_mode": "server"}, {"use_vllm": True, "vllm_mode": "server"}),  # TRL's default URL
    ],
)
def test_both_grpo_sections_get_the_same_vllm_arguments(settings: dict, expected: dict) -> None:
    from trl import GRPOConfig

    for key, section in (("adrpo", ADRPOConfig), ("memagent.train", MemAgentTrainConfig)):
        assert vllm_arguments(section(**settings), key, cuda=True) == expected
    assert set(expected) <= {f.name for f in fields(GRPOConfig)}  # the names exist in the pinned TRL


def test_vllm_without_a_gpu_fails_naming_the_section() -> None:
    for key, section in (("adrpo", ADRPOConfig), ("memagent.train", MemAgentTrainConfig)):
        with pytest.raises(MemforgeError, match=rf"^{key}\.use_vllm needs a CUDA GPU"):
            vllm_arguments(section(use_vllm=True), key, cuda=False)


@pytest.mark.gpu
def test_on_a_gpu_the_trainers_train_in_bf16_and_pass_vllm_on(tmp_path: Path) -> None:
    built = three_trainer_arguments(tmp_path, bf16=True)
    assert all(args.bf16 and not args.use_cpu for args in built.values())
    reader = ReaderConfig()
    colocate = {"use_vllm": True, "vllm_gpu_memory_utilization": 0.25}
    for args in (
        adrpo.grpo_args(ADRPOConfig(checkpoint_dir=str(tmp_path / "a"), **colocate)),
        memagent.grpo_args(MemAgentTrainConfig(checkpoint_dir=str(tmp_path / "m"), **colocate), reader),
    ):
        assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.25)
    server = MemAgentTrainConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://gpu-1:8000")
    args = memagent.grpo_args(replace(server, checkpoint_dir=str(tmp_path / "s")), reader)
    assert (args.vllm_mode, args.vllm_server_base_url) == ("server", "http://gpu-1:8000")
    assert args.vllm_importance_sampling_correction is False  # MemAgent's hook does not pass vLLM's log-probs on


# ---------------------------------------------------------------------------------------------
# the GRPO settings: written once, checked when built


def test_both_grpo_sections_inherit_the_grpo_settings_and_their_help() -> None:
    shared = {f.name: f.metadata["help"] for f in fields(GRPOSettings)}
    for section in (ADRPOConfig, MemAgentTrainConfig):
        assert issubclass(section, GRPOSettings)
        own = {f.name: f.metadata["help"] for f in fields(section)}
        assert {name: own[name] for name in shared} == shared  # one help text per shared key
    # the section defaults that differ
    assert (ADRPOConfig().model_name_or_path, MemAgentTrainConfig().model_name_or_path) == ("models/sft", "models/base")
    assert (ADRPOConfig().beta, MemAgentTrainConfig().beta) == (0.0, 1e-3)
    assert (ADRPOConfig().checkpoint_dir, MemAgentTrainConfig().checkpoint_dir) == (
        "checkpoints/adrpo",
        "checkpoints/memagent",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("vllm_gpu_memory_utilization", 1.5, "must be in (0, 1], got 1.5"),
        ("vllm_gpu_memory_utilization", 0.0, "must be in (0, 1], got 0.0"),
        ("num_generations", 1, "must be >= 2, got 1"),
        ("temperature", 0.0, "must be > 0, got 0.0"),
        ("top_p", 0.0, "must be in (0, 1], got 0.0"),
        ("epsilon", 0.0, "must be > 0, got 0.0"),
        ("beta", -0.1, "must be >= 0, got -0.1"),
        ("learning_rate", -1e-6, "must be >= 0, got -1e-06"),
        ("max_steps", 0, "must be >= 1, got 0"),
        ("save_steps", -1, "must be >= 0, got -1"),
        ("seed", -1, "must be in [0, 4294967295], got -1"),
        ("vllm_server_base_url", "gpu-1:8000", "must be empty or start with http:// or https://, got 'gpu-1:8000'"),
    ],
)
def test_bad_grpo_settings_name_the_key_in_either_section(key: str, value: object, message: str) -> None:
    for dotted, raw in (("adrpo", {"adrpo": {key: value}}), ("memagent.train", {"memagent": {"train": {key: value}}})):
        with pytest.raises(ConfigError) as info:
            build_dataclass(Params, raw)
        assert str(info.value) == f"{dotted}.{key}: {message}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"adrpo": {"sessions_per_batch": 0}}, "adrpo.sessions_per_batch: must be >= 1, got 0"),
        ({"adrpo": {"length_penalty_lambda": 1.5}}, "adrpo.length_penalty_lambda: must be in [0, 1], got 1.5"),
        (
            {"adrpo": {"core_penalty_tokens": [400, 150]}},
            "adrpo.core_penalty_tokens: must be two numbers with 0 <= low < high, got [400, 150]",
        ),
        (
            {"adrpo": {"length_ratio_free": [0.0, 1.3]}},
            "adrpo.length_ratio_free: must be two numbers with 0 < low < high, got [0.0, 1.3]",
        ),
        ({"adrpo": {"attribution_alpha": 0.5}}, "adrpo.attribution_alpha: must be >= 1, got 0.5"),
        ({"adrpo": {"splits": []}}, "adrpo.splits: must list at least one value"),
        ({"memagent": {"train": {"questions_per_step": 0}}}, "memagent.train.questions_per_step: must be >= 1, got 0"),
        ({"memagent": {"train": {"log_trajectories": -1}}}, "memagent.train.log_trajectories: must be >= 0, got -1"),
    ],
)
def test_bad_section_settings_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_dataclass(Params, raw)
    assert str(info.value) == message


def test_a_zero_learning_rate_is_allowed() -> None:
    """A frozen policy still steps the optimizer: the ADRPO step benchmark compares step times with it."""
    assert build_dataclass(Params, {"adrpo": {"learning_rate": 0.0}}).adrpo.learning_rate == 0.0
