"""Codat's `query=` filter and `orderBy=` sort, compiled to fast functions over records.

Syntax: `field<op>value` with ops `=` `!=` `~` `>` `<` `>=` `<=`, joined by `&&` (binds tighter)
and `||`, grouped with curly braces `{ ... }`. Parentheses do not group: they are characters of a
value. Whitespace around tokens is ignored. Values are unquoted, run until `&&`, `||`, `}` or the
end, and are trimmed. More than 32 nested groups are rejected as malformed.

Fields: a dotted path reaches into objects (`metadata.isDeleted`). A path through an array, an
array itself, an object itself, supplemental data or a property the type lacks (names are
case-sensitive) fails with `Error parsing query - Could not resolve property <path> on <Type>`.
Any other fault (syntax, an operator the field type lacks, a value that is not of the field's
type) fails with `Error parsing query - Malformed query.`; syntax is checked before fields.

Types:
- string: `=` and `!=` compare case-insensitively (an emulator choice), `~` is a
  case-insensitive "contains"; `>` `<` `>=` `<=` are malformed.
- number: every op but `~`.
- boolean: `=` and `!=` only, with `true` or `false` in any case.
- datetime: every op but `~`, compared as instants whatever the written form on either side
  (`2022-08-23`, `...Z`, zone-less read as UTC, `+hh:mm` offsets, 0 to 7 fractional digits).

Nulls: a null or missing field, a path through a missing or null object (`metadata` absent), or a
record value that is not of the field's type (a date that does not parse) makes the comparison
false for every operator, `!=` included: Codat says null fields cannot be queried.

Ordering: `field` or `-field` on any scalar field; nulls sort first ascending (so last
descending), datetimes as instants, strings case-insensitively then case-sensitively.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, TypeAlias

FieldType = Literal["string", "number", "boolean", "datetime", "array", "supplemental"]
Schema: TypeAlias = Mapping[str, "FieldType | Schema"]
Predicate: TypeAlias = Callable[[Mapping[str, Any]], bool]
_ValueTest: TypeAlias = Callable[[Any], bool]

CUSTOMER_SCHEMA: Schema = {
    "id": "string",
    "customerName": "string",
    "contactName": "string",
    "emailAddress": "string",
    "defaultCurrency": "string",
    "phone": "string",
    "registrationNumber": "string",
    "taxNumber": "string",
    "status": "string",
    "addresses": "array",
    "contacts": "array",
    "metadata": {"isDeleted": "boolean"},
    "supplementalData": "supplemental",
    "modifiedDate": "datetime",
    "sourceModifiedDate": "datetime",
}
COMPANY_SCHEMA: Schema = {
    "id": "string",
    "name": "string",
    "description": "string",
    "platform": "string",
    "redirect": "string",
    "lastSync": "datetime",
    "created": "datetime",
    "createdByUserName": "string",
    "products": "array",
    "tags": "supplemental",
    "dataConnections": "array",
}
CONNECTION_SCHEMA: Schema = {
    "id": "string",
    "integrationId": "string",
    "integrationKey": "string",
    "sourceId": "string",
    "sourceType": "string",
    "platformName": "string",
    "linkUrl": "string",
    "status": "string",
    "lastSync": "datetime",
    "created": "datetime",
    "dataConnectionErrors": "array",
    "connectionInfo": "supplemental",
}

MALFORMED_QUERY = "Error parsing query - Malformed query."
_MAX_DEPTH = 32
_PATH = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_PATH_RE = re.compile(_PATH)
_HEAD_RE = re.compile(rf"\s*({_PATH})\s*(!=|>=|<=|=|~|>|<)")
_VALUE_END_RE = re.compile(r"&&|\|\||\}")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INSTANT_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?(?:Z|[+-]\d{2}:[0-5]\d)?)?",
    re.ASCII,
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


class QueryError(ValueError):
    """Raised for a query Codat would reject; str(err) is the full Codat `error` text."""


def _malformed() -> QueryError:
    return QueryError(MALFORMED_QUERY)


def _unresolved(path: str, type_name: str) -> QueryError:
    return QueryError(f"Error parsing query - Could not resolve property {path} on {type_name}")


def parse_instant(text: str) -> datetime | None:
    """Parse any Codat date form to an aware UTC datetime.

    Args:
        text: `2022-08-23`, `2021-11-15T06:00:00Z`, zone-less `2021-11-15T01:00:00` (read as
            UTC) or `2021-11-15T01:00:00-05:00`, with 0 to 7 fractional digits (truncated to
            microseconds).

    Returns:
        The instant in UTC, or None if `text` is not such a date or falls outside `datetime`.
    """
    if _INSTANT_RE.fullmatch(text) is None:
        return None
    try:  # the pattern admits only forms that fromisoformat reads as above (it truncates too)
        parsed = datetime.fromisoformat(text)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# Record dates repeat across requests (the server re-filters the same records every page).
_cached_instant = lru_cache(maxsize=1 << 16)(parse_instant)


def _record_instant(value: Any) -> datetime | None:
    return _cached_instant(value) if isinstance(value, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class _Comparison:
    path: str
    op: str
    value: str


@dataclass(frozen=True)
class _Junction:
    op: Literal["&&", "||"]
    items: tuple[_Comparison | _Junction, ...]


_Node: TypeAlias = _Comparison | _Junction


class _Parser:
    """Recursive descent: any := all ('||' all)*; all := term ('&&' term)*; term := {any} | cmp."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._depth = 0

    def parse(self) -> _Node:
        node = self._any()
        if self._text[self._pos :].strip():
            raise _malformed()
        return node

    def _any(self) -> _Node:
        items = [self._all()]
        while self._eat("||"):
            items.append(self._all())
        return items[0] if len(items) == 1 else _Junction("||", tuple(items))

    def _all(self) -> _Node:
        items = [self._term()]
        while self._eat("&&"):
            items.append(self._term())
        return items[0] if len(items) == 1 else _Junction("&&", tuple(items))

    def _term(self) -> _Node:
        if not self._eat("{"):
            return self._comparison()
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise _malformed()
        node = self._any()
        if not self._eat("}"):
            raise _malformed()
        self._depth -= 1
        return node

    def _comparison(self) -> _Comparison:
        head = _HEAD_RE.match(self._text, self._pos)
        if head is None:
            raise _malformed()
        end = _VALUE_END_RE.search(self._text, head.end())
        self._pos = end.start() if end else len(self._text)
        value = self._text[head.end() : self._pos].strip()
        if not value:
            raise _malformed()
        return _Comparison(head[1], head[2], value)

    def _eat(self, token: str) -> bool:
        while self._pos < len(self._text) and self._text[self._pos].isspace():
            self._pos += 1
        if not self._text.startswith(token, self._pos):
            return False
        self._pos += len(token)
        return True


