"""BoundaryDeduper alone: which records at the cursor are dropped, and where cursor and boundary move."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from connector.bodies import ArrowBody, CustomerBody, JsonBody, read_customer_body
from connector.customers import BoundaryDeduper
from connector.records import Json

BodyOf = Callable[[list[Json]], CustomerBody]

T1 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
T2 = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
T3 = datetime(2024, 5, 2, tzinfo=UTC)

ACME = {"id": "a", "customerName": "Acme"}
ACME_RENAMED = {"id": "a", "customerName": "Acme Ltd"}
BOLT = {"id": "b", "customerName": "Bolt"}
COG = {"id": "c", "customerName": "Cog"}
DYNO = {"id": "d", "customerName": "Dyno"}
# blake2b-80 of each record's sorted, compact JSON, from coreutils `b2sum -l 80`.
DIGESTS = {
    "ACME": "588b3219d9e00f1c0e10",
    "ACME_RENAMED": "031bb2987b335aeb67a2",
    "BOLT": "fb7d9d9f94bcb860fb89",
    "COG": "0e6d452200701427765b",
    "DYNO": "e9cc15ef106ca40c6ef2",
}


def arrow_body(records: list[Json]) -> CustomerBody:
    """The page as the client reads Codat's bytes: into Arrow, which these plain records allow."""
    body = read_customer_body(json.dumps({"results": records, "totalResults": len(records)}).encode())
    assert isinstance(body, ArrowBody)
    return body


@pytest.fixture(params=[JsonBody.of, arrow_body], ids=["json", "arrow"])
def as_body(request: pytest.FixtureRequest) -> BodyOf:
    """Each test runs on a page read by Python's json and on the same page read by Arrow."""
    reader: BodyOf = request.param
    return reader


def fresh(
    as_body: BodyOf, deduper: BoundaryDeduper, records: list[Json], dates: list[datetime | None]
) -> tuple[list[Json], list[datetime | None]]:
    """`deduper.fresh` with the dates as the Arrow timestamps it reads, and back as lists."""
    kept, kept_dates = deduper.fresh(as_body(records), pa.array(dates, pa.timestamp("us", tz="UTC")))
    return [kept.record(i) for i in range(len(kept))], kept_dates.to_pylist()


def test_a_first_run_keeps_everything_and_moves_to_the_pages_top_instant(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(None, [])

    kept = fresh(as_body, deduper, [ACME, BOLT, COG], [T1, T2, T2])

    assert kept == ([ACME, BOLT, COG], [T1, T2, T2])
    assert deduper.cursor == T2
    assert deduper.boundary == {DIGESTS["BOLT"], DIGESTS["COG"]}


def test_records_at_the_saved_cursor_are_dropped_only_if_unchanged(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(T1, [DIGESTS["ACME"], DIGESTS["BOLT"]])

    kept = fresh(as_body, deduper, [ACME, BOLT, COG], [T1, T1, T1])

    assert kept == ([COG], [T1])  # COG arrived at the cursor's instant after the last run
    assert deduper.cursor == T1
    assert deduper.boundary == {DIGESTS["ACME"], DIGESTS["BOLT"], DIGESTS["COG"]}


def test_a_record_changed_without_its_date_moving_is_kept(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(T1, [DIGESTS["ACME"]])

    kept = fresh(as_body, deduper, [ACME_RENAMED, BOLT], [T1, T2])

    assert kept == ([ACME_RENAMED, BOLT], [T1, T2])
    assert deduper.cursor == T2
    assert deduper.boundary == {DIGESTS["BOLT"]}


def test_the_record_a_seek_repeats_at_its_bound_is_dropped_on_the_next_page(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(None, [])
    fresh(as_body, deduper, [ACME, BOLT], [T1, T2])

    kept = fresh(as_body, deduper, [BOLT, COG], [T2, T3])  # the next seek asks for modifiedDate>=T2

    assert kept == ([COG], [T3])
    assert (deduper.cursor, deduper.boundary) == (T3, {DIGESTS["COG"]})


def test_a_tie_group_paged_twice_loads_each_record_once(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(None, [])
    first_pass = [fresh(as_body, deduper, [ACME, BOLT], [T1, T1]), fresh(as_body, deduper, [COG], [T1])]

    second_pass = [
        fresh(as_body, deduper, [ACME, BOLT], [T1, T1]),
        fresh(as_body, deduper, [COG, DYNO], [T1, T1]),
    ]

    assert first_pass == [([ACME, BOLT], [T1, T1]), ([COG], [T1])]
    assert second_pass == [([], []), ([DYNO], [T1])]  # DYNO joined the instant between passes
    assert deduper.boundary == {DIGESTS[n] for n in ("ACME", "BOLT", "COG", "DYNO")}


def test_records_without_a_date_are_always_kept_and_never_move_the_cursor(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(None, [])

    assert fresh(as_body, deduper, [ACME, BOLT], [None, None]) == ([ACME, BOLT], [None, None])
    assert (deduper.cursor, deduper.boundary) == (None, set())
    assert fresh(as_body, deduper, [ACME, COG], [None, T1]) == ([ACME, COG], [None, T1])
    assert (deduper.cursor, deduper.boundary) == (T1, {DIGESTS["COG"]})
    assert fresh(as_body, deduper, [ACME], [None]) == ([ACME], [None])
    assert (deduper.cursor, deduper.boundary) == (T1, {DIGESTS["COG"]})


def test_records_before_the_cursor_are_kept_and_the_cursor_never_moves_back(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(T2, [DIGESTS["ACME"]])

    kept = fresh(as_body, deduper, [ACME, BOLT], [T1, T1])

    assert kept == ([ACME, BOLT], [T1, T1])  # only records at the cursor are compared
    assert (deduper.cursor, deduper.boundary) == (T2, {DIGESTS["ACME"]})


def test_an_empty_page_changes_nothing(as_body: BodyOf) -> None:
    deduper = BoundaryDeduper(T1, [DIGESTS["ACME"]])

    assert fresh(as_body, deduper, [], []) == ([], [])
    assert (deduper.cursor, deduper.boundary) == (T1, {DIGESTS["ACME"]})
