"""One sync run: load the source, record `sync_status`, refresh the views, sum it all up."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
from dlt.common.destination import TLoaderFileFormat
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.sources import DltSource

from connector.batches import CHILD_TABLES
from connector.destinations import (
    check_duckdb_file,
    describe_destination,
    duckdb_file_credentials,
    one_duckdb_connection,
)
from connector.disk import describe_full_disk, full_disk_path
from connector.errors import InvalidOption, RunStopped
from connector.exits import EXIT_COMPANY_FAILED, EXIT_OK, EXIT_QUOTA_SPENT, stop_exit_code
from connector.history import VALID_TO, keeps_history, settle_history, switch_history
from connector.listings import added_attachments, live_attachments, record_changes, retire_unlisted
from connector.lock import destination_lock, lock_path, pipeline_lock
from connector.memory import keep_memory_flat, release_free_memory
from connector.pacing import DISK_FULL, StopSwitch
from connector.packages import finish_kill_leftovers
from connector.records import LISTINGS_TABLE
from connector.settings import CodatSettings, resolve_settings
from connector.source import LISTERS, codat_source
from connector.status import FAILED, NOT_READY, OK, STATUS_COLUMNS, STATUS_KEY, STATUSES, RunReport
from connector.views import create_views, prune_child_rows
from connector.warehouse import Tables, destination_tables, holds_sql, in_list, read_table

logger = logging.getLogger(__name__)

# Destinations whose CSV load (dlt's default for Arrow there) turns "" into NULL.
COPY_NULLS_EMPTY = frozenset({"postgres"})


# Exit codes of a run, one per way it can end (the README's "Operations" lists what to do).
@dataclass
class SyncSummary:
    """What a run did, for the command line's closing lines and exit code."""

    companies: int
    failed: list[str]
    customers_new: int
    customers_updated: int
    customers_deleted: int  # deleted in Codat since the last run
    attachments: int  # found by this run's listings
    files: int
    requests: int
    seconds: float
    load_id: str | None
    customers_already_deleted: int = 0  # first loaded already deleted
    customers_not_loaded: int = 0  # read, but the run stopped before loading them (a full disk)
    kept_for_next_run: bool = False  # ... and extracted them: the next run loads them first
    attachment_listings: int = 0  # listings made, one per customer and accounting connection
    attachments_added: int = 0  # new in the destination (SQL destinations)
    attachments_removed: int = 0  # retired: their customer's latest listing no longer returned them
    attachments_refreshed: int = 0  # unchanged customers listed again by the rolling refresh
    refresh_behind: int = 0  # customers due for the refresh by now and not listed yet
    views: list[str] = field(default_factory=list)
    status_rows: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds of extract, normalize, load
    attachments_deferred: int = 0
    deferral_reasons: list[str] = field(default_factory=list)
    stopped: RunStopped | None = None
    quota_low: RunStopped | None = None  # attachment listings left for the daily quota's reserve
    destination: str = ""
    interrupted: list[str] = field(default_factory=list)  # what earlier runs left, loaded first

    @property
    def ok(self) -> bool:
        """Whether every company synced (or is not ready) and the run was not cut short."""
        return not self.failed and self.stopped is None

    def exit_code(self, strict: bool = False) -> int:
        """The command's exit status: the gravest way this run ended."""
        if self.stopped is not None:
            return stop_exit_code(self.stopped)
        if self.quota_low is not None:
            return EXIT_QUOTA_SPENT
        not_ready = any(row["status"] == NOT_READY for row in self.status_rows)
        return EXIT_COMPANY_FAILED if self.failed or (strict and not_ready) else EXIT_OK

    def _customers_line(self) -> str:
        if self.customers_not_loaded:
            then = "loads them first" if self.kept_for_next_run else "reads them again"
            return f"customers: {self.customers_not_loaded} read and not loaded: the next run {then}"
        already = self.customers_already_deleted
        return (
            f"customers: {self.customers_new} new, {self.customers_updated} updated, "
            f"{self.customers_deleted} deleted" + (f", {already} loaded already deleted" if already else "")
        )

    def _refresh_lines(self) -> list[str]:
        if not self.attachments_refreshed and not self.refresh_behind:
            return []
        return [
            f"attachment refresh: {self.attachments_refreshed} unchanged customers listed again, "
            f"{self.refresh_behind} due and left for the next runs"
        ]

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        counts = _other_statuses(self.status_rows)
        lines = [
            *self.interrupted,
            f"companies: {self.companies} ({len(self.failed)} failed{counts})",
            self._customers_line(),
            f"attachments: {self.attachments} found in {self.attachment_listings} listings, "
            f"{self.attachments_added} added, {self.attachments_removed} removed, "
            f"{self.files} files downloaded"
            + _deferred_text(self.attachments_deferred, self.deferral_reasons),
            *self._refresh_lines(),
            f"requests spent: {self.requests}",
            *([f"data: {self.destination}"] if self.destination else []),
            f"time: {self.seconds:.1f} s" + _step_text(self.steps),
        ]
        for row in self.status_rows:
            if row["status"] == FAILED:
                lines.append(f"FAILED {row['company_id']}: {row['error']}")
            elif row["status"] == NOT_READY:
                lines.append(f"NOT READY {row['company_id']} ({row['company_name']}): {row['error']}")
        if self.stopped is not None:
            lines.append(f"STOPPED: {self.stopped}; the next run resumes where this one stopped")
        elif self.quota_low is not None:
            lines.append(f"STOPPED: {self.quota_low}; the next run lists the rest first")
        return lines


