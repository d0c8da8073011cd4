"""Attachment listings left for a later run: a few spans over (modifiedDate, id) per company.

A run lists customers' attachments out of order and may stop early (request budget, daily
quota, failures). What it leaves undone is kept per company as spans: the smallest and the
largest (modifiedDate, id) not listed, and the few customers inside that were listed
anyway (out of order). The next run pages each span's dates and lists what it covers. The
state is O(companies), whatever the number of customers left over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.records import Json, format_codat_datetime, parse_codat_datetime

STATE_KEY = "attachment_watermarks"
LEGACY_STATE_KEY = "attachment_backlog"  # the previous version's task lists, honoured once
MAX_SPANS = 4  # per company; more are merged, at the cost of listing some customers again
MAX_SKIP = 20  # customers listed out of order remembered per span
NO_DATE = datetime.min.replace(tzinfo=UTC)  # where customers without a modifiedDate sort

Key = tuple[datetime, str]  # (modifiedDate, customer id)


def customer_key(modified: datetime | None, customer_id: str) -> Key:
    """The order in which customers are listed and deferred: modifiedDate, then id."""
    if modified is None:
        return (NO_DATE, customer_id)
    return (modified if modified.tzinfo else modified.replace(tzinfo=UTC), customer_id)


def key_to_state(key: Key) -> list[str | None]:
    """A key as JSON: [modifiedDate or null, id]."""
    return [None if key[0] == NO_DATE else format_codat_datetime(key[0]), key[1]]


def key_from_state(value: Any) -> Key:
    """A key back from its JSON form."""
    modified, customer_id = value
    return customer_key(parse_codat_datetime(modified), str(customer_id))


@dataclass(frozen=True)
class Span:
    """Customers from `low` to `high` (both included) whose attachments are still to list.

    `skip` holds the keys inside that were listed already; `listings` estimates how many
    customers the span holds (for the budget and the reports); `reason` says why it is left.
    """

    low: Key
    high: Key
    skip: frozenset[Key] = frozenset()
    listings: int = 0
    reason: str | None = None

    def covers(self, key: Key) -> bool:
        """Whether the customer with this key is still to list."""
        return self.low <= key <= self.high and key not in self.skip

    def dates(self) -> tuple[datetime | None, datetime]:
        """The `since` (included) and `until` (excluded) of a `modifiedDate` seek over the span."""
        since = None if self.low[0] == NO_DATE else self.low[0]
        # Codat may keep a 7th fractional digit that the parsed key dropped: one microsecond more.
        return since, self.high[0] + timedelta(microseconds=1)

    def to_state(self) -> Json:
        """The JSON form kept in the source state."""
        state: Json = {"from": key_to_state(self.low), "to": key_to_state(self.high)}
        if self.skip:
            state["skip"] = [key_to_state(k) for k in sorted(self.skip)]
        state["listings"] = self.listings
        if self.reason:
            state["reason"] = self.reason
        return state

    @classmethod
    def from_state(cls, value: Any) -> Span | None:
        """Read a span back; None if it is not one (a hand-edited or foreign state)."""
        try:
            return cls(
                key_from_state(value["from"]),
                key_from_state(value["to"]),
                frozenset(key_from_state(k) for k in value.get("skip") or ()),
                int(value.get("listings") or 0),
                value.get("reason"),
            )
        except (KeyError, TypeError, ValueError):
            return None


def merge_spans(spans: Iterable[Span], limit: int = MAX_SPANS) -> list[Span]:
    """Spans in key order, overlapping ones joined, at most `limit` (the earliest joined first)."""
    ordered = sorted(spans, key=lambda s: s.low)
    merged: list[Span] = []
    for span in ordered:
        if merged and span.low <= merged[-1].high:
            merged[-1] = _join(merged[-1], span)
        else:
            merged.append(span)
    while len(merged) > limit:
        merged[0:2] = [_join(merged[0], merged[1])]  # lists again whatever lies between the two
    return merged


def _join(a: Span, b: Span) -> Span:
    low, high = min(a.low, b.low), max(a.high, b.high)
    skip = sorted(a.skip | b.skip)[:MAX_SKIP]
    return Span(low, high, frozenset(skip), a.listings + b.listings, a.reason or b.reason)


@dataclass
class CustomerPass:
    """One ordered pass of this run over a company's customers, and what it leaves undone.

    The pass is either the run's new work (customers that changed) or one span left by an
    earlier run (`source`). Customers are taken in key order but finish out of order, so
    the undone ones are kept as their smallest and largest key, and the last customers
    done as candidates for `skip`.
    """

    source: Span | None = None
    low: Key | None = None
    high: Key | None = None
    deferred: int = 0
    reason: str | None = None
    unread: Key | None = None  # where the unread rest of `source` starts
    taken: int = 0  # customers of `source` handed out so far
    recent: deque[Key] = field(default_factory=lambda: deque(maxlen=2 * MAX_SKIP))

    def __post_init__(self) -> None:
        if self.source is not None and self.unread is None:
            self.unread = self.source.low

    def defer(self, key: Key, reason: str) -> None:
        """A customer of this pass is left for a later run."""
        self.low = key if self.low is None else min(self.low, key)
        self.high = key if self.high is None else max(self.high, key)
        self.deferred += 1
        self.reason = self.reason or reason

    def done(self, key: Key) -> None:
        """A customer of this pass is listed."""
        self.recent.append(key)

    def advance(self, unread: Key, taken: int) -> None:
        """`source` is read up to `unread`; `taken` more customers were handed out from it."""
        # A page's last date starts before the span when the span starts inside a tie.
        self.unread = unread if self.unread is None else max(self.unread, unread)
        self.taken += taken

    def finish(self) -> None:
        """`source` is read to its end."""
        self.unread = None

    @property
    def pending(self) -> bool:
        """Whether anything is left undone."""
        return self.low is not None or self.unread is not None

    def spans(self) -> list[Span]:
        """What this pass leaves for a later run (none, or one span)."""
        if not self.pending:
            return []
        lows = [k for k in (self.low, self.unread) if k is not None]
        highs = [k for k in (self.high,) if k is not None]
        listings = self.deferred
        skip: set[Key] = set()
        if self.source is not None:
            skip.update(self.source.skip)  # listed by an earlier run: still listed
            if self.unread is not None:
                highs.append(self.source.high)
                listings += max(self.source.listings - self.taken, 0)
        low, high = min(lows), max(highs)
        skip.update(k for k in self.recent if low < k <= high)
        kept = frozenset(sorted(k for k in skip if low <= k <= high)[:MAX_SKIP])
        reason = self.reason or (self.source.reason if self.source else None)
        return [Span(low, high, kept, listings, reason)]
