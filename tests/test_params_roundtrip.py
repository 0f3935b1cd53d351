"""``params.yaml`` survives ``dvc exp run -S key=value`` as a one-line diff, comments and layout kept.

DVC applies ``-S`` with ``dvc.utils.hydra.apply_overrides``: a ruamel round trip that re-writes every value (lists
wholesale). ``render_params`` lays the file out as that writer does, so only the changed value's line differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.config import Params, list_profiles, load_params, profile_params, render_params, to_dict
from tests.helpers import git_init

# (dotted key, a hydra override value) per kind of key: a nested scalar, a float, a key inside a list item.
KEYS = ("ingest.splits.seed", "sft.learning_rate", "ingest.sources.0.drop_empty_sessions")


def _lookup(params: Params, dotted: str) -> Any:
    node: Any = to_dict(params)
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _changed(value: Any) -> str:
    """A hydra override value that differs from ``value``."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, float):
        return repr(value * 2)
    return str(value + 1)


def _dvc_set(path: Path, override: str) -> None:
    """What ``dvc exp run -S override`` does to the params file."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(path), [override])


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new), "the override added or dropped lines"
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("profile", list_profiles())
def test_dvc_set_param_changes_exactly_one_line(profile: str, key: str, tmp_path: Path) -> None:
    params = profile_params(profile)
    text = render_params(params, header=profile)
    file = tmp_path / "params.yaml"
    file.write_text(text, encoding="utf-8")
    value = _changed(_lookup(params, key))
    _dvc_set(file, f"{key}={value}")
    ((old, new),) = _changed_lines(text, file.read_text(encoding="utf-8"))
    leaf = key.rsplit(".", 1)[-1]
    assert old.lstrip(" -").startswith(f"{leaf}: ") and new.lstrip(" -").startswith(f"{leaf}: ")


@pytest.mark.parametrize("profile", list_profiles())
def test_dvc_round_trip_without_a_change_keeps_every_byte(profile: str, tmp_path: Path) -> None:
    """A no-op ``-S`` (a value set to itself) re-writes all values: the file must come back unchanged."""
    text = render_params(profile_params(profile), header=profile)
    file = tmp_path / "params.yaml"
    file.write_text(text, encoding="utf-8")
    _dvc_set(file, f"ingest.splits.seed={profile_params(profile).ingest.splits.seed}")
    assert file.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    "key",
    [
        "ingest.splits.seed",
        "ingest.sources.0.drop_empty_sessions",
        "sft.learning_rate",  # DVC writes '2e-05' (YAML 1.2): load_params reads YAML 1.2 too
    ],
)
def test_the_value_dvc_writes_loads_back(key: str, tmp_path: Path) -> None:
    params = Params()
    file = tmp_path / "params.yaml"
    file.write_text(render_params(params), encoding="utf-8")
    value = _changed(_lookup(params, key))
    _dvc_set(file, f"{key}={value}")
    assert _lookup(load_params(file), key) == json.loads(value)


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


SEED_STAGE = (
    "import json, yaml; seed = yaml.safe_load(open('params.yaml'))['ingest']['splits']['seed']; "
    "json.dump({'seed': seed}, open('metrics.json', 'w'))"
)


@pytest.mark.slow
def test_dvc_exp_run_set_param_leaves_a_one_line_diff_and_lists_the_experiment(tmp_path: Path) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    git_init(tmp_path)
    _run([dvc, "init", "-q"], tmp_path)
    text = render_params(Params(), header="default")
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    stage = {
        "cmd": f'{sys.executable} -c "{SEED_STAGE}"',
        "params": ["ingest.splits.seed"],
        "metrics": [{"metrics.json": {"cache": False}}],
    }
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"seed": stage}}), encoding="utf-8")
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "commit", "-qm", "params and a one-stage pipeline"], tmp_path)

    _run([dvc, "exp", "run", "-S", "ingest.splits.seed=3"], tmp_path)

    diff = _run(["git", "diff", "--unified=0", "--", "params.yaml"], tmp_path)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [f"-    seed: {Params().ingest.splits.seed}", "+    seed: 3"]
    experiments = json.loads(_run([dvc, "exp", "show", "--json"], tmp_path))
    runs = [exp for commit in experiments for exp in commit.get("experiments") or []]
    metrics = [
        run["revs"][0]["data"]["metrics"]["metrics.json"]["data"]
        for run in runs
        if run["revs"][0]["data"]["params"]["params.yaml"]["data"]["ingest"]["splits"]["seed"] == 3
    ]
    assert metrics == [{"seed": 3}]
