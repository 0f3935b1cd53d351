"""The import closure of a stage: every ``components`` source file its outputs can depend on.

``dvc repro`` reruns a stage only when one of its ``deps`` changed, so each stage's ``deps`` in ``dvc.yaml`` must
cover the closure of its module and of the runner that executes it (the runner and the publishing helper write the
stage's reports). Imports are read from the source with ``ast``: module-level and inside functions alike.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the ``components`` package
RUNNER = "components.stages.runner"


def module_file(module: str) -> Path | None:
    """The source file of a ``components`` module or package, or None when there is none."""
    base = SOURCE_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imported_modules(module: str) -> frozenset[str]:
    """The ``components`` modules and packages ``module`` imports anywhere in its source."""
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
            parts = name.split(".")
            if parts[0] == "components":
                found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if module_file(".".join(parts[:i])))
    return frozenset(found)


def import_closure(*roots: str) -> set[Path]:
    """Source files of ``roots`` and of everything they import, transitively, relative to ``SOURCE_ROOT``."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(module) - seen)
    return {file.relative_to(SOURCE_ROOT) for module in seen if (file := module_file(module)) is not None}


def stage_closure(name: str) -> set[Path]:
    """The files stage ``name``'s outputs can depend on: its module's closure and the runner's."""
    return import_closure(f"components.stages.{name}", RUNNER)


def covered(file: Path, deps: list[str]) -> bool:
    """Whether one of ``deps`` (``dvc.yaml`` paths) names ``file`` or a folder above it."""
    return any(file == Path(dep) or Path(dep) in file.parents for dep in deps)
