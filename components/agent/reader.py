"""The MemAgent reader: any length of input, chunk by chunk, into a fixed-size memory that each step overwrites.

``read`` takes ``ReadRequest``s (id, question, a lazy iterable of text pieces) and a generation backend:

1. the pieces are tokenised one at a time (``chunking.token_stream``) and regrouped into chunks of
   ``cfg.chunk_tokens`` ids (``chunking.chunk_ids``), so per question at most one chunk's ids plus one piece are
   held, whatever the input length;
2. the memory starts empty (the prompt says "No previous memory"); for every chunk the model sees the question, the
   memory and the chunk and writes a new memory of at most ``cfg.memory_tokens`` new tokens, which REPLACES the old;
3. after the last chunk it answers from question + memory alone (``cfg.answer_tokens`` new tokens, in ``\\boxed{}``).

Questions are read side by side: each step is ONE ``backend.generate`` call holding the update prompts of every
question that still has chunks (the backend splits it into batches of its ``batch_size``), and the answers are one
call too. A question whose input is empty is answered from the empty memory (``ReadResult.empty_input``).

``full_context_answer`` is the baseline: the same model answering from the input's first tokens, as many as fit a
window. ``build_reader_backend`` loads a model folder for either engine; ``read_file`` is ``memforge read``.

Text crosses the token/text boundary twice: chunk ids are decoded into the prompt, which the backend tokenises
again, and the memory is re-encoded to count it. Chunks never end inside a character (a character split over
byte-level tokens moves whole to the next chunk, so a chunk may be up to ``MAX_CARRY`` ids longer), and a memory
that re-encodes to more than ``memory_tokens`` tokens is cut until it fits, so the bound holds in tokens of the
reader's own tokenizer.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.agent.chunking import Encode, chunk_ids, token_stream, tokenizer_codec
from components.agent.prompts import NO_MEMORY, answer_messages, context_answer_messages, update_messages
from components.agent.scoring import last_boxed
from components.config import BackendConfig, ReaderConfig
from components.errors import ConfigError, InputError, MemforgeError, ModelLoadError
from components.llm.backends import Generation, GenerationBackend, Message, SamplingParams
from components.progress import progress

logger = logging.getLogger(__name__)

Decode = Callable[[list[int]], str]

REPLACEMENT = "\ufffd"
MAX_CARRY = 4  # a UTF-8 character is at most 4 bytes, so at most 4 byte-level tokens
CHAT_TOKENS_PER_MESSAGE = 8  # role markers of a chat template, for backends that cannot render one (estimate)
BLOCK_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------
# requests, results, steps


@dataclass(frozen=True)
class ReadRequest:
    """One question over one input: ``pieces`` (documents, paragraphs, file blocks) are consumed lazily, once,
    and joined with ``separator``."""

    id: str
    question: str
    pieces: Iterable[str]
    separator: str = "\n\n"


@dataclass(frozen=True)
class ReadResult:
    """What reading one request produced.

    ``answer`` is the whole final completion, ``boxed`` its last ``\\boxed{}`` content (None without one);
    ``memory_tokens`` holds the memory's size after every chunk; ``seconds`` is the wall time from the start of
    ``read`` until this question's answer was generated (questions read together share it).
    """

    id: str
    answer: str
    boxed: str | None
    memory: str
    chunks: int
    input_tokens: int
    memory_tokens: tuple[int, ...]
    seconds: float

    @property
    def empty_input(self) -> bool:
        """True when the input had no tokens, so the answer came from the empty memory."""
        return self.chunks == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return {**dataclasses.asdict(self), "memory_tokens": list(self.memory_tokens), "empty_input": self.empty_input}


@dataclass(frozen=True)
class ReaderStep:
    """One generation of the reader, for tracing trajectories: an ``update`` after chunk ``step`` (1-based), or the
    final ``answer`` (``step`` = chunks + 1). ``memory`` is the memory after an update, or the one answered from."""

    request_id: str
    step: int
    kind: Literal["update", "answer"]
    messages: list[Message]
    completion: Generation
    chunk_tokens: int
    memory: str
    memory_tokens: int


StepCallback = Callable[[ReaderStep], None]


@dataclass(frozen=True)
class ContextAnswer:
    """The full-context baseline's answer: ``input_tokens`` of the input were shown (``truncated`` when the input
    had more), in a prompt of ``prompt_tokens`` tokens."""

    id: str
    answer: str
    boxed: str | None
    input_tokens: int
    truncated: bool
    prompt_tokens: int
    seconds: float


@dataclass
class _Reading:
    """A question being read: its chunk iterator and its current memory."""

    request: ReadRequest
    chunks: Iterator[tuple[list[int], str]]
    memory: str = ""
    read: int = 0
    input_tokens: int = 0
    memory_tokens: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# small pure helpers


def reader_sampling(cfg: ReaderConfig, sampling: SamplingParams | None = None) -> tuple[SamplingParams, SamplingParams]:
    """The (update, answer) sampling: greedy unless ``sampling`` says otherwise, with the reader's token budgets."""
    base = SamplingParams(max_new_tokens=cfg.memory_tokens) if sampling is None else sampling
    if base.n != 1:
        raise ValueError(f"the reader follows one memory per request; got n={base.n} (repeat the request instead)")
    return (
        dataclasses.replace(base, max_new_tokens=cfg.memory_tokens),
        dataclasses.replace(base, max_new_tokens=cfg.answer_tokens),
    )


