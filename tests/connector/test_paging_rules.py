"""The seek paginator's rules for tie groups, one by one, against crafted Codat answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

from requests import Response

from connector.paging import ModifiedDateSeekPaginator

GROUP = "2024-05-01T10:00:00Z"
GROUP_QUERY = "modifiedDate=2024-05-01T10:00:00.000000Z"
AFTER_GROUP_QUERY = "modifiedDate>2024-05-01T10:00:00.000000Z"
LONG_AFTER = datetime(2024, 5, 2, tzinfo=UTC)


def answer(ids: list[str], total: int, served: datetime, date: str = GROUP) -> Response:
    """A Codat page of customers all modified at `date`, as sent at `served`."""
    response = Response()
    response.status_code = 200
    response._content = json.dumps(
        {"results": [{"id": i, "modifiedDate": date} for i in ids], "totalResults": total}
    ).encode()
    response.headers["Date"] = format_datetime(served, usegmt=True)
    return response


def feed(pager: ModifiedDateSeekPaginator, response: Response) -> None:
    """What dlt does with a page: the REST client's extracted data is the body, as one item."""
    pager.update_state(response, [response.json()])


def ids(first: int, count: int) -> list[str]:
    return [f"c{n:03d}" for n in range(first, first + count)]


def test_a_past_group_that_keeps_its_size_ends_without_another_seek() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(ids(0, 2), 3, LONG_AFTER))  # the seek: a full page of one instant
    assert pager.query() == GROUP_QUERY
    feed(pager, answer(ids(0, 2), 3, LONG_AFTER))  # group page 1
    assert pager.has_next_page
    feed(pager, answer(ids(2, 1), 3, LONG_AFTER))  # group page 2: the pass is done

    assert not pager.has_next_page


def test_a_group_that_lost_a_record_while_paged_is_followed_by_one_more_seek() -> None:
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(ids(0, 2), 4, LONG_AFTER))
    feed(pager, answer(ids(0, 2), 4, LONG_AFTER))
    feed(pager, answer(ids(3, 1), 3, LONG_AFTER))  # c002 changed: it left the group
    assert pager.group_page == 1  # stepped back a page
    feed(pager, answer(["c000", "c001"], 3, LONG_AFTER))
    feed(pager, answer(["c003"], 3, LONG_AFTER))

    assert pager.has_next_page  # c002 now lies past the group
    assert pager.query() == AFTER_GROUP_QUERY


def test_a_pass_that_began_within_the_instants_second_does_not_count() -> None:
    group_second = datetime(2024, 5, 1, 10, 0, 0, 400_000, tzinfo=UTC)
    next_second = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
    pager = ModifiedDateSeekPaginator(page_size=2)
    feed(pager, answer(ids(0, 2), 3, group_second))  # found while the instant is current
    # The pass's first page was read in the instant's last moments but sent a second on.
    feed(pager, answer(ids(0, 2), 3, next_second))
    feed(pager, answer(ids(2, 1), 3, next_second))
    assert pager.query() == GROUP_QUERY  # not trusted: the group is paged again
    assert pager.group_page == 1

    feed(pager, answer(ids(0, 2), 3, next_second))  # began after an answer past the instant
    feed(pager, answer(ids(2, 1), 3, next_second))

    assert pager.has_next_page  # a group of the then current instant: one more seek
    assert pager.query() == AFTER_GROUP_QUERY
