"""Stages under a multi-process launch (issue 14 item 4): the rank from the launcher's environment; only the main
process takes the lock, opens the MLflow run, publishes, claims the checkpoint folder and writes the trained model;
and a real two-process ``accelerate launch`` of the sft stage on CPU (gloo)."""

from __future__ import annotations

import fcntl
import inspect
import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import ExpertConfig, IngestConfig, Params, SourceConfig, TrackingConfig, render_params
from components.distributed import is_main_process, process_rank, wait_for_everyone, world_size
from components.io import AlreadyRunning, exclusive_lock
from components.stages.runner import LOCK_DIR, UnloggedRun, run_stage
from components.tracking import StageRun, dvc_digest, resolve_tracking_uri
from components.training.checkpoints import FINGERPRINT_FILE, claim_checkpoint_dir, run_fingerprint
from tests.helpers import REPO_ROOT

# ---------------------------------------------------------------------------------------------
# rank and barrier


@pytest.mark.parametrize(
    ("env", "rank", "size"),
    [
        ({}, 0, 1),  # a plain `memforge stage`
        ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, 1, 2),  # accelerate launch / torchrun
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, 3, 4),  # second machine: the global rank counts
        ({"LOCAL_RANK": "2", "WORLD_SIZE": "4"}, 2, 4),  # a launcher that sets only the local rank
        ({"RANK": " ", "WORLD_SIZE": ""}, 0, 1),
    ],
)
def test_rank_and_world_size_come_from_the_launchers_environment(env: dict, rank: int, size: int) -> None:
    assert (process_rank(env), world_size(env), is_main_process(env)) == (rank, size, rank == 0)


