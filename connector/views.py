"""SQL run beside the raw tables after each load: child rows of replaced customers go, views come."""

from __future__ import annotations

from typing import Any

from dlt.common.destination.exceptions import SqlClientNotAvailable
from dlt.destinations.sql_client import SqlClientBase

from connector.batches import CHILD_TABLES, CUSTOMER_COLUMNS, child_columns
from connector.history import keeps_history
from connector.records import ATTACHMENT_COLUMNS
from connector.warehouse import Tables, collapse_twice_loaded, in_list

CURRENT_CUSTOMERS = """
SELECT {customer_columns},
       {address_columns},
       {contact_columns}
FROM {customers} c
LEFT JOIN (
    SELECT a.*, ROW_NUMBER() OVER (PARTITION BY a._dlt_parent_id ORDER BY a._dlt_list_idx) AS n
    FROM {addresses} a WHERE a.type = 'Billing'
) a ON a._dlt_parent_id = c._dlt_id AND a.n = 1
LEFT JOIN (
    SELECT k.*, ROW_NUMBER() OVER (
        PARTITION BY k._dlt_parent_id
        ORDER BY CASE WHEN k.status = 'Active' THEN 0 ELSE 1 END, k._dlt_list_idx
    ) AS n
    FROM {contacts} k
) k ON k._dlt_parent_id = c._dlt_id AND k.n = 1
WHERE NOT c.is_deleted{current}
"""

# Attachments Codat still lists, of customers not deleted: a deleted customer takes its
# attachments with it, and one not loaded (yet) shows none.
ATTACHMENTS_WITH_CUSTOMERS = """
SELECT {attachment_columns}, c.customer_name
FROM {attachments} t
JOIN {customers} c ON c.company_id = t.company_id AND c.id = t.customer_id
WHERE {live} AND c.is_deleted IS NOT TRUE{current}
"""

# With history: every version of every customer, and when each was the current one.
CUSTOMERS_HISTORY = """
SELECT {customer_columns}, c.is_deleted, c.valid_from, c.valid_to, c._dlt_id AS version_id
FROM {customers} c
WHERE c.valid_from IS NOT NULL
"""
# "As of T": the customers as the warehouse held them at T (a deletion: the customer is gone).
AS_OF = "valid_from <= t AND (valid_to IS NULL OR valid_to > t) AND NOT is_deleted"
AS_OF_FUNCTIONS = {
    "duckdb": (
        "DROP MACRO TABLE IF EXISTS {function}",
        "CREATE MACRO {function}(t) AS TABLE SELECT * FROM {view} WHERE " + AS_OF,
    ),
    "postgres": (
        "DROP FUNCTION IF EXISTS {function}(timestamptz)",
        "CREATE FUNCTION {function}(t timestamptz) RETURNS SETOF {view} LANGUAGE sql STABLE "
        "AS $$ SELECT * FROM {view} WHERE " + AS_OF + " $$",
    ),
}

# The views' columns, from the tables' own: Codat's customer fields (not the deletion flag the
# view filters on, the read instant or the JSON columns), the billing address, the main contact.
CUSTOMER_FIELDS = tuple(
    name
    for name, column in CUSTOMER_COLUMNS.items()
    if not name.startswith("_dlt")
    and name not in ("is_deleted", "extracted_at")
    and column.get("data_type") != "json"
)
# The history view's: every field Codat sent, the JSON ones too.
HISTORY_FIELDS = tuple(
    name
    for name in CUSTOMER_COLUMNS
    if not name.startswith("_dlt") and name not in ("is_deleted", "extracted_at")
)
ADDRESS_FIELDS = tuple(
    name
    for name in child_columns("customers__addresses")
    if not name.startswith("_dlt") and name not in ("type", "company_id")
)
CONTACT_FIELDS = ("name", "email")
ATTACHMENT_FIELDS = tuple(name for name in ATTACHMENT_COLUMNS if name != "is_deleted")


