"""The one way memforge talks to the MLflow model registry: a client on the tracking store, and ``registry_call``,
which turns any failure of a registry request into a ``ModelLoadError`` naming what was asked and the registry URI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from components.config import TrackingConfig
from components.errors import ModelLoadError
from components.tracking import resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST"})

T = TypeVar("T")


def registry_client(tracking: TrackingConfig) -> MlflowClient:
    """An MlflowClient on the tracking store (``resolve_tracking_uri``), which is also the model registry."""
    uri = resolve_tracking_uri(tracking)
    try:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # any failure to open the store, reported with its URI
        raise ModelLoadError(f"cannot open the MLflow registry at {uri}: {exc}") from None


def registry_call(client: MlflowClient, what: str, call: Callable[[], T]) -> T:
    """``call()``, a registry request about ``what``; a failure becomes a ``ModelLoadError`` naming it and the URI."""
    try:
        return call()
    except ModelLoadError:
        raise
    except Exception as exc:  # MLflow, SQLAlchemy and HTTP errors alike
        uri = client.tracking_uri
        if getattr(exc, "error_code", None) in NOT_FOUND_CODES:
            raise ModelLoadError(f"{what}: not found in the MLflow registry at {uri}") from None
        raise ModelLoadError(f"{what}: the MLflow registry at {uri} failed: {exc}") from None


def check_registry(client: MlflowClient) -> None:
    """One cheap registry request, so a registry that cannot be reached fails before anything is written."""
    registry_call(client, "the model registry", lambda: client.search_registered_models(max_results=1))
