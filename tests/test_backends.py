"""Generation backends: transformers on a tiny real model, OpenAI over real local servers, vLLM's absence.

Nothing is mocked: the OpenAI backend talks to ``python -m components.llm.server`` in a subprocess and to small
FastAPI apps served by uvicorn in a thread (flaky, slow, rate-limited, leaky and concurrency-counting upstreams).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import sys
import time
from collections import defaultdict
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves the (postponed) annotations here
from fastapi.responses import JSONResponse, PlainTextResponse

from components.config import BackendConfig
from components.errors import ConfigError, MemforgeError
from components.llm.backends import (
    GPU_INSTALL_HINT,
    BackendError,
    BackendUnavailable,
    Generation,
    GenerationBackend,
    OpenAIBackend,
    SamplingParams,
    TransformersBackend,
    _apportion,
    backoff_delay,
    completion_end,
    create_backend,
    default_sampling,
    left_pad,
    parse_chat_completion,
    parse_retry_after,
    truncate_at_stop,
)
from tests.llm_fixtures import ModelServerProcess, ThreadedServer, build_chatty_model, free_port

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You remember facts about the user."},
        {"role": "user", "content": "Where does Alice live now? She moved to Berlin in March 2024."},
    ],
    [{"role": "user", "content": "What is my name?"}],
    [{"role": "user", "content": "Tell me about Paris and London."}],
    [{"role": "user", "content": "ok"}],
]
GREEDY = SamplingParams(max_new_tokens=12)
KEY_ENV = "MEMFORGE_TEST_BACKEND_KEY"
SERVED_NAME = "tiny-chat"
FAST_RETRY = {"backoff_base": 0.001, "backoff_max": 0.01}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def chatty_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with weights large enough that its continuations depend on the prompt."""
    return build_chatty_model(tiny_model_dir, tmp_path_factory.mktemp("chatty") / "model")


