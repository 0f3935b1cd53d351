"""Registering a trained model in the MLflow model registry: one version per model folder, alias ``challenger``.

``prepare_registration`` checks the evaluation report (it holds the promotion metric) and computes the version's
tags before the registry is touched; ``register_all`` loads every model folder no version holds yet (all of them
before any is registered: a corrupt folder registers nothing) and then registers each with ``register``, which

1. returns the existing version, moving nothing, when a version of the model already carries the folder's digest
   (``MODEL_DIGEST``: ``dvc_digest``, DVC's digest of the folder as it is in the workspace), so a retried or
   repeated run creates no new version;
2. otherwise logs the pyfunc model under the run (an MLflow logged model: ``components.model_registry.pyfunc``),
   creates the version with all its tags in one request, and moves ``challenger`` to it last. If the alias cannot
   be moved the new version is deleted again and the error re-raised: no half-registered version.

Tags of a new version (names in ``components.model_registry.tags``): the git commit, the model digest, one DVC digest
per training dataset, the params digest, the evaluation set digest, every numeric leaf of the evaluation report
(``eval_metric_tag(key)``, the value as a float) and the run id. ``eval_set_digest`` names what was evaluated:
promotion only compares scores whose evaluation set digests are equal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import RegisteredModelConfig
from components.errors import InputError
from components.io import load_json_file
from components.model_registry.client import check_registry
from components.model_registry.tags import (
    CHALLENGER,
    EVAL_SET_DIGEST,
    GIT_COMMIT,
    MODEL_DIGEST,
    PARAMS_DIGEST,
    RUN_ID,
    TRAINING_SCOPE,
    data_digest_tag,
    eval_metric_tag,
)
from components.tracking.publish import numeric_leaves
from components.tracking.runs import dvc_digest, git_commit

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel

    from components.model_registry.pyfunc import Kind

logger = logging.getLogger(__name__)

MAX_TAG_KEY = 250  # MLflow's limit on a model version tag key
_TAG_KEY = re.compile(r"^[\w\-. /]+$")  # the characters MLflow allows in a tag key


@dataclass(frozen=True)
class RegistrationResult:
    """The version a registration ended on, and whether this registration created it."""

    name: str
    version: int
    created: bool

    def metrics(self) -> dict[str, int | bool]:
        """``{"version": N, "created": bool}``: what the register stage reports."""
        return {"version": self.version, "created": self.created}


@dataclass(frozen=True)
class Registration:
    """A checked registration, ready to commit: the model, its pyfunc settings and the new version's tags."""

    cfg: RegisteredModelConfig
    kind: Kind
    model_dir: Path
    settings: Mapping[str, Any]
    digest: str
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""  # the model card's note, shown on the version page


# ---------------------------------------------------------------------------------------------
# digests


