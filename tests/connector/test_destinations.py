"""The same emulator data synced into DuckDB, PostgreSQL and Parquet files reads back the same."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest
from dlt.common.destination import Destination

from connector.emulator.emulator import Emulator
from connector.emulator.model import STATUS_COMPLETE
from connector.sync import run_sync
from tests.postgres import PostgresServer
from tests.utils import API_KEY

DATASET = "codat"
# Compared row by row (the same SQL on DuckDB, PostgreSQL and the views over the Parquet lake)...
ROW_QUERIES = {
    "customers": """
        SELECT company_id, id, customer_name, default_currency, status, is_deleted,
               modified_date AT TIME ZONE 'UTC'
        FROM {dataset}.customers""",
    "customer_attachments": """
        SELECT company_id, connection_id, customer_id, id, file_size
        FROM {dataset}.customer_attachments""",
    # Child rows by their customer: empty text stays empty text (PostgreSQL's CSV load made it NULL).
    "customers__addresses": """
        SELECT c.company_id, c.id, a.type, a.line1, a.city, a.postal_code
        FROM {dataset}.customers__addresses a JOIN {dataset}.customers c ON c._dlt_id = a._dlt_root_id""",
    "customers__contacts": """
        SELECT c.company_id, c.id, k.name, k.email, k.status
        FROM {dataset}.customers__contacts k JOIN {dataset}.customers c ON c._dlt_id = k._dlt_root_id""",
}
# ... and by row count.
COUNTED_TABLES = ("customers__contacts__phone", "companies", "sync_status")
# The filesystem destination appends where SQL destinations merge: the lake keeps every
# version, so these views pick each key's latest load and the child rows of that version.
LATEST = "{files} QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _dlt_load_id DESC) = 1"
LAKE_VIEWS = {
    "customers": LATEST.replace("{key}", "company_id, id"),
    "customers__addresses": "{files} WHERE _dlt_parent_id IN (SELECT _dlt_id FROM lake.customers)",
    "customers__contacts": "{files} WHERE _dlt_parent_id IN (SELECT _dlt_id FROM lake.customers)",
    "customers__contacts__phone": (
        "{files} WHERE _dlt_parent_id IN (SELECT _dlt_id FROM lake.customers__contacts)"
    ),
    "customer_attachments": LATEST.replace("{key}", "company_id, connection_id, customer_id, id"),
    "companies": LATEST.replace("{key}", "id"),
    "sync_status": "{files}",
}

Snapshot = dict[str, Any]


def lake(tmp_path: Path) -> Destination[Any, Any]:
    """Parquet files under `tmp_path/lake`: the filesystem destination's own format setting."""
    return dlt.destinations.filesystem(
        bucket_url=str(tmp_path / "lake"), preferred_loader_file_format="parquet"
    )


def make_pipeline(
    tmp_path: Path, kind: str, destination: Destination[Any, Any], dataset: str
) -> dlt.Pipeline:
    return dlt.pipeline(
        pipeline_name=f"codat_to_{kind}_{tmp_path.name}",
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(tmp_path / "pipelines" / kind),
    )


def make_pipelines(tmp_path: Path, pg: PostgresServer) -> dict[str, dlt.Pipeline]:
    """One isolated pipeline per destination; the Postgres dataset is unique in the shared database."""
    return {
        "duckdb": make_pipeline(
            tmp_path, "duckdb", dlt.destinations.duckdb(str(tmp_path / "warehouse.duckdb")), DATASET
        ),
        "postgres": make_pipeline(
            tmp_path,
            "postgres",
            dlt.destinations.postgres(credentials=pg.url),
            f"codat_{uuid.uuid4().hex[:8]}",
        ),
        "parquet": make_pipeline(tmp_path, "parquet", lake(tmp_path), DATASET),
    }


def sync_all(pipelines: dict[str, dlt.Pipeline], base_url: str) -> None:
    for kind, pipeline in pipelines.items():
        summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url)
        assert summary.failed == [], f"{kind}: {summary.lines()}"


def snapshot(execute: Callable[[str], list[tuple[Any, ...]]], dataset: str) -> Snapshot:
    """Rows of ROW_QUERIES sorted, timestamps as UTC instants; row counts of COUNTED_TABLES."""
    result: Snapshot = {}
    for table, query in ROW_QUERIES.items():
        rows = [tuple(normalise(v) for v in row) for row in execute(query.format(dataset=dataset))]
        result[table] = sorted(rows, key=str)  # str: None sorts among strings and numbers
    for table in COUNTED_TABLES:
        result[table] = execute(f"SELECT COUNT(*) FROM {dataset}.{table}")[0][0]
    return result


def normalise(value: Any) -> Any:
    # `AT TIME ZONE 'UTC'` yields the UTC wall clock without a zone on both engines.
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


def read_duckdb(pipeline: dlt.Pipeline, tmp_path: Path) -> Snapshot:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return snapshot(lambda q: con.execute(q).fetchall(), pipeline.dataset_name)


