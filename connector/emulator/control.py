"""The emulator's own HTTP control API under `/_emulator/` (no auth, never counted as usage)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from connector.emulator.faults import FaultPlan
from connector.emulator.limits import RateLimiter
from connector.emulator.model import STATUS_COMPLETE
from connector.emulator.push import PushLedger
from connector.emulator.store import Mutator, Store
from connector.emulator.webhooks import WebhookSender
from connector.emulator.wire import Request, Response

CONTROL_PREFIX = "/_emulator/"


class ControlledEmulator(Protocol):
    """What the control API drives: the emulator's parts and operations (`Emulator` has them)."""

    store: Store
    mutator: Mutator
    limiter: RateLimiter
    ledger: PushLedger
    faults: FaultPlan
    webhooks: WebhookSender
    latency: float
    latency_per_record: float
    request_log: deque[dict[str, Any]]

    def reset(
        self, seed: int | None = None, companies: int | None = None, customers: int | None = None
    ) -> None:
        """Regenerate the account and forget faults, pushes, usage and the request log."""

    def clear_log(self) -> None:
        """Forget the request log."""

    def add_fault(self, kind: str, **options: Any) -> None:
        """Script a fault."""

    def sync(self, company_id: str | None = None) -> int:
        """Simulate Codat syncing companies; return the records written."""

    def stats(self) -> dict[str, Any]:
        """Request counts and the quota in force."""


ControlHandler = Callable[[ControlledEmulator, Any], Any]


def _body(request: Request) -> Any:
    if not request.body:
        return {}
    return json.loads(request.body)


def _reset(emulator: ControlledEmulator, body: Any) -> Any:
    emulator.reset(body.get("seed"), body.get("companies"), body.get("customers"))
    return {"companies": len(emulator.store.companies)}


def _mutate(emulator: ControlledEmulator, body: Any) -> Any:
    action = body.get("action", "modify")
    if action == "stop":
        emulator.mutator.stop()
        return {"changes": emulator.mutator.changes}
    company_ids = body.get("company_ids") or (
        [body["company_id"]] if body.get("company_id") else _readable_company_ids(emulator)
    )
    if body.get("rate"):
        duration = float(body.get("duration", 10))
        if not 0 < duration <= 3600:
            raise ValueError("duration must be between 0 and 3600 seconds")
        emulator.mutator.start(company_ids, float(body["rate"]), duration, action)
        return {"started": True, "company_ids": company_ids}
    changed = {
        company_id: emulator.store.mutate(
            company_id, action, int(body.get("count", 1)), body.get("ids"), body.get("timestamp")
        )
        for company_id in company_ids
    }
    return {"changed": changed}


def _readable_company_ids(emulator: ControlledEmulator) -> list[str]:
    with emulator.store.locked():
        return [c.id for c in emulator.store.companies.values() if c.customers_status == STATUS_COMPLETE]


def _edit_in_platform(emulator: ControlledEmulator, body: Any) -> Any:
    emulator.store.edit_in_platform(body["company_id"], list(body["ids"]))
    return {"marked": len(body["ids"])}


def _link_connection(emulator: ControlledEmulator, body: Any) -> Any:
    company_id = body["company_id"]
    return emulator.store.link_connection(company_id, body["platform"]).to_json(company_id)


def _sync(emulator: ControlledEmulator, body: Any) -> Any:
    return {"applied": emulator.sync(body.get("company_id"))}


def _faults(emulator: ControlledEmulator, body: Any) -> Any:
    for fault in body if isinstance(body, list) else [body]:
        emulator.add_fault(**fault)
    return {"queued": len(emulator.faults.faults)}


def _clear_faults(emulator: ControlledEmulator, body: Any) -> Any:
    emulator.faults.clear()
    return {"queued": 0}


def _per_minute_limit(value: Any) -> int | None:
    """A per-IP limit from the control API: a whole number, null or 0 for off."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("per_minute_limit must be a whole number of requests, 0 or null for off")
    return value or None


def _window_seconds(value: Any) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError("window_seconds must be more than 0")
    return seconds


def _config(emulator: ControlledEmulator, body: Any) -> Any:
    limiter = emulator.limiter
    per_minute_limit, window_seconds = limiter.per_minute_limit, limiter.window_seconds
    if "per_minute_limit" in body:
        per_minute_limit = _per_minute_limit(body["per_minute_limit"])
    if "window_seconds" in body:
        window_seconds = _window_seconds(body["window_seconds"])
    limiter.per_minute_limit, limiter.window_seconds = per_minute_limit, window_seconds
    if "latency" in body:
        emulator.latency = float(body["latency"])
    if "latency_per_record" in body:
        emulator.latency_per_record = float(body["latency_per_record"])
    if "daily_limit" in body:
        emulator.limiter.daily_limit = body["daily_limit"]
    if "push_delay" in body:
        emulator.ledger.delay = float(body["push_delay"])
    if "max_concurrent" in body:
        emulator.limiter.max_concurrent = int(body["max_concurrent"])
    if "webhook_url" in body or "webhook_secret" in body:
        emulator.webhooks.configure(body.get("webhook_url"), body.get("webhook_secret"))
    return {
        "latency": emulator.latency,
        "latency_per_record": emulator.latency_per_record,
        "daily_limit": emulator.limiter.limit,
        "push_delay": emulator.ledger.delay,
        "max_concurrent": emulator.limiter.max_concurrent,
        "per_minute_limit": limiter.per_minute_limit,
        "window_seconds": limiter.window_seconds,
        "webhook_url": emulator.webhooks.url,  # the secret is never echoed
    }


def _account(emulator: ControlledEmulator, body: Any) -> Any:
    with emulator.store.locked():
        return [
            {
                "id": c.id,
                "name": c.name,
                "platform": c.platform,
                "customers": len(c.customers),
                "customers_status": c.customers_status,
                "connections": [{"id": x.id, "sourceType": x.source_type} for x in c.connections],
            }
            for c in emulator.store.companies.values()
        ]


CONTROL_ROUTES: dict[tuple[str, str], ControlHandler] = {
    ("GET", "health"): lambda emulator, body: {"ok": True},
    ("GET", "account"): _account,
    ("GET", "stats"): lambda emulator, body: emulator.stats(),
    ("GET", "requests"): lambda emulator, body: list(emulator.request_log),
    ("DELETE", "requests"): lambda emulator, body: emulator.clear_log(),
    ("POST", "reset"): _reset,
    ("POST", "mutate"): _mutate,
    ("POST", "edit-in-platform"): _edit_in_platform,
    ("POST", "link-connection"): _link_connection,
    ("POST", "sync"): _sync,
    ("POST", "faults"): _faults,
    ("DELETE", "faults"): _clear_faults,
    ("POST", "config"): _config,
}


def handle_control(emulator: ControlledEmulator, request: Request) -> Response:
    """Answer a control request; bad input gets `400` with what to fix."""
    name = request.path.removeprefix(CONTROL_PREFIX).strip("/")
    handler = CONTROL_ROUTES.get((request.method, name))
    if handler is None:
        known = ", ".join(f"{m} {CONTROL_PREFIX}{n}" for m, n in CONTROL_ROUTES)
        return _json(404, {"error": f"unknown control route; known: {known}"})
    try:
        result = handler(emulator, _body(request))
    except (KeyError, ValueError, TypeError) as exc:
        return _json(400, {"error": f"{type(exc).__name__}: {exc}"})
    return _json(200, {} if result is None else result)


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body, ensure_ascii=False).encode())
