"""The installed TRL against what memforge's GRPO trainers rely on: its version and the private methods they use.

ADRPO and MemAgent subclass TRL's ``GRPOTrainer`` and override or call private methods, which any TRL release may
change. TRL is pinned (``TRL_PINNED``) and each trainer checks at construction (its ``check_trl_hook``) that every
method it relies on exists with the leading parameters it passes (``require_method``) and still builds or reads the
dict keys it exchanges with TRL (``require_keys``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence

from components.errors import MemforgeError

TRL_PINNED = "1.16"
HOOK = "_generate_and_score_completions"  # GRPOTrainer's generation-and-scoring step, overridden by both trainers


def check_trl_version(who: str) -> None:
    """Raise ``MemforgeError`` unless the installed TRL is ``TRL_PINNED``.x; ``who`` names the trainer."""
    import trl

    version = str(getattr(trl, "__version__", "?"))
    if not re.match(rf"^{re.escape(TRL_PINNED)}(\.|$)", version):
        raise MemforgeError(
            f"{who}: TRL {version} is installed but {who} is pinned to TRL {TRL_PINNED}.x; it overrides private "
            f"GRPOTrainer methods that other TRL versions may change; install trl=={TRL_PINNED}.*"
        )


def require_method(trainer_cls: type, method: str, parameters: Sequence[str], who: str, purpose: str) -> None:
    """Raise ``MemforgeError`` unless ``trainer_cls.method`` is callable and its first parameters are ``parameters``;
    ``purpose`` says what ``who`` needs it for."""
    name = getattr(trainer_cls, "__name__", repr(trainer_cls))
    function = getattr(trainer_cls, method, None)
    if not callable(function):
        raise MemforgeError(
            f"{who}: {name} has no {method}({', '.join(parameters[1:])}) method; {purpose} (TRL {TRL_PINNED}); the "
            "installed TRL is not compatible"
        )
    try:
        found = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        found = ()
    if found[: len(parameters)] != tuple(parameters):
        raise MemforgeError(f"{who}: {name}.{method} has signature {found}; expected {tuple(parameters)} first")


def require_keys(trainer_cls: type, method: str, keys: Sequence[str], who: str, purpose: str) -> None:
    """Raise ``MemforgeError`` unless the source of ``trainer_cls.method`` names every key of ``keys`` as a string
    literal (the dict entries it builds or reads); ``purpose`` says why ``who`` needs them."""
    name = getattr(trainer_cls, "__name__", repr(trainer_cls))
    try:
        source = inspect.getsource(getattr(trainer_cls, method))
    except (OSError, TypeError, AttributeError):
        source = ""
    missing = [key for key in keys if f'"{key}"' not in source and f"'{key}'" not in source]
    if missing:
        raise MemforgeError(
            f"{who}: {name}.{method} does not handle {missing}; {purpose} (TRL {TRL_PINNED} layout); the installed "
            "TRL is not compatible"
        )
