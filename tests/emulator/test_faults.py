"""Scripted faults over HTTP, installed both in-process and through `POST /_emulator/faults`."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest
import requests

from connector.emulator.wire import ERROR_TEXTS
from tests.utils import assert_error, basic_auth, customers_path

HOW = ["python", "http"]


@pytest.fixture(params=HOW)
def add_fault(request, emulator, control):
    """Queue a fault the way the test is parametrized: `emulator.add_fault` or the control API."""

    def add(kind, **options):
        if request.param == "python":
            emulator.add_fault(kind, **options)
        else:
            response = control.post("/_emulator/faults", json={"kind": kind, **options})
            assert response.status_code == 200
            assert response.json() == {"queued": len(emulator.faults.faults)}

    return add


@pytest.fixture
def company_id(emulator):
    return next(iter(emulator.store.companies))


def faults_logged(emulator):
    return [e["fault"] for e in emulator.request_log]


@pytest.mark.parametrize("kind", [k for k in ERROR_TEXTS if k != "429"])
def test_error_faults_answer_their_status_with_an_error_message(codat, emulator, add_fault, company_id, kind):
    add_fault(kind)
    response = codat.get(customers_path(company_id))
    assert_error(response, int(kind), ERROR_TEXTS[kind])
    assert "Retry-After" not in response.headers
    assert codat.get(customers_path(company_id)).status_code == 200
    assert faults_logged(emulator) == [kind, None]


def test_429_fault_sends_retry_after_seconds(codat, add_fault, company_id):
    add_fault("429", retry_after="7")
    response = codat.get(customers_path(company_id))
    assert_error(response, 429, ERROR_TEXTS["429"])
    assert response.headers["Retry-After"] == "7"
    assert codat.get(customers_path(company_id)).status_code == 200


def test_429_fault_sends_retry_after_zero(codat, add_fault, company_id):
    add_fault("429", retry_after="0")
    response = codat.get(customers_path(company_id))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0"


def test_429_fault_sends_retry_after_http_date(codat, add_fault, company_id):
    add_fault("429", retry_after="http-date:120")
    before = datetime.now(UTC).replace(microsecond=0)
    response = codat.get(customers_path(company_id))
    assert response.status_code == 429
    header = response.headers["Retry-After"]
    assert header.endswith(" GMT")
    moment = parsedate_to_datetime(header)
    assert before + timedelta(seconds=110) <= moment <= before + timedelta(seconds=180)


def test_slow_fault_answers_correctly_after_the_delay(codat, emulator, add_fault, company_id):
    expected = codat.get(customers_path(company_id), params={"pageSize": 3}).json()["results"]
    add_fault("slow", delay=0.3)
    started = time.monotonic()
    response = codat.get(customers_path(company_id), params={"pageSize": 3})
    assert time.monotonic() - started >= 0.25
    assert response.status_code == 200
    assert response.json()["results"] == expected
    assert faults_logged(emulator) == [None, "slow"]


def test_reset_fault_drops_the_connection(codat, emulator, add_fault, company_id):
    add_fault("reset")
    with pytest.raises(requests.ConnectionError):
        codat.get(customers_path(company_id))
    assert codat.get(customers_path(company_id)).status_code == 200
    assert faults_logged(emulator) == ["reset", None]


def test_truncate_fault_sends_less_than_content_length(codat, add_fault, company_id):
    add_fault("truncate")
    try:
        response = codat.get(customers_path(company_id), params={"pageSize": 50})
    except requests.exceptions.ChunkedEncodingError:
        pass
    else:  # a client that does not check the length sees a short body
        assert len(response.content) < int(response.headers["Content-Length"])
    assert codat.get(customers_path(company_id)).status_code == 200


def test_truncated_body_is_half_of_the_answer_on_a_raw_socket(base_url, emulator, company_id):
    """Below `requests`: the status line and headers are whole, the body stops halfway."""
    emulator.add_fault("truncate")
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        request = (
            f"GET {customers_path(company_id)}?pageSize=20 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {basic_auth()}\r\n\r\n"
        )
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    assert len(body) == length // 2


def test_invalid_json_fault_answers_200_with_a_broken_body(codat, add_fault, company_id):
    add_fault("invalid_json")
    response = codat.get(customers_path(company_id))
    assert response.status_code == 200
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()
    assert codat.get(customers_path(company_id)).json()["pageNumber"] == 1


def test_match_restricts_a_fault_to_matching_paths(codat, emulator, add_fault, company_id):
    add_fault("500", match="/data/customers")
    assert codat.get("/companies").status_code == 200
    assert codat.get(f"/companies/{company_id}").status_code == 200
    assert len(emulator.faults.faults) == 1
    assert codat.get(customers_path(company_id)).status_code == 500
    assert codat.get(customers_path(company_id)).status_code == 200
    assert faults_logged(emulator) == [None, None, "500", None]


def test_count_is_consumed_exactly(codat, emulator, add_fault, company_id):
    add_fault("503", count=3)
    statuses = [codat.get(customers_path(company_id)).status_code for _ in range(5)]
    assert statuses == [503, 503, 503, 200, 200]
    assert emulator.faults.faults == []


def test_faults_apply_in_the_order_queued(codat, emulator, control, company_id):
    response = control.post("/_emulator/faults", json=[{"kind": "500"}, {"kind": "429", "count": 2}])
    assert response.json() == {"queued": 2}
    statuses = [codat.get(customers_path(company_id)).status_code for _ in range(4)]
    assert statuses == [500, 429, 429, 200]


def test_unauthorized_requests_do_not_consume_faults(base_url, codat, emulator, company_id):
    emulator.add_fault("500")
    assert requests.get(f"{base_url}{customers_path(company_id)}").status_code == 401
    assert codat.get(customers_path(company_id)).status_code == 500


def test_control_requests_never_suffer_faults(control, emulator):
    emulator.add_fault("500")
    assert control.get("/_emulator/health").json() == {"ok": True}
    assert len(emulator.faults.faults) == 1


def test_clearing_faults(codat, control, emulator, company_id):
    emulator.add_fault("500", count=5)
    assert control.delete("/_emulator/faults").json() == {"queued": 0}
    assert codat.get(customers_path(company_id)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"kind": "teapot"}, {"kind": "500", "count": 0}, {"kind": "500", "colour": "red"}, {"count": 2}],
    ids=["unknown-kind", "zero-count", "unknown-key", "no-kind"],
)
def test_bad_fault_is_400_and_queues_nothing(control, emulator, body):
    response = control.post("/_emulator/faults", json=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert emulator.faults.faults == []
