"""Attachment work left for the next run: spent quota, budget, old backlog state, crashes, state size."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

import duckdb
import pytest

from connector.emulator.emulator import Emulator
from connector.watermarks import MAX_SKIP, MAX_SPANS
from tests import children
from tests.attachmenttools import attachment_rows, every_listing, kill_after_listings, listings, loaded
from tests.synctools import Warehouse, expected_customers, normalise, readable
from tests.utils import API_KEY, ROOT

REPO = ROOT
QUOTA_SPENT = "daily quota spent: Retry-After 7200 s"


def deferred(summary) -> int:
    return sum(r["attachments_deferred"] for r in summary.status_rows)


def reasons(summary) -> set[str]:
    return {r["deferral_reason"] for r in summary.status_rows if r["attachments_deferred"]}


def spans(warehouse: Warehouse) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = warehouse.state()["attachment_watermarks"]
    return found


def test_a_spent_quota_mid_listing_defers_the_rest_and_the_next_run_lists_exactly_them(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.latency = 0.002
    allowed = 60  # listings answered before the quota runs out; every later one gets 429 for hours
    emulator.add_fault("slow", count=allowed, delay=0, match="/attachments")
    emulator.add_fault("429", count=100_000, retry_after="7200", match="/attachments")
    warehouse = Warehouse(tmp_path, base_url)
    everything = every_listing(emulator)

    first = warehouse.sync()

    done = set(listings(emulator))
    refused = listings(emulator, status=429)
    assert len(done) == allowed
    assert refused
    assert len(set(refused)) == len(refused)  # final at once: no refused listing retried
    assert first.failed == []  # the companies did not fail: their listings wait
    assert str(first.stopped) == QUOTA_SPENT
    assert first.exit_code() == 4
    # The spent quota stopped every request, customer pages too: what was read is exact.
    expected = expected_customers(emulator)
    read = normalise(warehouse.customers())
    assert read
    assert {key: expected[key] for key in read} == read
    listable = {listing for listing in everything if (listing[0], listing[2]) in read}
    assert deferred(first) == len(listable) - allowed
    assert reasons(first) == {QUOTA_SPENT}
    assert loaded(warehouse) == attachment_rows(emulator, only=done)
    assert all(len(s) <= MAX_SPANS for s in spans(warehouse).values())
    emulator.faults.clear()
    emulator.clear_log()

    second = warehouse.sync()

    assert sorted(listings(emulator)) == sorted(everything - done)
    assert loaded(warehouse) == attachment_rows(emulator)
    assert spans(warehouse) == {}
    assert deferred(second) == 0
    assert normalise(warehouse.customers()) == expected
    assert second.customers_new == len(expected) - len(read)
    assert second.customers_updated == 0


def test_listings_stop_at_the_daily_quota_reserve_without_a_single_429(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    reserve, listable = 5, 80
    emulator.limiter.daily_limit = 1 + 3 + listable + reserve  # companies, a page each, listings, reserve
    warehouse = Warehouse(tmp_path, base_url)
    everything = every_listing(emulator)

    first = warehouse.sync(quota_reserve=reserve)

    done = set(listings(emulator))
    assert Counter(e["status"] for e in emulator.request_log)[429] == 0
    # A page still on its way when a listing starts is not in the count Codat sent back yet:
    # listings may take up to the 3 pages' share, and the pages then take it from the reserve.
    # A listing answered but not yet finished counts twice: listings may stop up to the 30
    # in flight (3 companies x 10) early, never late.
    assert emulator.limiter.used <= emulator.limiter.limit - reserve + 3
    assert listable - 30 <= len(done) <= listable + 3
    assert deferred(first) == len(everything) - len(done)
    assert {r.split(": ")[0] for r in reasons(first)} == {"daily quota spent"}
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    emulator.limiter.daily_limit = None
    emulator.limiter.reset()
    emulator.clear_log()

    warehouse.sync(quota_reserve=reserve)

    assert sorted(listings(emulator)) == sorted(everything - done)
    assert loaded(warehouse) == attachment_rows(emulator)
    assert spans(warehouse) == {}


def test_deferred_work_costs_state_per_company_not_per_customer(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    figures = {}
    for customers in (150, 1500):
        emulator.reset(7, 3, customers)
        warehouse = Warehouse(tmp_path, base_url, name=f"account_{customers}")
        summary = warehouse.sync(request_budget=30)
        figures[customers] = (
            deferred(summary),
            len(json.dumps(spans(warehouse))),
            len(json.dumps(warehouse.state())),
            sum(len(s) for s in spans(warehouse).values()),
        )
    (few, few_bytes, few_state, _), (many, many_bytes, many_state, many_spans) = figures.values()

    assert many >= 10 * few > 0  # ten times the deferred customers ...
    assert many_bytes < 2 * few_bytes  # ... in about the same state
    assert many_state < 2 * few_state
    assert many_spans <= 3 * MAX_SPANS
    assert many_bytes <= 3 * MAX_SPANS * (200 + MAX_SKIP * 60)


def test_a_pending_watermark_survives_changes_between_runs(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(request_budget=60)
    assert deferred_companies(warehouse), "the budget must leave work for this test to mean anything"
    for company in readable(emulator):
        emulator.store.mutate(company.id, "modify", count=15)
        emulator.store.mutate(company.id, "delete", count=4)
        emulator.store.mutate(company.id, "add", count=3)

    summary = warehouse.sync()

    assert loaded(warehouse) == attachment_rows(emulator)
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    assert spans(warehouse) == {}
    assert deferred(summary) == 0


def deferred_companies(warehouse: Warehouse) -> set[str]:
    return set(spans(warehouse))


# The previous version kept one [connection id, customer id] task per deferred listing.
def old_backlog(emulator: Emulator, per_company: int) -> dict[str, list[list[str]]]:
    backlog = {}
    for company in readable(emulator):
        [connection] = company.accounting_connections
        with_files = sorted(
            c for (conn, c), items in company.attachments.items() if conn == connection.id and items
        )
        backlog[company.id] = [[connection.id, customer_id] for customer_id in with_files[:per_company]]
    return backlog


def plant_old_backlog(warehouse: Warehouse, backlog: dict[str, list[list[str]]]) -> None:
    """Write the old state key, and drop the rows it names, as an old run that stopped would leave."""
    with warehouse.pipeline().managed_state() as state:
        state["sources"]["codat"]["attachment_backlog"] = backlog
    with duckdb.connect(str(warehouse.db)) as con:
        for company_id, pairs in backlog.items():
            for connection_id, customer_id in pairs:
                con.execute(
                    "DELETE FROM codat.customer_attachments"
                    " WHERE company_id = ? AND connection_id = ? AND customer_id = ?",
                    [company_id, connection_id, customer_id],
                )


def test_an_old_backlog_state_is_listed_once_then_dropped(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    backlog = old_backlog(emulator, per_company=4)
    plant_old_backlog(warehouse, backlog)
    assert len(loaded(warehouse)) < len(attachment_rows(emulator))
    emulator.clear_log()

    summary = warehouse.sync()

    expected = sorted((c, conn, cust) for c, pairs in backlog.items() for conn, cust in pairs)
    assert sorted(listings(emulator)) == expected
    assert loaded(warehouse) == attachment_rows(emulator)
    assert "attachment_backlog" not in warehouse.state()
    assert spans(warehouse) == {}
    assert deferred(summary) == 0
    emulator.clear_log()

    warehouse.sync()

    assert listings(emulator) == []


def test_an_old_backlog_beyond_the_budget_shrinks_and_finishes_next_run(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    backlog = old_backlog(emulator, per_company=4)
    plant_old_backlog(warehouse, backlog)
    emulator.clear_log()

    first = warehouse.sync(request_budget=1 + 5)  # the companies' page, and at most 5 of the 12 listings

    left = warehouse.state()["attachment_backlog"]
    listed = len(listings(emulator))
    assert 0 < listed <= 5  # 4 when the companies' page was counted only after the fifth started
    assert first.requests <= 1 + 5 + 1
    assert sum(len(pairs) for pairs in left.values()) == 12 - listed == deferred(first)
    assert all(pair in backlog[c] for c, pairs in left.items() for pair in pairs)
    emulator.clear_log()

    warehouse.sync()

    assert sorted(listings(emulator)) == sorted(
        (c, conn, cust) for c, pairs in left.items() for conn, cust in pairs
    )
    assert "attachment_backlog" not in warehouse.state()
    assert loaded(warehouse) == attachment_rows(emulator)


# A sync in a child process, killed with SIGKILL while it lists attachments.
CHILD = """
import os, sys
import dlt
from connector.sync import run_sync
base_url, db, pipelines_dir, name = sys.argv[1:5]
pipeline = dlt.pipeline(name, destination=dlt.destinations.duckdb(db), dataset_name="codat",
                        pipelines_dir=pipelines_dir)