def _other_statuses(rows: list[dict[str, Any]]) -> str:
    """The statuses other than ok and failed, counted: ", 1 skipped, 2 not_ready"."""
    found = [row["status"] for row in rows]
    return "".join(
        f", {found.count(status)} {status}"
        for status in STATUSES
        if status not in (OK, FAILED) and status in found
    )


def _deferred_text(deferred: int, reasons: list[str]) -> str:
    if not deferred:
        return ""
    why = f": {'; '.join(reasons)}" if reasons else ""
    return f", {deferred} deferred to the next run{why}"


def _step_text(steps: dict[str, float]) -> str:
    return f" ({', '.join(f'{name} {secs:.1f} s' for name, secs in steps.items())})" if steps else ""


@dataclass
class CustomerCounts:
    """Distinct customers in the destination, and how many of them are deleted."""

    customers: int = 0
    deleted: int = 0


def count_customers(
    tables: Tables, company_ids: list[str] | None = None, history: bool = False
) -> CustomerCounts:
    """Distinct customers in the destination (appending destinations and history keep every version).

    Args:
        tables: The destination's tables.
        company_ids: Count only these companies' customers (a shard's, while other shards load
            the same dataset); None: every customer.
        history: The table keeps every version (`connector.history`): count the current ones.
    """
    if company_ids == []:
        return CustomerCounts()
    conditions = [in_list("company_id", company_ids)] if company_ids else []
    if history:
        conditions.append(f"{VALID_TO} IS NULL")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = tables.read(
        "customers",
        lambda table: (
            "SELECT COUNT(*), COALESCE(SUM(d), 0) FROM (SELECT company_id, id, "
            f"MAX(CASE WHEN is_deleted THEN 1 ELSE 0 END) AS d FROM {table} {where} "
            "GROUP BY company_id, id) k"
        ),
        *(company_ids or []),
        what="Customers not counted",
    )
    return CustomerCounts(int(rows[0][0]), int(rows[0][1])) if rows else CustomerCounts()