@pytest.fixture(scope="module")
def tf_backend(chatty_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(BackendConfig(model=str(chatty_model_dir), batch_size=3, seed=11))


def _sibling(backend: TransformersBackend, **changes: Any) -> TransformersBackend:
    """Another backend over the same loaded model, with a different config."""
    return TransformersBackend(
        dataclasses.replace(backend.cfg, **changes), model=backend.model, tokenizer=backend.tokenizer
    )


@pytest.fixture(scope="session")
def server_key() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


@pytest.fixture(scope="session")
def model_server(chatty_model_dir: Path, server_key: str, tmp_path_factory: pytest.TempPathFactory):
    """``python -m components.llm.server`` serving the chatty model, key-protected."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--api-key-env", KEY_ENV, "--served-model-name", SERVED_NAME]
    with ModelServerProcess(chatty_model_dir, log, args, {KEY_ENV: server_key}) as server:
        yield server


def _openai(base_url: str, **changes: Any) -> BackendConfig:
    return dataclasses.replace(
        BackendConfig(kind="openai", model=SERVED_NAME, base_url=base_url, max_new_tokens=12, seed=11), **changes
    )


class Upstream:
    """A real FastAPI app playing misbehaving OpenAI-compatible servers; ``/{scenario}/{tag}/v1/...``.

    Scenarios: ok (echo the last message after ``delay`` s, counting requests in flight), flaky (503 twice, then ok),
    flaky-ra (the same with Retry-After: 0.25), ratelimit (429 once with an HTTP-date Retry-After), down (always 503),
    slow (sleeps 0.6 s), malformed, notjson, leaky (400 echoing the Authorization header), echokey (a completion
    repeating the Authorization header).
    """

    def __init__(self) -> None:
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.auth: dict[str, list[str | None]] = defaultdict(list)

    def app(self) -> Any:
        app = FastAPI()

        @app.post("/{scenario}/{tag}/v1/chat/completions")
        async def complete(scenario: str, tag: str, request: Request) -> Any:
            body = await request.json()
            self.attempts[tag].append(time.monotonic())
            self.auth[tag].append(request.headers.get("authorization"))
            count = len(self.attempts[tag])
            if (
                scenario == "ok"
                or (scenario.startswith("flaky") and count > 2)
                or (scenario == "ratelimit" and count > 1)
            ):
                return await self._echo(tag, body)
            if scenario in ("flaky", "down"):
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if scenario == "flaky-ra":
                return JSONResponse({"error": {"message": "busy"}}, status_code=503, headers={"Retry-After": "0.25"})
            if scenario == "ratelimit":
                when = formatdate(time.time() + 1.2, usegmt=True)  # whole seconds: waits 0.2 .. 1.2 s
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": when})
            if scenario == "slow":
                await asyncio.sleep(0.6)
                return await self._echo(tag, body)
            if scenario == "malformed":
                return JSONResponse({"choices": [{"message": {"content": 7}}], "usage": {}})
            if scenario == "notjson":
                return PlainTextResponse("<html>gateway</html>")
            if scenario == "leaky":
                header = request.headers.get("authorization")
                return JSONResponse({"error": {"message": f"bad credentials {header}"}}, status_code=400)
            if scenario == "echokey":  # a 200 whose completion repeats the Authorization header
                header = request.headers.get("authorization")
                body["messages"][-1]["content"] = f"your header was {header}"
                return await self._echo(tag, body)
            return JSONResponse({"error": {"message": "unknown scenario"}}, status_code=404)

        return app

    async def _echo(self, tag: str, body: dict[str, Any]) -> dict[str, Any]:
        self.in_flight[tag] += 1
        self.max_in_flight[tag] = max(self.max_in_flight[tag], self.in_flight[tag])
        try:
            await asyncio.sleep(float(tag.rsplit("-", 1)[-1]) if "-delay-" in tag else 0)
        finally:
            self.in_flight[tag] -= 1
        text = body["messages"][-1]["content"]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i in range(body.get("n", 1))
        ]
        return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 2 * len(choices)}}


@pytest.fixture(scope="module")
def upstream():
    fake = Upstream()
    with ThreadedServer(fake.app()) as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


def _tag(request: pytest.FixtureRequest, suffix: str = "") -> str:
    return f"{request.node.name}{suffix}".replace("[", "_").replace("]", "_")


# ---------------------------------------------------------------------------------------------
# pure helpers


def test_sampling_params_validate_and_defaults() -> None:
    cfg = BackendConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    assert default_sampling(cfg) == SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    assert SamplingParams(max_new_tokens=1, stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]
    assert SamplingParams(max_new_tokens=1, stop="x").stop == ("x",)  # type: ignore[arg-type]
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"n": 0}, {"stop": ("",)}):
        with pytest.raises(ValueError):  # noqa: PT011 - each message names its own field
            SamplingParams(**{"max_new_tokens": 4, **bad})


def test_small_helpers() -> None:
    assert truncate_at_stop("abc. def\n", ["\n", "."]) == ("abc", True)
    assert truncate_at_stop("abc", ["x"]) == ("abc", False)
    assert left_pad([[5, 6, 7], [8]], 0) == ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    assert completion_end([4, 9, 3, 0, 0], frozenset({3}), None) == (3, True)
    assert completion_end([4, 9, 5, 0, 0], frozenset({3}), 2) == (2, False)
    assert completion_end([4, 9, 5, 6], frozenset({3}), None) == (4, False)
    assert _apportion(7, [1, 1]) in ([4, 3], [3, 4]) and sum(_apportion(10, [3, 0, 5])) == 10
    assert _apportion(5, [0, 0]) in ([3, 2], [2, 3])


def test_retry_after_and_backoff() -> None:
    import random

    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    now = 1_000_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    rng = random.Random(0)
    delays = [backoff_delay(attempt, 0.5, 4.0, rng) for attempt in range(6)]
    for attempt, delay in enumerate(delays):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling


def test_parse_chat_completion() -> None:
    body = {
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "bb"}, "finish_reason": "length"},
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    gens = parse_chat_completion(body, 2)
    assert [g.text for g in gens] == ["a", "bb"]
    assert [g.finish_reason for g in gens] == ["stop", "length"]
    assert [g.completion_tokens for g in gens] == [2, 4] and {g.prompt_tokens for g in gens} == {5}
    for bad in ({}, {"choices": []}, {"choices": body["choices"]}, {**body, "usage": {"prompt_tokens": "x"}}, []):
        with pytest.raises(BackendError, match="malformed"):
            parse_chat_completion(bad, 2)


def test_create_backend_dispatch_and_config_errors(chatty_model_dir: Path) -> None:
    backend = create_backend(BackendConfig(model=str(chatty_model_dir)))
    assert isinstance(backend, TransformersBackend) and isinstance(backend, GenerationBackend)
    assert isinstance(create_backend(_openai("http://127.0.0.1:9/v1")), OpenAIBackend)
    with pytest.raises(ConfigError, match="base_url"):
        create_backend(BackendConfig(kind="openai"))
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIBackend(_openai("http://127.0.0.1:9/v1", max_concurrency=0))


def test_backends_module_imports_nothing_heavy() -> None:
    import subprocess

    heavy = "{'torch', 'transformers', 'httpx', 'vllm', 'fastapi'}"
    code = f"import sys, components.llm.backends; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# transformers


def test_batched_generation_equals_one_by_one(tf_backend: TransformersBackend) -> None:
    batched = tf_backend.generate(CONVERSATIONS, GREEDY)
    single = _sibling(tf_backend, batch_size=1)
    one_by_one = [single.generate([conversation], GREEDY)[0] for conversation in CONVERSATIONS]
    assert batched == one_by_one
    assert len({gens[0].prompt_tokens for gens in batched}) > 2  # really different lengths, so really padded
    assert len({gens[0].text for gens in batched}) == len(CONVERSATIONS)  # the prompt matters
    for conversation, gens in zip(CONVERSATIONS, batched, strict=True):
        assert gens[0].prompt_tokens == len(tf_backend.render(conversation))


def test_greedy_is_deterministic_and_n_repeats_it(tf_backend: TransformersBackend) -> None:
    first = tf_backend.generate(CONVERSATIONS, GREEDY)
    assert tf_backend.generate(CONVERSATIONS, GREEDY) == first
    repeated = tf_backend.generate(CONVERSATIONS, dataclasses.replace(GREEDY, n=3))
    assert repeated == [[gens[0]] * 3 for gens in first]


def test_seeded_sampling_is_reproducible(tf_backend: TransformersBackend) -> None:
    import torch

    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=5)
    rng_before = torch.random.get_rng_state()
    first = tf_backend.generate(CONVERSATIONS, params)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert tf_backend.generate(CONVERSATIONS, params) == first
    assert tf_backend.generate(CONVERSATIONS, dataclasses.replace(params, seed=6)) != first
    assert tf_backend.generate(CONVERSATIONS, GREEDY) != first
    # no seed in the params: the config's seed
    unseeded = dataclasses.replace(params, seed=None)
    assert tf_backend.generate(CONVERSATIONS, unseeded) == tf_backend.generate(CONVERSATIONS, unseeded)


def test_n_samples_per_conversation(tf_backend: TransformersBackend) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=4, seed=1)
    results = tf_backend.generate(CONVERSATIONS, params)
    assert [len(gens) for gens in results] == [4] * len(CONVERSATIONS)
    for conversation, gens in zip(CONVERSATIONS, results, strict=True):
        assert len({g.text for g in gens}) > 1
        assert {g.prompt_tokens for g in gens} == {len(tf_backend.render(conversation))}


def test_max_new_tokens_gives_length(tf_backend: TransformersBackend) -> None:
    for gens in tf_backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=5)):
        assert gens[0].completion_tokens == 5
        assert gens[0].finish_reason == "length"


def test_stop_strings_end_and_truncate(tf_backend: TransformersBackend) -> None:
    full = tf_backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=16))
    stops: list[str] = []
    for gens in full:
        text = gens[0].text
        # a two-character stop string first seen after a few characters, free of partial-byte replacement chars
        candidates = [text[i : i + 2] for i in range(3, len(text) - 2) if "\ufffd" not in text[i : i + 2]]
        stops.append(next(c for c in candidates if text.find(c) >= 3))
    for conversation, gens, stop in zip(CONVERSATIONS, full, stops, strict=True):
        (cut,) = tf_backend.generate([conversation], SamplingParams(max_new_tokens=16, stop=(stop, "\x00never")))
        expected = gens[0].text[: gens[0].text.find(stop)]
        assert cut[0].text == expected
        assert cut[0].finish_reason == "stop"
        assert cut[0].completion_tokens < 16  # generation ended early, not just the text
    # batched with mixed stop hits: rows that stop early do not disturb the others
    batched = tf_backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=16, stop=(stops[1],)))
    for gens, ref in zip(batched, full, strict=True):
        expected, hit = truncate_at_stop(ref[0].text, (stops[1],))
        assert gens[0].text == expected
        assert gens[0].finish_reason == ("stop" if hit else "length")


def test_eos_from_the_generation_config_ends_a_completion(chatty_model_dir: Path) -> None:
    """A model whose generation config lists extra eos ids (as Qwen's does) stops at them, text excluding eos."""
    import torch

    from components.llm.model_assets import load_model_folder

    model, tokenizer = load_model_folder(chatty_model_dir, "float32")
    backend = TransformersBackend(BackendConfig(model=str(chatty_model_dir)), model=model, tokenizer=tokenizer)
    prompt = backend.render(CONVERSATIONS[0])
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    tokens = out[0, len(prompt) :].tolist()
    k = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokens[k]]
    (gens,) = backend.generate([CONVERSATIONS[0]], SamplingParams(max_new_tokens=12))
    assert gens[0].completion_tokens == k + 1
    assert gens[0].finish_reason == "stop"
    assert gens[0].text == tokenizer.decode(tokens[:k], skip_special_tokens=True)


def test_transformers_backend_basics(tf_backend: TransformersBackend, chatty_model_dir: Path) -> None:
    assert tf_backend.generate([], GREEDY) == []
    assert tf_backend.count_tokens("Hello! My name is Alice.") == len(
        tf_backend.tokenizer.encode("Hello! My name is Alice.")
    )
    assert tf_backend.model.device.type == "cpu" and str(tf_backend.model.dtype) == "torch.float32"
    assert tf_backend.model.training is False
    with pytest.raises(AttributeError):
        tf_backend.model = None  # type: ignore[misc]  # read-only
    with pytest.raises(MemforgeError, match="no such model folder"):
        TransformersBackend(BackendConfig(model=str(chatty_model_dir / "missing")))
    # the config's sampling is the default
    (gens,) = _sibling(tf_backend, max_new_tokens=3).generate([CONVERSATIONS[0]])
    assert gens[0].completion_tokens == 3


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP against the real local server


@pytest.mark.server
def test_openai_backend_matches_transformers(
    model_server: ModelServerProcess, server_key: str, tf_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, server_key)
    expected = tf_backend.generate(CONVERSATIONS, GREEDY)
    with OpenAIBackend(_openai(model_server.base_url, api_key_env=KEY_ENV, max_concurrency=3)) as remote:
        assert remote.generate(CONVERSATIONS, GREEDY) == expected
        stop = SamplingParams(max_new_tokens=12, stop=(expected[1][0].text[4:6],))
        assert remote.generate(CONVERSATIONS, stop) == tf_backend.generate(CONVERSATIONS, stop)
        sampled = remote.generate(CONVERSATIONS[:2], SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=2))
        assert [len(g) for g in sampled] == [3, 3]
        assert sum(g.completion_tokens for g in sampled[0]) == 18  # usage is per request, shared out exactly
        # count_tokens: the served name is no local folder, so it asks the server's /tokenize
        assert remote.count_tokens("Hello! My name is Alice.") == tf_backend.count_tokens("Hello! My name is Alice.")


