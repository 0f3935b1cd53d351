"""Registered model versions for the promotion and ``models:/`` tests, made the way ``register`` makes them.

A version is a real pyfunc model logged to a temporary SQLite store, whose ``model`` artifact is a model folder,
with memforge's lineage and evaluation tags and the ``challenger`` alias. ``FailingClient`` wraps the real
MlflowClient and makes one method raise, to inject a registry failure at a chosen step.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.config import TrackingConfig
from components.model_registry import tags
from components.tracking import resolve_tracking_uri, stage_run

EVAL_SET = "eval-set-a"


class FolderModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model that only carries its model folder (what register logs, minus the prediction logic)."""

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        return [context.artifacts["model"] for _ in model_input]


@contextlib.contextmanager
def _fluent_tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model``) on ``uri`` for the block, without pinning it for later tests."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@dataclass(frozen=True)
class LoggedModel:
    uri: str
    model_id: str
    run_id: str


@dataclass(frozen=True)
class Registry:
    """A temporary registry: ``log_model`` a folder, ``add_version`` of it with tags, read ``aliases``."""

    client: MlflowClient
    tracking: TrackingConfig

    def log_model(self, folder: Path) -> LoggedModel:
        with stage_run("register", self.tracking) as run, _fluent_tracking(self.client.tracking_uri):
            with mlflow.start_run(run_id=run.run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=FolderModel(), artifacts={"model": str(folder)}, pip_requirements=[]
                )
            return LoggedModel(info.model_uri, info.model_id, run.run_id)

    def add_version(
        self,
        name: str,
        model: LoggedModel,
        scores: Mapping[str, float],
        *,
        eval_set: str = EVAL_SET,
        challenger: bool = True,
    ) -> int:
        """A new version of ``name`` from ``model`` with register's tags (``scores`` by metric key)."""
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        with _fluent_tracking(self.client.tracking_uri):  # MLflow looks the logged model up in the default store
            version = self.client.create_model_version(
                name, source=model.uri, run_id=model.run_id, model_id=model.model_id
            )
        lineage = {tags.MODEL_DIGEST: f"{model.model_id}.dir", tags.EVAL_SET_DIGEST: eval_set, tags.GIT_COMMIT: "c1"}
        metrics = {tags.eval_metric_tag(metric): str(value) for metric, value in scores.items()}
        for key, value in {**lineage, **metrics}.items():
            self.client.set_model_version_tag(name, version.version, key, value)
        if challenger:
            self.client.set_registered_model_alias(name, tags.CHALLENGER, version.version)
        return int(version.version)

    def aliases(self, name: str) -> dict[str, int]:
        return {alias: int(v) for alias, v in self.client.get_registered_model(name).aliases.items()}

    def version_tags(self, name: str, version: int) -> dict[str, str]:
        return dict(self.client.get_model_version(name, str(version)).tags)


SQLITE = "sqlite:///"


@functools.cache
def _empty_store() -> Path:
    """One empty SQLite store with MLflow's tables, created once per session (its migrations take seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="memforge-empty-mlflow-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(tracking_uri=f"{SQLITE}{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def registry(tracking: TrackingConfig) -> Registry:
    """An empty registry in ``tracking``'s local store (a copy of the session's empty store)."""
    uri = resolve_tracking_uri(tracking)
    database = Path(uri.removeprefix(SQLITE))
    if not database.exists():
        shutil.copyfile(_empty_store(), database)
    return Registry(MlflowClient(tracking_uri=uri), tracking)


class FailingClient:
    """The real MlflowClient, except that calling ``method`` raises as an unreachable registry would."""

    def __init__(self, inner: MlflowClient, method: str) -> None:
        self._inner = inner
        self._method = method
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        if name != self._method:
            return getattr(self._inner, name)

        def fail(*args: Any, **kwargs: Any) -> Any:
            self.failed += 1
            raise MlflowException(f"connection to {self._inner.tracking_uri} lost during {name}")

        return fail
