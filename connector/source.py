"""The dlt source: companies, connections, customers and their attachments, per-company cursors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.sources import DltResource

from connector.attachments import AttachmentSync, DeferredListing
from connector.batches import CHILD_TABLES, CUSTOMER_COLUMNS, PageBatch, child_columns
from connector.client import CodatClient
from connector.customers import CustomerSync, accounting_connection_ids
from connector.defaults import PAGES_HELD_AT_ONCE
from connector.errors import CodatApiError, InvalidOption
from connector.files import FileStore
from connector.history import HISTORY_COLUMNS
from connector.placement import shard_of
from connector.progress import Progress
from connector.readers import CompanyReaders
from connector.records import (
    ATTACHMENT_COLUMNS,
    ATTACHMENT_KEY,
    FILE_COLUMNS,
    LISTING_COLUMNS,
    LISTING_KEY,
    LISTINGS_TABLE,
    Json,
    parse_codat_datetime,
)
from connector.settings import CodatSettings
from connector.status import RunReport


class _ExpectedDltWarnings(logging.Filter):
    """Hides a dlt warning about what the connector does on purpose, while its customers are extracted.

    Arrow's text differs from the `json` hint of the JSON columns: the customers table carries
    `supplemental_data` and `unmapped_fields` as JSON text in Arrow and hints them `json`; the
    destination casts, as intended. dlt would warn on every batch. Other pipelines of the
    process, and this one outside its customers, keep every warning.
    """

    EXPECTED = ("In resource: customers, when merging arrow schema with dlt schema",)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


@contextlib.contextmanager
def dlt_logger_filtered(log_filter: logging.Filter) -> Iterator[None]:
    """`log_filter` on dlt's logger for the block only: other pipelines of the process keep every record."""
    dlt_logger = logging.getLogger("dlt")
    dlt_logger.addFilter(log_filter)
    try:
        yield
    finally:
        dlt_logger.removeFilter(log_filter)


def expected_dlt_warnings_hidden() -> contextlib.AbstractContextManager[None]:
    """Hide `_ExpectedDltWarnings` on dlt's logger for the block."""
    return dlt_logger_filtered(_ExpectedDltWarnings())


# The resources that list attachments: changed customers, what earlier runs left, the refresh.
LISTERS = ("customer_attachments", "customer_attachments_backlog", "customer_attachments_refresh")

# Declared, not inferred: a company that never synced has no `lastSync`, and its shard would
# otherwise leave the column to whichever shard meets one first (`connector.shards`).
COMPANY_DATES: TTableSchemaColumns = {name: {"data_type": "timestamp"} for name in ("last_sync", "created")}


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


