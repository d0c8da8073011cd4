"""Codat dates, record digests and the attachment row, against literal values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest

from connector.batches import parse_dates
from connector.records import (
    ExtractionClock,
    format_codat_datetime,
    map_attachment,
    parse_codat_datetime,
    record_hash,
)
from tests.synctools import codat_instant

MIDNIGHT = datetime(2022, 10, 23, tzinfo=UTC)

# The forms Codat documents and the emulator serves (the tests' own reading must agree).
DOCUMENTED = {
    "2022-10-23T00:00:00Z": MIDNIGHT,
    "2022-10-23T00:00:00": MIDNIGHT,
    "2022-10-23T00:00:00.5Z": MIDNIGHT.replace(microsecond=500_000),
    "2022-10-23T00:00:00.123Z": MIDNIGHT.replace(microsecond=123_000),
    "2022-10-23T00:00:00.1234567Z": MIDNIGHT.replace(microsecond=123_456),
    "2022-10-23T00:00:00.9999999Z": MIDNIGHT.replace(microsecond=999_999),
    "2022-10-23T00:00:00.1234567": MIDNIGHT.replace(microsecond=123_456),
    "2022-10-23T01:00:00+01:00": MIDNIGHT,
    "2022-10-22T19:00:00-05:00": MIDNIGHT,
    "2022-10-23T05:30:00+05:30": MIDNIGHT,
    "2022-10-23T00:30:00.1234567+01:00": datetime(2022, 10, 22, 23, 30, 0, 123_456, tzinfo=UTC),
    "2023-12-31T20:00:00-05:00": datetime(2024, 1, 1, 1, tzinfo=UTC),
    "2024-02-29T23:59:59Z": datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    "0001-01-01T00:00:00": None,
    "0001-01-01T00:00:00Z": None,
}
# Day-only forms are documented too.
DAYS = {"2022-10-23": MIDNIGHT, "0001-01-01": None}
READABLE = {**DOCUMENTED, **DAYS}
# Forms Codat does not write (a space for the `T`, no seconds, `+0100`, padding): not dates,
# as for the emulator's query language.
GARBAGE: list[Any] = [
    "2022-10-23T00:00",
    "2022-10-23 00:00:00Z",
    "2022-10-23T01:00:00+0100",
    "2022-10-23T01:00:00 +01:00",
    " 2022-10-23T00:00:00Z ",
    " 2022-10-23 ",
    "9999-12-31T23:00:00-05:00",
    None,
    "",
    "   ",
    "yesterday",
    "2022-13-01T00:00:00Z",
    "2022-02-30T00:00:00Z",
    "2022-10-23T25:00:00Z",
    "2022-10-23Tnoon",
    " 2022-02-30T00:00:00Z ",
    " 2022-10-23T00:00:00.12345678Z ",
    "23/10/2022",
    20221023,
    1666483200.0,
    MIDNIGHT,
    ["2022-10-23T00:00:00Z"],
]


@pytest.mark.parametrize(("text", "instant"), READABLE.items(), ids=[repr(t) for t in READABLE])
def test_parse_codat_datetime(text: str, instant: datetime | None) -> None:
    parsed = parse_codat_datetime(text)

    assert parsed == instant
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", GARBAGE, ids=repr)
def test_parse_codat_datetime_reads_anything_else_as_none(value: Any) -> None:
    assert parse_codat_datetime(value) is None


@pytest.mark.parametrize(("text", "instant"), DOCUMENTED.items(), ids=[repr(t) for t in DOCUMENTED])
def test_the_tests_own_date_reading_agrees_with_the_literals(text: str, instant: datetime | None) -> None:
    assert codat_instant(text) == instant


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (MIDNIGHT, "2022-10-23T00:00:00.000000Z"),
        (datetime(2022, 10, 23, 1, 2, 3, 4, tzinfo=UTC), "2022-10-23T01:02:03.000004Z"),
        (datetime(2022, 10, 23, 1, tzinfo=timezone(timedelta(hours=1))), "2022-10-23T00:00:00.000000Z"),
    ],
    ids=["utc", "microseconds", "another-zone"],
)
def test_format_codat_datetime(moment: datetime, text: str) -> None:
    assert format_codat_datetime(moment) == text


# -- record digests ---------------------------------------------------------------------------

# Digests from coreutils: printf '%s' '<sorted compact JSON, UTF-8>' | b2sum -l 80
PLAIN = {"id": "C-1", "modifiedDate": "2024-05-01T10:00:00Z"}
PLAIN_DIGEST = "b5eeea8cdaab0408c1b1"
NESTED = {"id": "C-2", "customerName": "Café Ünïcödé", "addresses": [{"type": "Billing", "city": "Zürich"}]}
NESTED_DIGEST = "cfae367c1f6d7cecc183"


def test_record_hash_is_a_stable_literal() -> None:
    # A saved boundary holds these digests: a new digest would reload every boundary record.
    assert record_hash(PLAIN) == PLAIN_DIGEST
    assert record_hash(NESTED) == NESTED_DIGEST


def test_record_hash_ignores_key_order_at_every_depth() -> None:
    reordered = {
        "addresses": [{"city": "Zürich", "type": "Billing"}],
        "customerName": "Café Ünïcödé",
        "id": "C-2",
    }

    assert record_hash({"modifiedDate": "2024-05-01T10:00:00Z", "id": "C-1"}) == PLAIN_DIGEST
    assert record_hash(reordered) == NESTED_DIGEST


@pytest.mark.parametrize(
    "changed",
    [
        {**PLAIN, "modifiedDate": "2024-05-01T10:00:01Z"},
        {**PLAIN, "status": None},
        {"id": "C-1"},
        {**NESTED, "addresses": [{"type": "Billing", "city": "Zurich"}]},
        {**NESTED, "addresses": [{"type": "Billing", "city": "Zürich"}] * 2},
    ],
    ids=["a-value", "a-null-key-added", "a-key-removed", "a-nested-value", "a-list-item-added"],
)
def test_record_hash_changes_with_any_content(changed: dict[str, Any]) -> None:
    assert record_hash(changed) not in {PLAIN_DIGEST, NESTED_DIGEST}


# -- attachment rows --------------------------------------------------------------------------

LISTED = datetime(2026, 3, 2, 6, 0, 0, 250000, tzinfo=UTC)  # the instant of the listing


def test_map_attachment_keys_the_row_and_reads_its_date() -> None:
    attachment = {
        "id": "att-1",
        "name": "invoice.pdf",
        "contentType": "application/pdf",
        "dateCreated": "2022-10-23T01:00:00+01:00",
        "fileSize": 1024,
        "includeWhenSent": False,
    }

    row = map_attachment(attachment, "company-1", "connection-1", "customer/1", LISTED)

    assert row == {
        "id": "att-1",
        "name": "invoice.pdf",
        "contentType": "application/pdf",
        "dateCreated": MIDNIGHT,
        "fileSize": 1024,
        "includeWhenSent": False,
        "companyId": "company-1",
        "connectionId": "connection-1",
        "customerId": "customer/1",
        "listedAt": LISTED,
        "isDeleted": False,
    }
    assert attachment["dateCreated"] == "2022-10-23T01:00:00+01:00"  # the input is not changed


@pytest.mark.parametrize(
    "attachment",
    [
        {"id": "att-2"},
        {"id": "att-2", "dateCreated": None},
        {"id": "att-2", "dateCreated": "0001-01-01T00:00:00"},
    ],
    ids=["missing", "null", "codat-no-date"],
)
def test_map_attachment_without_a_date(attachment: dict[str, Any]) -> None:
    row = map_attachment(attachment, "company-1", "connection-1", "customer-1", LISTED)

    assert row == {
        "id": "att-2",
        "dateCreated": None,
        "companyId": "company-1",
        "connectionId": "connection-1",
        "customerId": "customer-1",
        "listedAt": LISTED,
        "isDeleted": False,
    }


def test_map_attachment_keys_come_from_the_caller_not_the_attachment() -> None:
    attachment = {"id": "att-3", "companyId": "other", "customerId": "other"}

    row = map_attachment(attachment, "company-1", "connection-1", "customer-1", LISTED)

    assert (row["companyId"], row["connectionId"], row["customerId"]) == (
        "company-1",
        "connection-1",
        "customer-1",
    )


def test_extraction_clock_is_strictly_increasing_and_utc() -> None:
    clock = ExtractionClock()

    stamps = [clock.now() for _ in range(1000)]

    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert {s.utcoffset() for s in stamps} == {timedelta(0)}


TEXT_GARBAGE = [g for g in GARBAGE if isinstance(g, str) or g is None] + ["0000-01-01T00:00:00Z"]


def read_column(texts: list[Any]) -> list[datetime | None]:
    return list(parse_dates(pa.array(texts, pa.string())).to_pylist())


@pytest.mark.parametrize(("text", "instant"), READABLE.items(), ids=[repr(t) for t in READABLE])
def test_parse_dates_reads_each_form_as_the_literal(text: str, instant: datetime | None) -> None:
    assert read_column([text]) == [instant]
    assert read_column([text, "2022-10-23T00:00:00Z", None]) == [instant, MIDNIGHT, None]


def test_parse_dates_reads_a_column_of_every_readable_form_at_once() -> None:
    assert read_column(list(READABLE)) == list(READABLE.values())


@pytest.mark.parametrize("value", TEXT_GARBAGE, ids=repr)
def test_parse_dates_reads_what_is_no_date_as_null_beside_dates(value: str | None) -> None:
    assert read_column([value]) == [None]
    assert read_column(["2022-10-23T00:00:00", value, "2022-10-23"]) == [MIDNIGHT, None, MIDNIGHT]


def test_parse_dates_of_an_empty_or_all_null_column() -> None:
    assert read_column([]) == []
    assert read_column([None, None]) == [None, None]
