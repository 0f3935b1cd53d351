"""memagent_train and eval_longcontext as DVC runs them: real sets, the tiny model, SQLite MLflow.

The tiny random model answers nothing right, so these tests check the plumbing and the reports (files, MLflow
metrics, tables, figures, checkpoints and their fingerprint), not accuracy; the reward and advantage arithmetic is
covered in ``test_memagent_train`` and the scores in ``test_eval_longcontext_report``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import (
    EvalLongContextConfig,
    LongContextConfig,
    MemAgentConfig,
    MemAgentTrainConfig,
    ModelConfig,
    Params,
    ReaderConfig,
)
from components.errors import InputError
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri

pytestmark = pytest.mark.slow


def stage_params(root: Path, model_dir: Path, tracking_config, **eval_overrides) -> Params:
    longcontext = LongContextConfig(
        eval_questions=2,
        eval_lengths_docs=(3, 6),
        train_questions=2,
        train_docs=3,
        squad_eval_questions=2,
        squad_eval_lengths_docs=(4,),
        needle_tasks=("single", "multivalue"),
        needle_lengths_tokens=(512,),
        needle_samples=1,
        length_tolerance=0.2,
        output_dir=str(root / "data/longcontext"),
        report_path=str(root / "reports/longcontext_data.json"),
    )
    memagent = MemAgentConfig(
        reader=ReaderConfig(chunk_tokens=256, memory_tokens=12, answer_tokens=8, batch_size=8),
        train=MemAgentTrainConfig(
            model_name_or_path=str(model_dir),
            max_steps=2,
            save_steps=1,
            learning_rate=5e-3,
            checkpoint_dir=str(root / "checkpoints/memagent"),
            output_dir=str(root / "models/memagent"),
            report_path=str(root / "reports/memagent_train.json"),
            plot_path=str(root / "reports/memagent_reward.json"),
        ),
        eval=EvalLongContextConfig(
            model_name_or_path=str(root / "models/memagent"),
            baseline_context_tokens=300,
            report_path=str(root / "reports/eval_longcontext.json"),
            rows_path=str(root / "reports/eval_longcontext_rows.jsonl"),
            plots_dir=str(root / "reports/eval_longcontext_plots"),
            **eval_overrides,
        ),
    )
    model = ModelConfig(output_dir=str(model_dir))
    return Params(model=model, longcontext=longcontext, memagent=memagent, tracking=tracking_config)


def stage_runs(tracking_config, stage: str) -> list:
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    experiment = client.get_experiment_by_name(tracking_config.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`memforge.stage` = '{stage}'")


def test_train_then_evaluate_writes_models_reports_and_mlflow(
    tmp_path: Path, tiny_model_dir: Path, tracking_config
) -> None:
    from components.training.checkpoints import FINGERPRINT_FILE

    params = stage_params(tmp_path, tiny_model_dir, tracking_config)
    run_stage("longcontext_data", params)

    trained = run_stage("memagent_train", params)
    assert trained.metrics["steps"] == 2 and trained.metrics["questions"] == 2
    assert (tmp_path / "models/memagent/config.json").is_file()
    checkpoints = {p.name for p in (tmp_path / "checkpoints/memagent").iterdir()}
    assert {"checkpoint-2", FINGERPRINT_FILE} <= checkpoints and "checkpoint-1" not in checkpoints  # the latest only
    assert not any(p.name.startswith("checkpoint") for p in (tmp_path / "models/memagent").iterdir())
    report = json.loads((tmp_path / "reports/memagent_train.json").read_text(encoding="utf-8"))
    assert report["steps"] == 2.0 and "final_reward_mean" in report
    # the supervised warm-up ran first (memagent.warmup defaults: 2 steps, 2 questions checked) and GRPO started from it
    warmup = report["warmup"]
    assert warmup["steps"] == 2.0 and warmup["trajectories"] == 2.0 and warmup["reused"] == 0.0
    assert warmup["examples_answer"] == 2.0 and warmup["check_questions"] == 2.0
    assert warmup["check_boxed_fraction"] in {0.0, 0.5, 1.0}  # of the 2 questions checked
    assert (tmp_path / "checkpoints/memagent/warmup/config.json").is_file()
    card = json.loads((tmp_path / "models/memagent/memforge_model.json").read_text(encoding="utf-8"))
    assert card["memagent"]["warmed_up_from"] == str(tmp_path / "checkpoints/memagent/warmup")
    assert card["memagent"]["base_model"] == str(tiny_model_dir)
    curve = json.loads((tmp_path / "reports/memagent_reward.json").read_text(encoding="utf-8"))
    assert [p["step"] for p in curve] == [1, 2] and all(0 <= p["reward"] <= 1 for p in curve)
    (train_run,) = stage_runs(tracking_config, "memagent_train")
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    history = client.get_metric_history(train_run.info.run_id, "memagent/conversations_per_trajectory")
    assert [m.step for m in history] == [1, 2] and all(m.value >= 2 for m in history)
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "memagent_train")}
    assert {"memagent_train/reward_curve.png", "memagent_train/trajectories.json"} <= artifacts
    assert "memagent_train/warmup_trajectories.json" in artifacts
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "warmup/loss")] == [1, 2]
    assert train_run.data.metrics["warmup/trajectories"] == 2.0
    assert [a.path for a in client.list_artifacts(train_run.info.run_id, "model")] == ["model/memforge_model.json"]

    result = run_stage("eval_longcontext", params)
    rows = [json.loads(line) for line in (tmp_path / "reports/eval_longcontext_rows.jsonl").open(encoding="utf-8")]
    # 2 HotpotQA questions x 2 lengths + 2 SQuAD questions x 1 length + 2 needle tasks x 1 length, each answered by
    # the reader and the baseline
    assert len(rows) == 2 * (2 * 2 + 2 + 2)
    assert {r["method"] for r in rows} == {"memagent", "full_context"}
    assert all(r["truncated"] for r in rows if r["method"] == "full_context" and r["input_tokens"] > 300)
    report = json.loads((tmp_path / "reports/eval_longcontext.json").read_text(encoding="utf-8"))
    assert report == result.metrics
    assert set(report["memagent"]) == {"hotpotqa", "squad", "needle_single", "needle_multivalue"}
    assert set(report["memagent"]["hotpotqa"]) == {"3", "6"}
    assert {"memagent/mean_correct", "full_context/mean_correct"} == set(report["mean"])
    hotpot_plot = json.loads((tmp_path / "reports/eval_longcontext_plots/hotpotqa.json").read_text(encoding="utf-8"))
    assert [p["length"] for p in hotpot_plot] == [3, 6] and {"memagent", "full_context"} <= set(hotpot_plot[0])
    assert hotpot_plot[0]["input_tokens"] < hotpot_plot[1]["input_tokens"]
    (eval_run,) = stage_runs(tracking_config, "eval_longcontext")
    assert eval_run.data.metrics["memagent/hotpotqa/6/sub_em"] == report["memagent"]["hotpotqa"]["6"]["sub_em"]
    artifacts = {a.path for a in client.list_artifacts(eval_run.info.run_id, "eval_longcontext")}
    assert "eval_longcontext/accuracy_vs_length.png" in artifacts and "eval_longcontext/summary.json" in artifacts
    assert [a.path for a in client.list_artifacts(eval_run.info.run_id, "model")] == ["model/memforge_model.json"]


def test_changed_settings_start_training_afresh(tmp_path: Path, tiny_model_dir: Path, tracking_config) -> None:
    params = stage_params(tmp_path, tiny_model_dir, tracking_config)
    run_stage("longcontext_data", params)

    def train(train_config) -> tuple[str | None, float, float]:
        """Run the stage; the checkpoint it resumed from (from the model card), its steps, and whether it reused the
        warm-up."""
        result = run_stage("memagent_train", replace(params, memagent=replace(params.memagent, train=train_config)))
        card = json.loads((tmp_path / "models/memagent/memforge_model.json").read_text(encoding="utf-8"))
        return card["memagent"]["resumed_from"], result.metrics["steps"], result.metrics["warmup"]["reused"]

    assert train(replace(params.memagent.train, max_steps=1)) == (None, 1, 0.0)
    # more steps, same run: resumes from checkpoint-1, and the finished warm-up is reused
    resumed_from, steps, reused = train(params.memagent.train)
    assert resumed_from and resumed_from.endswith("checkpoint-1") and steps == 2 and reused == 1.0
    # another learning rate is another run: the old checkpoints are cleared, the warm-up and training start afresh
    assert train(replace(params.memagent.train, learning_rate=1e-3)) == (None, 2, 0.0)


def test_missing_sets_are_clear_errors(tmp_path: Path, tiny_model_dir: Path, tracking_config) -> None:
    params = stage_params(tmp_path, tiny_model_dir, tracking_config)
    with pytest.raises(InputError, match=r"hotpotqa_train\.jsonl: training set not found"):
        run_stage("memagent_train", params)
    with pytest.raises(InputError, match=r"hotpotqa_eval\.jsonl: evaluation set not found"):
        run_stage("eval_longcontext", params)
    assert [r.info.status for r in stage_runs(tracking_config, "memagent_train")] == ["FAILED"]


def test_evaluation_reads_all_groups_side_by_side_with_the_answers_of_one_group_at_a_time(
    tmp_path: Path, tiny_model_dir: Path, tracking_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy answers and rows do not depend on which questions are batched together; the generate calls drop
    from one set per (task, length) group to one per chunk step, one for the answers and one for the baseline."""
    from components.evaluation.longcontext import evaluate, groups, load_eval_samples
    from components.llm.backends import TransformersBackend
    from components.stages.eval_longcontext import set_paths
    from tests.llm_fixtures import build_chatty_model

    chatty = build_chatty_model(tiny_model_dir, tmp_path / "chatty")
    params = stage_params(tmp_path, tiny_model_dir, tracking_config)
    params = replace(
        params, memagent=replace(params.memagent, eval=replace(params.memagent.eval, model_name_or_path=str(chatty)))
    )
    run_stage("longcontext_data", params)
    samples = load_eval_samples(set_paths(params))
    calls: list[int] = []
    generate = TransformersBackend.generate

    def counted(self: TransformersBackend, conversations, sampling=None):
        calls.append(len(conversations))
        return generate(self, conversations, sampling)

    monkeypatch.setattr(TransformersBackend, "generate", counted)
    together = [row.to_dict() for row in evaluate(params, samples)]
    calls_together = calls[:]
    calls.clear()
    one_group_at_a_time = [row.to_dict() for _, members in groups(samples) for row in evaluate(params, members)]

    assert together == one_group_at_a_time
    assert len({row["prediction"] for row in together}) > 1  # the answers really differ
    *steps, answers, baseline = calls_together
    assert steps[0] == answers == baseline == len(samples) and steps == sorted(steps, reverse=True)
    group_count = sum(1 for _ in groups(samples))
    assert group_count > 1 and len(calls) >= 3 * group_count > len(calls_together)
