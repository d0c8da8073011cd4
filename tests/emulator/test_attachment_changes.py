"""Attachments changed in the platform (`attach`, `detach`) over the control API and Codat's API.

Codat stamps nothing when a file is added to or removed from a customer: the customer record,
its `modifiedDate` and the company's last sync must stay byte for byte as they were. Expected
values come from a copy of the emulator's attachments taken before the change.

Reads go out through `http.client` with every dot of an id sent as `%2E`, so that the customers
`.` and `..` are reached too (`requests` would drop such segments).
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from connector.emulator.data import company_states
from tests.utils import customers_path, raw_get

STAMP = "2032-02-02T02:02:02Z"
STATE_SIZING = {"seed": 7, "companies": 5, "customers": 200}


def segment(identifier: str) -> str:
    """An id as one path segment: percent-encoded, dots included."""
    return quote(identifier, safe="").replace(".", "%2E")


def listed_ids(base_url: str, company_id: str, connection_id: str, customer_id: str) -> list[str]:
    """The ids of a customer's attachments on one connection, as Codat's API lists them."""
    path = (
        f"/companies/{company_id}/connections/{connection_id}"
        f"/data/customers/{segment(customer_id)}/attachments"
    )
    status, body = raw_get(base_url, path)
    assert status == 200, body
    return [a["id"] for a in json.loads(body)["attachments"]]


def customer_bytes(base_url: str, company_id: str, customer_id: str) -> bytes:
    """One customer exactly as served by `GET …/data/customers/{id}`."""
    status, body = raw_get(base_url, f"{customers_path(company_id)}/{segment(customer_id)}")
    assert status == 200, body
    return body


def unchanged_parts(base_url: str, company_id: str) -> tuple[bytes, ...]:
    """What an attachment change must leave as it was: the company (with its connections'
    `lastSync`), its data status, and every customer page, in id and in `modifiedDate` order."""
    paths = [
        f"/companies/{company_id}",
        f"/companies/{company_id}/dataStatus",
        f"{customers_path(company_id)}?page=1&pageSize=5000",
        f"{customers_path(company_id)}?page=1&pageSize=5000&orderBy=modifiedDate",
    ]
    answers = [raw_get(base_url, path) for path in paths]
    assert [status for status, _ in answers] == [200] * len(paths)
    return tuple(body for _, body in answers)


def attachment_ids(emulator, company_id: str) -> dict[tuple[str, str], list[str]]:
    """A copy of a company's attachment ids per (connection id, customer id)."""
    with emulator.store.locked():
        company = emulator.store.companies[company_id]
        return {key: [a.id for a in files] for key, files in company.attachments.items()}


def mutate(control, **body):
    response = control.post("/_emulator/mutate", json=body)
    assert response.status_code == 200, response.text
    return response.json()["changed"]


def rejected(control, **body) -> str:
    response = control.post("/_emulator/mutate", json=body)
    assert response.status_code == 400
    return response.json()["error"]


@pytest.fixture
def company_id(emulator):
    return next(iter(emulator.store.companies))


@pytest.fixture
def connection_id(emulator, company_id):
    """The company's accounting connection (the default account has one per company)."""
    return emulator.store.companies[company_id].accounting_connections[0].id


# -- attach -----------------------------------------------------------------------------------


def test_attach_adds_one_new_attachment_per_customer_and_stamps_nothing(
    base_url, control, emulator, company_id, connection_id
):
    before = attachment_ids(emulator, company_id)
    parts = unchanged_parts(base_url, company_id)

    changed = mutate(control, company_id=company_id, action="attach", count=4, timestamp=STAMP)

    targets = changed[company_id]
    assert len(set(targets)) == 4
    assert set(targets) <= set(emulator.store.companies[company_id].customers)
    after = attachment_ids(emulator, company_id)
    old_ids = {i for ids in before.values() for i in ids}
    for customer_id in targets:
        key = (connection_id, customer_id)
        new = after[key][len(before.get(key, [])) :]
        assert after[key][: len(before.get(key, []))] == before.get(key, [])
        assert len(new) == 1
        assert new[0] not in old_ids
        assert listed_ids(base_url, company_id, connection_id, customer_id) == after[key]
        status, body = raw_get(
            base_url,
            f"/companies/{company_id}/connections/{connection_id}/data/customers/"
            f"{segment(customer_id)}/attachments/{segment(new[0])}",
        )
        assert status == 200
        assert json.loads(body)["dateCreated"] == STAMP
    assert {k: v for k, v in after.items() if k[1] not in targets} == {
        k: v for k, v in before.items() if k[1] not in targets
    }
    assert unchanged_parts(base_url, company_id) == parts


