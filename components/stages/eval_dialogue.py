"""eval_dialogue stage: memory writers answering questions about long conversations, against baselines.

Reads the conversations of ``eval_dialogue.splits`` (``{ingest.output_dir}/{split}.jsonl``) and of
``eval_dialogue.sources`` (any ingest format), checks them (``check_conversation``: a bad file or record stops the
stage before anything is written) and evaluates a seeded sample (``max_conversations`` x ``max_questions``) with
``components.evaluation.dialogue.evaluate``: every writer of ``eval_dialogue.writers`` and the expert teacher write
memory session by session, and every method (writers, ``expert``, ``rag``, ``full_context``) answers every question
with ``backends.answerer``, scored by every judge of ``eval_dialogue.judges``.

Outputs (written by ``publish``): ``report_path`` (DVC metrics: ``score`` of the first writer, per-method scores
overall and per category, evidence recall@k, memory size), ``plot_path`` (``{method, category, accuracy}`` of the
primary judge, a DVC bar plot), ``rows_path`` (one JSON line per question and method). MLflow also gets the rows as
a table, the accuracy figure, the evaluated model's card, the conversations as input datasets (the sampled set with
its digest) and the write / answer / judge seconds. The evaluation set's identity for promotion is computed by
``register`` (``model_registry.register.eval_set_digest``: the input files and the params that select and score).
"""

from __future__ import annotations

import logging
from pathlib import Path

from components.config import Params
from components.errors import InputError
from components.evaluation.dialogue import (
    accuracy_figure,
    build_report,
    eval_set_digest,
    evaluate,
    load_conversations,
    plot_table,
    sample_conversations,
    split_paths,
)
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun

logger = logging.getLogger(__name__)

FIGURE = "eval_dialogue/accuracy_by_category.png"
TABLE = "eval_dialogue/answers.json"


def run(params: Params, tracked: StageRun) -> StageResult:
    """Evaluate the writers of ``eval_dialogue.writers`` and the baselines on the sampled conversations."""
    from components.llm.model_assets import MODEL_CARD_FILE

    cfg = params.eval_dialogue
    paths = split_paths(params)
    loaded = load_conversations(paths, cfg.sources, cfg.unknown_evidence)
    conversations = sample_conversations(
        [item.conversation for item in loaded], cfg.max_conversations, cfg.max_questions, cfg.seed
    )
    files = [str(p) for p in paths] + [source.path for source in cfg.sources]
    if not conversations:
        raise InputError(", ".join(files), "no conversation with questions to evaluate")
    questions = sum(len(c.questions) for c in conversations)
    digest = eval_set_digest(conversations)
    for file in files:
        tracked.log_input_dataset(file, name=f"eval_dialogue-{Path(file).stem}", context="evaluation")
    tracked.log_input_dataset(
        ", ".join(files),
        name="eval_dialogue-sample",
        context="evaluation",
        digest=digest,
        profile={"conversations": len(conversations), "questions": questions, "seed": cfg.seed},
    )
    model_dir = Path(cfg.writers[0])
    if model_dir.is_dir():
        tracked.log_input_dataset(model_dir, name="model", context="model")
    logger.info("eval_dialogue: %d conversation(s), %d question(s)", len(conversations), questions)

    evaluation = evaluate(params, conversations)
    report = build_report(evaluation.rows, evaluation.methods, cfg.judges, evaluation.memory_sizes, evaluation.sessions)
    table = plot_table(evaluation.rows, evaluation.methods, cfg.primary_judge)
    logger.info("eval_dialogue: score %s", report["score"])
    return StageResult(
        metrics=report,
        metrics_path=cfg.report_path,
        timings=evaluation.timings,
        plots={cfg.plot_path: table},
        lines={cfg.rows_path: [row.to_dict() for row in evaluation.rows]},
        artifacts=[(str(model_dir / MODEL_CARD_FILE), "model")],
        figures={FIGURE: accuracy_figure(table, cfg.primary_judge)},
        tables={TABLE: [row.table_row() for row in evaluation.rows]},
    )
