"""adrpo stage: GRPO with dense, attributed rewards (MemBuilder) from the sft model -> ``models/adrpo``.

Reads the synth_qa prompts dataset (``{synth_qa.output_dir}/prompts``: one row per (training session, memory
agent), with a ``split`` column) and keeps the rows of ``adrpo.splits``; trains ``adrpo.model_name_or_path`` with
``components.training.adrpo.train_adrpo``. The judge is ``adrpo.judge``: ``containment`` (offline) or ``llm``
(``backends.answerer`` answers, ``backends.judge`` grades; one backend serves both when they are configured
alike; closed when the stage ends). Under one MLflow run it logs the params, the prompts dataset and the policy as
input datasets with their DVC digests, every trainer log at its step (ADRPO's ``adrpo/...`` stats: reward
mean/std overall and per part, format failure rates, attribution weights, length penalties; TRL's ``reward``,
``loss``, ``kl`` when ``beta > 0``, ...), the reward curve, a table of the last step's sampled completions, the
final metrics and the model card.

Outputs: the model folder (``adrpo.output_dir``, ``from_pretrained``-loadable, with ``memforge_model.json``),
``adrpo.report_path`` (metrics), ``adrpo.plot_path`` (``[{step, reward, ...}]`` for ``dvc plots``) and the
checkpoints in ``adrpo.checkpoint_dir`` (a DVC ``persist`` output: a killed run resumes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.config import Params
from components.rewards.judges import build_judge
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun

PROMPTS_DIR = "prompts"
COMPLETIONS_TABLE = "adrpo/completions.json"


def prompts_path(params: Params) -> Path:
    """The synth_qa prompts dataset: ``{synth_qa.output_dir}/prompts``."""
    return Path(params.synth_qa.output_dir) / PROMPTS_DIR


def reward_figure(points: Sequence[Mapping[str, float]], title: str) -> Any:
    """Mean ADRPO reward (shaded: +- one std) and mean task reward against optimizer step."""
    from components.plots import line_chart

    series = {"reward (mean)": [(p["step"], p["reward"]) for p in points]}
    if all("task_reward" in p for p in points):
        series["task reward (mean)"] = [(p["step"], p["task_reward"]) for p in points]
    spread = {"reward (mean)": [(p["step"], p["reward_std"]) for p in points if "reward_std" in p]}
    return line_chart({title: series}, "adrpo", "step", "reward", ylim=(-0.05, 1.05), spread=spread)


def completions_table(rows: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` completion rows, evenly spread over the batch (first and last included)."""
    if limit <= 0 or not rows:
        return []
    if limit >= len(rows):
        return [dict(row) for row in rows]
    if limit == 1:
        return [dict(rows[0])]
    return [dict(rows[i * (len(rows) - 1) // (limit - 1)]) for i in range(limit)]


def run(params: Params, tracked: StageRun) -> StageResult:
    """Train ``adrpo.model_name_or_path`` with ADRPO on the synth_qa prompts of ``adrpo.splits``."""
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.training.adrpo import load_prompts, train_adrpo

    cfg = params.adrpo
    source = prompts_path(params)
    prompts = load_prompts(source, cfg.splits)
    tracked.log_input_dataset(
        source, name="adrpo-prompts", context="training", profile={"rows": len(prompts), "splits": cfg.splits}
    )
    if Path(cfg.model_name_or_path).is_dir():
        tracked.log_input_dataset(cfg.model_name_or_path, name="policy", context="model")
    judge, backends = build_judge(params)
    try:
        outcome = train_adrpo(cfg, prompts, cfg.output_dir, params.memory, on_log=tracked.log_step, judge=judge)
    finally:
        for backend in backends:
            backend.close()
    points = outcome.reward_history()
    title = f"{cfg.judge}, {cfg.attribution}: {outcome.sessions} sessions, {outcome.steps} steps"
    return StageResult(
        metrics=outcome.metrics(),
        metrics_path=cfg.report_path,
        timings=outcome.timings(),
        plots={cfg.plot_path: points},
        artifacts=[(str(Path(cfg.output_dir) / MODEL_CARD_FILE), "model")],
        figures={"adrpo/reward_curve.png": reward_figure(points, title)} if points else {},
        tables={COMPLETIONS_TABLE: completions_table(outcome.completions, cfg.log_completions)},
    )
