"""eval_longcontext stage: accuracy against input length, the MemAgent reader vs the same model reading it whole.

For ``memagent.eval.model_name_or_path`` and every sample of the configured sets in ``longcontext.output_dir``
(``hotpotqa`` -> ``hotpotqa_eval.jsonl``, ``squad`` -> ``squad_eval.jsonl`` (RULER-SQuAD), ``needle`` ->
``needle_eval.jsonl``):

- ``memagent``: the reader (``memagent.reader``) streams the input chunk by chunk into its fixed-size memory and
  answers from the memory alone;
- ``full_context`` (``memagent.eval.baseline``): the same model answers from the input truncated to its window
  (``baseline_context_tokens``, or ``model.max_context_tokens``); a longer input loses its middle (the first and
  last halves of the budget are kept, as in LongBench-style baselines).

Each answer is scored by ``components.longcontext.answers.score_sample``: substring exact match (MemAgent's
metric), EM and F1 against the alternatives; for needle tasks ``correct`` needs every required value. All samples are
read side by side (one generate call per chunk step over every question still reading, batched by the backend), and
the baseline answers them all in one more call; rows come per (task, length) group.

Outputs: ``eval.rows_path`` (one JSON line per sample and method), ``eval.report_path`` (DVC metrics:
``{method: {task: {length: scores}}}`` plus each method's mean), and one DVC plot table per task family,
``{eval.plots_dir}/<family>.json`` (``[{length, input_tokens, memagent, full_context}]``). MLflow gets the
scores as metrics, the summary and per-question tables, the accuracy-vs-length figure and the report files.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import ConfigError, InputError
from components.evaluation.longcontext import EvalRow, headline, plot_rows, summarise, task_family
from components.longcontext.build import EVAL_SET_FILES
from components.longcontext.schema import LongContextSample
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun

logger = logging.getLogger(__name__)

PLOT_FAMILIES = ("hotpotqa", "squad", "needle")
TABLE_ROWS = 200  # per-question rows logged to MLflow as a table (the full file is an artifact)


def set_paths(params: Params) -> list[Path]:
    """The evaluation files of ``memagent.eval.tasks`` (its ``EvalSet`` type admits only ``EVAL_SET_FILES``' names)."""
    return [Path(params.longcontext.output_dir) / EVAL_SET_FILES[name] for name in params.memagent.eval.tasks]


def plot_path(params: Params, family: str) -> str:
    """``{memagent.eval.plots_dir}/<family>.json``: one accuracy-vs-length table per task family."""
    return str(Path(params.memagent.eval.plots_dir) / f"{family}.json")


def load_eval_samples(paths: Sequence[Path], max_samples: int = 0) -> list[LongContextSample]:
    """Every sample of ``paths``, at most ``max_samples`` per (task, length) when set; a missing file is an error."""
    from components.longcontext.schema import iter_samples

    samples: list[LongContextSample] = []
    for path in paths:
        if not path.is_file():
            raise InputError(path, "evaluation set not found; run the longcontext_data stage")
        samples.extend(iter_samples(path))
    if max_samples > 0:
        kept: dict[tuple[str, int], int] = {}
        capped = []
        for sample in samples:
            key = (sample.task, sample_length(sample))
            if kept.get(key, 0) < max_samples:
                kept[key] = kept.get(key, 0) + 1
                capped.append(sample)
        samples = capped
    if not samples:
        raise InputError(", ".join(map(str, paths)), "no evaluation samples")
    return samples


def sample_length(sample: LongContextSample) -> int:
    """The length a sample is tabled under: documents for HotpotQA and SQuAD, the target tokens for needles."""
    return sample.target_tokens if sample.is_haystack else sample.length_docs


def groups(samples: Sequence[LongContextSample]) -> Iterator[tuple[tuple[str, int], list[LongContextSample]]]:
    """Samples by (task, length), in sorted order."""
    key = lambda s: (s.task, sample_length(s))  # noqa: E731
    for group_key, members in itertools.groupby(sorted(samples, key=key), key=key):
        yield group_key, list(members)


def eval_row(sample: LongContextSample, method: str, answer: str, input_tokens: int, truncated: bool) -> EvalRow:
    """Score one answer to one sample."""
    from components.longcontext.answers import score_sample

    scores = score_sample(answer, sample)
    return EvalRow(
        sample_id=sample.id,
        task=sample.task,
        length=sample_length(sample),
        input_tokens=input_tokens,
        method=method,
        question=sample.question,
        answers=tuple(sample.required_answers or sample.answers),
        prediction=answer,
        correct=scores["correct"],
        sub_em=scores["sub_em"],
        em=scores["em"],
        f1=scores["f1"],
        boxed=scores["boxed"],
        truncated=truncated,
    )


def nested_report(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{method: {task: {length: scores}}}`` plus ``mean`` (each method's mean headline score over its cells)."""
    report: dict[str, Any] = {}
    for entry in summary:
        scores = {k: v for k, v in entry.items() if k not in ("task", "method", "length")}
        report.setdefault(entry["method"], {}).setdefault(entry["task"], {})[str(entry["length"])] = scores
    flat = headline(summary)
    report["mean"] = {k: v for k, v in flat.items() if "/mean_" in k}
    return report


def baseline_request(
    sample: LongContextSample,
    store: Any,
    backend: Any,
    reader: Any,
    window: int,
    encode: Any,
    decode: Any,
) -> tuple[Any, bool]:
    """The full-context baseline's input: the whole text when it fits the window, else its middle cut out
    (``context_text``: the first and last halves of the budget kept); True when cut."""
    from components.agent.reader import ReadRequest, context_budget
    from components.longcontext.store import context_text

    budget = context_budget(backend, sample.question, window, reader.answer_tokens, encode)
    if budget < 1:
        raise ConfigError(f"memagent.eval: a window of {window} tokens leaves no room for the input of {sample.id}")
    cut = sample.length_tokens > budget
    text = context_text(sample, store, budget, encode=encode, decode=decode) if cut else context_text(sample, store)
    return ReadRequest(sample.id, sample.question, [text]), cut


def evaluate(params: Params, samples: Sequence[LongContextSample]) -> list[EvalRow]:
    """Answer every sample with the reader (and the full-context baseline when configured); scored rows, per
    (task, length) group the reader's rows, then the baseline's.

    Every sample is read side by side in one ``read``: each chunk step is one generate call over all questions
    still reading, and the backend batches those prompts (all about one chunk long) ``memagent.reader.batch_size``
    at a time, whatever their task or length. The baseline answers every sample in one more call, which the
    backend batches longest first, so the inputs batched together have similar lengths."""
    from components.agent.reader import ReadRequest, build_reader_backend, full_context_answer, read
    from components.longcontext.store import LongContextStore, iter_context

    cfg = params.memagent
    window = cfg.eval.baseline_context_tokens or params.model.max_context_tokens
    grouped = list(groups(samples))
    ordered = [sample for _, members in grouped for sample in members]
    for (task, length), members in grouped:
        logger.info("eval_longcontext: %s at length %d: %d sample(s)", task, length, len(members))
    backend, encode, decode = build_reader_backend(cfg.eval.model_name_or_path, cfg.reader)
    try:
        with LongContextStore.open(params.longcontext.output_dir) as store:
            requests = [ReadRequest(s.id, s.question, iter_context(s, store)) for s in ordered]
            results = read(requests, backend, cfg.reader, encode, decode)
            by_method = [
                [
                    eval_row(s, "memagent", r.answer, r.input_tokens, False)
                    for s, r in zip(ordered, results, strict=True)
                ]
            ]
            if cfg.eval.baseline:
                shown = [baseline_request(s, store, backend, cfg.reader, window, encode, decode) for s in ordered]
                answers = full_context_answer([r for r, _ in shown], backend, cfg.reader, encode, decode, window)
                by_method.append(
                    [
                        eval_row(s, "full_context", a.answer, s.length_tokens, cut or a.truncated)
                        for s, (_, cut), a in zip(ordered, shown, answers, strict=True)
                    ]
                )
    finally:
        backend.close()
    return in_group_order([len(members) for _, members in grouped], by_method)


def in_group_order(sizes: Sequence[int], by_method: Sequence[Sequence[EvalRow]]) -> list[EvalRow]:
    """Rows of consecutive groups of ``sizes``: each group's rows of the first method, then of the next, ..."""
    rows: list[EvalRow] = []
    start = 0
    for size in sizes:
        for method_rows in by_method:
            rows.extend(method_rows[start : start + size])
        start += size
    return rows


def run(params: Params, tracked: StageRun) -> StageResult:
    """Evaluate ``memagent.eval.model_name_or_path`` on the sets of ``memagent.eval.tasks``."""
    from components.evaluation.longcontext import accuracy_figure
    from components.io import atomic_writer, dumps_jsonl_record
    from components.llm.model_assets import MODEL_CARD_FILE

    cfg = params.memagent
    paths = set_paths(params)
    samples = load_eval_samples(paths, cfg.eval.max_samples)
    for path in paths:
        tracked.log_input_dataset(path, name=f"longcontext-{path.stem}", context="evaluation")
    model_dir = Path(cfg.eval.model_name_or_path)
    if model_dir.is_dir():
        tracked.log_input_dataset(model_dir, name="model", context="model")
    rows = evaluate(params, samples)
    summary = summarise(rows)
    report = nested_report(summary)
    with atomic_writer(cfg.eval.rows_path) as handle:
        for row in rows:
            handle.write(dumps_jsonl_record(row.to_dict()))
    tables = plot_rows(summary)
    families = sorted({task_family(r.task) for r in rows})
    logger.info("eval_longcontext: %d answers over %s; %s", len(rows), families, report["mean"])
    return StageResult(
        metrics=report,
        metrics_path=cfg.eval.report_path,
        plots={plot_path(params, family): tables.get(family, []) for family in PLOT_FAMILIES},
        artifacts=[(cfg.eval.rows_path, "eval_longcontext"), (str(model_dir / MODEL_CARD_FILE), "model")],
        figures={"eval_longcontext/accuracy_vs_length.png": accuracy_figure(summary)},
        tables={
            "eval_longcontext/summary.json": summary,
            "eval_longcontext/answers.json": [r.to_dict() for r in rows[:TABLE_ROWS]],
        },
    )
