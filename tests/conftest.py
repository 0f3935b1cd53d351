"""Shared test setup: offline, no telemetry, a private Prefect home, and local MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.helpers import FIXTURES

if TYPE_CHECKING:
    from components.config import Params

# the session's local stack (infra/stack.py): the `local_stack` fixture
pytest_plugins = ["tests.stack_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MEMFORGE_PARENT_RUN_ID", None)

# Property tests check behaviour, never speed: no per-example deadline (a loaded CI machine is no bug), and a
# failure prints the blob that replays it.
settings.register_profile("memforge", deadline=None, print_blob=True)
settings.load_profile("memforge")


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip, with the reason, where no CUDA device is present (CI never has one)."""
    if any(item.get_closest_marker("gpu") for item in items) and not has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def tracking_config(tmp_path: Path):
    from components.config import TrackingConfig

    return TrackingConfig(experiment="memforge-test", store_dir=str(tmp_path / "mlflow"))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """One Prefect test server for the whole session (starting one is slow)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a small tokenizer and chat template, built from a config."""
    from components.llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def trained_inputs(tmp_path: Path) -> Params:
    """Dialogues and expert trajectories on disk for a small synthetic + hand-written corpus."""
    from components.datasets import ingest as ingestion
    from components.memory import trajectories
    from tests.helpers import small_corpus_params

    params = small_corpus_params(tmp_path)
    ingestion.ingest(params.ingest)
    trajectories.expert(params)
    return params
