"""One sync run: load the source, record `sync_status`, refresh the views, sum it all up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dlt
from dlt.common.destination import TLoaderFileFormat
from dlt.common.pipeline import LoadInfo
from dlt.common.schema.typing import TTableSchemaColumns

from connector.batches import CHILD_TABLES
from connector.source import codat_source
from connector.status import FAILED, RunLedger
from connector.views import create_views, has_table, prune_child_rows

# Destinations whose CSV load (dlt's default for Arrow there) turns "" into NULL.
COPY_NULLS_EMPTY = frozenset({"postgres"})
STATUS_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "company_name": {"data_type": "text"},
    "status": {"data_type": "text", "nullable": False},
    "http_status": {"data_type": "bigint"},
    "error": {"data_type": "text"},
    "correlation_id": {"data_type": "text"},
    "notes": {"data_type": "text"},
    "deferral_reason": {"data_type": "text"},
    "requests": {"data_type": "bigint"},
    "run_started_at": {"data_type": "timestamp"},
    "load_id": {"data_type": "text"},
}


@dataclass
class SyncSummary:
    """What a run did, for the command line's closing lines."""

    companies: int
    failed: list[str]
    customers_new: int
    customers_updated: int
    customers_deleted: int
    attachments: int
    files: int
    requests: int
    seconds: float
    load_id: str | None
    views: list[str] = field(default_factory=list)
    status_rows: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds of extract, normalize, load
    attachments_deferred: int = 0
    deferral_reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every company synced."""
        return not self.failed

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        lines = [
            f"companies: {self.companies} ({len(self.failed)} failed)",
            f"customers: {self.customers_new} new, {self.customers_updated} updated, "
            f"{self.customers_deleted} deleted",
            f"attachments: {self.attachments} listed, {self.files} files downloaded"
            + _deferred_text(self.attachments_deferred, self.deferral_reasons),
            f"requests spent: {self.requests}",
            f"time: {self.seconds:.1f} s" + _step_text(self.steps),
        ]
        for row in self.status_rows:
            if row["status"] == FAILED:
                lines.append(f"FAILED {row['company_id']}: {row['error']}")
        return lines


def _deferred_text(deferred: int, reasons: list[str]) -> str:
    if not deferred:
        return ""
    why = f": {'; '.join(reasons)}" if reasons else ""
    return f", {deferred} deferred to the next run{why}"


def _step_text(steps: dict[str, float]) -> str:
    return f" ({', '.join(f'{name} {secs:.1f} s' for name, secs in steps.items())})" if steps else ""


def step_seconds(pipeline: dlt.Pipeline) -> dict[str, float]:
    """Seconds of each step (extract, normalize, load) of the pipeline's last run."""
    trace = pipeline.last_trace
    if trace is None:
        return {}
    return {
        str(step.step): (step.finished_at - step.started_at).total_seconds()
        for step in trace.steps
        if step.step in ("extract", "normalize", "load") and step.finished_at is not None
    }


def count_customers(pipeline: dlt.Pipeline) -> int:
    """Distinct customers in the destination (appending destinations keep every version)."""
    if not has_table(pipeline, "customers"):
        return 0
    try:
        with pipeline.sql_client() as sql:
            table = sql.make_qualified_table_name("customers")
            rows = sql.execute_sql(f"SELECT COUNT(*) FROM (SELECT DISTINCT company_id, id FROM {table}) k")
            return int(rows[0][0]) if rows else 0
    except Exception:  # noqa: BLE001 - no SQL on this destination, or the table was never loaded
        return 0


def arrow_file_format(pipeline: dlt.Pipeline) -> TLoaderFileFormat | None:
    """The file format the customer pages (Arrow tables) load in, or None for dlt's choice.

    dlt's choice is Parquet where the destination reads it (DuckDB, filesystem, warehouses).
    PostgreSQL would get CSV for COPY, and dlt's COPY reads every empty string of a nullable
    column as NULL (`FORCE_NULL`): `insert_values` keeps "" and NULL apart.
    """
    return "insert_values" if pipeline.destination.destination_name in COPY_NULLS_EMPTY else None


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


def run_sync(pipeline: dlt.Pipeline, full_refresh: bool = False, **source_options: Any) -> SyncSummary:
    """Sync Codat into the pipeline's destination and record the run in `sync_status`.

    Args:
        pipeline: The dlt pipeline (destination and dataset chosen by the caller).
        full_refresh: Drop the source's tables and state first, and load everything again.
        **source_options: Passed to `codat_source` (company_ids, since, download_files, ...).

    Returns:
        The run's summary; `ok` is False when any company failed.
    """
    started = time.monotonic()
    ledger = RunLedger()
    source = codat_source(ledger=ledger, **source_options)
    if pipeline.has_pending_data:
        # An interrupted run left packages behind: dlt's `run` would only finish those.
        pipeline.run()
    detach_child_tables(pipeline)
    before = 0 if full_refresh else count_customers(pipeline)
    run_options: dict[str, Any] = {"loader_file_format": arrow_file_format(pipeline)}
    if full_refresh:
        run_options["refresh"] = "drop_sources"
    info: LoadInfo = pipeline.run(source, **run_options)
    load_id = info.loads_ids[-1] if info.loads_ids else None
    steps = step_seconds(pipeline)
    after = count_customers(pipeline)
    prune_child_rows(pipeline)
    views = create_views(pipeline)
    status_rows = ledger.rows(load_id)
    if status_rows:
        pipeline.run(
            status_rows, table_name="sync_status", write_disposition="append", columns=STATUS_COLUMNS
        )
    runs = ledger.companies.values()
    loaded = sum(r.customers_loaded for r in runs)
    deleted = sum(r.customers_deleted for r in runs)
    hard = bool(source_options.get("hard_delete"))
    new = max(after - before + (deleted if hard else 0), 0)
    return SyncSummary(
        companies=len(ledger.companies),
        failed=[r.company_id for r in ledger.failed],
        customers_new=new,
        customers_updated=max(loaded - new - deleted, 0),
        customers_deleted=deleted,
        attachments=sum(r.attachments_loaded for r in runs),
        files=sum(r.files_downloaded for r in runs),
        attachments_deferred=ledger.attachments_deferred,
        deferral_reasons=ledger.deferral_reasons,
        requests=ledger.requests.total,
        seconds=time.monotonic() - started,
        load_id=load_id,
        views=views,
        status_rows=status_rows,
        steps=steps,
    )
