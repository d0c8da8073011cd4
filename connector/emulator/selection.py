"""Selecting records as Codat does: filter and order, or bisect a company's sorted view."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from connector.emulator.model import Json, gc_paused
from connector.emulator.query import (
    COMPANY_SCHEMA,
    CONNECTION_SCHEMA,
    CUSTOMER_SCHEMA,
    InstantRange,
    Schema,
    compile_order,
    compile_query,
    instant_range,
    parse_order,
)

SCHEMAS: dict[str, tuple[Schema, str]] = {
    "customers": (CUSTOMER_SCHEMA, "Customer"),
    "companies": (COMPANY_SCHEMA, "Company"),
    "connections": (CONNECTION_SCHEMA, "Connection"),
}


@lru_cache(maxsize=256)
def cached_query(text: str, schema_name: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a query once per distinct text (clients repeat the same query on every page)."""
    schema, type_name = SCHEMAS[schema_name]
    return compile_query(text, schema, type_name)


@lru_cache(maxsize=64)
def cached_order(order_by: str, schema_name: str) -> tuple[Callable[[Mapping[str, Any]], Any], bool]:
    """Compile an `orderBy` once per distinct text."""
    schema, type_name = SCHEMAS[schema_name]
    return compile_order(order_by, schema, type_name)


@lru_cache(maxsize=1024)
def cached_range(text: str, path: str) -> InstantRange | None:
    """`instant_range` once per distinct text (a seek client sends a new one every page)."""
    return instant_range(text, path)


def order_records(
    records: list[Json], schema_name: str, order_by: str | None
) -> tuple[list[Json], list[Any] | None]:
    """Records in Codat's order, and each one's `orderBy` sort key (None without `orderBy`).

    Ties, and every record without `orderBy`, keep a stable id order, descending orders included.
    """
    by_id = sorted(records, key=lambda r: str(r.get("id")))
    if not order_by:
        return by_id, None
    key, descending = cached_order(order_by, schema_name)
    keys = [key(r) for r in by_id]
    positions = sorted(range(len(by_id)), key=keys.__getitem__, reverse=descending)
    return [by_id[i] for i in positions], [keys[i] for i in positions]


def select(records: list[Json], schema_name: str, query: str | None, order_by: str | None) -> list[Json]:
    """Filter and order records as Codat does; ties (and no `orderBy`) keep a stable id order."""
    if query:
        predicate = cached_query(query, schema_name)
        records = [r for r in records if predicate(r)]
    return order_records(records, schema_name, order_by)[0]


@dataclass(frozen=True)
class SortedView:
    """One company's customers in one `orderBy` order, exactly as `select` orders them.

    `encoded` holds each record's JSON at the record's position. When the order field is a
    datetime, `instants` holds its non-null values in ascending order: a query that only bounds
    that field then selects one contiguous run of the view, found by bisection.
    """

    records: list[Json]
    encoded: list[bytes]
    order_path: str | None
    descending: bool
    instants: list[datetime] | None

    def select(self, query: str | None) -> Sequence[int]:
        """The positions of the records `query` selects, in order (a `range` when bisected).

        Args:
            query: A query already checked by `cached_query`, or None for every record.

        Returns:
            Positions into `records` and `encoded`.
        """
        if not query:
            return range(len(self.records))
        if self.instants is not None and self.order_path is not None:
            bounds = cached_range(query, self.order_path)
            if bounds is not None:
                return self._bisect(bounds)
        predicate = cached_query(query, "customers")
        return [i for i, record in enumerate(self.records) if predicate(record)]

    def _bisect(self, bounds: InstantRange) -> range:
        instants = self.instants
        assert instants is not None
        first, stop = 0, len(instants)
        if bounds.low is not None:
            first = (bisect_right if bounds.low_open else bisect_left)(instants, bounds.low)
        if bounds.high is not None:
            stop = (bisect_left if bounds.high_open else bisect_right)(instants, bounds.high)
        stop = max(first, stop)
        if self.descending:  # the dated records come first, latest first; nulls last
            return range(len(instants) - stop, len(instants) - first)
        nulls = len(self.records) - len(instants)  # nulls sort first ascending
        return range(nulls + first, nulls + stop)


def build_view(records: list[Json], order_by: str | None, encode: Callable[[Json], bytes]) -> SortedView:
    """Sort a company's customers once for `order_by`, for every later page to bisect or filter.

    Args:
        records: The company's customers, in any order.
        order_by: The `orderBy` text, or None for id order.
        encode: A record's JSON bytes.

    Returns:
        The view.

    Raises:
        QueryError: `order_by` is not a valid `orderBy` for customers.
    """
    with gc_paused():
        ordered, keys = order_records(records, "customers", order_by)
        encoded = [encode(record) for record in ordered]
    if not order_by or keys is None:
        return SortedView(ordered, encoded, None, False, None)
    schema, type_name = SCHEMAS["customers"]
    path, field_type, descending = parse_order(order_by, schema, type_name)
    instants = None
    if field_type == "datetime":  # keys are (1, instant), or (0,) for a null
        instants = [k[1] for k in keys if k[0]]
        if descending:
            instants.reverse()
    return SortedView(ordered, encoded, path, descending, instants)
