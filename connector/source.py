"""The dlt source: companies, connections, customers and their attachments, per-company cursors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import dlt
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.sources import DltResource

from connector.attachments import DEFAULT_CONCURRENCY, AttachmentSync
from connector.client import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_ATTEMPTS,
    CodatApiError,
    CodatClient,
)
from connector.customers import CustomerSync, accounting_connection_ids
from connector.files import DEFAULT_FILES_URL, DEFAULT_MAX_FILE_SIZE, FileStore
from connector.paging import DEFAULT_PAGE_SIZE
from connector.records import parse_codat_datetime
from connector.status import RunLedger

Json = dict[str, Any]

CUSTOMER_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "id": {"data_type": "text", "nullable": False},
    "customer_name": {"data_type": "text"},
    "contact_name": {"data_type": "text"},
    "email_address": {"data_type": "text"},
    "default_currency": {"data_type": "text"},
    "phone": {"data_type": "text"},
    "registration_number": {"data_type": "text"},
    "tax_number": {"data_type": "text"},
    "status": {"data_type": "text"},
    "modified_date": {"data_type": "timestamp"},
    "source_modified_date": {"data_type": "timestamp"},
    "is_deleted": {"data_type": "bool", "nullable": False},
    "extracted_at": {"data_type": "timestamp", "dedup_sort": "desc"},
    "supplemental_data": {"data_type": "json"},
}
ATTACHMENT_KEY = ("company_id", "connection_id", "customer_id", "id")
ATTACHMENT_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "connection_id": {"data_type": "text", "nullable": False},
    "customer_id": {"data_type": "text", "nullable": False},
    "id": {"data_type": "text", "nullable": False},
    "name": {"data_type": "text"},
    "content_type": {"data_type": "text"},
    "date_created": {"data_type": "timestamp"},
    "file_size": {"data_type": "bigint"},
    "include_when_sent": {"data_type": "bool"},
}
FILE_COLUMNS: TTableSchemaColumns = {
    "file_path": {"data_type": "text"},
    "sha256": {"data_type": "text"},
    "file_status": {"data_type": "text"},
}


def map_company(company: Json) -> Json:
    """A company row: its connections go to their own table."""
    row = {k: v for k, v in company.items() if k != "dataConnections"}
    for name in ("lastSync", "created"):
        row[name] = parse_codat_datetime(row.get(name))
    return row


def map_connection(connection: Json, company_id: str) -> Json:
    """A connection row keyed by company and connection id."""
    row = {**connection, "companyId": company_id}
    for name in ("lastSync", "created"):
        row[name] = parse_codat_datetime(row.get(name))
    return row


@dlt.source(name="codat", section="codat", max_table_nesting=2)
def codat_source(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    company_ids: list[str] | None = None,
    company_query: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    attachments: bool = True,
    attachment_concurrency: int = DEFAULT_CONCURRENCY,
    request_budget: int | None = None,
    download_files: bool = False,
    files_url: str = DEFAULT_FILES_URL,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    hard_delete: bool = False,
    since: str | None = None,
    until: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    ledger: RunLedger | None = None,
) -> Sequence[DltResource]:
    """Codat Accounting customers of every company (or the chosen ones) of an account.

    Args:
        api_key: The Codat API key (a secret: `SOURCES__CODAT__API_KEY`).
        base_url: The API's address; the emulator's for local runs.
        company_ids: Only these companies; default every company of the account.
        company_query: A Codat `query` on companies (e.g. `name~Acme`), instead of ids.
        page_size: Customers per request, 1 to 5000.
        attachments: List each changed customer's attachment metadata.
        attachment_concurrency: Attachment requests in flight per company, 1 to 10.
        request_budget: Requests this run may spend; attachment listings beyond it wait
            in the state for the next run, which does them first.
        download_files: Also download attachment files to `files_url`.
        files_url: A local folder or an fsspec URL (`s3://bucket/prefix`, ...).
        max_file_size: Files larger than this many bytes are not downloaded.
        hard_delete: Remove deleted customers (`metadata.isDeleted`) instead of keeping them
            with `is_deleted = true`.
        since: Backfill: load customers modified at or after this instant (cursors untouched).
        until: Backfill: load customers modified before this instant (cursors untouched).
        max_attempts: Attempts per request on `429`, `5xx` and dropped connections.
        backoff_factor: Multiplier of the exponential backoff between attempts.
        ledger: Collects each company's outcome for `sync_status`; a fresh one by default.

    Returns:
        The resources `companies`, `connections`, `customers` and `customer_attachments`.
    """
    window = _window(since, until)
    if not 1 <= page_size <= 5000:
        raise ValueError(f"page_size must be between 1 and 5000 (Codat's limit); got {page_size}")
    client = CodatClient(api_key, base_url, max_attempts=max_attempts, backoff_factor=backoff_factor)
    run = ledger if ledger is not None else RunLedger()
    run.requests = client.requests

    @cache
    def account() -> list[Json]:
        if not company_ids:
            return list(client.list_companies(company_query))
        found = []
        for company_id in company_ids:
            try:
                found.append(client.get_company(company_id))
            except CodatApiError as exc:
                if exc.status not in (403, 404):
                    raise
                run.company(company_id).fail(exc)
        return found

    @cache
    def accounting_connections(company_id: str) -> list[str]:
        for company in account():
            if company["id"] == company_id:
                return accounting_connection_ids(company)
        return []

    @dlt.resource(
        primary_key="id",
        write_disposition="merge",
        columns={"reference_parent_company": {"data_type": "json"}, "tags": {"data_type": "json"}},
    )
    def companies() -> Iterator[list[Json]]:
        yield [map_company(c) for c in account()]

    @dlt.resource(
        primary_key=("company_id", "id"),
        write_disposition="merge",
        columns={"connection_info": {"data_type": "json"}},
    )
    def connections() -> Iterator[list[Json]]:
        for company in account():
            yield [map_connection(c, company["id"]) for c in company.get("dataConnections") or []]

    customer_columns = {**CUSTOMER_COLUMNS}
    if hard_delete:
        customer_columns["is_deleted"] = {**CUSTOMER_COLUMNS["is_deleted"], "hard_delete": True}

    @dlt.resource(primary_key=("company_id", "id"), write_disposition="merge", columns=customer_columns)
    def customers() -> Iterator[list[Json]]:
        state = dlt.current.source_state().setdefault("cursors", {})
        sync = CustomerSync(client, state, page_size, *window)
        for company in account():
            yield from sync.pages(company, run.company(company["id"], company.get("name")))

    attachment_columns = {**ATTACHMENT_COLUMNS, **(FILE_COLUMNS if download_files else {})}

    @cache
    def attachment_sync() -> AttachmentSync:
        state = dlt.current.source_state()
        files = None
        if download_files:
            files = FileStore(files_url, max_file_size, state.setdefault("files", {}))
        return AttachmentSync(
            client,
            run,
            accounting_connections,
            state.setdefault("attachment_backlog", {}),
            attachment_concurrency,
            request_budget,
            files,
        )

    @dlt.transformer(
        data_from=customers,
        primary_key=ATTACHMENT_KEY,
        write_disposition="merge",
        columns=attachment_columns,
    )
    def customer_attachments(rows: list[Json]) -> Iterator[list[Json]]:
        if rows:
            company_id = str(rows[0]["companyId"])
            customers = [(row.get("modifiedDate"), str(row["id"])) for row in rows]
            yield from attachment_sync().for_customers(company_id, customers)

    @dlt.resource(
        table_name="customer_attachments",
        primary_key=ATTACHMENT_KEY,
        write_disposition="merge",
        columns=attachment_columns,
    )
    def customer_attachments_backlog() -> Iterator[list[Json]]:
        yield from attachment_sync().backlog_pages()

    resources: list[DltResource] = [companies, connections, customers]
    if attachments:
        resources += [customer_attachments, customer_attachments_backlog]
    return resources


def _window(since: str | None, until: str | None) -> tuple[Any, Any]:
    bounds = []
    for name, value in (("since", since), ("until", until)):
        moment = parse_codat_datetime(value) if value else None
        if value and moment is None:
            raise ValueError(
                f"{name} must be a date such as 2024-01-31 or 2024-01-31T12:00:00Z; got {value!r}"
            )
        bounds.append(moment)
    return bounds[0], bounds[1]