def read_postgres(pipeline: dlt.Pipeline, pg: PostgresServer) -> Snapshot:
    con = pg.connect()
    try:
        cursor = con.cursor()

        def execute(query: str) -> list[tuple[Any, ...]]:
            cursor.execute(query)
            return list(cursor.fetchall())

        return snapshot(execute, pipeline.dataset_name)
    finally:
        con.close()


def read_lake(pipeline: dlt.Pipeline, tmp_path: Path) -> Snapshot:
    folder = tmp_path / "lake" / pipeline.dataset_name
    with duckdb.connect() as con:
        con.execute("CREATE SCHEMA lake")
        for table, body in LAKE_VIEWS.items():
            files = f"SELECT * FROM read_parquet('{folder / table}/*.parquet')"
            con.execute(f"CREATE VIEW lake.{table} AS {body.format(files=files)}")
        return snapshot(lambda q: con.execute(q).fetchall(), "lake")


def read_all(pipelines: dict[str, dlt.Pipeline], tmp_path: Path, pg: PostgresServer) -> dict[str, Snapshot]:
    return {
        "duckdb": read_duckdb(pipelines["duckdb"], tmp_path),
        "postgres": read_postgres(pipelines["postgres"], pg),
        "parquet": read_lake(pipelines["parquet"], tmp_path),
    }


def lake_rows(tmp_path: Path, table: str) -> int:
    """Every row version the filesystem destination wrote for a table."""
    with duckdb.connect() as con:
        query = f"SELECT COUNT(*) FROM read_parquet('{tmp_path}/lake/{DATASET}/{table}/*.parquet')"
        return int(con.execute(query).fetchall()[0][0])


def emulator_counts(emulator: Emulator, runs: int) -> dict[str, int]:
    """What the account holds: customers of companies Codat has read, their children and attachments."""
    complete = [c for c in emulator.store.companies.values() if c.customers_status == STATUS_COMPLETE]
    customers = [r for c in complete for r in c.customers.values()]
    contacts = [k for r in customers for k in r.get("contacts") or []]
    return {
        "customers": len(customers),
        "customers__addresses": sum(len(r.get("addresses") or []) for r in customers),
        "customers__contacts": len(contacts),
        "customers__contacts__phone": sum(len(k.get("phone") or []) for k in contacts),
        "customer_attachments": sum(
            len(attachments)
            for c in complete
            for (connection_id, _), attachments in c.attachments.items()
            if connection_id in {k.id for k in c.accounting_connections}
        ),
        "companies": len(emulator.store.companies),
        "sync_status": runs * len(emulator.store.companies),
    }


def counts(snap: Snapshot) -> dict[str, int]:
    return {table: value if isinstance(value, int) else len(value) for table, value in snap.items()}


@pytest.mark.postgres
def test_first_sync_reads_back_the_same_from_every_destination(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    pipelines = make_pipelines(tmp_path, postgres)

    sync_all(pipelines, base_url)

    snaps = read_all(pipelines, tmp_path, postgres)
    assert snaps["postgres"] == snaps["duckdb"]
    assert snaps["parquet"] == snaps["duckdb"]
    assert counts(snaps["duckdb"]) == emulator_counts(emulator, runs=1)


@pytest.mark.postgres
def test_incremental_sync_merges_alike_in_every_destination(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    pipelines = make_pipelines(tmp_path, postgres)
    sync_all(pipelines, base_url)
    company_id = sorted(emulator.store.companies)[0]
    changed = emulator.store.mutate(company_id, "modify", count=3)

    sync_all(pipelines, base_url)

    snaps = read_all(pipelines, tmp_path, postgres)
    assert snaps["postgres"] == snaps["duckdb"]
    assert snaps["parquet"] == snaps["duckdb"]
    assert counts(snaps["duckdb"]) == emulator_counts(emulator, runs=2)
    names = {row[1]: row[2] for row in snaps["duckdb"]["customers"] if row[0] == company_id}
    account = emulator.store.companies[company_id].customers
    assert {c: names[c] for c in changed} == {c: account[c]["customerName"] for c in changed}
    # The lake appended the three new versions beside the old ones; the views above read the newest.
    assert lake_rows(tmp_path, "customers") == len(snaps["duckdb"]["customers"]) + len(changed)


def test_parquet_summary_counts_modified_customers_as_updated(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    pipeline = make_pipeline(tmp_path, "parquet", lake(tmp_path), DATASET)
    run_sync(pipeline, api_key=API_KEY, base_url=base_url)
    emulator.store.mutate(sorted(emulator.store.companies)[0], "modify", count=3)

    summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url)

    assert (summary.customers_new, summary.customers_updated) == (0, 3)


def test_parquet_sync_lists_no_views(emulator: Emulator, base_url: str, tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path, "parquet", lake(tmp_path), DATASET)

    summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url)

    assert summary.views == []