def test_attach_to_named_customers_keeps_each_record_byte_for_byte(
    base_url, control, emulator, company_id, connection_id
):
    company = emulator.store.companies[company_id]
    bare = next(cid for cid in sorted(company.customers) if (connection_id, cid) not in company.attachments)
    holder = next(cid for cid in sorted(company.customers) if (connection_id, cid) in company.attachments)
    ids = [bare, holder, ".."]
    records = {cid: customer_bytes(base_url, company_id, cid) for cid in ids}
    listed = {cid: listed_ids(base_url, company_id, connection_id, cid) for cid in ids}
    parts = unchanged_parts(base_url, company_id)

    assert mutate(control, company_id=company_id, action="attach", ids=ids) == {company_id: ids}

    for cid in ids:
        now = listed_ids(base_url, company_id, connection_id, cid)
        assert now[:-1] == listed[cid]
        assert now[-1] not in listed[cid]
        assert customer_bytes(base_url, company_id, cid) == records[cid]
    assert unchanged_parts(base_url, company_id) == parts


def test_attach_uses_the_accounting_connection_of_a_company_with_two(control, emulator):
    emulator.reset(**STATE_SIZING)
    index = company_states(STATE_SIZING["companies"]).index("two_connections")
    company = list(emulator.store.companies.values())[index]
    accounting, banking = (c.id for c in company.connections)
    assert [c.source_type for c in company.connections] == ["Accounting", "Banking"]
    before = attachment_ids(emulator, company.id)

    targets = mutate(control, company_id=company.id, action="attach", count=3)[company.id]

    after = attachment_ids(emulator, company.id)
    for cid in targets:
        assert len(after[(accounting, cid)]) == len(before.get((accounting, cid), [])) + 1
        assert (banking, cid) not in after


# -- detach -----------------------------------------------------------------------------------


def test_detach_removes_one_attachment_per_customer_and_stamps_nothing(
    base_url, control, emulator, company_id, connection_id
):
    before = attachment_ids(emulator, company_id)
    parts = unchanged_parts(base_url, company_id)

    targets = mutate(control, company_id=company_id, action="detach", count=5)[company_id]

    assert len(set(targets)) == 5
    after = attachment_ids(emulator, company_id)
    for cid in targets:
        key = (connection_id, cid)
        remaining = after.get(key, [])
        assert len(remaining) == len(before[key]) - 1
        assert set(remaining) < set(before[key])
        assert [i for i in before[key] if i in remaining] == remaining  # the order is kept
        assert listed_ids(base_url, company_id, connection_id, cid) == remaining
    assert {k: v for k, v in after.items() if k[1] not in targets} == {
        k: v for k, v in before.items() if k[1] not in targets
    }
    assert unchanged_parts(base_url, company_id) == parts


def test_detach_of_a_last_attachment_drops_the_entry(base_url, control, emulator, company_id, connection_id):
    before = attachment_ids(emulator, company_id)
    single = next(cid for (xid, cid), ids in sorted(before.items()) if len(ids) == 1)
    record = customer_bytes(base_url, company_id, single)

    assert mutate(control, company_id=company_id, action="detach", ids=[single]) == {company_id: [single]}

    assert (connection_id, single) not in emulator.store.companies[company_id].attachments
    assert listed_ids(base_url, company_id, connection_id, single) == []
    assert customer_bytes(base_url, company_id, single) == record
    error = rejected(control, company_id=company_id, action="detach", ids=[single])
    assert f"customer {single!r} in company {company_id} has no attachment" in error


