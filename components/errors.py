"""Errors that name what failed, so a user can find the bad file and record."""

from __future__ import annotations


class MemforgeError(Exception):
    """Base class for errors memforge reports to users (the CLI prints them without a traceback)."""


class InputError(MemforgeError):
    """Bad input: names the file, the record within it when known, and the reason."""

    def __init__(self, path: object, reason: str, record: object | None = None) -> None:
        self.path = str(path)
        self.record = record
        self.reason = reason
        where = self.path if record is None else f"{self.path} [record {record}]"
        super().__init__(f"{where}: {reason}")


class ConfigError(MemforgeError):
    """A params file or override that does not match the typed configuration."""


class ModelLoadError(MemforgeError):
    """A model that is missing, corrupt, or cannot be loaded."""


class QualityGateError(MemforgeError):
    """Data that failed a critical quality expectation; the message names the records."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM: ``timeout``, Prefect cancellation, ``kill``). A ``BaseException``, like
    ``KeyboardInterrupt``, so cleanup runs (staging removed, MLflow run closed as KILLED) and nothing catches it as
    an ordinary error."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")