@dlt.source(name="codat", section="codat", max_table_nesting=2, spec=CodatSettings)
def codat_source(
    api_key: str = dlt.secrets.value,
    base_url: str = CodatSettings.base_url,
    company_ids: list[str] | None = CodatSettings.company_ids,
    company_query: str | None = CodatSettings.company_query,
    page_size: int = CodatSettings.page_size,
    attachments: bool = CodatSettings.attachments,
    attachment_concurrency: int = CodatSettings.attachment_concurrency,
    company_concurrency: int = CodatSettings.company_concurrency,
    request_budget: int | None = CodatSettings.request_budget,
    requests_per_minute: int | None = CodatSettings.requests_per_minute,
    rate_window: float = CodatSettings.rate_window,
    rate_burst: int | None = CodatSettings.rate_burst,
    max_retry_wait: float = CodatSettings.max_retry_wait,
    quota_reserve: int = CodatSettings.quota_reserve,
    download_files: bool = CodatSettings.download_files,
    files_url: str = CodatSettings.files_url,
    max_file_size: int = CodatSettings.max_file_size,
    hard_delete: bool = CodatSettings.hard_delete,
    history: bool = CodatSettings.history,
    attachment_refresh_days: float = CodatSettings.attachment_refresh_days,
    refresh_attachments: bool = CodatSettings.refresh_attachments,
    since: str | None = CodatSettings.since,
    until: str | None = CodatSettings.until,
    max_attempts: int = CodatSettings.max_attempts,
    backoff_factor: float = CodatSettings.backoff_factor,
    connect_timeout: float = CodatSettings.connect_timeout,
    read_timeout: float = CodatSettings.read_timeout,
    breaker_failures: int = CodatSettings.breaker_failures,
    breaker_seconds: float = CodatSettings.breaker_seconds,
    breaker_silence: float = CodatSettings.breaker_silence,
    shards: int = CodatSettings.shards,
    shard: int = CodatSettings.shard,
    webhook_secret: str | None = CodatSettings.webhook_secret,
    settings: CodatSettings = None,  # type: ignore[assignment]  # dlt passes the resolved spec
    report: RunReport | None = None,
) -> Sequence[DltResource]:
    """Codat Accounting customers of every company (or the chosen ones) of an account.

    Args:
        api_key: The Codat API key (a secret: `SOURCES__CODAT__API_KEY`).
        base_url: The API's address; the emulator's for local runs.
        company_ids: Only these companies; default every company of the account.
        company_query: A Codat `query` on companies (e.g. `name~Acme`), instead of ids.
        page_size: Customers per request, 1 to 5000.
        attachments: List customers' attachment metadata: the changed ones, and the refresh's share.
        attachment_concurrency: Requests in flight per company (attachment listings and
            customer pages together), 1 to 10 (Codat's limit).
        company_concurrency: Companies whose customer pages are read at once (each company's
            in order), so that one company's wait for Codat's answer is spent reading others;
            1 reads them one after another.
        request_budget: Requests this run may spend; attachment listings beyond it wait
            in the state for the next run, which does them first.
        requests_per_minute: Requests the client sends in any `rate_window` seconds, every
            company together (Codat's limit is 1,000 a minute per IP); None: unpaced.
        rate_window: The length in seconds of the window `requests_per_minute` counts over.
        rate_burst: Requests the client's token bucket lets go at once (a short run's customer
            pages); the long-run rate is the rest of the limit. None: a tenth of the limit.
        max_retry_wait: The longest wait before a retry; a `429` asking for longer (a spent
            daily quota) is final at once, and attachment listings stop for this run.
        quota_reserve: Attachment listings stop when Codat's daily quota has this many
            requests left (`X-Rate-Limit-Remaining`), leaving them to customer pages.
        download_files: Also download attachment files to `files_url`.
        files_url: A local folder or an fsspec URL (`s3://bucket/prefix`, ...).
        max_file_size: Files larger than this many bytes are not downloaded.
        hard_delete: Remove deleted customers (`metadata.isDeleted`), and attachments a later
            listing no longer returns, instead of keeping them with `is_deleted = true`.
        history: Keep every version of a customer, each with `valid_from` and `valid_to`
            (`connector.history`), instead of the latest alone. SQL destinations only.
        attachment_refresh_days: List every customer's attachments again at least once in this
            many days (the rolling refresh: Codat stamps no date when an attachment is added
            or removed); each run takes its share, after the changed customers. 0: off.
        refresh_attachments: List every customer's attachments again now (a new refresh cycle of
            every company); what the run cannot afford, the next runs go on with.
        since: Backfill: load customers modified at or after this instant (cursors untouched).
        until: Backfill: load customers modified before this instant (cursors untouched).
        max_attempts: Attempts per request on `429`, `5xx` and dropped connections.
        backoff_factor: Multiplier of the exponential backoff between attempts.
        connect_timeout: Seconds an attempt waits for its connection to the API.
        read_timeout: Seconds an attempt waits for its answer (the first byte, or the next:
            a large body that keeps coming is not cut); sized for a page of 5,000 customers.
        breaker_failures: Attempts in a row without an answer (or with a `5xx`) after which
            the run sends no more requests: the API is unreachable, the rest waits.
        breaker_seconds: ... once those failures have gone on for this many seconds.
        breaker_silence: Seconds without any answer from the API after which a failed attempt
            stops the run too (a silent API); more than `read_timeout`, so that one slow
            answer is retried.
        shards: Split the account's companies into this many shards (`connector.shards`);
            1: no split.
        shard: Sync only the companies of this shard, 0 to `shards` - 1.
        webhook_secret: The `whsec_...` secret `codat-webhooks` checks deliveries with (a secret,
            `SOURCES__CODAT__WEBHOOK_SECRET`); the source itself does not use it.
        settings: All of the above at once, resolved and checked already (`resolve_settings`):
            what `run_sync` passes, so the run and its source read the one configuration.
        report: Collects each company's outcome for `sync_status`, and holds the switch that
            stops the run's requests; a fresh one by default.

    Returns:
        The resources `companies`, `connections`, `customers` and the three that list attachments
        (`customer_attachments` of changed customers, `customer_attachments_backlog` of what earlier
        runs left, `customer_attachments_refresh`), which write `customer_attachments` and
        `customer_attachment_listings`.

    Raises:
        InvalidOption: A setting is out of range; the message names it. No request is sent.
    """
    window = settings.window()  # dlt resolved and checked every setting (`CodatSettings`)
    run_report = report if report is not None else RunReport()
    client = CodatClient(
        api_key,
        base_url,
        retry=settings.retry(),
        limits=settings.limits(),
        breaker=settings.breaker(),
        stop=run_report.stop,  # the caller's (the command line trips it on a signal)
    )
    run_report.requests = client.requests

    def in_shard(company_id: str) -> bool:
        return shards == 1 or shard_of(company_id, shards) == shard

    @cache
    def account() -> list[Json]:
        if not company_ids:
            listed = list(client.list_companies(company_query))
            if company_query and not listed:
                raise InvalidOption(
                    f"company_query {company_query!r} matches no company of the account; "
                    "check it against Codat's query language (e.g. 'name~Acme')"
                )
            return [c for c in listed if in_shard(str(c["id"]))]
        found = []
        for company_id in filter(in_shard, company_ids):
            try:
                found.append(client.get_company(company_id))
            except CodatApiError as exc:
                if exc.status not in (403, 404):
                    raise
                run_report.company(company_id).fail(exc)
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
        columns={
            "reference_parent_company": {"data_type": "json"},
            "tags": {"data_type": "json"},
            **COMPANY_DATES,
        },
    )
    def companies() -> Iterator[list[Json]]:
        yield [map_company(c) for c in account()]

    @dlt.resource(
        primary_key=("company_id", "id"),
        write_disposition="merge",
        columns={"connection_info": {"data_type": "json"}, **COMPANY_DATES},
    )
    def connections() -> Iterator[list[Json]]:
        for company in account():
            yield [map_connection(c, company["id"]) for c in company.get("dataConnections") or []]

    customer_columns = {**CUSTOMER_COLUMNS}
    if hard_delete:
        customer_columns["is_deleted"] = {**CUSTOMER_COLUMNS["is_deleted"], "hard_delete": True}
    if history:  # every version appended, and settled after the load (`connector.history`)
        customer_columns.update(HISTORY_COLUMNS)
        # which of a load's rows of a customer wins is the settling's, not a merge's
        customer_columns["extracted_at"] = {"data_type": "timestamp", "nullable": True}

    @dlt.resource
    def customers() -> Iterator[Any]:
        state = dlt.current.source_state().setdefault("cursors", {})
        if attachments:
            attachment_sync().customers_started(state)
        load_id = dlt.current.load_package_state()["load_id"]
        # Readers move their company's cursor here; it goes into the state once the company's
        # pages are all taken, so the state never runs ahead of the pages the extract wrote.
        moved: dict[str, Any] = dict(state)
        sync = CustomerSync(client, moved, page_size, load_id, *window)
        progress = Progress()
        client.requests.listeners.append(progress.requests)
        companies = account()
        progress.companies(len(companies))
        outcomes = {c["id"]: run_report.company(c["id"], c.get("name")) for c in companies}  # in order
        readers = CompanyReaders(
            companies,
            lambda company: sync.pages(company, outcomes[company["id"]]),
            readers=company_concurrency,
            buffered=PAGES_HELD_AT_ONCE,
        )
        batch = PageBatch(page_size)
        with expected_dlt_warnings_hidden():  # dlt writes each item while this generator waits
            for company, page in readers:
                if page is None:
                    if company["id"] in moved:
                        state[company["id"]] = moved[company["id"]]
                    progress.company_done()
                else:
                    progress.customers(page.customers.num_rows)
                    yield from _items(batch.add(page))
            yield from _items(batch.take())
        if attachments:
            attachment_sync().customers_read()

    # Variants start from the resource's hints: declare them before the customers table's own.
    for table in CHILD_TABLES:
        customers.apply_hints(
            table_name=table,
            write_disposition="append",
            columns=child_columns(table),
            create_table_variant=True,
        )
    customers.apply_hints(
        primary_key=("company_id", "id"),
        write_disposition="append" if history else "merge",
        columns=customer_columns,
    )

    attachment_columns = {**ATTACHMENT_COLUMNS, **(FILE_COLUMNS if download_files else {})}

    @cache
    def attachment_sync() -> AttachmentSync:
        state = dlt.current.source_state()
        files = None
        if download_files:
            files = FileStore(files_url, max_file_size, state.setdefault("files", {}))
        return AttachmentSync(
            client,
            run_report,
            accounting_connections,
            state,
            page_size=page_size,
            concurrency=attachment_concurrency,
            budget=request_budget,
            quota_reserve=quota_reserve,
            files=files,
            refresh_days=attachment_refresh_days,
            refresh_all=refresh_attachments,
        )

    @dlt.transformer(data_from=customers)
    def customer_attachments(batch: Any) -> Iterator[DeferredListing]:
        # The customers resource also yields its child tables: only the customers table (the
        # one that links to no parent) names customers, of one company or more.
        if isinstance(batch, pa.Table) and "_dlt_parent_id" not in batch.column_names:
            for company_id, customers in _by_company(batch):
                yield from attachment_sync().for_customers(company_id, customers)

    @dlt.resource(table_name="customer_attachments")
    def customer_attachments_backlog() -> Iterator[DeferredListing]:
        yield from attachment_sync().backlog_pages()

    @dlt.resource(table_name="customer_attachments")
    def customer_attachments_refresh() -> Iterator[DeferredListing | None]:
        yield from attachment_sync().refresh_pages()

    listers = [customer_attachments, customer_attachments_backlog, customer_attachments_refresh]
    for lister in listers:  # each also writes its listings (`connector.listings`): that variant first
        lister.apply_hints(
            table_name=LISTINGS_TABLE,
            primary_key=LISTING_KEY,
            write_disposition="merge",
            columns=LISTING_COLUMNS,
            create_table_variant=True,
        )
        lister.apply_hints(
            table_name="customer_attachments",
            primary_key=ATTACHMENT_KEY,
            write_disposition="merge",
            columns=attachment_columns,
        )
    resources: list[DltResource] = [companies, connections, customers]
    if attachments:
        resources += listers
    return resources


def _items(tables: list[tuple[str, pa.Table]]) -> Iterator[Any]:
    """A batch of customer pages as dlt items: the customers table, then each child table by name."""
    for name, table in tables:
        yield table if name == "customers" else dlt.mark.with_table_name(table, name)


def _by_company(customers: pa.Table) -> Iterator[tuple[str, list[tuple[Any, str]]]]:
    """The (modifiedDate, id) of a batch's customers, company by company, in their order."""
    companies = customers.column("company_id").to_pylist()
    pairs = zip(
        customers.column("modified_date").to_pylist(), customers.column("id").to_pylist(), strict=True
    )
    grouped: dict[str, list[tuple[Any, str]]] = {}
    for company_id, pair in zip(companies, pairs, strict=True):
        grouped.setdefault(company_id, []).append(pair)
    yield from grouped.items()
