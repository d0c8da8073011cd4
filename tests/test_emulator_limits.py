"""Codat's rate limits over HTTP: headers on every answer, the daily quota, per-company concurrency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.conftest import assert_error, basic_auth, customers_path

RATE_HEADERS = ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset")
TOO_MANY = "You have made too many requests in a given amount of time; please retry later."


def next_midnight() -> str:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return f"{tomorrow.isoformat()}T00:00:00Z"


def test_every_codat_answer_carries_rate_limit_headers(codat, emulator):
    company_id, other = list(emulator.store.companies)[:2]
    emulator.add_fault("500", match=other)
    answers = [
        codat.get(customers_path(company_id)),  # 200
        codat.get(customers_path(company_id), params={"pageSize": 0}),  # 400
        codat.get("/companies/846ed55c-974b-4392-a1f1-87b6fdbf3c5e"),  # 404
        codat.get("/companies"),  # 200, no company
        codat.get(f"/companies/{other}"),  # 500 from the fault
    ]
    assert [a.status_code for a in answers] == [200, 400, 404, 200, 500]
    limit = emulator.limiter.limit
    assert limit == 4000  # 1,000 x (1 + 3 companies)
    for number, answer in enumerate(answers, start=1):
        assert answer.headers["X-Rate-Limit-Limit"] == "4000"
        assert answer.headers["X-Rate-Limit-Remaining"] == str(limit - number)
        assert answer.headers["X-Rate-Limit-Reset"] in (
            next_midnight(),
            answers[0].headers["X-Rate-Limit-Reset"],
        )


def test_control_requests_are_not_counted(codat, control, emulator):
    company_id = next(iter(emulator.store.companies))
    first = codat.get(customers_path(company_id)).headers["X-Rate-Limit-Remaining"]
    for path in ("/_emulator/health", "/_emulator/stats", "/_emulator/account"):
        assert control.get(path).status_code == 200
    second = codat.get(customers_path(company_id)).headers["X-Rate-Limit-Remaining"]
    assert int(first) - int(second) == 1


def exhaust(codat, company_id, limit):
    remaining = [
        codat.get(customers_path(company_id)).headers["X-Rate-Limit-Remaining"] for _ in range(limit)
    ]
    assert remaining == [str(n) for n in range(limit - 1, -1, -1)]


def assert_quota_refusal(response, limit):
    assert_error(response, 429, TOO_MANY)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 86_401
    assert response.headers["X-Rate-Limit-Limit"] == str(limit)
    assert response.headers["X-Rate-Limit-Remaining"] == "0"


def test_daily_limit_set_in_process(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    emulator.limiter.daily_limit = 3
    exhaust(codat, company_id, 3)
    for path in (customers_path(company_id), "/companies"):
        assert_quota_refusal(codat.get(path), 3)
    assert emulator.stats()["by_status"] == {"200": 3, "429": 2}


def test_daily_limit_set_over_http_and_reset(codat, control, emulator):
    company_id = next(iter(emulator.store.companies))
    config = control.post("/_emulator/config", json={"daily_limit": 2}).json()
    assert config["daily_limit"] == 2
    exhaust(codat, company_id, 2)
    assert_quota_refusal(codat.get(customers_path(company_id)), 2)
    control.post("/_emulator/reset", json={})
    assert codat.get(customers_path(company_id)).status_code == 200


def test_refusals_do_not_consume_faults(codat, emulator):
    company_id = next(iter(emulator.store.companies))
    emulator.limiter.daily_limit = 0
    emulator.add_fault("500")
    assert codat.get(customers_path(company_id)).status_code == 429
    emulator.limiter.daily_limit = None
    assert codat.get(customers_path(company_id)).status_code == 500


def slow_down(emulator, how, company_id):
    if how == "slow-fault":
        emulator.add_fault("slow", delay=1.0, count=15, match=company_id)
    else:
        emulator.latency = 1.0


@pytest.mark.parametrize("how", ["slow-fault", "latency"])
def test_more_than_ten_concurrent_requests_for_one_company_get_429(emulator, base_url, how):
    """Fifteen slow requests at once: ten are served, five refused; other companies are unaffected."""
    busy, other = list(emulator.store.companies)[:2]
    slow_down(emulator, how, busy)

    def get(company_id):  # one connection per request, as parallel clients have
        return requests.get(base_url + customers_path(company_id), headers={"Authorization": basic_auth()})

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(get, busy) for _ in range(15)]
        deadline = time.monotonic() + 5
        while emulator.limiter.in_flight[busy] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.limiter.in_flight[busy] == 10
        elsewhere = pool.submit(get, other).result()
        answers = [f.result() for f in futures]
    assert elsewhere.status_code == 200
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 10 + [429] * 5
    for refused in (a for a in answers if a.status_code == 429):
        assert_error(refused, 429, TOO_MANY)
        assert refused.headers["Retry-After"] == "1"
    assert emulator.stats()["by_company"] == {busy: 15, other: 1}
    assert emulator.limiter.in_flight == {}
