"""The emulator over HTTP: authentication, query errors, company states, customers and attachments."""

from __future__ import annotations

import base64
from datetime import datetime
from urllib.parse import quote

import pytest
import requests

from connector.emulator.data import company_states
from tests.utils import API_KEY, assert_error, customers_path

NOT_REQUESTED = "The data set has not been requested."
MALFORMED = "Error parsing query - Malformed query."
ATTACHMENT_KEYS = {"id", "name", "contentType", "dateCreated", "fileSize", "includeWhenSent"}
# With 5 companies: index 0 is normal, then the four special states (see `company_states`).
STATE_SIZING = {"seed": 7, "companies": 5, "customers": 200}
# Ids plain `requests` cannot send: it removes dot segments (test_dot_ids.py sends them otherwise).
DOT_SEGMENTS = {".", ".."}


def first_company(emulator) -> str:
    return next(iter(emulator.store.companies))


# -- authentication ---------------------------------------------------------------------------


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD_CREDENTIALS = {
    "no-header": None,
    "wrong-key": f"Basic {encoded('not-the-key')}",
    "user-colon-key": f"Basic {encoded('user:' + API_KEY)}",
    "key-colon-empty-password": f"Basic {encoded(API_KEY + ':')}",
    "malformed-base64": "Basic %%%not-base64%%%",
    "bearer-scheme": f"Bearer {API_KEY}",
    "raw-key-no-scheme": API_KEY,
    "empty-basic": "Basic ",
}


@pytest.mark.parametrize("header", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_bad_credentials_get_401_error_message(base_url, emulator, header):
    headers = {} if header is None else {"Authorization": header}
    response = requests.get(f"{base_url}{customers_path(first_company(emulator))}", headers=headers)
    assert_error(response, 401, "Unauthorized")
    assert emulator.request_log[-1]["status"] == 401


def test_right_key_gets_200(codat, emulator):
    response = codat.get(customers_path(first_company(emulator)))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.json()["pageNumber"] == 1


def test_unauthorized_requests_do_not_use_the_quota(base_url, codat, emulator):
    requests.get(f"{base_url}/companies")
    assert codat.get("/companies").headers["X-Rate-Limit-Remaining"] == str(emulator.limiter.limit - 1)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_emulator/health"),
        ("GET", "/_emulator/account"),
        ("GET", "/_emulator/stats"),
        ("GET", "/_emulator/requests"),
        ("POST", "/_emulator/sync"),
        ("DELETE", "/_emulator/faults"),
    ],
    ids=lambda value: value if value.startswith("/") else value.lower(),
)
def test_control_endpoints_need_no_auth(control, method, path):
    response = control.request(method, path)
    assert response.status_code == 200
    assert isinstance(response.json(), dict | list)


# -- routing and lookups ----------------------------------------------------------------------


def test_unknown_company_is_404(codat):
    missing = "846ed55c-974b-4392-a1f1-87b6fdbf3c5e"
    body = assert_error(codat.get(customers_path(missing)), 404)
    assert body["error"] == f"No company was found with ID {missing}"


def test_unknown_customer_is_404(codat, emulator):
    body = assert_error(codat.get(customers_path(first_company(emulator)) + "/no-such-id"), 404)
    assert body["error"] == "No data available for customers for ID no-such-id"


def test_unknown_route_is_404(codat):
    assert_error(codat.get("/companies/x/data/invoices/y/z"), 404)


def test_every_customer_id_survives_as_one_path_segment(codat, emulator):
    """Ids with `/`, `?`, `#`, `%`, spaces and non-ASCII letters round-trip when quoted."""
    company_id = first_company(emulator)
    ids = list(emulator.store.companies[company_id].customers)
    hostile = [i for i in ids if quote(i, safe="") != i]
    assert len(hostile) >= 3
    for customer_id in hostile:
        response = codat.get(f"{customers_path(company_id)}/{quote(customer_id, safe='')}")
        assert response.status_code == 200, customer_id
        assert response.json()["id"] == customer_id


def test_get_customer_equals_the_listed_record(codat, emulator):
    company_id = first_company(emulator)
    page = codat.get(customers_path(company_id), params={"pageSize": 5, "orderBy": "id"}).json()
    for listed in (r for r in page["results"] if r["id"] not in DOT_SEGMENTS):
        single = codat.get(f"{customers_path(company_id)}/{quote(listed['id'], safe='')}")
        assert single.status_code == 200
        assert single.json() == listed


def test_companies_and_connections_list_the_account(codat, emulator):
    companies = codat.get("/companies", params={"pageSize": 100}).json()
    assert [c["id"] for c in companies["results"]] == sorted(emulator.store.companies)
    assert companies["totalResults"] == 3
    for company in emulator.store.companies.values():
        single = codat.get(f"/companies/{company.id}").json()
        assert single["id"] == company.id
        assert single["platform"] == company.platform
        connections = codat.get(f"/companies/{company.id}/connections").json()
        assert [c["id"] for c in connections["results"]] == sorted(c.id for c in company.connections)
        assert [c["sourceType"] for c in connections["results"]] == ["Accounting"]
        assert connections["results"][0]["platformName"] == company.platform