def canonical_digest(obj: Any) -> str:
    """md5 of ``obj`` as canonical JSON (sorted keys): equal settings give equal digests."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def eval_set_digest(paths: Sequence[str | Path], selection: Mapping[str, Any]) -> str:
    """The identity of an evaluation set: the workspace digests of its files (in order) and the settings that select
    and judge its questions. A missing file is an ``InputError`` naming it."""
    for path in paths:
        if not Path(path).exists():
            raise InputError(path, "evaluation set file not found")
    return canonical_digest({"files": [dvc_digest(path) for path in paths], "selection": dict(selection)})


def lineage_tags(data_paths: Sequence[str | Path], params_sections: Mapping[str, Any]) -> dict[str, str]:
    """The training-lineage tags: each dataset's workspace digest and the digest of the params sections the model's
    stages read."""
    tags = {data_digest_tag(path): dvc_digest(path) for path in data_paths}
    tags[PARAMS_DIGEST] = canonical_digest(dict(params_sections))
    return tags


# ---------------------------------------------------------------------------------------------
# checks


def check_model_folder(model_dir: str | Path) -> None:
    """Load the model folder once (config, weights, tokenizer); a missing or corrupt one is a ``ModelLoadError``
    naming it."""
    from components.llm.model_assets import load_model_folder

    model, tokenizer = load_model_folder(model_dir, "auto")
    del model, tokenizer


def training_scope(model_dir: Path) -> tuple[str, str]:
    """The model card's training scope and note (``model.training_scope``); ``("unknown", "")`` for a folder
    memforge did not write (no card)."""
    from components.errors import ModelLoadError
    from components.llm.model_assets import read_model_card

    try:
        card = read_model_card(model_dir)
    except ModelLoadError:
        return "unknown", ""
    return card.training_scope, card.note


def evaluation_tags(report_path: str | Path, cfg: RegisteredModelConfig) -> dict[str, str]:
    """``eval_metric_tag(key) -> value`` for every numeric leaf of the evaluation report. The promotion metric
    (``cfg.metric``) must be among them; a leaf whose key MLflow cannot store as a tag is skipped with a warning."""
    report = load_json_file(report_path)
    if not isinstance(report, dict):
        raise InputError(report_path, "an evaluation report must be a JSON object")
    leaves = numeric_leaves(report)
    if cfg.metric not in leaves:
        raise InputError(report_path, f"no numeric metric '{cfg.metric}' (the metric {cfg.name} is promoted on)")
    tags = {}
    for key, value in leaves.items():
        tag = eval_metric_tag(key)
        if _TAG_KEY.match(tag) and len(tag) <= MAX_TAG_KEY and os.path.normpath(tag) == tag:
            tags[tag] = repr(value)
        elif key == cfg.metric:
            raise InputError(report_path, f"metric key '{key}' cannot be an MLflow tag key")
        else:
            logger.warning("%s: metric '%s' is not a valid MLflow tag key; not tagged", report_path, key)
    return tags


def prepare_registration(
    cfg: RegisteredModelConfig,
    kind: Kind,
    model_dir: str | Path,
    settings: Mapping[str, Any],
    *,
    eval_report_path: str | Path,
    eval_set_digest: str,
    lineage: Mapping[str, str],
) -> Registration:
    """Check the evaluation report and compute the version's tags (all but the run id); nothing is registered yet
    and the model folder is not loaded (``register_all`` loads it when no version holds its digest)."""
    folder = Path(model_dir)
    scope, note = training_scope(folder)
    digest = dvc_digest(folder)
    tags = {
        GIT_COMMIT: git_commit(),
        MODEL_DIGEST: digest,
        TRAINING_SCOPE: scope,
        EVAL_SET_DIGEST: eval_set_digest,
        **lineage,
        **evaluation_tags(eval_report_path, cfg),
    }
    return Registration(
        cfg=cfg, kind=kind, model_dir=folder, settings=dict(settings), digest=digest, tags=tags, description=note
    )


# ---------------------------------------------------------------------------------------------
# the registry


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        with contextlib.suppress(MlflowException):  # created meanwhile by another run
            client.create_registered_model(name, description="memforge: registered by the register stage")


def find_version(client: MlflowClient, name: str, digest: str) -> int | None:
    """The lowest version of ``name`` registered from the model folder with DVC digest ``digest``, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{MODEL_DIGEST}` = '{digest}'")
    return min((int(v.version) for v in found), default=None)


def log_pyfunc(client: MlflowClient, run_id: str, registration: Registration) -> LoggedModel:
    """Log the registration's pyfunc model as an MLflow logged model of run ``run_id`` (finalized READY)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from components.model_registry.pyfunc import save_pyfunc

    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id, name=registration.kind, source_run_id=run_id, tags={MODEL_DIGEST: registration.digest}
    )
    try:
        with tempfile.TemporaryDirectory(prefix="memforge-pyfunc-") as tmp:
            local = Path(tmp) / "model"
            save_pyfunc(registration.kind, registration.model_dir, registration.settings, local)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        return client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise


def register(client: MlflowClient, registration: Registration, run_id: str, existing: int | None) -> RegistrationResult:
    """Register the prepared model (see the module docstring): ``existing``, the version that already holds the
    folder's digest (``find_version``), moving nothing; else a new version with its tags and the ``challenger``
    alias, or nothing at all."""
    name = registration.cfg.name
    if existing is not None:
        logger.info("%s: model folder %s is version %d already", name, registration.model_dir, existing)
        return RegistrationResult(name, existing, created=False)
    ensure_registered_model(client, name)
    logged = log_pyfunc(client, run_id, registration)
    created = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=run_id,
        tags={**registration.tags, RUN_ID: run_id},
        model_id=logged.model_id,
        description=registration.description or None,
    )
    try:
        client.set_registered_model_alias(name, CHALLENGER, created.version)
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_model_version(name, created.version)
        raise
    logger.info(
        "%s: version %s registered from %s (alias %s)", name, created.version, registration.model_dir, CHALLENGER
    )
    return RegistrationResult(name, int(created.version), created=True)


def register_all(
    client: MlflowClient, registrations: Mapping[str, Registration], run_id: str
) -> dict[str, RegistrationResult]:
    """Register prepared models together. Every folder no version holds yet is loaded first, so a missing or corrupt
    one (``ModelLoadError``) registers none of them; a folder registered before (same digest) was loaded then, so a
    repeated run loads no model and creates nothing."""
    check_registry(client)
    existing = {key: find_version(client, r.cfg.name, r.digest) for key, r in registrations.items()}
    for key, registration in registrations.items():
        if existing[key] is None:
            check_model_folder(registration.model_dir)
    return {key: register(client, r, run_id, existing[key]) for key, r in registrations.items()}