def arrow_file_format(pipeline: dlt.Pipeline) -> TLoaderFileFormat | None:
    """The file format the customer pages (Arrow tables) load in, or None for dlt's choice.

    dlt's choice is Parquet where the destination reads it (DuckDB, filesystem, warehouses).
    PostgreSQL would get CSV for COPY, and dlt's COPY reads every empty string of a nullable
    column as NULL (`FORCE_NULL`): `insert_values` keeps "" and NULL apart.
    """
    return "insert_values" if pipeline.destination.destination_name in COPY_NULLS_EMPTY else None


def listing_file_format(pipeline: dlt.Pipeline) -> TLoaderFileFormat | None:
    """The file format of the attachment and listing rows, or None for dlt's choice.

    A daily run's refresh writes tens of thousands of listings; as `insert_values` (dlt's choice
    for JSON rows on DuckDB) they load as one SQL statement whose parsing takes gigabytes.
    Parquet loads them in a scan. PostgreSQL keeps `insert_values` (see `arrow_file_format`).
    """
    capabilities = pipeline.destination.capabilities()
    streams = "parquet" in capabilities.supported_loader_file_formats
    if capabilities.preferred_loader_file_format != "insert_values" or not streams:
        return None
    return None if pipeline.destination.destination_name in COPY_NULLS_EMPTY else "parquet"


def detach_child_tables(pipeline: dlt.Pipeline) -> bool:
    """Rewrite a schema from before Arrow pages, where dlt nested the child tables, once.

    The child tables keep their names and columns but are now appended tables of the
    `customers` resource (`connector.batches`); dlt refuses to merge a nested table's schema
    into a top-level one, so the stored schema is told first. Returns whether it changed.
    """
    if not pipeline.default_schema_name:
        return False
    schema = pipeline.default_schema
    nested = [t for name in CHILD_TABLES if (t := schema.tables.get(name)) is not None and "parent" in t]
    for table in nested:
        del table["parent"]
        table["write_disposition"] = "append"
        table["resource"] = "customers"
        for column in table["columns"].values():
            column.pop("parent_key", None)
            column.pop("root_key", None)
    if nested:
        pipeline.schemas.save_schema(schema)
    return bool(nested)


@contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        steps[name] = steps.get(name, 0.0) + time.monotonic() - began


def finish_interrupted(pipeline: dlt.Pipeline) -> list[str]:
    """Restore state from the destination if need be, and load what an interrupted run left.

    dlt's `run` without data does both, once what a kill left between two of dlt's file steps
    is finished (`connector.packages`): an extracted package already normalized, a package
    completed but not archived. Returns summary lines on the finished
    packages, from the `sync_status` rows they held when the interrupted run got that far.
    """
    archived = finish_kill_leftovers(pipeline)
    info = pipeline.run()
    ids = [*archived, *(info.loads_ids if info is not None else [])]
    if not ids:
        return []
    lines = [f"interrupted run finished first: {len(ids)} load package(s) {', '.join(ids)}"]
    rows = read_table(
        pipeline,
        "sync_status",
        lambda table: (
            f"SELECT COUNT(*), SUM(customers_loaded), SUM(attachments_loaded) FROM {table} "
            f"WHERE {in_list('load_id', ids)} OR {in_list('_dlt_load_id', ids)}"
        ),
        *ids,
        *ids,
        what="Interrupted run not summed up",
    )
    if rows and rows[0][0]:
        companies, customers, attachments = rows[0]
        lines.append(
            f"interrupted run held: {companies} companies, {customers or 0} customers, "
            f"{attachments or 0} attachments"
        )
    return lines


def repair_marker(pipeline: dlt.Pipeline) -> Path:
    """A file saying the child tables may hold rows loaded twice, until a run has repaired them.

    Beside the pipeline's lock, not in its working folder (dlt may wipe that), and on disk so a
    run killed before it repaired leaves the repair to the next.
    """
    return lock_path(pipeline.pipelines_dir, pipeline.pipeline_name).with_suffix(".repair")


