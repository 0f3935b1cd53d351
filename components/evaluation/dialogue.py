"""Dialogue evaluation: memory writers answering questions about long conversations, against baselines.

Every *method* answers the same sampled questions with the same answerer and is scored by the same judges:

- a **writer** (a model folder of ``eval_dialogue.writers``; the method is the folder's name, e.g. ``adrpo``) writes
  memory session by session with the four agents (``build_memories``, conversations in lockstep, as the expert stage
  does); each question is answered from the core block and the ``top_k`` entries retrieved for it;
- ``expert``: the configured expert teacher writes the memory the same way (the reference upper bound);
- ``rag``: the ``top_k`` raw turns most similar to the question, by the memory's own embedder and cache;
- ``full_context``: the whole transcript, its middle cut to fit the answerer's window (``middle_cut``).

Questions are answered in one batched ``generate`` call per method and judged together (``score_answers``).
**Evidence recall@k** is the share of a question's evidence turn ids found among the turn ids the retrieved items
came from (a memory entry's provenance, or a raw turn's own id); it needs no LLM. Nothing is written here: the
stage returns the rows, the report and the plot table for ``publish``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import BackendConfig, EvalDialogueConfig, Params, SourceConfig
from components.dialogue.loaders import LoadedConversation
from components.dialogue.schema import Conversation, Question, parse_timestamp
from components.errors import ConfigError, InputError

if TYPE_CHECKING:
    from components.llm.backends import GenerationBackend, Message, SamplingParams
    from components.memory.bank import MemoryBank
    from components.memory.embedder import EmbeddingCache
    from components.memory.teachers import Teacher

logger = logging.getLogger(__name__)

BASELINES = ("full_context", "rag", "expert")  # config.DialogueBaseline
MEMORY_BASELINES = ("expert",)  # baselines that write memory, as the writers do
WHOLE_CONTEXT = ("full_context",)  # methods shown everything, nothing retrieved: no evidence recall
OVERALL = "overall"  # the plot table's category over all questions

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]


# ---------------------------------------------------------------------------------------------
# inputs: read, check, sample


def split_paths(params: Params) -> list[Path]:
    """``{ingest.output_dir}/{split}.jsonl`` for each of ``eval_dialogue.splits``."""
    return [Path(params.ingest.output_dir) / f"{split}.jsonl" for split in params.eval_dialogue.splits]


def load_conversations(
    paths: Sequence[Path], sources: Sequence[SourceConfig], unknown_evidence: str = "error"
) -> list[LoadedConversation]:
    """Every conversation of the split files and the extra sources (the ingest loaders), each checked by
    ``check_conversation``; a conversation id seen twice is an ``InputError`` naming both places. With
    ``unknown_evidence="drop"`` evidence ids that are no turn of their conversation are dropped (and counted in a
    warning) instead of stopping the stage."""
    from components.dialogue.loaders import iter_source, load_jsonl

    loaded: list[LoadedConversation] = []
    for path in paths:
        if not path.is_file():
            raise InputError(path, "dialogue split not found; run the ingest stage")
        loaded.extend(load_jsonl(path))
    for index, source in enumerate(sources):
        if source.format == "synthetic":
            raise ConfigError(f"eval_dialogue.sources[{index}]: 'synthetic' is not an evaluation file; name a file")
        loaded.extend(iter_source(source.format, source.path, source.drop_empty_sessions))
    if unknown_evidence == "drop":
        loaded = drop_unknown_evidence(loaded)
    seen: dict[str, LoadedConversation] = {}
    for item in loaded:
        check_conversation(item)
        first = seen.setdefault(item.conversation.conversation_id, item)
        if first is not item:
            raise InputError(
                item.source_file,
                f"conversation {item.conversation.conversation_id!r} is also in {first.source_file} [{first.record}]",
                item.record,
            )
    return loaded


def drop_unknown_evidence(loaded: Sequence[LoadedConversation]) -> list[LoadedConversation]:
    """Each conversation with the evidence ids that are no turn of it removed; a warning counts them."""
    cleaned, dropped = [], 0
    for item in loaded:
        turn_ids = item.conversation.turn_ids()
        questions = []
        for question in item.conversation.questions:
            kept = tuple(e for e in question.evidence if e in turn_ids)
            dropped += len(question.evidence) - len(kept)
            questions.append(dataclasses.replace(question, evidence=kept))
        conversation = dataclasses.replace(item.conversation, questions=tuple(questions))
        cleaned.append(dataclasses.replace(item, conversation=conversation))
    if dropped:
        logger.warning("eval_dialogue: dropped %d evidence id(s) that are no turn of their conversation", dropped)
    return cleaned


def check_conversation(item: LoadedConversation) -> None:
    """The checks evaluation relies on, each an ``InputError`` naming the file and record: unique turn and question
    ids, ISO 8601 session timestamps, every question with a non-empty answer and evidence ids that are turn ids."""
    conversation = item.conversation

    def fail(reason: str) -> InputError:
        return InputError(item.source_file, f"conversation {conversation.conversation_id!r}: {reason}", item.record)

    turn_ids: set[str] = set()
    for session in conversation.sessions:
        if parse_timestamp(session.timestamp) is None:
            raise fail(f"session {session.session_id!r} timestamp {session.timestamp!r} is not ISO 8601")
        for turn in session.turns:
            if turn.turn_id in turn_ids:
                raise fail(f"turn id {turn.turn_id!r} is used twice")
            turn_ids.add(turn.turn_id)
    question_ids: set[str] = set()
    for question in conversation.questions:
        where = f"question {question.question_id!r}"
        if question.question_id in question_ids:
            raise fail(f"{where} id is used twice")
        question_ids.add(question.question_id)
        if not question.question.strip():
            raise fail(f"{where} has no question text")
        if not any(answer.strip() for answer in question.answers):
            raise fail(f"{where} has no answer")
        missing = [e for e in question.evidence if e not in turn_ids]
        if missing:
            raise fail(
                f"{where} cites evidence {', '.join(map(repr, missing))}, not a turn id of this conversation "
                "(eval_dialogue.unknown_evidence: drop evaluates it without them)"
            )


def sample_conversations(
    conversations: Sequence[Conversation], max_conversations: int, max_questions: int, seed: int
) -> list[Conversation]:
    """A seeded sample of ``max_conversations`` conversations with questions (0 = all), each cut to a seeded sample
    of ``max_questions`` questions (0 = all); input order is kept in both."""
    rng = random.Random(seed)
    asked = [c for c in conversations if c.questions]
    chosen = _sample(rng, len(asked), max_conversations)
    sampled = []
    for index in chosen:
        conversation = asked[index]
        questions = [conversation.questions[i] for i in _sample(rng, len(conversation.questions), max_questions)]
        sampled.append(dataclasses.replace(conversation, questions=tuple(questions)))
    return sampled


def _sample(rng: random.Random, size: int, limit: int) -> list[int]:
    return list(range(size)) if limit == 0 or limit >= size else sorted(rng.sample(range(size), limit))


def question_date(conversation: Conversation, question: Question) -> str:
    """The day the question is asked: its own date, else the last session's (``YYYY-MM-DD``)."""
    return (question.date or conversation.sessions[-1].timestamp)[:10]


