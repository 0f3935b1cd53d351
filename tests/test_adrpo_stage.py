"""The adrpo stage end to end: real synth_qa prompts, the tiny model, MLflow (SQLite), reports, checkpoints, resume.

Inputs come from the real pipeline parts (ingest -> expert -> synth_qa on the small synthetic + hand-written corpus
of ``test_synth_qa.trained_inputs``), built once per module. A random tiny model never writes parseable memory
operations, so every reward would be 0 and no parameter would move. SFT on the exact (prompt, expert output)
pairs of the trained sessions does fix that (150 steps at lr 1e-2: 37.5% of sampled completions pass the format
gate, mean reward 0.11), but it takes about 5 minutes on a 2-core CPU (the prompts are about 1,000 tokens), far
too slow for a test; 60 steps (loss 1.2) left every output unparseable. The ``half_expert`` shim
therefore scores, AT SCORING TIME ONLY, rollout 0 of every prompt as the expert's output and keeps rollout 1 as the
model's own text: generation, the reward call, scoring (real banks, real containment judge), the advantage rewrite
and the policy update on the generated tokens are real, and each GRPO group holds one passing and one failing
rollout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components.config import (
    ADRPOConfig,
    BackendConfig,
    BackendsConfig,
    Params,
)
from components.errors import InputError
from components.llm.model_assets import MODEL_CARD_FILE, load_model_folder
from components.memory.types import PARTS
from components.rewards import judges
from components.stages import adrpo as adrpo_stage
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri
from components.training import adrpo
from tests.helpers import REPO_ROOT, small_corpus_params


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """Dialogues, expert trajectories and the synth_qa prompts dataset on disk (as ``trained_inputs``, once)."""
    from components.datasets import ingest as ingestion
    from components.datasets import synth_qa as qa_dataset
    from components.memory import trajectories

    params = small_corpus_params(tmp_path_factory.mktemp("adrpo-inputs"))
    ingestion.ingest(params.ingest)
    trajectories.expert(params)
    qa_dataset.synth_qa(params)
    return params


@pytest.fixture
def stage_params(pipeline_inputs: Params, tiny_model_dir: Path, tmp_path: Path, tracking_config) -> Params:
    """Two ADRPO steps of one session each, tiny completions, checkpoints every step, outputs under tmp_path."""
    cfg = ADRPOConfig(
        model_name_or_path=str(tiny_model_dir),
        num_generations=2,
        learning_rate=5e-2,
        max_prompt_length=4096,
        max_completion_length=8,
        max_steps=2,
        save_steps=1,
        seed=0,
        log_completions=4,
        checkpoint_dir=str(tmp_path / "checkpoints" / "adrpo"),
        output_dir=str(tmp_path / "models" / "adrpo"),
        report_path=str(tmp_path / "reports" / "adrpo.json"),
        plot_path=str(tmp_path / "reports" / "adrpo_reward.json"),
    )
    return replace(pipeline_inputs, adrpo=cfg, tracking=tracking_config)


@pytest.fixture
def half_expert(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Score rollout 0 of each prompt as the expert's output, rollout 1 as generated; records the generated texts."""
    from components.rewards import completion_text

    real = adrpo.groups_from_batch
    generated: list[list[str]] = []

    def shim(rows, completions, **kwargs):
        seen: dict[str, int] = {}
        texts = []
        for row, completion in zip(rows, completions, strict=True):
            rollout = seen[row["prompt_id"]] = seen.get(row["prompt_id"], -1) + 1
            texts.append(row["expert_output"] if rollout == 0 else completion_text(completion))
        generated.append([completion_text(c) for c in completions])
        return real(rows, texts, **kwargs)

    monkeypatch.setattr(adrpo, "groups_from_batch", shim)
    return generated


def _run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time ASC"])
    return runs


def _params(folder: Path | str) -> dict[str, np.ndarray]:
    model, _ = load_model_folder(folder, "float32")
    return {name: p.detach().float().numpy().copy() for name, p in model.named_parameters()}


def test_stage_trains_logs_to_mlflow_and_writes_reports(
    stage_params: Params, half_expert, tiny_model_dir: Path, tracking_config
) -> None:
    cfg = stage_params.adrpo
    result = run_stage("adrpo", stage_params)
    assert result.metrics["steps"] == 2 and result.metrics["resumed"] == 0 and len(half_expert) == 2
    assert "seconds_per_step" in result.timings and "seconds_per_step" not in result.metrics

    # reports: metrics (DVC metrics file) and the reward curve points (DVC plots file)
    report = json.loads(Path(cfg.report_path).read_text())
    assert report == result.metrics and report["steps"] == 2
    assert 0 < report["final_reward_mean"] <= 1 and report["final_format_failure_rate"] == pytest.approx(0.5)
    points = json.loads(Path(cfg.plot_path).read_text())
    assert [p["step"] for p in points] == [1, 2]
    assert {"reward", "reward_std", "task_reward", "format_failure_rate", "length_penalty"} <= set(points[0])

    # MLflow: params, inputs, per-step metrics, final metrics, the completions table, the figure, the model card
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    (run,) = _run(client, tracking_config.experiment)
    assert run.info.status == "FINISHED" and run.data.params["adrpo.max_steps"] == "2"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"adrpo-prompts", "policy"}
    per_step = [
        "adrpo/reward_mean",
        "adrpo/reward_std",
        "adrpo/format_failure_rate",
        "adrpo/length_penalty_mean",
        "reward",
        "loss",
        *(f"adrpo/reward_mean_{p}" for p in PARTS),
        *(f"adrpo/attribution_weight_mean_{p}" for p in PARTS),
    ]
    for key in per_step:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    rewards = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "adrpo/reward_mean")}
    assert rewards == {p["step"]: pytest.approx(p["reward"]) for p in points}
    assert run.data.metrics["steps"] == 2 and run.data.metrics["final_reward_mean"] == report["final_reward_mean"]
    artifacts = {a.path for path in ("adrpo", "model") for a in client.list_artifacts(run.info.run_id, path)}
    expected = {"adrpo/adrpo.json", "adrpo/adrpo_reward.json", "adrpo/reward_curve.png", "adrpo/completions.json"}
    assert expected | {f"model/{MODEL_CARD_FILE}"} <= artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "adrpo/completions.json")).read_text())
    rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
    assert len(rows) == cfg.log_completions and {r["step"] for r in rows} == {2}
    assert {"session", "part", "completion", "reward", "advantage", "format_ok"} <= set(rows[0])
    assert all(r["completion"] in half_expert[-1] for r in rows)  # the model's own generated text
    assert {r["rollout"] for r in rows} == {0, 1} and {r["format_ok"] for r in rows} == {True, False}

    # the model: loadable, trained (parameters moved), with its card; checkpoints apart from it
    out = Path(cfg.output_dir)
    card = json.loads((out / MODEL_CARD_FILE).read_text())
    assert card["kind"] == "adrpo" and card["adrpo"]["steps"] == 2
    before, after = _params(tiny_model_dir), _params(out)
    assert any(not np.allclose(before[n], after[n]) for n in before)
    assert adrpo.latest_checkpoint(cfg.checkpoint_dir).endswith("checkpoint-2") and not list(out.glob("checkpoint-*"))


