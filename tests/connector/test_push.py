"""Creating and updating customers through push operations, against the emulator over loopback."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from connector.client import CodatApiError, CodatClient
from connector.push import PushResult, check_against_model, create_customer, update_customer, wait_for_push
from connector.settings import RetryPolicy
from tests.utils import API_KEY

POLL: dict[str, Any] = {"poll_interval": 0.02, "timeout": 10}


@pytest.fixture
def client(base_url):
    return CodatClient(API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_attempts=4))


@pytest.fixture
def fast_pushes(emulator):
    emulator.ledger.delay = 0.05
    return emulator


def company_on(emulator, platform):
    company = next(c for c in emulator.store.companies.values() if c.platform == platform)
    return company, company.accounting_connections[0].id


def test_create_succeeds_and_appears_after_sync(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")

    result = create_customer(client, company.id, connection_id, {"customerName": "Acme Widgets"}, **POLL)

    assert (result.status, result.validation_errors, result.error_message) == ("Success", [], None)
    assert result.record_id
    with pytest.raises(CodatApiError) as caught:
        client.get_customer(company.id, result.record_id)
    assert caught.value.status == 404
    assert fast_pushes.sync(company.id) == 1
    assert client.get_customer(company.id, result.record_id)["customerName"] == "Acme Widgets"


def test_the_first_poll_waits_an_interval_so_a_push_settled_meanwhile_takes_one(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    fast_pushes.clear_log()

    result = create_customer(
        client, company.id, connection_id, {"customerName": "Prompt"}, poll_interval=0.3, timeout=10
    )

    assert result.status == "Success"
    # A poll at once would find it Pending (it settles 0.05 s after the push) and spend a request.
    assert [e["operation"] for e in fast_pushes.request_log] == ["create-customer", "get-push-operation"]


def test_create_without_waiting_returns_pending(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")

    result = create_customer(client, company.id, connection_id, {"customerName": "Acme"}, wait=False)

    assert (result.status, result.record_id) == ("Pending", None)
    settled = wait_for_push(client, company.id, result.push_operation_key, **POLL)
    assert PushResult.from_operation(settled).status == "Success"


def test_invalid_for_platform_fails_with_validation_errors(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")

    result = create_customer(client, company.id, connection_id, {"emailAddress": "a@example.com"}, **POLL)

    assert result.status == "Failed"
    assert result.record_id is None
    assert result.validation_errors == ["customerName: Customer Name is required."]
    assert result.error_message
    assert fast_pushes.sync(company.id) == 0


@pytest.mark.parametrize(
    ("platform", "customer", "expected"),
    [
        ("Xero", {"emailAddress": "a@example.com"}, ["customerName"]),
        ("Xero", {"customerName": "Acme"}, []),
        ("FreeAgent", {"customerName": "Acme"}, ["contactName", "status"]),
        ("FreeAgent", {"customerName": "Acme", "contactName": "Ann", "status": "Active"}, []),
        ("Exact (UK)", {"customerName": "Acme"}, ["contacts"]),
        ("Exact (UK)", {"customerName": " ", "contacts": [{"name": "Ann"}, {"email": "b@x.io"}]}, None),
    ],
    ids=[
        "xero-missing",
        "xero-valid",
        "freeagent-missing",
        "freeagent-valid",
        "exact-missing",
        "exact-nested",
    ],
)
def test_check_against_model_agrees_with_the_platform(fast_pushes, client, platform, customer, expected):
    fast_pushes.reset(7, 12, 200)  # twelve companies: Xero, FreeAgent and Exact (UK) among them
    fast_pushes.ledger.delay = 0.05
    company, connection_id = company_on(fast_pushes, platform)
    model = client.get_create_update_model(company.id, connection_id)

    problems = check_against_model(model, customer, platform)

    if expected is None:  # blank customerName and the second contact's name
        expected = ["customerName", "contacts[1].name"]
    assert problems == [f"{field}: required by {platform}" for field in expected]
    result = create_customer(client, company.id, connection_id, customer, **POLL)
    assert result.status == ("Failed" if expected else "Success")
    assert [e.split(":")[0] for e in result.validation_errors] == expected


def test_check_against_model_differs_between_platforms(fast_pushes, client):
    fast_pushes.reset(7, 12, 200)
    customer = {"customerName": "Acme"}
    problems = {}
    for platform in ("Xero", "FreeAgent"):
        company, connection_id = company_on(fast_pushes, platform)
        problems[platform] = check_against_model(
            client.get_create_update_model(company.id, connection_id), customer, platform
        )

    assert problems == {
        "Xero": [],
        "FreeAgent": ["contactName: required by FreeAgent", "status: required by FreeAgent"],
    }
    assert not [e for e in fast_pushes.request_log if e["operation"] == "create-customer"]


def test_check_against_model_skips_read_only_fields():
    model = {"properties": {"id": {"type": "String", "required": True}, "name": {"required": False}}}

    assert check_against_model(model, {}) == []


def test_stale_update_fails_without_force_and_succeeds_with_it(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    customer_id = sorted(company.customers)[3]
    fast_pushes.store.edit_in_platform(company.id, [customer_id])
    body = {"customerName": "Renamed Ltd"}

    stale = update_customer(client, company.id, connection_id, customer_id, body, **POLL)
    forced = update_customer(client, company.id, connection_id, customer_id, body, force_update=True, **POLL)

    assert (stale.status, stale.record_id) == ("Failed", None)
    assert "forceUpdate" in (stale.error_message or "")
    assert (forced.status, forced.record_id) == ("Success", customer_id)
    fast_pushes.sync(company.id)
    assert client.get_customer(company.id, customer_id)["customerName"] == "Renamed Ltd"


def test_same_idempotency_key_returns_the_same_push_operation(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    key = str(uuid.uuid4())

    first = create_customer(
        client, company.id, connection_id, {"customerName": "Once"}, idempotency_key=key, **POLL
    )
    again = create_customer(
        client, company.id, connection_id, {"customerName": "Once"}, idempotency_key=key, **POLL
    )

    assert again.push_operation_key == first.push_operation_key
    assert again.record_id == first.record_id
    assert len(fast_pushes.ledger.operations) == 1


def test_same_idempotency_key_with_another_body_is_refused(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    key = str(uuid.uuid4())
    create_customer(
        client, company.id, connection_id, {"customerName": "One"}, idempotency_key=key, wait=False
    )

    with pytest.raises(CodatApiError) as caught:
        create_customer(
            client, company.id, connection_id, {"customerName": "Two"}, idempotency_key=key, wait=False
        )

    assert (caught.value.operation, caught.value.status) == ("create customer", 422)
    assert len(fast_pushes.ledger.operations) == 1


def test_fresh_key_per_call_by_default(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")

    first = create_customer(client, company.id, connection_id, {"customerName": "Twin"}, wait=False)
    second = create_customer(client, company.id, connection_id, {"customerName": "Twin"}, wait=False)

    assert first.push_operation_key != second.push_operation_key


def test_create_retried_after_a_dropped_connection_creates_once(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    fast_pushes.add_fault("reset", match="/push/customers")  # Codat took the create; the answer is lost

    result = create_customer(client, company.id, connection_id, {"customerName": "Only Once"}, **POLL)

    assert result.status == "Success"
    assert len(fast_pushes.ledger.operations) == 1
    creates = [e for e in fast_pushes.request_log if e["operation"] == "create-customer"]
    assert [e["fault"] for e in creates] == ["reset", None]
    assert fast_pushes.sync(company.id) == 1


def test_without_a_key_the_same_retry_creates_twice(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")
    fast_pushes.add_fault("reset", match="/push/customers")

    client.create_customer(company.id, connection_id, {"customerName": "Twice"})

    assert len(fast_pushes.ledger.operations) == 2  # why create_customer always sends a key


def test_timed_out_push(fast_pushes, client):
    company, connection_id = company_on(fast_pushes, "Xero")

    result = create_customer(
        client, company.id, connection_id, {"customerName": "Slow"}, timeout_in_minutes=0, **POLL
    )

    assert (result.status, result.record_id) == ("TimedOut", None)
    assert result.error_message


def test_wait_for_push_timeout_names_the_key(emulator, client):
    emulator.ledger.delay = 60.0
    company, connection_id = company_on(emulator, "Xero")
    pending = create_customer(client, company.id, connection_id, {"customerName": "Never"}, wait=False)

    with pytest.raises(TimeoutError, match=pending.push_operation_key):
        wait_for_push(client, company.id, pending.push_operation_key, timeout=0.2, poll_interval=0.05)
    polls = [e for e in emulator.request_log if e["operation"] == "get-push-operation"]
    assert 1 <= len(polls) <= 0.2 / 0.05 + 2  # polled, and slept between polls
    with pytest.raises(TimeoutError, match="still Pending"):
        create_customer(
            client, company.id, connection_id, {"customerName": "Never"}, timeout=0.1, poll_interval=0.05
        )
