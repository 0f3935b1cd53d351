"""Generation backends behind one interface: local transformers, offline vLLM, and OpenAI-compatible HTTP.

``create_backend(cfg)`` builds the backend a ``BackendConfig`` names. Every backend takes a batch of chat
conversations and returns, per conversation and in order, ``n`` ``Generation``s (text, token counts, finish reason).

- ``TransformersBackend``: a local folder (``load_model_folder``) or hub id; chat template, left padding, batches
  of ``batch_size``, greedy at temperature 0, seeded sampling otherwise, eos and stop strings honoured.
- ``VLLMBackend``: ``vllm.LLM.chat`` (CUDA only; imported when used).
- ``OpenAIBackend``: ``POST {base_url}/chat/completions`` with httpx: timeouts, retries with exponential backoff and
  jitter (honouring Retry-After), at most ``max_concurrency`` requests in flight. The API key is read from the
  environment variable named by ``api_key_env`` for each request, never stored, and scrubbed from every message.

Heavy imports (torch, transformers, vllm, httpx) happen inside functions, so importing this module is instant.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from components.config import BackendConfig
from components.errors import ConfigError, MemforgeError, ModelLoadError
from components.secrets import remember, scrub

logger = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": ..., "content": ...}
FinishReason = Literal["stop", "length"]

GPU_INSTALL_HINT = "pip install -e '.[gpu]' on a CUDA machine"
_RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


class BackendError(MemforgeError):
    """A generation request that failed: names the backend or URL and the reason (never an API key)."""


class BackendUnavailable(BackendError):
    """The backend's engine is not installed or cannot run on this machine."""


# ---------------------------------------------------------------------------------------------
# the interface


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``temperature == 0`` is greedy; ``n`` completions per conversation; ``stop`` strings end a
    completion (and are cut from its text)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One completion: its text (stop string and eos excluded), token counts, and why it ended."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@runtime_checkable
class GenerationBackend(Protocol):
    """What every backend offers."""

    def generate(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None
    ) -> list[list[Generation]]:
        """One list of ``params.n`` generations per conversation, in order."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` under the backend's tokenizer (no special tokens added)."""
        ...

    def close(self) -> None:
        """Release the model, engine or connections."""
        ...


def default_sampling(cfg: BackendConfig) -> SamplingParams:
    """The sampling parameters a backend config implies."""
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed
    )


def create_backend(cfg: BackendConfig) -> GenerationBackend:
    """The backend ``cfg.kind`` names, ready to generate."""
    if cfg.kind == "transformers":
        return TransformersBackend(cfg)
    if cfg.kind == "vllm":
        return VLLMBackend(cfg)
    if cfg.kind == "openai":
        return OpenAIBackend(cfg)
    raise ConfigError(f"unknown backend kind {cfg.kind!r}; expected transformers, vllm or openai")


class _BackendBase:
    """Context-manager support and the default sampling of a config."""

    cfg: BackendConfig

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _params(self, params: SamplingParams | None) -> SamplingParams:
        return default_sampling(self.cfg) if params is None else params


# ---------------------------------------------------------------------------------------------
# small pure helpers


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest occurrence of any stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def resolve_dtype(dtype: str, cuda: bool) -> str:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; anything else as given."""
    if dtype == "auto":
        return "bfloat16" if cuda else "float32"
    return dtype


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Left-pad token id rows to one length; return ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def completion_end(tokens: Sequence[int], eos_ids: frozenset[int], stopped_at: int | None) -> tuple[int, bool]:
    """Where a generated row really ends: ``(token count, ended on eos)``.

    ``stopped_at`` is the count at which a stop string ended the row (if one did); after either end,
    ``generate`` only pads.
    """
    limit = len(tokens) if stopped_at is None else min(stopped_at, len(tokens))
    for i, tok in enumerate(tokens[:limit]):
        if tok in eos_ids:
            return i + 1, True
    return limit, False


def finish_reason(hit_eos: bool, hit_stop: bool, completion_tokens: int, max_new_tokens: int) -> FinishReason:
    """``length`` when the token budget ran out without eos or a stop string, else ``stop``."""
    if hit_eos or hit_stop:
        return "stop"
    return "length" if completion_tokens >= max_new_tokens else "stop"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half of ``min(cap, base * 2**attempt)`` fixed, half random."""
    ceiling = min(cap, base * (2**attempt))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds, also fractional, or an HTTP date); None if absent
    or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def replicate(generations: list[list[Generation]], n: int) -> list[list[Generation]]:
    """Each conversation's single (greedy) generation repeated ``n`` times."""
    return [[gens[0]] * n for gens in generations]


