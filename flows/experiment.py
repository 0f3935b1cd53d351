"""A run with parameter overrides is an ordinary DVC experiment: ``dvc exp run -S key=value ... <stages>``.

DVC applies the overrides to ``params.yaml``, runs the stages (they read the overridden params, so their MLflow runs
log them), commits the experiment to ``refs/exps`` (``dvc exp show`` lists it) and leaves its results in the
workspace. The flow then puts the workspace back as it was (``WorkspaceSnapshot``): ``params.yaml``, ``dvc.lock``
and the git-tracked (``cache: false``) metrics and plots byte for byte, the cached outputs from the DVC cache, so the
next run without overrides neither inherits the overrides nor retrains to undo them; ``dvc exp apply NAME`` brings
the experiment into the workspace on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PARAMS_FILE = "params.yaml"
RAN = "Running stage '"
SKIPPED = re.compile(r"Stage '([^']+)' (?:didn't change, skipping|is cached - skipping)")


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (what ``dvc exp run -S`` parses): strings quoted, so paths, colons
    and numbers-as-text keep their type, and ``${`` escaped so it is not an interpolation."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value) if isinstance(value, int) else repr(float(value))
    if isinstance(value, str):
        return _hydra_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot pass a {type(value).__name__} to dvc exp run -S: {value!r}")


def _hydra_string(text: str) -> str:
    escaped = re.sub(r"(\\+)(?=')", lambda m: m.group(1) * 2, text)  # backslashes before a quote are doubled,
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)  # as are those before the closing quote
    escaped = escaped.replace("'", "\\'")
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", escaped)  # literal ${, not interpolation
    return f"'{escaped}'"


def flat_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys down to the leaves: ``{"ingest.splits": {"seed": 3}}`` sets ``ingest.splits.seed`` only (merged,
    as ``load_params`` merges it), never the whole section."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_overrides(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def has_key(raw: Any, dotted: str) -> bool:
    """Whether the parsed params file already holds ``dotted`` (else DVC must add it: Hydra's ``++``)."""
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def set_param_args(
    overrides: Mapping[str, Any], raw_params: Mapping[str, Any], params_file: str = DEFAULT_PARAMS_FILE
) -> list[str]:
    """``-S [file:]key=value`` for each override (validated before: ``flows.requests.validate_request``)."""
    file_prefix = "" if params_file == DEFAULT_PARAMS_FILE else f"{params_file}:"
    args: list[str] = []
    for key, value in flat_overrides(overrides).items():
        add = "" if has_key(raw_params, key) else "++"
        args += ["-S", f"{file_prefix}{add}{key}={hydra_value(value)}"]
    return args


def exp_run_command(
    dvc: str,
    stages: list[str],
    overrides: Mapping[str, Any],
    raw_params: Mapping[str, Any],
    name: str,
    params_file: str = DEFAULT_PARAMS_FILE,
) -> list[str]:
    """``dvc exp run -n NAME -S ... STAGES``: the chosen stages (and any changed upstream stage) as one experiment
    in the workspace."""
    return [dvc, "exp", "run", "--name", name, *set_param_args(overrides, raw_params, params_file), *stages]


def experiment_name(flow_run_name: str, flow_run_id: str) -> str:
    """A git-ref-safe experiment name that names the flow run (its name and short id, so it is unique)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", flow_run_name).strip("-") or "run"
    return f"{slug}-{flow_run_id.replace('-', '')[:8]}"


def stage_outcomes(log: str) -> dict[str, bool]:
    """What ``dvc repro``/``dvc exp run`` did per stage, from its log: stage -> skipped, in the order reported."""
    outcomes: dict[str, bool] = {}
    for line in log.splitlines():
        if line.startswith(RAN):
            outcomes[line[len(RAN) :].split("'", 1)[0]] = False
        elif match := SKIPPED.search(line):
            outcomes.setdefault(match.group(1), True)
    return outcomes


@dataclass
class WorkspaceSnapshot:
    """The bytes of the workspace files an experiment rewrites, to put back afterwards (absent files: None)."""

    repo: Path
    files: dict[Path, bytes | None] = field(default_factory=dict)

    @classmethod
    def take(cls, repo: Path, params_file: str = DEFAULT_PARAMS_FILE) -> WorkspaceSnapshot:
        paths = [repo / params_file, repo / "dvc.lock", *uncached_outputs(repo)]
        files: dict[Path, bytes | None] = {}
        for path in paths:
            if path.is_dir():
                files.update({file: file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()})
            else:
                files[path] = path.read_bytes() if path.is_file() else None
        return cls(repo, files)

    def restore(self) -> list[str]:
        """Write every file back as it was (remove those that did not exist); the paths that had changed."""
        changed = []
        for path, data in self.files.items():
            now = path.read_bytes() if path.is_file() else None
            if now == data:
                continue
            changed.append(str(path.relative_to(self.repo)))
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        return changed


def uncached_outputs(repo: Path) -> list[Path]:
    """The outputs DVC keeps in git rather than its cache (``cache: false`` metrics and plots), from ``dvc.yaml``."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        paths = {Path(out.fs_path) for stage in dvc_repo.index.stages for out in stage.outs if not out.use_cache}
    return sorted(paths)
