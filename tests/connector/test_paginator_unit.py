"""The seek paginator alone, fed crafted Codat pages: request parameters, seeks, stops and errors.

The tie-group rules about the server's `Date` are in `test_paging_rules.py`; these cover the rest.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from requests import Request, Response

from connector.errors import PagingError, RepeatedPageError
from connector.paging import ModifiedDateSeekPaginator

URL = "https://api.codat.io/companies/c/data/customers"
G = "2024-05-01T10:00:00Z"  # the instant of the tie groups below
LONG_AFTER = datetime(2024, 5, 2, tzinfo=UTC)
UNTIL = datetime(2025, 1, 1, tzinfo=UTC)


def customer(customer_id: str, modified: str | None = G) -> dict[str, Any]:
    return {"id": customer_id, "modifiedDate": modified}


def answer(results: list[dict[str, Any]], total: int, served: datetime | str | None = LONG_AFTER) -> Response:
    return answer_body({"results": results, "totalResults": total}, served)


def answer_body(body: dict[str, Any], served: datetime | str | None = LONG_AFTER) -> Response:
    """A Codat answer: a JSON body and, unless None, the `Date` it was sent at."""
    response = Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/json"
    response._content = json.dumps(body).encode()
    if isinstance(served, datetime):
        served = format_datetime(served, usegmt=True)
    if served is not None:
        response.headers["Date"] = served
    return response


def feed(pager: ModifiedDateSeekPaginator, response: Response) -> None:
    """What dlt does with a page: the REST client's extracted data is the body, as one item."""
    pager.update_state(response, [response.json()])


def dated(*records: tuple[str, str | None]) -> list[dict[str, Any]]:
    return [customer(i, modified) for i, modified in records]


def group(*ids: str) -> list[dict[str, Any]]:
    return [customer(i) for i in ids]


def first_params(pager: ModifiedDateSeekPaginator) -> dict[str, Any]:
    request = Request("GET", URL, params={})
    pager.init_request(request)
    return dict(request.params)


def next_params(pager: ModifiedDateSeekPaginator) -> dict[str, Any]:
    request = Request("GET", URL, params={})
    pager.update_request(request)
    return dict(request.params)


def read(pager: ModifiedDateSeekPaginator, page: Response) -> dict[str, Any]:
    """Give the paginator one page, as dlt does, and return the next request's parameters."""
    feed(pager, page)
    return next_params(pager)


# -- the first request ------------------------------------------------------------------------


SINCE = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
PLUS_ONE = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("since", "until", "query"),
    [
        (None, None, None),
        (SINCE, None, "modifiedDate>=2024-01-02T03:04:05.000000Z"),
        (None, UNTIL, "modifiedDate<2025-01-01T00:00:00.000000Z"),
        (SINCE, UNTIL, "modifiedDate>=2024-01-02T03:04:05.000000Z&&modifiedDate<2025-01-01T00:00:00.000000Z"),
        (
            datetime(2024, 1, 2, 4, 4, 5, 120, tzinfo=PLUS_ONE),
            None,
            "modifiedDate>=2024-01-02T03:04:05.000120Z",
        ),
    ],
    ids=["everything", "since", "until", "window", "since-in-another-zone"],
)
def test_first_request(since: datetime | None, until: datetime | None, query: str | None) -> None:
    params = first_params(ModifiedDateSeekPaginator(since=since, until=until))

    expected = {"page": 1, "pageSize": 5000, "orderBy": "modifiedDate"}
    assert params == (expected if query is None else {**expected, "query": query})


# -- seeking and stopping ---------------------------------------------------------------------


def test_the_next_page_is_page_one_from_the_last_date_seen() -> None:
    pager = ModifiedDateSeekPaginator(page_size=3)
    page = [
        customer("a", "2024-01-01T00:00:00Z"),
        customer("b", "2024-01-02T00:00:00"),
        customer("c", "2024-01-03T13:00:00.1234567+01:00"),
    ]

    params = read(pager, answer(page, 10))

    assert pager.has_next_page
    assert params == {
        "page": 1,
        "pageSize": 3,
        "orderBy": "modifiedDate",
        "query": "modifiedDate>=2024-01-03T12:00:00.123456Z",
    }


