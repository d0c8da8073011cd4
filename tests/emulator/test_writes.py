"""Creates and updates over HTTP: push operations, validation, staleness, timeouts, idempotency."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from urllib.parse import quote

import pytest
import requests

from connector.emulator.push_models import has_model, load_model
from tests.utils import assert_error, basic_auth, customers_path

PUSH_FIELDS = {
    "changes",
    "dataType",
    "companyId",
    "pushOperationKey",
    "dataConnectionKey",
    "requestedOnUtc",
    "completedOnUtc",
    "timeoutInMinutes",
    "status",
    "errorMessage",
    "validation",
    "statusCode",
    "data",
}
DEPRECATED_PUSH_FIELDS = {"timeoutInSeconds"}
PUSH_STATUSES = {"Pending", "Success", "Failed", "TimedOut"}
CHANGE_TYPES = {"Unknown", "Created", "Modified", "Deleted", "AttachmentUploaded"}
READ_ONLY = {"id", "modifiedDate", "sourceModifiedDate"}
ALL_PLATFORMS_SIZING = {"seed": 11, "companies": 24, "customers": 2400}  # every platform once


def filled(prop):
    """A value the property accepts: its first option, or a value of its type with required children."""
    if prop.get("options"):
        return prop["options"][0]["value"]
    kind = prop.get("type")
    if kind in ("Array", "Object"):
        children = {
            name: filled(child)
            for name, child in (prop.get("properties") or {}).items()
            if child.get("required")
        }
        return [children] if kind == "Array" else children
    return {
        "String": "Emulator Test Ltd",
        "Number": 1,
        "Boolean": False,
        "DateTime": "2024-01-02T03:04:05",
    }.get(kind, "x")


def required_fields(platform: str) -> dict:
    """The platform model's required top-level fields, filled; read-only ones are ignored on writes."""
    properties = load_model(platform)["properties"]
    return {name: filled(p) for name, p in properties.items() if p.get("required") and name not in READ_ONLY}


def valid_body(platform: str) -> dict:
    """The smallest body the platform's create/update model accepts, with a customer name."""
    return {**required_fields(platform), "customerName": "Emulator Test Ltd"}


def assert_push_operation(body, company_id, connection_id, status):
    assert PUSH_FIELDS <= set(body) <= PUSH_FIELDS | DEPRECATED_PUSH_FIELDS
    assert body["status"] == status
    assert body["status"] in PUSH_STATUSES
    assert body["dataType"] == "customers"
    assert body["companyId"] == company_id
    assert body["dataConnectionKey"] == connection_id
    assert str(uuid.UUID(body["pushOperationKey"])) == body["pushOperationKey"]
    datetime.fromisoformat(body["requestedOnUtc"])
    assert isinstance(body["statusCode"], int)
    assert set(body["validation"]) == {"errors", "warnings"}
    assert isinstance(body["data"], dict)
    for change in body["changes"]:
        assert set(change) == {"type", "recordRef", "attachmentId"}
        assert change["type"] in CHANGE_TYPES
        assert change["recordRef"]["dataType"] == "customers"
    if status == "Pending":
        assert (body["completedOnUtc"], body["changes"], body["errorMessage"], body["statusCode"]) == (
            None,
            [],
            None,
            202,
        )
    else:
        assert datetime.fromisoformat(body["completedOnUtc"]) >= datetime.fromisoformat(
            body["requestedOnUtc"]
        )


def settle(codat, company_id, key, timeout=5.0):
    """Poll the push operation until it leaves Pending."""
    deadline = time.monotonic() + timeout
    while True:
        response = codat.get(f"/companies/{company_id}/push/{key}")
        assert response.status_code == 200
        body = response.json()
        if body["status"] != "Pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


@pytest.fixture
def target(emulator):
    """The first company and its accounting connection; pushes settle after 50 ms."""
    emulator.ledger.delay = 0.05
    company = next(iter(emulator.store.companies.values()))
    return company, company.connections[0]


