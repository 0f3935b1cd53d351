"""The synthetic QA dataset card: a markdown summary of one ``QAValidator.validate`` report and its rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from components.config import SynthQAConfig
from components.qa.schema import QUESTION_TYPES, QARow
from components.quality.core import clean
from components.quality.qa import (
    QA_EXPECTATION_NAMES,
    ROW_EXPECTATIONS,
    QAQualityReport,
    quality_gate_message,
    row_field,
    target_shares,
)

#: Example rows shown per question type in the dataset card.
CARD_EXAMPLES_PER_TYPE = 5
_CARD_CELL = 120  # characters of a user-supplied string shown in a card cell


def _cell(value: Any) -> str:
    """A markdown table cell: escaped, one line, bounded."""
    text = clean(value if isinstance(value, str) else ", ".join(map(str, value)) if value else "")
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= _CARD_CELL else text[: _CARD_CELL - 3] + "..."


def dataset_card(report: QAQualityReport, rows: Sequence[QARow], cfg: SynthQAConfig) -> str:
    """A markdown card: counts by type and generator, pass rates, usable fraction, examples per type and a
    summary of the quarantine reasons. ``rows`` = the sequence that produced ``report``."""
    targets = target_shares(cfg)
    gate = quality_gate_message(report, cfg)
    usable_by_generator: Counter[str] = Counter()
    by_generator: Counter[str] = Counter()
    for verdict in report.verdicts:
        generator = row_field(rows[verdict.index], "generator")
        label = generator if isinstance(generator, str) else "<missing>"
        by_generator[label] += 1
        usable_by_generator[label] += verdict.passed
    lines = [
        "# Synthetic QA dataset card",
        "",
        f"- rows: {report.total}",
        f"- usable: {report.usable} (usable fraction {report.usable_fraction():.3f}; "
        f"min_usable_fraction {cfg.min_usable_fraction:g})",
        f"- quarantined: {report.total - report.usable}",
        f"- quality gate: {'passed' if gate is None else 'FAILED'}",
        "",
        "## Counts by type",
        "",
        "| type | rows | usable | usable share | target share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for qtype in (*QUESTION_TYPES, *sorted(set(report.type_counts) - set(QUESTION_TYPES))):
        usable = report.usable_type_counts.get(qtype, 0)
        share = f"{usable / report.usable:.3f}" if report.usable else "-"
        target = f"{targets[qtype]:.2f}" if qtype in targets else "-"
        lines.append(f"| {_cell(qtype)} | {report.type_counts.get(qtype, 0)} | {usable} | {share} | {target} |")
    lines += ["", "## Counts by generator", "", "| generator | rows | usable |", "| --- | ---: | ---: |"]
    for generator, count in sorted(by_generator.items()):
        lines.append(f"| {_cell(generator)} | {count} | {usable_by_generator[generator]} |")
    lines += [
        "",
        "## Pass rates",
        "",
        "| expectation | level | on failure | pass rate | failing |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for name in QA_EXPECTATION_NAMES:
        row_level = name in ROW_EXPECTATIONS
        failing = report.failed_counts.get(name, 0)
        unit = "rows" if row_level else ("types" if name == "type_mix" else "sessions")
        lines.append(
            f"| {name} | {'row' if row_level else 'dataset'} | {'quarantine' if row_level else 'critical'} | "
            f"{report.pass_rates.get(name, 1.0):.4f} | {failing} {unit} |"
        )
    if gate is not None:
        lines += ["", "## Critical", "", "```", clean(gate), "```"]
    lines += ["", "## Quarantine reasons", ""]
    examples: dict[str, list[str]] = {}
    for verdict in report.verdicts:
        for name, detail in verdict.failures:
            shown = examples.setdefault(name, [])
            if len(shown) < 3:
                shown.append(f"`{_cell(verdict.qa_id)}`: {_cell(detail)}")
    quarantine = [(name, report.failed_counts.get(name, 0)) for name in ROW_EXPECTATIONS]
    if not any(count for _, count in quarantine):
        lines.append("No row was quarantined.")
    for name, count in quarantine:
        if count:
            lines.append(f"- **{name}**: {count} row(s)")
            lines.extend(f"  - {example}" for example in examples.get(name, []))
    lines += ["", "## Examples", ""]
    for qtype in QUESTION_TYPES:
        picked = [rows[v.index] for v in report.verdicts if v.passed and row_field(rows[v.index], "type") == qtype][
            :CARD_EXAMPLES_PER_TYPE
        ]
        lines += [f"### {qtype}", ""]
        if not picked:
            lines += ["No usable rows.", ""]
            continue
        lines += ["| qa_id | question | answer | evidence | generator |", "| --- | --- | --- | --- | --- |"]
        for row in picked:
            cells = [_cell(row_field(row, name)) for name in ("qa_id", "question", "answer", "evidence", "generator")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
