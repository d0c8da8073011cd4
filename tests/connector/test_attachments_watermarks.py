"""Watermark spans one by one: what a pass leaves undone is always covered, and nothing more than needed."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from connector.watermarks import MAX_SKIP, MAX_SPANS, NO_DATE, CustomerPass, Span, customer_key, merge_spans

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def key(minute: int, customer_id: str = "c") -> tuple[datetime, str]:
    return (T0 + timedelta(minutes=minute), customer_id)


def covered(spans: list[Span], k: tuple[datetime, str]) -> bool:
    return any(span.covers(k) for span in spans)


def test_customer_key_orders_by_date_then_id_and_reads_naive_dates_as_utc() -> None:
    naive = datetime(2024, 3, 1, 12, 0)
    assert customer_key(naive, "a") == (T0, "a")
    assert customer_key(None, "z") == (NO_DATE, "z")
    assert sorted([customer_key(T0, "b"), customer_key(None, "z"), customer_key(T0, "a")]) == [
        (NO_DATE, "z"),
        (T0, "a"),
        (T0, "b"),
    ]


def test_span_covers_its_bounds_and_not_its_skips() -> None:
    span = Span(key(0, "b"), key(10, "m"), frozenset({key(5, "x")}), 7, "why")

    assert span.covers(key(0, "b"))
    assert span.covers(key(10, "m"))
    assert span.covers(key(5, "y"))
    assert not span.covers(key(5, "x"))
    assert not span.covers(key(0, "a"))
    assert not span.covers(key(10, "n"))


def test_span_dates_seek_the_whole_span_with_an_exclusive_end() -> None:
    span = Span(key(0, "b"), key(10, "m"))
    assert span.dates() == (T0, T0 + timedelta(minutes=10, microseconds=1))
    undated = Span((NO_DATE, "a"), key(3))
    assert undated.dates() == (None, T0 + timedelta(minutes=3, microseconds=1))


def test_span_state_round_trips_through_json() -> None:
    span = Span(key(0, "b"), key(10, "m"), frozenset({key(5, "x"), key(7, "y")}), 7, "quota")
    undated = Span((NO_DATE, "a"), key(1, "b"))

    for original in (span, undated):
        assert Span.from_state(json.loads(json.dumps(original.to_state()))) == original


@pytest.mark.parametrize("garbage", [None, 3, {}, {"from": ["x"]}, {"from": [None, "a"]}], ids=repr)
def test_a_span_state_that_is_not_one_reads_as_none(garbage) -> None:
    assert Span.from_state(garbage) is None


def test_merge_joins_overlaps_and_keeps_disjoint_spans_in_order() -> None:
    a = Span(key(0), key(5), listings=2)
    b = Span(key(3), key(8), frozenset({key(4, "s")}), listings=3)
    c = Span(key(20), key(30), listings=1)

    merged = merge_spans([c, b, a])

    assert merged == [Span(key(0), key(8), frozenset({key(4, "s")}), 5), c]


def test_merge_caps_the_spans_of_a_company_and_still_covers_them_all() -> None:
    spans = [Span(key(10 * i), key(10 * i + 1), listings=1) for i in range(MAX_SPANS + 3)]

    merged = merge_spans(spans)

    assert len(merged) == MAX_SPANS
    assert sum(s.listings for s in merged) == MAX_SPANS + 3
    for span in spans:
        assert covered(merged, span.low)
        assert covered(merged, span.high)


def test_a_pass_with_nothing_undone_leaves_nothing() -> None:
    stream = CustomerPass()
    for minute in range(5):
        stream.done(key(minute))
    assert stream.spans() == []


def test_a_pass_stopped_midway_leaves_one_span_that_skips_what_finished_out_of_order() -> None:
    stream = CustomerPass()
    for minute in (0, 1, 2, 4, 6):  # 4 and 6 finished while 3 was refused
        stream.done(key(minute))
    for minute in (3, 5, 7, 8, 9):
        stream.defer(key(minute), "quota")

    [span] = stream.spans()

    assert (span.low, span.high, span.listings, span.reason) == (key(3), key(9), 5, "quota")
    assert span.skip == {key(4), key(6)}
    assert [m for m in range(12) if span.covers(key(m))] == [3, 5, 7, 8, 9]


def test_an_old_span_read_halfway_leaves_its_unread_rest_and_keeps_its_skips() -> None:
    old = Span(key(0), key(100), frozenset({key(50, "done-before")}), listings=40, reason="budget")
    stream = CustomerPass(old)
    stream.advance(key(30, ""), taken=12)
    stream.done(key(31))
    stream.defer(key(20), "quota")

    [span] = stream.spans()

    assert (span.low, span.high) == (key(20), key(100))
    assert span.skip == {key(31), key(50, "done-before")}
    assert span.listings == 1 + (40 - 12)
    assert span.reason == "quota"


def test_an_old_span_read_to_its_end_leaves_only_what_was_deferred() -> None:
    stream = CustomerPass(Span(key(0), key(100), listings=40))
    stream.advance(key(100, ""), taken=40)
    stream.finish()
    assert stream.spans() == []
    stream.defer(key(42), "budget")
    assert [(s.low, s.high, s.listings) for s in stream.spans()] == [(key(42), key(42), 1)]


@pytest.mark.parametrize("seed", range(20), ids=lambda s: f"seed-{s}")
def test_every_undone_customer_stays_covered_whatever_the_order(seed: int) -> None:
    rng = random.Random(seed)
    keys = [key(rng.randrange(50), f"id{i:03d}") for i in range(120)]
    undone = {k for k in keys if rng.random() < 0.3}
    stream = CustomerPass()
    for k in rng.sample(keys, len(keys)):  # out of order, as threads finish
        if k in undone:
            stream.defer(k, "r")
        else:
            stream.done(k)

    spans = merge_spans(stream.spans())

    assert all(covered(spans, k) for k in undone)
    assert all(len(s.skip) <= MAX_SKIP for s in spans)
    assert not any(s.skip & undone for s in spans)


def test_reading_an_old_span_never_moves_its_start_back_into_a_tie() -> None:
    old = Span(key(5, "m"), key(5, "m"), listings=1)  # one customer left inside a tie at minute 5
    stream = CustomerPass(old)
    stream.advance(key(5, ""), taken=1)  # the page holds the whole tie: its last date is minute 5

    [span] = stream.spans()

    assert (span.low, span.high) == (key(5, "m"), key(5, "m"))
    assert not span.covers(key(5, "a"))
