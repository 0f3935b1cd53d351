"""The expert stage: trajectories written, failures dropped and counted, MLflow logging; `memory build`."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.cli import main
from components.config import (
    BackendConfig,
    BackendsConfig,
    ExpertConfig,
    IngestConfig,
    MemoryConfig,
    Params,
    SourceConfig,
    SyntheticConfig,
)
from components.datasets import ingest as ingestion
from components.memory import trajectories
from components.memory.bank import MemoryBank
from components.memory.embedder import HashingEmbedder
from components.memory.parser import try_parse
from components.memory.types import PARTS
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri


@pytest.fixture
def ingested(tmp_path: Path, fixtures_dir: Path) -> Params:
    """Params whose ingest output (synthetic + hand-written conversations) exists on disk."""
    ingest = IngestConfig(
        sources=(SourceConfig("jsonl", str(fixtures_dir / "conversations.jsonl")), SourceConfig("synthetic", "")),
        synthetic=SyntheticConfig(num_conversations=6, sessions_per_conversation=3),
        output_dir=str(tmp_path / "data" / "dialogues"),
        report_path=str(tmp_path / "reports" / "ingest_quality.json"),
    )
    ingestion.ingest(ingest)
    return Params(
        ingest=ingest,
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(
            teacher="oracle",
            output_dir=str(tmp_path / "data" / "trajectories"),
            report_path=str(tmp_path / "reports" / "expert.json"),
        ),
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_expert_writes_one_record_per_training_session(ingested: Params) -> None:
    result = trajectories.expert(ingested)
    out = Path(ingested.expert.output_dir)
    splits = json.loads((Path(ingested.ingest.output_dir) / "splits.json").read_text())["assignment"]
    for split in ("sft", "rl"):
        records = _records(out / f"{split}.jsonl")
        assert {r["conversation_id"] for r in records} == {cid for cid, s in splits.items() if s == split}
        assert len(records) == result.sessions[split]
        for record in records:
            assert set(record["outputs"]) == set(PARTS)  # the oracle/heuristic never fail
            for part, text in record["outputs"].items():
                assert try_parse(part, text)[1] is None
                assert record["prompts"][part][1]["content"].count(record["session_id"]) >= 1
            bank = MemoryBank.from_dict(record["memory_before"], ingested.memory, embedder=HashingEmbedder())
            is_empty = len(bank) == 0 and bank.core == ""
            assert is_empty == (record["session_index"] == 0)  # memory before the first session is empty
    assert not (out / "eval.jsonl").exists()  # held-out conversations never reach the teacher
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == "oracle" and summary["metrics"]["dropped_fraction"] == 0.0


def test_llm_teacher_outputs_that_fail_are_dropped_not_written(
    ingested: Params, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    params = replace(
        ingested,
        expert=replace(ingested.expert, teacher="llm", max_conversations=1),
        backends=BackendsConfig(teacher=BackendConfig(model=str(tiny_model_dir), max_new_tokens=8)),
    )
    with caplog.at_level(logging.WARNING, logger="memforge"):
        result = trajectories.expert(params)
    dropped = sum(result.dropped_outputs.values())
    assert dropped > 0
    total = dropped + sum(result.kept_outputs.values())
    assert f"expert: {dropped} of {total} teacher outputs unusable and dropped" in caplog.text  # said, with counts
    written = [r for split in ("sft", "rl") for r in _records(Path(params.expert.output_dir) / f"{split}.jsonl")]
    kept = sum(len(r["outputs"]) for r in written)
    assert kept == sum(result.kept_outputs.values())
    assert all(try_parse(part, text)[1] is None for r in written for part, text in r["outputs"].items())


def test_expert_run_logs_metrics_table_and_figure(ingested: Params, tracking_config) -> None:
    params = replace(ingested, tracking=tracking_config)
    result = run_stage("expert", params)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    (run,) = client.search_runs([client.get_experiment_by_name(tracking_config.experiment).experiment_id])
    assert run.data.metrics["sessions"] == result.metrics["sessions"] > 0
    assert run.data.params["expert.teacher"] == "oracle"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "trajectories")}
    assert {
        "trajectories/memory_composition.png",
        "trajectories/samples.json",
        "trajectories/summary.json",
    } <= artifacts
    assert json.loads(Path(params.expert.report_path).read_text()) == result.metrics


def test_memory_build_cli_prints_and_saves(ingested: Params, tmp_path: Path, capsys) -> None:
    dialogues = Path(ingested.ingest.output_dir) / "sft.jsonl"
    first = json.loads(dialogues.read_text().splitlines()[0])["conversation_id"]
    out = tmp_path / "memory.json"
    code = main(
        ["memory", "build", "--dialogues", str(dialogues), "--conversation", first, "--teacher", "heuristic",
         "--out", str(out), "-S", "memory.embedder=hashing"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr()
    assert "== core ==" in printed.out and "== semantic" in printed.out
    assert f"saved {out}" in printed.err
    loaded = MemoryBank.load(out, MemoryConfig(embedder="hashing"), embedder=HashingEmbedder())
    assert loaded.composition()["total_chars"] > 0
    saved_texts = [e.text for part in ("episodic", "semantic", "procedural") for e in loaded.entries(part)]
    assert saved_texts and all(text in printed.out for text in saved_texts)
    assert main(["memory", "build", "--dialogues", str(dialogues), "--conversation", "nope"]) == 2