def eval_set_digest(conversations: Sequence[Conversation]) -> str:
    """MD5 of the sampled conversations (their questions included) in the normalised schema: the evaluation set's
    identity, equal for equal samples whatever files they came from."""
    import hashlib

    from components.dialogue.schema import conversation_to_dict

    payload = json.dumps([conversation_to_dict(c) for c in conversations], sort_keys=True, ensure_ascii=False)
    return hashlib.md5(payload.encode("utf-8"), usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------------------------
# methods


def method_names(cfg: EvalDialogueConfig) -> list[str]:
    """Writers' folder names, then the baselines; ``ConfigError`` when two methods would share a name."""
    names = [Path(writer).name for writer in cfg.writers] + list(cfg.baselines)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"eval_dialogue.writers: a writer is reported under its folder's name, and {', '.join(repeated)} "
            "would name two methods; rename a folder"
        )
    return names


def writer_backend_config(cfg: EvalDialogueConfig, model: str) -> BackendConfig:
    """The greedy backend a writer's agents generate with."""
    return BackendConfig(
        kind=cfg.writer_backend,
        model=model,
        max_new_tokens=cfg.writer_max_new_tokens,
        batch_size=cfg.writer_batch_size,
        dtype=cfg.writer_dtype,
        temperature=0.0,
    )


