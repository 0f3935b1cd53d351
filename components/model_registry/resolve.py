"""Registered models by reference: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as a local model folder.

A registered version is a pyfunc model whose ``model`` artifact is the trained model folder (what ``register``
logs). ``resolve_model`` downloads the version once into ``<store_dir>/registry-cache/<registry>/<name>/<version>``
and returns that folder; a plain path or hub id passes through unchanged. Every registry call goes through
``registry_call``, so a missing model, alias or version, or a registry that cannot be reached, is a
``ModelLoadError`` naming it and the registry URI.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import TrackingConfig
from components.errors import ModelLoadError
from components.model_registry.client import registry_call, registry_client
from components.model_registry.tags import MODEL_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

SCHEME = "models:/"
_REFERENCE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>[1-9][0-9]*))$")
CACHE_DIR = "registry-cache"
MLMODEL_FILE = "MLmodel"


@dataclass(frozen=True)
class ModelReference:
    """A registered model version named by alias or by number."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"


def parse_model_reference(reference: str) -> ModelReference | None:
    """The reference in ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for anything not ``models:/``."""
    if not reference.startswith(SCHEME):
        return None
    match = _REFERENCE.match(reference)
    if match is None:
        raise ModelLoadError(
            f"{reference}: not a registered model reference; give models:/NAME@ALIAS or models:/NAME/N"
        )
    version = match["version"]
    return ModelReference(match["name"], match["alias"], int(version) if version else None)


def model_aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """Alias -> version number of registered model ``name`` (which must exist)."""
    model = registry_call(client, f"registered model '{name}'", lambda: client.get_registered_model(name))
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def model_version(client: MlflowClient, name: str, version: int) -> ModelVersion:
    """Version ``version`` of registered model ``name`` (both must exist)."""
    what = f"version {version} of registered model '{name}'"
    return registry_call(client, what, lambda: client.get_model_version(name, str(version)))


def reference_version(client: MlflowClient, reference: ModelReference) -> int:
    """The existing version number ``reference`` names; its model, alias or version missing is an error naming it."""
    aliases = model_aliases(client, reference.name)
    if reference.version is None:
        if reference.alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise ModelLoadError(
                f"registered model '{reference.name}' has no alias '{reference.alias}' (aliases: {known})"
            )
        return aliases[reference.alias]
    model_version(client, reference.name, reference.version)
    return reference.version


def resolve_model(reference: str, tracking: TrackingConfig) -> str:
    """The local model folder ``reference`` names: a ``models:/`` reference is downloaded once (cached); a path or
    hub id is returned unchanged."""
    parsed = parse_model_reference(reference)
    if parsed is None:
        return reference
    client = registry_client(tracking)
    version = reference_version(client, parsed)
    target = cache_dir(tracking, client.tracking_uri, parsed.name, version)
    if not target.is_dir():
        _download(client, parsed.name, version, target)
    return str(model_folder(target, f"{parsed} (version {version})"))


def cache_dir(tracking: TrackingConfig, registry_uri: str, name: str, version: int) -> Path:
    """Where version ``version`` of ``name`` from the registry at ``registry_uri`` is kept once downloaded."""
    registry = hashlib.sha256(registry_uri.encode()).hexdigest()[:12]
    return Path(tracking.store_dir).resolve() / CACHE_DIR / registry / name / str(version)


def _download(client: MlflowClient, name: str, version: int, target: Path) -> None:
    """Download the version's files into ``target`` atomically: a temp folder beside it, renamed into place."""
    import mlflow.artifacts

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    what = f"files of version {version} of registered model '{name}'"
    try:
        # The version's storage location, not its models:/ URI: MLflow resolves those through the process-wide
        # tracking URI rather than this client's.
        location = registry_call(client, what, lambda: client.get_model_version_download_uri(name, str(version)))
        downloaded = registry_call(
            client,
            what,
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(staging), tracking_uri=client.tracking_uri
            ),
        )
        try:
            Path(downloaded).rename(target)
        except OSError:  # another process finished the same download first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_folder(root: Path, label: str) -> Path:
    """The model folder inside a downloaded pyfunc model ``root``: its ``model`` artifact, with a config.json."""
    import yaml

    mlmodel = root / MLMODEL_FILE
    try:
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        relative = spec["flavors"]["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{label}: {mlmodel} is not a memforge pyfunc model (no python_function artifact '{MODEL_ARTIFACT}': {exc})"
        ) from None
    folder = root / str(relative)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{label}: the downloaded model folder {folder} has no config.json; the version is corrupt"
        )
    return folder
