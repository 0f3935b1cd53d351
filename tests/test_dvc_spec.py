"""dvc.yaml agrees with the stage registry, and every stage's deps cover its whole import closure
(``components/stages/closure.py`` derives it from the source)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml

from components.stages.closure import covered, import_closure, stage_closure
from components.stages.registry import STAGE_NAMES, STAGES

REPO = Path(__file__).resolve().parent.parent


@cache
def dvc_spec() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def stage_deps(name: str) -> list[str]:
    return [str(dep) for dep in dvc_spec()["stages"][name].get("deps", [])]


def test_dvc_stages_are_the_registry_in_order() -> None:
    assert list(dvc_spec()["stages"]) == list(STAGE_NAMES)
    for stage in STAGES:
        spec = dvc_spec()["stages"][stage.name]
        assert spec["cmd"] == f"memforge stage {stage.name}"
        assert spec.get("params", []) == list(stage.params), f"dvc.yaml {stage.name}: params differ from the registry"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_deps_cover_the_import_closure(name: str) -> None:
    closure = stage_closure(name)
    deps = stage_deps(name)
    missing = sorted(str(file) for file in closure if not covered(file, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss modules it imports: {missing}"


def test_closure_sees_function_level_imports() -> None:
    """The walk finds imports inside functions (the stages import heavy modules lazily)."""
    closure = import_closure("components.stages.adrpo")
    assert Path("components/training/adrpo.py") in closure
    assert Path("components/config.py") in closure