def create_path(company, connection) -> str:
    return f"/companies/{company.id}/connections/{connection.id}/push/customers"


def update_path(company, connection, customer_id) -> str:
    return f"{create_path(company, connection)}/{quote(customer_id, safe='')}"


# -- create -----------------------------------------------------------------------------------


def test_create_is_pending_then_success(codat, target):
    company, connection = target
    response = codat.post(create_path(company, connection), json=valid_body(connection.platform_name))
    assert response.status_code == 200
    pending = response.json()
    assert_push_operation(pending, company.id, connection.id, "Pending")
    assert pending["timeoutInMinutes"] is None
    done = settle(codat, company.id, pending["pushOperationKey"])
    assert_push_operation(done, company.id, connection.id, "Success")
    assert done["pushOperationKey"] == pending["pushOperationKey"]
    assert done["statusCode"] == 200
    assert done["errorMessage"] is None
    assert done["validation"] == {"errors": [], "warnings": []}
    new_id = done["data"]["id"]
    assert done["changes"] == [
        {"type": "Created", "recordRef": {"id": new_id, "dataType": "customers"}, "attachmentId": None}
    ]
    assert done["data"]["customerName"] == "Emulator Test Ltd"


def test_created_customer_appears_only_after_a_sync(codat, control, target):
    company, connection = target
    total = codat.get(customers_path(company.id)).json()["totalResults"]
    key = codat.post(create_path(company, connection), json=valid_body(connection.platform_name)).json()[
        "pushOperationKey"
    ]
    new_id = settle(codat, company.id, key)["data"]["id"]
    single = f"{customers_path(company.id)}/{quote(new_id, safe='')}"
    assert codat.get(single).status_code == 404
    assert codat.get(customers_path(company.id)).json()["totalResults"] == total
    assert control.post("/_emulator/sync", json={"company_id": company.id}).json() == {"applied": 1}
    record = codat.get(single).json()
    assert record["id"] == new_id
    assert record["customerName"] == "Emulator Test Ltd"
    assert record["metadata"] == {"isDeleted": False}
    page = codat.get(customers_path(company.id), params={"query": f"id={new_id}"}).json()
    assert [r["id"] for r in page["results"]] == [new_id]
    assert page["results"][0]["modifiedDate"] == codat.get(f"/companies/{company.id}").json()["lastSync"]
    assert codat.get(customers_path(company.id)).json()["totalResults"] == total + 1
    assert control.post("/_emulator/sync", json={}).json() == {"applied": 0}


def test_read_only_fields_are_ignored_on_create(codat, control, target):
    company, connection = target
    body = {
        **valid_body(connection.platform_name),
        "id": "chosen-by-client",
        "modifiedDate": "2001-01-01T00:00:00Z",
    }
    key = codat.post(create_path(company, connection), json=body).json()["pushOperationKey"]
    done = settle(codat, company.id, key)
    assert done["status"] == "Success"
    assert done["data"]["id"] != "chosen-by-client"
    control.post("/_emulator/sync", json={"company_id": company.id})
    record = codat.get(f"{customers_path(company.id)}/{quote(done['data']['id'], safe='')}").json()
    assert record["modifiedDate"] != "2001-01-01T00:00:00Z"
    assert codat.get(f"{customers_path(company.id)}/chosen-by-client").status_code == 404


@pytest.fixture
def all_platforms(emulator):
    """An account with every platform: platform name to (company, accounting connection)."""
    emulator.reset(**ALL_PLATFORMS_SIZING)
    emulator.ledger.delay = 0.05
    found = {}
    for company in emulator.store.companies.values():
        for connection in company.accounting_connections:
            found.setdefault(connection.platform_name, (company, connection))
    return found


MODEL_PLATFORMS = [
    "Exact (Netherlands)",
    "Exact (UK)",
    "FreeAgent",
    "FreshBooks",
    "MYOB AccountRight and Essentials",
    "Oracle NetSuite",
    "QuickBooks Desktop",
    "QuickBooks Online",
    "QuickBooks Online Sandbox",
    "Sage 50 (UK)",
    "Sage Business Cloud Accounting",
    "Sage Intacct",
    "Sandbox",
    "Xero",
]


