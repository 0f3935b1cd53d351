"""The synth_qa stage: usable rows written, quarantine, the RL prompt join, the usable-fraction gate, MLflow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import BackendConfig, BackendsConfig, Params
from components.datasets import synth_qa as qa_dataset
from components.errors import QualityGateError
from components.qa.schema import QARow
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri


def _rows(path: Path) -> list[QARow]:
    return [QARow.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


def test_usable_rows_cover_every_session_and_join_the_rl_prompts(trained_inputs: Params) -> None:
    from datasets import load_from_disk

    result = qa_dataset.synth_qa(trained_inputs)
    out = Path(trained_inputs.synth_qa.output_dir)
    dialogues = Path(trained_inputs.ingest.output_dir)
    for split in ("sft", "rl", "eval"):
        rows = _rows(out / f"{split}.jsonl")
        assert len(rows) == result.usable[split]
        sessions = {
            (c["conversation_id"], s["session_id"])
            for c in map(json.loads, (dialogues / f"{split}.jsonl").read_text().splitlines())
            for s in c["sessions"]
        }
        covered = {(r.conversation_id, r.session_id) for r in rows}
        assert covered <= sessions
        assert sessions - covered <= {("c3", "S1")}  # only the session whose one turn is injection text
        assert all(r.question.endswith("?") and r.answer for r in rows)
    hf = load_from_disk(str(out / "hf"))
    assert hf.num_rows == sum(result.usable.values()) and set(hf["split"]) == {"sft", "rl", "eval"}

    prompts = load_from_disk(str(out / "prompts"))
    trajectory_sessions = sum(
        len((Path(trained_inputs.expert.output_dir) / f"{s}.jsonl").read_text().splitlines()) for s in ("sft", "rl")
    )
    assert result.sessions_without_questions == 1  # the injection-only session c3/S1 is in a training split
    assert prompts.num_rows == 4 * (trajectory_sessions - 1) == result.prompts
    eval_ids = {r.qa_id for r in _rows(out / "eval.jsonl")}
    for prompt in prompts:
        assert prompt["split"] in ("sft", "rl")
        assert prompt["questions"], prompt["prompt_id"]
        for question in prompt["questions"]:
            assert question["qa_id"].startswith(f"{prompt['conversation_id']}:{prompt['session_id']}:")
            assert question["qa_id"] not in eval_ids  # held-out questions never join a training prompt
        assert json.loads(prompt["memory_before"])["format"] == "memforge-memory-bank"
    assert "## split: rl" in (out / "dataset_card.md").read_text()


def test_garbage_generator_stops_below_the_usable_threshold(trained_inputs: Params, tiny_model_dir: Path) -> None:
    params = replace(
        trained_inputs,
        synth_qa=replace(trained_inputs.synth_qa, generator="llm", llm_max_attempts=1, splits=("rl",)),
        backends=BackendsConfig(teacher=BackendConfig(model=str(tiny_model_dir), max_new_tokens=8)),
    )
    with pytest.raises(QualityGateError, match="synth_qa split 'rl'") as excinfo:
        qa_dataset.synth_qa(params)
    assert "usable" in str(excinfo.value) or "no questions" in str(excinfo.value)
    assert not Path(params.synth_qa.output_dir).exists()  # nothing half-written


def test_run_logs_pass_rates_card_and_figure(trained_inputs: Params, tracking_config) -> None:
    params = replace(trained_inputs, tracking=tracking_config)
    result = run_stage("synth_qa", params)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    (run,) = client.search_runs([client.get_experiment_by_name(tracking_config.experiment).experiment_id])
    assert run.data.metrics["usable_rows"] == result.metrics["usable_rows"] > 0
    assert run.data.metrics["pass_rate_rl_answer_supported"] == result.metrics["pass_rate_rl_answer_supported"]
    assert json.loads(Path(params.synth_qa.report_path).read_text(encoding="utf-8")) == result.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "qa")}
    assert {"qa/dataset_card.md", "qa/validation.json", "qa/quarantine.jsonl", "qa/qa_composition.png"} <= artifacts