def as_finish_reason(value: object) -> FinishReason:
    """Map an engine's finish reason onto ``stop`` / ``length``."""
    return "length" if value == "length" else "stop"


# ---------------------------------------------------------------------------------------------
# transformers


class TransformersBackend(_BackendBase):
    """Batched chat generation with a local transformers model (CPU float32 or CUDA bfloat16 by default).

    ``model`` and ``tokenizer`` may be passed in (e.g. a policy being trained); otherwise ``cfg.model`` is loaded.
    Calls are serialised by a lock, so one backend may be shared between threads.
    """

    def __init__(self, cfg: BackendConfig, *, model: Any = None, tokenizer: Any = None) -> None:
        if cfg.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {cfg.batch_size}")
        self.cfg = cfg
        self._lock = threading.Lock()
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer, or neither (then cfg.model is loaded)")
        if model is None:
            model, tokenizer = _load_transformers(cfg.model, cfg.dtype)
        if not getattr(tokenizer, "chat_template", None):
            raise BackendError(f"{cfg.model}: the tokenizer has no chat template, so chats cannot be rendered")
        self._model = model
        self._tokenizer = tokenizer

    @property
    def model(self) -> Any:
        """The loaded ``PreTrainedModel`` (shared, not a copy)."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (shared, not a copy)."""
        return self._tokenizer

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.cfg.model!r}, batch_size={self.cfg.batch_size})"

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, conversation: Sequence[Message]) -> list[int]:
        """Token ids of ``conversation`` under the chat template, ending with the assistant generation prompt."""
        text = self._tokenizer.apply_chat_template(
            [dict(m) for m in conversation], add_generation_prompt=True, tokenize=False
        )
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None
    ) -> list[list[Generation]]:
        params = self._params(params)
        if not conversations:
            return []
        prompts = [self.render(c) for c in conversations]
        run = params if not (params.greedy and params.n > 1) else _with_n(params, 1)
        seed = self.cfg.seed if params.seed is None else params.seed
        results: list[list[Generation]] = [[] for _ in prompts]
        # longest first, so each batch holds prompts of similar length (less padding); output order is kept
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        with self._lock, _seeded(seed, self._model.device):
            for chunk in batched(order, self.cfg.batch_size):
                for i, gens in zip(chunk, self._generate_batch([prompts[i] for i in chunk], run), strict=True):
                    results[i] = gens
        return replicate(results, params.n) if run is not params else results

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        import torch

        tok = self._tokenizer
        eos_ids = _eos_ids(self._model, tok)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)
        ids, mask = left_pad(prompts, pad_id)
        device = self._model.device
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=device)
        width = input_ids.shape[1]
        watcher = _stop_watcher(tok, params.stop, width) if params.stop else None
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "num_return_sequences": params.n,
            "pad_token_id": pad_id,
            "eos_token_id": sorted(eos_ids),
        }
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if watcher is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([watcher])
        with torch.inference_mode():
            output = self._model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        generated = output[:, width:].tolist()
        stopped = watcher.stopped_at if watcher is not None else {}
        out: list[list[Generation]] = []
        for p, prompt in enumerate(prompts):
            gens = []
            for j in range(params.n):
                row = p * params.n + j
                gens.append(self._finish(generated[row], len(prompt), eos_ids, stopped.get(row), params))
            out.append(gens)
        return out

    def _finish(
        self,
        tokens: Sequence[int],
        prompt_tokens: int,
        eos_ids: frozenset[int],
        stopped_at: int | None,
        params: SamplingParams,
    ) -> Generation:
        count, hit_eos = completion_end(tokens, eos_ids, stopped_at)
        text_tokens = tokens[: count - 1] if hit_eos else tokens[:count]
        text = self._tokenizer.decode(text_tokens, skip_special_tokens=True)
        text, hit_stop = truncate_at_stop(text, params.stop)
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=count,
            finish_reason=finish_reason(hit_eos, hit_stop, count, params.max_new_tokens),
        )

    def close(self) -> None:
        """Drop the model (and free CUDA memory); the backend is unusable afterwards."""
        cuda = getattr(getattr(self._model, "device", None), "type", "") == "cuda"
        self._model = None
        if cuda:
            import torch

            torch.cuda.empty_cache()


