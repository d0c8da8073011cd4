"""Helpers for sync tests: isolated pipelines, runs against the emulator, reading DuckDB back."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb

from connector.emulator.emulator import Emulator
from connector.emulator.model import STATUS_COMPLETE
from connector.sync import SyncSummary, run_sync
from tests.utils import API_KEY

_names = itertools.count()
FAST_RETRIES = {"backoff_factor": 0.01, "max_attempts": 4}
# The date forms Codat documents and the emulator writes: `Z`, zone-less or `+hh:mm`, 0-7 fraction digits.
_CODAT_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})?")


def codat_instant(text: str | None) -> datetime | None:
    """The UTC instant a Codat date names: the tests' own reading, independent of the connector's.

    Zone-less dates are UTC, a 7th fraction digit is dropped, `0001-01-01...` is "no date";
    any other form fails the test rather than being guessed at.
    """
    if text is None or text.startswith("0001-01-01"):
        return None
    match = _CODAT_DATE.fullmatch(text)
    assert match is not None, f"not a Codat date form: {text!r}"
    clock, fraction, zone = match.groups()
    canonical = f"{clock}.{(fraction or '0')[:6]}{zone or 'Z'}"
    return datetime.strptime(canonical, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)


class Warehouse:
    """One isolated pipeline (own pipelines_dir and DuckDB file) synced from the emulator."""

    def __init__(self, tmp_path: Path, base_url: str, name: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.base_url = base_url
        self.name = name or f"codat_test_{next(_names)}"
        self.db = tmp_path / f"{self.name}.duckdb"
        self.pipelines_dir = tmp_path / "pipelines"

    def pipeline(self) -> dlt.Pipeline:
        return dlt.pipeline(
            pipeline_name=self.name,
            destination=dlt.destinations.duckdb(str(self.db)),
            dataset_name="codat",
            pipelines_dir=str(self.pipelines_dir),
        )

    def sync(self, **options: Any) -> SyncSummary:
        settings = {"api_key": API_KEY, "base_url": self.base_url, **FAST_RETRIES, **options}
        return run_sync(self.pipeline(), **settings)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return database_rows(self.db, sql)

    def customers(self) -> dict[tuple[str, str], dict[str, Any]]:
        return database_customers(self.db)

    def state(self) -> dict[str, Any]:
        return dict(self.pipeline().state["sources"]["codat"])


def database_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows a query gives on a DuckDB file, opened read-only."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql(sql).fetchall()


def database_customers(db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The customers of a DuckDB file by (company_id, id), with the columns `expected_customers` has."""
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(
            "SELECT company_id, id, customer_name, default_currency, status, is_deleted, "
            "modified_date, supplemental_data FROM codat.customers"
        )
        names = [d[0] for d in cursor.description]
        return {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cursor.fetchall()}


def readable(emulator: Emulator) -> list[Any]:
    """The companies whose customers a sync can read."""
    return [
        c
        for c in emulator.store.companies.values()
        if c.customers_status == STATUS_COMPLETE and c.accounting_connections
    ]


def attachment_keys(emulator: Emulator) -> set[tuple[str, str, str, str]]:
    """Every (company, connection, customer, attachment) a complete sync lists."""
    keys: set[tuple[str, str, str, str]] = set()
    for company in readable(emulator):
        accounting = {c.id for c in company.accounting_connections}
        for (connection_id, customer_id), items in company.attachments.items():
            if connection_id in accounting:
                keys.update((company.id, connection_id, customer_id, a.id) for a in items)
    return keys


def expected_customers(emulator: Emulator) -> dict[tuple[str, str], dict[str, Any]]:
    """What the customers table must hold, mapped as the connector documents."""
    expected = {}
    for company in readable(emulator):
        for record in company.customers.values():
            metadata = record.get("metadata")
            supplemental = record.get("supplementalData")
            expected[(company.id, str(record["id"]))] = {
                "company_id": company.id,
                "id": str(record["id"]),
                "customer_name": record.get("customerName"),
                "default_currency": record.get("defaultCurrency"),
                "status": record.get("status"),
                "is_deleted": bool(metadata.get("isDeleted")) if isinstance(metadata, dict) else False,
                "modified_date": codat_instant(record.get("modifiedDate")),
                "supplemental_data": supplemental,
            }
    return expected


def normalise(rows: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Make DuckDB's values comparable with the emulator's (JSON text, aware datetimes)."""
    out = {}
    for key, row in rows.items():
        row = dict(row)
        if isinstance(row.get("supplemental_data"), str):
            row["supplemental_data"] = json.loads(row["supplemental_data"])
        out[key] = row
    return out


def requests_by(emulator: Emulator, operation: str, company_id: str | None = None) -> int:
    """Requests the emulator answered for an operation (and company)."""
    return sum(
        1
        for e in emulator.request_log
        if e["operation"] == operation and (company_id is None or e["company_id"] == company_id)
    )


def hold_duckdb_file(db: Path) -> subprocess.Popen[str]:
    """Another process with the DuckDB file open for writing, until its stdin is closed (or it is killed)."""
    hold = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "open\n", "the holder did not open the file"
    return holder