def test_every_platform_with_a_model_is_covered():
    assert all(has_model(platform) for platform in MODEL_PLATFORMS)


@pytest.mark.parametrize("platform", MODEL_PLATFORMS)
def test_create_is_validated_against_the_platform_model(codat, all_platforms, platform):
    company, connection = all_platforms[platform]
    body = valid_body(platform)
    required = sorted(required_fields(platform))
    missing = required[0]
    invalid = {k: v for k, v in body.items() if k != missing}
    keys = [
        codat.post(create_path(company, connection), json=payload).json()["pushOperationKey"]
        for payload in (body, invalid)
    ]
    good, bad = (settle(codat, company.id, key) for key in keys)
    assert_push_operation(good, company.id, connection.id, "Success")
    assert_push_operation(bad, company.id, connection.id, "Failed")
    assert bad["statusCode"] == 400
    assert bad["changes"] == []
    assert isinstance(bad["errorMessage"], str)
    assert [e["itemId"] for e in bad["validation"]["errors"]] == [missing]
    error = bad["validation"]["errors"][0]
    assert set(error) == {"itemId", "message", "validatorName"}
    assert error["message"].endswith("is required.")


def test_failed_push_is_never_applied(codat, control, all_platforms):
    company, connection = all_platforms["Xero"]
    key = codat.post(create_path(company, connection), json={"status": "Active"}).json()["pushOperationKey"]
    assert settle(codat, company.id, key)["status"] == "Failed"
    assert control.post("/_emulator/sync", json={"company_id": company.id}).json() == {"applied": 0}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{not json", "application/json"), (b"", "application/json"), (b"[1, 2]", "application/json")],
    ids=["malformed", "empty", "array"],
)
def test_create_with_a_body_that_is_not_a_customer_is_400(codat, target, body, content_type):
    company, connection = target
    response = codat.post(create_path(company, connection), data=body, headers={"Content-Type": content_type})
    error = assert_error(response, 400)
    assert error["error"].startswith("Error processing request - not valid.")


def test_create_on_unknown_connection_is_404(codat, target):
    company, _ = target
    response = codat.post(f"/companies/{company.id}/connections/{uuid.UUID(int=1)}/push/customers", json={})
    assert_error(response, 404)


def test_a_linked_second_accounting_connection_is_listed_and_takes_pushes(codat, control, emulator, target):
    company, first = target
    assert [c.id for c in company.accounting_connections] == [first.id]
    customers = codat.get(customers_path(company.id)).json()["totalResults"]

    answer = control.post(
        "/_emulator/link-connection", json={"company_id": company.id, "platform": "QuickBooks Online"}
    )

    assert answer.status_code == 200
    second = answer.json()
    assert (second["sourceType"], second["platformName"], second["status"], second["lastSync"]) == (
        "Accounting",
        "QuickBooks Online",
        "Linked",
        None,
    )
    listed = {c["id"]: c for c in codat.get(f"/companies/{company.id}/connections").json()["results"]}
    assert set(listed) == {first.id, second["id"]}
    assert listed[second["id"]] == second
    assert second in codat.get(f"/companies/{company.id}").json()["dataConnections"]
    assert codat.get(customers_path(company.id)).json()["totalResults"] == customers
    model = codat.get(f"/companies/{company.id}/connections/{second['id']}/options/customers").json()
    assert model == load_model("QuickBooks Online")
    path = f"/companies/{company.id}/connections/{second['id']}/push/customers"
    key = codat.post(path, json=valid_body("QuickBooks Online")).json()["pushOperationKey"]
    assert_push_operation(settle(codat, company.id, key), company.id, second["id"], "Success")