def write_memories(
    label: str, conversations: Sequence[Conversation], teacher: Teacher, make_bank: Callable[[], MemoryBank], top_k: int
) -> list[MemoryBank]:
    """Each conversation's memory, written session by session by ``teacher`` (conversations in lockstep)."""
    from components.memory.construction import build_memories
    from components.progress import progress

    total = sum(len(c.sessions) for c in conversations)
    with progress(f"eval_dialogue write {label}", unit="sessions", total=total) as bar:
        return build_memories(conversations, teacher, make_bank, top_k, on_round=bar.advance)


def memory_text(bank: MemoryBank) -> str:
    """The whole memory as an answerer would read it: the core block and every entry."""
    from components.memory.prompts import render_entries
    from components.memory.types import ENTRY_PARTS

    entries = [entry for part in ENTRY_PARTS for entry in bank.entries(part)]
    return f"{bank.core}\n{render_entries(entries)}"


def memory_size(banks: Sequence[MemoryBank], count_tokens: Callable[[str], int]) -> dict[str, float]:
    """Mean per conversation: entries, core characters and tokens of the whole memory (``memory_text``)."""
    n = max(len(banks), 1)
    return {
        "memory_entries": round(sum(len(bank) for bank in banks) / n, 4),
        "memory_core_chars": round(sum(len(bank.core) for bank in banks) / n, 4),
        "memory_tokens": round(sum(count_tokens(memory_text(bank)) for bank in banks) / n, 4),
    }


# ---------------------------------------------------------------------------------------------
# answer requests


@dataclass(frozen=True)
class Shown:
    """One retrieved item shown to the answerer: a memory entry or a raw turn, and the turn ids it came from."""

    id: str
    text: str
    turn_ids: tuple[str, ...]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "turn_ids": list(self.turn_ids), "score": round(self.score, 4)}


@dataclass(frozen=True)
class AnswerRequest:
    """One question put to the answerer by one method."""

    method: str
    conversation_id: str
    question: Question
    messages: list[Message]
    shown: tuple[Shown, ...] = ()
    truncated: bool = False


def evidence_recall(evidence: Sequence[str], retrieved_turn_ids: Iterable[str]) -> float | None:
    """Share of the evidence turn ids among ``retrieved_turn_ids``; None for a question without evidence."""
    wanted = set(evidence)
    if not wanted:
        return None
    return len(wanted & set(retrieved_turn_ids)) / len(wanted)


def memory_requests(
    method: str, conversations: Sequence[Conversation], banks: Sequence[MemoryBank], top_k: int
) -> list[AnswerRequest]:
    """Each question answered from its conversation's memory: core block + the ``top_k`` entries retrieved for it
    (one batched retrieval per bank)."""
    from components.memory.prompts import answer_messages

    requests = []
    for conversation, bank in zip(conversations, banks, strict=True):
        hits = bank.retrieve([q.question for q in conversation.questions], k=top_k)
        for question, found in zip(conversation.questions, hits, strict=True):
            shown = tuple(
                Shown(
                    hit.entry.entry_id,
                    hit.entry.text,
                    tuple(turn for record in hit.entry.provenance for turn in record.turn_ids),
                    hit.score,
                )
                for hit in found
            )
            date = question_date(conversation, question)
            messages = answer_messages(question.question, bank.core, [hit.entry for hit in found], date)
            requests.append(AnswerRequest(method, conversation.conversation_id, question, messages, shown))
    return requests


