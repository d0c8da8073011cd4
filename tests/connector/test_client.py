"""Every CodatClient operation against the emulator over loopback: paging, ids, retries, errors, secrecy."""

from __future__ import annotations

import base64
import logging
import math
import time
import traceback

import pytest
from dlt.common import logger as dlt_logger

from connector.client import CodatClient, CodatKeyAuth
from connector.emulator.data import attachment_bytes
from connector.emulator.names import HOSTILE_IDS
from connector.emulator.push_models import load_model
from connector.emulator.wire import ERROR_TEXTS
from connector.errors import CodatApiError
from connector.paging import ModifiedDateSeekPaginator
from connector.settings import RetryPolicy
from tests.utils import API_KEY

MAX_ATTEMPTS = 4


def fast_client(base_url, api_key=API_KEY):
    """A client that backs off for hundredths of a second, so retry tests stay quick."""
    return CodatClient(
        api_key, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_attempts=MAX_ATTEMPTS)
    )


@pytest.fixture
def client(base_url):
    return fast_client(base_url)


def companies(emulator):
    return list(emulator.store.companies.values())


def log_of(emulator, operation=None):
    return [e for e in emulator.request_log if operation is None or e["operation"] == operation]


def assert_codat_error(err, operation, company_id, status, error=None):
    assert err.operation == operation
    assert err.company_id == company_id
    assert err.status == status
    assert err.error == (error if error is not None else ERROR_TEXTS[str(status)])
    assert err.correlation_id
    assert len(err.correlation_id) == 32
    text = str(err)
    for part in (operation, f"HTTP {status}", err.error, err.correlation_id):
        assert part in text
    if company_id:
        assert company_id in text


# -- reads -----------------------------------------------------------------------------------


def test_list_companies_pages_to_the_end_without_trailing_request(emulator, client):
    emulator.reset(7, 12, 200)

    listed = list(client.list_companies(page_size=5))

    assert [c["id"] for c in listed] == sorted(c.id for c in companies(emulator))
    requests = log_of(emulator, "list-companies")
    assert len(requests) == math.ceil(12 / 5)
    assert [r["params"]["page"] for r in requests] == ["1", "2", "3"]
    assert {r["params"]["pageSize"] for r in requests} == {"5"}


def test_list_companies_exact_multiple_of_page_size(emulator, client):
    emulator.reset(7, 10, 200)

    assert len(list(client.list_companies(page_size=5))) == 10
    assert len(log_of(emulator, "list-companies")) == 2


def test_get_company(emulator, client):
    company = companies(emulator)[0]

    got = client.get_company(company.id)

    assert got == company.to_json()
    assert len(log_of(emulator)) == 1


def test_list_connections(emulator, client):
    emulator.reset(7, 5, 300)
    two = companies(emulator)[3]  # index companies - 2: an accounting and a Banking connection

    listed = list(client.list_connections(two.id, page_size=1))

    assert [c["id"] for c in listed] == sorted(c.id for c in two.connections)
    assert {c["sourceType"] for c in listed} == {"Accounting", "Banking"}
    assert len(log_of(emulator, "list-connections")) == 2


def test_data_status(emulator, client):
    emulator.reset(7, 5, 300)
    normal, never_read, _, _, fetching = companies(emulator)

    assert client.data_status(normal.id)["customers"]["currentStatus"] == "Complete"
    assert client.data_status(fetching.id)["customers"]["currentStatus"] == "Fetching"
    assert client.data_status(never_read.id) == {}


def test_list_customers_with_seek_paginator_reads_every_customer(emulator, client):
    company = companies(emulator)[0]

    pages = list(client.list_customers(company.id, ModifiedDateSeekPaginator(page_size=20)))

    seen = {r["id"]: r for page in pages for r in page.sent()}
    assert seen == company.customers
    requests = log_of(emulator, "list-customers")
    assert len(requests) == len(pages)
    assert all(r["params"]["orderBy"] == "modifiedDate" for r in requests)


