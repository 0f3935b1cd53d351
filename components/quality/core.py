"""What memforge's data-quality suites share: checks, their totals, verdicts, the validator base, GX plumbing.

A memforge expectation (``unique_ids``, ``answer_supported``, ...) is implemented by one or more ``Check``s; each
is one great-expectations 1.x expectation over one pandas table of derived columns, whose ``meta`` names the
check, plus a describer that turns a failing row into a message. A ``SuiteValidator`` builds one quiet, in-memory
GX context with a suite per table once (GX setup is the slow part) and runs a table's suite on a frame, yielding
each check's failing row positions (``unexpected_index_list``); an expectation that raised is an error, never a
pass. ``CheckTotals`` accumulate a check's counts and examples into its entry of the JSON validation result.

Raw text enters a GX table only through ``safe`` / ``escaped``: pandas 3 stores strings in Arrow, which cannot
hold lone surrogates. ``clean`` and ``show`` make user-supplied strings printable in messages and reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

#: Example failing records kept per check in a validation result.
MAX_EXAMPLES = 20
#: Characters of a user-supplied string quoted in a message.
MAX_SHOWN = 80

RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "return_unexpected_index_query": False,
    "partial_unexpected_count": 0,
}
META_CHECK = "memforge_check"


# ---------------------------------------------------------------------------------------------
# user-supplied strings


def clean(value: str) -> str:
    """``value`` with lone surrogates written as ``\\udXXX`` escapes, so it can be encoded as UTF-8."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def show(value: str) -> str:
    """A quoted, escaped, length-bounded rendering of a user-supplied string."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 4] + "...'"


def safe(values: list[str]) -> list[str]:
    """``values`` made storable in Arrow strings (lone surrogates escaped); the same list when already valid."""
    try:
        "\x00".join(values).encode("utf-8")
        return values
    except UnicodeEncodeError:
        return [clean(v) for v in values]


def escaped(values: list[str | None]) -> list[str | None]:
    """``safe`` for a column with missing values (``None`` kept)."""
    present = [v for v in values if v is not None]
    if safe(present) is present:
        return values
    return [None if v is None else clean(v) for v in values]


def snake(class_name: str) -> str:
    """``ExpectColumnValuesToBeBetween`` -> ``expect_column_values_to_be_between``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


# ---------------------------------------------------------------------------------------------
# checks, their totals and verdicts


@dataclass(frozen=True)
class Check:
    """One GX expectation implementing memforge expectation ``name``, with the describer of a failing row."""

    key: str  # unique within the suite; stored in the GX expectation's meta
    name: str  # the memforge expectation it implements
    table: str
    gx_type: str  # class name in great_expectations.expectations
    kwargs: dict[str, Any]
    describe: Callable[..., str]  # (the suite's view of a failing row) -> message
    condition: tuple[str, Any] | None = None  # GX row_condition: column == value

    def report_kwargs(self) -> dict[str, Any]:
        """The expectation's arguments as the validation result shows them."""
        if self.condition is None:
            return self.kwargs
        return {**self.kwargs, "row_condition": f"{self.condition[0]} == {self.condition[1]}"}

    def to_gx(self) -> Any:
        """The GX expectation; its ``meta`` names the memforge expectation and this check."""
        import great_expectations.expectations as gxe

        extra: dict[str, Any] = {}
        if self.condition is not None:
            from great_expectations.expectations.row_conditions import Column

            extra["row_condition"] = Column(self.condition[0]) == self.condition[1]
        meta = {"memforge_expectation": self.name, META_CHECK: self.key}
        return getattr(gxe, self.gx_type)(**self.kwargs, **extra, meta=meta)


class CheckRun(NamedTuple):
    """One check run on one frame."""

    check: Check
    rows: np.ndarray  # positions of the failing rows
    evaluated: int  # rows evaluated
    success: bool


@dataclass
class CheckTotals:
    """One check's counts over every frame it ran on, with up to ``MAX_EXAMPLES`` failing examples."""

    batches: int = 0
    failed_batches: int = 0
    element_count: int = 0
    unexpected_count: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.failed_batches == 0

    def add(self, run: CheckRun) -> None:
        self.batches += 1
        self.failed_batches += 0 if run.success else 1
        self.element_count += run.evaluated
        self.unexpected_count += int(run.rows.size)

    def add_example(self, example: dict[str, str]) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def result(self, check: Check, labels: Mapping[str, Any], *, with_batches: bool = False) -> dict[str, Any]:
        """``check``'s entry in a validation result; ``labels`` are the suite's own (e.g. ``critical``)."""
        return {
            "expectation": check.name,
            "check": check.key,
            **labels,
            "table": check.table,
            "expectation_type": snake(check.gx_type),
            "kwargs": check.report_kwargs(),
            "success": self.success,
            **({"batches": self.batches} if with_batches else {}),
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
            "unexpected_percent": 100.0 * self.unexpected_count / self.element_count if self.element_count else None,
            "examples": list(self.examples),
            "examples_truncated": self.unexpected_count > len(self.examples),
        }