run_sync(pipeline, api_key=os.environ["KEY"], base_url=base_url, backoff_factor=0.01)
"""


def test_a_run_killed_while_listing_a_watermark_loses_no_listing(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(request_budget=40)
    before = spans(warehouse)
    assert before, "the budget must leave work for this test to mean anything"
    emulator.latency = 0.01
    emulator.clear_log()
    env = {**os.environ, "KEY": API_KEY, "PYTHONPATH": str(REPO)}
    args = [base_url, str(warehouse.db), str(warehouse.pipelines_dir), warehouse.name]
    child = children.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=tmp_path)
    kill_after_listings(child, emulator, 20)
    assert spans(warehouse) == before  # the killed run committed nothing
    emulator.latency = 0.0

    warehouse.sync()

    assert loaded(warehouse) == attachment_rows(emulator)
    assert spans(warehouse) == {}


@pytest.mark.parametrize("budget", [25, 90], ids=["budget-25", "budget-90"])
def test_runs_under_a_budget_finish_every_listing_in_a_few_runs(
    emulator: Emulator, base_url: str, tmp_path, budget: int
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    everything = every_listing(emulator)
    listed: Counter[tuple[str, str, str]] = Counter()
    for _ in range(40):
        emulator.clear_log()
        warehouse.sync(request_budget=budget)
        listed.update(listings(emulator))
        if not spans(warehouse):
            break

    assert spans(warehouse) == {}
    assert set(listed) == everything
    # A span keeps at most MAX_SKIP of the customers listed out of order inside it: under a
    # loaded machine a run may list more than that past the first one it deferred, and the next
    # lists those again (by design: the state stays small). Never more, and never one twice over.
    again = {listing: n for listing, n in listed.items() if n > 1}
    assert max(listed.values()) <= 2
    assert len(again) <= MAX_SKIP * len(readable(emulator)), again
    assert loaded(warehouse) == attachment_rows(emulator)


def test_a_company_left_out_of_a_run_keeps_its_watermark_for_a_later_one(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(request_budget=30)
    before = spans(warehouse)
    assert len(before) == 3, "every company must have work left for this test to mean anything"
    chosen = readable(emulator)[1].id
    everything = every_listing(emulator)
    emulator.clear_log()

    summary = warehouse.sync(company_ids=[chosen])

    assert {company for company, _, _ in listings(emulator)} == {chosen}
    assert spans(warehouse) == {c: s for c, s in before.items() if c != chosen}
    assert {r["company_id"] for r in summary.status_rows} == {chosen}
    emulator.clear_log()

    warehouse.sync()

    assert {company for company, _, _ in listings(emulator)} == set(before) - {chosen}
    assert spans(warehouse) == {}
    assert loaded(warehouse) == attachment_rows(emulator)
    assert {(c, conn, cust) for c, conn, cust, _ in loaded(warehouse)} <= everything
