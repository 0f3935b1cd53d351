"""Layers that point one way: the import graph of ``components/`` has no cycle, never reaches ``flows/`` and never
imports upward; test modules import shared helpers, never each other or ``conftest``.

Every import counts, at module level or inside a function, absolute or relative, ``TYPE_CHECKING`` ones too (they
state a dependency even where they cost nothing at run time). The graph is read from whatever modules exist.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO_ROOT

# The units of components/ (a top-level module or package) by layer, highest first. A module may import its own
# unit and any unit of a lower layer; never a unit of its own layer or of a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),  # the `memforge` command line
    ("stages",),  # one module per DVC stage, the stage registry, runner and import closure
    ("model_registry",),  # the MLflow model registry: pyfunc models, registration, promotion, models:/ URIs
    ("training",),  # TRL trainers: SFT, ADRPO, MemAgent's multi-conversation GRPO; checkpoints and saving
    ("rewards",),  # ADRPO rewards: format gate, penalties, judges, attribution, advantages
    ("evaluation",),  # evaluation reports and tables
    ("datasets",),  # the pipeline's datasets: dialogue ingestion behind its gate, session-level synthetic QA
    ("quality",),  # data-quality suites over dialogues and QA rows (reads the qa schema), dataset cards
    ("qa", "longcontext"),  # session-level QA generation; long-context (RULER, needle) sets
    ("memory", "agent"),  # the four-part memory bank and its construction; the MemAgent reader
    ("dialogue", "llm"),  # conversation schema, loaders, synthetic corpus; generation backends and model assets
    ("tracking",),  # MLflow runs and the one publishing helper (draws its figures through plots)
    ("plots", "progress"),  # figures and DVC plot tables; progress reporting
    ("config",),  # typed parameters with help text, validated at load
    # atomic writes, strict reads; text normalisation; secrets; data blocks; the processes of a multi-process launch
    ("io", "text", "secrets", "datablock", "distributed"),
    ("errors", "components"),  # the error types; the package root (its version)
)
PACKAGE = "components"
ORCHESTRATION = "flows"
TESTS = REPO_ROOT / "tests"


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """Dotted module name of a source file (a package's ``__init__.py`` names the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = REPO_ROOT) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in ``path``, relative ones resolved; ``from m import n`` yields both
    ``m`` and ``m.n`` (``n`` may be a submodule), the caller keeps the names that are modules."""
    own = module_name(path, root)
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def components_graph(root: Path = REPO_ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported components module: first line}, over every module under ``root``/components."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    graph: dict[str, dict[str, int]] = {}
    for file in files:
        own = module_name(file, root)
        graph[own] = {}
        for name, line in imported_names(file, root):
            if name in modules and name != own:
                graph[own].setdefault(name, line)
    return graph


def unit(module: str) -> str:
    """The layer-table unit of a components module: its top-level module or package under components/."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def layer_of(name: str) -> int:
    """Index in LAYERS, 0 = highest."""
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_components_import_graph_has_no_cycle() -> None:
    graph = components_graph()
    report = [" <-> ".join(component) for component in cycles(graph)]
    assert report == [], "import cycles in components/:\n" + "\n".join(report)


def test_components_never_import_flows() -> None:
    offending = [
        f"{file.relative_to(REPO_ROOT)}:{line} imports {name}"
        for file in sorted((REPO_ROOT / PACKAGE).rglob("*.py"))
        for name, line in imported_names(file)
        if name == ORCHESTRATION or name.startswith(ORCHESTRATION + ".")
    ]
    assert sorted(set(offending)) == [], "components/ imports the orchestration layer:\n" + "\n".join(offending)


def test_every_components_unit_has_a_layer() -> None:
    units = {unit(module) for module in components_graph()}
    placed = {name for layer in LAYERS for name in layer}
    assert sorted(units - placed) == [], "add these components/ units to LAYERS in tests/test_layering.py"


def test_components_never_import_upward_or_sideways() -> None:
    graph = components_graph()
    offending = [
        f"{module} ({unit(module)}) -> {target} ({unit(target)}), line {line}"
        for module, edges in sorted(graph.items())
        for target, line in sorted(edges.items())
        if unit(target) != unit(module) and layer_of(unit(target)) <= layer_of(unit(module))
    ]
    assert offending == [], "imports that point up or sideways in LAYERS:\n" + "\n".join(offending)


def _is_test_module_or_conftest(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "conftest" or last.startswith("test_")


def test_test_modules_import_no_other_test_module_or_conftest() -> None:
    offending = [
        f"{file.relative_to(REPO_ROOT)}:{line} imports {name}"
        for file in sorted(TESTS.glob("*.py"))
        for name, line in imported_names(file)
        if _is_test_module_or_conftest(name) and (TESTS / f"{name.rsplit('.', 1)[-1]}.py").exists()
    ]
    assert sorted(set(offending)) == [], (
        "shared test code belongs in tests/helpers.py (plain helpers) or tests/conftest.py (fixtures):\n"
        + "\n".join(sorted(set(offending)))
    )
