"""The emulator's account generator: determinism, sizes, company states, shapes, attachments."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from connector.emulator import names
from connector.emulator.data import (
    SPECIAL_STATES,
    attachment_bytes,
    company_states,
    generate_account,
    new_customer,
    split_customers,
)
from connector.emulator.model import (
    STATUS_COMPLETE,
    STATUS_FETCHING,
    STATUS_NEVER_READ,
    Attachment,
)
from tests.shapes import path_types
from tests.utils import FIXTURES

EXAMPLES = FIXTURES / "examples"
SEED = 20240110
# 24 companies: 20 normal ones get every platform once, then the four special states.
COMPANIES, CUSTOMERS = 24, 12_000
LOWER, UPPER = datetime(2019, 1, 1, tzinfo=UTC), datetime(2025, 12, 31, tzinfo=UTC)

CUSTOMER_STATUSES = {"Unknown", "Active", "Archived"}
ADDRESS_TYPES = {"Unknown", "Billing", "Delivery"}
PHONE_TYPES = {"Primary", "Landline", "Mobile", "Fax", "Unknown"}


def dump(account):
    """Every field of every company, in order, as one string."""
    parts = []
    for company in account:
        fields = dataclasses.asdict(company)
        fields["attachments"] = sorted(
            (key, [dataclasses.asdict(a) for a in files]) for key, files in company.attachments.items()
        )
        parts.append(repr(fields))
    return "\n".join(parts)


def instant(text):
    """Parse a Codat date; zone-less ones are UTC."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def account():
    return generate_account(SEED, COMPANIES, CUSTOMERS)


@pytest.fixture(scope="module")
def customers(account):
    return [record for company in account for record in company.customers.values()]


@pytest.fixture(scope="module")
def attachments(account):
    return [a for company in account for files in company.attachments.values() for a in files]


# --- determinism and sizes ----------------------------------------------------------------


def test_same_seed_gives_identical_account():
    assert dump(generate_account(3, 7, 900)) == dump(generate_account(3, 7, 900))


def test_other_seed_gives_other_account():
    first, second = generate_account(3, 7, 900), generate_account(4, 7, 900)
    assert dump(first) != dump(second)
    assert {c.id for c in first}.isdisjoint({c.id for c in second})
    assert set(first[0].customers) != set(second[0].customers)


@pytest.mark.parametrize(
    ("companies", "total"),
    [(1, 10), (3, 100), (3, 2), (4, 50), (5, 37), (8, 6000), (12, 5), (30, 3000), (6, 0)],
    ids=lambda v: str(v),
)
def test_regular_companies_hold_exactly_the_total(companies, total):
    account = generate_account(1, companies, total)
    states = company_states(companies)
    regular = [c for c, s in zip(account, states, strict=True) if s in ("normal", "two_connections")]
    assert len(account) == companies
    assert sum(len(c.customers) for c in regular) == total
    if total >= len(regular):
        assert all(c.customers for c in regular)
    for company, state in zip(account, states, strict=True):
        if state in ("never_read", "no_accounting"):
            assert not company.customers
        if state == "fetching":
            assert len(company.customers) == 5


def test_sizes_are_skewed_few_large_many_small():
    sizes = split_customers(100_000, 40)
    assert sum(sizes) == 100_000
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > 20 * sizes[-1]
    assert sum(sizes[:4]) > sum(sizes) / 2


def test_split_gives_everyone_one_when_it_can():
    assert split_customers(5, 5) == [1, 1, 1, 1, 1]
    assert sum(split_customers(3, 5)) == 3
    assert split_customers(0, 0) == []


def test_a_large_account_holds_exactly_the_customers_asked_for():
    # Generation time is a benchmark figure (`make bench`), not a test: machines are noisy.
    account = generate_account(1, 3, 100_000)
    assert sum(len(c.customers) for c in account) == 100_000


# --- companies and connections -----------------------------------------------------------


def test_three_companies_are_all_normal():
    for company in generate_account(9, 3, 300):
        assert company.customers_status == STATUS_COMPLETE
        assert len(company.connections) == 1
        assert company.connections[0].is_accounting
        assert company.connections[0].status == "Linked"
        assert company.last_sync == company.customers_last_successful_sync is not None


