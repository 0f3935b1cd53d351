"""Atomic writes and seeded, leak-free splits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import SplitConfig
from components.dialogue.splits import SPLIT_NAMES, assign_splits, split_counts
from components.io import atomic_directory, atomic_writer, iter_jsonl


def test_atomic_writer_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="fail midway"), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new", encoding="utf-8")
        raise ValueError("fail midway")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_iter_jsonl_streams_line_numbers(tmp_path: Path) -> None:
    file = tmp_path / "x.jsonl"
    file.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(iter_jsonl(file)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_splits_are_seeded_exhaustive_and_disjoint() -> None:
    ids = [f"c{i}" for i in range(103)]
    cfg = SplitConfig(sft=0.5, rl=0.3, eval=0.2, seed=3)
    first = assign_splits(ids, cfg)
    assert first == assign_splits(list(reversed(ids)), cfg)  # order of arrival does not matter
    assert set(first) == set(ids)  # every conversation in exactly one split
    counts = {name: sum(1 for s in first.values() if s == name) for name in SPLIT_NAMES}
    assert counts == split_counts(103, cfg) == {"sft": 51, "rl": 31, "eval": 21}  # largest remainders: .9 and .6
    assert first != assign_splits(ids, SplitConfig(sft=0.5, rl=0.3, eval=0.2, seed=4))


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 16])
def test_small_corpora_keep_requested_splits_non_empty(total: int) -> None:
    counts = split_counts(total, SplitConfig(sft=0.4, rl=0.4, eval=0.2, seed=1))
    assert sum(counts.values()) == total
    if total >= 3:
        assert all(counts[name] >= 1 for name in SPLIT_NAMES)


def test_zero_fraction_split_stays_empty() -> None:
    counts = split_counts(10, SplitConfig(sft=0.0, rl=0.5, eval=0.5, seed=1))
    assert counts == {"sft": 0, "rl": 5, "eval": 5}


def test_stale_staging_of_dead_processes_is_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from components.io import atomic_directory, remove_stale_staging

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    target = tmp_path / "out"
    dead = tmp_path / f".out.{dead_pid}.abcd1234.tmp"
    dead_backup = tmp_path / f".out.{dead_pid}.efgh5678.old"
    live = tmp_path / f".out.{os.getpid()}.ijkl9012.tmp"
    other = tmp_path / ".out.5.1234.mnop.tmp"  # staging of a target named "out.5", not ours
    for folder in (dead, dead_backup, live, other):
        folder.mkdir()
    assert sorted(remove_stale_staging(target)) == sorted([dead, dead_backup])
    assert live.is_dir() and other.is_dir()
    live.rmdir()
    with atomic_directory(target) as staging:  # a swap cleans up too, and leaves only its output
        (staging / "a.txt").write_text("a", encoding="utf-8")
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("b", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.5.1234.mnop.tmp", "out"]
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_swapped_folders_and_written_files_follow_the_umask(tmp_path: Path) -> None:
    from components.io import atomic_directory, current_umask, write_text_atomic

    mask = current_umask()
    with atomic_directory(tmp_path / "data") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "rows.jsonl").write_text("{}\n", encoding="utf-8")
    write_text_atomic(tmp_path / "reports" / "metrics.json", "{}\n")
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700
    assert (tmp_path / "data/sub/rows.jsonl").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "reports/metrics.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