def complete_prefix(ids: Sequence[int], decode: Decode) -> tuple[int, str]:
    """How many of ``ids`` to keep so their text does not end inside a character, and that text: up to
    ``MAX_CARRY`` trailing ids that decode to a replacement character are dropped (all of them when the ids are
    only part of one character); when that does not help, all are kept."""
    text = decode(list(ids))
    if not text.endswith(REPLACEMENT):
        return len(ids), text
    for cut in range(1, min(MAX_CARRY, len(ids)) + 1):
        shorter = decode(list(ids[:-cut]))
        if not shorter.endswith(REPLACEMENT):
            return len(ids) - cut, shorter
    return len(ids), text


def chunk_texts(chunks: Iterable[list[int]], decode: Decode) -> Iterator[tuple[list[int], str]]:
    """``(ids, text)`` per chunk, without looking ahead. The ids of a character split at a chunk's end move to the
    next chunk (at most ``MAX_CARRY``), so every id still appears exactly once and in order, and the texts join to
    the text of all ids; a chunk that is only part of one character is merged into the next."""
    carry: list[int] = []
    for chunk in chunks:
        ids = carry + chunk if carry else chunk
        keep, text = complete_prefix(ids, decode)
        carry = ids[keep:]
        if keep:
            yield ids[:keep], text
    if carry:  # only when the input itself ends in a replacement character
        yield carry, decode(carry)


