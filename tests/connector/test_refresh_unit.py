"""The refresh cycle's arithmetic: each run's share, its state form, the cycle a quota carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connector.refresh import Cycle, cycle_days

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


@pytest.mark.parametrize(
    ("elapsed", "done", "due"),
    [
        (timedelta(0), 0, 0),
        (timedelta(hours=1), 0, 5),  # 840 / 168
        (timedelta(days=1), 0, 120),  # a seventh
        (timedelta(days=1), 100, 20),  # what earlier runs of the cycle did is taken off
        (timedelta(days=1), 130, 0),  # ahead of the share: nothing
        (timedelta(days=3, hours=12), 120, 300),  # half the cycle, less a day's worth
        (timedelta(days=7), 700, None),  # the period is over: everything left
        (timedelta(days=30), 0, None),  # after a long pause too
    ],
)
def test_a_run_takes_its_share_of_the_cycle(elapsed: timedelta, done: int, due: int | None) -> None:
    cycle = Cycle(START, (START - timedelta(days=400), "x") if done else None, done, 840)

    assert cycle.due(START + elapsed, WEEK) == due


def test_a_fresh_count_wins_over_the_stored_one() -> None:
    cycle = Cycle(START, None, 0, 840)

    assert cycle.due(START + timedelta(days=1), WEEK, total=1400) == 200


def test_without_any_count_one_customer_is_due_to_read_a_page_that_counts() -> None:
    assert Cycle(START).due(START + timedelta(minutes=5), WEEK) == 1


def test_a_forced_cycle_is_due_whole_at_once() -> None:
    cycle = Cycle(START, None, 0, 840).restarted(START, 840, forced=True)

    assert cycle.due(START, WEEK) is None


def test_the_state_form_round_trips_and_stays_small() -> None:
    key = (datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC), "customer/ü #7")
    cycle = Cycle(START, key, 123_456, 500_000, forced=True)

    state = cycle.to_state()

    assert Cycle.from_state(state) == cycle
    assert len(str(state)) < 200


@pytest.mark.parametrize("value", [None, {}, {"started": "soon"}, {"started": "2026-03-02", "done": "x"}, []])
def test_a_state_that_is_not_a_cycle_reads_as_none(value: object) -> None:
    assert Cycle.from_state(value) is None


def test_a_company_of_100000_customers_on_1000_requests_a_day_carries_a_100_day_cycle() -> None:
    assert cycle_days(100_000, 1, 1000) == 100.0
    assert cycle_days(2_500, 1, 1005) < 7
