"""The one scrubber for secrets, and which setting names hold one."""

from __future__ import annotations

import pytest

from components.secrets import REDACTED, is_env_name, is_secret_name, remember, scrub


def test_scrub_replaces_remembered_and_given_secrets_longest_first() -> None:
    remember("sk-remembered-0123456789")
    remember("short")  # too short to scrub safely: ordinary words would go
    text = "a sk-remembered-0123456789 b sk-given-abcdefgh-and-more c short"
    assert scrub(text, ["sk-given-abcdefgh", None, ""]) == f"a {REDACTED} b {REDACTED}-and-more c short"
    remember("sk-given-abcdefgh-and-more")
    assert scrub("sk-given-abcdefgh-and-more") == REDACTED  # the longer key wins over its prefix


@pytest.mark.parametrize(
    "name", ["api_key", "openai.api-key", "hf_access_token", "auth_token", "secret", "db.password", "credentials"]
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "memagent.reader.chunk_tokens",
        "memory_tokens",
        "backends.teacher.max_new_tokens",
        "model.max_context_tokens",
        "backends.judge.api_key_env",  # the name of a variable, not its value
        "tokenizer",
    ],
)
def test_counts_and_variable_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_env_names() -> None:
    assert is_env_name("OPENAI_API_KEY") and is_env_name("_K1")
    assert not is_env_name("sk-abc123") and not is_env_name("1ABC") and not is_env_name("")