def _with_n(params: SamplingParams, n: int) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, n=n)


def check_model_name(name: str) -> None:
    """``ModelLoadError`` unless ``name`` is an existing path or a hub id (a missing pipeline folder is neither)."""
    from components.llm.model_assets import is_hub_id

    if not Path(name).exists() and not is_hub_id(name):
        raise ModelLoadError(
            f"{name}: no such model folder (run the stage that writes it, or give a folder or a hub id 'org/name')"
        )


def _load_transformers(name: str, dtype: str) -> tuple[Any, Any]:
    """Model (on CUDA when available) and tokenizer from a local folder or a hub id."""
    import torch

    cuda = torch.cuda.is_available()
    resolved = resolve_dtype(dtype, cuda)
    check_model_name(name)
    if Path(name).exists():
        from components.llm.model_assets import load_model_folder

        model, tokenizer = load_model_folder(name, resolved)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, resolved))
        except Exception as exc:  # OSError (offline, unknown id), ValueError, ...
            raise ModelLoadError(f"{name}: cannot load from the hub: {type(exc).__name__}: {exc}") from exc
        model.eval()
    if cuda:
        model.to("cuda")
    return model, tokenizer


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the model's generation config and the tokenizer."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise BackendError("the model and tokenizer define no eos token")
    return frozenset(ids)


class _seeded:
    """Seed torch's RNG for a block without disturbing the caller's RNG state."""

    def __init__(self, seed: int, device: Any) -> None:
        self.seed = seed
        self.device = device
        self._fork: Any = None

    def __enter__(self) -> None:
        import torch

        devices = [self.device] if getattr(self.device, "type", "cpu") == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def _stop_watcher(tokenizer: Any, stop: Sequence[str], prompt_width: int) -> Any:
    """A ``StoppingCriteria`` ending each row whose decoded completion contains a stop string; it records in
    ``stopped_at[row]`` how many tokens the row had generated when it stopped."""
    import torch
    from transformers import StoppingCriteria

    class StopWatcher(StoppingCriteria):
        def __init__(self) -> None:
            self.stopped_at: dict[int, int] = {}

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [row in self.stopped_at for row in range(input_ids.shape[0])]
            for row, is_done in enumerate(done):
                if is_done:
                    continue
                text = tokenizer.decode(input_ids[row, prompt_width:], skip_special_tokens=True)
                if any(s in text for s in stop):
                    self.stopped_at[row] = input_ids.shape[1] - prompt_width
                    done[row] = True
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopWatcher()


# ---------------------------------------------------------------------------------------------
# vLLM


