"""Long-context evaluation reports: accuracy per task, method and input length, from per-question rows.

A row is one (sample, method) answer: ``method`` is ``memagent`` (the reader) or ``full_context`` (the same model
reading the input truncated to its window). ``summarise`` averages the scores per (task, method, length);
``plot_rows`` turns that into one wide table per task family for ``dvc plots`` (one column per method), and
``accuracy_figure`` draws accuracy against input tokens. The headline score is ``correct``: substring exact match
(MemAgent's metric) for HotpotQA and SQuAD, every required value found for the needle tasks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
