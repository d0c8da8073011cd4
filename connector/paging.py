"""Paging Codat's listings: by `totalResults`, and shift-proof by `modifiedDate` (seek, not page numbers)."""

from __future__ import annotations

import math
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from dlt.sources.helpers.rest_client.paginators import BasePaginator
from requests import Request, Response

from connector.bodies import CustomerBody, JsonBody
from connector.defaults import DEFAULT_PAGE_SIZE
from connector.errors import PagingError, RepeatedPageError
from connector.records import Json, format_codat_datetime, parse_codat_datetime


class CodatPaginator(BasePaginator):
    """A dlt paginator that reads each of Codat's pages as its parsed JSON body.

    dlt calls `update_state(response, data)` with the page's data as the REST client
    extracted it; the connector's REST client (`connector.client.CodatRESTClient`) extracts
    the whole body as the page's one item, so `data[0]` is the body. Subclasses implement
    `update_from_body`; the response is there for its headers.
    """

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        """Hand the page's body to `update_from_body`.

        Raises:
            PagingError: The page's data is not one JSON object (not Codat's REST client).
        """
        if not data or not isinstance(data[0], dict | CustomerBody):
            raise PagingError("a page is not one JSON object: page Codat with connector.client's REST client")
        self.update_from_body(response, data[0])

    def update_from_body(self, response: Response, body: Any) -> None:
        """Decide the next request from one page's body, or stop (`_has_next_page = False`)."""
        raise NotImplementedError


class TotalResultsPaginator(CodatPaginator):
    """Codat's 1-based `page`/`pageSize`, stopping once the results seen cover `totalResults`.

    Unlike dlt's `PageNumberPaginator` (which counts pages, and would ask for one more, empty
    page), it counts results, so a listing costs exactly its pages.
    """

    def __init__(self, page_size: int) -> None:
        super().__init__()
        self.page_size = page_size
        self.page = 1

    def init_request(self, request: Request) -> None:
        """Ask for the first page."""
        request.params.update(page=self.page, pageSize=self.page_size)

    def update_from_body(self, response: Response, body: Json) -> None:
        """Stop once the pages seen cover `totalResults`."""
        if self.page * self.page_size >= int(body.get("totalResults", 0)) or not body.get("results"):
            self._has_next_page = False
        self.page += 1

    def update_request(self, request: Request) -> None:
        """Ask for the next page."""
        request.params["page"] = self.page