def import_vllm() -> Any:
    """The ``vllm`` module, or ``BackendUnavailable`` saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise BackendUnavailable(f"the vllm backend needs vLLM, which is not installed: {GPU_INSTALL_HINT}") from exc
    return vllm


class VLLMBackend(_BackendBase):
    """vLLM's offline engine (``vllm.LLM``) with its chat API; CUDA only (dtype auto = bfloat16).

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``enforce_eager``, ``max_model_len``).
    Greedy requests with ``n > 1`` are generated once and repeated, as in the other backends.
    """

    def __init__(self, cfg: BackendConfig, **engine_kwargs: Any) -> None:
        self.cfg = cfg
        check_model_name(cfg.model)
        self._vllm = import_vllm()
        try:
            dtype = resolve_dtype(cfg.dtype, cuda=True)
            self._llm = self._vllm.LLM(model=cfg.model, dtype=dtype, seed=cfg.seed, **engine_kwargs)
        except Exception as exc:  # engine start-up: no GPU, out of memory, unsupported model, ...
            raise BackendUnavailable(f"{cfg.model}: vLLM could not start: {type(exc).__name__}: {exc}") from exc
        self._tokenizer = self._llm.get_tokenizer()

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.cfg.model!r})"

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None
    ) -> list[list[Generation]]:
        params = self._params(params)
        if not conversations:
            return []
        n = 1 if params.greedy else params.n
        sampling = self._vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=self.cfg.seed if params.seed is None else params.seed,
        )
        messages = [[dict(m) for m in c] for c in conversations]
        outputs = self._llm.chat(messages=messages, sampling_params=sampling, use_tqdm=False)
        results = [
            [
                Generation(
                    text=o.text,
                    prompt_tokens=len(out.prompt_token_ids or ()),
                    completion_tokens=len(o.token_ids),
                    finish_reason=as_finish_reason(o.finish_reason),
                )
                for o in out.outputs
            ]
            for out in outputs
        ]
        return replicate(results, params.n) if n != params.n else results

    def close(self) -> None:
        """Drop the engine (vLLM frees GPU memory when it is garbage-collected)."""
        self._llm = None


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class OpenAIBackend(_BackendBase):
    """Any OpenAI-compatible ``/chat/completions`` endpoint (vLLM serve, TGI, ``memforge serve``, a hosted API).

    One request per conversation (with ``n``), at most ``cfg.max_concurrency`` in flight, results in input order.
    Transient failures (timeouts, connection errors, 408/429/5xx) are retried up to ``cfg.max_retries`` times with
    exponential backoff and jitter from ``backoff_base`` seconds, capped at ``backoff_max``; a Retry-After header is
    honoured (capped at ``retry_after_max``). The API key is read from ``os.environ[cfg.api_key_env]`` per request
    and never stored, logged or included in an error.
    """

    def __init__(
        self,
        cfg: BackendConfig,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
    ) -> None:
        if not cfg.base_url:
            raise ConfigError("a backend of kind 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if not cfg.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {cfg.base_url!r}")
        if cfg.max_retries < 0 or cfg.max_concurrency < 1 or cfg.timeout_seconds <= 0:
            raise ConfigError(
                "openai backend: need max_retries >= 0, max_concurrency >= 1 and timeout_seconds > 0, got "
                f"{cfg.max_retries}, {cfg.max_concurrency}, {cfg.timeout_seconds}"
            )
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self._rng = random.Random()
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.cfg.model!r}, "
            f"api_key_env={self.cfg.api_key_env!r}, max_concurrency={self.cfg.max_concurrency})"
        )

    # -- public

    def generate(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None
    ) -> list[list[Generation]]:
        params = self._params(params)
        if not conversations:
            return []
        self._api_key()  # a missing key variable fails once, before any request
        bodies = [self._body(c, params) for c in conversations]
        if len(bodies) == 1 or self.cfg.max_concurrency == 1:
            return [self._complete(b) for b in bodies]
        from concurrent.futures import ThreadPoolExecutor

        workers = min(self.cfg.max_concurrency, len(bodies))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memforge-openai") as pool:
            futures = [pool.submit(self._complete, body) for body in bodies]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:  # the first failure fails the call: send nothing more
                    future.cancel()
                raise

    def count_tokens(self, text: str) -> int:
        """With the model's own tokenizer when ``cfg.model`` is a local folder, else via the endpoint's
        vLLM-style ``POST /tokenize`` (served by vLLM and ``memforge serve``)."""
        if Path(self.cfg.model).is_dir():
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.model, local_files_only=True)
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        root = self.base_url.removesuffix("/v1")
        data = self._post(f"{root}/tokenize", {"model": self.cfg.model, "prompt": text, "add_special_tokens": False})
        count = data.get("count") if isinstance(data, dict) else None
        if not isinstance(count, int):
            raise BackendError(f"POST {root}/tokenize: malformed response (no integer 'count')")
        return count

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- requests

    def _body(self, conversation: Sequence[Message], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": [dict(m) for m in conversation],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "seed": self.cfg.seed if params.seed is None else params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _complete(self, body: dict[str, Any]) -> list[Generation]:
        """One request's completions, with the API key scrubbed from their text (an endpoint may echo it)."""
        url = f"{self.base_url}/chat/completions"
        key = self._api_key()
        return [
            dataclasses.replace(g, text=scrub(g.text, [key]))
            for g in parse_chat_completion(self._post(url, body), body["n"], url)
        ]

    def _api_key(self) -> str | None:
        name = self.cfg.api_key_env
        if not name:
            return None
        key = os.environ.get(name, "")
        if not key:
            raise BackendError(f"the environment variable {name} (api_key_env) is not set; it must hold the API key")
        remember(key)
        return key

    def _http(self) -> Any:
        import httpx

        with self._client_lock:
            if self._client is None:
                limits = httpx.Limits(
                    max_connections=self.cfg.max_concurrency, max_keepalive_connections=self.cfg.max_concurrency
                )
                self._client = httpx.Client(timeout=self.cfg.timeout_seconds, limits=limits)
            return self._client

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        """POST ``body`` as JSON with retries; the decoded JSON response, or ``BackendError``."""
        import httpx

        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = self._http()
        attempts = self.cfg.max_retries + 1
        last = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                response = client.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                last = f"timed out after {self.cfg.timeout_seconds:g} s"
            except httpx.TransportError as exc:
                last = f"connection error: {type(exc).__name__}: {scrub(str(exc), [key])}"
            else:
                if response.status_code < 300:
                    return _json(response, url, key)
                last = f"HTTP {response.status_code}{_error_detail(response, key)}"
                if response.status_code not in _RETRY_STATUS:
                    raise BackendError(f"POST {url} failed: {last}")
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                logger.warning("POST %s: %s; retry %d/%d in %.2f s", url, last, attempt + 1, attempts - 1, delay)
                time.sleep(delay)
        raise BackendError(f"POST {url} failed after {attempts} attempt(s): {last}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


def _json(response: Any, url: str, key: str | None) -> Any:
    try:
        return response.json()
    except ValueError:
        snippet = scrub(response.text[:200], [key])
        raise BackendError(f"POST {url}: the response is not JSON: {snippet!r}") from None


def _error_detail(response: Any, key: str | None) -> str:
    """`` (reason): message`` from an error response, with the key scrubbed."""
    message = ""
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", ""))
        elif error is not None:
            message = str(error)
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"])
    except ValueError:
        message = response.text
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    message = scrub(message.strip()[:300], [key])
    return f"{reason}: {message}" if message else reason


def parse_chat_completion(data: Any, n: int, url: str = "") -> list[Generation]:
    """``Generation``s from an OpenAI chat-completion response body; ``BackendError`` if it is malformed.

    OpenAI reports completion tokens per request; with ``n > 1`` they are shared out over the choices in proportion
    to their text length (the total is exact).
    """
    where = f"POST {url}: " if url else ""

    def bad(reason: str) -> BackendError:
        return BackendError(f"{where}malformed chat completion: {reason}")

    if not isinstance(data, dict):
        raise bad("the body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise bad(f"expected a list of {n} choice(s), got {got}")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise bad("no 'usage' object")
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        raise bad("'usage' lacks integer prompt_tokens / completion_tokens")
    parsed: list[tuple[int, str, FinishReason]] = []
    for position, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(content, str | None):
            raise bad(f"choice {position} has no message with string content")
        index = choice.get("index", position)
        if not isinstance(index, int):
            raise bad(f"choice {position} has a non-integer index")
        parsed.append((index, content or "", as_finish_reason(choice.get("finish_reason"))))
    parsed.sort(key=lambda c: c[0])
    shares = _apportion(completion_tokens, [len(text) for _, text, _ in parsed])
    return [
        Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=share, finish_reason=reason)
        for (_, text, reason), share in zip(parsed, shares, strict=True)
    ]


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split into integers proportional to ``weights`` (equal split when all are 0), summing to it."""
    if len(weights) == 1:
        return [total]
    weights = [w if sum(weights) else 1 for w in weights]
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))[: total - sum(shares)]:
        shares[i] += 1
    return shares


__all__ = [
    "GPU_INSTALL_HINT",
    "BackendError",
    "BackendUnavailable",
    "Generation",
    "GenerationBackend",
    "Message",
    "OpenAIBackend",
    "SamplingParams",
    "TransformersBackend",
    "VLLMBackend",
    "create_backend",
    "default_sampling",
    "import_vllm",
    "parse_chat_completion",
    "truncate_at_stop",
]
