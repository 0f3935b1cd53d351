"""Progress display for long work: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("memforge")


@dataclass
class Progress:
    """Count work done; ``advance`` is cheap so it can sit in a hot loop."""

    description: str
    unit: str
    _bar: object | None = None
    _task: object | None = None
    done: int = 0
    _last_log: float = field(default_factory=time.monotonic)

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(self._task, advance=amount)  # type: ignore[attr-defined]
        elif time.monotonic() - self._last_log > 10:
            self._last_log = time.monotonic()
            log.info("%s: %d %s", self.description, self.done, self.unit)


@contextlib.contextmanager
def progress(description: str, unit: str = "items", total: int | None = None) -> Iterator[Progress]:
    """A live bar when stderr is a terminal (rich); plain log lines every 10 s when it is not (CI, Prefect)."""
    if not sys.stderr.isatty():
        handle = Progress(description, unit)
        yield handle
        log.info("%s: %d %s done", description, handle.done, unit)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with RichProgress(*columns, transient=False) as bar:
        task = bar.add_task(f"{description} ({unit})", total=total)
        yield Progress(description, unit, bar, task)
