"""A listing is the truth for its customer: attachments it no longer returns are retired.

Every listing of a customer's attachments on a connection writes a row of
`customer_attachment_listings` with its instant (`listed_at`); each attachment it returned
carries the same instant. After the load, an attachment row whose customer has a later
listing on its connection was not returned by that listing: it is flagged `is_deleted` (or
removed with `hard_delete`). A listing that failed, was deferred or was cut short wrote no
row, so it retires nothing. The step compares instants already in the tables, so it is
idempotent: a run killed before it leaves it to the next.

SQL destinations only; on the filesystem destination the rows stay, and the listings table
says which are older than their customer's latest listing.
"""

from __future__ import annotations

from collections import Counter

from connector.records import LISTINGS_TABLE
from connector.warehouse import Tables, in_list

ATTACHMENTS = "customer_attachments"

# An attachment row older than its customer's latest listing on its connection, still live.
UNLISTED = """
{attachments}.is_deleted IS NOT TRUE {scope}
AND EXISTS (
    SELECT 1 FROM {listings} l
    WHERE l.company_id = {attachments}.company_id
      AND l.connection_id = {attachments}.connection_id
      AND l.customer_id = {attachments}.customer_id
      AND ({attachments}.listed_at IS NULL OR l.listed_at > {attachments}.listed_at)
)
"""


def _ready(tables: Tables) -> bool:
    return tables.holds_sql and tables.has(ATTACHMENTS) and tables.has_data(LISTINGS_TABLE)


def _scope(column: str, company_ids: list[str] | None) -> tuple[str, list[str]]:
    if company_ids is None:
        return "", []
    return f"AND {in_list(column, company_ids)}", list(company_ids)


def live_attachments(tables: Tables, company_ids: list[str] | None = None) -> Counter[str]:
    """Attachment rows not retired, per company (only these companies, if given)."""
    if not tables.holds_sql or not tables.has_data(ATTACHMENTS) or company_ids == []:
        return Counter()
    retired = "is_deleted IS NOT TRUE" if "is_deleted" in tables.columns(ATTACHMENTS) else "TRUE"
    scope, args = _scope("company_id", company_ids)
    sql = tables.sql
    table = sql.make_qualified_table_name(ATTACHMENTS)
    rows = sql.execute_sql(
        f"SELECT company_id, COUNT(*) FROM {table} WHERE {retired} {scope} GROUP BY company_id", *args
    )
    return Counter({str(company): int(count) for company, count in rows or []})


def retire_unlisted(
    tables: Tables, hard_delete: bool = False, company_ids: list[str] | None = None
) -> Counter[str]:
    """Flag (or remove) the attachments a later listing of their customer did not return.

    Args:
        tables: The destination's tables, after the load.
        hard_delete: Remove the rows instead of flagging them `is_deleted = true`.
        company_ids: Only these companies' rows: a shard passes its own, as another shard may be
            loading its listings meanwhile.

    Returns:
        The rows retired, per company.
    """
    if (
        not _ready(tables)
        or company_ids == []
        or not {"listed_at", "is_deleted"} <= tables.columns(ATTACHMENTS)
    ):
        return Counter()
    sql = tables.sql
    attachments = sql.make_qualified_table_name(ATTACHMENTS)
    scope, args = _scope(f"{attachments}.company_id", company_ids)
    where = UNLISTED.format(
        attachments=attachments, listings=sql.make_qualified_table_name(LISTINGS_TABLE), scope=scope
    )
    with sql.begin_transaction():
        rows = sql.execute_sql(
            f"SELECT company_id, COUNT(*) FROM {attachments} WHERE {where} GROUP BY company_id", *args
        )
        found = Counter({str(company): int(count) for company, count in rows or []})
        if found:
            change = (
                f"DELETE FROM {attachments}" if hard_delete else f"UPDATE {attachments} SET is_deleted = TRUE"
            )
            sql.execute_sql(f"{change} WHERE {where}", *args)
    return found


def record_changes(tables: Tables, load_id: str, added: Counter[str], removed: Counter[str]) -> None:
    """Write each company's added and removed attachments into this run's `sync_status` rows."""
    if not tables.holds_sql or not {"attachments_added", "attachments_removed"} <= tables.columns(
        "sync_status"
    ):
        return
    companies = sorted(set(added) | set(removed))
    sql = tables.sql
    table = sql.make_qualified_table_name("sync_status")
    with sql.begin_transaction():
        sql.execute_sql(
            f"UPDATE {table} SET attachments_added = 0, attachments_removed = 0 "
            "WHERE load_id = %s AND attachment_listings > 0",
            load_id,
        )
        for company_id in companies:
            sql.execute_sql(
                f"UPDATE {table} SET attachments_added = %s, attachments_removed = %s "
                "WHERE load_id = %s AND company_id = %s",
                added[company_id],
                removed[company_id],
                load_id,
                company_id,
            )


def added_attachments(before: Counter[str], loaded: Counter[str]) -> Counter[str]:
    """Attachments added per company: live once loaded (before any is retired), less live before.

    A load only adds rows or revives retired ones (a listing returned them again), so the
    difference is what it added.
    """
    return +Counter({company_id: loaded[company_id] - before[company_id] for company_id in loaded})