# -- query errors -----------------------------------------------------------------------------

QUERY_ERRORS = {
    "malformed-no-operator": ("customerName", MALFORMED),
    "malformed-unclosed-brace": ("{status=Active", MALFORMED),
    "malformed-parentheses-do-not-group": ("(status=Active) && (", MALFORMED),
    "malformed-greater-than-on-string": ("customerName>A", MALFORMED),
    "malformed-date": ("modifiedDate>yesterday", MALFORMED),
    "unknown-property": (
        "isCompleted=true",
        "Error parsing query - Could not resolve property isCompleted on Customer",
    ),
    "array-path": (
        "addresses.city=London",
        "Error parsing query - Could not resolve property addresses.city on Customer",
    ),
    "supplemental-data": (
        "supplementalData.content.orders=1",
        "Error parsing query - Could not resolve property supplementalData.content.orders on Customer",
    ),
    "wrong-case-property": (
        "CustomerName=Acme",
        "Error parsing query - Could not resolve property CustomerName on Customer",
    ),
}


@pytest.mark.parametrize(("query", "error"), QUERY_ERRORS.values(), ids=QUERY_ERRORS.keys())
def test_bad_queries_get_400_with_codat_error_text(codat, emulator, query, error):
    response = codat.get(customers_path(first_company(emulator)), params={"query": query})
    assert_error(response, 400, error)


def test_unknown_order_by_field_is_400(codat, emulator):
    response = codat.get(customers_path(first_company(emulator)), params={"orderBy": "-isCompleted"})
    assert_error(response, 400, "Error parsing query - Could not resolve property isCompleted on Customer")


def query_url(company_id: str, query: str) -> str:
    return f"{customers_path(company_id)}?query={quote(query, safe='')}"


def padded_query(encoded_length: int, letters: int) -> str:
    """`customerName!=` and `letters` times `é` (6 encoded characters each), padded with `a`."""
    prefix = "customerName!=" + "é" * letters
    query = prefix + "a" * (encoded_length - len(quote(prefix, safe="")))
    assert len(quote(query, safe="")) == encoded_length
    return query


@pytest.mark.parametrize(
    ("encoded_length", "letters", "status"),
    [(2047, 0, 200), (2048, 0, 400), (2047, 330, 200), (2048, 330, 400)],
    ids=["ascii-2047", "ascii-2048", "non-ascii-2047", "non-ascii-2048"],
)
def test_query_length_limit_counts_encoded_characters(codat, emulator, encoded_length, letters, status):
    company_id = first_company(emulator)
    response = codat.get(query_url(company_id, padded_query(encoded_length, letters)))
    if status == 200:
        named = [
            r
            for r in emulator.store.companies[company_id].customers.values()
            if isinstance(r.get("customerName"), str)
        ]
        assert response.status_code == 200
        assert response.json()["totalResults"] == len(named)
    else:
        body = assert_error(response, 400)
        assert body["error"] == "Error parsing query - Query must be under 2048 characters."


# -- company states ---------------------------------------------------------------------------


@pytest.fixture
def states(emulator):
    """Five companies, keyed by state: normal, never_read, no_accounting, two_connections, fetching."""
    emulator.reset(**STATE_SIZING)
    names = company_states(STATE_SIZING["companies"])
    return dict(zip(names, emulator.store.companies.values(), strict=True))


def attachments_path(company, customer_id: str) -> str:
    connection = f"/companies/{company.id}/connections/{company.connections[0].id}"
    return f"{connection}/data/customers/{quote(customer_id, safe='')}/attachments"


@pytest.mark.parametrize("state", ["never_read", "fetching"], ids=["never-read", "fetching"])
@pytest.mark.parametrize("operation", ["list-customers", "get-customer", "list-attachments"])
def test_unread_customers_get_409(codat, states, state, operation):
    company = states[state]
    customer_id = next(iter(company.customers), "any-id")
    path = {
        "list-customers": customers_path(company.id),
        "get-customer": f"{customers_path(company.id)}/{quote(customer_id, safe='')}",
        "list-attachments": attachments_path(company, customer_id),
    }[operation]
    assert_error(codat.get(path), 409, NOT_REQUESTED)


def test_fetching_company_keeps_customers_from_its_previous_read(states):
    assert len(states["fetching"].customers) == 5
    assert len(states["never_read"].customers) == 0


def test_data_status_per_state(codat, states):
    def status_of(state):
        response = codat.get(f"/companies/{states[state].id}/dataStatus")
        assert response.status_code == 200
        return response.json()

    assert status_of("never_read") == {}
    assert status_of("no_accounting") == {}
    for state, expected in [
        ("normal", "Complete"),
        ("two_connections", "Complete"),
        ("fetching", "Fetching"),
    ]:
        body = status_of(state)
        assert set(body) == {"customers"}
        customers = body["customers"]
        assert customers["dataType"] == "customers"
        assert customers["currentStatus"] == expected
        assert customers["lastSuccessfulSync"] == states[state].customers_last_successful_sync
        datetime.fromisoformat(customers["lastSuccessfulSync"])


