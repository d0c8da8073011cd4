"""The rolling refresh: each company's customers' attachments listed again, a share per run.

Codat stamps no `modifiedDate` when an attachment is added or removed, so listing the changed
customers never sees it. Every run therefore also lists some unchanged customers again, in
(modifiedDate, id) order from where the previous run stopped, so that a whole company is
gone through once every `attachment_refresh_days`. A run takes the part of the cycle that the
time since the cycle began is of the period, less what earlier runs of the cycle did: a daily
run about a seventh, an hourly run about a 168th, a run after a week's pause all that is left.

The state is one small entry per company (`Cycle`), whatever the number of customers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pendulum

from connector.records import Json, format_codat_datetime, parse_codat_datetime
from connector.watermarks import Key, key_from_state, key_to_state

STATE_KEY = "attachment_refresh"


def now() -> datetime:
    """The refresh's clock (a test sets its own, to run a week of daily runs in seconds)."""
    return pendulum.now("UTC")


@dataclass(frozen=True)
class Cycle:
    """Where one company's refresh stands.

    Args:
        started: When the cycle began (a company's first listing of every customer is one).
        after: The last customer refreshed in this cycle, in key order; None: none yet.
        done: Customers refreshed in this cycle.
        total: Customers in the cycle, as last counted (None: not counted yet).
        forced: `--refresh-attachments` asked for the whole cycle now.
    """

    started: datetime
    after: Key | None = None
    done: int = 0
    total: int | None = None
    forced: bool = False

    def due(self, now: datetime, period: timedelta, total: int | None = None) -> int | None:
        """Customers to refresh in this run; None: every one left (the period is over, or forced).

        `total` is a fresh count of the cycle's customers; the stored one when not given. With
        no count at all, one customer: enough to read a page that counts them.
        """
        part = (now - self.started).total_seconds() / period.total_seconds()
        if self.forced or part >= 1:
            return None
        count = total if total is not None else self.total
        if count is None:
            return 1
        share = math.floor(count * max(part, 0.0))
        return max(share - self.done, 0)

    def advanced(self, key: Key, listed: int) -> Cycle:
        """The cycle once `listed` more customers, up to `key`, were refreshed."""
        return replace(self, after=key, done=self.done + listed)

    def restarted(self, now: datetime, total: int | None, forced: bool = False) -> Cycle:
        """A new cycle from the first customer, beginning now."""
        return Cycle(now, None, 0, total, forced)

    def to_state(self) -> Json:
        """The JSON form kept in the source state (a few dozen bytes)."""
        state: Json = {"started": format_codat_datetime(self.started), "done": self.done}
        if self.after is not None:
            state["after"] = key_to_state(self.after)
        if self.total is not None:
            state["total"] = self.total
        if self.forced:
            state["forced"] = True
        return state

    @classmethod
    def from_state(cls, value: Any) -> Cycle | None:
        """Read a cycle back; None if it is not one (a hand-edited or foreign state)."""
        try:
            started = parse_codat_datetime(value["started"])
            if started is None:
                return None
            after = key_from_state(value["after"]) if value.get("after") else None
            total = value.get("total")
            done = int(value.get("done") or 0)
            return cls(started, after, done, None if total is None else int(total), bool(value.get("forced")))
        except (KeyError, TypeError, ValueError):
            return None


def cycle_days(customers: int, connections: int, requests_per_day: float) -> float:
    """The shortest refresh cycle, in days, that `requests_per_day` listings can carry."""
    return customers * connections / max(requests_per_day, 1.0)