class ModifiedDateSeekPaginator(CodatPaginator):
    """Pages customers in `modifiedDate` order by moving a lower bound, never by page number.

    Codat's pages are offsets over a set that changes while a client pages: a record it
    modifies moves to the end and every later record shifts one place back, so page
    numbers skip records. Seeking instead asks for `modifiedDate>=<last seen>` page 1
    every time: whatever moved is still ahead. Records repeated at the bound are dropped by
    the caller (`BoundaryDeduper`).

    When one page holds nothing but a single `modifiedDate` and more follow (Codat
    re-stamps a whole company at one instant), seeking cannot move, so that instant's
    group is paged by number with `modifiedDate=<instant>`. A group only loses members
    while it is paged (a modified record gets a later date), so a smaller `totalResults`
    steps back as many pages as records left; a larger one (records still being written
    at that instant) starts the group again. A pass over a group only counts when it began
    after an answer whose `Date` header was past that instant: until then a record may join
    and another leave between two pages, which no total reveals, so the pass is repeated.
    Not the pass's own first answer: `Date` is stamped when an answer is sent, after its
    page was read, so a page read in the instant's last moments may carry the next second.
    Then seeking resumes strictly after the group (unless the group was of a past instant,
    kept its size and nothing lay past it). It stops from `totalResults`, without a trailing
    empty request.
    """

    def __init__(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        super().__init__()
        self.page_size = page_size
        self.lower = since
        self.until = until
        self.strict = False  # `>` instead of `>=`, right after a group is done
        self.group: datetime | None = None
        self.group_page = 1
        self.group_total: int | None = None
        self.after_group: int | None = None  # records past the group when it was entered
        self._seek_total = 0  # `totalResults` of the seek that found the group
        self._pass_trusted = False  # the current pass over the group began after its instant
        self._group_over = False  # an answer already received was sent after the group's instant
        self._entered_over = False  # the group's instant was over when the seek found it
        self._group_changed = False  # its total moved while it was paged
        self._last_page: tuple[str, tuple[str, ...]] | None = None

    def query(self) -> str | None:
        """The Codat `query` for the next request."""
        clauses = []
        if self.group is not None:
            clauses.append(f"modifiedDate={format_codat_datetime(self.group)}")
        elif self.lower is not None:
            op = ">" if self.strict else ">="
            clauses.append(f"modifiedDate{op}{format_codat_datetime(self.lower)}")
        if self.until is not None:
            clauses.append(f"modifiedDate<{format_codat_datetime(self.until)}")
        return "&&".join(clauses) or None

    def init_request(self, request: Request) -> None:
        """Set the first request's parameters."""
        self._apply(request)

    def update_request(self, request: Request) -> None:
        """Set the next request's parameters."""
        self._apply(request)

    def _apply(self, request: Request) -> None:
        page = self.group_page if self.group is not None else 1
        request.params.update(page=page, pageSize=self.page_size, orderBy="modifiedDate")
        query = self.query()
        if query:
            request.params["query"] = query
        else:
            request.params.pop("query", None)

    def update_from_body(self, response: Response, body: Any) -> None:
        """Decide the next request from the page just read (a `CustomerBody` or its JSON), or stop."""
        page = body if isinstance(body, CustomerBody) else JsonBody(body)
        total = page.total
        self._guard(page)
        if self.group is None:
            self._after_seek(page, total)
            if self.group is not None:  # entered a group: was its instant already over?
                self._group_over = self._entered_over = _server_time_after(response, self.group)
        else:
            if self.group_page == 1:  # a pass starts: it counts if the instant was over before
                self._pass_trusted = self._group_over
            self._after_group_page(total)
            if self.group is not None and not self._group_over:
                self._group_over = _server_time_after(response, self.group)

    def _after_seek(self, page: CustomerBody, total: int) -> None:
        if total <= len(page) or not len(page):
            self._has_next_page = False
            return
        first = parse_codat_datetime(page.modified_text(0))
        last = parse_codat_datetime(page.modified_text(len(page) - 1))
        if last is None:
            raise PagingError("Codat sent customers without a readable modifiedDate; cannot page by it")
        if first == last:
            self.group, self.group_page, self.group_total = last, 1, None
            self.after_group = None
            self._seek_total = total
            self._group_changed = False
        else:
            self.lower, self.strict = last, False

    def _after_group_page(self, total: int) -> None:
        if self.after_group is None:
            self.after_group = self._seek_total - total
            self._group_changed = self.after_group < 0  # a record joined since the seek
        previous, self.group_total = self.group_total, total
        if previous is not None and total != previous:
            self._group_changed = True
        if previous is not None and total > previous:
            self.group_page = 1
            return
        if previous is not None and total < previous:
            self.group_page = max(1, self.group_page - math.ceil((previous - total) / self.page_size))
            return
        if self.group_page * self.page_size < total:
            self.group_page += 1
            return
        if not self._pass_trusted:
            self.group_page, self.group_total = 1, None
            return
        self.lower, self.strict, self.group = self.group, True, None
        # Nothing was past the group, and nothing can have moved past it since: a group of a
        # past instant that kept its size. Otherwise a record that changed while the group was
        # paged now lies past it, and one more seek finds it.
        if self.after_group <= 0 and self._entered_over and not self._group_changed:
            self._has_next_page = False

    def _guard(self, body: CustomerBody) -> None:
        if self.group is not None:
            return  # a group pass re-reads pages on purpose (step-back, repeated passes)
        page = (self.query() or "", tuple(body.ids()))
        if page == self._last_page:
            raise RepeatedPageError(f"Codat returned the same customers twice for query {page[0]!r}")
        self._last_page = page


def _server_time_after(response: Response, instant: datetime | None) -> bool:
    """Whether the server's `Date` says `instant`'s whole second is over (no Date: assume so)."""
    header = response.headers.get("Date")
    if not header or instant is None:
        return True
    try:
        served = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return True
    return served.timestamp() >= math.floor(instant.timestamp()) + 1
