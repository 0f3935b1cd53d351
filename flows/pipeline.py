"""The memforge pipeline flow: the DVC stages in order under one MLflow run, one workspace lock held throughout.

Without overrides each stage is its own Prefect task (``dvc repro --single-item``), so DVC skips unchanged ones;
one ``dvc status`` first finds the leading stages nothing changed, which start no task and no DVC process.
With overrides the run is an ordinary DVC experiment (``flows.experiment``): one ``dvc exp run -S ... <stages>``
task, listed by ``dvc exp show``, after which the workspace (``params.yaml`` first) is as it was. The stages and
overrides are validated before anything starts; the flow run links to its MLflow run (a Prefect link artifact) and
every MLflow run it makes carries the flow run's id and name.

With no Prefect server configured, calling the flow starts Prefect's temporary local server; with
``PREFECT_API_URL`` set it reports to that server. ``prefect.yaml`` deploys it to a process work pool so runs can
be scheduled, and parameters set, from the Prefect UI (the form comes from this signature).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.logging import get_run_logger

from components.config import Params, TrackingConfig, load_params, parse_yaml, to_dict
from components.io import read_text_strict
from components.stages.registry import STAGE_NAMES, Group, get_stage, select_stages
from components.tracking import PARENT_RUN_ENV, end_pipeline_run, resolve_tracking_uri, start_pipeline_run
from components.tracking.runs import FLOW_RUN_ID_ENV, FLOW_RUN_NAME_ENV, mlflow_ui_url
from flows.dvc_tasks import (
    StageOutcome,
    changed_stages,
    dvc_executable,
    run_dvc_experiment,
    run_dvc_stage,
    unchanged_prefix,
)
from flows.experiment import WorkspaceSnapshot, exp_run_command, experiment_name
from flows.identity import flow_identity
from flows.workspace import GPU_TAG, workspace_lock

# The stage names as a choice in the Prefect UI, generated from the registry (one list of stages).
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]


def validate_request(
    stages: list[str] | None, group: Group, overrides: dict[str, Any] | None, params_path: Path
) -> tuple[list[str], Params]:
    """The stages to run and the params they will see, or a ``ConfigError`` naming the unknown stage, group or
    override key (or the bad value) before any server, task or retry starts."""
    chosen = select_stages(stages, group)
    return chosen, load_params(params_path, overrides)


def link_mlflow_run(tracking: TrackingConfig, run_id: str) -> None:
    """A Prefect artifact on this flow run pointing to its MLflow run: a link when MLflow is a server, else how to
    open the local store."""
    from mlflow import MlflowClient
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    uri = resolve_tracking_uri(tracking)
    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    url = mlflow_ui_url(uri, f"experiments/{experiment_id}/runs/{run_id}")
    description = f"The MLflow run of this flow run (experiment {tracking.experiment})"
    if url:
        create_link_artifact(link=url, link_text=f"MLflow run {run_id}", key="mlflow-run", description=description)
    else:
        create_markdown_artifact(
            markdown=f"MLflow run `{run_id}` in `{uri}`: `mlflow ui --backend-store-uri {uri}`",
            key="mlflow-run",
            description=description,
        )


@flow(name="memforge-pipeline", log_prints=True)
def memforge_pipeline(
    stages: list[StageName] | None = None,
    group: Group = "all",
    params_overrides: dict[str, Any] | None = None,
    params_file: str = "params.yaml",
    repo_dir: str = ".",
) -> dict[str, Any]:
    """Run memforge's DVC stages in pipeline order under one MLflow run; DVC skips unchanged ones.

    Args:
        stages: Stages to run, in pipeline order whatever the order given; none: every stage of the group.
        group: The stages to run when none are named: all, membuilder, memagent or evaluation.
        params_overrides: params.yaml values for this run only, as dotted keys, e.g. {"ingest.splits.seed": 3}.
            The run is a DVC experiment (dvc exp run -S), listed by dvc exp show; params.yaml stays as it was.
        params_file: The params file, relative to the workspace.
        repo_dir: The DVC workspace (default: the deployment's working directory).
    """
    repo = Path(repo_dir).resolve()
    chosen, params = validate_request(stages, group, params_overrides, repo / params_file)  # before anything runs
    logger = get_run_logger()
    tracking = _repo_relative(params.tracking, repo)
    identity = flow_identity()
    with workspace_lock(repo) as lock:
        logger.info("holding the workspace lock %s", lock)
        parent_run = start_pipeline_run(
            tracking, "pipeline", {"stages": chosen, "overrides": params_overrides or {}}, flow_env=identity
        )
        link_mlflow_run(tracking, parent_run)
        logger.info("MLflow pipeline run %s; stages: %s", parent_run, ", ".join(chosen))
        env = {PARENT_RUN_ENV: parent_run, **identity}
        summary: dict[str, Any] = {"mlflow_run_id": parent_run, "stages": []}
        try:
            if params_overrides:
                summary |= _run_experiment(chosen, params_overrides, params, repo, params_file, identity, env)
            else:
                summary["stages"] = _run_stages(chosen, params, repo, env)
        except BaseException:
            end_pipeline_run(tracking, parent_run, "FAILED", summary)
            raise
        summary["params"] = to_dict(params.pipeline)
        end_pipeline_run(tracking, parent_run, "FINISHED", summary)
    return summary


def _retrying(task: Any, params: Params, stages: list[str]) -> Any:
    """``task`` with the pipeline's retries, tagged ``gpu`` when it runs a GPU stage."""
    tags = {GPU_TAG} if any(get_stage(name).gpu for name in stages) else set()
    return task.with_options(
        retries=params.pipeline.retries, retry_delay_seconds=params.pipeline.retry_delay_seconds, tags=tags
    )


def _run_stages(chosen: list[str], params: Params, repo: Path, env: dict[str, str]) -> list[dict[str, object]]:
    """One ``dvc repro --single-item`` task per stage, in order, from the first stage ``dvc status`` finds changed;
    the unchanged stages before it are reported skipped without starting DVC for each."""
    start = unchanged_prefix(chosen, changed_stages(str(repo), chosen))
    if start:
        get_run_logger().info("unchanged since dvc.lock (dvc status), not run: %s", ", ".join(chosen[:start]))
    skipped = [StageOutcome(stage=stage, skipped=True, log_tail="").to_dict() for stage in chosen[:start]]
    ran = [_retrying(run_dvc_stage, params, [stage])(stage, repo_dir=str(repo), env=env) for stage in chosen[start:]]
    return skipped + [outcome.to_dict() for outcome in ran]


def _run_experiment(
    chosen: list[str],
    overrides: dict[str, Any],
    params: Params,
    repo: Path,
    params_file: str,
    identity: dict[str, str],
    env: dict[str, str],
) -> dict[str, Any]:
    """The chosen stages as one DVC experiment named after the flow run; the workspace restored after it."""
    name = experiment_name(identity[FLOW_RUN_NAME_ENV], identity[FLOW_RUN_ID_ENV])
    raw = parse_yaml(read_text_strict(repo / params_file), params_file) or {}
    command = exp_run_command(dvc_executable(), chosen, overrides, raw, name, params_file)
    snapshot = WorkspaceSnapshot.take(repo, params_file)
    outcomes = _retrying(run_dvc_experiment, params, chosen)(name, command, snapshot, repo_dir=str(repo), env=env)
    return {"dvc_experiment": name, "stages": [outcome.to_dict() for outcome in outcomes]}


def _repo_relative(tracking: TrackingConfig, repo: Path) -> TrackingConfig:
    """Tracking config whose local store path is anchored at the repo, wherever the flow was started."""
    store = Path(tracking.store_dir)
    return replace(tracking, store_dir=str(store if store.is_absolute() else repo / store))


if __name__ == "__main__":
    memforge_pipeline()
