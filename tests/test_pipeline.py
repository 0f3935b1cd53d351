"""End to end: `dvc repro` in a temporary git repo, and the Prefect flow under the test harness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from components.config import (
    ADRPOConfig,
    EvalDialogueConfig,
    EvalLongContextConfig,
    IngestConfig,
    LongContextConfig,
    MemAgentConfig,
    MemAgentTrainConfig,
    MemoryConfig,
    ModelConfig,
    Params,
    ReaderConfig,
    SFTConfig,
    SourceConfig,
    SyntheticConfig,
    SynthQAConfig,
    render_params,
)
from components.stages.closure import covered, stage_closure
from components.stages.registry import STAGE_NAMES
from tests.helpers import REPO_ROOT, git_init

pytestmark = pytest.mark.slow

ALL_STAGES = STAGE_NAMES
ALWAYS_RUN = {"register"}  # always_changed in dvc.yaml: the registry is state DVC cannot see
# what a new dialogue split changes: the MemBuilder chain; the long-context chain does not read dialogues
DIALOGUE_CHAIN = ("ingest", "expert", "synth_qa", "sft", "adrpo", "eval_dialogue", "register")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def make_pipeline_repo(root: Path, model_dir: Path, fixtures: Path) -> Path:
    """A git + DVC repo with memforge's dvc.yaml and code, small sources and the tiny model."""
    repo = root / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "components", repo / "components", ignore=shutil.ignore_patterns("__pycache__"))
    params = Params(
        model=ModelConfig(name_or_path=str(model_dir)),
        ingest=IngestConfig(
            sources=(SourceConfig("jsonl", str(fixtures / "conversations.jsonl")), SourceConfig("synthetic", "")),
            synthetic=SyntheticConfig(num_conversations=4, sessions_per_conversation=2),
        ),
        memory=MemoryConfig(embedder="hashing"),
        # a corpus this small cannot hold the 50/30/20 mix; its eval split is the injection-only conversation
        synth_qa=SynthQAConfig(mix_tolerance=0.5, max_uncovered_fraction=0.5, splits=("sft", "rl")),
        sft=SFTConfig(max_steps=2, max_length=256),
        adrpo=ADRPOConfig(max_steps=1, max_completion_length=8, save_steps=1),
        longcontext=LongContextConfig(
            eval_questions=1,
            eval_lengths_docs=(3,),
            train_questions=1,
            train_docs=3,
            squad_eval_questions=1,
            squad_eval_lengths_docs=(3,),
            needle_tasks=("single",),
            needle_lengths_tokens=(256,),
            needle_samples=1,
            length_tolerance=0.3,
        ),
        memagent=MemAgentConfig(
            reader=ReaderConfig(chunk_tokens=256, memory_tokens=8, answer_tokens=4),
            train=MemAgentTrainConfig(max_steps=1, save_steps=1),
            eval=EvalLongContextConfig(baseline_context_tokens=300),
        ),
        # the held-out split may hold no question in a corpus this small: the LoCoMo fixture always does
        eval_dialogue=EvalDialogueConfig(
            sources=(SourceConfig("locomo", str(fixtures / "locomo_small.json")),),
            max_conversations=0,
            max_questions=2,
            writer_max_new_tokens=8,
            answer_max_new_tokens=4,
            full_context_tokens=1024,
        ),
    )
    (repo / "params.yaml").write_text(render_params(params), encoding="utf-8")
    (repo / ".gitignore").write_text("/.mlflow/\n", encoding="utf-8")
    git_init(repo)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([dvc, "init", "-q"], repo)
    _run([dvc, "config", "core.analytics", "false"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "pipeline"], repo)
    return repo