def rag_requests(conversations: Sequence[Conversation], cache: EmbeddingCache, top_k: int) -> list[AnswerRequest]:
    """Each question answered from the ``top_k`` raw turns most cosine-similar to it (the memory's embedder)."""
    from components.memory.prompts import conversation_answer_messages, render_turn
    from components.memory.retrieval import top_k as best_columns

    requests = []
    for conversation in conversations:
        turns = [(turn, session.timestamp) for session in conversation.sessions for turn in session.turns]
        texts = [f"{turn.speaker}: {turn.text}" for turn, _ in turns]
        questions = [q.question for q in conversation.questions]
        vectors = cache.embed(texts + questions)
        columns, scores = best_columns(vectors[len(texts) :] @ vectors[: len(texts)].T, min(top_k, len(texts)))
        for question, row, row_scores in zip(conversation.questions, columns, scores, strict=True):
            shown = tuple(
                Shown(turns[c][0].turn_id, texts[c], (turns[c][0].turn_id,), float(s))
                for c, s in zip(row.tolist(), row_scores.tolist(), strict=True)
            )
            excerpts = "\n".join(
                render_turn(turns[c][0].turn_id, turns[c][0].speaker, turns[c][0].text, turns[c][1])
                for c in row.tolist()
            )
            messages = conversation_answer_messages(question.question, excerpts, question_date(conversation, question))
            requests.append(AnswerRequest("rag", conversation.conversation_id, question, messages, shown))
    return requests


def render_conversation(conversation: Conversation) -> str:
    """The whole transcript: a dated header per session, then ``[turn id] speaker: text`` lines."""
    from components.memory.prompts import render_turn

    lines = []
    for session in conversation.sessions:
        lines.append(f"Session {session.session_id}, {session.timestamp}:")
        lines.extend(render_turn(turn.turn_id, turn.speaker, turn.text) for turn in session.turns)
    return "\n".join(lines)


def full_context_requests(
    conversations: Sequence[Conversation],
    backend: GenerationBackend,
    encode: Encode,
    decode: Decode,
    window: int,
    answer_tokens: int,
) -> list[AnswerRequest]:
    """Each question answered from the whole transcript, its middle cut (``middle_cut``) so that the prompt and
    ``answer_tokens`` fit ``window`` tokens."""
    from components.agent.reader import prompt_length
    from components.longcontext.store import middle_cut
    from components.memory.prompts import conversation_answer_messages

    requests = []
    for conversation in conversations:
        transcript = render_conversation(conversation)
        for question in conversation.questions:
            date = question_date(conversation, question)
            frame = prompt_length(backend, conversation_answer_messages(question.question, "", date), encode)
            budget = window - frame - answer_tokens
            if budget < 1:
                raise ConfigError(
                    f"eval_dialogue.full_context_tokens: a window of {window} tokens leaves no room for the "
                    f"transcript of {conversation.conversation_id} (prompt {frame}, answer {answer_tokens})"
                )
            text = middle_cut(transcript, budget, encode, decode)
            messages = conversation_answer_messages(question.question, text, date)
            requests.append(
                AnswerRequest(
                    "full_context", conversation.conversation_id, question, messages, truncated=text != transcript
                )
            )
    return requests


def answer(requests: Sequence[AnswerRequest], backend: GenerationBackend, sampling: SamplingParams) -> list[str]:
    """Every request's answer, stripped, from one batched ``generate`` call."""
    if not requests:
        return []
    generations = backend.generate([r.messages for r in requests], sampling)
    return [choices[0].text.strip() for choices in generations]


# ---------------------------------------------------------------------------------------------
# rows and reports