def test_special_states_sit_at_the_last_four_indexes(account):
    assert company_states(COMPANIES)[-4:] == list(SPECIAL_STATES)
    never_read, no_accounting, two_connections, fetching = account[-4:]
    assert never_read.customers_status == STATUS_NEVER_READ
    assert never_read.last_sync is None
    assert never_read.customers_last_successful_sync is None
    assert [c.source_type for c in never_read.connections] == ["Accounting"]
    assert [c.source_type for c in no_accounting.connections] == ["Banking"]
    assert no_accounting.accounting_connections == []
    assert no_accounting.platform == ""
    assert [c.source_type for c in two_connections.connections] == ["Accounting", "Banking"]
    assert two_connections.customers_status == STATUS_COMPLETE
    assert fetching.customers_status == STATUS_FETCHING
    assert fetching.customers_last_successful_sync is not None
    assert all(c.customers_status == STATUS_COMPLETE for c in account[:-4])


def test_states_appear_from_five_companies():
    assert company_states(4) == ["normal"] * 4
    assert company_states(5) == ["normal", *SPECIAL_STATES]


def test_connections_match_their_platform(account):
    by_name = {p.name: p for p in names.PLATFORMS}
    banks = dict(names.BANKING_PLATFORMS)
    for company in account:
        for connection in company.connections:
            if connection.is_accounting:
                assert connection.integration_key == by_name[connection.platform_name].key
                assert company.platform == connection.platform_name
            else:
                assert connection.integration_key == banks[connection.platform_name]
            assert connection.to_json(company.id)["sourceId"] == connection.source_id
    used = {c.platform for c in account[:20]}
    assert used == set(by_name)


def test_ids_are_unique_uuids(account):
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    ids = [c.id for c in account] + [x.id for c in account for x in c.connections]
    assert len(set(ids)) == len(ids)
    assert all(uuid_re.match(i) for i in ids)


def test_sync_dates_are_consistent(account):
    for company in account:
        created = instant(company.created)
        for connection in company.connections:
            assert instant(connection.created) >= created
        if company.last_sync is None:
            continue
        assert company.last_sync.endswith("Z")
        assert created < instant(company.last_sync)
        last_read = company.customers_last_successful_sync
        for record in company.customers.values():
            assert created < instant(record["modifiedDate"]) <= instant(last_read)


def test_modified_dates_lie_in_2019_to_2025(customers):
    dates = [c["modifiedDate"] for c in customers]
    dates += [k["modifiedDate"] for c in customers for k in c["contacts"] or [] if "modifiedDate" in k]
    assert all(LOWER <= instant(d) <= UPPER and "2019-01-01" <= d[:10] <= "2025-12-31" for d in dates)


def test_new_customer_is_fresh_and_deterministic():
    first = new_customer(random.Random(5), "2026-01-02T03:04:05Z")
    assert first == new_customer(random.Random(5), "2026-01-02T03:04:05Z")
    assert first != new_customer(random.Random(6), "2026-01-02T03:04:05Z")
    assert first["modifiedDate"] == "2026-01-02T03:04:05Z"
    assert first["status"] == "Active"
    assert first["metadata"] == {"isDeleted": False}
    assert all(first.get(k) for k in ("customerName", "addresses", "contacts", "defaultCurrency"))


# --- every shape the examples show occurs ------------------------------------------------


def forms(value):
    if value.endswith("Z"):
        return "Z"
    return "offset" if re.search(r"[+-]\d\d:\d\d$", value) else "zone-less"


def all_fields(c):
    wanted = ("customerName", "contactName", "emailAddress", "defaultCurrency", "phone")
    wanted += ("registrationNumber", "taxNumber", "sourceModifiedDate", "metadata")
    wanted += ("supplementalData",)
    return all(c.get(k) not in (None, "", []) for k in wanted) and c["addresses"] and c["contacts"]


def phones(c):
    return [p for k in c.get("contacts") or [] for p in k.get("phone") or []]


def addresses(c):
    return [a for a in c.get("addresses") or []]


