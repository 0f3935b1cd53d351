"""``dvc plots show`` writes a page that renders offline: the committed template inlines vega, vega-lite and
vega-embed (the versions dvc-render names) instead of loading them from a CDN."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import REPO_ROOT, git_init

TEMPLATE = REPO_ROOT / "infra" / "dvc" / "plots.html"
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?https?://", re.IGNORECASE)


def _builder() -> ModuleType:
    """infra/dvc/build_plots_template.py, the one place that knows which libraries DVC's page needs."""
    path = REPO_ROOT / "infra" / "dvc" / "build_plots_template.py"
    spec = importlib.util.spec_from_file_location("build_plots_template", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_dvc_config_points_plots_at_the_committed_template() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    assert (REPO_ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE


def test_template_inlines_the_libraries_dvc_render_names() -> None:
    page = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page and not REMOTE_SCRIPT.search(page)
    for name, version in _builder().dvc_render_libraries():
        assert f"/*! {name}@{version} |" in page, f"rebuild {TEMPLATE}: dvc-render now loads {name}@{version}"


@pytest.mark.slow
def test_dvc_plots_show_writes_an_offline_page_with_the_plot_data(tmp_path: Path) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    git_init(tmp_path)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([dvc, "config", "plots.html_template", str(TEMPLATE)], cwd=tmp_path, check=True, env=env)
    points = [{"step": 0, "loss": 2.71828}, {"step": 1, "loss": 1.41421}]
    (tmp_path / "loss.json").write_text(json.dumps(points), encoding="utf-8")

    out = tmp_path / "page"
    subprocess.run(
        [dvc, "plots", "show", "loss.json", "-x", "step", "-y", "loss", "--out", str(out)],
        cwd=tmp_path,
        check=True,
        env=env,
        capture_output=True,
    )

    page = (out / "index.html").read_text(encoding="utf-8")
    assert not REMOTE_SCRIPT.search(page)
    assert "vegaEmbed=" in page  # the inlined vega-embed build defines it
    assert "vegaEmbed('#" in page  # DVC's plot div calls it
    assert "2.71828" in page and "1.41421" in page