def assert_deep_change_reruns_its_stages(repo: Path, dvc: str, module: Path) -> None:
    """A change to ``module``, deep in some stages' import closures, marks exactly the stages whose deps cover it
    as changed (every stage whose closure holds it among them), and ``dvc repro`` would rerun those and only the
    stages downstream of them. The module is restored afterwards."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    in_closure = {stage for stage in ALL_STAGES if module in stage_closure(stage)}
    covering = {stage for stage in ALL_STAGES if covered(module, [str(d) for d in spec[stage]["deps"]])}
    assert in_closure and in_closure <= covering
    source = repo / module
    original = source.read_text(encoding="utf-8")
    source.write_text(original + "\n# a change deep in the import closure\n", encoding="utf-8")
    try:
        changed = set(json.loads(_run([dvc, "status", "--json"], repo).stdout)) - ALWAYS_RUN
        assert changed == covering, changed
        dry = _run([dvc, "repro", "--dry"], repo).stdout
        would_run = {stage for stage in ALL_STAGES if f"Running stage '{stage}'" in dry} - ALWAYS_RUN
        # a dry run cannot know which outputs will change, so downstream stages show only when their deps did
        assert covering <= would_run <= covering | downstream(spec, covering), dry
        assert would_run != set(ALL_STAGES)
    finally:
        source.write_text(original, encoding="utf-8")
    assert set(json.loads(_run([dvc, "status", "--json"], repo).stdout)) <= ALWAYS_RUN


def downstream(spec: dict, stages: set[str]) -> set[str]:
    """Stages that read, directly or not, an output of ``stages`` (from dvc.yaml's deps and outs)."""
    outs = {
        name: {str(o if isinstance(o, str) else next(iter(o))) for o in spec[name].get("outs", [])} for name in spec
    }
    reached = set(stages)
    while True:
        produced = set().union(*(outs[name] for name in reached))
        new = {name for name in spec if name not in reached and produced & {str(d) for d in spec[name]["deps"]}}
        if not new:
            return reached - stages
        reached |= new


def _skipped(output: str, stage: str) -> bool:
    return f"Stage '{stage}' didn't change, skipping" in output


def test_dvc_repro_runs_then_skips_then_reruns_only_what_changed(
    tmp_path: Path, tiny_model_dir: Path, fixtures_dir: Path
) -> None:
    repo = make_pipeline_repo(tmp_path, tiny_model_dir, fixtures_dir)
    dvc = str(Path(sys.executable).parent / "dvc")
    first = _run([dvc, "repro"], repo)
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "models/base/config.json").is_file()
    assert (repo / "models/base/memforge_model.json").is_file()
    counts = json.loads((repo / "data/dialogues/splits.json").read_text())["counts"]
    assert sum(counts.values()) == 3 + 4
    metrics = json.loads((repo / "reports/ingest_quality.json").read_text())
    assert metrics["conversations_kept"] == 7
    lock = (repo / "dvc.lock").read_text()
    assert "prepare_model:" in lock and "ingest:" in lock and "expert:" in lock
    assert json.loads((repo / "reports/expert.json").read_text())["sessions"] > 0
    assert json.loads((repo / "reports/synth_qa.json").read_text())["rl_prompts"] > 0
    assert (repo / "models/sft/config.json").is_file()
    assert (repo / "models/adrpo/config.json").is_file() and (repo / "checkpoints/adrpo/checkpoint-1").is_dir()
    assert (repo / "models/memagent/config.json").is_file()
    assert json.loads((repo / "reports/eval_longcontext.json").read_text())["mean"]
    dialogue = json.loads((repo / "reports/eval_dialogue.json").read_text())
    assert set(dialogue["methods"]) == {"adrpo", "sft", "base", "full_context", "rag", "expert"}
    assert "containment" in dialogue["score"]
    registered = json.loads((repo / "reports/register.json").read_text())
    assert registered["membuilder"]["version"] == 1 and registered["memagent"]["version"] == 1
    plots = _run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "--json"], repo).stdout
    assert "reports/eval_longcontext_plots/hotpotqa.json" in plots and "reports/adrpo_reward.json" in plots
    assert "reports/eval_longcontext_plots/squad.json" in plots

    second = _run([dvc, "repro"], repo)
    assert all(_skipped(second.stdout, s) for s in ALL_STAGES if s not in ALWAYS_RUN), second.stdout
    assert json.loads((repo / "reports/register.json").read_text())["membuilder"] == {"version": 1, "created": False}
    assert_deep_change_reruns_its_stages(repo, dvc, Path("components/qa/dates.py"))

    params = (repo / "params.yaml").read_text().replace("seed: 13", "seed: 99")
    (repo / "params.yaml").write_text(params)
    third = _run([dvc, "repro"], repo)
    assert _skipped(third.stdout, "prepare_model")
    for stage in ALL_STAGES:
        assert (f"Running stage '{stage}'" in third.stdout) == (stage in DIALOGUE_CHAIN), stage

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("memforge").experiment_id])
    stages = sorted(r.data.tags["memforge.stage"] for r in runs)
    # the new split changes the training conversations, so the MemBuilder chain reruns; register runs every time
    assert stages == sorted([*ALL_STAGES, *DIALOGUE_CHAIN, *ALWAYS_RUN])
    assert all(r.info.status == "FINISHED" for r in runs)


