"""A local OpenAI-compatible chat server over any ``GenerationBackend`` (by default a local model folder).

Routes (a subset of OpenAI's schema, enough for ``OpenAIBackend``, the ``openai`` client and curl):

- ``POST /v1/chat/completions``: model, messages, max_tokens (or max_completion_tokens), temperature, top_p, n,
  seed, stop -> ``chat.completion`` with choices, usage, id, created, model. No streaming.
- ``GET /v1/models``: the one served model.
- ``POST /tokenize``: vLLM-style token count (``{"model", "prompt"}`` -> ``{"count", "max_model_len"}``).
- ``GET /health``: liveness, never behind the key.

With an API key (``--api-key-env NAME``: the key is read from that environment variable), every route but
``/health`` needs ``Authorization: Bearer <key>``, else 401. Generation is serialised (one request at a time).

(No ``from __future__ import annotations`` here: FastAPI must resolve the request models defined inside
``build_app``, which lazy-imports pydantic and FastAPI.)

    python -m components.llm.server --model models/base --port 8000 [--api-key-env MEMFORGE_API_KEY]
"""

import argparse
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from components.config import BackendConfig
from components.errors import ConfigError, MemforgeError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.llm.backends import GenerationBackend

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_N = 16


def _error(status: int, message: str, kind: str, code: str | None = None) -> Any:
    """An OpenAI-style error response."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": code}})


def _check_key(authorization: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <api_key>`` (constant-time comparison)."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def build_app(
    backend: "GenerationBackend",
    model_name: str,
    api_key: str | None = None,
    *,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    max_model_len: int | None = None,
) -> "FastAPI":
    """A FastAPI app serving ``backend`` as ``model_name``; requests need ``api_key`` when one is given."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel, ConfigDict, Field

    from components.llm.backends import SamplingParams

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: str
        content: str

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # logprobs, user, ... are accepted and ignored
        model: str | None = None
        messages: list[ChatMessage] = Field(min_length=1)
        max_tokens: int | None = Field(default=None, ge=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)
        temperature: float = Field(default=1.0, ge=0.0, le=2.0)
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        n: int = Field(default=1, ge=1, le=MAX_N)
        seed: int | None = None
        stop: str | list[str] | None = None
        stream: bool = False

    class TokenizeRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str | None = None
        prompt: str

    app = FastAPI(title="memforge OpenAI-compatible server", docs_url=None, redoc_url=None)
    lock = threading.Lock()

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health" and not _check_key(request.headers.get("authorization"), api_key):
            return _error(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", "auth_error", "401")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Any:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    def unknown_model(name: str | None) -> Any:
        if name and name != model_name:
            return _error(404, f"the model {name!r} does not exist; this server serves {model_name!r}", "not_found")
        return None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "memforge"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:
        if (missing := unknown_model(req.model)) is not None:
            return missing
        if req.stream:
            return _error(400, "streaming is not supported by this server", "invalid_request_error")
        try:
            params = SamplingParams(
                max_new_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                n=req.n,
                seed=req.seed,
                stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
            )
        except ValueError as exc:
            return _error(400, f"invalid request: {exc}", "invalid_request_error")
        conversation = [{"role": m.role, "content": m.content} for m in req.messages]
        try:
            with lock:
                (generations,) = backend.generate([conversation], params)
        except MemforgeError as exc:
            logger.error("generation failed: %s", exc)
            return _error(500, f"generation failed: {exc}", "server_error")
        return chat_completion_body(generations, model_name)

    @app.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> Any:
        if (missing := unknown_model(req.model)) is not None:
            return missing
        count = backend.count_tokens(req.prompt)
        return {"count": count, "max_model_len": max_model_len}

    return app


def chat_completion_body(generations: Sequence[Any], model_name: str) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for one conversation's generations."""
    prompt_tokens = generations[0].prompt_tokens if generations else 0
    completion_tokens = sum(g.completion_tokens for g in generations)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}
            for i, g in enumerate(generations)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def api_key_from_env(name: str) -> str | None:
    """The key held by the environment variable ``name`` (None when no name is given); ``ConfigError`` naming the
    variable when it is unset or empty."""
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise ConfigError(f"--api-key-env {name}: the environment variable {name} is not set or empty")
    return key


def serve(
    model_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str = "",
    *,
    model_name: str | None = None,
    dtype: str = "auto",
    batch_size: int = 8,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    log_level: str = "info",
) -> None:
    """Load ``model_dir`` into a ``TransformersBackend`` and serve it with uvicorn until interrupted.

    The model is served as ``model_name`` (default: ``model_dir`` as given, like ``vllm serve``).
    """
    import uvicorn

    from components.llm.backends import TransformersBackend

    api_key = api_key_from_env(api_key_env)
    cfg = BackendConfig(kind="transformers", model=str(model_dir), dtype=dtype, batch_size=batch_size)  # type: ignore[arg-type]
    backend = TransformersBackend(cfg)
    max_len = getattr(backend.model.config, "max_position_embeddings", None)
    app = build_app(
        backend, model_name or str(model_dir), api_key, default_max_tokens=default_max_tokens, max_model_len=max_len
    )
    logger.info("serving %s on http://%s:%d/v1 (API key %s)", model_dir, host, port, "required" if api_key else "off")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m components.llm.server``: serve a local model folder."""
    parser = argparse.ArgumentParser(prog="python -m components.llm.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/base", help="model folder (default: models/base)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key-env", default="", help="environment variable holding the required API key")
    parser.add_argument("--served-model-name", default=None, help="model name clients send (default: --model)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="default max_tokens per request")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(
            args.model,
            args.host,
            args.port,
            args.api_key_env,
            model_name=args.served_model_name,
            dtype=args.dtype,
            batch_size=args.batch_size,
            default_max_tokens=args.max_tokens,
            log_level=args.log_level,
        )
    except MemforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
