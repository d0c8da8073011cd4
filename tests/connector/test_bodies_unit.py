"""Customer pages read by Arrow from their bytes give exactly what Python's json and the builder give."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from connector.batches import PageBuilder
from connector.bodies import ArrowBody, CustomerBody, JsonBody, read_customer_body
from connector.emulator.emulator import Emulator
from tests.utils import CodatSession, customers_path

SEEN_AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LOAD_ID = "1796650000.1"


@pytest.fixture(autouse=True)
def fixed_row_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same `_dlt_id`s whichever way a page was read, so that two builds compare row for row."""
    monkeypatch.setattr("connector.batches.secrets.token_urlsafe", lambda _: "page")


def tables_of(body: CustomerBody) -> dict[str, pa.Table]:
    page = body.build(PageBuilder(), "company-1", SEEN_AT, LOAD_ID, body.modified())
    return {"customers": page.customers, **page.children}


def assert_read_alike(content: bytes) -> CustomerBody:
    """`content` read by `read_customer_body` and by `json.loads` agree on everything the sync reads."""
    read = read_customer_body(content)
    assert isinstance(read, CustomerBody)
    python = JsonBody(json.loads(content))
    assert read.total == python.total
    assert read.ids() == python.ids()
    assert read.stamps() == python.stamps()
    assert read.modified().equals(python.modified())
    assert read.sent() == python.records
    assert tables_of(read) == tables_of(python)
    keep = [i % 3 != 1 for i in range(len(python))]
    assert read.select(keep).sent() == python.select(keep).sent()
    return read


def page(records: list[Any], **more: Any) -> bytes:
    return json.dumps({"results": records, "pageNumber": 1, "totalResults": len(records), **more}).encode()


def test_every_page_of_the_emulator_is_read_by_arrow_exactly_as_python_reads_it(
    emulator: Emulator, codat: CodatSession
) -> None:
    emulator.reset(11, 4, 6000)
    supplemental = 0
    for company in emulator.store.companies.values():
        answer = codat.get(customers_path(company.id), params={"pageSize": 5000, "orderBy": "modifiedDate"})
        if answer.status_code != 200:
            continue  # a company Codat has not read yet
        read = assert_read_alike(answer.content)
        assert isinstance(read, ArrowBody), company.id
        supplemental += sum(1 for r in read.sent() if r.get("supplementalData") is not None)
    assert supplemental > 0, "no page carried supplementalData: the test proves less than it says"


RECORD = {
    "id": "c-1",
    "customerName": "Acme",
    "modifiedDate": "2024-05-01T10:00:00Z",
    "sourceModifiedDate": "2024-04-30T09:00:00",
    "metadata": {"isDeleted": True},
    "addresses": [{"type": "Billing", "city": "Leeds"}],
    "contacts": [{"name": "Ann", "address": {"city": "York"}, "phone": [{"number": "1", "type": "Mobile"}]}],
}


@pytest.mark.parametrize(
    "content",
    [
        page([RECORD, {**RECORD, "id": "c-2", "customerName": 'Zoë \u00e9 "quoted"\nline \\ /'}]),
        json.dumps({"results": [RECORD], "totalResults": 7}, indent=2).encode(),  # newlines between tokens
        json.dumps({"results": [RECORD]}, ensure_ascii=False).encode(),  # no total, UTF-8 as is
        b'{"results": null, "totalResults": 0}',
        b'{"totalResults": 0}',
        page([]),
        page([{"id": "c-1"}, {"id": None, "modifiedDate": None}, {}]),
        page(
            [{**RECORD, "supplementalData": s} for s in (None, {}, {"content": None}, {"content": {"a": 1}})]
        ),
        page([{**RECORD, "supplementalData": {"content": {"tags": ["a"], "n": 1.5, "ok": False}}}]),
        page(
            [{**RECORD, "modifiedDate": "2024-13-01T00:00:00Z", "sourceModifiedDate": "0001-01-01T00:00:00"}]
        ),
        page([{**RECORD, "addresses": [], "contacts": [{"phone": None, "address": None}]}]),
        page([RECORD], _links={"self": {"href": "/x"}}, pageSize=5000),
    ],
    ids=[
        "text",
        "indented",
        "utf8-no-total",
        "results-null",
        "no-results",
        "empty",
        "sparse",
        "supplemental-forms",
        "supplemental-nested",
        "odd-dates",
        "empty-children",
        "links",
    ],
)
def test_pages_of_codats_documented_types_are_read_by_arrow(content: bytes) -> None:
    assert isinstance(assert_read_alike(content), ArrowBody)


@pytest.mark.parametrize(
    "content",
    [
        page([{**RECORD, "loyaltyTier": "gold"}]),
        page([{**RECORD, "addresses": [{"city": "Leeds", "unit": "4B"}]}]),
        page([{**RECORD, "contacts": [{"phone": [{"number": "1", "ext": "2"}]}]}]),
        page([{**RECORD, "metadata": {"isDeleted": False, "source": "x"}}]),
        page([{**RECORD, "customerName": 12345}]),
        page([{**RECORD, "metadata": {"isDeleted": "true"}}]),
        page([{**RECORD, "addresses": {"city": "Leeds"}}]),
        page([{**RECORD, "contacts": [{"address": "York"}]}]),
        page([RECORD, None]),
        page([{**RECORD, "addresses": [None]}]),
        page([{**RECORD, "contacts": [None]}]),
        page([{**RECORD, "contacts": [{"phone": [None]}]}]),
        page([{**RECORD, "supplementalData": "text"}, {**RECORD, "supplementalData": {"content": 1}}]),
        b'{"results": [{"id": "a", "id": "b"}], "totalResults": 1}',
        b'{"results": [{"id": "\\ud800"}], "totalResults": 1}',
        b'{"results": [{"id": "a"}], "totalResults": "1"}',
        b'{"results": [{"id": "a", "supplementalData": {"content": {"x": NaN}}}], "totalResults": 1}',
    ],
    ids=[
        "unknown-field",
        "unknown-address-field",
        "unknown-phone-field",
        "unknown-metadata-field",
        "number-for-text",
        "text-for-boolean",
        "object-for-list",
        "text-for-object",
        "null-record",
        "null-address",
        "null-contact",
        "null-phone",
        "supplemental-of-two-types",
        "key-twice",
        "lone-surrogate",
        "total-as-text",
        "not-a-number",
    ],
)
def test_pages_arrow_cannot_read_exactly_are_read_by_python(content: bytes) -> None:
    read = read_customer_body(content)

    assert isinstance(read, JsonBody)
    assert read.records == (json.loads(content).get("results") or [])


def test_a_body_that_is_not_one_object_is_left_to_the_paginator_to_refuse() -> None:
    assert read_customer_body(b"[1, 2]") == [1, 2]
    with_mark = read_customer_body(b'\xef\xbb\xbf{"results": [{"id": "a"}], "totalResults": 1}')
    assert isinstance(with_mark, JsonBody)  # a byte-order mark: Python's json reads past it
    assert (with_mark.records, with_mark.total) == ([{"id": "a"}], 1)
    with pytest.raises(ValueError, match="Expecting"):
        read_customer_body(b'{"results": [{"id": "a"}')
    with pytest.raises(ValueError, match="Extra data"):
        read_customer_body(b'{"results": []}{"results": []}')
