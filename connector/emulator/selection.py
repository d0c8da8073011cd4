"""Selecting records as Codat does: filter and order, or bisect a company's sorted view."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cmp_to_key, lru_cache
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
# A view position's sort key: the `orderBy` key (`()` without `orderBy`), then the id.
ViewKey = tuple[Any, str]


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
    that field then selects one contiguous run of the view, found by bisection. `keys` holds
    each position's `ViewKey`, so that a change can be merged in without sorting again.
    """

    records: list[Json]
    encoded: list[bytes]
    order_path: str | None
    descending: bool
    instants: list[datetime] | None
    keys: list[ViewKey]

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
        ordered, order_keys = order_records(records, "customers", order_by)
        encoded = [encode(record) for record in ordered]
        ids = [str(record.get("id")) for record in ordered]
        keys = list(zip(order_keys if order_keys is not None else [()] * len(ids), ids, strict=True))
    return _view(ordered, encoded, keys, order_by)


def update_view(
    view: SortedView,
    order_by: str | None,
    changes: Sequence[tuple[Json | None, Json]],
    encode: Callable[[Json], bytes],
) -> SortedView | None:
    """Merge changed customers into a view, as `build_view` would order them, without sorting it.

    Costs O(n + k log n) for k changes: the k records are sorted, placed by bisection, and the
    view's lists are rebuilt from slices. The given view is left as it is.

    Args:
        view: A view built by `build_view` (or this function) for `order_by`.
        changes: Per changed customer, its record in `view` (None if it was added since) and
            its record now.
        order_by: The `orderBy` text the view was built for, or None.
        encode: A record's JSON bytes.

    Returns:
        The new view, or None if a record said to be in `view` is not there.
    """
    composite = _view_key(order_by)
    position = _bisector(view.keys, view.descending)
    drops = []
    for old, _ in changes:
        if old is not None:
            key = composite(old)
            at = position(key)
            if at == len(view.keys) or view.keys[at] != key or view.records[at] is not old:
                return None
            drops.append(at)
    fresh = sorted(((composite(new), new) for _, new in changes), key=_sort_key(view.descending))
    with gc_paused():
        plan = _plan(sorted(drops), [position(key) for key, _ in fresh])
        records = _splice(view.records, plan, [new for _, new in fresh])
        encoded = _splice(view.encoded, plan, [encode(new) for _, new in fresh])
        keys = _splice(view.keys, plan, [key for key, _ in fresh])
    return _view(records, encoded, keys, order_by)


def _view(records: list[Json], encoded: list[bytes], keys: list[ViewKey], order_by: str | None) -> SortedView:
    if not order_by:
        return SortedView(records, encoded, None, False, None, keys)
    schema, type_name = SCHEMAS["customers"]
    path, field_type, descending = parse_order(order_by, schema, type_name)
    instants = None
    if field_type == "datetime":  # order keys are (1, instant), or (0,) for a null
        instants = [k[0][1] for k in keys if k[0][0]]
        if descending:
            instants.reverse()
    return SortedView(records, encoded, path, descending, instants, keys)


def _view_key(order_by: str | None) -> Callable[[Json], ViewKey]:
    if not order_by:
        return lambda record: ((), str(record.get("id")))
    key = cached_order(order_by, "customers")[0]
    return lambda record: (key(record), str(record.get("id")))


def _compare_descending(a: ViewKey, b: ViewKey) -> int:
    """View order for a descending `orderBy`: the order key descending, ties by id ascending."""
    if a[0] == b[0]:
        return (a[1] > b[1]) - (a[1] < b[1])
    return -1 if b[0] < a[0] else 1


_DESCENDING = cmp_to_key(_compare_descending)


def _sort_key(descending: bool) -> Callable[[tuple[ViewKey, Json]], Any]:
    if descending:
        return lambda item: _DESCENDING(item[0])
    return lambda item: item[0]


def _bisector(keys: list[ViewKey], descending: bool) -> Callable[[ViewKey], int]:
    """Where a key belongs in a view's keys: the position of the first key not before it."""
    if descending:
        return lambda key: bisect_left(keys, _DESCENDING(key), key=_DESCENDING)
    return lambda key: bisect_left(keys, key)


# A splice plan step: copy old[start:stop], then the new item at `fresh` (-1 for none).
_Step = tuple[int, int, int]


def _plan(drops: list[int], inserts: list[int]) -> list[_Step]:
    """Steps that drop old positions and insert new items before old positions (both ascending)."""
    steps: list[_Step] = []
    cursor, d, i = 0, 0, 0
    while d < len(drops) or i < len(inserts):
        if i < len(inserts) and (d == len(drops) or inserts[i] <= drops[d]):
            stop = max(cursor, inserts[i])
            steps.append((cursor, stop, i))
            cursor, i = stop, i + 1
        else:
            steps.append((cursor, drops[d], -1))
            cursor, d = drops[d] + 1, d + 1
    steps.append((cursor, -1, -1))
    return steps


def _splice(old: list[Any], plan: list[_Step], fresh: list[Any]) -> list[Any]:
    out: list[Any] = []
    for start, stop, item in plan:
        out.extend(old[start:stop] if stop >= 0 else old[start:])
        if item >= 0:
            out.append(fresh[item])
    return out