@dataclass(frozen=True)
class DialogueRow:
    """One answer by one method to one question, with what it was shown and its score per judge."""

    question_id: str
    conversation_id: str
    question: str
    category: str
    answers: tuple[str, ...]
    evidence: tuple[str, ...]
    method: str
    prediction: str
    retrieved: tuple[Shown, ...]
    evidence_recall: float | None
    truncated: bool
    scores: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record (retrieved items with their provenance turn ids)."""
        return {
            "question_id": self.question_id,
            "conversation_id": self.conversation_id,
            "question": self.question,
            "category": self.category,
            "answers": list(self.answers),
            "evidence": list(self.evidence),
            "method": self.method,
            "prediction": self.prediction,
            "retrieved": [item.to_dict() for item in self.retrieved],
            "evidence_recall": self.evidence_recall,
            "truncated": self.truncated,
            "scores": dict(self.scores),
        }

    def table_row(self) -> dict[str, Any]:
        """A flat row for the MLflow table: retrieved ids and their turn ids, one column per judge."""
        flat = {k: v for k, v in self.to_dict().items() if k not in ("retrieved", "scores")}
        flat["retrieved"] = [f"{item.id} <- {'/'.join(item.turn_ids)}" for item in self.retrieved]
        return {**flat, **{f"score_{judge}": value for judge, value in self.scores.items()}}


def request_row(request: AnswerRequest, prediction: str) -> DialogueRow:
    """The unscored row of an answered request."""
    question = request.question
    recall = (
        None
        if request.method in WHOLE_CONTEXT
        else evidence_recall(question.evidence, (t for item in request.shown for t in item.turn_ids))
    )
    return DialogueRow(
        question_id=question.question_id,
        conversation_id=request.conversation_id,
        question=question.question,
        category=question.category,
        answers=question.answers,
        evidence=question.evidence,
        method=request.method,
        prediction=prediction,
        retrieved=request.shown,
        evidence_recall=recall,
        truncated=request.truncated,
    )


def score_rows(rows: Sequence[DialogueRow], judges: Sequence[str], llm: Any = None) -> list[DialogueRow]:
    """The rows with every judge's score (``score_answers`` over all rows at once)."""
    from components.evaluation.judges import AnswerItem, gold_abstains, score_answers

    items = [AnswerItem(r.question, tuple(r.answers), r.prediction, gold_abstains(r.answers, r.category)) for r in rows]
    scores = score_answers(judges, items, llm)
    return [
        dataclasses.replace(row, scores={judge: float(scores[judge][i]) for judge in judges})
        for i, row in enumerate(rows)
    ]


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def method_scores(rows: Sequence[DialogueRow], judges: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{judge: {overall, by_category: {category: mean}}}`` over ``rows`` (one method's)."""
    by_category: dict[str, list[DialogueRow]] = defaultdict(list)
    for row in rows:
        by_category[row.category].append(row)
    return {
        judge: {
            "overall": _mean([r.scores[judge] for r in rows]),
            "by_category": {
                category: _mean([r.scores[judge] for r in members]) for category, members in sorted(by_category.items())
            },
        }
        for judge in judges
    }


def mean_evidence_recall(rows: Sequence[DialogueRow]) -> float:
    """Mean evidence recall@k over the rows of questions with evidence (0 when none has any)."""
    return _mean([r.evidence_recall for r in rows if r.evidence_recall is not None])


def build_report(
    rows: Sequence[DialogueRow],
    methods: Sequence[str],
    judges: Sequence[str],
    memory_sizes: Mapping[str, Mapping[str, float]],
    sessions: int,
) -> dict[str, Any]:
    """The DVC metrics (numeric leaves only): ``score`` (the first method, the evaluated writer: ``{judge:
    overall}``), ``questions``, ``conversations``, ``sessions`` (each memory method wrote) and ``methods: {method:
    {judge: {overall, by_category}, evidence_recall_at_k (retrieving methods), memory_entries, memory_core_chars,
    memory_tokens (memory methods)}}``."""
    by_method: dict[str, list[DialogueRow]] = defaultdict(list)
    for row in rows:
        by_method[row.method].append(row)
    report_methods: dict[str, Any] = {}
    for method in methods:
        members = by_method[method]
        entry: dict[str, Any] = method_scores(members, judges)
        if method not in WHOLE_CONTEXT:
            entry["evidence_recall_at_k"] = mean_evidence_recall(members)
        entry.update(memory_sizes.get(method, {}))
        report_methods[method] = entry
    first = report_methods[methods[0]]
    return {
        "score": {judge: first[judge]["overall"] for judge in judges},
        "questions": len({(r.conversation_id, r.question_id) for r in rows}),
        "conversations": len({r.conversation_id for r in rows}),
        "sessions": sessions,
        "methods": report_methods,
    }


def plot_table(rows: Sequence[DialogueRow], methods: Sequence[str], judge: str) -> list[dict[str, Any]]:
    """The DVC bar plot table: ``{method, category, accuracy, label}`` per method and category, ``overall`` first
    (``label``, ``category / method``, names one bar)."""
    table = []
    for method in methods:
        scores = method_scores([r for r in rows if r.method == method], [judge])[judge]
        for category, accuracy in [(OVERALL, scores["overall"]), *scores["by_category"].items()]:
            table.append(
                {"method": method, "category": category, "accuracy": accuracy, "label": f"{category} / {method}"}
            )
    return table


def accuracy_figure(table: Sequence[Mapping[str, Any]], judge: str) -> Any:
    """Accuracy per method, one panel per category (``overall`` first)."""
    from components.plots import horizontal_bars

    panels: dict[str, dict[str, float]] = {}
    for row in table:
        panels.setdefault(str(row["category"]), {})[str(row["method"])] = float(row["accuracy"])
    return horizontal_bars(panels, f"Dialogue QA accuracy ({judge}) per category and method", xlim=(0, 1))


# ---------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class DialogueEvaluation:
    """Scored rows (per method, in question order), the method names in report order, memory sizes per memory
    method, and wall-clock seconds (``write_seconds/<method>``, ``answer_seconds/<method>``, ``judge_seconds``)."""

    rows: list[DialogueRow]
    methods: list[str]
    memory_sizes: dict[str, dict[str, float]]
    timings: dict[str, float]
    sessions: int  # sessions each memory method wrote


def write_all_memories(
    params: Params,
    conversations: Sequence[Conversation],
    methods: Sequence[str],
    make_bank: Callable[[], MemoryBank],
    timings: dict[str, float],
) -> dict[str, list[MemoryBank]]:
    """Every memory method's banks: each writer (its backend closed after use), then the expert teacher; the
    seconds spent writing (model loading excluded) go to ``timings``."""
    from components.llm.backends import check_model_name, create_backend
    from components.memory.teachers import LLMTeacher, make_teacher

    cfg = params.eval_dialogue
    for writer in cfg.writers:
        check_model_name(writer)
    banks: dict[str, list[MemoryBank]] = {}
    for writer, method in zip(cfg.writers, methods[: len(cfg.writers)], strict=True):
        backend = create_backend(writer_backend_config(cfg, writer))
        try:
            start = time.perf_counter()
            banks[method] = write_memories(
                method, conversations, LLMTeacher(backend=backend), make_bank, params.memory.top_k
            )
            timings[f"write_seconds/{method}"] = round(time.perf_counter() - start, 3)
        finally:
            backend.close()
    for method in (m for m in MEMORY_BASELINES if m in cfg.baselines):
        teacher = make_teacher(params)
        try:
            start = time.perf_counter()
            banks[method] = write_memories(method, conversations, teacher, make_bank, params.memory.top_k)
            timings[f"write_seconds/{method}"] = round(time.perf_counter() - start, 3)
        finally:
            backend_of_teacher = getattr(teacher, "backend", None)
            if backend_of_teacher is not None:
                backend_of_teacher.close()
    return banks


def answer_backends(params: Params) -> tuple[GenerationBackend, GenerationBackend | None]:
    """``backends.answerer`` and, when the ``llm`` judge is on, ``backends.judge`` (the answerer itself when both
    are configured alike)."""
    from components.llm.backends import create_backend

    answerer = create_backend(params.backends.answerer)
    if "llm" not in params.eval_dialogue.judges:
        return answerer, None
    if params.backends.judge == params.backends.answerer:
        return answerer, answerer
    try:
        return answerer, create_backend(params.backends.judge)
    except BaseException:
        answerer.close()
        raise


def answerer_codec(params: Params, answerer: GenerationBackend) -> tuple[Encode, Decode]:
    """``(encode, decode)`` of the answerer's tokenizer (loaded from ``backends.answerer.model`` when the backend
    holds none, as an endpoint does not)."""
    from components.agent.chunking import tokenizer_codec
    from components.agent.reader import load_tokenizer

    tokenizer = getattr(answerer, "tokenizer", None) or load_tokenizer(params.backends.answerer.model)
    return tokenizer_codec(tokenizer)


def method_requests(
    params: Params,
    method: str,
    conversations: Sequence[Conversation],
    banks: Mapping[str, Sequence[MemoryBank]],
    cache: EmbeddingCache,
    answerer: GenerationBackend,
) -> list[AnswerRequest]:
    """The answer requests of one method."""
    cfg = params.eval_dialogue
    if method in banks:
        return memory_requests(method, conversations, banks[method], cfg.top_k)
    if method == "rag":
        return rag_requests(conversations, cache, cfg.top_k)
    encode, decode = answerer_codec(params, answerer)
    window = cfg.full_context_tokens or params.model.max_context_tokens
    return full_context_requests(conversations, answerer, encode, decode, window, cfg.answer_max_new_tokens)


def evaluate(params: Params, conversations: Sequence[Conversation]) -> DialogueEvaluation:
    """Write every memory method's memories, answer every question by every method with ``backends.answerer``
    (one batched call per method) and score the answers with every judge; backends are closed on the way out."""
    from components.evaluation.judges import LLMAnswerJudge
    from components.llm.backends import default_sampling
    from components.memory.construction import bank_factory
    from components.progress import progress

    cfg = params.eval_dialogue
    methods = method_names(cfg)
    timings: dict[str, float] = {}
    make_bank = bank_factory(params)  # one embedding cache for every bank and for rag
    cache = make_bank().embedding_cache
    assert cache is not None
    banks = write_all_memories(params, conversations, methods, make_bank, timings)
    sampling = dataclasses.replace(default_sampling(params.backends.answerer), max_new_tokens=cfg.answer_max_new_tokens)
    answerer, judge_backend = answer_backends(params)
    try:
        rows: list[DialogueRow] = []
        total = len(methods) * sum(len(c.questions) for c in conversations)
        with progress("eval_dialogue answer", unit="questions", total=total) as bar:
            for method in methods:
                start = time.perf_counter()
                requests = method_requests(params, method, conversations, banks, cache, answerer)
                predictions = answer(requests, answerer, sampling)
                timings[f"answer_seconds/{method}"] = round(time.perf_counter() - start, 3)
                rows.extend(request_row(r, p) for r, p in zip(requests, predictions, strict=True))
                bar.advance(len(requests))
        start = time.perf_counter()
        llm = LLMAnswerJudge(judge_backend) if judge_backend is not None else None
        rows = score_rows(rows, cfg.judges, llm)
        timings["judge_seconds"] = round(time.perf_counter() - start, 3)
        sizes = {method: memory_size(group, answerer.count_tokens) for method, group in banks.items()}
    finally:
        answerer.close()
        if judge_backend is not None and judge_backend is not answerer:
            judge_backend.close()
    sessions = sum(len(c.sessions) for c in conversations)
    return DialogueEvaluation(rows, methods, sizes, timings, sessions)