def test_instants_a_microsecond_apart_are_not_a_tie() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    page = dated(("a", "2024-05-01T10:00:00.1234560Z"), ("b", "2024-05-01T10:00:00.1234570Z"))

    params = read(pager, answer(page, 5))

    assert (params["page"], params["query"]) == (1, "modifiedDate>=2024-05-01T10:00:00.123457Z")


def test_a_walk_through_a_tie_group_keeps_the_until_bound_in_every_request() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2, until=UNTIL)
    below = "modifiedDate<2025-01-01T00:00:00.000000Z"
    requests = [first_params(pager)]

    requests.append(
        read(pager, answer(dated(("a", "2024-04-01T00:00:00Z"), ("b", "2024-04-02T00:00:00Z")), 7))
    )
    requests.append(read(pager, answer([customer("b", "2024-04-02T00:00:00Z"), customer("c")], 6)))
    requests.append(read(pager, answer(group("c", "d"), 5)))  # a full page of one instant
    requests.append(read(pager, answer(group("c", "d"), 3)))  # group page 1
    requests.append(read(pager, answer(group("e"), 3)))  # group page 2: the group is done
    assert pager.has_next_page  # two records lay past the group when it was found
    feed(pager, answer(dated(("f", "2024-06-01T00:00:00Z"), ("g", "2024-06-02T00:00:00Z")), 2))

    assert not pager.has_next_page
    assert [(r["page"], r["query"]) for r in requests] == [
        (1, below),
        (1, "modifiedDate>=2024-04-02T00:00:00.000000Z&&" + below),
        (1, "modifiedDate>=2024-05-01T10:00:00.000000Z&&" + below),
        (1, "modifiedDate=2024-05-01T10:00:00.000000Z&&" + below),
        (2, "modifiedDate=2024-05-01T10:00:00.000000Z&&" + below),
        (1, "modifiedDate>2024-05-01T10:00:00.000000Z&&" + below),
    ]
    assert {(r["pageSize"], r["orderBy"]) for r in requests} == {(2, "modifiedDate")}


def test_after_a_group_the_seek_is_strict_once_then_inclusive_again() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(group("a", "b"), 10))
    feed(pager, answer(group("a", "b"), 3))
    assert read(pager, answer(group("c"), 3))["query"] == "modifiedDate>2024-05-01T10:00:00.000000Z"

    params = read(pager, answer(dated(("d", "2024-05-02T00:00:00Z"), ("e", "2024-05-03T00:00:00Z")), 7))

    assert params["query"] == "modifiedDate>=2024-05-03T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("results", "total"),
    [
        (dated(("a", "2024-01-01T00:00:00Z"), ("b", "2024-01-02T00:00:00Z")), 2),
        (group("a", "b"), 2),
        ([customer("a", "2024-01-01T00:00:00Z")], 0),
        ([], 0),
        ([], 5),
    ],
    ids=[
        "the-rest",
        "the-rest-at-one-instant",
        "total-below-the-page",
        "no-customers",
        "empty-page-claiming-more",
    ],
)
def test_a_page_that_holds_the_rest_ends_paging(results: list[dict[str, Any]], total: int) -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)

    feed(pager, answer(results, total))

    assert not pager.has_next_page


def test_a_body_without_results_or_total_ends_paging() -> None:
    pager = ModifiedDateSeekPaginator()

    feed(pager, answer_body({}))

    assert not pager.has_next_page


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, [], [["not", "a", "body"]]], ids=["none", "no-item", "a-list"])
def test_a_page_that_is_not_one_json_object_is_an_error(data: list[Any] | None) -> None:
    pager = ModifiedDateSeekPaginator()

    with pytest.raises(PagingError, match="not one JSON object"):
        pager.update_state(answer([], 0), data)


