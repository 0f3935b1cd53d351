"""Plain helpers shared by test modules (pytest fixtures live in ``conftest.py``; test modules import only this
module and ``llm_fixtures``, never each other)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def memforge_bin() -> str:
    """The `memforge` console script of this interpreter."""
    candidate = Path(sys.executable).parent / "memforge"
    return str(candidate) if candidate.exists() else shutil.which("memforge") or "memforge"


def git_init(path: Path) -> None:
    """A git repo with an identity, for DVC tests."""
    for args in (["init", "-q"], ["config", "user.email", "ci@memforge.test"], ["config", "user.name", "memforge ci"]):
        subprocess.run(["git", *args], cwd=path, check=True)


class CountingPieces:
    """An iterator over pieces that records how many have been pulled."""

    def __init__(self, pieces: list[str]) -> None:
        self._pieces = iter(pieces)
        self.pulled = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self.pulled += 1
        return piece
