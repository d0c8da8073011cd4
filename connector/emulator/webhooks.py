"""Codat's webhooks, as the emulator sends them: a signed `read.completed` after each read of a company.

Configured with a URL and a `whsec_...` secret (`/_emulator/config`, or `--webhook-url` and
`--webhook-secret`), the emulator posts, after each simulated Codat read of a company (a
`mutate` that changes customers, `/_emulator/sync`), a `read.completed` event naming the company
and its customers data type, `recordsModified` true when customers changed. Each delivery is
signed as Codat's (Svix) are: `webhook-id`, `webhook-timestamp` and `webhook-signature` over
`id.timestamp.body`. A delivery that fails (no answer, or not 2xx) is sent again with a backoff,
as Codat retries for about a day (here `RETRY_DELAYS`). The faults `webhook-duplicate` (a
delivery sent twice) and `webhook-reorder` (a delivery held back until the next one went) are
queued with `POST /_emulator/faults`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.error import URLError
from urllib.request import ProxyHandler, Request, build_opener

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before each new attempt of a failed delivery
WEBHOOK_FAULTS = ("webhook-duplicate", "webhook-reorder")
SEND_TIMEOUT = 10.0


@dataclass
class Delivery:
    """One event to deliver, and how its attempts went."""

    webhook_id: str
    company_id: str
    body: bytes
    attempts: int = 0
    statuses: list[int | None] = field(default_factory=list)  # None: no answer

    @property
    def delivered(self) -> bool:
        """Whether an attempt was answered 2xx."""
        return any(s is not None and 200 <= s < 300 for s in self.statuses)


def read_completed(
    company_id: str, company_name: str, connection_ids: list[str], modified: bool
) -> dict[str, Any]:
    """A `read.completed` event for a company's customers, shaped as Codat's."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {
        "id": str(uuid.uuid4()),
        "eventType": "read.completed",
        "generatedDate": now,
        "payload": {
            "referenceCompany": {"id": company_id, "name": company_name},
            "modifiedFromDate": now,
            "dataTypes": [
                {
                    "connectionId": connection_id,
                    "dataType": "customers",
                    "recordsModified": modified,
                    "status": "Complete",
                    "issues": [],
                }
                for connection_id in connection_ids
            ],
        },
    }


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (its base64 part, as Svix issues them).

    Raises:
        ValueError: The secret is not `whsec_` and base64.
    """
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` of a delivery: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    """Posts the emulator's events to one endpoint, signed, from a thread of its own."""

    def __init__(self) -> None:
        self.url: str | None = None
        self._key: bytes | None = None
        self._pending: queue.Queue[Delivery] = queue.Queue()
        self._faults = {kind: 0 for kind in WEBHOOK_FAULTS}
        self._held: Delivery | None = None  # a delivery held back by `webhook-reorder`
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []  # every event, in the order made
        self._opener = build_opener(ProxyHandler({}))
        self._thread = threading.Thread(target=self._run, name="emulator-webhooks", daemon=True)
        self._thread.start()

    def configure(self, url: str | None, secret: str | None) -> None:
        """Send to `url`, signed with `secret` (`whsec_...`); None turns sending off."""
        key = signing_key(secret) if secret else None  # a malformed secret is refused here
        with self._lock:
            self.url, self._key = url or None, key

    def reset(self) -> None:
        """Forget the deliveries made and the faults queued (the endpoint stays)."""
        with self._lock:
            self.deliveries.clear()
            self._faults = dict.fromkeys(WEBHOOK_FAULTS, 0)

    def add_fault(self, kind: str, count: int = 1) -> None:
        """Queue `count` faults of a kind (`WEBHOOK_FAULTS`) for the next deliveries."""
        if kind not in WEBHOOK_FAULTS:
            raise ValueError(f"unknown webhook fault {kind!r}; use one of {', '.join(WEBHOOK_FAULTS)}")
        with self._lock:
            self._faults[kind] += int(count)

    def company_read(self, company_id: str, name: str, connection_ids: list[str], modified: bool) -> None:
        """Codat has read a company: send its `read.completed` (when a URL is set)."""
        if self.url is None:
            return
        event = read_completed(company_id, name, connection_ids, modified)
        delivery = Delivery(event["id"], company_id, json.dumps(event).encode())
        with self._lock:
            self.deliveries.append(delivery)
        self._pending.put(delivery)

    def idle(self) -> bool:
        """Whether every event made so far has been delivered or given up."""
        return self._pending.unfinished_tasks == 0 and self._held is None

    def _run(self) -> None:
        while True:
            delivery = self._pending.get()
            try:
                self._deliver(delivery)
            finally:
                self._pending.task_done()

    def _deliver(self, delivery: Delivery) -> None:
        with self._lock:
            duplicate = self._take_fault("webhook-duplicate")
            if self._held is None and self._take_fault("webhook-reorder"):
                self._held = delivery
                return
            held, self._held = self._held, None
        self._send_with_retries(delivery)
        if duplicate:
            self._send_with_retries(delivery)
        if held is not None:
            self._send_with_retries(held)

    def _take_fault(self, kind: str) -> bool:
        if self._faults[kind] <= 0:
            return False
        self._faults[kind] -= 1
        return True

    def _send_with_retries(self, delivery: Delivery) -> None:
        for delay in (0.0, *RETRY_DELAYS):
            time.sleep(delay)
            status = self._send(delivery)
            if status is not None and 200 <= status < 300:
                return
        logger.warning("webhook %s for company %s given up", delivery.webhook_id, delivery.company_id)

    def _send(self, delivery: Delivery) -> int | None:
        with self._lock:
            url, key = self.url, self._key
        if url is None or key is None:
            return None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, delivery.webhook_id, timestamp, delivery.body),
        }
        delivery.attempts += 1
        try:
            request = Request(url, delivery.body, headers, method="POST")
            with self._opener.open(request, timeout=SEND_TIMEOUT) as answer:
                status: int | None = answer.status
        except URLError as exc:
            status = getattr(exc, "code", None)
        except OSError:
            status = None
        delivery.statuses.append(status)
        return status
