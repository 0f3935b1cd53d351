"""Promotion on a real temporary SQLite registry: better, worse, within margin, first model, rollback, retried
registration, different evaluation sets, a failure before the alias move; the ``memforge promote`` command and the
Prefect flow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from components.cli import main
from components.config import Params, RegisteredModelConfig, TrackingConfig
from components.errors import ConfigError, ModelLoadError
from components.model_registry import tags
from components.model_registry.promote import (
    CHALLENGER_SCORE_TAG,
    CHAMPION_SCORE_TAG,
    CHAMPION_VERSION_TAG,
    DECISION_TAG,
    PENDING,
    RUN_ID_TAG,
    compare,
    promote,
    promote_models,
)
from tests.llm_fixtures import free_port
from tests.registry_fixtures import FailingClient, LoggedModel, Registry, registry

NAME = "memforge-membuilder"
METRIC = "score/containment"
CFG = RegisteredModelConfig(name=NAME, metric=METRIC, greater_is_better=True, margin=0.05)


@pytest.fixture
def reg(tracking_config: TrackingConfig) -> Registry:
    return registry(tracking_config)


@pytest.fixture
def logged(reg: Registry, tmp_path: Path) -> LoggedModel:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    return reg.log_model(folder)


def _with_champion(reg: Registry, logged: LoggedModel, score: float = 0.40) -> int:
    version = reg.add_version(NAME, logged, {METRIC: score})
    assert promote(reg.client, CFG, tracking=reg.tracking).decision == "first_champion"
    return version


def _runs(reg: Registry) -> list:
    experiment = reg.client.get_experiment_by_name(reg.tracking.experiment)
    return reg.client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.runName = 'promote-{NAME}'")


@pytest.mark.parametrize(
    ("challenger", "champion", "greater_is_better", "expected"),
    [
        (0.50, 0.40, True, "promoted"),
        (0.43, 0.40, True, "within_margin"),
        (0.45, 0.40, True, "within_margin"),  # exactly the margin is not more than it
        (0.40, 0.40, True, "kept_champion"),
        (0.30, 0.40, True, "kept_champion"),
        (0.30, 0.40, False, "promoted"),
        (0.38, 0.40, False, "within_margin"),
        (0.50, 0.40, False, "kept_champion"),
    ],
)
def test_compare_moves_only_when_better_by_more_than_the_margin(
    challenger: float, champion: float, greater_is_better: bool, expected: str
) -> None:
    cfg = replace(CFG, greater_is_better=greater_is_better)
    decision, reason = compare(challenger, champion, cfg)
    assert decision == expected
    assert f"challenger {challenger:g}, champion {champion:g}" in reason


def test_first_model_becomes_champion_and_the_decision_is_recorded(reg: Registry, logged: LoggedModel) -> None:
    version = reg.add_version(NAME, logged, {METRIC: 0.4})
    decision = promote(reg.client, CFG, tracking=reg.tracking)
    assert (decision.decision, decision.champion_version_before, decision.champion_version_after) == (
        "first_champion",
        None,
        version,
    )
    assert reg.aliases(NAME) == {tags.CHALLENGER: version, tags.CHAMPION: version}
    recorded = reg.version_tags(NAME, version)
    assert recorded[DECISION_TAG] == "first_champion"
    assert float(recorded[CHALLENGER_SCORE_TAG]) == 0.4 and recorded[CHAMPION_SCORE_TAG] == ""
    assert recorded[RUN_ID_TAG] == decision.run_id
    run = reg.client.get_run(decision.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"promote-{NAME}"
    assert run.data.metrics == {"challenger_score": 0.4}
    assert run.data.params["margin"] == "0.05" and run.data.tags[DECISION_TAG] == "first_champion"


def test_better_challenger_is_promoted_with_both_scores_recorded(reg: Registry, logged: LoggedModel) -> None:
    first = _with_champion(reg, logged)
    second = reg.add_version(NAME, logged, {METRIC: 0.5})
    decision = promote(reg.client, CFG, tracking=reg.tracking)
    assert decision.decision == "promoted" and (decision.challenger_score, decision.champion_score) == (0.5, 0.4)
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: second}
    recorded = reg.version_tags(NAME, second)
    assert recorded[DECISION_TAG] == "promoted" and recorded[CHAMPION_VERSION_TAG] == str(first)
    assert (float(recorded[CHALLENGER_SCORE_TAG]), float(recorded[CHAMPION_SCORE_TAG])) == (0.5, 0.4)
    assert reg.client.get_run(decision.run_id).data.metrics == {"challenger_score": 0.5, "champion_score": 0.4}


@pytest.mark.parametrize(("score", "expected"), [(0.30, "kept_champion"), (0.43, "within_margin")])
def test_worse_or_within_margin_challenger_leaves_the_champion(
    reg: Registry, logged: LoggedModel, score: float, expected: str
) -> None:
    first = _with_champion(reg, logged)
    second = reg.add_version(NAME, logged, {METRIC: score})
    decision = promote(reg.client, CFG, tracking=reg.tracking)
    assert decision.decision == expected and decision.champion_version_after == first
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: first}
    assert reg.version_tags(NAME, second)[DECISION_TAG] == expected
    assert reg.version_tags(NAME, first)[DECISION_TAG] == "first_champion"


def test_rollback_sets_the_champion_and_an_unknown_version_is_refused(reg: Registry, logged: LoggedModel) -> None:
    first = _with_champion(reg, logged)
    second = reg.add_version(NAME, logged, {METRIC: 0.9})
    assert promote(reg.client, CFG, tracking=reg.tracking).decision == "promoted"
    decision = promote(reg.client, CFG, first, tracking=reg.tracking)
    assert (decision.decision, decision.champion_version_before, decision.champion_version_after) == (
        "rolled_back",
        second,
        first,
    )
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: first}
    assert promote(reg.client, CFG, first, tracking=reg.tracking).decision == "already_champion"
    with pytest.raises(ModelLoadError, match=f"version 7 of registered model '{NAME}': not found"):
        promote(reg.client, CFG, 7, tracking=reg.tracking)
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: first}


def test_retried_registration_then_promoting_twice_moves_nothing_the_second_time(
    reg: Registry, logged: LoggedModel
) -> None:
    version = reg.add_version(NAME, logged, {METRIC: 0.4})
    reg.client.set_registered_model_alias(NAME, tags.CHALLENGER, str(version))  # the retried register stage
    assert promote(reg.client, CFG, tracking=reg.tracking).decision == "first_champion"
    before = (reg.aliases(NAME), reg.version_tags(NAME, version))
    again = promote(reg.client, CFG, tracking=reg.tracking)
    assert again.decision == "already_champion"
    assert again.champion_version_before == again.champion_version_after == version
    assert (reg.aliases(NAME), reg.version_tags(NAME, version)) == before
    assert len(_runs(reg)) == 2


def test_scores_on_different_evaluation_sets_are_never_compared(reg: Registry, logged: LoggedModel) -> None:
    first = _with_champion(reg, logged)
    second = reg.add_version(NAME, logged, {METRIC: 0.99}, eval_set="eval-set-b")
    decision = promote(reg.client, CFG, tracking=reg.tracking)
    assert decision.decision == "incomparable" and "different evaluation sets" in decision.reason
    assert "eval-set-a" in decision.reason and "eval-set-b" in decision.reason
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: first}
    assert reg.version_tags(NAME, second)[DECISION_TAG] == "incomparable"


def test_failure_before_the_alias_move_leaves_aliases_and_claims_nothing(reg: Registry, logged: LoggedModel) -> None:
    first = _with_champion(reg, logged)
    second = reg.add_version(NAME, logged, {METRIC: 0.9})
    failing = FailingClient(reg.client, "set_registered_model_alias")
    with pytest.raises(ModelLoadError, match=f"moving alias 'champion' of registered model '{NAME}' to version 2"):
        promote(failing, CFG, tracking=reg.tracking)  # type: ignore[arg-type]
    assert failing.failed == 1
    assert reg.aliases(NAME) == {tags.CHALLENGER: second, tags.CHAMPION: first}
    assert reg.version_tags(NAME, second)[DECISION_TAG] == PENDING
    [failed_run] = [run for run in _runs(reg) if run.info.status != "FINISHED"]
    assert failed_run.info.status == "FAILED" and DECISION_TAG not in failed_run.data.tags
    assert "lost during set_registered_model_alias" in failed_run.data.tags["memforge.error"]
    assert promote(reg.client, CFG, tracking=reg.tracking).decision == "promoted"  # a retry completes it
    assert reg.aliases(NAME)[tags.CHAMPION] == second
    assert reg.version_tags(NAME, second)[DECISION_TAG] == "promoted"


def test_bad_registry_state_gives_errors_naming_model_alias_and_tag(reg: Registry, logged: LoggedModel) -> None:
    unknown = replace(CFG, name="memforge-nope")
    with pytest.raises(ModelLoadError, match="registered model 'memforge-nope': not found in the MLflow registry at"):
        promote(reg.client, unknown, tracking=reg.tracking)
    version = reg.add_version(NAME, logged, {METRIC: 0.4}, challenger=False)
    with pytest.raises(ModelLoadError, match=f"'{NAME}' has no alias 'challenger' \\(aliases: none\\)"):
        promote(reg.client, CFG, tracking=reg.tracking)
    reg.client.set_registered_model_alias(NAME, tags.CHALLENGER, str(version))
    other_metric = replace(CFG, metric="score/f1")
    with pytest.raises(ModelLoadError, match=f"version {version} of registered model '{NAME}' has no tag "):
        promote(reg.client, other_metric, tracking=reg.tracking)
    assert reg.aliases(NAME) == {tags.CHALLENGER: version}
    assert DECISION_TAG not in reg.version_tags(NAME, version) and _runs(reg) == []


def _params_file(tmp_path: Path, tracking: TrackingConfig) -> Path:
    file = tmp_path / "params.yaml"
    section = {"experiment": tracking.experiment, "store_dir": tracking.store_dir}
    file.write_text(yaml.safe_dump({"tracking": section}), encoding="utf-8")
    return file


def test_promote_command_prints_decisions_and_exits_zero(
    reg: Registry, logged: LoggedModel, tmp_path: Path, capsys
) -> None:
    params = _params_file(tmp_path, reg.tracking)
    reg.add_version(NAME, logged, {METRIC: 0.4})
    assert main(["--params", str(params), "promote", "--model", "membuilder"]) == 0
    [decision] = json.loads(capsys.readouterr().out)
    assert (decision["model"], decision["decision"], decision["champion_version_after"]) == (NAME, "first_champion", 1)
    reg.add_version(NAME, logged, {METRIC: 0.3}, eval_set="eval-set-b")
    no_margin = ["-S", "register.membuilder.margin=0"]
    assert main(["--params", str(params), "promote", "--model", "membuilder", *no_margin]) == 0
    [decision] = json.loads(capsys.readouterr().out)
    assert decision["decision"] == "incomparable" and "not compared" in decision["reason"]


def test_promote_command_errors_exit_non_zero_and_move_nothing(
    reg: Registry, logged: LoggedModel, tmp_path: Path, capsys
) -> None:
    params = _params_file(tmp_path, reg.tracking)
    reg.add_version(NAME, logged, {METRIC: 0.4})
    assert main(["--params", str(params), "promote", "--to-version", "1"]) == 2
    assert "needs one model" in capsys.readouterr().err
    assert main(["--params", str(params), "promote"]) == 2  # memforge-memagent is not registered: nothing moves
    assert "registered model 'memforge-memagent': not found" in capsys.readouterr().err
    assert reg.aliases(NAME) == {tags.CHALLENGER: 1}
    assert main(["--params", str(params), "promote", "--model", "membuilder", "--to-version", "3"]) == 2
    err = capsys.readouterr().err
    assert f"version 3 of registered model '{NAME}': not found" in err and "Traceback" not in err


def test_unreachable_registry_is_a_clear_error_naming_its_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(ModelLoadError, match=f"registered model '{NAME}': the MLflow registry at {uri} failed"):
        promote_models(Params(), "membuilder")


def test_unknown_model_key_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'writer'; choose one of membuilder, memagent, all"):
        promote_models(Params(), "writer")


def test_prefect_flow_calls_the_same_promotion(reg: Registry, logged: LoggedModel, tmp_path: Path) -> None:
    from flows.promote import memforge_promote

    params = _params_file(tmp_path, reg.tracking)
    version = reg.add_version(NAME, logged, {METRIC: 0.4})
    [decision] = memforge_promote.fn(model="membuilder", params_file=str(params))
    assert decision["decision"] == "first_champion"
    assert reg.aliases(NAME)[tags.CHAMPION] == version
