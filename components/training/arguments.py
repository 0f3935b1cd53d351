"""One builder of TRL trainer arguments for the three trainers (sft, adrpo, memagent_train).

``trainer_arguments`` sets what every trainer shares, the same way (``shared_arguments``):

* precision: bf16 on a CUDA GPU when the section asks for it, float32 otherwise; ``use_cpu`` when there is no GPU;
* activation checkpointing, non-reentrant (``use_reentrant=False``), on CPU too: activations are recomputed in the
  backward pass instead of kept (without it 8 ADRPO rollouts of 4K-token prompts took 23 GB, and an sft run on CPU
  was killed for memory);
* logging every ``logging_steps`` steps to no reporter (the stages log to MLflow through ``callbacks``), with a
  non-finite loss shown rather than filtered out, so that divergence fails the stage;
* checkpoints in ``output_dir`` every ``save_steps`` steps (0 = none), the latest ``keep_checkpoints`` of them
  (default 1; None keeps every one);
* the seed, for the weights and the data order (``data_seed``); no dataloader worker processes.

``grpo_arguments`` adds what the two GRPO trainers share (the ``GRPOSettings`` fields: loss, sampling, vLLM, one
generation batch per optimizer step). Each trainer passes only its own fields on top; one that would override a
shared field is a programming error (``TypeError``). torch and trl are imported inside the functions.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from components.config import GRPOSettings
from components.errors import MemforgeError

T = TypeVar("T")
_UNUSED_SAVE_STEPS = 500  # TrainingArguments' default, passed when no checkpoint is saved


def cuda_available() -> bool:
    """Whether training runs on a CUDA GPU."""
    import torch

    return bool(torch.cuda.is_available())


def shared_arguments(
    *,
    output_dir: str | os.PathLike[str],
    seed: int,
    bf16: bool,
    logging_steps: int,
    save_steps: int,
    keep_checkpoints: int | None = 1,
    cuda: bool,
) -> dict[str, Any]:
    """The ``TrainingArguments`` fields every memforge trainer sets, for a machine with (``cuda``) or without a GPU."""
    return {
        "output_dir": str(output_dir),
        "bf16": bf16 and cuda,
        "fp16": False,
        "use_cpu": not cuda,
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "logging_steps": logging_steps,
        "logging_nan_inf_filter": False,
        "report_to": "none",
        "save_strategy": "steps" if save_steps > 0 else "no",
        "save_steps": save_steps if save_steps > 0 else _UNUSED_SAVE_STEPS,
        "save_total_limit": keep_checkpoints,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def trainer_arguments(
    config_class: type[T],
    *,
    output_dir: str | os.PathLike[str],
    seed: int,
    bf16: bool,
    logging_steps: int = 1,
    save_steps: int = 0,
    keep_checkpoints: int | None = 1,
    **own: Any,
) -> T:
    """``config_class`` (``trl.SFTConfig``, ``trl.GRPOConfig``) with ``shared_arguments`` plus the trainer's ``own``."""
    shared = shared_arguments(
        output_dir=output_dir,
        seed=seed,
        bf16=bf16,
        logging_steps=logging_steps,
        save_steps=save_steps,
        keep_checkpoints=keep_checkpoints,
        cuda=cuda_available(),
    )
    clash = sorted(set(shared) & set(own))
    if clash:
        raise TypeError(f"{config_class.__name__}: {clash} are shared settings, set by trainer_arguments")
    return config_class(**shared, **own)


def vllm_arguments(cfg: GRPOSettings, key: str, *, cuda: bool) -> dict[str, Any]:
    """``GRPOConfig``'s vLLM fields for section ``key`` (``adrpo``, ``memagent.train``): the mode, plus the server URL
    (server) or the GPU memory share (colocate). An empty ``vllm_server_base_url`` leaves TRL's default server
    (``trl vllm-serve`` on port 8000 of this machine). vLLM runs on CUDA only: ``use_vllm`` without a GPU fails."""
    if not cfg.use_vllm:
        return {"use_vllm": False}
    if not cuda:
        raise MemforgeError(f"{key}.use_vllm needs a CUDA GPU (vLLM is CUDA-only); set {key}.use_vllm: false on CPU")
    if cfg.vllm_mode == "server":
        url = cfg.vllm_server_base_url
        return {"use_vllm": True, "vllm_mode": "server", **({"vllm_server_base_url": url} if url else {})}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization}


def grpo_arguments(cfg: GRPOSettings, key: str, *, keep_checkpoints: int | None = 1, **own: Any) -> Any:
    """``trl.GRPOConfig`` for section ``key``: the shared settings, ``cfg``'s GRPO and vLLM fields, checkpoints in
    ``cfg.checkpoint_dir`` every ``cfg.save_steps`` steps, one generation batch per optimizer step (generated once,
    used once), every dataset column kept (the reward functions and hooks read them), plus the trainer's ``own``."""
    from trl import GRPOConfig

    return trainer_arguments(
        GRPOConfig,
        output_dir=cfg.checkpoint_dir,
        seed=cfg.seed,
        bf16=cfg.bf16,
        save_steps=cfg.save_steps,
        keep_checkpoints=keep_checkpoints,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_steps=cfg.max_steps,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        remove_unused_columns=False,
        log_completions=False,
        **vllm_arguments(cfg, key, cuda=cuda_available()),
        **own,
    )