@pytest.fixture
def hostile_company(emulator):
    """One company large enough to hold every hostile customer id (one in 61 customers)."""
    emulator.reset(7, 1, 61 * len(HOSTILE_IDS) + 2)
    return companies(emulator)[0]


@pytest.mark.parametrize("customer_id", HOSTILE_IDS, ids=[repr(i) for i in HOSTILE_IDS])
def test_get_customer_with_hostile_id(emulator, hostile_company, client, customer_id):
    assert customer_id in hostile_company.customers

    got = client.get_customer(hostile_company.id, customer_id)

    assert got == hostile_company.customers[customer_id]
    [request] = log_of(emulator)
    assert (request["operation"], request["status"]) == ("get-customer", 200)


def test_customer_attachments_list_get_download(emulator, client):
    company = companies(emulator)[0]
    (connection_id, customer_id), attachments = next(
        (key, files) for key, files in sorted(company.attachments.items()) if len(files) >= 2
    )

    listed = client.list_customer_attachments(company.id, connection_id, customer_id)

    assert listed == [a.to_json() for a in attachments]
    for attachment in attachments:
        got = client.get_customer_attachment(company.id, connection_id, customer_id, attachment.id)
        assert got == attachment.to_json()
        content = client.download_customer_attachment(company.id, connection_id, customer_id, attachment.id)
        assert content == attachment_bytes(attachment)


def test_attachments_of_a_hostile_customer_id(emulator, hostile_company, client):
    (connection_id, customer_id), attachments = next(
        (key, files) for key, files in sorted(hostile_company.attachments.items()) if key[1] in HOSTILE_IDS
    )

    listed = client.list_customer_attachments(hostile_company.id, connection_id, customer_id)
    content = client.download_customer_attachment(
        hostile_company.id, connection_id, customer_id, attachments[0].id
    )

    assert listed == [a.to_json() for a in attachments]
    assert content == attachment_bytes(attachments[0])


def test_get_create_update_model(emulator, client):
    xero = next(c for c in companies(emulator) if c.platform == "Xero")

    model = client.get_create_update_model(xero.id, xero.connections[0].id)

    assert model == load_model("Xero")
    assert model["properties"]["customerName"]["required"] is True


# -- writes ----------------------------------------------------------------------------------


def settle(client, company_id, key):
    for _ in range(200):
        operation = client.get_push_operation(company_id, key)
        if operation["status"] != "Pending":
            return operation
        time.sleep(0.02)
    raise AssertionError(f"push operation {key} never settled")


def test_create_and_update_customer_push_operations(emulator, client):
    emulator.ledger.delay = 0.05
    xero = next(c for c in companies(emulator) if c.platform == "Xero")
    connection_id = xero.connections[0].id
    existing = sorted(xero.customers)[0]

    created = client.create_customer(xero.id, connection_id, {"customerName": "Acme"}, timeout_in_minutes=5)
    updated = client.update_customer(xero.id, connection_id, existing, {"customerName": "Renamed"})

    assert (created["status"], created["timeoutInMinutes"]) == ("Pending", 5)
    assert updated["status"] == "Pending"
    done = settle(client, xero.id, created["pushOperationKey"])
    assert done["status"] == "Success"
    assert done["changes"][0]["type"] == "Created"
    done = settle(client, xero.id, updated["pushOperationKey"])
    assert (done["status"], done["changes"][0]["recordRef"]["id"]) == ("Success", existing)
    [put] = log_of(emulator, "update-customer")
    assert put["params"] == {"forceUpdate": "false"}


def test_get_push_operation_unknown_key_is_404(emulator, client):
    company = companies(emulator)[0]

    with pytest.raises(CodatApiError) as caught:
        client.get_push_operation(company.id, "no-such-key")

    assert_codat_error(
        caught.value,
        "get push operation",
        company.id,
        404,
        "No push operation was found with key no-such-key",
    )


# -- retries ---------------------------------------------------------------------------------


