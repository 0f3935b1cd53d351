"""Checkpoint folders resume only the run they belong to."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from components.training.checkpoints import FINGERPRINT_FILE, claim_checkpoint_dir, run_fingerprint


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"q": 1}\n', encoding="utf-8")
    return path


def test_same_run_resumes_and_more_steps_still_resume(tmp_path: Path, data_file: Path) -> None:
    folder = tmp_path / "ckpt"
    first = run_fingerprint({"learning_rate": 1e-6, "max_steps": 2}, [data_file])
    assert claim_checkpoint_dir(folder, first) is False
    (folder / "checkpoint-1").mkdir()
    longer = run_fingerprint({"learning_rate": 1e-6, "max_steps": 10, "save_steps": 5}, [data_file])
    assert claim_checkpoint_dir(folder, longer) is True
    assert (folder / "checkpoint-1").is_dir()


def test_changed_params_or_inputs_clear_old_checkpoints(
    tmp_path: Path, data_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ckpt"
    claim_checkpoint_dir(folder, run_fingerprint({"learning_rate": 1e-6}, [data_file]))
    (folder / "checkpoint-1").mkdir()
    with caplog.at_level(logging.WARNING):
        assert claim_checkpoint_dir(folder, run_fingerprint({"learning_rate": 1e-5}, [data_file])) is False
    assert not (folder / "checkpoint-1").exists() and (folder / FINGERPRINT_FILE).is_file()
    assert "params.learning_rate" in caplog.text

    (folder / "checkpoint-2").mkdir()
    data_file.write_text('{"q": 2}\n', encoding="utf-8")
    assert claim_checkpoint_dir(folder, run_fingerprint({"learning_rate": 1e-5}, [data_file])) is False
    assert not (folder / "checkpoint-2").exists()


def test_unmarked_checkpoints_are_not_trusted(tmp_path: Path, data_file: Path) -> None:
    folder = tmp_path / "ckpt"
    (folder / "checkpoint-3").mkdir(parents=True)
    assert claim_checkpoint_dir(folder, run_fingerprint({}, [data_file])) is False
    assert not (folder / "checkpoint-3").exists()
