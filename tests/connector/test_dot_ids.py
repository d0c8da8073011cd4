"""Ids that are dot segments (`.`, `..`) and other hostile ids: one segment on the wire, decoded to the id.

`requests` removes a literal dot segment while preparing a URL and decodes `%2E` back to `.`; the
client's `segment` and its transport (`PacedAdapter.send`) keep `%2E` on the wire. What was sent is
read from the emulator's request log, which records each request target as it arrived.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.client import CodatClient, segment
from connector.emulator import names
from connector.emulator.data import attachment_bytes
from connector.emulator.emulator import Emulator
from connector.settings import RetryPolicy
from tests.synctools import Warehouse, readable
from tests.utils import API_KEY

# Each id beside the path segment it must go out as, written out by hand: `.` and `..` are RFC 3986
# dot segments, so their dots go as `%2E`; any other dot is data and goes as it is.
WIRE = {
    ".": "%2E",
    "..": "%2E%2E",
    "...": "...",
    "%2E": "%252E",
    "%2E%2E": "%252E%252E",
    ".%2E": ".%252E",
    "a/..": "a%2F..",
    "../x": "..%2Fx",
    "./": ".%2F",
    "trailing-dot.": "trailing-dot.",
    "A/B-001": "A%2FB-001",
    "what?1": "what%3F1",
    "hash#7": "hash%237",
    "100%": "100%25",
    "a+b": "a%2Bb",
    " leading-space": "%20leading-space",
    "a\\b": "a%5Cb",
    "Café-Ünïcödé": "Caf%C3%A9-%C3%9Cn%C3%AFc%C3%B6d%C3%A9",
    "東京-42": "%E6%9D%B1%E4%BA%AC-42",
}
IDS = [repr(i) for i in WIRE]


@pytest.fixture
def client(base_url: str) -> CodatClient:
    return CodatClient(API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_attempts=2))


@pytest.fixture
def company(emulator: Emulator):
    """The default account's first company: it holds the customers `..`, `.` and `...`."""
    first = next(iter(emulator.store.companies.values()))
    assert set(names.DOT_IDS) <= set(first.customers)
    return first


def sent(emulator: Emulator) -> list[tuple[str, str, int]]:
    """(operation, path as it arrived, status) of every request the emulator saw."""
    return [(e["operation"], e["path"], e["status"]) for e in emulator.request_log]


@pytest.mark.parametrize(("value", "wire"), WIRE.items(), ids=IDS)
def test_segment(value: str, wire: str) -> None:
    assert segment(value) == wire


@pytest.mark.parametrize("customer_id", WIRE, ids=IDS)
def test_each_id_goes_on_the_wire_as_its_segment_and_reaches_its_customer(
    emulator: Emulator, client: CodatClient, company, customer_id: str
) -> None:
    template = next(iter(company.customers.values()))
    record = company.customers.setdefault(customer_id, {**template, "id": customer_id})

    got = client.get_customer(company.id, customer_id)

    assert got == record
    assert sent(emulator) == [
        ("get-customer", f"/companies/{company.id}/data/customers/{WIRE[customer_id]}", 200)
    ]


@pytest.mark.parametrize("customer_id", names.DOT_IDS, ids=repr)
def test_every_operation_on_a_dot_customer_reaches_it(
    emulator: Emulator, client: CodatClient, company, customer_id: str
) -> None:
    [connection_id] = [c.id for c in company.accounting_connections]
    attachments = company.attachments.get((connection_id, customer_id), [])
    assert attachments, "the account's dot customers each have a file"

    got = client.get_customer(company.id, customer_id)
    listed = client.list_customer_attachments(company.id, connection_id, customer_id)
    read = [client.get_customer_attachment(company.id, connection_id, customer_id, a.id) for a in attachments]
    downloaded = [
        client.download_customer_attachment(company.id, connection_id, customer_id, a.id) for a in attachments
    ]

    assert got == company.customers[customer_id]
    assert listed == read == [a.to_json() for a in attachments]
    assert downloaded == [attachment_bytes(a) for a in attachments]
    customer = f"/companies/{company.id}/connections/{connection_id}/data/customers/{WIRE[customer_id]}"
    assert sent(emulator) == [
        ("get-customer", f"/companies/{company.id}/data/customers/{WIRE[customer_id]}", 200),
        ("list-customer-attachments", f"{customer}/attachments", 200),
        *[
            ("get-customer-attachment", f"{customer}/attachments/{WIRE.get(a.id, a.id)}", 200)
            for a in attachments
        ],
        *[
            ("download-customer-attachment", f"{customer}/attachments/{WIRE.get(a.id, a.id)}/download", 200)
            for a in attachments
        ],
    ]


