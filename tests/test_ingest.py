"""The ingest stage: streaming validation, quarantine, critical stops, atomic output, MLflow logging."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import IngestConfig, Params, QualityConfig, SourceConfig, SyntheticConfig
from components.datasets import ingest as ingestion
from components.dialogue.loaders import load_jsonl
from components.dialogue.splits import SPLIT_NAMES
from components.errors import InputError, QualityGateError
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri


def _config(tmp_path: Path, sources: tuple[SourceConfig, ...], **quality: object) -> IngestConfig:
    return IngestConfig(
        sources=sources,
        synthetic=SyntheticConfig(num_conversations=6, sessions_per_conversation=3),
        quality=replace(QualityConfig(), batch_conversations=4, **quality),
        output_dir=str(tmp_path / "data" / "dialogues"),
        report_path=str(tmp_path / "reports" / "ingest_quality.json"),
        validation_path=str(tmp_path / "reports" / "ingest_validation.json"),
        plot_path=str(tmp_path / "reports" / "ingest_pass_rates.json"),
    )


def _read_ids(path: Path) -> list[str]:
    return [item.conversation.conversation_id for item in load_jsonl(path)]


def test_ingest_writes_disjoint_splits_and_manifest(tmp_path: Path, fixtures_dir: Path) -> None:
    cfg = _config(
        tmp_path,
        (
            SourceConfig("jsonl", str(fixtures_dir / "conversations.jsonl")),
            SourceConfig("locomo", str(fixtures_dir / "locomo_small.json")),
            SourceConfig("longmemeval", str(fixtures_dir / "longmemeval_small.json")),
            SourceConfig("synthetic", ""),
        ),
    )
    result, validation = ingestion.ingest(cfg)
    out = Path(cfg.output_dir)
    assert result.conversations_read == 3 + 2 + 2 + 6
    assert result.conversations_kept == 13 and result.conversations_quarantined == 0
    split_ids = {name: _read_ids(out / f"{name}.jsonl") for name in SPLIT_NAMES}
    all_ids = [cid for ids in split_ids.values() for cid in ids]
    assert len(all_ids) == len(set(all_ids)) == 13  # no conversation in two splits
    manifest = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == {name: len(ids) for name, ids in split_ids.items()} == result.split_counts
    assert all(manifest["assignment"][cid] == name for name, ids in split_ids.items() for cid in ids)
    assert (out / "quarantine.jsonl").read_text(encoding="utf-8") == ""
    assert not (out / ingestion.VALIDATED_POOL).exists()
    assert json.dumps(validation)  # serialisable validation result
    assert all(rate == 1.0 for rate in result.pass_rates.values())


def test_ingest_is_deterministic(tmp_path: Path, fixtures_dir: Path) -> None:
    sources = (SourceConfig("jsonl", str(fixtures_dir / "conversations.jsonl")), SourceConfig("synthetic", ""))
    first, second = _config(tmp_path / "a", sources), _config(tmp_path / "b", sources)
    ingestion.ingest(first)
    ingestion.ingest(second)
    for name in [*(f"{s}.jsonl" for s in SPLIT_NAMES), "splits.json"]:
        assert (Path(first.output_dir) / name).read_bytes() == (Path(second.output_dir) / name).read_bytes()


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _conversation(cid: str, **overrides: object) -> dict:
    record = {
        "conversation_id": cid,
        "speakers": ["ann", "assistant"],
        "sessions": [
            {
                "session_id": "S1",
                "timestamp": "2023-01-01T10:00",
                "turns": [{"turn_id": "S1:1", "speaker": "ann", "text": "hi"}],
            },
            {
                "session_id": "S2",
                "timestamp": "2023-01-02T10:00",
                "turns": [{"turn_id": "S2:1", "speaker": "ann", "text": "I moved to Rome."}],
            },
        ],
        "questions": [
            {"question_id": "q1", "question": "Where?", "answers": ["Rome"], "category": "single", "evidence": ["S2:1"]}
        ],
    }
    record.update(overrides)
    return record


def test_empty_session_stops_the_stage_naming_file_and_record(tmp_path: Path) -> None:
    bad = _conversation("c2")
    bad["sessions"][1]["turns"] = []
    source = _write_jsonl(tmp_path / "in.jsonl", [_conversation("c1"), bad, _conversation("c3")])
    cfg = _config(tmp_path, (SourceConfig("jsonl", str(source)),))
    previous = Path(cfg.output_dir)
    previous.mkdir(parents=True)
    (previous / "sft.jsonl").write_text("previous good output\n", encoding="utf-8")
    with pytest.raises(QualityGateError) as excinfo:
        ingestion.ingest(cfg)
    message = str(excinfo.value)
    assert "session_has_turns" in message and str(source) in message and "line 2" in message and "c2" in message
    # the previous output is untouched and nothing half-written is left beside it
    assert (previous / "sft.jsonl").read_text(encoding="utf-8") == "previous good output\n"
    assert sorted(p.name for p in previous.parent.iterdir()) == ["dialogues"]


def test_non_critical_failures_are_quarantined_with_reasons(tmp_path: Path) -> None:
    stranger = _conversation("c2")
    stranger["sessions"][0]["turns"][0]["speaker"] = "mallory"
    source = _write_jsonl(
        tmp_path / "in.jsonl", [_conversation("c1"), stranger, _conversation("c3"), _conversation("c4")]
    )
    cfg = _config(tmp_path, (SourceConfig("jsonl", str(source)),))
    result, _ = ingestion.ingest(cfg)
    assert result.conversations_quarantined == 1 and result.conversations_kept == 3
    quarantined = [json.loads(line) for line in (Path(cfg.output_dir) / "quarantine.jsonl").read_text().splitlines()]
    assert [q["conversation_id"] for q in quarantined] == ["c2"]
    assert quarantined[0]["record"] == "line 2" and quarantined[0]["source_file"] == str(source)
    assert [r["expectation"] for r in quarantined[0]["reasons"]] == ["speaker_known"]
    assert "mallory" in quarantined[0]["reasons"][0]["detail"]
    assert result.pass_rates["speaker_known"] < 1.0


def test_too_much_quarantine_fails_with_the_threshold(tmp_path: Path) -> None:
    records = [_conversation(f"c{i}") for i in range(4)]
    for record in records[:3]:
        record["questions"][0]["evidence"] = ["S9:9"]
    source = _write_jsonl(tmp_path / "in.jsonl", records)
    cfg = _config(tmp_path, (SourceConfig("jsonl", str(source)),), max_quarantine_fraction=0.5)
    with pytest.raises(QualityGateError, match=r"3 of 4 conversations \(75%\).*max_quarantine_fraction=0.5") as err:
        ingestion.ingest(cfg)
    assert not Path(cfg.output_dir).exists()
    # the error names what failed and points only at what exists (the failed run's validation artifact)
    assert "failed expectations: evidence_exists (3)" in str(err.value)
    assert "quarantine.jsonl" not in str(err.value)


def test_a_quarantined_turn_is_kept_bounded(tmp_path: Path) -> None:
    records = [_conversation(f"c{i}") for i in range(4)]
    huge = "word " * 200_000  # a 1 MB turn
    records[1]["sessions"][0]["turns"][0]["text"] = huge
    records[1]["questions"][0]["evidence"] = ["S9:9"]
    source = _write_jsonl(tmp_path / "in.jsonl", records)
    cfg = _config(tmp_path, (SourceConfig("jsonl", str(source)),), max_quarantine_fraction=0.5)
    ingestion.ingest(cfg)
    quarantine = Path(cfg.output_dir) / "quarantine.jsonl"
    (record,) = [json.loads(line) for line in quarantine.read_text().splitlines()]
    text = record["conversation"]["sessions"][0]["turns"][0]["text"]
    assert text.endswith(f"… [{len(huge):,} characters]") and len(text) < 600
    assert quarantine.stat().st_size < 10_000


def test_no_conversations_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="no conversations were read"):
        ingestion.ingest(_config(tmp_path, (SourceConfig("jsonl", str(source)),)))


def test_stage_run_logs_quality_to_mlflow(tmp_path: Path, fixtures_dir: Path, tracking_config) -> None:
    cfg = _config(tmp_path, (SourceConfig("jsonl", str(fixtures_dir / "conversations.jsonl")),))
    result = run_stage("ingest", Params(ingest=cfg, tracking=tracking_config))
    assert json.loads(Path(cfg.report_path).read_text(encoding="utf-8")) == result.metrics
    assert "seconds" in result.timings and "seconds" not in result.metrics
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    experiment = client.get_experiment_by_name(tracking_config.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["memforge.stage"] == "ingest"
    assert run.data.metrics["conversations_kept"] == 3
    assert run.data.metrics["pass_rate_unique_ids"] == 1.0
    assert run.data.params["ingest.splits.seed"] == "13"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "ingest")}
    assert {"ingest/ingest_validation.json", "ingest/ingest_quality.png", "ingest/ingest_pass_rates.json"} <= artifacts
    plot_rows = json.loads(Path(cfg.plot_path).read_text(encoding="utf-8"))
    assert {row["expectation"] for row in plot_rows} == {
        k.removeprefix("pass_rate_") for k in result.metrics if k.startswith("pass_rate_")
    }
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [f"jsonl:{fixtures_dir / 'conversations.jsonl'}"]
    assert all(f"memforge.output_md5.{s}" in run.data.tags for s in SPLIT_NAMES)
