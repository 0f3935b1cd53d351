"""Long-context report arithmetic: summaries, flat metrics and DVC plot rows on hand-computed rows; the task
families the stage reads and plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.evaluation.longcontext import EvalRow, headline, plot_rows, summarise, task_family


def row(task: str, method: str, length: int, tokens: int, sub_em: float, em: float = 0.0) -> EvalRow:
    return EvalRow(
        sample_id=f"{task}-{length}-{sub_em}",
        task=task,
        length=length,
        input_tokens=tokens,
        method=method,
        question="q",
        answers=("a",),
        prediction="p",
        correct=sub_em,
        sub_em=sub_em,
        em=em,
        f1=sub_em / 2,
        boxed=1.0,
        truncated=method == "full_context" and tokens > 1000,
    )


ROWS = [
    row("hotpotqa", "memagent", 10, 800, 1.0, 1.0),
    row("hotpotqa", "memagent", 10, 1000, 0.0),
    row("hotpotqa", "full_context", 10, 900, 1.0),
    row("hotpotqa", "memagent", 20, 2000, 1.0),
    row("hotpotqa", "full_context", 20, 2000, 0.0),
    row("needle_single", "memagent", 2048, 2040, 1.0),
    row("needle_multikey", "memagent", 2048, 2060, 0.0),
    row("squad", "memagent", 10, 1500, 1.0),
    row("squad", "memagent", 10, 1700, 1.0),
    row("squad", "full_context", 10, 1600, 0.0),
]


def test_summary_means_per_task_method_length() -> None:
    table = {(e["task"], e["method"], e["length"]): e for e in summarise(ROWS)}
    first = table["hotpotqa", "memagent", 10]
    assert (first["n"], first["input_tokens"], first["sub_em"], first["em"], first["f1"]) == (2, 900, 0.5, 0.5, 0.25)
    assert table["hotpotqa", "full_context", 20]["truncated"] == 1.0
    assert table["hotpotqa", "full_context", 10]["truncated"] == 0.0
    assert (table["squad", "memagent", 10]["n"], table["squad", "memagent", 10]["input_tokens"]) == (2, 1600)
    assert table["squad", "full_context", 10]["truncated"] == 1.0
    assert len(table) == 8


def test_headline_flattens_and_averages_per_method() -> None:
    flat = headline(summarise(ROWS))
    assert flat["memagent/hotpotqa/10/sub_em"] == 0.5
    assert flat["memagent/squad/10/correct"] == 1.0 and flat["full_context/squad/10/correct"] == 0.0
    # memagent cells: hotpotqa 10 (0.5), hotpotqa 20 (1.0), needle_multikey (0.0), needle_single (1.0), squad 10 (1.0)
    assert flat["memagent/mean_correct"] == pytest.approx(0.7)
    # full_context cells: hotpotqa 10 (1.0), hotpotqa 20 (0.0), squad 10 (0.0)
    assert flat["full_context/mean_correct"] == pytest.approx(1 / 3, abs=1e-4)


def test_plot_rows_are_wide_per_family_with_needle_tasks_averaged() -> None:
    plots = plot_rows(summarise(ROWS))
    assert task_family("needle_multivalue") == "needle" and task_family("hotpotqa") == "hotpotqa"
    assert plots["hotpotqa"] == [
        {"length": 10, "input_tokens": 900, "memagent": 0.5, "full_context": 1.0},
        {"length": 20, "input_tokens": 2000, "memagent": 1.0, "full_context": 0.0},
    ]
    assert plots["needle"] == [{"length": 2048, "input_tokens": 2050, "memagent": 0.5}]
    assert task_family("squad") == "squad"
    assert plots["squad"] == [{"length": 10, "input_tokens": 1600, "memagent": 1.0, "full_context": 0.0}]


def test_accuracy_figure_has_a_panel_per_family() -> None:
    from components.evaluation.longcontext import accuracy_figure
    from components.plots import close

    figure = accuracy_figure(summarise(ROWS))
    try:
        titles = sorted(axis.get_title() for axis in figure.axes)
        assert titles == ["hotpotqa", "needle", "squad"]
        lines = {line.get_label() for axis in figure.axes for line in axis.get_lines()}
        assert lines == {"memagent", "full_context"}
    finally:
        close(figure)


def test_default_sets_and_plots_include_squad() -> None:
    """Every plotted family is a default set, written into the plots folder, which is a DVC output whose files
    are declared as top-level plots."""
    import yaml

    from components.config import Params
    from components.longcontext.build import EVAL_SET_FILES as SET_FILES
    from components.stages.eval_longcontext import PLOT_FAMILIES, plot_path, set_paths

    params = Params()
    assert set(params.memagent.eval.tasks) == set(SET_FILES) == set(PLOT_FAMILIES) == {"hotpotqa", "squad", "needle"}
    assert Path(params.longcontext.output_dir) / "squad_eval.jsonl" in set_paths(params)
    dvc = yaml.safe_load((Path(__file__).resolve().parent.parent / "dvc.yaml").read_text(encoding="utf-8"))
    declared = {name for entry in dvc["plots"] for name in entry}
    outs = {
        name
        for entry in dvc["stages"]["eval_longcontext"]["outs"]
        for name in (entry if isinstance(entry, dict) else [entry])
    }
    assert "${memagent.eval.plots_dir}" in outs
    for family in PLOT_FAMILIES:
        assert plot_path(params, family) == f"{params.memagent.eval.plots_dir}/{family}.json"
        assert f"${{memagent.eval.plots_dir}}/{family}.json" in declared