def prune_child_rows(tables: Tables, repair: bool = False, company_ids: list[str] | None = None) -> None:
    """Delete the child rows of customer versions that were replaced or hard-deleted.

    The child tables are appended (dlt merges nested tables only when its own normaliser wrote
    them, and the connector writes them as Arrow), so each load leaves the rows of the customer
    versions it replaced behind. They join to no customer (`_dlt_root_id` names a `_dlt_id` that
    is gone); this removes them. Idempotent: what a killed run leaves, the next run removes.
    SQL destinations only: the filesystem destination keeps every version anyway.

    Args:
        tables: The destination's tables, after the load.
        repair: Also collapse rows loaded twice. A run killed after the destination committed a
            load job but before dlt marked it done has that job loaded again when the package is
            finished; the child tables, appended, then hold its rows twice (same `_dlt_id`).
        company_ids: Only these companies' rows (and rows from before child rows named their
            company). A shard passes its own: another shard loading the same tables appends its
            child rows before it merges their customers, and until then they join to nothing.
    """
    if not tables.holds_sql or not tables.has("customers") or company_ids == []:
        return
    children = [t for t in CHILD_TABLES if tables.has_data(t)]
    if not children:
        return
    sql = tables.sql
    customers = sql.make_qualified_table_name("customers")
    for table in children:
        child = sql.make_qualified_table_name(table)
        scope = ""
        if company_ids is not None:
            scope = f"(company_id IS NULL OR {in_list('company_id', company_ids)}) AND "
        sql.execute_sql(
            f"DELETE FROM {child} WHERE {scope}NOT EXISTS "
            f"(SELECT 1 FROM {customers} c WHERE c._dlt_id = {child}._dlt_root_id)",
            *(company_ids or []),
        )
        if repair:
            collapse_twice_loaded(sql, child, sql.make_qualified_table_name(f"_codat_repair_{table}"))


def create_views(tables: Tables) -> list[str]:
    """(Re)create the views: `customers_current`, `customer_attachments_with_customers`, history's.

    With history (`connector.history`), also `customers_history` and its `customers_as_of`.
    Only on SQL destinations (DuckDB, Postgres, ...) and only once the tables exist; a
    column Codat never sent yet is selected as NULL. With history, the current version of each
    customer is the one without `valid_to`. Returns the views (and function) created.
    """
    if not tables.has("customers") or not tables.holds_sql:
        return []
    try:
        sql = tables.sql
    except SqlClientNotAvailable:  # a destination without SQL has no views
        return []

    def columns(alias: str, table: str, fields: tuple[str, ...], prefix: str = "") -> str:
        present = tables.columns(table)
        return ", ".join(
            f"{alias}.{f} AS {prefix}{f}" if f in present else f"NULL AS {prefix}{f}" for f in fields
        )

    created = []
    q = sql.make_qualified_table_name
    history = keeps_history(tables)
    current = " AND c.valid_to IS NULL" if history else ""
    if tables.has("customers__contacts") and "type" in tables.columns("customers__addresses"):
        body = CURRENT_CUSTOMERS.format(
            customer_columns=columns("c", "customers", CUSTOMER_FIELDS),
            address_columns=columns("a", "customers__addresses", ADDRESS_FIELDS, "billing_"),
            contact_columns=columns("k", "customers__contacts", CONTACT_FIELDS, "main_contact_"),
            customers=q("customers"),
            addresses=q("customers__addresses"),
            contacts=q("customers__contacts"),
            current=current,
        )
        created.append(_replace_view(sql, q("customers_current"), body, "customers_current"))
    if tables.has("customer_attachments"):
        retired = "is_deleted" in tables.columns("customer_attachments")
        body = ATTACHMENTS_WITH_CUSTOMERS.format(
            attachment_columns=columns("t", "customer_attachments", ATTACHMENT_FIELDS),
            attachments=q("customer_attachments"),
            customers=q("customers"),
            live="t.is_deleted IS NOT TRUE" if retired else "TRUE",
            current=current,
        )
        name = "customer_attachments_with_customers"
        created.append(_replace_view(sql, q(name), body, name))
    if history:
        body = CUSTOMERS_HISTORY.format(
            customer_columns=columns("c", "customers", HISTORY_FIELDS), customers=q("customers")
        )
        function = AS_OF_FUNCTIONS.get(sql.capabilities.sqlglot_dialect or "")
        created.append(_replace_view(sql, q("customers_history"), body, "customers_history", function))
        if function is not None:
            created.append("customers_as_of")
    return created


def _replace_view(
    sql: SqlClientBase[Any], qualified: str, body: str, name: str, function: tuple[str, str] | None = None
) -> str:
    """(Re)create a view, and the function over it (dropped first: PostgreSQL's depends on the view)."""
    # One transaction: a shard replacing the view while another does waits for it instead of
    # failing to create what the other just created (`connector.shards`).
    names = {"function": sql.make_qualified_table_name("customers_as_of"), "view": qualified}
    with sql.begin_transaction():
        if function is not None:
            sql.execute_sql(function[0].format(**names))
        sql.execute_sql(f"DROP VIEW IF EXISTS {qualified}")
        sql.execute_sql(f"CREATE VIEW {qualified} AS {body}")
        if function is not None:
            sql.execute_sql(function[1].format(**names))
    return name
