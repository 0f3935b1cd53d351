"""great-expectations plumbing shared by memforge's data-quality suites (dialogues, synthetic QA).

One quiet, in-memory context; one pandas data source with a whole-dataframe asset and a suite per
table; validation that returns failing row positions (``unexpected_index_list``) and refuses to let an
expectation that raised pass silently. Built once per validator: GX setup is the slow part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "return_unexpected_index_query": False,
    "partial_unexpected_count": 0,
}
META_CHECK = "memforge_check"


def expectation(gx_type: str, kwargs: Mapping[str, Any], *, name: str, key: str, row_condition: Any = None) -> Any:
    """A GX expectation whose ``meta`` names the memforge expectation (``name``) and check (``key``) it implements."""
    import great_expectations.expectations as gxe

    extra = {"row_condition": row_condition} if row_condition is not None else {}
    return getattr(gxe, gx_type)(**kwargs, **extra, meta={"memforge_expectation": name, META_CHECK: key})


@dataclass
class TableSuites:
    """A suite per table, each bound to a whole-dataframe batch definition, in one ephemeral context."""

    context: Any
    batch_definitions: dict[str, Any]
    suites: dict[str, Any]

    @classmethod
    def build(cls, source_name: str, suite_prefix: str, expectations: Mapping[str, Sequence[Any]]) -> TableSuites:
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
        source = context.data_sources.add_pandas(source_name)
        batch_definitions, suites = {}, {}
        for table, table_expectations in expectations.items():
            asset = source.add_dataframe_asset(table)
            batch_definitions[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
            suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_prefix}_{table}"))
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
