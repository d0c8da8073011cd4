"""What the connector asks of a destination in SQL, beside dlt's own loading: the shared pieces.

The SQL itself sits with the step that runs it (`connector.views`, `connector.listings`, the
counts in `connector.sync`, `connector.packages`); this module holds what they all need: the
`Tables` a step works on (the schema read once, one SQL client), whether the destination keeps
SQL tables, the `IN (...)` of a list, and a read that gives nothing (not an error) where there is
no table or no SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, cast

from dlt import Pipeline
from dlt.common.destination.exceptions import SqlClientNotAvailable
from dlt.common.schema import Schema
from dlt.common.schema.utils import has_table_seen_data
from dlt.destinations.exceptions import DatabaseException
from dlt.destinations.sql_client import SqlClientBase

logger = logging.getLogger(__name__)


class Tables:
    """The destination's tables as one step of a run sees them: its schema, and one SQL client.

    dlt reads the schema from disk again on every `pipeline.default_schema` and resolves the
    destination's whole configuration on every `pipeline.sql_client()`, tens of milliseconds
    each; the steps after a load asked for them about forty times a run. Open with `destination_tables`, for
    a step that does not change the schema: the SQL client opens on first use, once.
    """

    def __init__(self, pipeline: Pipeline, stack: ExitStack) -> None:
        self.schema: Schema | None = pipeline.default_schema if pipeline.default_schema_name else None
        self.holds_sql = holds_sql(pipeline)
        self._pipeline = pipeline
        self._stack = stack
        self._sql: SqlClientBase[Any] | None = None

    def has(self, table: str) -> bool:
        """Whether the schema holds `table` (nothing loaded yet: no schema at all)."""
        return self.schema is not None and table in self.schema.tables

    def has_data(self, table: str) -> bool:
        """Whether the schema holds `table` and a load has written it (dlt created it)."""
        return (
            self.schema is not None
            and table in self.schema.tables
            and has_table_seen_data(self.schema.tables[table])
        )

    def columns(self, table: str) -> set[str]:
        """The columns the schema knows `table` has (none for a table it does not know)."""
        if self.schema is None or table not in self.schema.tables:
            return set()
        return set(self.schema.get_table_columns(table))

    @property
    def sql(self) -> SqlClientBase[Any]:
        """The step's SQL client, opened on first use; `SqlClientNotAvailable` where there is none."""
        if self._sql is None:
            client = self._pipeline.sql_client()
            # dlt's client is a context manager whose __exit__ mypy does not take for one.
            self._sql = self._stack.enter_context(cast(AbstractContextManager[SqlClientBase[Any]], client))
        return self._sql

    def read(self, table: str, query: Callable[[str], str], *args: Any, what: str) -> list[Any] | None:
        """The rows `query` (given the table's qualified name) reads; None where it cannot be asked.

        None when the table is not in the schema yet, the destination has no SQL client, or the
        query fails on the destination (a table dlt knows of but has not created there yet); the
        reason is logged at INFO as `<what>: <reason>`.
        """
        if not self.has(table):
            return None
        try:
            sql = self.sql
            rows = sql.execute_sql(query(sql.make_qualified_table_name(table)), *args)
        except (SqlClientNotAvailable, DatabaseException) as exc:
            logger.info("%s: %s", what, exc)
            return None
        return list(rows or [])


@contextmanager
def destination_tables(pipeline: Pipeline) -> Iterator[Tables]:
    """The pipeline's `Tables` for one step; its SQL client, if it opened one, closes after."""
    with ExitStack() as stack:
        yield Tables(pipeline, stack)


def holds_sql(pipeline: Pipeline) -> bool:
    """Whether the destination keeps tables SQL can change (not the filesystem destination)."""
    # The filesystem destination's SQL client is a throwaway in-memory DuckDB over its files.
    return pipeline.destination.destination_name != "filesystem"


def in_list(column: str, values: Sequence[Any]) -> str:
    """`column IN (%s, %s, ...)`, a placeholder per value: the values go as the query's arguments."""
    return f"{column} IN ({', '.join(['%s'] * len(values))})"


def read_table(
    pipeline: Pipeline, table: str, query: Callable[[str], str], *args: Any, what: str
) -> list[Any] | None:
    """`Tables.read` for a lone query outside a step's `destination_tables`."""
    with destination_tables(pipeline) as step:
        return step.read(table, query, *args, what=what)


def collapse_twice_loaded(sql: SqlClientBase[Any], table: str, scratch: str) -> None:
    """Keep one of each set of identical rows sharing a `_dlt_id` in an appended table.

    Rare: a run killed after the destination committed a load job but before dlt marked it
    done has that job loaded again when the package is finished. `table` and `scratch` are
    qualified names; `scratch` is a work table made and dropped here.
    """
    twice = f"SELECT _dlt_id FROM {table} GROUP BY _dlt_id HAVING COUNT(*) > 1"
    found = sql.execute_sql(f"SELECT COUNT(*) FROM ({twice}) d")
    if not found or not found[0][0]:
        return
    with sql.begin_transaction():
        sql.execute_sql(f"DROP TABLE IF EXISTS {scratch}")
        sql.execute_sql(
            f"CREATE TABLE {scratch} AS SELECT DISTINCT * FROM {table} WHERE _dlt_id IN ({twice})"
        )
        sql.execute_sql(f"DELETE FROM {table} WHERE _dlt_id IN (SELECT _dlt_id FROM {scratch})")
        sql.execute_sql(f"INSERT INTO {table} SELECT * FROM {scratch}")
        sql.execute_sql(f"DROP TABLE {scratch}")
