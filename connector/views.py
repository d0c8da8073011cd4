"""SQL run beside the raw tables after each load: child rows of replaced customers go, views come."""

from __future__ import annotations

from typing import Any

from dlt.common.destination.exceptions import SqlClientNotAvailable
from dlt.destinations.sql_client import SqlClientBase

from connector.batches import CHILD_TABLES, CUSTOMER_COLUMNS, child_columns
from connector.records import ATTACHMENT_COLUMNS
from connector.warehouse import Tables, in_list

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
WHERE NOT c.is_deleted
"""

# Attachments Codat still lists, of customers not deleted: a deleted customer takes its
# attachments with it, and one not loaded (yet) shows none.
ATTACHMENTS_WITH_CUSTOMERS = """
SELECT {attachment_columns}, c.customer_name
FROM {attachments} t
JOIN {customers} c ON c.company_id = t.company_id AND c.id = t.customer_id
WHERE {live} AND c.is_deleted IS NOT TRUE
"""

# The views' columns, from the tables' own: Codat's customer fields (not the deletion flag the
# view filters on, the read instant or the JSON columns), the billing address, the main contact.
CUSTOMER_FIELDS = tuple(
    name
    for name, column in CUSTOMER_COLUMNS.items()
    if not name.startswith("_dlt")
    and name not in ("is_deleted", "extracted_at")
    and column.get("data_type") != "json"
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
            _collapse_twice_loaded(sql, child, sql.make_qualified_table_name(f"_codat_repair_{table}"))


def _collapse_twice_loaded(sql: SqlClientBase[Any], child: str, scratch: str) -> None:
    """Keep one of each set of identical rows sharing a `_dlt_id` (rare: only after a kill)."""
    twice = f"SELECT _dlt_id FROM {child} GROUP BY _dlt_id HAVING COUNT(*) > 1"
    found = sql.execute_sql(f"SELECT COUNT(*) FROM ({twice}) d")
    if not found or not found[0][0]:
        return
    with sql.begin_transaction():
        sql.execute_sql(f"DROP TABLE IF EXISTS {scratch}")
        sql.execute_sql(
            f"CREATE TABLE {scratch} AS SELECT DISTINCT * FROM {child} WHERE _dlt_id IN ({twice})"
        )
        sql.execute_sql(f"DELETE FROM {child} WHERE _dlt_id IN (SELECT _dlt_id FROM {scratch})")
        sql.execute_sql(f"INSERT INTO {child} SELECT * FROM {scratch}")
        sql.execute_sql(f"DROP TABLE {scratch}")


def create_views(tables: Tables) -> list[str]:
    """(Re)create `customers_current` and `customer_attachments_with_customers`.

    Only on SQL destinations (DuckDB, Postgres, ...) and only once the tables exist; a
    column Codat never sent yet is selected as NULL. Returns the views created.
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
    if tables.has("customers__contacts") and "type" in tables.columns("customers__addresses"):
        body = CURRENT_CUSTOMERS.format(
            customer_columns=columns("c", "customers", CUSTOMER_FIELDS),
            address_columns=columns("a", "customers__addresses", ADDRESS_FIELDS, "billing_"),
            contact_columns=columns("k", "customers__contacts", CONTACT_FIELDS, "main_contact_"),
            customers=q("customers"),
            addresses=q("customers__addresses"),
            contacts=q("customers__contacts"),
        )
        created.append(_replace_view(sql, q("customers_current"), body, "customers_current"))
    if tables.has("customer_attachments"):
        retired = "is_deleted" in tables.columns("customer_attachments")
        body = ATTACHMENTS_WITH_CUSTOMERS.format(
            attachment_columns=columns("t", "customer_attachments", ATTACHMENT_FIELDS),
            attachments=q("customer_attachments"),
            customers=q("customers"),
            live="t.is_deleted IS NOT TRUE" if retired else "TRUE",
        )
        name = "customer_attachments_with_customers"
        created.append(_replace_view(sql, q(name), body, name))
    return created


def _replace_view(sql: SqlClientBase[Any], qualified: str, body: str, name: str) -> str:
    # One transaction: a shard replacing the view while another does waits for it instead of
    # failing to create what the other just created (`connector.shards`).
    with sql.begin_transaction():
        sql.execute_sql(f"DROP VIEW IF EXISTS {qualified}")
        sql.execute_sql(f"CREATE VIEW {qualified} AS {body}")
    return name
