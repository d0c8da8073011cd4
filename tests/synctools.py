"""Helpers for sync tests: isolated pipelines, runs against the emulator, reading DuckDB back."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import dlt
import duckdb

from connector.emulator.model import STATUS_COMPLETE
from connector.emulator.server import Emulator
from connector.records import parse_codat_datetime
from connector.sync import SyncSummary, run_sync
from tests.conftest import API_KEY

_names = itertools.count()
FAST_RETRIES = {"backoff_factor": 0.01, "max_attempts": 4}


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
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.sql(sql).fetchall()

    def customers(self) -> dict[tuple[str, str], dict[str, Any]]:
        with duckdb.connect(str(self.db), read_only=True) as con:
            cursor = con.execute(
                "SELECT company_id, id, customer_name, default_currency, status, is_deleted, "
                "modified_date, supplemental_data FROM codat.customers"
            )
            names = [d[0] for d in cursor.description]
            return {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cursor.fetchall()}

    def state(self) -> dict[str, Any]:
        return dict(self.pipeline().state["sources"]["codat"])


def readable(emulator: Emulator) -> list[Any]:
    """The companies whose customers a sync can read."""
    return [
        c
        for c in emulator.store.companies.values()
        if c.customers_status == STATUS_COMPLETE and c.accounting_connections
    ]


def attachment_keys(emulator: Emulator) -> set[tuple[str, str, str, str]]:
    """Every (company, connection, customer, attachment) a complete sync lists."""
    keys = set()
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
                "modified_date": parse_codat_datetime(record.get("modifiedDate")),
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