@pytest.mark.parametrize(
    "body",
    [
        {"company_id": "nope", "platform": "Xero"},
        {"company_id": "FIRST", "platform": "Plaid"},
        {"platform": "Xero"},
    ],
    ids=["unknown-company", "not-an-accounting-platform", "no-company"],
)
def test_linking_a_connection_that_cannot_be_is_400(control, emulator, target, body):
    company, _ = target
    body = {k: (company.id if v == "FIRST" else v) for k, v in body.items()}

    response = control.post("/_emulator/link-connection", json=body)

    assert response.status_code == 400
    assert len(company.connections) == 1


# -- timeouts ---------------------------------------------------------------------------------


def test_timeout_shorter_than_the_push_times_out(codat, target):
    company, connection = target
    response = codat.post(
        create_path(company, connection),
        params={"timeoutInMinutes": 0},
        json=valid_body(connection.platform_name),
    )
    assert response.json()["timeoutInMinutes"] == 0
    done = settle(codat, company.id, response.json()["pushOperationKey"])
    assert_push_operation(done, company.id, connection.id, "TimedOut")
    assert done["statusCode"] == 504
    assert done["errorMessage"] == "Push operation timed out."
    assert done["changes"] == []
    assert done["timeoutInSeconds"] == 0


def test_timeout_longer_than_the_push_succeeds(codat, target):
    company, connection = target
    response = codat.post(
        create_path(company, connection),
        params={"timeoutInMinutes": 5},
        json=valid_body(connection.platform_name),
    )
    done = settle(codat, company.id, response.json()["pushOperationKey"])
    assert (done["status"], done["timeoutInMinutes"], done["timeoutInSeconds"]) == ("Success", 5, 300)


@pytest.mark.parametrize("value", ["soon", "-1", "1.5"])
def test_timeout_that_is_not_whole_minutes_is_400(codat, target, value):
    company, connection = target
    response = codat.post(
        create_path(company, connection),
        params={"timeoutInMinutes": value},
        json=valid_body(connection.platform_name),
    )
    assert_error(response, 400)


# -- update -----------------------------------------------------------------------------------


@pytest.fixture
def customer_id(target):
    """A customer whose id needs quoting in a path."""
    company, _ = target
    return next(cid for cid in sorted(company.customers) if quote(cid, safe="") != cid)


def test_update_is_pending_then_success_and_applied_by_sync(codat, control, target, customer_id):
    company, connection = target
    body = {**valid_body(connection.platform_name), "customerName": "Renamed Ltd"}
    response = codat.put(update_path(company, connection, customer_id), json=body)
    assert response.status_code == 200
    assert_push_operation(response.json(), company.id, connection.id, "Pending")
    done = settle(codat, company.id, response.json()["pushOperationKey"])
    assert done["changes"] == [
        {"type": "Modified", "recordRef": {"id": customer_id, "dataType": "customers"}, "attachmentId": None}
    ]
    single = f"{customers_path(company.id)}/{quote(customer_id, safe='')}"
    assert codat.get(single).json()["customerName"] != "Renamed Ltd"
    assert control.post("/_emulator/sync", json={"company_id": company.id}).json() == {"applied": 1}
    assert codat.get(single).json()["customerName"] == "Renamed Ltd"


def test_update_of_a_record_changed_in_the_platform_needs_force(codat, control, target, customer_id):
    company, connection = target
    marked = control.post(
        "/_emulator/edit-in-platform", json={"company_id": company.id, "ids": [customer_id]}
    )
    assert marked.json() == {"marked": 1}
    body = valid_body(connection.platform_name)
    path = update_path(company, connection, customer_id)
    stale = settle(codat, company.id, codat.put(path, json=body).json()["pushOperationKey"])
    assert_push_operation(stale, company.id, connection.id, "Failed")
    assert "forceUpdate" in stale["errorMessage"]
    assert stale["changes"] == []
    forced = codat.put(path, params={"forceUpdate": "true"}, json=body).json()
    assert settle(codat, company.id, forced["pushOperationKey"])["status"] == "Success"
    not_forced = codat.put(path, params={"forceUpdate": "false"}, json=body).json()
    assert settle(codat, company.id, not_forced["pushOperationKey"])["status"] == "Failed"
    control.post("/_emulator/sync", json={"company_id": company.id})  # Codat reads the platform again
    after_sync = codat.put(path, json=body).json()
    assert settle(codat, company.id, after_sync["pushOperationKey"])["status"] == "Success"