def test_the_barrier_of_a_single_process_returns_without_importing_torch() -> None:
    code = (
        "import sys; from components.distributed import wait_for_everyone; wait_for_everyone();"
        "print(','.join(m for m in ('torch', 'accelerate') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    wait_for_everyone()  # and in this (single) test process too


# ---------------------------------------------------------------------------------------------
# the stage runner


def public_methods(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_an_unlogged_run_answers_every_logging_call_of_a_stage_run(tmp_path: Path) -> None:
    assert public_methods(UnloggedRun) == public_methods(StageRun)
    for name in public_methods(StageRun):  # same parameters, so a stage's call fits both
        assert list(inspect.signature(getattr(UnloggedRun, name)).parameters) == list(
            inspect.signature(getattr(StageRun, name)).parameters
        )
    data = tmp_path / "train.jsonl"
    data.write_text('{"q": 1}\n', encoding="utf-8")
    assert UnloggedRun().log_input_dataset(data, name="train", context="training") == dvc_digest(data)


@pytest.fixture
def ingest_params(tmp_path: Path, fixtures_dir: Path, tracking_config: TrackingConfig) -> Params:
    """The ingest stage (the cheapest stage that publishes a report) over the fixture conversations."""
    return Params(
        ingest=IngestConfig(
            sources=(SourceConfig("jsonl", str(fixtures_dir / "conversations.jsonl")),),
            output_dir=str(tmp_path / "data" / "dialogues"),
            report_path=str(tmp_path / "reports" / "ingest_quality.json"),
            plot_path=str(tmp_path / "reports" / "ingest_quality_plot.json"),
        ),
        tracking=tracking_config,
    )


def test_another_process_of_a_launch_runs_the_stage_without_lock_run_or_publishing(
    ingest_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with exclusive_lock(Path(LOCK_DIR) / "ingest.lock", "the main process"):  # the main process holds it
        monkeypatch.setenv("RANK", "1")
        result = run_stage("ingest", ingest_params)
        assert result.metrics["conversations_kept"] > 0  # the stage itself ran
        assert not Path(ingest_params.ingest.report_path).exists()  # published by the main process, not here
        assert not Path(ingest_params.ingest.plot_path).exists()
        client = MlflowClient(tracking_uri=resolve_tracking_uri(ingest_params.tracking))
        assert client.get_experiment_by_name(ingest_params.tracking.experiment) is None  # no run opened

        monkeypatch.setenv("RANK", "0")
        with pytest.raises(AlreadyRunning, match="stage ingest is already running"):
            run_stage("ingest", ingest_params)


# ---------------------------------------------------------------------------------------------
# checkpoints and the saved model


def test_only_the_main_process_clears_and_marks_the_checkpoint_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"q": 1}\n', encoding="utf-8")
    folder = tmp_path / "ckpt"
    old, new = (run_fingerprint({"learning_rate": rate}, [data]) for rate in (1e-6, 1e-5))
    assert claim_checkpoint_dir(folder, old) is False
    (folder / "checkpoint-1").mkdir()
    marker = (folder / FINGERPRINT_FILE).read_text(encoding="utf-8")

    monkeypatch.setenv("RANK", "1")
    assert claim_checkpoint_dir(folder, new) is False  # it answers as the main process will
    assert claim_checkpoint_dir(folder, old) is True
    assert (folder / "checkpoint-1").is_dir() and (folder / FINGERPRINT_FILE).read_text(encoding="utf-8") == marker

    monkeypatch.setenv("RANK", "0")
    assert claim_checkpoint_dir(folder, new) is False
    assert not (folder / "checkpoint-1").exists() and (folder / FINGERPRINT_FILE).read_text(encoding="utf-8") != marker


def test_another_process_saves_nothing_and_the_main_one_writes_the_gathered_weights(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import load_file

    from components.llm.model_assets import load_model_folder
    from components.training.saving import save_trained
    from components.training.sft import FitReport, SFTOutcome

    model, tokenizer = load_model_folder(tiny_model_dir, "float32")
    gathered = {name: torch.full_like(tensor, 0.5) for name, tensor in model.state_dict().items()}
    out = tmp_path / "models" / "sft"
    outcome = SFTOutcome(
        output_dir=str(out),
        base_model=str(tiny_model_dir),
        steps=1,
        train_loss=1.0,
        use_lora=False,
        examples=1,
        examples_trained=1,
        examples_per_part={"core": 1},
        fit=FitReport(fitted=1),
        epochs=1.0,
        trainable_params=1,
        total_params=1,
        saved_dtype="bfloat16",
    )

    monkeypatch.setenv("RANK", "1")
    save_trained(model, tokenizer, outcome, fallback_context_tokens=64, state_dict=gathered)
    assert not out.parent.exists()  # not even a staging folder

    monkeypatch.setenv("RANK", "0")
    save_trained(model, tokenizer, outcome, fallback_context_tokens=64, state_dict=gathered)
    saved = load_file(out / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}  # cast to the outcome's dtype
    assert all(bool((t == 0.5).all()) for t in saved.values())  # the weights given, not the model's
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]


# ---------------------------------------------------------------------------------------------
# a real two-process launch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sft_workspace(root: Path, model: Path) -> Params:
    """params.yaml and the expert stage's trajectories (oracle teacher, a small synthetic corpus)."""
    from components.config import MemoryConfig, SFTConfig, SyntheticConfig
    from components.datasets import ingest as ingestion
    from components.memory import trajectories

    params = Params(
        ingest=IngestConfig(
            sources=(SourceConfig("synthetic", ""),),
            synthetic=SyntheticConfig(num_conversations=4, sessions_per_conversation=2),
            output_dir=str(root / "data/dialogues"),
            report_path=str(root / "reports/ingest_quality.json"),
        ),
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(
            teacher="oracle",
            splits=("sft",),
            output_dir=str(root / "data/trajectories"),
            report_path=str(root / "reports/expert.json"),
        ),
        sft=SFTConfig(
            model_name_or_path=str(model),
            max_steps=2,
            max_length=256,
            learning_rate=1e-3,
            per_device_batch_size=1,
            output_dir=str(root / "models/sft"),
            report_path=str(root / "reports/sft.json"),
            plot_path=str(root / "reports/sft_loss.json"),
        ),
        tracking=TrackingConfig(experiment="distributed", store_dir=str(root / "mlflow")),
    )
    ingestion.ingest(params.ingest)
    trajectories.expert(params)
    (root / "params.yaml").write_text(render_params(params), encoding="utf-8")
    return params


def accelerate_launch(root: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``memforge stage`` in two CPU processes, as ``memforge launch`` starts it (``-m components.cli``) in ``root``.

    accelerate 1.15 runs ``--cpu`` as one process (several need mpirun), so the two come from ``--multi_gpu``
    (torchrun) with ``ACCELERATE_USE_CPU``: the Trainer then trains on CPU over gloo, as ``--cpu`` would."""
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        "-m",
        "components.cli",
        "--params",
        "params.yaml",
        "stage",
        stage,
        *(arg for override in overrides for arg in ("-S", override)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ACCELERATE_USE_CPU": "True", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count(f'"stage": "{stage}"') == 2  # both processes ran the stage
    return done


def stage_runs(params: Params, stage: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=resolve_tracking_uri(params.tracking))
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def assert_released_and_tidy(root: Path, stage: str) -> None:
    """No staging or temp file beside the outputs, and the stage's lock free with no pid in it."""
    leftovers = [p for folder in ("models", "reports") for p in (root / folder).iterdir() if p.name[0] == "."]
    assert leftovers == []
    with (root / LOCK_DIR / f"{stage}.lock").open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.seek(0)
        assert lock.read() == ""


@pytest.mark.slow
def test_the_sft_stage_under_a_two_process_accelerate_launch(tiny_model_dir: Path, tmp_path: Path) -> None:
    from components.llm.model_assets import MODEL_CARD_FILE, load_model_folder

    params = sft_workspace(tmp_path, tiny_model_dir)
    accelerate_launch(tmp_path, "sft")

    client, runs = stage_runs(params, "sft")
    (run,) = runs  # one run for the stage
    assert run.info.status == "FINISHED" and run.data.tags["memforge.stage"] == "sft"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]  # logged by one process
    assert len(client.get_metric_history(run.info.run_id, "steps")) == 1  # published once
    report = json.loads(Path(params.sft.report_path).read_text(encoding="utf-8"))
    assert report["steps"] == 2 and report == {k: run.data.metrics[k] for k in report}
    # one training over both processes: an epoch is ceil(examples / 2) steps of 2 examples (one per process)
    assert report["epochs"] == round(2 / math.ceil(report["examples_trained"] / 2), 4)

    card = json.loads((Path(params.sft.output_dir) / MODEL_CARD_FILE).read_text(encoding="utf-8"))
    assert card["sft"]["steps"] == 2
    load_model_folder(params.sft.output_dir)
    assert_released_and_tidy(tmp_path, "sft")


@pytest.mark.slow
def test_the_adrpo_stage_under_a_two_process_launch_trains_checkpoints_and_resumes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two steps with a checkpoint each, then a third launched again: both processes claim the checkpoint folder
    alike and resume from step 2 together."""
    from components.config import ADRPOConfig
    from components.datasets import ingest as ingestion
    from components.datasets import synth_qa as qa_dataset
    from components.llm.model_assets import load_model_folder
    from components.memory import trajectories
    from tests.helpers import small_corpus_params

    corpus = small_corpus_params(tmp_path)
    ingestion.ingest(corpus.ingest)
    trajectories.expert(corpus)
    qa_dataset.synth_qa(corpus)
    adrpo = ADRPOConfig(
        model_name_or_path=str(tiny_model_dir),
        num_generations=2,
        max_prompt_length=4096,
        max_completion_length=8,
        max_steps=2,
        save_steps=1,
        checkpoint_dir=str(tmp_path / "checkpoints/adrpo"),
        output_dir=str(tmp_path / "models/adrpo"),
        report_path=str(tmp_path / "reports/adrpo.json"),
        plot_path=str(tmp_path / "reports/adrpo_reward.json"),
    )
    tracking = TrackingConfig(experiment="distributed", store_dir=str(tmp_path / "mlflow"))
    params = replace(corpus, adrpo=adrpo, tracking=tracking)
    (tmp_path / "params.yaml").write_text(render_params(params), encoding="utf-8")

    accelerate_launch(tmp_path, "adrpo")
    assert [p.name for p in Path(adrpo.checkpoint_dir).glob("checkpoint-*")] == ["checkpoint-2"]  # the latest kept
    accelerate_launch(tmp_path, "adrpo", "adrpo.max_steps=3")

    client, runs = stage_runs(params, "adrpo")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]  # one run per launch
    report = json.loads(Path(adrpo.report_path).read_text(encoding="utf-8"))
    assert (report["steps"], report["resumed"]) == (3, 1)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "reward")] == [1, 2]  # one process logs
    assert [m.step for m in client.get_metric_history(runs[1].info.run_id, "reward")] == [3]  # only the new step
    load_model_folder(adrpo.output_dir)
    assert_released_and_tidy(tmp_path, "adrpo")
