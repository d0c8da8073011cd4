"""`customer_attachments` follows Codat: added and removed attachments reach the warehouse.

Attachments change in the emulator as in a platform (`attach`, `detach`): the customer record
and its `modifiedDate` stay as they were. The rolling refresh's clock (`connector.refresh.now`)
is set by the tests, a day at a time; dlt and the emulator keep the real one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import pytest

from connector.emulator.emulator import Emulator
from connector.refresh import STATE_KEY as REFRESH_KEY
from connector.sync import run_sync
from tests import children
from tests.attachmenttools import (
    attachment_rows,
    every_listing,
    kill_after_listings,
    listings,
    loaded,
    refresh_clock,
    view_rows,
)
from tests.postgres import PostgresServer
from tests.synctools import Warehouse, readable
from tests.utils import API_KEY, ROOT

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)  # a run's clock; the emulator's dates are its own


def company_with_attachments(emulator: Emulator) -> Any:
    company = readable(emulator)[0]
    assert company.accounting_connections
    assert company.attachments
    return company


def customers_with(company: Any, plain: bool = False) -> list[str]:
    """Customers holding attachments on the company's first accounting connection.

    `plain`: only ids a request path carries as they are (a fault matches them by path).
    """
    connection = company.accounting_connections[0].id
    found = sorted(c for (x, c), items in company.attachments.items() if x == connection and items)
    return [c for c in found if not plain or re.fullmatch(r"[A-Za-z0-9-]+", c)]


def customers_without(company: Any) -> list[str]:
    connection = company.accounting_connections[0].id
    return sorted(c for c in company.customers if not company.attachments.get((connection, c)))


def retired(warehouse: Warehouse) -> list[tuple[str, str, str, str]]:
    return sorted(
        warehouse.rows(
            "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments "
            "WHERE is_deleted"
        )
    )


def in_view(warehouse: Warehouse) -> list[tuple[str, str, str, str]]:
    return sorted(
        warehouse.rows(
            "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments_with_customers"
        )
    )


def sync_at(warehouse: Warehouse, moment: datetime, **options: Any) -> Any:
    with refresh_clock(moment):
        return warehouse.sync(**options)


def change_attachments(emulator: Emulator, company: Any, count: int = 4) -> tuple[list[str], list[str]]:
    """Attach to `count` customers without attachments and detach from `count` with some."""
    added = customers_without(company)[:count]
    removed = customers_with(company)[:count]
    assert len(added) == count
    assert len(removed) == count
    assert emulator.store.mutate(company.id, "attach", ids=added) == added
    assert emulator.store.mutate(company.id, "detach", ids=removed) == removed
    return added, removed


def synced(emulator: Emulator, base_url: str, tmp_path: Path) -> tuple[Warehouse, Any, str]:
    """A warehouse after a first sync, a company with attachments and one of its customers with some."""
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    company = company_with_attachments(emulator)
    return warehouse, company, customers_with(company)[0]


def test_a_removed_attachment_of_a_changed_customer_is_retired_by_a_normal_run(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse, company, customer = synced(emulator, base_url, tmp_path)
    connection = company.accounting_connections[0].id
    before = {a.id for a in company.attachments[(connection, customer)]}
    emulator.store.mutate(company.id, "detach", ids=[customer])
    after = {a.id for a in company.attachments.get((connection, customer), [])}
    (gone,) = before - after
    emulator.store.mutate(company.id, "modify", ids=[customer])  # the customer changes too

    summary = warehouse.sync()

    assert retired(warehouse) == [(company.id, connection, customer, gone)]
    assert loaded(warehouse) == attachment_rows(emulator)
    assert in_view(warehouse) == view_rows(emulator)
    assert summary.attachments_removed == 1
    assert summary.attachments_added == 0
    row = next(r for r in summary.status_rows if r["company_id"] == company.id)
    assert (row["attachments_added"], row["attachments_removed"]) == (0, 1)
    stored = warehouse.rows(
        "SELECT attachments_added, attachments_removed FROM codat.sync_status "
        f"WHERE load_id = '{summary.load_id}' AND company_id = '{company.id}'"
    )
    assert stored == [(0, 1)]
    assert "1 removed" in "\n".join(summary.lines())


def test_hard_delete_removes_the_attachments_a_listing_no_longer_returns(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(hard_delete=True)
    company = company_with_attachments(emulator)
    removed = customers_with(company)[:3]
    emulator.store.mutate(company.id, "detach", ids=removed)
    emulator.store.mutate(company.id, "modify", ids=removed)

    summary = warehouse.sync(hard_delete=True)

    assert summary.attachments_removed == 3
    assert retired(warehouse) == []
    assert sorted(
        warehouse.rows("SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments")
    ) == attachment_rows(emulator)


def test_unchanged_customers_attachments_are_found_within_the_refresh_period_of_daily_runs(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    first = sync_at(warehouse, START)
    assert first.attachment_listings == len(every_listing(emulator))
    customers = sum(len(c.customers) for c in readable(emulator))
    companies = readable(emulator)
    added, removed = {}, {}
    for company in companies:
        added[company.id], removed[company.id] = change_attachments(emulator, company, count=2)
    assert loaded(warehouse) != attachment_rows(emulator)
    modified = {c.id: {cid: r.get("modifiedDate") for cid, r in c.customers.items()} for c in companies}

    refreshed = []
    for day in range(1, 8):
        emulator.clear_log()
        summary = sync_at(warehouse, START + timedelta(days=day))
        assert summary.customers_new + summary.customers_updated == 0  # no customer changed
        refreshed.append(summary.attachments_refreshed)
        listed = listings(emulator)
        assert len(listed) == len(set(listed))  # no customer listed twice in a run
        if day < 7:
            # floor(customers x day / 7) in all, per company: each day about a seventh.
            expected = sum(len(c.customers) * day // 7 for c in companies)
            assert sum(refreshed) == expected, (day, refreshed)

    assert sum(refreshed) == customers  # every customer once in the cycle, none twice
    assert loaded(warehouse) == attachment_rows(emulator)
    assert in_view(warehouse) == view_rows(emulator)
    assert len(retired(warehouse)) == sum(len(v) for v in removed.values())
    assert {
        c.id: {cid: r.get("modifiedDate") for cid, r in c.customers.items()} for c in companies
    } == modified
    cycles = warehouse.state()[REFRESH_KEY]
    assert sorted(cycles) == sorted(c.id for c in companies)
    assert all(cycle["done"] == 0 and "after" not in cycle for cycle in cycles.values())  # a new cycle


def test_refresh_attachments_lists_every_customer_at_once(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    sync_at(warehouse, START)
    for company in readable(emulator):
        change_attachments(emulator, company, count=3)
    emulator.clear_log()

    summary = sync_at(warehouse, START + timedelta(hours=1), refresh_attachments=True)

    assert sorted(set(listings(emulator))) == sorted(every_listing(emulator))
    assert summary.attachments_refreshed == sum(len(c.customers) for c in readable(emulator))
    assert summary.refresh_behind == 0
    assert loaded(warehouse) == attachment_rows(emulator)
    assert summary.attachments_added == 3 * len(readable(emulator))
    assert summary.attachments_removed == 3 * len(readable(emulator))
    emulator.clear_log()

    # The forced cycle is over and a new one began: an hour later, an hour's share of a week.
    again = sync_at(warehouse, START + timedelta(hours=2))

    assert again.attachments_refreshed == sum(len(c.customers) // 168 for c in readable(emulator))
    assert len(listings(emulator)) == again.attachments_refreshed


def test_a_refresh_that_does_not_fit_the_budget_goes_on_in_the_next_runs(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    sync_at(warehouse, START)
    for company in readable(emulator):
        change_attachments(emulator, company, count=2)
    total = sum(len(c.customers) for c in readable(emulator))

    first = sync_at(warehouse, START + timedelta(hours=1), refresh_attachments=True, request_budget=200)

    assert 0 < first.attachments_refreshed < total
    assert first.refresh_behind == total - first.attachments_refreshed
    assert f"{first.refresh_behind} due and left for the next runs" in "\n".join(first.lines())
    done = first.attachments_refreshed
    for hour in range(2, 12):
        summary = sync_at(warehouse, START + timedelta(hours=hour), request_budget=200)
        done += summary.attachments_refreshed
        if summary.refresh_behind == 0:
            break
    # A listing started when the budget ran out may be listed again: never more than 10 a company.
    assert total <= done <= total + 10 * len(readable(emulator))
    assert loaded(warehouse) == attachment_rows(emulator)


def test_a_failed_or_deferred_listing_retires_nothing(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    company = company_with_attachments(emulator)
    failing, deferred = customers_with(company, plain=True)[:2]
    before = loaded(warehouse)
    emulator.store.mutate(company.id, "detach", ids=[failing, deferred])
    emulator.store.mutate(company.id, "modify", ids=[failing])
    emulator.add_fault("500", count=100, match=f"/customers/{failing}/attachments")

    failed = warehouse.sync()

    assert failed.attachments_removed == 0
    assert loaded(warehouse) == before
    assert failed.attachments_deferred == 1
    emulator.faults.clear()
    # The emulator stamps whole seconds: in the second of the first change, this one would leave
    # the company's lastSync where the last run saw it, and the run would skip the company.
    time.sleep(1.05 - time.time() % 1.0)
    emulator.store.mutate(company.id, "modify", ids=[deferred])

    cut = warehouse.sync(request_budget=1)  # the company list: no listing fits, whichever starts first

    assert cut.attachment_listings == 0
    assert cut.attachments_removed == 0
    assert loaded(warehouse) == before

    warehouse.sync()

    assert loaded(warehouse) == attachment_rows(emulator)
    assert len(retired(warehouse)) == 2


def test_a_deleted_customer_takes_its_attachments_out_of_the_view(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    warehouse, company, customer = synced(emulator, base_url, tmp_path)
    emulator.store.mutate(company.id, "delete", ids=[customer])

    warehouse.sync()

    shown = in_view(warehouse)
    assert [row for row in shown if (row[0], row[2]) == (company.id, customer)] == []
    assert shown == view_rows(emulator)
    assert any((row[0], row[2]) == (company.id, customer) for row in attachment_rows(emulator))
    assert any(row[2] == customer for row in loaded(warehouse))  # the table keeps them, as Codat lists


KILLED_CHILD = """
import sys
from datetime import datetime
import dlt
from connector import refresh
from connector.sync import run_sync

