"""The memforge pipeline flow: the DVC stages in order, one Prefect task each, under one MLflow run.

With no Prefect server configured, calling the flow starts Prefect's temporary local server; with
``PREFECT_API_URL`` set it reports to that server. ``prefect.yaml`` deploys it to a process work pool
so runs can be scheduled, and parameters set, from the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from components.config import load_params, render_params, to_dict
from components.io import write_text_atomic
from components.stages.registry import Group, select_stages
from components.tracking import PARENT_RUN_ENV, end_pipeline_run, start_pipeline_run
from flows.dvc_tasks import run_dvc_stage


def apply_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Validate ``key=value`` overrides against the typed config and write them into params.yaml.

    This is what ``dvc exp run -S`` does to the workspace; DVC then sees the changed params and
    re-runs exactly the stages that depend on them.
    """
    params = load_params(params_file, overrides)
    write_text_atomic(params_file, render_params(params))


@flow(name="memforge-pipeline", log_prints=True)
def memforge_pipeline(
    stages: list[str] | None = None,
    group: Group = "all",
    params_overrides: dict[str, Any] | None = None,
    params_file: str = "params.yaml",
    repo_dir: str = ".",
) -> dict[str, Any]:
    """Run the DVC stages in pipeline order (``stages``, else every stage of ``group``); DVC skips unchanged ones."""
    logger = get_run_logger()
    chosen = select_stages(stages, group)
    repo = Path(repo_dir).resolve()
    params_path = repo / params_file
    if params_overrides:
        apply_overrides(params_path, params_overrides)
    params = load_params(params_path)
    stage_task = run_dvc_stage.with_options(
        retries=params.pipeline.retries, retry_delay_seconds=params.pipeline.retry_delay_seconds
    )
    parent_run = start_pipeline_run(
        _repo_relative(params, repo), "pipeline", {"stages": chosen, "overrides": params_overrides or {}}
    )
    logger.info("MLflow pipeline run %s; stages: %s", parent_run, ", ".join(chosen))
    outcomes = []
    try:
        for stage in chosen:
            outcome = stage_task(stage, repo_dir=str(repo), env={PARENT_RUN_ENV: parent_run})
            outcomes.append(outcome.to_dict())
    except BaseException:
        end_pipeline_run(_repo_relative(params, repo), parent_run, "FAILED", {"stages": outcomes})
        raise
    summary = {"mlflow_run_id": parent_run, "stages": outcomes, "params": to_dict(params.pipeline)}
    end_pipeline_run(_repo_relative(params, repo), parent_run, "FINISHED", summary)
    return summary


def _repo_relative(params: Any, repo: Path) -> Any:
    """Tracking config whose local store path is anchored at the repo, wherever the flow was started."""
    from dataclasses import replace

    store = Path(params.tracking.store_dir)
    return replace(params.tracking, store_dir=str(store if store.is_absolute() else repo / store))


if __name__ == "__main__":
    memforge_pipeline()