def test_429_with_retry_after_seconds_is_honoured(emulator, client):
    company = companies(emulator)[0]
    emulator.add_fault("429", retry_after="1")

    started = time.monotonic()
    assert client.get_company(company.id)["id"] == company.id

    assert time.monotonic() - started >= 0.95  # waited Retry-After, not the 0.01 s backoff
    assert [e["status"] for e in log_of(emulator)] == [429, 200]


def test_429_with_retry_after_http_date_is_honoured(emulator, client):
    company = companies(emulator)[0]
    emulator.add_fault("429", retry_after="http-date:2")  # a date 1-2 s ahead, whole seconds

    started = time.monotonic()
    assert client.get_company(company.id)["id"] == company.id

    assert time.monotonic() - started >= 0.5
    assert [e["status"] for e in log_of(emulator)] == [429, 200]


def test_429_with_retry_after_zero_still_backs_off(emulator, base_url):
    company = companies(emulator)[0]
    emulator.add_fault("429", count=2, retry_after="0")
    client = CodatClient(API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.05, max_attempts=4))

    started = time.monotonic()
    assert client.get_company(company.id)["id"] == company.id

    assert time.monotonic() - started >= 0.05 + 0.1 - 0.01  # exponential backoff: 0.05 s, then 0.1 s
    assert [e["status"] for e in log_of(emulator)] == [429, 429, 200]


def test_429_with_retry_after_zero_forever_is_bounded(emulator, client):
    company = companies(emulator)[0]
    emulator.add_fault("429", count=1000, retry_after="0")

    with pytest.raises(CodatApiError) as caught:
        client.get_company(company.id)

    assert_codat_error(caught.value, "get company", company.id, 429)
    assert len(log_of(emulator)) == MAX_ATTEMPTS


@pytest.mark.parametrize("kind", ["500", "503", "reset", "truncate", "invalid_json"])
def test_transient_failures_are_retried(emulator, client, kind):
    company = companies(emulator)[0]
    emulator.add_fault(kind, count=2)

    got = list(client.list_customers(company.id, ModifiedDateSeekPaginator(page_size=5000)))

    assert {r["id"] for r in got[0].sent()} == set(company.customers)
    assert [e["fault"] for e in log_of(emulator)] == [kind, kind, None]


def test_truncated_attachment_download_is_retried(emulator, client):
    company = companies(emulator)[0]
    (connection_id, customer_id), [attachment, *_] = sorted(company.attachments.items())[0]
    emulator.add_fault("truncate", match="/download")

    content = client.download_customer_attachment(company.id, connection_id, customer_id, attachment.id)

    assert content == attachment_bytes(attachment)
    assert [e["fault"] for e in log_of(emulator)] == ["truncate", None]


def test_out_of_attempts_names_operation_company_status_error_and_correlation_id(emulator, client):
    company = companies(emulator)[0]
    emulator.add_fault("503", count=MAX_ATTEMPTS)

    with pytest.raises(CodatApiError) as caught:
        list(client.list_customers(company.id, ModifiedDateSeekPaginator()))

    assert_codat_error(caught.value, "list customers", company.id, 503)
    assert len(log_of(emulator)) == MAX_ATTEMPTS


def test_out_of_attempts_on_dropped_connections(emulator, client):
    company = companies(emulator)[0]
    emulator.add_fault("reset", count=MAX_ATTEMPTS)

    with pytest.raises(CodatApiError) as caught:
        client.get_company(company.id)

    err = caught.value
    assert (err.operation, err.company_id, err.status) == ("get company", company.id, None)
    assert "ConnectionError" in err.error
    assert len(log_of(emulator)) == MAX_ATTEMPTS


# -- final errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["400", "402", "403", "404"])
def test_client_errors_are_final(emulator, client, status):
    company = companies(emulator)[0]
    emulator.add_fault(status)

    with pytest.raises(CodatApiError) as caught:
        client.get_customer(company.id, sorted(company.customers)[0])

    assert_codat_error(caught.value, "get customer", company.id, int(status))
    assert len(log_of(emulator)) == 1