def run_sync(
    pipeline: dlt.Pipeline,
    full_refresh: bool = False,
    stop: StopSwitch | None = None,
    settings: CodatSettings | None = None,
    **source_options: Any,
) -> SyncSummary:
    """Sync Codat into the pipeline's destination and record the run in `sync_status`.

    One run at a time per pipeline (`connector.lock`). What an interrupted run left is loaded
    first. The run's `sync_status` rows are extracted right after its customers, into the same
    load package, and so land even if the process dies before loading: the next run loads them.
    A full disk ends the run as a stop (`DISK_FULL`), not an error: what was read waits for the
    next run.

    Args:
        pipeline: The dlt pipeline (destination and dataset chosen by the caller).
        full_refresh: Drop the source's tables and state first, and load everything again.
        stop: The switch that stops the run's requests (the command line trips it on SIGINT and
            SIGTERM); a new one by default.
        settings: The source's settings, resolved (`resolve_settings`); by default resolved
            here from `source_options` and dlt's configuration. The run reads them too (the
            shard it locks and counts, `hard_delete`, where files go), so a setting means the
            same whether it comes from an argument, `.dlt/` or a `SOURCES__CODAT__*` variable.
        **source_options: Settings set in code (company_ids, since, download_files, ...), when
            `settings` is not given.

    Returns:
        The run's summary; `exit_code()` tells how it ended.

    Raises:
        InvalidOption: A setting is out of range (nothing is locked or sent).
        PipelineBusy: Another run holds the pipeline.
        DestinationLocked: Another run holds the destination (or the shard), or another process
            the DuckDB file.
        DestinationUnusable: The destination cannot be reached to lock it (PostgreSQL down).
    """
    started = time.monotonic()
    if settings is not None and source_options:
        raise TypeError("run_sync takes settings or source options, not both")
    settings = settings if settings is not None else resolve_settings(**source_options)
    if settings.history and not holds_sql(pipeline):
        kind = pipeline.destination.destination_name
        raise InvalidOption(
            f"history keeps its versions with SQL after each load, which the {kind} destination has "
            "not: load into DuckDB, PostgreSQL or another SQL destination, or turn history off"
        )
    keep_memory_flat()
    duckdb_credentials = duckdb_file_credentials(pipeline)
    database = None if duckdb_credentials is None else Path(duckdb_credentials.database)
    with (
        pipeline_lock(pipeline.pipelines_dir, pipeline.pipeline_name),
        destination_lock(pipeline, settings.shard, settings.shards, database),
    ):
        if database is not None:  # held by another process: said now, before a request is spent
            check_duckdb_file(database)
        report = RunReport(stop=stop or StopSwitch())
        source = codat_source(settings=settings, report=report)
        done = RunSteps(
            shards=settings.shards,
            hard_delete=settings.hard_delete,
            history=settings.history,
            duckdb=duckdb_credentials,
        )
        try:
            done.run(pipeline, source, report, full_refresh)
        except Exception as exc:
            path = full_disk_path(exc)
            if path is None:
                raise
            report.stop.trip(DISK_FULL, describe_full_disk(path, run_places(pipeline, settings, database)))
        if done.status_rows is None:  # the extract did not get that far
            report.mark_cut_short()
            done.status_rows = report.rows(done.load_id)
    return summarise(report, done, pipeline, settings.hard_delete, started)


