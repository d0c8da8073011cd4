"""Pacing to Codat's limits: the rate gate alone, then the client against the emulator's real limits."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from connector.client import CodatApiError, CodatClient
from connector.emulator.emulator import Emulator
from connector.pacing import CircuitBreaker, RateGate, retry_after_seconds
from connector.settings import RetryPolicy
from tests.synctools import Warehouse, readable
from tests.utils import API_KEY


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of times within any closed interval of `window` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] < t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize(
    ("limit", "window", "burst"), [(10, 6.0, 1), (10, 6.0, 4), (1000, 60.0, 100), (2, 1.0, 1)], ids=str
)
def test_no_window_of_the_length_plus_jitter_holds_more_than_the_limit(
    limit: int, window: float, burst: int
) -> None:
    fake = FakeTime()
    gate = RateGate(limit, window, burst=burst, jitter=0.25, clock=fake.clock, sleep=fake.sleep)
    sent = []
    for _ in range(3 * limit):
        gate.wait()
        sent.append(fake.now)

    assert limit - 1 <= most_in_any_window(sent, window + 0.25) <= limit  # tight, up to float rounding
    assert sent[:burst] == [1000.0] * burst  # the bucket's burst goes at once
    spacing = (window + 0.25) / (limit - burst)
    assert sent[-1] - sent[0] == pytest.approx((3 * limit - burst) * spacing)


def test_the_default_burst_is_a_tenth_of_the_limit() -> None:
    fake = FakeTime()
    gate = RateGate(1000, 60.0, jitter=0.25, clock=fake.clock, sleep=fake.sleep)
    sent = []
    for _ in range(200):  # one customer page per company of a 200-company account
        gate.wait()
        sent.append(fake.now)

    assert sent.count(1000.0) == 100
    assert sent[-1] - sent[0] == pytest.approx(100 * 60.25 / 900)  # 6.7 s, not the 12 s of no burst


def test_a_new_gate_right_after_another_exceeds_the_limit_by_its_burst_at_most() -> None:
    fake = FakeTime()
    sent = []
    for _ in range(2):  # two runs of one process, back to back
        gate = RateGate(10, 6.0, burst=3, jitter=0.25, clock=fake.clock, sleep=fake.sleep)
        for _ in range(25):
            gate.wait()
            sent.append(fake.now)

    assert 10 < most_in_any_window(sent, 6.25) <= 10 + 3


def test_idle_time_is_saved_up_to_the_burst_and_no_more() -> None:
    fake = FakeTime()
    gate = RateGate(10, 6.0, burst=3, jitter=0.25, clock=fake.clock, sleep=fake.sleep)
    gate.wait()
    fake.now += 3600  # an hour without requests
    sent = []
    for _ in range(30):
        gate.wait()
        sent.append(fake.now)

    assert sent[:3] == [sent[0]] * 3
    assert sent[3] > sent[0]
    assert most_in_any_window(sent, 6.25) <= 10


@pytest.mark.parametrize(("limit", "window", "burst"), [(1, 60.0, 1), (10, 0.0, 1), (10, 6.0, 10)], ids=str)
def test_a_gate_that_cannot_pace_is_refused(limit: int, window: float, burst: int) -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        RateGate(limit, window, burst=burst)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 0 ") == 0.0
    later = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    assert retry_after_seconds(later) == pytest.approx(7200, abs=5)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


# -- the circuit breaker's clock ----------------------------------------------------------------


def silent_breaker(fake: FakeTime) -> CircuitBreaker:
    """A breaker whose count rule stays out of the way: only silence (40 s) can open it."""
    return CircuitBreaker(failures=1000, seconds=0, silence=40.0, clock=fake.clock)


def timed_out(breaker: CircuitBreaker, fake: FakeTime, read_timeout: float = 30.0) -> str | None:
    """One attempt sent now that gets no answer within its read timeout."""
    with breaker.attempt():
        fake.sleep(read_timeout)
        return breaker.failed()


def test_an_api_silent_from_the_first_attempt_opens_it_at_the_first_failure_past_the_silence() -> None:
    fake = FakeTime()
    breaker = silent_breaker(fake)
    fake.sleep(500)  # the breaker was made long before the first request: not silence

    assert timed_out(breaker, fake) is None  # 30 s: one slow answer is retried
    fake.sleep(1.0)  # the retry's backoff counts: the run is waiting for the API
    assert timed_out(breaker, fake) == "no answer for 61 s while 2 attempts failed"


def test_answers_to_other_requests_keep_one_slow_request_going() -> None:
    fake = FakeTime()
    breaker = silent_breaker(fake)
    with breaker.attempt():  # a slow page, while listings in other threads are answered
        fake.sleep(25)
        with breaker.attempt():
            breaker.answered()
        fake.sleep(5)
        assert breaker.failed() is None
    fake.sleep(1.0)
    with breaker.attempt():
        fake.sleep(29)
        with breaker.attempt():
            breaker.answered()
        fake.sleep(1)
        assert breaker.failed() is None  # 61 s of trying, but the API answered 1 s ago


def test_time_the_run_spends_not_asking_is_not_silence() -> None:
    fake = FakeTime()
    breaker = silent_breaker(fake)
    with breaker.attempt():
        breaker.answered()
    fake.sleep(100)  # loading, or reading a company's pages out of the API's sight

    assert timed_out(breaker, fake) is None  # silent for 30 s, not 130


def test_silence_counts_from_an_answer_that_came_while_an_attempt_was_waiting() -> None:
    fake = FakeTime()
    breaker = silent_breaker(fake)
    with breaker.attempt():  # sent at 0, never answered
        fake.sleep(10)
        with breaker.attempt():
            breaker.answered()  # the last answer, at 10
        fake.sleep(20)
        with breaker.attempt():  # sent at 30, while the first still waits: no fresh start
            fake.sleep(20)
            assert breaker.failed() == "no answer for 40 s while 1 attempt failed"


def test_a_server_error_is_an_answer_for_the_silence_and_a_failure_for_the_count() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker(failures=5, seconds=10.0, silence=40.0, clock=fake.clock)
    opened = []
    for _ in range(5):
        with breaker.attempt():
            fake.sleep(30)  # a 503 after 30 s, five times: 150 s without a good answer
            opened.append(breaker.failed(answered=True))
        fake.sleep(1.0)

    assert opened == [None, None, None, None, "5 attempts in a row failed over 124 s"]


def test_a_good_answer_ends_both_the_streak_and_the_silence() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker(failures=3, seconds=0, silence=40.0, clock=fake.clock)
    opened = [timed_out(breaker, fake, 15.0) for _ in range(2)]
    with breaker.attempt():
        breaker.answered()  # at 30 s
    opened += [timed_out(breaker, fake, 15.0) for _ in range(3)]

    # Without the answer the third failure would open it: 3 in a row, and 45 s of silence.
    assert opened == [None, None, None, None, "3 attempts in a row failed over 30 s"]


@pytest.mark.parametrize("silence", [0.0, -1.0, float("nan")], ids=str)
def test_a_breaker_that_cannot_time_silence_is_refused(silence: float) -> None:
    with pytest.raises(ValueError, match="breaker_silence must be above 0 seconds"):
        CircuitBreaker(silence=silence)


# -- against the emulator ----------------------------------------------------------------------


def statuses(emulator: Emulator) -> Counter[int]:
    return Counter(e["status"] for e in emulator.request_log)


def test_pacing_keeps_a_rate_limited_emulator_at_zero_429s(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(7, 3, 90)
    emulator.latency = 0.005
    emulator.limiter.per_minute_limit, emulator.limiter.window_seconds = 30, 2.0
    unpaced = Warehouse(tmp_path, base_url, name="unpaced")
    unpaced.sync(requests_per_minute=None)
    assert statuses(emulator)[429] > 0, (
        "the emulator's per-minute limit must bind for this test to mean anything"
    )
    total = sum(statuses(emulator).values()) - statuses(emulator)[429]
    emulator.reset()
    emulator.clear_log()

    summary = Warehouse(tmp_path, base_url, name="paced").sync(requests_per_minute=30, rate_window=2.0)

    assert summary.ok
    assert statuses(emulator) == {200: total}
    assert summary.attachments == sum(
        len(items)
        for c in readable(emulator)
        for (conn, _), items in c.attachments.items()
        if conn in {x.id for x in c.accounting_connections}
    )


def test_requests_in_flight_per_company_stay_within_the_emulator_limit(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.latency = 0.01
    emulator.limiter.max_concurrent = 2
    Warehouse(tmp_path, base_url, name="three").sync(attachment_concurrency=3)
    assert statuses(emulator)[429] > 0, (
        "three in flight must exceed the emulator's two for this test to mean anything"
    )
    emulator.reset()
    emulator.limiter.max_concurrent = 3
    emulator.clear_log()

    summary = Warehouse(tmp_path, base_url, name="within").sync(attachment_concurrency=3)

    assert summary.ok
    assert statuses(emulator)[429] == 0


def test_the_client_reads_the_daily_quota_left_from_every_answer(emulator: Emulator, base_url: str) -> None:
    emulator.limiter.daily_limit = 50
    client = CodatClient(API_KEY, base_url=base_url)
    company = readable(emulator)[0]

    client.get_company(company.id)
    client.data_status(company.id)
    client.get_company(company.id)

    assert client.pacer.quota.remaining == 50 - 3
    assert client.pacer.quota.spent_for is None


def test_a_429_asking_for_hours_is_final_at_once(emulator: Emulator, base_url: str) -> None:
    company = readable(emulator)[0]
    emulator.add_fault("429", count=5, retry_after="7200", match=f"/companies/{company.id}")
    client = CodatClient(
        API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_retry_wait=60)
    )

    with pytest.raises(CodatApiError) as failure:
        client.get_company(company.id)

    assert (failure.value.status, failure.value.retry_after) == (429, 7200)
    assert client.pacer.quota.spent_for == 7200
    assert str(client.stop_cause) == "daily quota spent: Retry-After 7200 s"
    with pytest.raises(CodatApiError) as not_sent:
        client.data_status(company.id)
    assert not_sent.value.stop_cause is not None
    assert not_sent.value.stop_cause.kind == "daily quota spent"
    assert len(emulator.request_log) == 1


def test_a_429_asking_for_seconds_is_retried(emulator: Emulator, base_url: str) -> None:
    company = readable(emulator)[0]
    emulator.add_fault("429", count=2, retry_after="0", match=f"/companies/{company.id}")
    client = CodatClient(
        API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_retry_wait=60)
    )

    assert client.get_company(company.id)["id"] == company.id
    assert [e["status"] for e in emulator.request_log] == [429, 429, 200]
    assert client.pacer.quota.spent_for is None
