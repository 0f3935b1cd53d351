"""Names memforge gives things in the MLflow model registry: aliases and version tags, written once here.

``register`` writes the lineage tags on every new version; ``promote`` reads the evaluation tags to compare a
challenger with the champion and writes the decision tags.
"""

from __future__ import annotations

from pathlib import Path

CHALLENGER = "challenger"  # alias of the newest registered version
CHAMPION = "champion"  # alias of the version in use
MODEL_ARTIFACT = "model"  # the pyfunc artifact holding the trained model folder (models:/ resolution reads it)

PREFIX = "memforge."
GIT_COMMIT = f"{PREFIX}git_commit"  # the commit the model was trained at
MODEL_DIGEST = f"{PREFIX}model_digest"  # DVC digest of the model folder: the identity of a registration
DATA_DIGEST = f"{PREFIX}data_digest"  # DVC digests of the training data, one tag per dataset (suffix: its path)
PARAMS_DIGEST = f"{PREFIX}params_digest"  # digest of the params sections the model's stages read
EVAL_SET_DIGEST = f"{PREFIX}eval_set_digest"  # identity of the evaluation set: only equal ones are compared
EVAL_METRIC = f"{PREFIX}eval."  # + a metric's '/'-joined key in the evaluation report; the value as a float
RUN_ID = f"{PREFIX}run_id"  # the MLflow run of the register stage
TRAINING_SCOPE = f"{PREFIX}training_scope"  # model.training_scope from the model card: smoke (CPU default) or full

PROMOTION = f"{PREFIX}promotion."  # + decision, challenger_score, champion_score, champion_version, run_id


def eval_metric_tag(metric: str) -> str:
    """The version tag holding evaluation metric ``metric`` (``score/containment``)."""
    return f"{EVAL_METRIC}{metric}"


def data_digest_tag(path: str | Path) -> str:
    """The version tag holding a training dataset's digest: ``DATA_DIGEST`` + ``.`` + its path."""
    return f"{DATA_DIGEST}.{Path(path).as_posix().lstrip('/')}"