def test_prefect_flow_runs_stages_in_order_under_one_mlflow_run(
    prefect_harness: None, tmp_path: Path, tiny_model_dir: Path, fixtures_dir: Path
) -> None:
    from flows.pipeline import memforge_pipeline

    repo = make_pipeline_repo(tmp_path, tiny_model_dir, fixtures_dir)
    summary = memforge_pipeline(repo_dir=str(repo))
    assert [s["stage"] for s in summary["stages"]] == list(ALL_STAGES)
    assert not any(s["skipped"] for s in summary["stages"])

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("memforge")
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["memforge.stage"] == "pipeline"
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["memforge.stage"] for c in children) == sorted(ALL_STAGES)

    again = memforge_pipeline(repo_dir=str(repo))
    assert all(s["skipped"] == (s["stage"] not in ALWAYS_RUN) for s in again["stages"])

    # a parameter set from the UI is validated and then changes exactly the stages that use it, as a DVC
    # experiment: params.yaml is left as it was
    before = (repo / "params.yaml").read_bytes()
    rerun = memforge_pipeline(repo_dir=str(repo), params_overrides={"ingest.splits.seed": 5})
    assert {s["stage"]: s["skipped"] for s in rerun["stages"]} == {s: s not in DIALOGUE_CHAIN for s in ALL_STAGES}
    assert (repo / "params.yaml").read_bytes() == before
    shown = json.loads(_run([str(Path(sys.executable).parent / "dvc"), "exp", "show", "--json"], repo).stdout)
    [experiment] = [rev for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert experiment["name"] == rerun["dvc_experiment"]
    assert experiment["data"]["params"]["params.yaml"]["data"]["ingest"]["splits"]["seed"] == 5


def run_ingest_on_a_broken_source(repo: Path) -> Any:
    """The pipeline flow's ingest on a source whose one record lacks required fields, without retries: its state."""
    from flows.pipeline import memforge_pipeline

    broken = repo / "broken.jsonl"
    broken.write_text('{"conversation_id": "x", "speakers": []}\n', encoding="utf-8")
    return memforge_pipeline(
        repo_dir=str(repo),
        stages=["ingest"],
        params_overrides={"ingest.sources": [{"format": "jsonl", "path": str(broken)}], "pipeline.retries": 0},
        return_state=True,
    )


def test_prefect_flow_fails_clearly_and_marks_the_mlflow_run(
    prefect_harness: None, tmp_path: Path, tiny_model_dir: Path, fixtures_dir: Path
) -> None:
    repo = make_pipeline_repo(tmp_path, tiny_model_dir, fixtures_dir)
    state = run_ingest_on_a_broken_source(repo)
    assert state.is_failed()
    with pytest.raises(Exception, match="missing field"):
        state.result()
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("memforge").experiment_id])
    statuses = {r.data.tags["memforge.stage"]: r.info.status for r in runs}
    assert statuses == {"pipeline": "FAILED", "ingest": "FAILED"}


def test_a_failed_stage_gets_its_last_good_outputs_back_from_the_dvc_cache(
    prefect_harness: None, tmp_path: Path, tiny_model_dir: Path, fixtures_dir: Path
) -> None:
    """DVC removes a stage's outputs before running it; when the stage then fails, the flow checks them out again."""
    repo = make_pipeline_repo(tmp_path, tiny_model_dir, fixtures_dir)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([dvc, "repro", "ingest"], repo)
    good = (repo / "data/dialogues/sft.jsonl").read_bytes()
    state = run_ingest_on_a_broken_source(repo)
    assert state.is_failed()
    with pytest.raises(Exception, match="restored the last good outputs of ingest from the DVC cache"):
        state.result()
    assert (repo / "data/dialogues/sft.jsonl").read_bytes() == good