def test_a_rerun_resumes_from_the_persisted_checkpoint(stage_params: Params, half_expert, tracking_config) -> None:
    """What DVC's ``persist: true`` keeps: a killed (here: shorter) run's checkpoint is resumed by the next run."""
    cfg = replace(stage_params.adrpo, max_steps=1)
    first = run_stage("adrpo", replace(stage_params, adrpo=cfg))
    assert first.metrics["steps"] == 1 and first.metrics["resumed"] == 0
    more = run_stage("adrpo", replace(stage_params, adrpo=replace(cfg, max_steps=2)))
    card = json.loads((Path(cfg.output_dir) / MODEL_CARD_FILE).read_text())
    assert card["adrpo"]["resumed_from"].endswith("checkpoint-1") and more.metrics["steps"] == 2
    assert len(half_expert) == 2
    assert json.loads(Path(cfg.report_path).read_text())["resumed"] == 1.0
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    _, second = _run(client, tracking_config.experiment)
    assert [m.step for m in client.get_metric_history(second.info.run_id, "adrpo/reward_mean")] == [2]


def test_missing_or_empty_prompts_dataset_is_a_clear_error(stage_params: Params, tmp_path: Path, tracking_config):
    missing = replace(stage_params, synth_qa=replace(stage_params.synth_qa, output_dir=str(tmp_path / "no-qa")))
    with pytest.raises(InputError, match=r"no-qa/prompts: no prompts dataset here; run the synth_qa stage"):
        run_stage("adrpo", missing)
    wrong_split = replace(stage_params, adrpo=replace(stage_params.adrpo, splits=("eval",)))
    with pytest.raises(InputError, match=r"prompts: no prompts of adrpo.splits \['eval'\] \(splits present: rl, sft\)"):
        run_stage("adrpo", wrong_split)
    assert not Path(stage_params.adrpo.output_dir).exists() and not Path(stage_params.adrpo.report_path).exists()
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    runs = _run(client, tracking_config.experiment)
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert "no prompts dataset here" in runs[0].data.tags["memforge.error"]


def test_llm_judge_uses_the_configured_backends_and_closes_them(
    stage_params: Params, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.rewards import LLMJudge

    answerer = BackendConfig(model=str(tiny_model_dir), max_new_tokens=4)
    params = replace(
        stage_params,
        adrpo=replace(stage_params.adrpo, judge="llm", max_steps=1, save_steps=0),
        backends=BackendsConfig(answerer=answerer, judge=replace(answerer, max_new_tokens=2)),
    )
    judge, backends = judges.build_judge(params)
    assert isinstance(judge, LLMJudge) and len(backends) == 2
    assert [b.cfg for b in backends] == [params.backends.answerer, params.backends.judge]
    for backend in backends:
        backend.close()
    same = replace(params, backends=BackendsConfig(answerer=answerer, judge=answerer))
    judge, backends = judges.build_judge(same)
    assert len(backends) == 1 and judge.answerer is judge.judge_backend
    backends[0].close()

    built: list = []
    real = judges.build_judge
    monkeypatch.setattr(adrpo_stage, "build_judge", lambda p: built.append(real(p)) or built[-1])
    result = run_stage("adrpo", params)
    assert result.metrics["steps"] == 1 and result.metrics["final_judge_calls"] == 1
    assert result.metrics["final_questions_judged"] > 0
    ((used, used_backends),) = built
    assert isinstance(used, LLMJudge) and all(b._model is None for b in used_backends)  # closed at the end


def test_completions_table_spreads_over_the_batch() -> None:
    rows = [{"index": i} for i in range(8)]
    assert [r["index"] for r in adrpo_stage.completions_table(rows, 4)] == [0, 2, 4, 7]
    assert adrpo_stage.completions_table(rows, 0) == [] and adrpo_stage.completions_table([], 3) == []
    assert adrpo_stage.completions_table(rows, 20) == rows and adrpo_stage.completions_table(rows, 1) == rows[:1]


def test_importing_the_stage_does_not_import_torch() -> None:
    code = (
        "import sys, components.stages.adrpo;"
        "print(','.join(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
