"""Figures logged to MLflow (the same data is written as JSON for `dvc plots`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def horizontal_bars(
    panels: Mapping[str, Mapping[str, float]], title: str, xlim: tuple[float, float] | None = None
) -> Any:
    """One horizontal bar chart per panel (``{panel title: {label: value}}``), side by side."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.4 * max(map(len, panels.values())) + 1.5))
    axes = axes if len(panels) > 1 else [axes]
    for axis, (panel_title, values) in zip(axes, panels.items(), strict=True):
        labels = list(values)
        axis.barh(labels, [values[label] for label in labels], color="#4c72b0")
        axis.invert_yaxis()
        axis.set_title(panel_title)
        for index, label in enumerate(labels):
            value = values[label]
            axis.annotate(f"{value:.3g}", (value, index), xytext=(3, 0), textcoords="offset points", va="center")
    if xlim is not None:
        axes[0].set_xlim(*xlim)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def close(figure: Any) -> None:
    _pyplot().close(figure)


def line_chart(
    panels: Mapping[str, Mapping[str, list[tuple[float, float]]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log_x: bool = False,
    ylim: tuple[float, float] | None = None,
    spread: Mapping[str, list[tuple[float, float]]] | None = None,
) -> Any:
    """One line chart per panel (``{panel title: {series name: [(x, y), ...]}}``), side by side.

    ``spread`` (``{series name: [(x, half-width), ...]}``) shades y +- half-width around that series, e.g. one
    standard deviation.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (panel_title, series) in zip(axes[0], panels.items(), strict=True):
        for name, points in series.items():
            ordered = sorted(points)
            xs, ys = [x for x, _ in ordered], [y for _, y in ordered]
            (line,) = axis.plot(xs, ys, marker="o", markersize=4, label=name)
            widths = dict((spread or {}).get(name, []))
            if widths and all(x in widths for x in xs):
                low = [y - widths[x] for x, y in ordered]
                high = [y + widths[x] for x, y in ordered]
                axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, label=f"{name} +- spread")
        if log_x:
            axis.set_xscale("log")
        if ylim is not None:
            axis.set_ylim(*ylim)
        axis.set_title(panel_title)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure
