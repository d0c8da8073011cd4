"""The emulator's control API over HTTP: reset, mutations, sync, config, stats and the request log."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.utils import customers_path


def snapshot(codat):
    """Every company id with its customers by id, read over the Codat API."""
    companies = codat.get("/companies", params={"pageSize": 100}).json()["results"]
    account = {}
    for company in companies:
        page = codat.get(customers_path(company["id"]), params={"pageSize": 5000})
        account[company["id"]] = (
            {r["id"]: r for r in page.json()["results"]} if page.status_code == 200 else None
        )
    return account


def instant(text):
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def latest(records):
    return max(instant(r["modifiedDate"]) for r in records.values())


# -- reset ------------------------------------------------------------------------------------


def test_reset_with_the_same_seed_regenerates_the_same_account(codat, control):
    sizing = {"seed": 11, "companies": 4, "customers": 120}
    assert control.post("/_emulator/reset", json=sizing).json() == {"companies": 4}
    first = snapshot(codat)
    control.post("/_emulator/reset", json=sizing)
    second = snapshot(codat)
    assert second == first
    assert len(first) == 4
    assert sum(len(c) for c in first.values()) == 120


def test_reset_with_another_seed_changes_the_ids(codat, control):
    control.post("/_emulator/reset", json={"seed": 11, "companies": 4, "customers": 120})
    first = snapshot(codat)
    control.post("/_emulator/reset", json={"seed": 12, "companies": 4, "customers": 120})
    second = snapshot(codat)
    assert set(first).isdisjoint(second)
    assert sum(len(c) for c in second.values()) == 120


def test_reset_without_a_body_keeps_the_sizing_and_undoes_changes(codat, control, emulator):
    before = snapshot(codat)
    company_id = next(iter(before))
    emulator.store.mutate(company_id, "add", count=3)
    emulator.add_fault("500", count=9)
    assert control.post("/_emulator/reset").json() == {"companies": 3}
    assert snapshot(codat) == before
    assert emulator.faults.faults == []
    assert [e["status"] for e in emulator.request_log] == [200] * 4


def test_reset_with_states_creates_the_special_companies(control):
    control.post("/_emulator/reset", json={"seed": 7, "companies": 6, "customers": 100})
    account = control.get("/_emulator/account").json()
    assert [c["customers_status"] for c in account] == [
        "Complete",
        "Complete",
        "NotRead",
        "NotRead",
        "Complete",
        "Fetching",
    ]
    assert [[x["sourceType"] for x in c["connections"]] for c in account] == [
        ["Accounting"],
        ["Accounting"],
        ["Accounting"],
        ["Banking"],
        ["Accounting", "Banking"],
        ["Accounting"],
    ]
    assert [c["customers"] for c in account][2:4] == [0, 0]


# -- one-off mutations ------------------------------------------------------------------------


@pytest.fixture
def company_id(emulator):
    return next(iter(emulator.store.companies))


def mutate(control, **body):
    response = control.post("/_emulator/mutate", json=body)
    assert response.status_code == 200
    return response.json()


def test_modify_changes_exactly_the_named_count(codat, control, company_id):
    before = snapshot(codat)[company_id]
    changed = mutate(control, company_id=company_id, action="modify", count=3)["changed"][company_id]
    after = snapshot(codat)[company_id]
    assert len(set(changed)) == 3
    assert set(after) == set(before)
    assert sorted(cid for cid in after if after[cid] != before[cid]) == sorted(changed)
    stamps = {after[cid]["modifiedDate"] for cid in changed}
    assert len(stamps) == 1
    assert instant(stamps.pop()) > latest(before)
    for cid in changed:
        assert after[cid]["customerName"] != before[cid]["customerName"]


def test_delete_flags_the_record_and_keeps_its_status(codat, control, company_id):
    before = snapshot(codat)[company_id]
    target = sorted(before)[3]
    body = mutate(
        control, company_id=company_id, action="delete", ids=[target], timestamp="2030-05-05T05:05:05Z"
    )
    assert body == {"changed": {company_id: [target]}}
    record = codat.get(f"{customers_path(company_id)}/{target}").json()
    assert record["metadata"] == {"isDeleted": True}
    assert record["status"] == before[target]["status"]
    assert record["modifiedDate"] == "2030-05-05T05:05:05Z"
    assert len(snapshot(codat)[company_id]) == len(before)


def test_add_creates_new_customers(codat, control, company_id):
    before = snapshot(codat)[company_id]
    added = mutate(control, company_id=company_id, action="add", count=2)["changed"][company_id]
    after = snapshot(codat)[company_id]
    assert set(after) == set(before) | set(added)
    assert len(after) == len(before) + 2
    for cid in added:
        assert after[cid]["metadata"] == {"isDeleted": False}
        assert after[cid]["status"] == "Active"


def test_restamp_gives_every_customer_one_modified_date(codat, control, company_id):
    before = snapshot(codat)[company_id]
    mutate(control, company_id=company_id, action="restamp", timestamp="2031-01-01T00:00:00Z")
    after = snapshot(codat)[company_id]
    assert {r["modifiedDate"] for r in after.values()} == {"2031-01-01T00:00:00Z"}
    assert {cid: {**r, "modifiedDate": None} for cid, r in after.items()} == {
        cid: {**r, "modifiedDate": None} for cid, r in before.items()
    }
    company = codat.get(f"/companies/{company_id}").json()
    assert company["lastSync"] == "2031-01-01T00:00:00Z"


def test_mutate_without_a_company_changes_every_readable_company(control, emulator):
    body = mutate(control, action="modify", count=1)
    assert sorted(body["changed"]) == sorted(emulator.store.companies)
    assert all(len(ids) == 1 for ids in body["changed"].values())


@pytest.mark.parametrize(
    "body",
    [
        {"action": "explode"},
        {"company_id": "no-such-company", "action": "modify"},
        {"action": "delete", "ids": ["no-such-customer"]},
        {"action": "modify", "rate": 5, "duration": 0},
    ],
    ids=["unknown-action", "unknown-company", "unknown-customer", "zero-duration"],
)
def test_bad_mutations_are_400(control, company_id, body):
    response = control.post("/_emulator/mutate", json={"company_id": company_id, **body})
    assert response.status_code == 400
    assert response.json()["error"]


# -- continuous mutation ----------------------------------------------------------------------


def test_continuous_mutation_runs_until_stopped(codat, control, emulator, company_id):
    before = snapshot(codat)[company_id]
    started = mutate(control, company_id=company_id, action="modify", rate=200, duration=30)
    assert started == {"started": True, "company_ids": [company_id]}
    deadline = time.monotonic() + 5
    while emulator.mutator.changes < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = mutate(control, action="stop")
    changes = stopped["changes"]
    assert changes >= 5
    after = snapshot(codat)[company_id]
    moved = [cid for cid in after if after[cid]["modifiedDate"] != before[cid]["modifiedDate"]]
    assert 1 <= len(moved) <= changes
    assert latest(after) > latest(before)
    assert control.get("/_emulator/stats").json()["mutations"] == changes
    assert snapshot(codat)[company_id] == after  # nothing changes once stopped


def test_continuous_mutation_stops_by_itself_after_its_duration(control, emulator, company_id):
    mutate(control, company_id=company_id, action="add", rate=100, duration=0.2)
    time.sleep(0.3)  # the duration, and a margin for the last change
    changes = emulator.mutator.changes
    total = len(emulator.store.companies[company_id].customers)
    time.sleep(0.1)
    assert emulator.mutator.changes == changes
    assert len(emulator.store.companies[company_id].customers) == total
    assert 1 <= changes <= 25


# -- sync, config ---------------------------------------------------------------------------


def test_sync_moves_last_sync_and_data_status(codat, control, company_id):
    before = codat.get(f"/companies/{company_id}/dataStatus").json()["customers"]["lastSuccessfulSync"]
    assert control.post("/_emulator/sync", json={"company_id": company_id}).json() == {"applied": 0}
    after = codat.get(f"/companies/{company_id}/dataStatus").json()["customers"]
    assert instant(after["lastSuccessfulSync"]) > instant(before)
    assert codat.get(f"/companies/{company_id}").json()["lastSync"] == after["lastSuccessfulSync"]


def test_config_changes_and_reports_the_settings(control, emulator):
    body = {
        "latency": 0.0,
        "latency_per_record": 0.0,
        "daily_limit": 50,
        "push_delay": 0.1,
        "max_concurrent": 4,
        "per_minute_limit": 30,
        "window_seconds": 2.5,
        "webhook_url": None,  # no webhooks (tests/emulator/test_webhooks.py sends them)
    }
    assert control.post("/_emulator/config", json=body).json() == body
    limiter = emulator.limiter
    assert (limiter.daily_limit, emulator.ledger.delay, limiter.max_concurrent) == (50, 0.1, 4)
    assert (limiter.per_minute_limit, limiter.window_seconds) == (30, 2.5)
    assert control.post("/_emulator/config", json={}).json() == body


def test_unknown_control_route_is_404_listing_the_routes(control):
    response = control.get("/_emulator/nothing-here")
    assert response.status_code == 404
    assert "POST /_emulator/reset" in response.json()["error"]


def test_malformed_control_body_is_400(control):
    response = control.post("/_emulator/reset", data=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 400


# -- stats and the request log --------------------------------------------------------------


def test_stats_count_requests_per_company_operation_and_status(codat, control, emulator):
    first, second = list(emulator.store.companies)[:2]
    codat.get(customers_path(first))
    codat.get(customers_path(first), params={"page": 2})
    codat.get(f"{customers_path(second)}/no-such-id")
    codat.get("/companies")
    codat.get(f"/companies/{second}/dataStatus")
    stats = control.get("/_emulator/stats").json()
    assert stats["requests"] == 5
    assert stats["by_operation"] == {
        "list-customers": 2,
        "get-customer": 1,
        "list-companies": 1,
        "get-companies-data-status": 1,
    }
    assert stats["by_company"] == {first: 2, second: 2}
    assert stats["by_status"] == {"200": 4, "404": 1}
    assert stats["refused"] == {"quota": 0, "concurrency": 0, "per_minute": 0}
    assert stats["rate_limit"] == {"limit": 4000, "used": 5}


def test_request_log_records_each_request_in_order(codat, control, emulator):
    company_id = next(iter(emulator.store.companies))
    emulator.add_fault("503")
    codat.get(customers_path(company_id), params={"pageSize": 3, "query": "status=Active"})
    codat.get(customers_path(company_id), params={"page": 2, "pageSize": 3})
    log = control.get("/_emulator/requests").json()
    assert log == [
        {
            "method": "GET",
            "path": customers_path(company_id),
            "params": {"pageSize": "3", "query": "status=Active"},
            "operation": "list-customers",
            "company_id": company_id,
            "client_ip": "127.0.0.1",
            "status": 503,
            "fault": "503",
            "refused": None,
        },
        {
            "method": "GET",
            "path": customers_path(company_id),
            "params": {"page": "2", "pageSize": "3"},
            "operation": "list-customers",
            "company_id": company_id,
            "client_ip": "127.0.0.1",
            "status": 200,
            "fault": None,
            "refused": None,
        },
    ]
    assert control.delete("/_emulator/requests").json() == {}
    assert control.get("/_emulator/requests").json() == []
    assert control.get("/_emulator/stats").json()["requests"] == 0