def suite_statistics(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GX-style statistics over the check entries of a validation result."""
    successful = sum(1 for r in results if r["success"])
    return {
        "evaluated_expectations": len(results),
        "successful_expectations": successful,
        "unsuccessful_expectations": len(results) - successful,
        "success_percent": 100.0 * successful / len(results),
    }


def gx_engine() -> str:
    """The engine line of a validation result."""
    import great_expectations as gx

    return f"great_expectations {gx.__version__}"


@dataclass
class Verdict:
    """One record's outcome: ``(expectation name, detail)`` for every failure found, in suite order.

    Each suite's verdict adds the record's identity (``ConversationVerdict``, ``QAVerdict``).
    """

    failures: list[tuple[str, str]] = field(default_factory=list, kw_only=True)

    @property
    def passed(self) -> bool:
        return not self.failures

    def failed_expectations(self) -> list[str]:
        """Names of the failed expectations, each once, in suite order."""
        return list(dict.fromkeys(name for name, _ in self.failures))


# ---------------------------------------------------------------------------------------------
# the validator base and the GX plumbing


class SuiteValidator:
    """Checks in suite order and a GX suite per table (``memforge_<suite>_<table>``), built once.

    ``checks`` must cover every name of ``expectation_names`` and follow its order, so a check's position
    (``rank``) orders failures and report entries the way the suite lists its expectations.
    """

    def __init__(
        self, suite: str, expectation_names: Sequence[str], tables: Sequence[str], checks: Sequence[Check]
    ) -> None:
        order = [expectation_names.index(check.name) for check in checks]
        if set(order) != set(range(len(expectation_names))) or order != sorted(order):
            raise AssertionError(f"{suite}: checks must cover {list(expectation_names)} in that order")
        self.checks = list(checks)
        self.tables = tuple(tables)
        self.suite_names = [f"memforge_{suite}_{table}" for table in tables]
        self._check_by_key = {check.key: check for check in checks}
        self._rank = {check.key: i for i, check in enumerate(checks)}
        self._gx = TableSuites.build(
            f"memforge_{suite}",
            {table: [check.to_gx() for check in checks if check.table == table] for table in tables},
        )

    def rank(self, check: Check) -> int:
        """The check's position in the suite."""
        return self._rank[check.key]

    def run(self, table: str, frame: Any) -> Iterator[CheckRun]:
        """Validate ``frame`` with ``table``'s suite; one ``CheckRun`` per check of the table."""
        for expectation_result in self._gx.validate(table, frame):
            check = self._check_by_key[check_key(expectation_result)]
            rows = unexpected_rows(expectation_result, f"{check.key} ({check.gx_type})")
            evaluated = element_count(expectation_result, len(frame))
            yield CheckRun(check, rows, evaluated, bool(expectation_result.success))


@dataclass
class TableSuites:
    """A suite per table (``<name>_<table>``), each bound to a whole-dataframe batch, in one ephemeral context."""

    context: Any
    batch_definitions: dict[str, Any]
    suites: dict[str, Any]

    @classmethod
    def build(cls, name: str, expectations: Mapping[str, Sequence[Any]]) -> TableSuites:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        project = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=project)
        source = context.data_sources.add_pandas(name)
        batch_definitions, suites = {}, {}
        for table, table_expectations in expectations.items():
            asset = source.add_dataframe_asset(table)
            batch_definitions[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
            suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_{table}"))
            for item in table_expectations:
                suite.add_expectation(item)
            suites[table] = suite
        return cls(context, batch_definitions, suites)

    def validate(self, table: str, frame: Any) -> list[Any]:
        """Run ``table``'s suite on ``frame``; one expectation result per expectation."""
        batch = self.batch_definitions[table].get_batch(batch_parameters={"dataframe": frame})
        return list(batch.validate(self.suites[table], result_format=RESULT_FORMAT).results)


def check_key(expectation_result: Any) -> str:
    """The memforge check an expectation result belongs to."""
    return str(expectation_result.expectation_config.meta[META_CHECK])


def unexpected_rows(expectation_result: Any, label: str) -> np.ndarray:
    """Positions of the failing rows; an expectation that raised is an error, never a pass."""
    info = expectation_result.exception_info or {}
    nested = [info] if "raised_exception" in info else list(info.values())
    for entry in nested:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            raise RuntimeError(f"great-expectations could not evaluate {label}: {entry.get('exception_message')}")
    rows = expectation_result.result.get("unexpected_index_list")
    if rows is None:
        if expectation_result.success:
            return np.empty(0, dtype=np.int64)
        raise RuntimeError(f"great-expectations returned no unexpected rows for failed check {label}")
    return np.unique(np.asarray(rows, dtype=np.int64))


def element_count(expectation_result: Any, rows: int) -> int:
    """Rows the expectation evaluated (GX omits the count for some expectation types)."""
    count = expectation_result.result.get("element_count")
    return rows if count is None else int(count)