@pytest.mark.server
def test_openai_backend_api_key(
    model_server: ModelServerProcess,
    server_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # no key configured: the server refuses, and a 401 is not retried
    with pytest.raises(BackendError, match="401") as refused:
        OpenAIBackend(_openai(model_server.base_url, max_retries=3)).generate(CONVERSATIONS[:1], GREEDY)
    assert "after" not in str(refused.value)
    # the key variable named but unset: the error names the variable
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend(_openai(model_server.base_url, api_key_env=KEY_ENV)).generate(CONVERSATIONS[:1], GREEDY)
    # a wrong key: 401, and the wrong key (a secret too) is nowhere
    wrong = f"sk-wrong-{secrets.token_hex(8)}"
    monkeypatch.setenv(KEY_ENV, wrong)
    backend = OpenAIBackend(_openai(model_server.base_url, api_key_env=KEY_ENV))
    with pytest.raises(BackendError, match="401") as rejected:
        backend.generate(CONVERSATIONS[:1], GREEDY)
    # the right key works
    monkeypatch.setenv(KEY_ENV, server_key)
    assert backend.generate(CONVERSATIONS[:1], GREEDY)[0][0].prompt_tokens > 0
    for secret in (wrong, server_key):
        assert secret not in str(rejected.value) and secret not in repr(rejected.value)
        assert secret not in repr(backend) and secret not in str(vars(backend))
        assert secret not in caplog.text
    assert caplog.records  # the logs were really captured (httpx logs each request)


@pytest.mark.server
def test_server_routes(model_server: ModelServerProcess, server_key: str) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {server_key}"}
    models = httpx.get(f"{model_server.base_url}/models", headers=auth).json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]
    body = {"model": SERVED_NAME, "messages": CONVERSATIONS[0], "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{model_server.base_url}/chat/completions", json=body, headers=auth).json()
    assert (
        reply["object"] == "chat.completion" and reply["model"] == SERVED_NAME and reply["id"].startswith("chatcmpl-")
    )
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"] == 16
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["choices"][0]["finish_reason"] == "length"
    unknown = httpx.post(f"{model_server.base_url}/chat/completions", json={**body, "model": "gpt-9"}, headers=auth)
    assert unknown.status_code == 404 and "gpt-9" in unknown.json()["error"]["message"]
    invalid = httpx.post(f"{model_server.base_url}/chat/completions", json={**body, "messages": []}, headers=auth)
    assert invalid.status_code == 400 and "messages" in invalid.json()["error"]["message"]
    assert httpx.get(f"{model_server.base_url}/models").status_code == 401


