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
``adrpo.report_path`` (metrics), ``reports/adrpo_reward.json`` beside it (``[{step, reward, ...}]`` for
``dvc plots``) and the checkpoints in ``adrpo.checkpoint_dir`` (a DVC ``persist`` output: a killed run resumes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.config import Params, to_dict
from components.errors import InputError
from components.training.adrpo import ADRPOOutcome

REWARD_PLOT_FILE = "adrpo_reward.json"
PROMPTS_DIR = "prompts"
COMPLETIONS_TABLE = "adrpo/completions.json"


def prompts_path(params: Params) -> Path:
    """The synth_qa prompts dataset: ``{synth_qa.output_dir}/prompts``."""
    return Path(params.synth_qa.output_dir) / PROMPTS_DIR


def reward_plot_path(params: Params) -> Path:
    """``reports/adrpo_reward.json``: beside ``adrpo.report_path``."""
    return Path(params.adrpo.report_path).parent / REWARD_PLOT_FILE


def load_prompts(path: str | Path, splits: Sequence[str]) -> Any:
    """The prompts dataset at ``path`` restricted to ``splits``; an ``InputError`` naming ``path`` when it is
    missing, unreadable, malformed or holds no row of those splits."""
    from datasets import Dataset, load_from_disk

    folder = Path(path)
    if not (folder / "dataset_info.json").is_file() and not (folder / "state.json").is_file():
        raise InputError(folder, "no prompts dataset here; run the synth_qa stage (it joins the RL prompts)")
    try:
        dataset = load_from_disk(str(folder), keep_in_memory=True)  # never write cache files into a DVC output
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError or pyarrow errors
        raise InputError(folder, f"cannot load the prompts dataset: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dataset, Dataset):
        raise InputError(folder, f"expected one dataset with a 'split' column, found {type(dataset).__name__}")
    needed = {"prompt", "part", "split", "expert_output", "memory_before", "session", "questions"}
    missing = sorted(needed - set(dataset.column_names))
    if missing:
        raise InputError(folder, f"the prompts dataset lacks column(s) {', '.join(missing)}; rerun synth_qa")
    wanted = set(splits)
    kept = dataset.filter(lambda split: split in wanted, input_columns="split", keep_in_memory=True)
    if len(kept) == 0:
        present = ", ".join(sorted(set(dataset["split"]))) or "none"
        raise InputError(
            folder, f"no prompts of adrpo.splits {sorted(wanted)} (splits present: {present}); check expert.splits"
        )
    return kept


def build_judge(params: Params) -> tuple[Any, list[Any]]:
    """``(judge, backends to close)`` for ``adrpo.judge``; ``llm`` builds ``backends.answerer`` and ``backends.judge``
    (one backend when both are configured alike)."""
    from components.rewards import make_judge

    cfg = params.adrpo
    if cfg.judge != "llm":
        return make_judge(cfg), []
    from components.llm.backends import create_backend

    answerer = create_backend(params.backends.answerer)
    try:
        same = params.backends.judge == params.backends.answerer
        judge_backend = answerer if same else create_backend(params.backends.judge)
    except BaseException:
        answerer.close()
        raise
    backends = [answerer] if same else [answerer, judge_backend]
    return make_judge(cfg, answerer, judge_backend), backends


def reward_figure(points: Sequence[Mapping[str, float]], title: str) -> Any:
    """Mean ADRPO reward (band: +- one std) and mean task reward against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    reward = [p["reward"] for p in points]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, reward, marker="o", markersize=3, color="#4c72b0", label="reward (mean)")
    if all("reward_std" in p for p in points):
        low = [p["reward"] - p["reward_std"] for p in points]
        high = [p["reward"] + p["reward_std"] for p in points]
        axis.fill_between(steps, low, high, color="#4c72b0", alpha=0.2, label="+- 1 std")
    if all("task_reward" in p for p in points):
        axis.plot(steps, [p["task_reward"] for p in points], ls="--", color="#dd8452", label="task reward (mean)")
    axis.set_xlabel("step")
    axis.set_ylabel("reward")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def completions_table(rows: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` completion rows, evenly spread over the batch (first and last included)."""
    if limit <= 0 or not rows:
        return []
    if limit >= len(rows):
        return [dict(row) for row in rows]
    if limit == 1:
        return [dict(rows[0])]
    return [dict(rows[i * (len(rows) - 1) // (limit - 1)]) for i in range(limit)]


def run(params: Params) -> ADRPOOutcome:
    """The DVC stage entry: ADRPO training under an MLflow run, then the reports."""
    from components.io import write_json_atomic
    from components.llm.model_assets import MODEL_CARD_FILE
    from components.plots import close
    from components.tracking import stage_run
    from components.training.adrpo import train_adrpo

    cfg = params.adrpo
    source = prompts_path(params)
    section: dict[str, Any] = {"adrpo": to_dict(cfg), "memory": to_dict(params.memory)}
    if cfg.judge == "llm":
        section["backends"] = {"answerer": to_dict(params.backends.answerer), "judge": to_dict(params.backends.judge)}
    with stage_run("adrpo", params.tracking, params_section=section) as tracked:
        prompts = load_prompts(source, cfg.splits)
        tracked.log_input_dataset(
            source, name="adrpo-prompts", context="training", profile={"rows": len(prompts), "splits": cfg.splits}
        )
        if Path(cfg.model_name_or_path).is_dir():
            tracked.log_input_dataset(cfg.model_name_or_path, name="policy", context="model")

        def on_log(logs: dict[str, float], step: int) -> None:
            tracked.log_metrics(logs, step=step)

        judge, backends = build_judge(params)
        try:
            outcome = train_adrpo(cfg, prompts, cfg.output_dir, params.memory, on_log=on_log, judge=judge)
        finally:
            for backend in backends:
                backend.close()
        metrics = outcome.metrics()
        points = outcome.reward_history()
        write_json_atomic(cfg.report_path, metrics)
        write_json_atomic(reward_plot_path(params), points)
        tracked.log_metrics(metrics)
        tracked.log_artifact(cfg.report_path, "adrpo")
        tracked.log_artifact(reward_plot_path(params), "adrpo")
        tracked.log_artifact(Path(cfg.output_dir) / MODEL_CARD_FILE, "model")
        table = completions_table(outcome.completions, cfg.log_completions)
        if table:
            tracked.log_table(table, COMPLETIONS_TABLE)
        if points:
            title = f"adrpo ({cfg.judge}, {cfg.attribution}): {outcome.sessions} sessions, {outcome.steps} steps"
            figure = reward_figure(points, title)
            tracked.log_figure(figure, "adrpo/reward_curve.png")
            close(figure)
    return outcome
