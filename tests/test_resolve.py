"""``models:/`` references on a real temporary SQLite registry: by alias and by version, downloaded once, and clear
errors for an unknown model, alias or version and for a version without its model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import TrackingConfig
from components.errors import ModelLoadError
from components.model_registry import tags
from components.model_registry.resolve import ModelReference, parse_model_reference, resolve_model
from tests.registry_fixtures import Registry, registry

NAME = "memforge-memagent"
METRIC = "mean/memagent/mean_correct"


def _model_folder(root: Path, marker: str) -> Path:
    folder = root / marker
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(f'{{"model_type": "llama", "marker": "{marker}"}}', encoding="utf-8")
    return folder


@pytest.fixture
def reg(tracking_config: TrackingConfig) -> Registry:
    return registry(tracking_config)


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("models:/memforge-memagent@champion", ModelReference("memforge-memagent", alias="champion")),
        ("models:/memforge-memagent/12", ModelReference("memforge-memagent", version=12)),
        ("models/base", None),
        ("Qwen/Qwen3-4B", None),
    ],
)
def test_references_parse_and_paths_pass_through(reference: str, parsed: ModelReference | None) -> None:
    assert parse_model_reference(reference) == parsed
    if parsed is not None:
        assert str(parsed) == reference


@pytest.mark.parametrize("reference", ["models:/", "models:/name/0", "models:/name/v1", "models:/name@"])
def test_malformed_reference_names_the_accepted_forms(reference: str) -> None:
    with pytest.raises(ModelLoadError, match="give models:/NAME@ALIAS or models:/NAME/N"):
        parse_model_reference(reference)


def test_plain_path_or_hub_id_is_returned_unchanged(tracking_config: TrackingConfig) -> None:
    assert resolve_model("models/base", tracking_config) == "models/base"
    assert resolve_model("Qwen/Qwen3-4B", tracking_config) == "Qwen/Qwen3-4B"


def test_alias_and_version_resolve_to_their_own_downloaded_folder_once(reg: Registry, tmp_path: Path) -> None:
    first = reg.add_version(NAME, reg.log_model(_model_folder(tmp_path, "first")), {METRIC: 0.1})
    reg.client.set_registered_model_alias(NAME, tags.CHAMPION, str(first))
    second = reg.add_version(NAME, reg.log_model(_model_folder(tmp_path, "second")), {METRIC: 0.2})
    cwd_before = sorted(os.listdir())

    champion = Path(resolve_model(f"models:/{NAME}@champion", reg.tracking))
    assert '"marker": "first"' in (champion / "config.json").read_text(encoding="utf-8")
    assert champion.is_relative_to(Path(reg.tracking.store_dir).resolve())
    by_version = Path(resolve_model(f"models:/{NAME}/{second}", reg.tracking))
    assert '"marker": "second"' in (by_version / "config.json").read_text(encoding="utf-8")
    assert Path(resolve_model(f"models:/{NAME}@challenger", reg.tracking)) == by_version

    (champion / "config.json").write_text('{"model_type": "llama", "marker": "cached"}', encoding="utf-8")
    assert "cached" in (Path(resolve_model(f"models:/{NAME}/{first}", reg.tracking)) / "config.json").read_text()
    assert sorted(os.listdir()) == cwd_before  # nothing written outside the store


def test_unknown_model_alias_or_version_is_an_error_naming_it(reg: Registry, tmp_path: Path) -> None:
    reg.add_version(NAME, reg.log_model(_model_folder(tmp_path, "only")), {METRIC: 0.1})
    with pytest.raises(ModelLoadError, match="registered model 'memforge-nope': not found in the MLflow registry at"):
        resolve_model("models:/memforge-nope@champion", reg.tracking)
    with pytest.raises(ModelLoadError, match=f"'{NAME}' has no alias 'champion' \\(aliases: challenger\\)"):
        resolve_model(f"models:/{NAME}@champion", reg.tracking)
    with pytest.raises(ModelLoadError, match=f"version 4 of registered model '{NAME}': not found"):
        resolve_model(f"models:/{NAME}/4", reg.tracking)


def test_version_without_its_model_folder_is_a_clear_error(reg: Registry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no weights here\n", encoding="utf-8")
    version = reg.add_version(NAME, reg.log_model(empty), {METRIC: 0.1})
    with pytest.raises(ModelLoadError, match=f"models:/{NAME}@challenger \\(version {version}\\): .* no config.json"):
        resolve_model(f"models:/{NAME}@challenger", reg.tracking)