def test_detach_picks_only_customers_with_attachments(control, emulator, company_id):
    holders = {cid for (_, cid), ids in attachment_ids(emulator, company_id).items() if ids}

    targets = mutate(control, company_id=company_id, action="detach", count=len(holders) + 10)

    assert sorted(targets[company_id]) == sorted(holders)
    assert attachment_ids(emulator, company_id) != {}  # customers with several keep the rest
    assert mutate(control, company_id=company_id, action="detach", count=1000)[company_id]


def test_attach_then_detach_leaves_one_attachment_fewer_than_two_attaches(
    base_url, control, emulator, company_id, connection_id
):
    customer_id = sorted(emulator.store.companies[company_id].customers)[7]
    first = listed_ids(base_url, company_id, connection_id, customer_id)

    mutate(control, company_id=company_id, action="attach", ids=[customer_id, customer_id])
    mutate(control, company_id=company_id, action="detach", ids=[customer_id])

    now = listed_ids(base_url, company_id, connection_id, customer_id)
    assert len(now) == len(first) + 1


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["attach", "detach"])
def test_an_unknown_customer_is_400_and_changes_nothing(control, emulator, company_id, action):
    before = attachment_ids(emulator, company_id)
    holder = next(cid for (_, cid), ids in sorted(before.items()) if ids)

    error = rejected(control, company_id=company_id, action=action, ids=[holder, "no-such-customer"])

    assert error == f"KeyError: \"no customer 'no-such-customer' in company {company_id}\""
    assert attachment_ids(emulator, company_id) == before


def test_detach_from_a_customer_without_attachments_is_400_and_changes_nothing(
    control, emulator, company_id, connection_id
):
    company = emulator.store.companies[company_id]
    before = attachment_ids(emulator, company_id)
    holder = next(cid for (_, cid), ids in sorted(before.items()) if ids)
    bare = next(cid for cid in sorted(company.customers) if (connection_id, cid) not in before)

    error = rejected(control, company_id=company_id, action="detach", ids=[holder, bare])

    assert f"customer {bare!r} in company {company_id} has no attachment to detach" in error
    assert attachment_ids(emulator, company_id) == before


# -- several companies ------------------------------------------------------------------------


def attachment_counts(emulator) -> dict[str, int]:
    return {cid: sum(map(len, attachment_ids(emulator, cid).values())) for cid in emulator.store.companies}


@pytest.mark.parametrize("action", ["attach", "detach"])
def test_count_applies_per_company_named(base_url, control, emulator, action):
    first, second, third = emulator.store.companies
    before = attachment_counts(emulator)
    parts = {cid: unchanged_parts(base_url, cid) for cid in (first, second, third)}

    changed = mutate(control, company_ids=[first, second], action=action, count=3)

    assert sorted(changed) == sorted([first, second])
    assert all(len(set(ids)) == 3 for ids in changed.values())
    step = 3 if action == "attach" else -3
    expected = {**before, first: before[first] + step, second: before[second] + step}
    assert attachment_counts(emulator) == expected
    assert {cid: unchanged_parts(base_url, cid) for cid in parts} == parts


def test_attach_without_a_company_changes_every_readable_company(control, emulator):
    before = attachment_counts(emulator)

    changed = mutate(control, action="attach", count=2)

    assert sorted(changed) == sorted(emulator.store.companies)
    assert attachment_counts(emulator) == {cid: n + 2 for cid, n in before.items()}


# -- in the background ------------------------------------------------------------------------


def test_continuous_attach_adds_one_attachment_per_change(base_url, control, emulator, company_id):
    before = attachment_counts(emulator)[company_id]
    parts = unchanged_parts(base_url, company_id)

    started = control.post(
        "/_emulator/mutate",
        json={"company_id": company_id, "action": "attach", "rate": 200, "duration": 30},
    )
    assert started.json() == {"started": True, "company_ids": [company_id]}
    deadline = time.monotonic() + 5
    while emulator.mutator.changes < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    changes = control.post("/_emulator/mutate", json={"action": "stop"}).json()["changes"]

    assert changes >= 5
    assert attachment_counts(emulator)[company_id] == before + changes
    assert unchanged_parts(base_url, company_id) == parts
