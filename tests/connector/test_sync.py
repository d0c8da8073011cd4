"""The sync's acceptance tests against the emulator, read back from a real DuckDB file."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from connector.emulator.emulator import Emulator
from tests.synctools import (
    Warehouse,
    attachment_keys,
    codat_instant,
    expected_customers,
    normalise,
    readable,
    requests_by,
)

CHILD_COUNTS = (
    ("customers__addresses", lambda r: len(r.get("addresses") or [])),
    ("customers__contacts", lambda r: len(r.get("contacts") or [])),
    (
        "customers__contacts__phone",
        lambda r: sum(len(c.get("phone") or []) for c in r.get("contacts") or []),
    ),
)


def test_full_load_holds_exactly_the_emulator_records(emulator: Emulator, base_url: str, tmp_path) -> None:
    emulator.reset(7, 6, 400)
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync()

    assert normalise(warehouse.customers()) == expected_customers(emulator)
    for table, count in CHILD_COUNTS:
        expected = sum(count(r) for c in readable(emulator) for r in c.customers.values())
        assert warehouse.rows(f"SELECT COUNT(*) FROM codat.{table}") == [(expected,)], table
    loaded = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert set(loaded) == attachment_keys(emulator)
    assert len(loaded) == len(attachment_keys(emulator))
    assert warehouse.rows("SELECT COUNT(*) FROM codat.companies") == [(6,)]
    statuses = Counter(row["status"] for row in summary.status_rows)
    assert statuses == {"ok": 3, "not_ready": 2, "skipped": 1}
    assert summary.customers_new == len(expected_customers(emulator))


def test_second_run_without_changes_loads_nothing_and_spends_one_request(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    emulator.clear_log()

    summary = warehouse.sync()

    assert summary.customers_new == summary.customers_updated == summary.customers_deleted == 0
    assert summary.attachments == 0
    assert [e["operation"] for e in emulator.request_log] == ["list-companies"]
    assert [row["status"] for row in summary.status_rows] == ["unchanged"] * 3
    assert normalise(warehouse.customers()) == expected_customers(emulator)


def test_codat_sync_without_changes_costs_at_most_one_request_per_company(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    for company in readable(emulator):
        emulator.sync(company.id)  # Codat synced, nothing changed
    emulator.clear_log()

    summary = warehouse.sync()

    assert summary.customers_new == summary.customers_updated == 0
    for company in readable(emulator):
        assert requests_by(emulator, "list-customers", company.id) == 1
        assert len([e for e in emulator.request_log if e["company_id"] == company.id]) == 1


@pytest.mark.parametrize(("modified", "deleted", "added"), [(4, 2, 3), (0, 0, 1), (30, 10, 5)])
def test_k_changes_load_exactly_those_k_within_the_request_bound(
    emulator: Emulator, base_url: str, tmp_path, modified: int, deleted: int, added: int
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync()
    company = readable(emulator)[0]
    deleted_before = {i for i, r in company.customers.items() if (r.get("metadata") or {}).get("isDeleted")}
    changed = set(emulator.store.mutate(company.id, "modify", count=modified))
    changed |= set(emulator.store.mutate(company.id, "delete", count=deleted))
    changed |= set(emulator.store.mutate(company.id, "add", count=added))
    k = len(changed)
    emulator.clear_log()

    summary = warehouse.sync()

    now_deleted = [i for i in changed if (company.customers[i].get("metadata") or {}).get("isDeleted")]
    newly_deleted = set(now_deleted) - deleted_before
    assert summary.customers_new == added
    assert bool(newly_deleted) == bool(deleted)  # the delete picks any customer, deleted ones too
    assert summary.customers_deleted == len(newly_deleted)
    assert summary.customers_new + summary.customers_updated + summary.customers_deleted == k
    own = [e for e in emulator.request_log if e["company_id"] == company.id]
    assert len(own) <= math.ceil(k / 5000) + k * len(company.accounting_connections)
    assert requests_by(emulator, "list-customer-attachments", company.id) == k
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    status = {r["company_id"]: r for r in summary.status_rows}
    assert status[company.id]["customers_loaded"] == k
    assert all(status[c.id]["status"] == "unchanged" for c in readable(emulator)[1:])


@pytest.mark.parametrize("page_size", [7, 50, 5000], ids=["page-7", "page-50", "page-5000"])
def test_company_restamped_at_one_instant_loads_completely(
    emulator: Emulator, base_url: str, tmp_path, page_size: int
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(page_size=page_size)
    company = readable(emulator)[0]
    emulator.store.mutate(company.id, "restamp")
    emulator.store.mutate(readable(emulator)[1].id, "restamp")

    summary = warehouse.sync(page_size=page_size)

    assert normalise(warehouse.customers()) == expected_customers(emulator)
    status = {r["company_id"]: r for r in summary.status_rows}
    assert status[company.id]["customers_loaded"] == len(company.customers)
    total = warehouse.rows("SELECT COUNT(*), COUNT(DISTINCT (company_id, id)) FROM codat.customers")
    assert total[0][0] == total[0][1]


def test_first_run_of_a_restamped_company_pages_the_tie_group(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    company = readable(emulator)[0]
    emulator.store.mutate(company.id, "restamp")
    warehouse = Warehouse(tmp_path, base_url)

    warehouse.sync(page_size=40, company_ids=[company.id])

    expected = {k: v for k, v in expected_customers(emulator).items() if k[0] == company.id}
    assert normalise(warehouse.customers()) == expected
    queries = [e["params"].get("query") for e in emulator.request_log if e["operation"] == "list-customers"]
    assert queries[0] is None
    assert queries[1].startswith("modifiedDate=")  # the tie group, paged by number


def test_continuous_changes_while_paging_lose_and_duplicate_nothing(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.latency = 0.002
    # Not the daily quota under test: a run chasing 300 changes a second, reading companies at
    # once and listing each changed customer's attachments, may spend the default 4,000 requests.
    emulator.limiter.daily_limit = 100_000
    companies = [c.id for c in readable(emulator)]
    before = expected_customers(emulator)
    emulator.mutator.start(companies, rate=300, duration=30, action="modify")
    warehouse = Warehouse(tmp_path, base_url)
    try:
        warehouse.sync(page_size=10)
    finally:
        emulator.mutator.stop()
    assert emulator.mutator.changes > 0

    loaded = normalise(warehouse.customers())
    for key, row in before.items():
        assert key in loaded, key
        assert loaded[key]["modified_date"] >= row["modified_date"], key
    total = warehouse.rows("SELECT COUNT(*), COUNT(DISTINCT (company_id, id)) FROM codat.customers")
    assert total[0][0] == total[0][1] == len(before)

    emulator.latency = 0.0
    warehouse.sync(page_size=10)
    assert normalise(warehouse.customers()) == expected_customers(emulator)


def test_companies_not_ready_are_recorded_and_the_others_load(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(7, 6, 300)
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync()

    assert summary.ok
    assert summary.failed == []
    rows = {r["company_id"]: r for r in summary.status_rows}
    by_state = {c.id: c for c in emulator.store.companies.values()}
    not_ready = {cid for cid, r in rows.items() if r["status"] == "not_ready"}
    unread = {
        cid for cid, c in by_state.items() if c.customers_status != "Complete" and c.accounting_connections
    }
    assert len(unread) == 2
    assert not_ready == unread
    for cid in not_ready:
        assert rows[cid]["http_status"] == 409
        assert rows[cid]["error"] == "The data set has not been requested."
        assert len(rows[cid]["correlation_id"]) == 32
        assert cid not in warehouse.state()["cursors"]
    skipped = [cid for cid, r in rows.items() if r["status"] == "skipped"]
    assert [by_state[cid].accounting_connections for cid in skipped] == [[]]
    stored = warehouse.rows("SELECT company_id, status, http_status FROM codat.sync_status")
    assert sorted(stored) == sorted((r["company_id"], r["status"], r["http_status"]) for r in rows.values())
    assert normalise(warehouse.customers()) == expected_customers(emulator)


def test_a_429_storm_is_ridden_out(emulator: Emulator, base_url: str, tmp_path) -> None:
    emulator.add_fault("429", count=3, retry_after="0", match="/data/customers")
    emulator.add_fault("503", count=1)
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(max_attempts=6)

    assert summary.ok
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    assert Counter(e["status"] for e in emulator.request_log)[429] == 3


def test_a_company_out_of_retries_fails_alone_and_catches_up_next_run(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    victim = readable(emulator)[1]
    emulator.add_fault("429", count=50, retry_after="0", match=f"/companies/{victim.id}/data/customers")
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(max_attempts=3)

    rows = {r["company_id"]: r for r in summary.status_rows}
    assert rows[victim.id]["status"] == "failed"
    assert rows[victim.id]["http_status"] == 429
    assert rows[victim.id]["requests"] == 3
    assert {r["status"] for cid, r in rows.items() if cid != victim.id} == {"ok"}
    assert victim.id not in warehouse.state()["cursors"]
    emulator.faults.clear()

    again = warehouse.sync()

    assert again.ok
    assert normalise(warehouse.customers()) == expected_customers(emulator)


def test_request_budget_defers_attachments_to_the_next_run(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    customers = sum(len(c.customers) for c in readable(emulator))

    first = warehouse.sync(request_budget=100)

    listed_first = requests_by(emulator, "list-customer-attachments")
    deferred = sum(r["attachments_deferred"] for r in first.status_rows)
    assert deferred > 0
    assert customers == deferred + listed_first
    assert {r["deferral_reason"] for r in first.status_rows if r["attachments_deferred"]} == {
        "request budget of 100 spent"
    }
    assert first.requests <= 100 + 3  # companies' first customer pages are not deferred
    watermarks = warehouse.state()["attachment_watermarks"]
    assert sum(span["listings"] for spans in watermarks.values() for span in spans) == deferred
    assert "attachment_backlog" not in warehouse.state()
    emulator.clear_log()

    second = warehouse.sync()

    assert requests_by(emulator, "list-customer-attachments") == deferred
    assert warehouse.state()["attachment_watermarks"] == {}
    assert second.customers_new == second.customers_updated == 0
    loaded = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert sorted(loaded) == sorted(attachment_keys(emulator))


def test_hard_delete_removes_deleted_customers(emulator: Emulator, base_url: str, tmp_path) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(hard_delete=True)
    company = readable(emulator)[0]
    gone = emulator.store.mutate(company.id, "delete", count=3)

    warehouse.sync(hard_delete=True)

    ids = {k[1] for k in warehouse.customers() if k[0] == company.id}
    assert not ids & set(gone)
    expected = {k for k, v in expected_customers(emulator).items() if not v["is_deleted"]}
    assert set(warehouse.customers()) == expected


def test_backfill_window_loads_only_that_window_and_keeps_cursors(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    warehouse = Warehouse(tmp_path, base_url)

    warehouse.sync(since="2023-01-01", until="2024-01-01T00:00:00Z")

    loaded = warehouse.customers()
    everyone = expected_customers(emulator)
    expected = {
        k for k, v in everyone.items() if v["modified_date"] is not None and v["modified_date"].year == 2023
    }
    assert 0 < len(expected) < len(everyone), "the window must hold some customers and leave some out"
    assert set(loaded) == expected
    assert warehouse.state().get("cursors", {}) == {}


def test_a_company_failing_halfway_is_read_on_from_there_and_nothing_counts_as_updated(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    victim = max(readable(emulator), key=lambda c: len(c.customers))
    total = len(victim.customers)
    assert total > 40, "the company needs more than two pages of 20"
    pages = f"/companies/{victim.id}/data/customers"
    emulator.add_fault("slow", count=1, delay=0, match=pages)  # the first page is answered
    emulator.add_fault("500", count=4, match=pages)  # every attempt at the second fails
    warehouse = Warehouse(tmp_path, base_url)

    first = warehouse.sync(page_size=20, attachments=False, max_attempts=4)

    assert first.failed == [victim.id]
    loaded = warehouse.rows(f"SELECT COUNT(*) FROM codat.customers WHERE company_id = '{victim.id}'")
    assert loaded == [(20,)]
    assert emulator.faults.faults == [], "every queued fault was consumed"
    emulator.clear_log()

    again = warehouse.sync(page_size=20, attachments=False)

    assert again.ok
    assert (again.customers_new, again.customers_updated) == (total - 20, 0)
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    reads = [e for e in emulator.request_log if e["operation"] == "list-customers"]
    first_read = next(e for e in reads if e["company_id"] == victim.id)
    bound = first_read["params"]["query"].removeprefix("modifiedDate>=")
    twentieth = sorted(codat_instant(r["modifiedDate"]) for r in victim.customers.values())[19]
    assert codat_instant(bound) == twentieth  # read on from the last page read, not from the start
