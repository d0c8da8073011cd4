"""What the webhook tests share: a secret, Codat's events, signed deliveries, a receiver on a real server."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from svix.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"codat-connector-tests-secret!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else's-secret-entirely").decode()


def read_completed(company_id: str, modified: bool = True, data_type: str = "customers") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "eventType": "read.completed",
        "generatedDate": "2026-12-08T00:00:00.000Z",
        "payload": {
            "referenceCompany": {"id": company_id, "name": "A company"},
            "modifiedFromDate": "2026-12-08T00:00:00.000Z",
            "dataTypes": [
                {
                    "connectionId": "c1",
                    "dataType": data_type,
                    "recordsModified": modified,
                    "status": "Complete",
                }
            ],
        },
    }


def signed(
    event: Any,
    secret: str = SECRET,
    webhook_id: str | None = None,
    at: datetime | None = None,
    prefix: str = "webhook",
) -> tuple[bytes, dict[str, str]]:
    """A delivery as Codat sends one: the body and its headers, signed by Svix's library."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, at, body.decode())
    return body, {
        "content-type": "application/json",
        f"{prefix}-id": webhook_id,
        f"{prefix}-timestamp": str(int(at.timestamp())),
        f"{prefix}-signature": signature,
    }


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The ASGI app on a uvicorn server on 127.0.0.1 (a free port); yields its webhook URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/webhooks/codat"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
