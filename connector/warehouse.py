"""What the connector asks of a destination in SQL, beside dlt's own loading: the shared pieces.

The SQL itself sits with the step that runs it (`connector.views`, `connector.listings`, the
counts in `connector.sync`, `connector.packages`); this module holds what they all need: whether
the destination keeps SQL tables, whether a table exists yet, the `IN (...)` of a list, and a
read that gives nothing (not an error) where there is no table or no SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dlt import Pipeline
from dlt.common.destination.exceptions import SqlClientNotAvailable
from dlt.destinations.exceptions import DatabaseException

logger = logging.getLogger(__name__)


def holds_sql(pipeline: Pipeline) -> bool:
    """Whether the destination keeps tables SQL can change (not the filesystem destination)."""
    # The filesystem destination's SQL client is a throwaway in-memory DuckDB over its files.
    return pipeline.destination.destination_name != "filesystem"


def has_table(pipeline: Pipeline, table: str) -> bool:
    """Whether the pipeline's schema holds `table` (nothing loaded yet: no schema at all)."""
    return bool(pipeline.default_schema_name) and table in pipeline.default_schema.tables


def in_list(column: str, values: Sequence[Any]) -> str:
    """`column IN (%s, %s, ...)`, a placeholder per value: the values go as the query's arguments."""
    return f"{column} IN ({', '.join(['%s'] * len(values))})"


def read_table(
    pipeline: Pipeline, table: str, query: Callable[[str], str], *args: Any, what: str
) -> list[Any] | None:
    """The rows `query` (given the table's qualified name) reads; None where it cannot be asked.

    None when the table is not in the schema yet, the destination has no SQL client, or the
    query fails on the destination (a table dlt knows of but has not created there yet); the
    reason is logged at INFO as `<what>: <reason>`.
    """
    if not has_table(pipeline, table):
        return None
    try:
        with pipeline.sql_client() as sql:
            rows = sql.execute_sql(query(sql.make_qualified_table_name(table)), *args)
    except (SqlClientNotAvailable, DatabaseException) as exc:
        logger.info("%s: %s", what, exc)
        return None
    return list(rows or [])
