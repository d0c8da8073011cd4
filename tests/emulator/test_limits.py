"""Codat's rate limits over HTTP: headers on every answer, daily quota, concurrency, requests per IP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.utils import CodatSession, assert_error, basic_auth, customers_path

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
    assert emulator.stats()["refused"] == {"quota": 2, "concurrency": 0, "per_minute": 0}


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


def test_a_page_takes_longer_the_more_records_it_carries(codat, emulator):
    """`latency_per_record`: a page of 150 records waits 150 times the time; its slot is held meanwhile."""
    company_id = max(emulator.store.companies, key=lambda c: len(emulator.store.companies[c].customers))
    assert len(emulator.store.companies[company_id].customers) >= 150
    emulator.latency_per_record = 0.002  # 0.3 s for 150 records

    def timed(page_size: int) -> float:
        started = time.monotonic()
        answer = codat.get(customers_path(company_id), params={"pageSize": page_size})
        assert answer.status_code == 200
        assert len(answer.json()["results"]) == page_size
        return time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        big = pool.submit(timed, 150)
        deadline = time.monotonic() + 5
        while emulator.limiter.in_flight[company_id] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.limiter.in_flight[company_id] == 1  # the wait holds the company's slot
        assert big.result() >= 150 * 0.002
    assert timed(1) < 150 * 0.002
    assert emulator.limiter.in_flight == {}


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
    assert emulator.stats()["refused"] == {"quota": 0, "concurrency": 5, "per_minute": 0}
    assert emulator.limiter.in_flight == {}


# -- requests per client IP in a rolling window -----------------------------------------------

WINDOW = 2.0  # seconds: short, so that a test can see a window pass


@pytest.fixture
def per_minute(emulator):
    """Turn the per-IP limit on (tests set `per_minute_limit`); off again whatever the test does."""
    emulator.limiter.window_seconds = WINDOW
    yield emulator.limiter
    emulator.limiter.per_minute_limit = None
    emulator.limiter.window_seconds = 60.0


class FromAddress(HTTPAdapter):
    """Connects from another loopback address (all of 127.0.0.0/8 is this machine)."""

    def __init__(self, source_ip):
        self.source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source_ip, 0)
        super().init_poolmanager(*args, **kwargs)


def statuses(codat, path, count):
    return [codat.get(path).status_code for _ in range(count)]


def assert_per_minute_refusal(response, remaining):
    assert_error(response, 429, TOO_MANY)
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW
    assert response.headers["X-Rate-Limit-Remaining"] == str(remaining)
    assert response.headers["X-Rate-Limit-Reset"] == next_midnight()


def test_request_over_the_limit_gets_429_until_a_slot_frees(codat, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 3
    assert statuses(codat, path, 3) == [200, 200, 200]
    refused = codat.get(path)
    assert_per_minute_refusal(refused, 4000 - 3)
    time.sleep(int(refused.headers["Retry-After"]))  # as a client honouring Retry-After does
    assert codat.get(path).status_code == 200
    time.sleep(WINDOW)  # a whole window: every slot is free
    assert statuses(codat, path, 4) == [200, 200, 200, 429]
    assert emulator.stats()["refused"] == {"quota": 0, "concurrency": 0, "per_minute": 2}


def test_refused_requests_use_no_quota_and_no_slot(codat, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 2
    assert statuses(codat, path, 2) == [200, 200]
    for _ in range(5):
        assert_per_minute_refusal(codat.get("/companies"), 4000 - 2)
    assert emulator.limiter.used == 2
    stats = emulator.stats()
    assert stats["by_status"] == {"200": 2, "429": 5}
    assert stats["refused"] == {"quota": 0, "concurrency": 0, "per_minute": 5}
    assert stats["rate_limit"] == {"limit": 4000, "used": 2}


def test_the_quota_is_checked_before_the_per_minute_limit(codat, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 1
    emulator.limiter.daily_limit = 1
    assert statuses(codat, path, 3) == [200, 429, 429]
    assert emulator.stats()["refused"] == {"quota": 2, "concurrency": 0, "per_minute": 0}


def test_the_limit_can_change_at_any_time(codat, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 5
    assert statuses(codat, path, 3) == [200, 200, 200]
    per_minute.per_minute_limit = 2  # three already in the window: over the new limit
    assert_per_minute_refusal(codat.get(path), 4000 - 3)
    per_minute.per_minute_limit = None
    assert statuses(codat, path, 3) == [200, 200, 200]


def test_control_api_is_never_limited(codat, control, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 1
    assert codat.get(path).status_code == 200
    for _ in range(10):
        for route in ("/_emulator/health", "/_emulator/stats", "/_emulator/requests"):
            assert control.get(route).status_code == 200
    assert control.post("/_emulator/config", json={}).status_code == 200
    assert codat.get(path).status_code == 429
    assert [e["operation"] for e in emulator.request_log] == ["list-customers"] * 2


def test_the_client_address_is_what_is_counted(base_url, emulator, per_minute):
    """Connections share their address's window; another address has its own."""
    path = customers_path(next(iter(emulator.store.companies)))
    per_minute.per_minute_limit = 2
    with CodatSession(base_url) as first, CodatSession(base_url) as second, CodatSession(base_url) as other:
        other.mount("http://", FromAddress("127.0.0.2"))
        assert first.get(path).status_code == 200
        assert second.get(path).status_code == 200  # another connection from 127.0.0.1
        assert first.get(path).status_code == 429
        assert second.get(path).status_code == 429
        assert statuses(other, path, 3) == [200, 200, 429]
    log = [(e["client_ip"], e["status"]) for e in emulator.request_log]
    assert log == [("127.0.0.1", s) for s in (200, 200, 429, 429)] + [
        ("127.0.0.2", s) for s in (200, 200, 429)
    ]


def test_per_minute_limit_set_over_http(codat, control, emulator, per_minute):
    path = customers_path(next(iter(emulator.store.companies)))
    config = control.post("/_emulator/config", json={"per_minute_limit": 2, "window_seconds": WINDOW}).json()
    assert (config["per_minute_limit"], config["window_seconds"]) == (2, WINDOW)
    assert (per_minute.per_minute_limit, per_minute.window_seconds) == (2, WINDOW)
    assert statuses(codat, path, 3) == [200, 200, 429]
    assert (
        control.post("/_emulator/config", json={"per_minute_limit": None}).json()["per_minute_limit"] is None
    )
    assert statuses(codat, path, 3) == [200, 200, 200]
    assert control.post("/_emulator/config", json={"per_minute_limit": 0}).json()["per_minute_limit"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"per_minute_limit": -1},
        {"per_minute_limit": "ten"},
        {"per_minute_limit": True},
        {"window_seconds": 0},
    ],
    ids=["negative", "text", "boolean", "empty-window"],
)
def test_bad_per_minute_settings_are_400_and_change_nothing(control, emulator, body):
    response = control.post("/_emulator/config", json={"per_minute_limit": 7, **body})
    assert response.status_code == 400
    assert response.json()["error"]
    assert (emulator.limiter.per_minute_limit, emulator.limiter.window_seconds) == (None, 60.0)
