"""Atomic writes and strict, streaming reads that name the file and record on failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from components.errors import InputError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``, else delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    encoding = None if "b" in mode else "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp directory; on success it replaces ``path`` whole, on failure it is removed.

    The old directory is moved aside before the new one is renamed in, so a reader sees either the
    complete old output or the complete new one, never a mix.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = target.parent / f".{target.name}.old"
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def read_text_strict(path: str | os.PathLike[str]) -> str:
    """Read a whole UTF-8 file; a missing file or invalid byte is an ``InputError`` naming it."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise InputError(file, "file not found") from None
    except IsADirectoryError:
        raise InputError(file, "expected a file, found a directory") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(file, f"not valid UTF-8 at byte {exc.start}", record=f"line {line}") from None


def load_json_file(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; malformed JSON is an ``InputError`` with line and column."""
    text = read_text_strict(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", record=f"line {exc.lineno}") from None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Stream ``(line_number, object)`` from a JSON Lines file, skipping blank lines.

    Decoding is strict UTF-8 line by line, so memory stays flat on large files and a bad line is
    reported with its number.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(file, "file not found")
    if file.is_dir():
        raise InputError(file, "expected a file, found a directory")
    with file.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    file, f"not valid UTF-8 at byte {exc.start} of the line", record=f"line {line_no}"
                ) from None
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    file, f"malformed JSON: {exc.msg} (column {exc.colno})", record=f"line {line_no}"
                ) from None


def dumps_jsonl_record(obj: Any) -> str:
    """One compact JSON Lines record, newline included."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB blocks (md5 is what DVC records; sha256 for model sources)."""
    import hashlib

    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