@pytest.mark.server
def test_server_app_without_key_in_process(tf_backend: TransformersBackend) -> None:
    """``build_app`` over any backend, without a key, through a real uvicorn server."""
    from components.llm.server import build_app

    with ThreadedServer(build_app(tf_backend, "local")) as server:
        backend = OpenAIBackend(_openai(f"{server.url}/v1", model="local", max_concurrency=2))
        assert backend.generate(CONVERSATIONS[:3], GREEDY) == tf_backend.generate(CONVERSATIONS[:3], GREEDY)
        backend.close()


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP: concurrency, retries, timeouts, malformed and leaky upstreams


@pytest.mark.server
@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_is_bounded_and_order_kept(upstream: Upstream, limit: int, request: pytest.FixtureRequest) -> None:
    tag = _tag(request, "-delay-0.05")
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(9)]
    backend = OpenAIBackend(_openai(f"{upstream.url}/ok/{tag}/v1", max_concurrency=limit))  # type: ignore[attr-defined]
    results = backend.generate(conversations, GREEDY)
    assert [gens[0].text for gens in results] == [f"question {i}" for i in range(9)]
    assert len(upstream.attempts[tag]) == 9
    assert upstream.max_in_flight[tag] == limit


@pytest.mark.server
def test_retries_then_succeeds(
    upstream: Upstream, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="components.llm.backends")
    tag = _tag(request)
    backend = OpenAIBackend(_openai(f"{upstream.url}/flaky/{tag}/v1", max_retries=2), **FAST_RETRY)  # type: ignore[attr-defined]
    (gens,) = backend.generate(CONVERSATIONS[:1], GREEDY)
    assert gens[0].text == "hi" and len(upstream.attempts[tag]) == 3
    assert "retry 1/2" in caplog.text and "HTTP 503" in caplog.text