def bound_memory(text: str, encode: Encode, decode: Decode, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` tokens when re-encoded (and not inside a character), and its token count."""
    ids = encode(text)
    if len(ids) <= limit:
        return text, len(ids)
    keep = limit
    while True:
        _, cut = complete_prefix(ids[: max(keep, 0)], decode)
        count = len(encode(cut))
        if count <= limit:
            return cut, count
        keep -= count - limit


def prompt_length(backend: GenerationBackend, messages: Sequence[Message], encode: Encode) -> int:
    """Tokens of a chat prompt: rendered with the chat template when the backend can (``render``); otherwise the
    contents' tokens plus ``CHAT_TOKENS_PER_MESSAGE`` per message and for the generation prompt (an estimate)."""
    render = getattr(backend, "render", None)
    if callable(render):
        return len(render(messages))
    return sum(len(encode(m["content"])) + CHAT_TOKENS_PER_MESSAGE for m in messages) + CHAT_TOKENS_PER_MESSAGE


def context_budget(backend: GenerationBackend, question: str, window: int, answer_tokens: int, encode: Encode) -> int:
    """Input tokens the full-context baseline may show: ``window`` minus the prompt without input minus the answer."""
    return window - prompt_length(backend, context_answer_messages(question, ""), encode) - answer_tokens


def reader_max_model_len(cfg: ReaderConfig, encode: Encode, question_tokens: int = 512) -> int:
    """A model length (prompt + generation) that holds any update or answer step of a question of at most
    ``question_tokens`` tokens: chunk + carry + memory in the prompt + new memory + the template, with slack."""
    template = len(encode(update_messages("", NO_MEMORY, "")[0]["content"]))
    chat = 3 * CHAT_TOKENS_PER_MESSAGE
    memory = 2 * cfg.memory_tokens + max(cfg.answer_tokens - cfg.memory_tokens, 0)
    return cfg.chunk_tokens + MAX_CARRY + memory + template + chat + question_tokens


def _start(request: ReadRequest, encode: Encode, decode: Decode, chunk_tokens: int) -> _Reading:
    stream = token_stream(request.pieces, encode, request.separator)
    return _Reading(request, chunk_texts(chunk_ids(stream, chunk_tokens), decode))


def _result(state: _Reading, completion: Generation, seconds: float) -> ReadResult:
    return ReadResult(
        id=state.request.id,
        answer=completion.text,
        boxed=last_boxed(completion.text),
        memory=state.memory,
        chunks=state.read,
        input_tokens=state.input_tokens,
        memory_tokens=tuple(state.memory_tokens),
        seconds=round(seconds, 6),
    )


# ---------------------------------------------------------------------------------------------
# the reader


def read(
    requests: Iterable[ReadRequest],
    backend: GenerationBackend,
    cfg: ReaderConfig,
    encode: Encode,
    decode: Decode,
    *,
    sampling: SamplingParams | None = None,
    on_step: StepCallback | None = None,
) -> list[ReadResult]:
    """Read every request chunk by chunk into an overwritten memory, then answer from the memory; results in order.

    One ``backend.generate`` call per chunk step holds the update prompts of all questions still reading, one more
    holds all the answers; the backend splits each call into batches of its own batch size (``build_reader_backend``
    sets it to ``cfg.batch_size``). ``sampling`` (greedy when None; ``n`` must be 1) is used for both, with
    ``max_new_tokens`` set to ``cfg.memory_tokens`` / ``cfg.answer_tokens``. ``on_step`` sees every generation.
    """
    update_params, answer_params = reader_sampling(cfg, sampling)
    start = time.perf_counter()
    states = [_start(r, encode, decode, cfg.chunk_tokens) for r in requests]
    active = states
    step = 0
    with progress("memagent read", unit="chunks") as bar:
        while active:
            step += 1
            batch = [(s, chunk) for s in active if (chunk := next(s.chunks, None)) is not None]
            active = [s for s, _ in batch]
            if not batch:
                break
            prompts = [update_messages(s.request.question, s.memory, text) for s, (_, text) in batch]
            generations = backend.generate(prompts, update_params)
            for (state, (ids, _)), messages, gens in zip(batch, prompts, generations, strict=True):
                state.memory, count = bound_memory(gens[0].text.strip(), encode, decode, cfg.memory_tokens)
                state.read += 1
                state.input_tokens += len(ids)
                state.memory_tokens.append(count)
                if on_step is not None:
                    on_step(
                        ReaderStep(state.request.id, step, "update", messages, gens[0], len(ids), state.memory, count)
                    )
            bar.advance(len(batch))
            del batch, prompts, generations
    for state in states:
        if state.read == 0:
            logger.warning("%s: empty input; answering from an empty memory", state.request.id)
    prompts = [answer_messages(s.request.question, s.memory) for s in states]
    answers = backend.generate(prompts, answer_params) if prompts else []
    seconds = time.perf_counter() - start
    results = []
    for state, messages, gens in zip(states, prompts, answers, strict=True):
        if on_step is not None:
            memory_tokens = state.memory_tokens[-1] if state.memory_tokens else 0
            step_no = state.read + 1
            on_step(ReaderStep(state.request.id, step_no, "answer", messages, gens[0], 0, state.memory, memory_tokens))
        results.append(_result(state, gens[0], seconds))
    return results


def full_context_answer(
    requests: Iterable[ReadRequest],
    backend: GenerationBackend,
    cfg: ReaderConfig,
    encode: Encode,
    decode: Decode,
    window: int,
    *,
    sampling: SamplingParams | None = None,
) -> list[ContextAnswer]:
    """The baseline: answer each question from its input's first tokens, in one batched call.

    The input shown is its first ``window - prompt overhead - cfg.answer_tokens`` tokens (``context_budget``; the
    overhead is the prompt rendered with an empty input), cut back further, if needed, so the rendered prompt plus
    ``cfg.answer_tokens`` fits ``window`` after the text is tokenised again. The input is read only that far.
    """
    _, answer_params = reader_sampling(cfg, sampling)
    start = time.perf_counter()
    rows: list[tuple[ReadRequest, list[Message], int, bool, int]] = []
    for request in requests:
        budget = context_budget(backend, request.question, window, cfg.answer_tokens, encode)
        if budget < 1:
            raise ConfigError(f"{request.id}: a window of {window} tokens leaves no room for input (budget {budget})")
        stream = token_stream(request.pieces, encode, request.separator)
        head = next(chunk_ids(stream, budget + 1), [])
        messages, kept, length = _fit_context(
            request.question, head[:budget], backend, encode, decode, window - cfg.answer_tokens
        )
        rows.append((request, messages, kept, len(head) > budget, length))
    answers = backend.generate([r[1] for r in rows], answer_params) if rows else []
    seconds = round(time.perf_counter() - start, 6)
    return [
        ContextAnswer(request.id, gens[0].text, last_boxed(gens[0].text), kept, truncated, length, seconds)
        for (request, _, kept, truncated, length), gens in zip(rows, answers, strict=True)
    ]


def _fit_context(
    question: str, ids: list[int], backend: GenerationBackend, encode: Encode, decode: Decode, limit: int
) -> tuple[list[Message], int, int]:
    """The baseline prompt over the longest prefix of ``ids`` whose rendered prompt has at most ``limit`` tokens."""
    keep, _ = complete_prefix(ids, decode)
    while True:
        messages = context_answer_messages(question, decode(ids[:keep]))
        length = prompt_length(backend, messages, encode)
        if length <= limit or keep == 0:
            return messages, keep, length
        keep = max(0, keep - (length - limit))


# ---------------------------------------------------------------------------------------------
# engines and files


def build_reader_backend(
    model_path: str | Path, cfg: ReaderConfig, *, seed: int = 0, question_tokens: int = 512, **engine_kwargs: Any
) -> tuple[GenerationBackend, Encode, Decode]:
    """The reader's backend for a model folder (or hub id) and ``cfg.backend``, with the folder's tokenizer as
    ``(encode, decode)``. vLLM gets ``max_model_len = reader_max_model_len(cfg, ...)`` unless ``engine_kwargs``
    sets it; ``engine_kwargs`` go to ``vllm.LLM``."""
    model = str(model_path)
    if cfg.backend == "transformers":
        from components.llm.backends import TransformersBackend

        backend_cfg = BackendConfig(
            kind="transformers",
            model=model,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.memory_tokens,
            seed=seed,
        )
        backend = TransformersBackend(backend_cfg)
        encode, decode = tokenizer_codec(backend.tokenizer)
        _warn_if_positions_short(backend.model, reader_max_model_len(cfg, encode, question_tokens), model)
        return backend, encode, decode
    from components.llm.backends import VLLMBackend  # "vllm": the other value ReaderConfig.backend allows

    encode, decode = tokenizer_codec(load_tokenizer(model))
    engine_kwargs.setdefault("max_model_len", reader_max_model_len(cfg, encode, question_tokens))
    backend_cfg = BackendConfig(kind="vllm", model=model, dtype=cfg.dtype, max_new_tokens=cfg.memory_tokens, seed=seed)
    return VLLMBackend(backend_cfg, **engine_kwargs), encode, decode


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a model folder or hub id (``transformers.AutoTokenizer``); ``ModelLoadError`` naming it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=Path(model).exists())
    except Exception as exc:  # OSError (missing), ValueError, tokenizers' bare Exception
        raise ModelLoadError(f"{model}: cannot load the tokenizer: {type(exc).__name__}: {exc}") from exc


def _warn_if_positions_short(model: Any, needed: int, name: str) -> None:
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions < needed:
        logger.warning("%s: a reader step may need %d positions; the model has %d", name, needed, positions)


def split_point(text: str) -> int | None:
    """The last place to cut ``text`` so both sides tokenise as the whole does, or None when there is none.

    Byte-level BPE tokenisers (GPT-2, SmolLM, Llama-3, Qwen) merge only inside pre-tokens, and their pre-token
    patterns have no look-behind and never join a non-whitespace character to a following space or tab. So a cut
    before a space or tab that follows a non-whitespace character is safe, and so is one after a lone newline between
    two non-whitespace characters. SentencePiece tokenisers without pre-tokenisation have no such guarantee."""
    for i in range(len(text) - 1, 0, -1):
        before, after = text[i - 1], text[i]
        if after in " \t" and not before.isspace():
            return i
        if before == "\n" and not after.isspace() and i >= 2 and not text[i - 2].isspace():
            return i
    return None


def fallback_split(text: str) -> int:
    """Before the last whitespace run that follows a non-whitespace character, else the whole text: for long text
    with no ``split_point``. Safe for GPT-2-style tokenisers; Llama-3's joins punctuation to the newlines after it."""
    for i in range(len(text) - 1, 0, -1):
        if text[i].isspace() and not text[i - 1].isspace():
            return i
    return len(text)


def file_pieces(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Stream a UTF-8 file as text pieces of about ``block_bytes``, to be joined with no separator.

    A block is cut where tokenisation cannot change (``split_point``) and the rest carried into the next, so the
    pieces tokenise as the whole file would; without such a cut, text is carried up to 4 blocks, then cut at
    whitespace (``fallback_split``) or anywhere.
    Decoding is strict: a bad byte is an ``InputError`` naming the file, byte offset and line; a missing, empty or
    whitespace-only file is one too (the last once its end is reached)."""
    file = Path(path)
    check_text_file(file)
    offset, lines, carry, pending, seen_text = 0, 0, "", b"", False
    with file.open("rb") as handle:
        while True:
            block = handle.read(block_bytes)
            final = not block
            data = pending + block
            try:
                text, used = codecs.utf_8_decode(data, "strict", final)
            except UnicodeDecodeError as exc:
                line = lines + data[: exc.start].count(b"\n") + 1
                raise InputError(file, f"not valid UTF-8 at byte {offset + exc.start}", record=f"line {line}") from None
            pending, offset, lines = data[used:], offset + used, lines + text.count("\n")
            text = carry + text
            seen_text = seen_text or (bool(text) and not text.isspace())
            cut = len(text) if final else split_point(text)
            if cut is None:
                cut = 0 if len(text) < 4 * block_bytes else fallback_split(text)
            piece, carry = text[:cut], text[cut:]
            if piece:
                yield piece
            if final:
                break
    if not seen_text:
        raise InputError(file, "no text to read: the file is only whitespace")


def check_text_file(path: str | Path) -> None:
    """``InputError`` naming ``path`` when it is missing, a directory or empty."""
    file = Path(path)
    if not file.exists():
        raise InputError(file, "file not found")
    if file.is_dir():
        raise InputError(file, "expected a file, found a directory")
    if file.stat().st_size == 0:
        raise InputError(file, "the file is empty: nothing to read")


def read_file(
    question: str,
    path: str | Path,
    model_path: str | Path,
    cfg: ReaderConfig,
    *,
    block_bytes: int = BLOCK_BYTES,
    on_step: StepCallback | None = None,
) -> ReadResult:
    """``memforge read --question ... --file ...``: read one UTF-8 file for one question with the model at
    ``model_path``. The whole file is first checked in one streaming pass (bad bytes fail before the model loads),
    then streamed again through the reader in pieces of about ``block_bytes``."""
    if not question.strip():
        raise MemforgeError("read: the question is empty")
    for _ in file_pieces(path, block_bytes):
        pass
    backend, encode, decode = build_reader_backend(model_path, cfg)
    try:
        request = ReadRequest(id=str(path), question=question, pieces=file_pieces(path, block_bytes), separator="")
        [result] = read([request], backend, cfg, encode, decode, on_step=on_step)
    finally:
        backend.close()
    return result
