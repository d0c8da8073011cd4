"""Customer history (`history = true`): every version of a customer kept, each with its validity.

The `customers` table is appended instead of merged, and after each load one transaction of
SQL settles what the load added (`settle_history`), the same on DuckDB and PostgreSQL:

1. of one customer's rows in one load, only the latest (`modified_date`, then the read
   instant) is kept: a customer changed while the run paged through it was read twice;
2. a row equal in every field Codat sent to the customer's version before it is dropped: what
   the API showed did not change (a page read again after a kill, a backfill);
3. each version is valid from the instant of the load that brought it (`valid_from`) to the
   instant of the load of the next version (`valid_to`; NULL for the current one). A deletion
   is a version too, with `is_deleted = true`.

A row not settled yet has no `valid_from`: that is how a run killed between its load and this
step leaves it, and the next run settles it with its own rows, in load order. The customers
that were loaded before history was turned on are settled the same way, each becoming its
customer's first version. The child rows of a dropped row join to no customer and go with the
replaced ones (`connector.views.prune_child_rows`); those of each kept version stay with it.
"""

from __future__ import annotations

from typing import Any

from dlt import Pipeline
from dlt.common.schema import Schema
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.destinations.sql_client import SqlClientBase

from connector.errors import InvalidOption
from connector.warehouse import Tables, collapse_twice_loaded

VALID_FROM = "valid_from"
VALID_TO = "valid_to"
HISTORY_COLUMNS: TTableSchemaColumns = {
    VALID_FROM: {"data_type": "timestamp", "nullable": True},
    VALID_TO: {"data_type": "timestamp", "nullable": True},
}
# Columns that say when and how a row was read or loaded, not what Codat holds.
RUN_COLUMNS = frozenset({"_dlt_load_id", "_dlt_id", "extracted_at", VALID_FROM, VALID_TO})
KEY = ("company_id", "id")
# Customers whose versions one statement orders at a time: what a window over their rows needs
# stays within the connector's DuckDB memory limit (`DEFAULT_DUCKDB_MEMORY_LIMIT`) when a restamp
# gives every customer of a large account a new version at once.
KEYS_A_BATCH = 10_000
LOADED_AT = "to_timestamp(CAST({t}._dlt_load_id AS DOUBLE PRECISION))"  # dlt's load id is a Unix time


def keeps_history(tables: Tables) -> bool:
    """Whether the destination's `customers` table keeps versions (it has `valid_to`)."""
    return schema_keeps_history(tables.schema)


def schema_keeps_history(schema: Schema | None) -> bool:
    """Whether a pipeline's schema has a `customers` table that keeps versions."""
    if schema is None or "customers" not in schema.tables:
        return False
    return VALID_TO in schema.get_table_columns("customers")


def switch_history(pipeline: Pipeline, history: bool, full_refresh: bool) -> bool:
    """Check the run's history setting against the `customers` table; returns whether it keeps versions.

    Turning history on keeps what is loaded: the table is appended from now on, and its rows
    become first versions when they are settled (the stored schema forgets the merge's
    `dedup_sort`, which dlt would warn about on every load). Turning it off is refused.

    Raises:
        InvalidOption: `history` is off, the `customers` table keeps versions, and this is not a
            full refresh (which drops the tables and loads everything again).
    """
    schema = pipeline.default_schema if pipeline.default_schema_name else None
    kept = schema_keeps_history(schema)
    if history and schema is not None and "customers" in schema.tables:
        read_at = schema.tables["customers"]["columns"].get("extracted_at")
        if read_at is not None and read_at.pop("dedup_sort", None) is not None:
            pipeline.schemas.save_schema(schema)
    if history or full_refresh or not kept:
        return kept
    raise InvalidOption(
        "the customers table keeps every version of a customer (history was on), and a run without "
        "history would fold them into one: run with history (--history, or "
        "SOURCES__CODAT__HISTORY=true), or with --full-refresh to reload without it"
    )