@dataclass
class RunSteps:
    """A run's steps after its source is made, and what each left for the summary."""

    shards: int = 1
    hard_delete: bool = False
    history: bool = False
    kept_history: bool = False  # whether the customers table kept versions before this run's load
    duckdb: DuckDbCredentials | None = None  # the DuckDB file's, if the destination is one
    interrupted: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds of extract, normalize, load
    load_id: str | None = None
    status_rows: list[dict[str, Any]] | None = None
    counted_before: CustomerCounts = field(default_factory=CustomerCounts)  # once extracted
    counts: tuple[CustomerCounts, CustomerCounts] | None = None  # before and after the load, once loaded
    attachments_added: Counter[str] = field(default_factory=Counter)  # per company
    attachments_removed: Counter[str] = field(default_factory=Counter)
    views: list[str] = field(default_factory=list)

    def _status(self, source: DltSource, report: RunReport) -> DltSource:
        """The run's `sync_status` rows, as a source that makes them when it is extracted."""

        @dlt.resource(
            name="sync_status", write_disposition="merge", primary_key=STATUS_KEY, columns=STATUS_COLUMNS
        )
        def sync_status() -> Iterator[list[dict[str, Any]]]:
            report.mark_cut_short()
            self.status_rows = report.rows(dlt.current.load_package_state()["load_id"])
            if self.status_rows:
                yield self.status_rows

        return DltSource(source.schema, source.section, [sync_status])

    def run(self, pipeline: dlt.Pipeline, source: DltSource, report: RunReport, full_refresh: bool) -> None:
        """Finish what an interrupted run left, extract, load, then the repairs and views after it."""
        repair = self.recover(pipeline)
        self.kept_history = switch_history(pipeline, self.history, full_refresh)
        counted = self.extract(pipeline, source, report, full_refresh)
        with one_duckdb_connection(pipeline, self.duckdb):
            live = Counter[str]() if full_refresh else self.count_before(pipeline, counted)
            self.load(pipeline)
            self.after_load(pipeline, counted, live, repair)

    def recover(self, pipeline: dlt.Pipeline) -> Path:
        """Load what an interrupted run left; returns the marker that asks for a repair after this load."""
        self.interrupted = finish_interrupted(pipeline)
        repair = repair_marker(pipeline)
        if self.interrupted:  # its load jobs may have run twice: repair after this run's load
            repair.touch()
        detach_child_tables(pipeline)
        return repair

    def extract(
        self, pipeline: dlt.Pipeline, source: DltSource, report: RunReport, full_refresh: bool
    ) -> list[str] | None:
        """Extract the source and the run's `sync_status` rows into one package.

        Returns the companies the counts are scoped to (a shard's; None: every company).
        """
        options: dict[str, Any] = {"loader_file_format": _file_formats(pipeline, source)}
        if full_refresh:
            options["refresh"] = "drop_sources"
        with _timed(self.steps, "extract"):
            # One package: the status rows are a second source of the same schema, extracted
            # once the first is done (its companies' outcomes known), before the package closes.
            extracted = pipeline.extract(
                [source, self._status(source, report)], schema=source.schema, **options
            )
            self.load_id = extracted.loads_ids[-1] if extracted.loads_ids else None
        # A shard counts its own companies, as other shards may be loading the same tables.
        return list(report.companies) if self.shards > 1 else None

    def count_before(self, pipeline: dlt.Pipeline, counted: list[str] | None) -> Counter[str]:
        """Count the customers before the load; returns the live attachments per company.

        Counted once the run's companies are known, on the connection the load then takes.
        """
        with destination_tables(pipeline) as before:
            self.counted_before = count_customers(before, counted, self.kept_history)
            return live_attachments(before, counted)

    def load(self, pipeline: dlt.Pipeline) -> None:
        """Normalize and load the run's package."""
        release_free_memory()  # what the extract's readers freed, before DuckDB takes its share
        with _timed(self.steps, "normalize"):
            pipeline.normalize()
        with _timed(self.steps, "load"):
            pipeline.load()

    def after_load(
        self, pipeline: dlt.Pipeline, counted: list[str] | None, live: Counter[str], repair: Path
    ) -> None:
        """Count, prune replaced child rows, retire unlisted attachments, record them, make the views."""
        with destination_tables(pipeline) as loaded:
            settle_history(loaded, repair=repair.exists())
            self.counts = (self.counted_before, count_customers(loaded, counted, keeps_history(loaded)))
            prune_child_rows(loaded, repair=repair.exists(), company_ids=counted)
            repair.unlink(missing_ok=True)
            listed = live_attachments(loaded, counted)
            self.attachments_removed = retire_unlisted(loaded, self.hard_delete, counted)
            self.attachments_added = added_attachments(live, listed)
            if self.load_id is not None:
                record_changes(loaded, self.load_id, self.attachments_added, self.attachments_removed)
            for row in self.status_rows or []:
                if row["attachment_listings"] or row["company_id"] in self.attachments_removed:
                    row["attachments_added"] = self.attachments_added[row["company_id"]]
                    row["attachments_removed"] = self.attachments_removed[row["company_id"]]
            self.views = create_views(loaded)


