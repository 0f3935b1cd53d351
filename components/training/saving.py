"""The model folders a training stage reads and writes: the model to train, loaded with float32 master weights
(``load_trainable``), and the one way a trained model is saved (``save_trained``): in the base model's dtype,
checked by a reload and a generation, with a model card and ordinary permissions, replacing the output folder whole
or not at all."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.errors import ModelLoadError
from components.training.outcome import TrainingOutcome


def load_trainable(folder: str | os.PathLike[str]) -> tuple[Any, Any, str]:
    """The model in ``folder`` with float32 master weights, its tokenizer (chat template required, pad token set) and
    the dtype its weights were saved in (the trained model is saved in it too)."""
    from components.llm.model_assets import load_model_folder, normalise_tokenizer

    path = Path(folder)
    saved_dtype = saved_dtype_of(path)
    model, tokenizer = load_model_folder(path, "float32")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"{path}: the tokenizer has no chat template; prepare the model with prepare_model")
    normalise_tokenizer(model, tokenizer)
    return model, tokenizer, saved_dtype


def saved_dtype_of(folder: Path) -> str:
    """The dtype ``folder``'s weights were saved in (a trained model is saved the same way)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"  # load_model_folder reports the real problem
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def trained_model_card(
    kind: str,
    base: Path,
    folder: Path,
    tokenizer: Any,
    *,
    output_dir: str,
    parameter_count: int,
    dtype: str,
    fallback_context_tokens: int,
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """A ``memforge_model.json`` that ``read_model_card`` accepts (prepared-model fields) plus a ``kind`` section.

    ``folder`` is the staged model (read for its config and size), ``output_dir`` where it will live. The context
    window is the base model's card's, or ``fallback_context_tokens`` when the base has no card; so are the training
    scope and its note (a model trained from a smoke run's base is a smoke run too).
    """
    import transformers

    from components.llm.model_assets import MODEL_CARD_VERSION, read_model_card, weights_digests

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    try:
        base_card = read_model_card(base)
        max_context, scope, note = base_card.max_context_tokens, base_card.training_scope, base_card.note
    except ModelLoadError:
        max_context, scope, note = fallback_context_tokens, "unknown", ""
    architectures = config.get("architectures") or [""]
    return {
        "output_dir": output_dir,
        "source": f"{kind} of {base}",
        "kind": kind,
        "gguf_file": None,
        "revision": None,
        "source_sha256": None,
        "architecture": str(architectures[0]),
        "model_type": str(config.get("model_type", "")),
        "parameter_count": parameter_count,
        "dtype": dtype,
        "vocab_size": int(config.get("vocab_size") or 0),
        "tokenizer_size": len(tokenizer),
        "max_context_tokens": max_context,
        "max_position_embeddings": config.get("max_position_embeddings"),
        "chat_template_present": bool(getattr(tokenizer, "chat_template", None)),
        "chat_template_added": False,
        "pad_token": str(tokenizer.pad_token),
        "pad_token_added": False,
        "eos_token": str(tokenizer.eos_token),
        "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "transformers_version": transformers.__version__,
        "weights_md5": weights_digests(folder),
        "training_scope": scope,
        "note": note,
        "format_version": MODEL_CARD_VERSION,
        kind: dict(summary),
    }


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole weights of ``trainer``'s model where its processes hold shards of them (DeepSpeed ZeRO-3: accelerate
    gathers a 16-bit copy into the main process; this is a collective, so every process calls it), for
    ``save_trained``; None where the model holds its weights whole (one process, DDP, ZeRO-2), as transformers'
    ``Trainer.save_model`` decides."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def save_trained(
    model: Any,
    tokenizer: Any,
    outcome: TrainingOutcome,
    *,
    fallback_context_tokens: int,
    state_dict: Mapping[str, Any] | None = None,
) -> None:
    """Save a trained ``model`` and its ``tokenizer`` into ``outcome.output_dir``, whole or not at all.

    The model is written in ``outcome.saved_dtype`` (the base model's) with its KV cache on, into a temp sibling of
    the output folder, which ``finish_trained_folder`` checks and completes before it replaces the folder. Callers
    drop their trainer first, so that its optimizer state is freed before the saved copy is reloaded. In a
    multi-process launch every process calls it, with the weights from ``gathered_state_dict`` (taken before the
    trainer is dropped); the main process writes the folder and the others wait until it is in place.
    """
    from components.distributed import is_main_process, wait_for_everyone

    if is_main_process():
        _write_trained(model, tokenizer, outcome, fallback_context_tokens=fallback_context_tokens, weights=state_dict)
    wait_for_everyone()


def _write_trained(
    model: Any,
    tokenizer: Any,
    outcome: TrainingOutcome,
    *,
    fallback_context_tokens: int,
    weights: Mapping[str, Any] | None,
) -> None:
    import torch

    from components.io import atomic_directory

    dtype = getattr(torch, outcome.saved_dtype)
    model.config.use_cache = True
    model = model.to(dtype)
    with atomic_directory(outcome.output_dir) as staging:
        if weights is None:
            model.save_pretrained(staging, safe_serialization=True)
        else:
            cast = {name: tensor.to(dtype) for name, tensor in weights.items()}
            model.save_pretrained(staging, state_dict=cast, safe_serialization=True)
            del cast
        tokenizer.save_pretrained(staging)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        finish_trained_folder(
            staging,
            tokenizer,
            kind=outcome.kind,
            base=Path(outcome.base_model),
            final_dir=outcome.output_dir,
            dtype=outcome.saved_dtype,
            parameter_count=outcome.total_params,
            fallback_context_tokens=fallback_context_tokens,
            summary=outcome.summary(),
        )


def finish_trained_folder(
    staging: Path,
    tokenizer: Any,
    *,
    kind: str,
    base: Path,
    final_dir: str,
    dtype: str,
    parameter_count: int,
    fallback_context_tokens: int,
    summary: Mapping[str, Any],
) -> None:
    """Check a staged trained model (saved weights and tokenizer) and complete it: reload it with plain
    ``from_pretrained`` and generate (``verify_prepared_folder``), write its ``memforge_model.json``
    (``trained_model_card``); ``atomic_directory`` gives it the user's umask. A failed
    check leaves ``final_dir`` untouched."""
    from components.io import write_json_atomic
    from components.llm.model_assets import MODEL_CARD_FILE, verify_prepared_folder

    verify_prepared_folder(staging, dtype, final_dir=final_dir)
    card = trained_model_card(
        kind,
        base,
        staging,
        tokenizer,
        output_dir=final_dir,
        parameter_count=parameter_count,
        dtype=dtype,
        fallback_context_tokens=fallback_context_tokens,
        summary=summary,
    )
    write_json_atomic(staging / MODEL_CARD_FILE, card)