@pytest.mark.server
def test_gives_up_after_max_retries(upstream: Upstream, request: pytest.FixtureRequest) -> None:
    tag = _tag(request)
    url = f"{upstream.url}/down/{tag}/v1"  # type: ignore[attr-defined]
    with pytest.raises(BackendError) as failed:
        OpenAIBackend(_openai(url, max_retries=2), **FAST_RETRY).generate(CONVERSATIONS[:1], GREEDY)
    message = str(failed.value)
    assert f"{url}/chat/completions" in message and "503" in message and "3 attempt(s)" in message
    assert "overloaded" in message
    assert len(upstream.attempts[tag]) == 3


@pytest.mark.server
def test_retry_after_is_honoured(upstream: Upstream, request: pytest.FixtureRequest) -> None:
    tag = _tag(request)
    backend = OpenAIBackend(_openai(f"{upstream.url}/flaky-ra/{tag}/v1", max_retries=2), **FAST_RETRY)  # type: ignore[attr-defined]
    backend.generate(CONVERSATIONS[:1], GREEDY)
    attempts = upstream.attempts[tag]
    assert len(attempts) == 3
    assert all(later - earlier >= 0.24 for earlier, later in itertools.pairwise(attempts))
    # 429 with an HTTP-date Retry-After
    tag = _tag(request, "-429")
    backend = OpenAIBackend(_openai(f"{upstream.url}/ratelimit/{tag}/v1", max_retries=1), **FAST_RETRY)  # type: ignore[attr-defined]
    assert backend.generate(CONVERSATIONS[:1], GREEDY)[0][0].text == "hi"
    first, second = upstream.attempts[tag]
    assert second - first >= 0.15


