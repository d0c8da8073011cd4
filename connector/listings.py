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

from dlt import Pipeline
from dlt.common.schema.utils import has_table_seen_data

from connector.records import LISTINGS_TABLE
from connector.warehouse import has_table, holds_sql, in_list

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


def _ready(pipeline: Pipeline) -> bool:
    if not holds_sql(pipeline) or not has_table(pipeline, ATTACHMENTS):
        return False
    tables = pipeline.default_schema.tables
    return LISTINGS_TABLE in tables and has_table_seen_data(tables[LISTINGS_TABLE])


def _scope(column: str, company_ids: list[str] | None) -> tuple[str, list[str]]:
    if company_ids is None:
        return "", []
    return f"AND {in_list(column, company_ids)}", list(company_ids)


def live_attachments(pipeline: Pipeline, company_ids: list[str] | None = None) -> Counter[str]:
    """Attachment rows not retired, per company (only these companies, if given)."""
    if not holds_sql(pipeline) or not has_table(pipeline, ATTACHMENTS) or company_ids == []:
        return Counter()
    if not has_table_seen_data(pipeline.default_schema.tables[ATTACHMENTS]):
        return Counter()
    retired = "is_deleted IS NOT TRUE" if "is_deleted" in _columns(pipeline) else "TRUE"
    scope, args = _scope("company_id", company_ids)
    with pipeline.sql_client() as sql:
        table = sql.make_qualified_table_name(ATTACHMENTS)
        rows = sql.execute_sql(
            f"SELECT company_id, COUNT(*) FROM {table} WHERE {retired} {scope} GROUP BY company_id", *args
        )
    return Counter({str(company): int(count) for company, count in rows or []})


def retire_unlisted(
    pipeline: Pipeline, hard_delete: bool = False, company_ids: list[str] | None = None
) -> Counter[str]:
    """Flag (or remove) the attachments a later listing of their customer did not return.

    Args:
        pipeline: The pipeline whose destination holds the tables.
        hard_delete: Remove the rows instead of flagging them `is_deleted = true`.
        company_ids: Only these companies' rows: a shard passes its own, as another shard may be
            loading its listings meanwhile.

    Returns:
        The rows retired, per company.
    """
    if not _ready(pipeline) or company_ids == [] or not {"listed_at", "is_deleted"} <= _columns(pipeline):
        return Counter()
    with pipeline.sql_client() as sql:
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
                    f"DELETE FROM {attachments}"
                    if hard_delete
                    else f"UPDATE {attachments} SET is_deleted = TRUE"
                )
                sql.execute_sql(f"{change} WHERE {where}", *args)
    return found


def record_changes(pipeline: Pipeline, load_id: str, added: Counter[str], removed: Counter[str]) -> None:
    """Write each company's added and removed attachments into this run's `sync_status` rows."""
    if not holds_sql(pipeline) or not has_table(pipeline, "sync_status"):
        return
    columns = set(pipeline.default_schema.get_table_columns("sync_status"))
    if not {"attachments_added", "attachments_removed"} <= columns:
        return
    companies = sorted(set(added) | set(removed))
    with pipeline.sql_client() as sql:
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


def _columns(pipeline: Pipeline) -> set[str]:
    return set(pipeline.default_schema.get_table_columns(ATTACHMENTS))


def added_attachments(before: Counter[str], loaded: Counter[str]) -> Counter[str]:
    """Attachments added per company: live once loaded (before any is retired), less live before.

    A load only adds rows or revives retired ones (a listing returned them again), so the
    difference is what it added.
    """
    return +Counter({company_id: loaded[company_id] - before[company_id] for company_id in loaded})
