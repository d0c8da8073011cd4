"""The push benchmark's ideal: its polls counted by walking the looks, its bounds by hand."""

from __future__ import annotations

import pytest

from tests.benchmarks.push_bench import ideal, polls_per_row


def looks_until_settled(latency: float, delay: float, interval: float) -> int:
    """Walk the looks one by one: each sent `interval` after the last answer, answered `latency` later."""
    seen_at, looks = interval + latency, 1  # the first look waits an interval after the push's answer
    while seen_at < delay:
        seen_at += interval + latency
        looks += 1
    return looks


@pytest.mark.parametrize(
    ("latency", "delay", "interval"),
    [
        pytest.param(0.2, 0.5, 2.0, id="bench-settled-by-the-first-look"),
        pytest.param(0.2, 0.0, 2.0, id="settled-at-once"),
        pytest.param(0.2, 2.2, 2.0, id="settles-as-the-first-look-is-answered"),
        pytest.param(0.2, 2.3, 2.0, id="second-look"),
        pytest.param(0.2, 4.5, 2.0, id="third-look"),
        pytest.param(0.0, 0.5, 0.02, id="no-latency-short-interval"),
        pytest.param(0.5, 30.0, 2.0, id="slow-push"),
    ],
)
def test_polls_per_row_matches_walking_the_looks(latency, delay, interval):
    assert polls_per_row(latency, delay, interval) == looks_until_settled(latency, delay, interval)


def test_the_benchmarks_ideal_is_bound_by_codats_requests_a_minute():
    best = ideal([100] * 10, latency=0.2, push_delay=0.5, poll_interval=2.0)

    assert best.polls_per_row == 1
    assert best.requests == 10 * 2 + 1000 * 2  # connections and model per company; push and a look a row
    assert best.per_ip_bound_s == 120.2  # requests 1-1000 at 0 s, 1001-2000 at 60 s, 2001-2020 at 120 s
    assert best.slot_bound_s == 4.2  # 202 requests of a company, 10 at a time, 0.2 s each: 21 rounds
    assert best.chain_bound_s == 2.8  # connections, model, push, 2 s, look: 0.2 * 4 + 2
    assert (best.seconds, best.binding) == (120.2, "per-IP")


def test_a_small_run_is_bound_by_one_rows_chain():
    best = ideal([10] * 10, latency=0.2, push_delay=0.5, poll_interval=2.0)

    assert best.requests == 220
    assert best.per_ip_bound_s == 0.2  # within one window's 1,000
    assert best.slot_bound_s == 0.6  # 22 requests of a company: 3 rounds
    assert (best.seconds, best.binding) == (2.8, "chain")


@pytest.mark.parametrize(
    ("requests", "bound"),
    [
        pytest.param(1000, 0.2, id="one-full-window"),
        pytest.param(1002, 60.2, id="one-over"),
        pytest.param(2000, 60.2, id="two-full-windows"),
        pytest.param(2002, 120.2, id="three-windows"),
    ],
)
def test_the_per_ip_bound_counts_whole_windows(requests, bound):
    rows, rest = divmod(requests - 2, 2)  # one company: 2 planning requests, 2 a row
    assert rest == 0
    best = ideal([rows], latency=0.2, push_delay=0.5, poll_interval=2.0)

    assert best.requests == requests
    assert best.per_ip_bound_s == bound
