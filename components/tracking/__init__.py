"""MLflow tracking shared by every stage: one run per stage, nested under a pipeline run when given."""

from components.tracking.runs import (
    PARENT_RUN_ENV,
    StageRun,
    dvc_digest,
    end_pipeline_run,
    git_commit,
    resolve_tracking_uri,
    stage_run,
    start_pipeline_run,
)

__all__ = [
    "PARENT_RUN_ENV",
    "StageRun",
    "dvc_digest",
    "end_pipeline_run",
    "git_commit",
    "resolve_tracking_uri",
    "stage_run",
    "start_pipeline_run",
]