def test_a_server_that_ignores_the_query_is_caught_on_the_second_identical_page() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    same = dated(("a", "2024-01-01T00:00:00Z"), ("b", "2024-01-02T00:00:00Z"))
    feed(pager, answer(same, 5))
    feed(pager, answer(same, 5))  # the same customers, but for a new query: not yet a loop

    with pytest.raises(
        RepeatedPageError, match=re.escape("query 'modifiedDate>=2024-01-02T00:00:00.000000Z'")
    ):
        feed(pager, answer(same, 5))


@pytest.mark.parametrize(
    "last",
    [customer("b", "yesterday"), customer("b", None), {"id": "b"}, customer("b", "2024-13-01T00:00:00Z")],
    ids=["words", "null", "missing", "month-13"],
)
def test_an_unreadable_last_date_stops_paging_with_an_error(last: dict[str, Any]) -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)

    with pytest.raises(PagingError, match="without a readable modifiedDate"):
        feed(pager, answer([customer("a", "2024-01-01T00:00:00Z"), last], 5))


def test_unreadable_dates_on_the_last_page_need_no_seek() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)

    feed(pager, answer(dated(("a", "2024-01-01T00:00:00Z"), ("b", "yesterday")), 2))

    assert not pager.has_next_page


# -- tie groups (the `Date` rules are in test_paging_rules.py) --------------------------------


def test_a_full_page_of_one_instant_pages_that_instant_by_number() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)

    params = read(pager, answer(group("a", "b"), 5))

    assert params == {
        "page": 1,
        "pageSize": 2,
        "orderBy": "modifiedDate",
        "query": "modifiedDate=2024-05-01T10:00:00.000000Z",
    }
    assert [
        read(pager, answer(group("a", "b"), 5))["page"],
        read(pager, answer(group("c", "d"), 5))["page"],
    ] == [2, 3]


def test_a_group_that_grows_while_paged_is_paged_again_from_page_one() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(group("a", "b"), 3))
    pages = [read(pager, answer(group("a", "b"), 3))["page"]]

    pages.append(read(pager, answer(group("c", "x"), 4))["page"])  # x joined the instant
    pages.append(read(pager, answer(group("a", "b"), 4))["page"])  # the same page again: no repeat error
    pages.append(read(pager, answer(group("c", "x"), 4))["page"])

    assert pages == [2, 1, 2, 1]
    assert pager.has_next_page
    assert pager.query() == "modifiedDate>2024-05-01T10:00:00.000000Z"  # it changed: seek once more


@pytest.mark.parametrize(
    ("reached", "lost", "back_to"),
    [(4, 1, 3), (4, 2, 3), (4, 3, 2), (2, 5, 1)],
    ids=["one-record", "a-page", "more-than-a-page", "never-below-page-one"],
)
def test_a_group_that_shrinks_steps_back_a_page_per_page_of_records_lost(
    reached: int, lost: int, back_to: int
) -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(group("a", "b"), 9))
    for _ in range(reached - 1):
        feed(pager, answer(group("a", "b"), 9))
    assert pager.group_page == reached

    params = read(pager, answer(group("a", "b"), 9 - lost))

    assert (params["page"], params["query"]) == (back_to, "modifiedDate=2024-05-01T10:00:00.000000Z")


@pytest.mark.parametrize(
    ("seek_total", "group_total", "more"),
    [(3, 3, False), (10, 3, True), (3, 4, True)],
    ids=["nothing-past-it", "records-past-it", "a-record-joined-after-the-seek"],
)
def test_after_a_group_paging_ends_only_if_nothing_lay_past_it(
    seek_total: int, group_total: int, more: bool
) -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(group("a", "b"), seek_total))
    feed(pager, answer(group("a", "b"), group_total))
    feed(pager, answer(group(*"cd"[: group_total - 2]), group_total))

    assert pager.has_next_page is more
    assert pager.query() == "modifiedDate>2024-05-01T10:00:00.000000Z"


@pytest.mark.parametrize("served", [None, "not a date"], ids=["no-date-header", "unreadable-date-header"])
def test_an_answer_without_a_readable_date_counts_as_sent_after_the_instant(served: str | None) -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(group("a", "b"), 3, served))
    feed(pager, answer(group("a", "b"), 3, served))
    feed(pager, answer(group("c"), 3, served))

    assert not pager.has_next_page  # the pass counted: not paged again
