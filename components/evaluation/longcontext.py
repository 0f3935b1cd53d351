"""Long-context evaluation: answer every sample with the MemAgent reader and the full-context baseline
(``evaluate``), and report accuracy per task, method and input length from the per-question rows.

A row is one (sample, method) answer: ``method`` is ``memagent`` (the reader) or ``full_context`` (the same model
reading the input truncated to its window). ``summarise`` averages the scores per (task, method, length);
``plot_rows`` turns that into one wide table per task family for ``dvc plots`` (one column per method), and
``accuracy_figure`` draws accuracy against input tokens. The headline score is ``correct``: substring exact match
(MemAgent's metric) for HotpotQA and SQuAD, every required value found for the needle tasks.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import ConfigError, InputError
from components.longcontext.schema import LongContextSample

logger = logging.getLogger(__name__)

METRICS = ("correct", "sub_em", "em", "f1", "boxed")
HEADLINE = "correct"  # substring EM for HotpotQA / SQuAD (MemAgent's metric); every required value for needles
METHODS = ("memagent", "full_context")


@dataclass(frozen=True)
class EvalRow:
    """One answer to one long-context sample by one method, with its scores."""

    sample_id: str
    task: str
    length: int
    input_tokens: int
    method: str
    question: str
    answers: tuple[str, ...]
    prediction: str
    correct: float
    sub_em: float
    em: float
    f1: float
    boxed: float
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["answers"] = list(self.answers)
        return out


def task_family(task: str) -> str:
    """``needle_multikey`` -> ``needle``; other tasks are their own family."""
    return task.split("_", 1)[0]


def summarise(rows: Iterable[EvalRow]) -> list[dict[str, Any]]:
    """Mean scores per (task, method, length), sorted; ``input_tokens`` is the mean measured input length."""
    groups: dict[tuple[str, str, int], list[EvalRow]] = defaultdict(list)
    for row in rows:
        groups[row.task, row.method, row.length].append(row)
    table = []
    for (task, method, length), members in sorted(groups.items()):
        entry: dict[str, Any] = {"task": task, "method": method, "length": length, "n": len(members)}
        entry["input_tokens"] = round(sum(r.input_tokens for r in members) / len(members))
        entry["truncated"] = round(sum(r.truncated for r in members) / len(members), 4)
        for metric in METRICS:
            entry[metric] = round(sum(getattr(r, metric) for r in members) / len(members), 4)
        table.append(entry)
    return table


def headline(summary: Sequence[Mapping[str, Any]], metric: str = HEADLINE) -> dict[str, float]:
    """Flat metrics for DVC / MLflow: ``{method}/{task}/{length}/{metric}`` and each method's overall mean."""
    flat: dict[str, float] = {}
    totals: dict[str, list[float]] = defaultdict(list)
    for entry in summary:
        for name in METRICS:
            flat[f"{entry['method']}/{entry['task']}/{entry['length']}/{name}"] = float(entry[name])
        totals[entry["method"]].append(float(entry[metric]))
    for method, values in totals.items():
        flat[f"{method}/mean_{metric}"] = round(sum(values) / len(values), 4)
    return flat


def plot_rows(summary: Sequence[Mapping[str, Any]], metric: str = HEADLINE) -> dict[str, list[dict[str, Any]]]:
    """Per task family, one row per length: ``{length, input_tokens, memagent, full_context}`` (task-averaged)."""
    cells: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for entry in summary:
        cell = cells[task_family(entry["task"])][int(entry["length"])]
        cell[entry["method"]].append(float(entry[metric]))
        cell["input_tokens"].append(float(entry["input_tokens"]))
    out: dict[str, list[dict[str, Any]]] = {}
    for family, lengths in sorted(cells.items()):
        out[family] = []
        for length, values in sorted(lengths.items()):
            row: dict[str, Any] = {"length": length, "input_tokens": round(_mean(values["input_tokens"]))}
            for method in METHODS:
                if values.get(method):
                    row[method] = round(_mean(values[method]), 4)
            out[family].append(row)
    return out


def accuracy_figure(summary: Sequence[Mapping[str, Any]], metric: str = HEADLINE) -> Any:
    """Accuracy against input tokens (log scale): one panel per task family, one line per method."""
    from components.plots import line_chart

    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for family, rows in plot_rows(summary, metric).items():
        panels[family] = {
            method: [(row["input_tokens"], row[method]) for row in rows if method in row]
            for method in METHODS
            if any(method in row for row in rows)
        }
    return line_chart(
        panels, f"Long-context accuracy ({metric}) vs input length", "input tokens", metric, log_x=True, ylim=(0, 1)
    )


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


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
