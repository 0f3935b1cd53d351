"""The sft stage: trajectory examples, completion-only masking, full and LoRA fine-tuning, atomic output, MLflow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import (
    BackendConfig,
    ExpertConfig,
    IngestConfig,
    MemoryConfig,
    ModelConfig,
    Params,
    SFTConfig,
    SourceConfig,
    SyntheticConfig,
)
from components.errors import InputError, MemforgeError
from components.llm.model_assets import MODEL_CARD_FILE, SMOKE_NOTE, load_model_folder, prepare_model, read_model_card
from components.memory.types import PARTS
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri
from components.training.arguments import shared_arguments
from components.training.sft import (
    CUT_MARKER,
    build_sft_dataset,
    build_sft_trainer,
    fit_example,
    fit_examples,
    train_sft,
    trajectory_examples,
    trl_config,
)
from tests.helpers import REPO_ROOT

OUTPUTS = {
    "core": '{"operation": "APPEND", "content": "The user lives in Berlin."}',
    "episodic": '[{"op": "insert", "content": "On 2024-03-02 the user moved to Berlin."}]',
    "semantic": '[{"op": "insert", "content": "The user is a nurse."}]',
    "procedural": "[]",
}


def _record(session: int, parts: tuple[str, ...] = PARTS, split: str = "sft") -> dict:
    """A trajectory record shaped like the expert stage's, with short prompts."""
    session_id = f"c1_s{session}"
    prompts = {
        part: [
            {"role": "system", "content": f"You maintain the {part.upper()} memory. Reply with JSON only."},
            {
                "role": "user",
                "content": f"Session {session_id}, date 2024-03-0{session + 1}.\n\nTranscript:\n<<<TRANSCRIPT\n"
                f"[{session_id}_t0] user: I moved to Berlin and I work at a hospital.\nTRANSCRIPT>>>\n\n"
                f"Write the {part} memory operations for this session as JSON.",
            },
        ]
        for part in PARTS
    }
    return {
        "conversation_id": "c1",
        "split": split,
        "session_index": session,
        "session_id": session_id,
        "prompts": {part: prompts[part] for part in parts},
        "outputs": {part: OUTPUTS[part] for part in parts},
        "teacher": "oracle",
    }


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def trajectories(tmp_path: Path) -> Path:
    """``sft.jsonl`` with 3 sessions; the second lacks the episodic output (it failed to parse)."""
    records = [_record(0), _record(1, parts=("core", "semantic", "procedural")), _record(2)]
    return _write_jsonl(tmp_path / "data" / "trajectories" / "sft.jsonl", records)


def _cfg(model: Path, tmp_path: Path, **overrides) -> SFTConfig:
    base = SFTConfig(
        model_name_or_path=str(model),
        max_steps=2,
        max_length=256,
        learning_rate=1e-3,
        per_device_batch_size=2,
        output_dir=str(tmp_path / "models" / "sft"),
        report_path=str(tmp_path / "reports" / "sft.json"),
        plot_path=str(tmp_path / "reports" / "sft_loss.json"),
    )
    return replace(base, **overrides)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# examples


