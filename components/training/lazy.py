"""Trainer classes built on first access, so importing a training module does not import TRL or torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_class(name: str, build: Callable[[], type]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds the class ``name`` with ``build()`` on first access, then reuses it."""
    built: list[type] = []

    def module_getattr(attr: str) -> Any:
        if attr != name:
            raise AttributeError(attr)
        if not built:
            built.append(build())
        return built[0]

    return module_getattr