def test_update_of_an_unknown_customer_is_404(codat, target):
    company, connection = target
    response = codat.put(update_path(company, connection, "no-such-customer"), json={"customerName": "x"})
    assert_error(response, 404)


def test_update_with_a_body_that_is_not_json_is_400(codat, target, customer_id):
    company, connection = target
    response = codat.put(update_path(company, connection, customer_id), data=b"<xml/>")
    assert_error(response, 400)


def test_edit_in_platform_of_an_unknown_customer_is_400(control, target):
    company, _ = target
    response = control.post("/_emulator/edit-in-platform", json={"company_id": company.id, "ids": ["nope"]})
    assert response.status_code == 400


def test_push_operation_lookups(codat, emulator, target):
    company, connection = target
    other = list(emulator.store.companies)[1]
    key = codat.post(create_path(company, connection), json=valid_body(connection.platform_name)).json()[
        "pushOperationKey"
    ]
    assert codat.get(f"/companies/{company.id}/push/{key}").status_code == 200
    assert_error(codat.get(f"/companies/{other}/push/{key}"), 404)
    assert_error(codat.get(f"/companies/{company.id}/push/{uuid.UUID(int=7)}"), 404)


# -- idempotency ------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_replays_the_first_answer(codat, emulator, target):
    company, connection = target
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = valid_body(connection.platform_name)
    first = codat.post(create_path(company, connection), json=body, headers=headers)
    again = codat.post(create_path(company, connection), json=body, headers=headers)
    assert again.status_code == first.status_code == 200
    assert again.json() == first.json()
    assert len(emulator.ledger.operations) == 1


def test_same_idempotency_key_with_another_body_is_422(codat, target):
    company, connection = target
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = valid_body(connection.platform_name)
    assert codat.post(create_path(company, connection), json=body, headers=headers).status_code == 200
    changed = {**body, "customerName": "Someone Else"}
    assert_error(codat.post(create_path(company, connection), json=changed, headers=headers), 422)


def test_different_idempotency_keys_create_two_operations(codat, emulator, target):
    company, connection = target
    body = valid_body(connection.platform_name)
    keys = {
        codat.post(
            create_path(company, connection), json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        ).json()["pushOperationKey"]
        for _ in range(2)
    }
    assert len(keys) == 2
    assert len(emulator.ledger.operations) == 2


def test_same_idempotency_key_while_the_first_runs_is_409(base_url, emulator, target):
    company, connection = target
    url = base_url + create_path(company, connection)
    headers = {"Idempotency-Key": str(uuid.uuid4()), "Authorization": basic_auth()}
    body = valid_body(connection.platform_name)
    emulator.add_fault("slow", delay=0.5, match="/push/customers")
    answers = {}
    first = threading.Thread(
        target=lambda: answers.setdefault("first", requests.post(url, json=body, headers=headers))
    )
    first.start()
    deadline = time.monotonic() + 5
    while emulator.limiter.in_flight[company.id] < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    second = requests.post(url, json=body, headers=headers)
    first.join(timeout=10)
    assert_error(second, 409)
    assert answers["first"].status_code == 200
    replay = requests.post(url, json=body, headers=headers)
    assert replay.json() == answers["first"].json()
    assert len(emulator.ledger.operations) == 1


def test_idempotency_key_is_freed_when_the_first_answer_fails(codat, emulator, target):
    company, connection = target
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = valid_body(connection.platform_name)
    emulator.add_fault("500", match="/push/customers")
    assert codat.post(create_path(company, connection), json=body, headers=headers).status_code == 500
    retry = codat.post(create_path(company, connection), json=body, headers=headers)
    assert retry.status_code == 200
    assert retry.json()["status"] == "Pending"
