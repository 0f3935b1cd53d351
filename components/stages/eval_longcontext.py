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

import logging
from pathlib import Path

from components.config import Params
from components.evaluation.longcontext import (
    evaluate,
    load_eval_samples,
    nested_report,
    plot_rows,
    summarise,
    task_family,
)
from components.longcontext.build import EVAL_SET_FILES
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


def run(params: Params, tracked: StageRun) -> StageResult:
    """Evaluate ``memagent.eval.model_name_or_path`` on the sets of ``memagent.eval.tasks``."""
    from components.evaluation.longcontext import accuracy_figure
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
    tables = plot_rows(summary)
    families = sorted({task_family(r.task) for r in rows})
    logger.info("eval_longcontext: %d answers over %s; %s", len(rows), families, report["mean"])
    return StageResult(
        metrics=report,
        metrics_path=cfg.eval.report_path,
        plots={plot_path(params, family): tables.get(family, []) for family in PLOT_FAMILIES},
        lines={cfg.eval.rows_path: [row.to_dict() for row in rows]},
        artifacts=[(str(model_dir / MODEL_CARD_FILE), "model")],
        figures={"eval_longcontext/accuracy_vs_length.png": accuracy_figure(summary)},
        tables={
            "eval_longcontext/summary.json": summary,
            "eval_longcontext/answers.json": [r.to_dict() for r in rows[:TABLE_ROWS]],
        },
    )