def settle_history(tables: Tables, repair: bool = False) -> int:
    """Settle the customer rows loaded since the last settling; returns how many were dropped.

    One transaction: killed, it leaves the rows unsettled for the next run. Only customers with
    more than one row and one unsettled can need more than their `valid_from` (a first load's
    customers have one row each): they are found by one aggregate and kept in a work table, and
    the window functions run over their rows alone, `KEYS_A_BATCH` customers at a time, comparing
    a fingerprint of each row's fields rather than the fields, so that DuckDB keeps within its
    memory limit however large the load.

    Args:
        tables: The destination's tables, after the load.
        repair: First collapse rows loaded twice (`collapse_twice_loaded`): the run finished a
            killed run's load, whose jobs may have run twice.
    """
    if not tables.holds_sql or not tables.has_data("customers") or not keeps_history(tables):
        return 0
    sql = tables.sql
    customers = sql.make_qualified_table_name("customers")
    if repair:
        collapse_twice_loaded(sql, customers, sql.make_qualified_table_name("_codat_repair_customers"))
    data = sorted(c for c in tables.columns("customers") if c not in RUN_COLUMNS and c not in KEY)
    keys = sql.make_qualified_table_name("_codat_history_keys")
    with sql.begin_transaction():
        sql.execute_sql(f"DROP TABLE IF EXISTS {keys}")
        sql.execute_sql(
            f"CREATE TABLE {keys} AS SELECT company_id, id, "
            f"FLOOR((ROW_NUMBER() OVER (ORDER BY company_id, id) - 1) / {KEYS_A_BATCH}.0) AS batch "
            f"FROM (SELECT company_id, id FROM {customers} GROUP BY company_id, id HAVING COUNT(*) > 1 "
            f"AND SUM(CASE WHEN {VALID_FROM} IS NULL THEN 1 ELSE 0 END) > 0) m"
        )
        found = sql.execute_sql(f"SELECT COUNT(*) FROM {keys}")
        batches = -(-int(found[0][0]) // KEYS_A_BATCH) if found else 0
        dropped = 0
        joined = f"{customers} c JOIN {keys} k ON k.company_id = c.company_id AND k.id = c.id"
        for batch in range(batches):
            rows = f"{joined} AND k.batch = {batch}"
            dropped += _drop(sql, customers, _same_load_twice(rows))
            dropped += _drop(sql, customers, _unchanged(rows, data))
            sql.execute_sql(_close(customers, rows))
        loaded_at = LOADED_AT.format(t=customers)
        sql.execute_sql(f"UPDATE {customers} SET {VALID_FROM} = {loaded_at} WHERE {VALID_FROM} IS NULL")
        sql.execute_sql(f"DROP TABLE {keys}")
    return dropped


def _drop(sql: SqlClientBase[Any], customers: str, ids: str) -> int:
    """Delete the unsettled rows whose `_dlt_id` the query selects; returns how many."""
    found = sql.execute_sql(f"SELECT COUNT(*) FROM ({ids}) d")
    count = int(found[0][0]) if found else 0
    if count:
        sql.execute_sql(f"DELETE FROM {customers} WHERE {VALID_FROM} IS NULL AND _dlt_id IN ({ids})")
    return count


def _same_load_twice(rows: str) -> str:
    """The unsettled rows of a customer that one load holds a later row of."""
    return (
        "SELECT _dlt_id FROM (SELECT c._dlt_id, ROW_NUMBER() OVER (PARTITION BY c.company_id, c.id, "
        "c._dlt_load_id ORDER BY c.modified_date DESC NULLS LAST, c.extracted_at DESC NULLS LAST, "
        f"c._dlt_id DESC) AS n FROM {rows} WHERE c.{VALID_FROM} IS NULL) r WHERE n > 1"
    )


def _order() -> str:
    """A customer's rows in the order of their versions: load, then Codat's `modifiedDate`."""
    return (
        f"PARTITION BY c.company_id, c.id ORDER BY COALESCE(c.{VALID_FROM}, {LOADED_AT.format(t='c')}), "
        "c.modified_date NULLS FIRST, c._dlt_id"
    )


def _fingerprint(data: list[str]) -> str:
    """One text of every field Codat sent, NULL told apart from any text (`md5` in both engines)."""
    fields = " || '|' || ".join(f"COALESCE('v' || CAST(c.{column} AS TEXT), 'n')" for column in data)
    return f"md5({fields})"


def _unchanged(rows: str, data: list[str]) -> str:
    """The unsettled rows equal, in every field Codat sent, to the row before them."""
    return (
        f"SELECT _dlt_id FROM (SELECT c._dlt_id, c.{VALID_FROM}, {_fingerprint(data)} AS f, "
        f"LAG({_fingerprint(data)}) OVER w AS p, ROW_NUMBER() OVER w AS n FROM {rows} "
        f"WINDOW w AS ({_order()})) r WHERE r.{VALID_FROM} IS NULL AND r.n > 1 AND r.f = r.p"
    )


def _close(customers: str, rows: str) -> str:
    """Set each such customer's versions' `valid_to` to the load instant of the version after them."""
    return (
        f"UPDATE {customers} SET {VALID_TO} = nx.next_from FROM (SELECT c._dlt_id, "
        f"LEAD(COALESCE(c.{VALID_FROM}, {LOADED_AT.format(t='c')})) OVER ({_order()}) AS next_from "
        f"FROM {rows}) nx "
        f"WHERE {customers}._dlt_id = nx._dlt_id AND {customers}.{VALID_TO} IS DISTINCT FROM nx.next_from"
    )