def test_unknown_company_is_a_final_404(emulator, client):
    with pytest.raises(CodatApiError) as caught:
        client.get_company("00000000-0000-0000-0000-000000000000")

    err = caught.value
    assert_codat_error(
        err,
        "get company",
        "00000000-0000-0000-0000-000000000000",
        404,
        "No company was found with ID 00000000-0000-0000-0000-000000000000",
    )
    assert len(log_of(emulator)) == 1


def test_wrong_api_key_is_a_final_401(emulator, base_url):
    company = companies(emulator)[0]
    client = fast_client(base_url, "not-the-key")

    with pytest.raises(CodatApiError) as caught:
        client.get_company(company.id)

    assert_codat_error(caught.value, "get company", company.id, 401)
    assert len(log_of(emulator)) == 1


def test_never_read_company_is_a_final_409(emulator, client):
    emulator.reset(7, 5, 300)
    never_read = companies(emulator)[1]  # index companies - 4

    with pytest.raises(CodatApiError) as caught:
        list(client.list_customers(never_read.id, ModifiedDateSeekPaginator()))

    assert_codat_error(caught.value, "list customers", never_read.id, 409)
    assert len(log_of(emulator)) == 1


def test_invalid_create_is_a_final_400(emulator, client):
    emulator.reset(7, 5, 300)
    banking_only = companies(emulator)[2]  # index companies - 3: no accounting connection

    with pytest.raises(CodatApiError) as caught:
        client.create_customer(banking_only.id, banking_only.connections[0].id, {"customerName": "Acme"})

    assert caught.value.status == 400
    assert "accounting connection" in caught.value.error
    assert len(log_of(emulator)) == 1


# -- the API key stays secret ----------------------------------------------------------------


def test_missing_api_key_names_the_environment_variable():
    for missing in ("", None):
        with pytest.raises(ValueError, match="SOURCES__CODAT__API_KEY"):
            CodatClient(missing)  # type: ignore[arg-type]


def test_api_key_never_appears_in_errors_reprs_logs_or_tracebacks(emulator, base_url, caplog, monkeypatch):
    # dlt logs through its own LOGGER (non-propagating once a pipeline set it up): route it to caplog.
    dlt_log = logging.getLogger("dlt")
    monkeypatch.setattr(dlt_logger, "LOGGER", dlt_log)
    monkeypatch.setattr(dlt_log, "propagate", True)
    caplog.set_level(logging.DEBUG)
    for name in ("dlt", "urllib3", "requests", "connector"):
        caplog.set_level(logging.DEBUG, logger=name)
    company = companies(emulator)[0]
    client = CodatClient(API_KEY, base_url=base_url, retry=RetryPolicy(backoff_factor=0.01, max_attempts=3))
    emulator.add_fault("429", retry_after="0")
    emulator.add_fault("reset")

    client.get_company(company.id)
    emulator.add_fault("403")
    errors = []
    try:
        client.get_company(company.id)
    except CodatApiError as exc:
        errors.append(exc)
    bad_client = fast_client(base_url, "wrong-" + API_KEY)
    try:
        bad_client.get_company(company.id)
    except CodatApiError as exc:
        errors.append(exc)

    assert [e.status for e in errors] == [403, 401]
    assert repr(client) == str(client) == f"CodatClient(base_url='{base_url}')"
    assert repr(bad_client) == f"CodatClient(base_url='{base_url}')"
    assert repr(client.rest.auth) == str(client.rest.auth) == "CodatKeyAuth(api_key=***)"
    secrets = [API_KEY, base64.b64encode(API_KEY.encode()).decode()]
    texts = [str(client), repr(client), str(bad_client), repr(bad_client)]
    texts += [repr(client.rest.auth), str(client.rest.auth), repr(bad_client.rest.auth)]
    texts += [repr(CodatKeyAuth(api_key=API_KEY)), str(CodatKeyAuth(api_key=API_KEY))]
    for err in errors:
        texts += [str(err), repr(err), "".join(traceback.format_exception(err))]
    assert caplog.records, "DEBUG logging captured nothing"
    texts += [r.getMessage() for r in caplog.records]
    texts.append(caplog.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text