def _resolve(schema: Schema, path: str, type_name: str) -> FieldType:
    """Return the scalar type at `path`, or raise the unresolved-property error."""
    node: FieldType | Schema = schema
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise _unresolved(path, type_name)
        node = node[key]
    if isinstance(node, Mapping) or node in ("array", "supplemental"):
        raise _unresolved(path, type_name)
    return node


def _getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    keys = path.split(".")
    if len(keys) == 1:
        key = keys[0]
        return lambda record: record.get(key)

    def get(record: Mapping[str, Any]) -> Any:
        value: Any = record
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    return get


def _string_test(op: str, text: str) -> _ValueTest:
    needle = text.casefold()
    if op == "~":
        return lambda value: isinstance(value, str) and needle in value.casefold()
    if op not in ("=", "!="):
        raise _malformed()
    equal = op == "="
    return lambda value: isinstance(value, str) and (value.casefold() == needle) == equal


def _number_test(op: str, text: str) -> _ValueTest:
    if op == "~" or not _NUMBER_RE.fullmatch(text):
        raise _malformed()
    target = float(text) if any(c in text for c in ".eE") else int(text)
    compare = _COMPARE[op]
    return lambda value: _is_number(value) and compare(value, target)


def _boolean_test(op: str, text: str) -> _ValueTest:
    word = text.lower()
    if op not in ("=", "!=") or word not in ("true", "false"):
        raise _malformed()
    target, equal = word == "true", op == "="
    return lambda value: isinstance(value, bool) and (value == target) == equal


def _datetime_test(op: str, text: str) -> _ValueTest:
    target = parse_instant(text)
    if op == "~" or target is None:
        raise _malformed()
    compare = _COMPARE[op]

    def test(value: Any) -> bool:
        instant = _record_instant(value)
        return instant is not None and compare(instant, target)

    return test


_VALUE_TESTS: dict[str, Callable[[str, str], _ValueTest]] = {
    "string": _string_test,
    "number": _number_test,
    "boolean": _boolean_test,
    "datetime": _datetime_test,
}


def _all_of(parts: tuple[Predicate, ...]) -> Predicate:
    def predicate(record: Mapping[str, Any]) -> bool:
        return all(part(record) for part in parts)

    return predicate


def _any_of(parts: tuple[Predicate, ...]) -> Predicate:
    def predicate(record: Mapping[str, Any]) -> bool:
        return any(part(record) for part in parts)

    return predicate


def _compile(node: _Node, schema: Schema, type_name: str) -> Predicate:
    if isinstance(node, _Junction):
        parts = tuple(_compile(item, schema, type_name) for item in node.items)
        return _all_of(parts) if node.op == "&&" else _any_of(parts)
    test = _VALUE_TESTS[_resolve(schema, node.path, type_name)](node.op, node.value)
    get = _getter(node.path)
    return lambda record: test(get(record))


