"""The emulator sends Codat's webhooks: a signed `read.completed` after each read, retried, faulted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svix.webhooks import Webhook

from connector.emulator.emulator import Emulator
from tests.synctools import readable
from tests.utils import CodatSession
from tests.webhooktools import SECRET, serving


class Inbox:
    """What a receiver got: each delivery's headers and event, in order; it answers `statuses` first."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answers = list(statuses or [])

    def app(self) -> Starlette:
        async def take(request: Request) -> JSONResponse:
            body = await request.body()
            headers = dict(request.headers)
            Webhook(SECRET).verify(body, headers)  # Svix's own check: raises on a bad signature
            self.received.append((headers, json.loads(body)))
            return JSONResponse({}, self.answers.pop(0) if self.answers else 200)

        return Starlette(routes=[Route("/hook", take, methods=["POST"])])


@contextmanager
def sending_to(emulator: Emulator, inbox: Inbox) -> Iterator[None]:
    with serving(inbox.app()) as url:
        emulator.webhooks.configure(url.replace("/webhooks/codat", "/hook"), SECRET)
        try:
            yield
        finally:
            emulator.webhooks.configure(None, None)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the emulator did not deliver in time"
        time.sleep(0.02)


def test_a_read_that_changed_customers_is_delivered_signed(emulator: Emulator) -> None:
    company = readable(emulator)[0]
    inbox = Inbox()
    with sending_to(emulator, inbox):
        emulator.store.mutate(company.id, "modify", 2)
        emulator.store.mutate(company.id, "attach", 1)  # the platform's change: Codat reads nothing
        emulator.sync(company.id)  # a read with nothing new
        wait_until(lambda: len(inbox.received) == 2 and emulator.webhooks.idle())
    (first_headers, first), (_, second) = inbox.received
    assert first["eventType"] == "read.completed"
    assert first["payload"]["referenceCompany"]["id"] == company.id
    assert [t["dataType"] for t in first["payload"]["dataTypes"]] == ["customers"] * len(
        company.accounting_connections
    )
    assert [t["recordsModified"] for t in first["payload"]["dataTypes"]][0] is True
    assert [t["recordsModified"] for t in second["payload"]["dataTypes"]][0] is False
    assert first_headers["webhook-id"] == first["id"]


def test_a_failed_delivery_is_sent_again_until_it_is_taken(emulator: Emulator) -> None:
    company = readable(emulator)[0]
    inbox = Inbox(statuses=[500, 503])
    with sending_to(emulator, inbox):
        emulator.store.mutate(company.id, "modify", 1)
        wait_until(lambda: emulator.webhooks.idle() and len(inbox.received) == 3)
    (delivery,) = emulator.webhooks.deliveries
    assert delivery.statuses == [500, 503, 200]
    assert len({headers["webhook-id"] for headers, _ in inbox.received}) == 1


@pytest.mark.parametrize(("fault", "order"), [("webhook-duplicate", [0, 0, 1]), ("webhook-reorder", [1, 0])])
def test_webhook_faults_send_duplicates_and_out_of_order(
    emulator: Emulator, codat: CodatSession, base_url: str, fault: str, order: list[int]
) -> None:
    first, second = (c.id for c in readable(emulator)[:2])
    inbox = Inbox()
    with CodatSession(base_url, api_key=None) as control:
        answer = control.post("/_emulator/faults", json={"kind": fault, "count": 1})
        assert answer.status_code == 200, answer.text
    with sending_to(emulator, inbox):
        emulator.store.mutate(first, "modify", 1)
        emulator.store.mutate(second, "modify", 1)
        wait_until(lambda: emulator.webhooks.idle() and len(inbox.received) == len(order))
    made = [d.webhook_id for d in emulator.webhooks.deliveries]
    assert [headers["webhook-id"] for headers, _ in inbox.received] == [made[i] for i in order]


def test_the_webhook_secret_is_checked_and_never_echoed(emulator: Emulator, base_url: str) -> None:
    with CodatSession(base_url, api_key=None) as control:
        bad = control.post(
            "/_emulator/config",
            json={"webhook_url": "http://127.0.0.1:9/x", "webhook_secret": "nope"},
        )
        good = control.post(
            "/_emulator/config",
            json={"webhook_url": "http://127.0.0.1:9/x", "webhook_secret": SECRET},
        )
        off = control.post("/_emulator/config", json={"webhook_url": None, "webhook_secret": None})
    assert bad.status_code == 400
    assert "whsec_" in bad.json()["error"]
    assert good.status_code == 200
    assert SECRET not in good.text
    assert off.json()["webhook_url"] is None