@pytest.mark.server
def test_timeouts_are_retried_then_reported(upstream: Upstream, request: pytest.FixtureRequest) -> None:
    tag = _tag(request)
    url = f"{upstream.url}/slow/{tag}/v1"  # type: ignore[attr-defined]
    backend = OpenAIBackend(_openai(url, max_retries=1, timeout_seconds=0.2), **FAST_RETRY)
    with pytest.raises(BackendError, match=r"timed out after 0\.2 s") as failed:
        backend.generate(CONVERSATIONS[:1], GREEDY)
    assert url in str(failed.value) and "2 attempt(s)" in str(failed.value)
    assert len(upstream.attempts[tag]) == 2


def test_connection_errors_are_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(_openai(url, max_retries=2, timeout_seconds=2), **FAST_RETRY)
    with pytest.raises(BackendError, match=r"3 attempt\(s\): connection error: ConnectError"):
        backend.generate(CONVERSATIONS[:1], GREEDY)


@pytest.mark.server
@pytest.mark.parametrize(("scenario", "match"), [("malformed", "malformed chat completion"), ("notjson", "not JSON")])
def test_malformed_responses(upstream: Upstream, scenario: str, match: str, request: pytest.FixtureRequest) -> None:
    tag = _tag(request)
    backend = OpenAIBackend(_openai(f"{upstream.url}/{scenario}/{tag}/v1", max_retries=3), **FAST_RETRY)  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match=match):
        backend.generate(CONVERSATIONS[:1], GREEDY)
    assert len(upstream.attempts[tag]) == 1  # a 200 with a bad body is not retried