def compile_query(text: str, schema: Schema, type_name: str) -> Predicate:
    """Parse a Codat `query=` once and return a fast predicate over records.

    Args:
        text: The decoded `query` parameter, e.g. `modifiedDate>=2023-01-01 && status=Active`.
        schema: The record type's fields, e.g. `CUSTOMER_SCHEMA`.
        type_name: The record type as Codat names it in errors, e.g. `Customer`.

    Returns:
        A function that tells whether a record matches the query.

    Raises:
        QueryError: The query is malformed or names a property that cannot be queried.
    """
    return _compile(_Parser(text).parse(), schema, type_name)


_RANGE_OPS = frozenset({"=", ">", ">=", "<", "<="})


@dataclass(frozen=True)
class InstantRange:
    """The instants a conjunction of comparisons on one datetime field admits; never null.

    A bound of None is open-ended; `low_open` and `high_open` exclude the bound itself.
    """

    low: datetime | None = None
    low_open: bool = False
    high: datetime | None = None
    high_open: bool = False

    def narrowed(self, op: str, instant: datetime) -> InstantRange:
        """This range intersected with `field <op> instant`."""
        low, low_open, high, high_open = self.low, self.low_open, self.high, self.high_open
        if op in ("=", ">", ">="):
            is_open = op == ">"
            if low is None or instant > low or (instant == low and is_open):
                low, low_open = instant, is_open
        if op in ("=", "<", "<="):
            is_open = op == "<"
            if high is None or instant < high or (instant == high and is_open):
                high, high_open = instant, is_open
        return InstantRange(low, low_open, high, high_open)


def instant_range(text: str, path: str) -> InstantRange | None:
    """Read a query that only bounds one datetime field as the range of instants it admits.

    Args:
        text: A `query=` that `compile_query` accepts for the record type.
        path: A datetime field of the record type, e.g. `modifiedDate`.

    Returns:
        The range when `text` is comparisons of `path` by `=`, `>`, `>=`, `<` or `<=` joined by
        `&&` (braces allowed), else None.

    Raises:
        QueryError: The query is malformed.
    """
    found = InstantRange()
    for node in _conjuncts(_Parser(text).parse()):
        if not isinstance(node, _Comparison) or node.path != path or node.op not in _RANGE_OPS:
            return None
        instant = parse_instant(node.value)
        if instant is None:
            return None
        found = found.narrowed(node.op, instant)
    return found


def _conjuncts(node: _Node) -> list[_Node]:
    if isinstance(node, _Junction) and node.op == "&&":
        return [leaf for item in node.items for leaf in _conjuncts(item)]
    return [node]


def _string_sort_value(value: Any) -> Any:
    return (value.casefold(), value) if isinstance(value, str) else None


_SORT_VALUES: dict[str, Callable[[Any], Any]] = {
    "string": _string_sort_value,
    "number": lambda value: value if _is_number(value) else None,
    "boolean": lambda value: value if isinstance(value, bool) else None,
    "datetime": _record_instant,
}
_NULL_KEY = (0,)


def parse_order(order_by: str, schema: Schema, type_name: str) -> tuple[str, FieldType, bool]:
    """Read a Codat `orderBy=` (`field` or `-field`, spaces around ignored).

    Args:
        order_by: The decoded `orderBy` parameter.
        schema: The record type's fields, e.g. `CUSTOMER_SCHEMA`.
        type_name: The record type as Codat names it in errors, e.g. `Customer`.

    Returns:
        The field's path, its scalar type, and whether the order is descending.

    Raises:
        QueryError: The field is not a scalar property of the type, or the text is malformed.
    """
    text = order_by.strip()
    descending = text.startswith("-")
    path = text[1:] if descending else text
    if not _PATH_RE.fullmatch(path):
        raise _malformed()
    return path, _resolve(schema, path, type_name), descending


def compile_order(
    order_by: str, schema: Schema, type_name: str
) -> tuple[Callable[[Mapping[str, Any]], Any], bool]:
    """Compile a Codat `orderBy=` (`field` or `-field`) to a sort key.

    Args:
        order_by: The decoded `orderBy` parameter.
        schema: The record type's fields, e.g. `CUSTOMER_SCHEMA`.
        type_name: The record type as Codat names it in errors, e.g. `Customer`.

    Returns:
        A key that totally orders records (nulls first) and whether to sort descending. Ties
        keep their input order; the caller adds its own tie-break.

    Raises:
        QueryError: The field is not a scalar property of the type, or the text is malformed.
    """
    path, field_type, descending = parse_order(order_by, schema, type_name)
    sort_value = _SORT_VALUES[field_type]
    get = _getter(path)

    def key(record: Mapping[str, Any]) -> Any:
        value = sort_value(get(record))
        return _NULL_KEY if value is None else (1, value)

    return key, descending