def test_trajectory_examples_one_per_session_and_part_with_an_output(trajectories: Path) -> None:
    examples = trajectory_examples([trajectories])
    assert len(examples) == 4 + 3 + 4
    assert [e["part"] for e in examples[4:7]] == ["core", "semantic", "procedural"]  # episodic failed: skipped
    first = examples[0]
    assert first["prompt"] == _record(0)["prompts"]["core"]
    assert first["completion"] == [{"role": "assistant", "content": OUTPUTS["core"]}]
    assert (first["split"], first["conversation_id"], first["session_id"]) == ("sft", "c1", "c1_s0")
    dataset = build_sft_dataset(examples)
    assert len(dataset) == 11 and {"prompt", "completion"} <= set(dataset.column_names)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "expected a trajectory object"),
        ({"outputs": {"core": "x"}}, "needs 'prompts' and 'outputs'"),
        ({"prompts": {}, "outputs": {"core": "x"}}, "prompts.core"),
        ({"prompts": {"core": [{"role": "user"}]}, "outputs": {"core": "x"}}, "message 0"),
        ({"prompts": {}, "outputs": {"nope": "x"}}, "unknown memory part"),
    ],
)
def test_malformed_trajectory_names_file_and_line(tmp_path: Path, record: object, message: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [_record(0), record])
    with pytest.raises(InputError, match=message) as info:
        trajectory_examples([path])
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_long_prompt_is_cut_in_the_middle_and_the_completion_kept(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, tokenizer = load_model_folder(tiny_model_dir)
    example = trajectory_examples([_write_jsonl(tmp_path / "t.jsonl", [_record(0)])])[0]
    transcript = " ".join(f"[t{i}] user: I moved to Berlin in March and work at a hospital." for i in range(60))
    example["prompt"][1]["content"] = f"Session c1_s0 header.\n{transcript}\nWrite the core memory as JSON."
    fitted, status, before, after = fit_example(example, tokenizer, 256)
    assert status == "shortened" and before > 256 >= after
    content = fitted["prompt"][1]["content"]
    assert content.startswith("Session c1_s0") and content.endswith("Write the core memory as JSON.")
    assert CUT_MARKER in content
    assert fitted["prompt"][0] == example["prompt"][0]  # the shorter system message is untouched
    assert fitted["completion"] == example["completion"]
    short, status, *_ = fit_example(example, tokenizer, 4096)
    assert status == "fitted" and short["prompt"] == example["prompt"]
    _, report = fit_examples([example, example], tokenizer, 8)  # not even the completion fits
    assert report.over_length == 2


# ---------------------------------------------------------------------------------------------
# masking


def test_prompt_tokens_are_masked_in_a_collated_batch(tiny_model_dir: Path, trajectories: Path, tmp_path) -> None:
    model, tokenizer = load_model_folder(tiny_model_dir)
    examples = trajectory_examples([trajectories])
    trainer = build_sft_trainer(
        _cfg(tiny_model_dir, tmp_path), build_sft_dataset(examples), model, tokenizer, tmp_path / "scratch"
    )
    rows = [trainer.train_dataset[i] for i in range(2)]  # core (longer completion) and episodic: padding too
    batch = trainer.data_collator(rows)
    input_ids, labels = batch["input_ids"], batch["labels"]
    assert input_ids.shape == labels.shape and input_ids.shape[0] == 2
    for row, example, ids, row_labels in zip(rows, examples[:2], input_ids, labels, strict=True):
        prompt_ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        n = len(row["input_ids"])
        assert ids[: len(prompt_ids)].tolist() == list(prompt_ids)
        assert (row_labels[: len(prompt_ids)] == -100).all()  # the whole prompt, generation prompt included
        assert (row_labels[n:] == -100).all()  # padding
        trained = row_labels[len(prompt_ids) : n]
        assert (trained == ids[len(prompt_ids) : n]).all()  # every completion token is trained
        text = tokenizer.decode(trained.tolist(), skip_special_tokens=False)
        assert text.startswith(example["completion"][0]["content"] + tokenizer.eos_token)


def test_trl_config_comes_from_the_shared_builder_plus_sft_fields(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    cfg = _cfg(tiny_model_dir, tmp_path, bf16=True, logging_steps=3, seed=5, gradient_accumulation_steps=2)
    args = trl_config(cfg, tmp_path / "scratch")
    cuda = torch.cuda.is_available()
    shared = shared_arguments(
        output_dir=tmp_path / "scratch", seed=5, bf16=True, logging_steps=3, save_steps=0, cuda=cuda
    )
    assert {key: getattr(args, key) for key in shared} == {**shared, "report_to": []}  # TRL reads "none" as []
    # on CPU too: activation checkpointing (without it a CPU run was killed for memory), float32 unless on a GPU
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.bf16 is cuda and args.use_cpu is not cuda and not args.fp16
    assert args.save_strategy == "no" and args.seed == args.data_seed == 5 and args.logging_steps == 3
    # SFT's own fields
    assert args.completion_only_loss and args.max_length == 256 and args.truncation_mode == "keep_start"
    assert (args.learning_rate, args.max_steps, args.num_train_epochs) == (1e-3, 2, 1.0)
    assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 2
    # the schedule: TRL's defaults unless the profile sets the published recipe
    assert (args.lr_scheduler_type, args.warmup_steps, args.max_grad_norm) == ("linear", 0.0, 1.0)


def test_the_published_sft_recipe_reaches_the_trainer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """MemBuilder's SFT recipe (cosine, 10% warm-up, clipping at 0.1) becomes the trainer's schedule."""
    cfg = _cfg(tiny_model_dir, tmp_path, lr_scheduler="cosine", warmup_ratio=0.1, max_grad_norm=0.1)
    args = trl_config(cfg, tmp_path / "scratch")
    assert (str(args.lr_scheduler_type.value), args.warmup_steps, args.max_grad_norm) == ("cosine", 0.1, 0.1)
    assert args.get_warmup_steps(100) == 10


# ---------------------------------------------------------------------------------------------
# training


def _weight(folder: Path, name: str = "model.layers.0.self_attn.q_proj.weight"):
    model, _ = load_model_folder(folder)
    return dict(model.named_parameters())[name].detach().clone()


def test_full_fine_tune_changes_weights_and_saves_a_loadable_model(
    tiny_model_dir: Path, trajectories: Path, tmp_path: Path
) -> None:
    from components.llm.backends import create_backend

    cfg = _cfg(tiny_model_dir, tmp_path)
    logs: list[tuple[int, dict]] = []
    outcome = train_sft(
        cfg, build_sft_dataset(trajectory_examples([trajectories])), cfg.output_dir, lambda m, s: logs.append((s, m))
    )
    assert outcome.steps == 2 and outcome.examples == 11 and outcome.examples_trained == 11
    assert [point["step"] for point in outcome.loss_history] == [1, 2]
    assert all(math.isfinite(point["loss"]) and point["loss"] > 0 for point in outcome.loss_history)
    stepped = {step: m for step, m in logs if "loss" in m}
    assert set(stepped) == {1, 2} and {"learning_rate", "grad_norm"} <= set(stepped[1])
    assert outcome.trainable_params == outcome.total_params > 0 and not outcome.use_lora

    out = Path(cfg.output_dir)
    before, after = _weight(tiny_model_dir), _weight(out)
    assert not (before == after).all()
    card = json.loads((out / MODEL_CARD_FILE).read_text())
    assert card["sft"]["steps"] == 2 and card["sft"]["base_model"] == str(tiny_model_dir)
    assert card["sft"]["examples"] == 11 and card["sft"]["use_lora"] is False
    assert read_model_card(out).parameter_count == outcome.total_params  # later stages read the card
    assert card["training_scope"] == "unknown"  # the tiny base has no memforge card
    assert _leftovers(out.parent) == [] and not (out / ".trainer").exists()

    backend = create_backend(BackendConfig(model=str(out), max_new_tokens=4))
    (generations,) = backend.generate([[{"role": "user", "content": "Where does the user live?"}]])
    assert generations[0].completion_tokens >= 1
    assert backend.tokenizer.chat_template  # the chat template travelled with the model
    metrics, timings = outcome.metrics(), outcome.timings()
    assert metrics["examples_episodic"] == 2 and metrics["final_loss"] == outcome.loss_history[-1]["loss"]
    assert timings["seconds_per_step"] > 0 and timings["seconds"] > 0
    assert not set(timings) & set(metrics)  # wall-clock timings go to MLflow only, never into the DVC metrics


def test_lora_fine_tune_is_merged_and_loads_without_peft(
    tiny_model_dir: Path, trajectories: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    cfg = _cfg(tiny_model_dir, tmp_path, use_lora=True, lora_r=4, lora_alpha=8, learning_rate=5e-3)
    outcome = train_sft(cfg, build_sft_dataset(trajectory_examples([trajectories])), cfg.output_dir)
    out = Path(cfg.output_dir)
    assert outcome.use_lora and 0 < outcome.trainable_params < outcome.total_params
    assert not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert not [key for key in handle.keys() if "lora" in key]  # noqa: SIM118 - safe_open is not a dict
    assert outcome.total_params == _count(tiny_model_dir)
    assert not (_weight(tiny_model_dir) == _weight(out)).all()  # the adapter was merged into the weights
    assert json.loads((out / MODEL_CARD_FILE).read_text())["sft"]["use_lora"] is True
    code = (
        "import sys; from transformers import AutoModelForCausalLM;"
        f"AutoModelForCausalLM.from_pretrained({str(out)!r}); print('peft' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def _count(folder: Path) -> int:
    model, _ = load_model_folder(folder)
    return sum(p.numel() for p in model.parameters())


def test_no_examples_is_a_clear_error_and_leaves_no_output(tiny_model_dir: Path, tmp_path: Path, tracking_config):
    empty = _write_jsonl(tmp_path / "data" / "trajectories" / "sft.jsonl", [_record(0, parts=())])
    assert trajectory_examples([empty]) == []
    with pytest.raises(MemforgeError, match="no SFT examples"):
        build_sft_dataset([])
    params = Params(
        expert=ExpertConfig(output_dir=str(empty.parent)), sft=_cfg(tiny_model_dir, tmp_path), tracking=tracking_config
    )
    with pytest.raises(MemforgeError, match=r"no training examples: .*sft\.jsonl hold no teacher outputs"):
        run_stage("sft", params)
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    (run,) = client.search_runs([client.get_experiment_by_name(tracking_config.experiment).experiment_id])
    assert run.info.status == "FAILED" and "no training examples" in run.data.tags["memforge.error"]


def test_failed_training_keeps_the_previous_output(tiny_model_dir: Path, trajectories: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_model_dir, tmp_path, max_length=8)  # nothing fits: every example is dropped
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    (out / "previous.txt").write_text("old model")
    with pytest.raises(MemforgeError, match=r"no SFT example fits sft\.max_length=8"):
        train_sft(cfg, build_sft_dataset(trajectory_examples([trajectories])), out)
    assert (out / "previous.txt").read_text() == "old model"
    assert _leftovers(out.parent) == []


# ---------------------------------------------------------------------------------------------
# the stage


@pytest.fixture
def expert_params(tmp_path: Path, tiny_model_dir: Path, tracking_config) -> Params:
    """Params whose ingest and expert outputs (a small synthetic corpus, oracle teacher) exist on disk."""
    from components.datasets import ingest as ingestion
    from components.memory import trajectories

    ingest = IngestConfig(
        sources=(SourceConfig("synthetic", ""),),
        synthetic=SyntheticConfig(num_conversations=5, sessions_per_conversation=2),
        output_dir=str(tmp_path / "data" / "dialogues"),
        report_path=str(tmp_path / "reports" / "ingest_quality.json"),
    )
    ingestion.ingest(ingest)
    params = Params(
        ingest=ingest,
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(
            teacher="oracle",
            splits=("sft",),
            output_dir=str(tmp_path / "data" / "trajectories"),
            report_path=str(tmp_path / "reports" / "expert.json"),
        ),
        sft=_cfg(tiny_model_dir, tmp_path, max_length=384),
        tracking=tracking_config,
    )
    trajectories.expert(params)
    return params


def test_stage_run_logs_loss_per_step_and_writes_reports(expert_params: Params, tracking_config) -> None:
    result = run_stage("sft", expert_params)
    cfg = expert_params.sft
    metrics = result.metrics
    assert metrics["examples"] > 0 and metrics["examples"] == sum(metrics.get(f"examples_{p}", 0) for p in PARTS)
    assert metrics["examples_shortened"] > 0  # real agent prompts are longer than 384 tiny-tokenizer tokens
    assert set(result.timings) == {"seconds", "seconds_per_step"} and not set(result.timings) & set(metrics)

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    (run,) = client.search_runs([client.get_experiment_by_name(tracking_config.experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["sft.max_steps"] == "2"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2] and all(math.isfinite(m.value) for m in history)
    assert {m.step for m in client.get_metric_history(run.info.run_id, "learning_rate")} == {1, 2}
    assert {m.step for m in client.get_metric_history(run.info.run_id, "grad_norm")} == {1, 2}
    assert run.data.metrics["examples"] == metrics["examples"] and run.data.metrics["steps"] == 2
    assert run.data.metrics["seconds_per_step"] == result.timings["seconds_per_step"]  # timings: MLflow only
    datasets = {d.dataset.name: json.loads(d.dataset.source)["dvc_md5"] for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"trajectories-sft", "base-model"}
    artifacts = {a.path for path in ("sft", "model") for a in client.list_artifacts(run.info.run_id, path)}
    assert {"sft/loss_curve.png", "sft/sft.json", "sft/sft_loss.json", f"model/{MODEL_CARD_FILE}"} <= artifacts

    report = json.loads(Path(cfg.report_path).read_text())
    assert report == metrics and report["steps"] == 2 and "seconds" not in report
    points = json.loads(Path(cfg.plot_path).read_text())
    assert [p["step"] for p in points] == [1, 2] and points == result.plots[cfg.plot_path]
    assert {p["loss"] for p in points} == {m.value for m in history}
    load_model_folder(cfg.output_dir)


def test_importing_the_stage_does_not_import_torch() -> None:
    code = (
        "import sys, components.stages.sft, components.training;"
        "print(','.join(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_diverging_loss_fails_and_keeps_the_previous_output(
    tiny_model_dir: Path, trajectories: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_model_dir, tmp_path, learning_rate=1e30, max_steps=3)
    with pytest.raises(MemforgeError, match="training diverged"):
        train_sft(cfg, build_sft_dataset(trajectory_examples([trajectories])), cfg.output_dir)
    assert not (tmp_path / "models").exists()  # nothing written: no model, no temp folder beside it


def test_a_trained_model_card_inherits_the_base_models_training_scope(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model trained from a smoke run's base is a smoke run too, and its card says so."""
    from components.training.saving import trained_model_card

    base = tmp_path / "base"
    prepare_model(ModelConfig(name_or_path=str(tiny_model_dir), output_dir=str(base)), base)
    _, tokenizer = load_model_folder(base)
    card = trained_model_card(
        "sft",
        base,
        base,
        tokenizer,
        output_dir="models/sft",
        parameter_count=1,
        dtype="float32",
        fallback_context_tokens=64,
        summary={},
    )
    assert (card["training_scope"], card["note"]) == ("smoke", SMOKE_NOTE)
