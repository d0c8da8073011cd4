"""Dot-segment ids: every account holds them, `%2E%2E` reaches the id `..`, a raw `..` climbs a level.

Requests go out through `http.client`, which sends the target as written: `requests` would remove
or decode the very segments under test.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from connector.emulator import names
from connector.emulator.data import attachment_bytes, generate_account
from connector.emulator.emulator import Emulator
from connector.emulator.server import parse_request, raw_segments
from connector.emulator.store import Sizing
from tests.utils import DEFAULT_SIZING, ERROR_KEYS, raw_get

DEMO_SIZING = Sizing(seed=7, companies=3, customers=2000)  # pipelines/demo.py
C = "/companies/c/data/customers"


def assert_codat_404(status: int, body: bytes, error: str) -> None:
    assert status == 404
    answer = json.loads(body)
    assert set(answer) == ERROR_KEYS
    assert (answer["statusCode"], answer["error"], answer["canBeRetried"]) == (404, error, "Unknown")


@pytest.fixture
def dotted(emulator: Emulator):
    """The default account's first company: it holds the customers `..`, `.` and `...`."""
    company = next(iter(emulator.store.companies.values()))
    assert set(names.DOT_IDS) <= set(company.customers)
    return company


def dot_attachment(company):
    """(connection id, customer id, attachment) of the company's attachment `..`."""
    return next(
        (connection_id, customer_id, attachment)
        for (connection_id, customer_id), attachments in company.attachments.items()
        for attachment in attachments
        if attachment.id == ".."
    )


# -- the generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("sizing", [DEFAULT_SIZING, DEMO_SIZING], ids=["default", "demo"])
def test_every_company_holds_a_customer_and_an_attachment_with_the_id_dot_dot(sizing: Sizing) -> None:
    account = generate_account(sizing.seed, sizing.companies, sizing.customers)

    assert all(".." in company.customers for company in account)
    assert all(
        any(a.id == ".." for files in company.attachments.values() for a in files) for company in account
    )
    assert set(names.DOT_IDS) <= {cid for company in account for cid in company.customers}
    attachment_ids = {a.id for company in account for files in company.attachments.values() for a in files}
    assert set(names.HOSTILE_ATTACHMENT_IDS) <= attachment_ids


def test_dot_ids_replace_generated_ids_and_keep_the_account_sizes() -> None:
    """The sizes are those the default account had before dot ids (they replace drawn ids)."""
    account = generate_account(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)

    assert [len(c.customers) for c in account] == [169, 80, 51]
    assert [sum(len(files) for files in c.attachments.values()) for c in account] == [79, 25, 17]
    assert [[cid for cid in c.customers if cid in names.DOT_IDS] for c in account] == [
        ["..", ".", "..."],
        [".."],
        [".."],
    ]


def test_each_company_keeps_attachment_ids_unique_per_customer() -> None:
    for company in generate_account(DEMO_SIZING.seed, DEMO_SIZING.companies, DEMO_SIZING.customers):
        for files in company.attachments.values():
            assert len({a.id for a in files}) == len(files)


# -- parsing a request target ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        (f"{C}/%2E%2E", ["companies", "c", "data", "customers", "%2E%2E"]),
        (f"{C}/%2e%2E", ["companies", "c", "data", "customers", "%2e%2E"]),
        (f"{C}/.%2E", ["companies", "c", "data", "customers", ".%2E"]),
        (f"{C}/...", ["companies", "c", "data", "customers", "..."]),
        (f"{C}/..", ["companies", "c", "data"]),
        (f"{C}/.", ["companies", "c", "data", "customers"]),
        (f"{C}/../attachments", ["companies", "c", "data", "attachments"]),
        (f"{C}/x/./../%2E", ["companies", "c", "data", "customers", "%2E"]),
        ("/..", []),
        ("/companies/", ["companies"]),
        (f"{C}/A%2FB", ["companies", "c", "data", "customers", "A%2FB"]),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_raw_segments_lose_dot_segments_before_decoding(path: str, segments: list[str]) -> None:
    assert raw_segments(path) == segments


@pytest.mark.parametrize(
    ("segment", "customer_id"),
    [("%2E%2E", ".."), ("%2e%2e", ".."), (".%2E", ".."), ("%2E", "."), ("...", "..."), ("%252E", "%2E")],
)
def test_parse_request_decodes_each_segment_after_splitting(segment: str, customer_id: str) -> None:
    request = parse_request("GET", f"{C}/{segment}?page=1", {}, b"")

    assert request.segments == ["companies", "c", "data", "customers", customer_id]
    assert request.path == f"{C}/{segment}"  # the log keeps what was sent


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "customer_id"),
    [("%2E%2E", ".."), ("%2e%2e", ".."), (".%2E", ".."), ("%2E", "."), ("...", "..."), ("%2E%2E%2E", "...")],
)
def test_an_encoded_dot_segment_reaches_its_customer(
    emulator: Emulator, base_url: str, dotted, segment: str, customer_id: str
) -> None:
    status, body = raw_get(base_url, f"/companies/{dotted.id}/data/customers/{segment}")

    assert status == 200
    assert json.loads(body) == dotted.customers[customer_id]
    [entry] = emulator.request_log
    assert (entry["operation"], entry["path"]) == (
        "get-customer",
        f"/companies/{dotted.id}/data/customers/{segment}",
    )


def test_a_raw_dot_dot_climbs_a_level_and_gets_codat_404(emulator: Emulator, base_url: str, dotted) -> None:
    """`…/customers/..` is `…/data`, where no route is: Codat's `ErrorMessage` 404, not the customer `..`."""
    path = f"/companies/{dotted.id}/data/customers/.."

    status, body = raw_get(base_url, path)

    assert_codat_404(status, body, f"No route for GET {path}")
    [entry] = emulator.request_log
    assert (entry["operation"], entry["status"], entry["path"]) == ("unknown", 404, path)


def test_a_raw_dot_is_the_customer_listing_not_the_customer_dot(base_url: str, dotted) -> None:
    status, body = raw_get(base_url, f"/companies/{dotted.id}/data/customers/.")

    assert status == 200
    page = json.loads(body)
    assert "results" in page
    assert page != dotted.customers["."]


def test_a_raw_dot_dot_attachment_is_not_the_attachment_dot_dot(emulator: Emulator, base_url: str) -> None:
    company = next(iter(emulator.store.companies.values()))
    connection_id, customer_id, attachment = dot_attachment(company)
    customer = (
        f"/companies/{company.id}/connections/{connection_id}/data/customers/{quote(customer_id, safe='')}"
    )
    raw = f"{customer}/attachments/../download"

    assert_codat_404(*raw_get(base_url, raw), f"No route for GET {raw}")
    assert raw_get(base_url, f"{customer}/attachments/%2E%2E/download") == (200, attachment_bytes(attachment))
    assert [e["operation"] for e in emulator.request_log] == ["unknown", "download-customer-attachment"]