@pytest.mark.server
def test_key_is_sent_and_scrubbed_from_echoing_errors(
    upstream: Upstream,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = f"sk-leak-{secrets.token_hex(12)}"
    monkeypatch.setenv(KEY_ENV, key)
    tag = _tag(request)
    backend = OpenAIBackend(_openai(f"{upstream.url}/leaky/{tag}/v1", api_key_env=KEY_ENV), **FAST_RETRY)  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="400") as failed:
        backend.generate(CONVERSATIONS[:1], GREEDY)
    assert upstream.auth[tag] == [f"Bearer {key}"]  # sent, as a bearer token
    assert "bad credentials Bearer [REDACTED]" in str(failed.value)
    # retried failures log and raise without the key too
    down = OpenAIBackend(_openai(f"{upstream.url}/down/{tag}-2/v1", api_key_env=KEY_ENV, max_retries=1), **FAST_RETRY)  # type: ignore[attr-defined]
    with pytest.raises(BackendError) as gave_up:
        down.generate(CONVERSATIONS[:1], GREEDY)
    for text in (str(failed.value), repr(failed.value), str(gave_up.value), repr(backend), repr(down), caplog.text):
        assert key not in text
    assert failed.value.__cause__ is None and failed.value.__context__ is None


@pytest.mark.server
def test_a_key_echoed_in_a_completion_is_scrubbed_from_its_text(
    upstream: Upstream, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completions become trajectories, MLflow samples and memories: the key must not reach any of them."""
    key = f"sk-echo-{secrets.token_hex(12)}"
    monkeypatch.setenv(KEY_ENV, key)
    backend = OpenAIBackend(_openai(f"{upstream.url}/echokey/{_tag(request)}/v1", api_key_env=KEY_ENV))
    [[completion]] = backend.generate(CONVERSATIONS[:1], GREEDY)
    assert completion.text == "your header was Bearer [REDACTED]"


# ---------------------------------------------------------------------------------------------
# vLLM


def test_vllm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, chatty_model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError, as where it is absent
    with pytest.raises(BackendUnavailable, match=GPU_INSTALL_HINT.replace("[", r"\[").replace(".", r"\.")):
        create_backend(BackendConfig(kind="vllm", model=str(chatty_model_dir)))


@pytest.mark.gpu
def test_vllm_generates_on_gpu(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from components.llm.backends import VLLMBackend
    from components.llm.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "model", hidden_size=256)  # head_dim 64: every attention backend has it
    backend = VLLMBackend(
        BackendConfig(kind="vllm", model=str(folder), dtype="float32"), gpu_memory_utilization=0.3, enforce_eager=True
    )
    try:
        greedy = backend.generate(CONVERSATIONS, GREEDY)
        assert backend.generate(CONVERSATIONS, GREEDY) == greedy
        assert all(len(g) == 1 and g[0].completion_tokens <= 12 and g[0].prompt_tokens > 0 for g in greedy)
        sampled = backend.generate(CONVERSATIONS, SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=1))
        assert [len(g) for g in sampled] == [3] * len(CONVERSATIONS)
        assert backend.count_tokens("hello world") > 0
    finally:
        backend.close()


@pytest.mark.gpu
def test_transformers_backend_on_gpu(chatty_model_dir: Path) -> None:
    backend = TransformersBackend(BackendConfig(model=str(chatty_model_dir), batch_size=2))
    assert backend.model.device.type == "cuda" and str(backend.model.dtype) == "torch.bfloat16"
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=3)
    assert backend.generate(CONVERSATIONS, params) == backend.generate(CONVERSATIONS, params)
    assert [len(g) for g in backend.generate(CONVERSATIONS, GREEDY)] == [1] * len(CONVERSATIONS)
    backend.close()


def test_generation_is_a_plain_value() -> None:
    gen = Generation(text="x", prompt_tokens=1, completion_tokens=1, finish_reason="stop")
    with pytest.raises(dataclasses.FrozenInstanceError):
        gen.text = "y"  # type: ignore[misc]
