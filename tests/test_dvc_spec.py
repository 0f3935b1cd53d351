"""dvc.yaml agrees with the stage registry, and every stage's deps cover its whole import closure.

A stage's outputs depend on every ``components`` module it imports, directly or not, at module level or inside a
function; ``dvc repro`` reruns a stage only when one of its ``deps`` changed. So each stage's ``deps`` must cover
the import closure of its module and of the runner that executes it (the runner and the publishing helper write
the stage's reports). These tests derive the closure from the source with ``ast`` and compare.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from components.stages.registry import STAGE_NAMES, STAGES

REPO = Path(__file__).resolve().parent.parent
RUNNER = "components.stages.runner"


def module_file(module: str) -> Path | None:
    """The source file of a ``components`` module or package, or None when there is none."""
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imported_modules(module: str) -> frozenset[str]:
    """Every ``components`` module ``module`` imports anywhere in its source (and the packages on the way)."""
    file = module_file(module)
    if file is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] != "components":
                continue
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if module_file(".".join(parts[:i])))
    return frozenset(found)


def import_closure(*roots: str) -> set[Path]:
    """Source files of ``roots`` and of everything they import, transitively, relative to the repo."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module) - seen)
    return {file.relative_to(REPO) for m in seen if (file := module_file(m)) is not None}


@cache
def dvc_spec() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def stage_deps(name: str) -> list[str]:
    return [str(dep) for dep in dvc_spec()["stages"][name].get("deps", [])]


def covered(file: Path, deps: list[str]) -> bool:
    """Whether a dep names ``file`` or a folder above it."""
    return any(file == Path(dep) or Path(dep) in file.parents for dep in deps)


def test_dvc_stages_are_the_registry_in_order() -> None:
    assert list(dvc_spec()["stages"]) == list(STAGE_NAMES)
    for stage in STAGES:
        spec = dvc_spec()["stages"][stage.name]
        assert spec["cmd"] == f"memforge stage {stage.name}"
        assert spec.get("params", []) == list(stage.params), f"dvc.yaml {stage.name}: params differ from the registry"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_deps_cover_the_import_closure(name: str) -> None:
    closure = import_closure(f"components.stages.{name}", RUNNER)
    deps = stage_deps(name)
    missing = sorted(str(file) for file in closure if not covered(file, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss modules it imports: {missing}"


def test_closure_sees_function_level_imports() -> None:
    """The walk finds imports inside functions (the stages import heavy modules lazily)."""
    closure = import_closure("components.stages.adrpo")
    assert Path("components/training/adrpo.py") in closure
    assert Path("components/config.py") in closure