SHAPES = {
    "all-fields-present": all_fields,
    "field-null": lambda c: c.get("customerName", "") is None and c.get("taxNumber", "") is None,
    "field-missing": lambda c: "contactName" not in c and "phone" not in c,
    "empty-strings": lambda c: c.get("customerName") == "" and c.get("emailAddress") == "",
    "addresses-empty": lambda c: c["addresses"] == [],
    "addresses-null": lambda c: c["addresses"] is None,
    "contacts-empty": lambda c: c["contacts"] == [],
    "contacts-null": lambda c: c["contacts"] is None,
    "contact-phone-empty": lambda c: any(k["phone"] == [] for k in c["contacts"] or []),
    "billing-delivery-unknown-addresses": lambda c: {a["type"] for a in addresses(c)} == ADDRESS_TYPES,
    "contact-with-every-phone-type": lambda c: any(
        {p["type"] for p in k.get("phone") or []} == PHONE_TYPES for k in c["contacts"] or []
    ),
    "phone-number-null": lambda c: any(p["number"] is None for p in phones(c)),
    "address-sparse": lambda c: any(set(a) == {"type", "country"} for a in addresses(c)),
    "metadata-absent": lambda c: "metadata" not in c,
    "metadata-null": lambda c: "metadata" in c and c["metadata"] is None,
    "is-deleted-null": lambda c: c.get("metadata") == {"isDeleted": None},
    "is-deleted-false": lambda c: c.get("metadata") == {"isDeleted": False},
    "is-deleted-true": lambda c: c.get("metadata") == {"isDeleted": True},
    "deleted-but-active": lambda c: c.get("metadata") == {"isDeleted": True} and c["status"] == "Active",
    "status-active": lambda c: c["status"] == "Active",
    "status-archived": lambda c: c["status"] == "Archived",
    "status-unknown": lambda c: c["status"] == "Unknown",
    "currency-gbp": lambda c: c.get("defaultCurrency") == "GBP",
    "currency-usd": lambda c: c.get("defaultCurrency") == "USD",
    "currency-eur": lambda c: c.get("defaultCurrency") == "EUR",
    "currency-null": lambda c: "defaultCurrency" in c and c["defaultCurrency"] is None,
    "supplemental-absent": lambda c: "supplementalData" not in c,
    "supplemental-null": lambda c: "supplementalData" in c and c["supplementalData"] is None,
    "supplemental-content-null": lambda c: c.get("supplementalData") == {"content": None},
    "supplemental-map-of-maps": lambda c: bool((c.get("supplementalData") or {}).get("content")),
    "modified-z": lambda c: forms(c["modifiedDate"]) == "Z",
    "modified-zone-less": lambda c: forms(c["modifiedDate"]) == "zone-less",
    "modified-plus-offset": lambda c: c["modifiedDate"].endswith("+01:00"),
    "modified-minus-offset": lambda c: c["modifiedDate"].endswith("-05:00"),
    "modified-7-fraction-digits": lambda c: re.search(r"\.\d{7}", c["modifiedDate"]) is not None,
    "source-year-one": lambda c: c.get("sourceModifiedDate") == "0001-01-01T00:00:00",
    "source-null": lambda c: "sourceModifiedDate" in c and c["sourceModifiedDate"] is None,
    "source-missing": lambda c: "sourceModifiedDate" not in c,
    "contact-modified-date": lambda c: any("modifiedDate" in k for k in c["contacts"] or []),
    "id-uuid": lambda c: re.fullmatch(r"[0-9a-f-]{36}", c["id"]) is not None,
    "id-number": lambda c: c["id"].isdigit() and len(c["id"]) == 6,
    "id-opaque-token": lambda c: c["id"].startswith("QnVzaW5lc3M6"),
    "id-with-space": lambda c: " " in c["id"],
    "id-with-slash": lambda c: "/" in c["id"],
    "id-with-question-mark": lambda c: "?" in c["id"],
    "id-with-hash": lambda c: "#" in c["id"],
    "id-with-percent": lambda c: "%" in c["id"],
    "id-with-plus": lambda c: "+" in c["id"],
    "id-with-unicode": lambda c: not c["id"].isascii(),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_occurs(customers, shape):
    assert any(SHAPES[shape](c) for c in customers)


def test_a_batch_shares_one_modified_instant(account):
    mixed_forms = False
    for company in account:
        if len(company.customers) < 200:
            continue
        stamps = [c["modifiedDate"] for c in company.customers.values()]
        top, count = Counter(instant(s) for s in stamps).most_common(1)[0]
        assert 0.07 <= count / len(stamps) <= 0.25
        mixed_forms |= len({s for s in stamps if instant(s) == top}) > 1
    assert mixed_forms


# --- attachments -------------------------------------------------------------------------


def test_attachments_belong_to_accounting_connections_and_customers(account):
    for company in account:
        accounting = {c.id for c in company.accounting_connections}
        for connection_id, customer_id in company.attachments:
            assert connection_id in accounting
            assert customer_id in company.customers


def test_attachment_counts_mostly_small(account, customers):
    counts = Counter(len(files) for company in account for files in company.attachments.values())
    without = len(customers) - sum(counts.values())
    assert without + counts[1] > 0.85 * len(customers)
    assert sum(v for k, v in counts.items() if k >= 3) > 0


def test_attachment_sizes_and_reporting(attachments):
    assert all(1 <= a.file_size <= 64 * 1024 for a in attachments)
    assert any(not a.report_size for a in attachments)
    assert {a.to_json()["fileSize"] for a in attachments if not a.report_size} == {None}
    assert {a.content_type for a in attachments} >= {"application/pdf", "image/png", "text/csv"}


def test_hostile_attachment_names_occur(attachments):
    found = {a.name for a in attachments}
    assert set(names.HOSTILE_ATTACHMENT_NAMES) <= found
    assert any(len(name) >= 300 for name in found)
    assert any(re.search(r"[\x01-\x1f]", name) for name in found)
    assert {"../../etc/passwd", "résumé 東京.pdf"} <= found
    assert not any("\x00" in name for name in found)


@pytest.mark.parametrize(
    ("content_type", "size"),
    [("application/pdf", 9000), ("image/png", 3), ("text/csv", 70_001), ("x/y", 0)],
    ids=["pdf", "png-shorter-than-magic", "csv-many-blocks", "empty"],
)
def test_attachment_bytes_are_exact_and_deterministic(content_type, size):
    def make(seed):
        return Attachment("a", "n", content_type, "2024-01-01T00:00:00Z", size, True, False, seed)

    data = attachment_bytes(make(42))
    assert len(data) == size
    assert data == attachment_bytes(make(42))
    if size > 100:
        assert data != attachment_bytes(make(43))
    if content_type == "application/pdf":
        assert data.startswith(b"%PDF-")
    if content_type.startswith("text/"):
        assert data.isascii()


def test_generated_attachment_bytes_match_file_size(attachments):
    for attachment in attachments[:300]:
        assert len(attachment_bytes(attachment)) == attachment.file_size


# --- generated customers look like the examples ------------------------------------------


def example_customers():
    records = []
    for path in sorted(EXAMPLES.glob("*customer*.json")):
        if "model" in path.name or "attachment" in path.name:
            continue
        body = json.loads(path.read_text())
        if "responses" in body:
            body = body["responses"].get("200", {}).get("application/json")
        if isinstance(body, dict) and "results" in body:
            records += body["results"]
        elif isinstance(body, dict) and "id" in body:
            records.append(body)
    return records


@pytest.fixture(scope="module")
def example_shape():
    records = example_customers()
    assert len(records) > 100
    shape = path_types(records)
    # The Customer schema documents supplementalData, which no example carries.
    shape["supplementalData"] = {"object"}
    shape["supplementalData.content"] = {"object"}
    return shape


def test_examples_use_only_contract_enums(example_shape):
    values = {"$.status": set(), "$.addresses[].type": set(), "$.contacts[].phone[].type": set()}
    for record in example_customers():
        values["$.status"].add(record["status"])
        values["$.addresses[].type"] |= {a["type"] for a in record.get("addresses") or []}
        values["$.contacts[].phone[].type"] |= set(map(str, [p["type"] for p in phones(record)]))
    assert values["$.status"] <= CUSTOMER_STATUSES
    assert values["$.addresses[].type"] <= ADDRESS_TYPES
    assert values["$.contacts[].phone[].type"] <= PHONE_TYPES


def check_like_examples(record, example_shape):
    for path, types in path_types([record]).items():
        assert path in example_shape, f"{record['id']!r}: {path} is in no example"
        assert types - {"null"} <= example_shape[path], f"{record['id']!r}: {path} {types}"
    assert record["status"] in CUSTOMER_STATUSES
    for address in addresses(record):
        assert address["type"] in ADDRESS_TYPES
    for contact in record.get("contacts") or []:
        assert contact["status"] in CUSTOMER_STATUSES
        if contact.get("address"):
            assert contact["address"]["type"] in ADDRESS_TYPES
    assert {p["type"] for p in phones(record)} <= PHONE_TYPES
    currency = record.get("defaultCurrency")
    assert currency is None or re.fullmatch(r"[A-Z]{3}", currency)
    content = (record.get("supplementalData") or {}).get("content")
    assert content is None or all(isinstance(v, dict) for v in content.values())


def test_generated_customers_look_like_examples(customers, example_shape):
    for record in customers:
        check_like_examples(record, example_shape)


def test_new_customers_look_like_examples(example_shape):
    rng = random.Random(1)
    for _ in range(200):
        check_like_examples(new_customer(rng, "2026-03-01T10:00:00Z"), example_shape)
