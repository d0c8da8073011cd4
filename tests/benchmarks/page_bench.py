"""The emulator's page time: a company walked by `modifiedDate` seek queries, as the connector reads."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

PAGE_SIZE = 5000
SINCE = "2019-01-01T00:00:00Z"  # earlier than every generated modifiedDate


def seek_bound(value: str) -> str:
    """A `modifiedDate` in any of Codat's forms as the connector writes bounds (UTC, microseconds, Z).

    Zone-less dates are UTC; a seventh fractional digit is dropped, as the emulator drops it.
    """
    moment = datetime.fromisoformat(value)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Walk:
    """One walk over a company: per page, the transfer time, the parse time and its size."""

    serve: list[float] = field(default_factory=list)
    parse: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def page(self, session: requests.Session, url: str, query: str, number: int = 1) -> dict[str, Any]:
        """Fetch one page ordered by `modifiedDate`, timing the transfer and the parse apart."""
        params: dict[str, str | int] = {
            "page": number,
            "pageSize": PAGE_SIZE,
            "orderBy": "modifiedDate",
            "query": query,
        }
        started = time.perf_counter()
        response = session.get(url, params=params, timeout=600)
        body = response.content
        served = time.perf_counter()
        response.raise_for_status()
        page: dict[str, Any] = json.loads(body)
        self.serve.append(served - started)
        self.parse.append(time.perf_counter() - served)
        self.sizes.append(len(body))
        self.seen.update(str(r["id"]) for r in page["results"])
        return page


def walk_company(session: requests.Session, url: str) -> Walk:
    """Read every customer with `query=modifiedDate>=X&orderBy=modifiedDate`, page 1, moving X.

    X moves to the page's last `modifiedDate`, as the connector's seek paginator does. A full
    page at one instant (a company re-stamped at once) cannot move X: as the connector does,
    that instant is paged by number (`modifiedDate=X`), then the walk seeks past it (`>X`).
    """
    walk, query = Walk(), f"modifiedDate>={SINCE}"
    while True:
        page = walk.page(session, url, query)
        results = page["results"]
        if int(page["totalResults"]) <= len(results):
            return walk
        first, last = seek_bound(results[0]["modifiedDate"]), seek_bound(results[-1]["modifiedDate"])
        if first == last:
            number, total = 2, len(results) + 1  # the instant holds at least this page and one more
            while (number - 1) * PAGE_SIZE < total:
                total = int(walk.page(session, url, f"modifiedDate={last}", number)["totalResults"])
                number += 1
            query = f"modifiedDate>{last}"
        else:
            query = f"modifiedDate>={last}"


def bench_pages(session: requests.Session, url: str, customers: int, seconds: float) -> dict[str, Any]:
    """Walk the company once, then again as often as `seconds` allows; time every page after the first.

    Args:
        session: An authenticated keep-alive session.
        url: The company's `/data/customers` URL.
        customers: How many customers the company holds (to check the walk saw them all).
        seconds: Time budget for the walks after the first.

    Returns:
        The figures, in seconds per page and customers per second.
    """
    started = time.perf_counter()
    first = walk_company(session, url)
    walk_seconds = time.perf_counter() - started
    later: list[Walk] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() + walk_seconds <= deadline:  # only walks that fit in the budget
        later.append(walk_company(session, url))
    timed = first.serve[1:] + [s for w in later for s in w.serve]
    per_page = statistics.fmean(timed) if timed else first.serve[0]
    return {
        "customers": customers,
        "customers_seen": len(first.seen),
        "page_size": PAGE_SIZE,
        "pages_per_walk": len(first.serve),
        "walks": 1 + len(later),
        "first_request_s": round(first.serve[0], 4),
        "s_per_page": round(per_page, 4),
        "first_walk_s_per_page": round(statistics.fmean(first.serve[1:] or first.serve), 4),
        "later_walks_s_per_page": round(statistics.fmean(timed[len(first.serve) - 1 :]), 4)
        if later
        else None,
        "customers_per_s": round(PAGE_SIZE / per_page),
        "parse_s_per_page": round(statistics.fmean(first.parse), 4),
        "bytes_per_customer": round(sum(first.sizes) / max(len(first.seen), 1)),
    }
