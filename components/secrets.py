"""Secret values memforge has read, and the one scrubber everything written outside the process goes through.

Keys live in environment variables (``backends.*.api_key_env`` names one). Whatever reads a key ``remember``s its
value; completions, error messages, MLflow tags and params pass through ``scrub``, which replaces every remembered
value (and any explicitly given one) with ``[REDACTED]``. Names are never secret: a hyperparameter called
``max_new_tokens`` or a setting naming a variable is logged as it is (``is_secret_name``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 8  # a shorter value would redact ordinary words
# Setting names whose value is a credential. "token" alone is not one: chunk_tokens and max_new_tokens are counts.
SECRET_NAME = re.compile(
    r"(?:^|[._-])(?:api[_-]?key|secret|password|passwd|credentials?|access[_-]?token|auth[_-]?token|bearer)(?:$|[._-])",
    re.IGNORECASE,
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_known: set[str] = set()
_lock = threading.Lock()


def remember(value: str | None) -> None:
    """Scrub ``value`` from everything written from now on in this process (ignored when short or empty)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _known.add(value)


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every remembered secret, and every value of ``extra``, replaced by ``[REDACTED]``."""
    with _lock:
        secrets = set(_known)
    secrets.update(value for value in extra if value)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a key containing another is one match
        text = text.replace(secret, REDACTED)
    return text


def is_secret_name(name: str) -> bool:
    """Whether a setting called ``name`` holds a credential (``api_key``, ``hf_access_token``), as opposed to a
    count or size (``chunk_tokens``) or the name of a variable holding one (``api_key_env``)."""
    return bool(SECRET_NAME.search(name)) and not name.lower().endswith("_env")


def is_env_name(value: str) -> bool:
    """Whether ``value`` can be an environment variable's name (and so is not a pasted key)."""
    return bool(ENV_NAME.match(value))