def test_no_accounting_company_has_only_a_banking_connection(codat, states):
    company = states["no_accounting"]
    connections = codat.get(f"/companies/{company.id}/connections").json()["results"]
    assert [c["sourceType"] for c in connections] == ["Banking"]
    assert codat.get(f"/companies/{company.id}").json()["platform"] == ""
    assert_error(codat.get(customers_path(company.id)), 409, NOT_REQUESTED)
    push = codat.post(f"/companies/{company.id}/connections/{connections[0]['id']}/push/customers", json={})
    assert_error(push, 400)


def test_two_connection_company_serves_customers_from_its_accounting_connection(codat, states):
    company = states["two_connections"]
    connections = codat.get(f"/companies/{company.id}/connections").json()["results"]
    assert sorted(c["sourceType"] for c in connections) == ["Accounting", "Banking"]
    page = codat.get(customers_path(company.id), params={"pageSize": 5000}).json()
    assert page["totalResults"] == len(company.customers)
    assert page["totalResults"] > 0


def test_never_read_company_has_no_last_sync(codat, states):
    body = codat.get(f"/companies/{states['never_read'].id}").json()
    assert body["lastSync"] is None
    assert codat.get(f"/companies/{states['normal'].id}").json()["lastSync"] is not None


def test_syncing_a_never_read_company_makes_it_readable(codat, control, states):
    company = states["never_read"]
    assert control.post("/_emulator/sync", json={"company_id": company.id}).json() == {"applied": 0}
    page = codat.get(customers_path(company.id))
    assert page.status_code == 200
    assert page.json()["totalResults"] == 0
    status = codat.get(f"/companies/{company.id}/dataStatus").json()
    assert status["customers"]["currentStatus"] == "Complete"


def test_account_wide_sync_leaves_unread_companies_unread(codat, control, states):
    control.post("/_emulator/sync", json={})
    assert_error(codat.get(customers_path(states["never_read"].id)), 409, NOT_REQUESTED)
    assert codat.get(customers_path(states["normal"].id)).status_code == 200


# -- attachments ------------------------------------------------------------------------------


def customer_with_attachments(company):
    for (connection_id, customer_id), files in sorted(company.attachments.items()):
        if len(files) >= 2:
            return connection_id, customer_id, files
    raise AssertionError("no customer with two attachments")


def test_attachments_shape_and_download(codat, emulator):
    company = emulator.store.companies[first_company(emulator)]
    connection_id, customer_id, files = customer_with_attachments(company)
    base = f"/companies/{company.id}/connections/{connection_id}/data/customers/{quote(customer_id, safe='')}"
    listed = codat.get(f"{base}/attachments")
    assert listed.status_code == 200
    body = listed.json()
    assert set(body) == {"attachments"}
    assert [a["id"] for a in body["attachments"]] == [f.id for f in files]
    for attachment in body["attachments"]:
        assert set(attachment) == ATTACHMENT_KEYS
        assert isinstance(attachment["id"], str)
        assert isinstance(attachment["name"], str)
        assert isinstance(attachment["contentType"], str)
        datetime.fromisoformat(attachment["dateCreated"])
        assert attachment["fileSize"] is None or isinstance(attachment["fileSize"], int)
        assert isinstance(attachment["includeWhenSent"], bool)
        if attachment["id"] in DOT_SEGMENTS:
            continue
        single = codat.get(f"{base}/attachments/{quote(attachment['id'], safe='')}")
        assert single.status_code == 200
        assert single.json() == attachment
        download = codat.get(f"{base}/attachments/{quote(attachment['id'], safe='')}/download")
        assert download.status_code == 200
        assert download.headers["Content-Type"] == "application/octet-stream"
        expected = next(f for f in files if f.id == attachment["id"])
        assert len(download.content) == expected.file_size
        if attachment["fileSize"] is not None:
            assert attachment["fileSize"] == expected.file_size


def test_customer_without_attachments_lists_none(codat, emulator):
    company = emulator.store.companies[first_company(emulator)]
    connection_id = company.connections[0].id
    bare = next(cid for cid in sorted(company.customers) if (connection_id, cid) not in company.attachments)
    response = codat.get(attachments_path(company, bare))
    assert response.status_code == 200
    assert response.json() == {"attachments": []}


def test_unknown_attachment_and_connection_are_404(codat, emulator):
    company = emulator.store.companies[first_company(emulator)]
    connection_id, customer_id, _ = customer_with_attachments(company)
    base = f"/companies/{company.id}/connections/{connection_id}/data/customers/{quote(customer_id, safe='')}"
    assert_error(codat.get(f"{base}/attachments/00000000-0000-4000-8000-000000000000"), 404)
    missing_connection = "a22dd66b-564a-4832-9b37-7b3ce4aeb7de"
    other = f"/companies/{company.id}/connections/{missing_connection}/data/customers/x/attachments"
    body = assert_error(codat.get(other), 404)
    assert body["error"] == f"Data connection {missing_connection} not found"
