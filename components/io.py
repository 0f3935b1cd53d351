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

from components.errors import InputError, MemforgeError


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
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes it 0600; the user's umask decides
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


def current_umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give a staged folder and everything in it ordinary permissions, as the umask allows (mkdtemp makes it 0700);
    every folder ``atomic_directory`` swaps in (data, models, reports) goes through this."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~mask)


def staging_prefix(target: Path) -> str:
    """The name prefix of ``target``'s staging folders made by this process: ``.<name>.<pid>.``."""
    return f".{target.name}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove ``target``'s staging and backup folders left by processes that are gone (a SIGKILL, a crash);
    returns what was removed. Folders of live processes are left alone."""
    removed = []
    for candidate in target.parent.glob(f".{glob_escape(target.name)}.*"):
        parts = candidate.name[len(target.name) + 2 :].split(".")  # [pid, random, tmp|old]
        if not candidate.is_dir() or len(parts) != 3 or not parts[0].isdigit() or parts[2] not in ("tmp", "old"):
            continue
        if not pid_alive(int(parts[0])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp directory; on success it replaces ``path`` whole, on failure it is removed.

    The old directory is moved aside before the new one is renamed in, so a reader sees either the
    complete old output or the complete new one, never a mix. Staging and backup names carry the pid and a random
    part, so two processes never collide, and staging left by a killed process is removed by the next swap.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        apply_umask(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = Path(tempfile.mkdtemp(prefix=staging_prefix(target), suffix=".old", dir=target.parent))
    try:
        if target.exists():
            os.replace(target, backup / target.name)
        os.replace(staging, target)
    except BaseException:
        if (backup / target.name).exists() and not target.exists():
            os.replace(backup / target.name, target)  # put the previous output back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
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


class AlreadyRunning(MemforgeError):
    """Another process holds the lock: names what is locked and that process's pid."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, with this pid in it) while the block runs; ``AlreadyRunning``
    naming ``what`` and the holder's pid when another process holds it. The operating system releases it when
    the process ends, however it ends, so a killed run never leaves a stale lock."""
    import fcntl

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AlreadyRunning(f"{what} is already running (pid {holder}); lock {file}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
