"""Helpers for attachment tests: what the emulator answered, holds, and what the warehouse loaded."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import unquote

from connector import refresh
from connector.emulator.emulator import Emulator
from tests import children
from tests.synctools import Warehouse, readable

Listing = tuple[str, str, str]  # company, connection, customer
LOST_ANSWERS = {"reset", "truncate", "invalid_json"}  # faults whose logged answer never reaches the client


def listings(emulator: Emulator, status: int | None = 200) -> list[Listing]:
    """The attachment listings whose answer reached the client, in the order the emulator logged them."""
    out = []
    for entry in emulator.request_log:
        if entry["operation"] != "list-customer-attachments" or entry["fault"] in LOST_ANSWERS:
            continue
        if status is None or entry["status"] == status:
            parts = [unquote(p) for p in entry["path"].strip("/").split("/")]
            out.append((parts[1], parts[3], parts[6]))
    return out


def every_listing(emulator: Emulator) -> set[Listing]:
    """One listing per customer and accounting connection of every company a sync can read."""
    return {
        (company.id, connection.id, customer_id)
        for company in readable(emulator)
        for connection in company.accounting_connections
        for customer_id in company.customers
    }


def attachment_rows(emulator: Emulator, only: set[Listing] | None = None) -> list[tuple[str, str, str, str]]:
    """The emulator's attachment keys, for all listings or only some."""
    rows = []
    for company in readable(emulator):
        accounting = {c.id for c in company.accounting_connections}
        for (connection_id, customer_id), items in company.attachments.items():
            listing = (company.id, connection_id, customer_id)
            if connection_id in accounting and (only is None or listing in only):
                rows += [(company.id, connection_id, customer_id, a.id) for a in items]
    return sorted(rows)


def view_rows(emulator: Emulator) -> list[tuple[str, str, str, str]]:
    """The emulator's attachment keys of customers not deleted: what the joined view shows."""
    deleted = {
        (company.id, customer_id)
        for company in readable(emulator)
        for customer_id, record in company.customers.items()
        if (record.get("metadata") or {}).get("isDeleted")
    }
    return [row for row in attachment_rows(emulator) if (row[0], row[2]) not in deleted]


def loaded(warehouse: Warehouse) -> list[tuple[str, str, str, str]]:
    """The attachment keys the warehouse holds as live (not retired by a later listing)."""
    return sorted(
        warehouse.rows(
            "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments "
            "WHERE is_deleted IS NOT TRUE"
        )
    )


@contextmanager
def refresh_clock(moment: datetime) -> Iterator[None]:
    """The rolling refresh's clock stands at `moment` (dlt's and the emulator's keep theirs)."""
    real = refresh.now
    refresh.now = lambda: moment  # type: ignore[assignment]
    try:
        yield
    finally:
        refresh.now = real  # type: ignore[assignment]


def kill_after_listings(child: children.Popen, emulator: Emulator, count: int) -> None:
    """SIGKILL the child run once the emulator has answered `count` listings (within a minute)."""
    deadline = time.monotonic() + 60
    while len(listings(emulator)) < count and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