@pytest.mark.parametrize("attachment_id", names.HOSTILE_ATTACHMENT_IDS, ids=repr)
def test_a_hostile_attachment_id_is_read_and_downloaded(
    emulator: Emulator, client: CodatClient, attachment_id: str
) -> None:
    holders = [
        (company.id, connection_id, customer_id, attachment)
        for company in emulator.store.companies.values()
        for (connection_id, customer_id), attachments in company.attachments.items()
        for attachment in attachments
        if attachment.id == attachment_id
    ]
    assert holders, f"the default account holds no attachment {attachment_id!r}"

    for company_id, connection_id, customer_id, attachment in holders:
        read = client.get_customer_attachment(company_id, connection_id, customer_id, attachment_id)
        content = client.download_customer_attachment(company_id, connection_id, customer_id, attachment_id)
        assert read == attachment.to_json()
        assert content == attachment_bytes(attachment)

    assert {status for _, _, status in sent(emulator)} == {200}
    assert all(f"/attachments/{WIRE[attachment_id]}" in path for _, path, _ in sent(emulator))


def test_pushing_an_update_to_the_customer_dot_dot_reaches_it(
    emulator: Emulator, client: CodatClient, company
) -> None:
    [connection_id] = [c.id for c in company.accounting_connections]

    operation = client.update_customer(company.id, connection_id, "..", {"customerName": "Renamed"})

    assert operation["status"] == "Pending"
    assert sent(emulator) == [
        (
            "update-customer",
            f"/companies/{company.id}/connections/{connection_id}/push/customers/%2E%2E",
            200,
        )
    ]


def test_a_sync_loads_every_dot_id_and_stores_each_file_in_the_files_folder(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    companies = readable(emulator)
    assert all(".." in c.customers for c in companies)
    dotted = {
        (c.id, connection_id, customer_id, a.id): attachment_bytes(a)
        for c in companies
        for (connection_id, customer_id), attachments in c.attachments.items()
        for a in attachments
        if a.id in names.HOSTILE_ATTACHMENT_IDS or customer_id in names.DOT_IDS
    }
    assert {key[0] for key in dotted if key[3] == ".."} == {c.id for c in companies}
    files = tmp_path / "files"
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(download_files=True, files_url=str(files))

    assert summary.ok
    assert summary.failed == []
    assert {r["status"] for r in summary.status_rows} == {"ok"}
    assert sorted(warehouse.rows("SELECT company_id, id FROM codat.customers")) == sorted(
        (c.id, customer_id) for c in companies for customer_id in c.customers
    )
    rows = warehouse.rows(
        "SELECT company_id, connection_id, customer_id, id, file_path, file_status "
        "FROM codat.customer_attachments"
    )
    stored = {tuple(r[:4]): (r[4], r[5]) for r in rows}
    assert dotted.keys() <= stored.keys()
    for key, content in dotted.items():
        path, status = stored[key]
        assert status == "downloaded", key
        assert files.resolve() in Path(path).resolve().parents, path
        assert Path(path).read_bytes() == content, key
    assert len({path for path, _ in stored.values()}) == len(rows)
    assert [e for e in sent(emulator) if e[2] != 200] == []