url, db, pipelines_dir, name, day = sys.argv[1:6]
pipeline = dlt.pipeline(pipeline_name=name, destination=dlt.destinations.duckdb(db),
                        dataset_name="codat", pipelines_dir=pipelines_dir)
refresh.now = lambda: datetime.fromisoformat(day)
run_sync(pipeline, api_key="{key}", base_url=url, refresh_attachments=True)
"""


def test_a_run_killed_during_a_refresh_then_a_rerun_gives_what_a_clean_run_gives(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    killed = Warehouse(tmp_path, base_url, name="killed")
    clean = Warehouse(tmp_path, base_url, name="clean")
    sync_at(killed, START)
    sync_at(clean, START)
    for company in readable(emulator):
        change_attachments(emulator, company, count=3)
    emulator.latency = 0.01
    emulator.clear_log()
    day = (START + timedelta(days=1)).isoformat()
    args = [base_url, str(killed.db), str(killed.pipelines_dir), killed.name, day]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = children.Popen([sys.executable, "-c", KILLED_CHILD.format(key=API_KEY), *args], env=env)
    kill_after_listings(child, emulator, 40)
    emulator.latency = 0.0

    sync_at(killed, START + timedelta(days=1, hours=1), refresh_attachments=True)
    sync_at(clean, START + timedelta(days=1, hours=1), refresh_attachments=True)

    assert loaded(killed) == loaded(clean) == attachment_rows(emulator)
    assert retired(killed) == retired(clean)
    assert in_view(killed) == in_view(clean)


def test_refresh_state_is_per_company_not_per_customer(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    sizes = {}
    for customers in (150, 1500):
        emulator.reset(7, 3, customers)
        warehouse = Warehouse(tmp_path, base_url, name=f"size_{customers}")
        sync_at(warehouse, START)
        sync_at(warehouse, START + timedelta(days=3))  # mid-cycle: every company has a place
        cycles = warehouse.state()[REFRESH_KEY]
        assert len(cycles) == len(readable(emulator))
        assert all("after" in cycle for cycle in cycles.values())
        sizes[customers] = len(json.dumps(cycles))
    # 20 companies of 25,000 customers hold 20 entries of the same size: far below 1 MB.
    per_company = max(sizes.values()) / 3
    assert sizes[1500] <= sizes[150] + 3 * 12  # a few more digits in the counts, no more
    assert 20 * per_company < 1_000_000 / 100


def test_a_company_whose_quota_share_cannot_carry_its_cycle_is_named_once(
    emulator: Emulator, base_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    sync_at(warehouse, START, attachment_refresh_days=0.01)
    caplog.set_level(logging.WARNING, logger="connector.attachments")

    summary = sync_at(warehouse, START + timedelta(minutes=1), attachment_refresh_days=0.01)

    # 0.01 days of a 1,000 x (1 + 3) / 3 daily share carry 13 listings: no company's 300 customers.
    warnings = [r.getMessage() for r in caplog.records if "Attachment refresh" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{len(readable(emulator))} company(ies)" in warnings[0]
    notes = [r["notes"] or "" for r in summary.status_rows]
    assert all("quota share carries a" in note for note in notes)
    assert summary.attachments_refreshed > 0  # and the refresh goes on


def test_refresh_days_zero_turns_the_refresh_off(emulator: Emulator, base_url: str, tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    sync_at(warehouse, START, attachment_refresh_days=0)
    emulator.clear_log()

    summary = sync_at(warehouse, START + timedelta(days=30), attachment_refresh_days=0)

    assert listings(emulator) == []
    assert summary.attachments_refreshed == 0


@pytest.mark.postgres
def test_postgres_retires_and_refreshes_as_duckdb_does(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    duck = Warehouse(tmp_path, base_url)
    pg = dlt.pipeline(
        pipeline_name="pg_follow",
        destination=dlt.destinations.postgres(credentials=postgres.url),
        dataset_name=f"codat_{uuid.uuid4().hex[:8]}",
        pipelines_dir=str(tmp_path / "pg_pipelines"),
    )
    options = {"api_key": API_KEY, "base_url": base_url, "max_attempts": 2, "backoff_factor": 0}

    with refresh_clock(START):
        duck.sync()
        run_sync(pg, **options)
    company = company_with_attachments(emulator)
    changed = customers_with(company)[:2]
    emulator.store.mutate(company.id, "detach", ids=changed)
    emulator.store.mutate(company.id, "modify", ids=changed[:1])
    change_attachments(emulator, readable(emulator)[1], count=2)
    with refresh_clock(START + timedelta(days=1)):
        duck_summary = duck.sync(refresh_attachments=True)
        pg_summary = run_sync(pg, refresh_attachments=True, **options)

    query = "SELECT company_id, connection_id, customer_id, id, is_deleted FROM {}.customer_attachments"
    con = postgres.connect()
    try:
        cursor = con.cursor()
        cursor.execute(query.format(pg.dataset_name))
        from_pg = sorted(cursor.fetchall())
        cursor.execute(
            "SELECT company_id, connection_id, customer_id, id "
            f"FROM {pg.dataset_name}.customer_attachments_with_customers"
        )
        pg_view = sorted(cursor.fetchall())
    finally:
        con.close()
    assert from_pg == sorted(duck.rows(query.format("codat")))
    assert pg_view == in_view(duck) == view_rows(emulator)
    assert (pg_summary.attachments_added, pg_summary.attachments_removed) == (
        duck_summary.attachments_added,
        duck_summary.attachments_removed,
    )
    assert duck_summary.attachments_removed == 4