def _file_formats(pipeline: dlt.Pipeline, source: DltSource) -> TLoaderFileFormat | None:
    """Set the file formats of the customer pages and listings on the source; returns the run's."""
    file_format = arrow_file_format(pipeline)
    if file_format is not None and "customers" in source.resources:  # dlt sets it on base tables only
        for table in CHILD_TABLES:
            source.resources["customers"].apply_hints(
                table_name=table, file_format=file_format, create_table_variant=True
            )
    listing_format = listing_file_format(pipeline)
    listers = [name for name in LISTERS if name in source.resources]
    for name in listers if listing_format is not None else []:
        source.resources[name].apply_hints(
            table_name=LISTINGS_TABLE, file_format=listing_format, create_table_variant=True
        )
        source.resources[name].apply_hints(file_format=listing_format)
    return file_format


def run_places(pipeline: dlt.Pipeline, settings: CodatSettings, database: Path | None) -> dict[str, Path]:
    """Where a run writes, by what each place is: to name the one a full disk is in."""
    places = {"dlt's working folder": Path(pipeline.working_dir)}
    if database is not None:
        places["the DuckDB file"] = database
    if settings.download_files:
        places["the attachment files folder"] = Path(settings.files_url)
    return places


def summarise(
    report: RunReport, done: RunSteps, pipeline: dlt.Pipeline, hard_delete: bool, started: float
) -> SyncSummary:
    """The run's summary from its report and what its steps left."""
    outcomes = report.companies.values()
    read = sum(r.customers_loaded for r in outcomes)
    first_deleted = sum(r.customers_deleted for r in outcomes if r.first_load)
    new = updated = deleted = 0
    if done.counts is not None:
        before, after = done.counts
        if hard_delete:  # deleted customers are removed, not counted in the destination
            deleted = sum(r.customers_deleted for r in outcomes if not r.first_load)
            new = max(after.customers - before.customers + deleted, 0)
            updated = read - new - deleted - first_deleted
        else:
            deleted = max(after.deleted - before.deleted - first_deleted, 0)
            new = max(after.customers - before.customers, 0)
            updated = read - new - deleted
    return SyncSummary(
        companies=len(report.companies),
        failed=[r.company_id for r in report.failed],
        customers_new=new,
        customers_updated=max(updated, 0),
        customers_deleted=deleted,
        customers_already_deleted=first_deleted,
        customers_not_loaded=0 if done.counts is not None else read,
        kept_for_next_run=done.load_id is not None,
        attachments=sum(r.attachments_loaded for r in outcomes),
        attachment_listings=sum(r.attachment_listings for r in outcomes),
        attachments_added=sum(done.attachments_added.values()),
        attachments_removed=sum(done.attachments_removed.values()),
        attachments_refreshed=sum(r.attachments_refreshed for r in outcomes),
        refresh_behind=sum(r.refresh_behind or 0 for r in outcomes),
        files=sum(r.files_downloaded for r in outcomes),
        attachments_deferred=report.attachments_deferred,
        deferral_reasons=report.deferral_reasons,
        requests=report.requests.total,
        seconds=time.monotonic() - started,
        load_id=done.load_id,
        views=done.views,
        status_rows=done.status_rows or [],
        steps=done.steps,
        stopped=report.stop.reason,
        quota_low=report.quota_low,
        destination=describe_destination(pipeline),
        interrupted=done.interrupted,
    )
