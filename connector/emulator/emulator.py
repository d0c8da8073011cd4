"""The emulated Codat account: its parts, its operations, and the pipeline every request runs."""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from connector.emulator.api import CodatApi, Match, match_route
from connector.emulator.control import CONTROL_PREFIX, handle_control
from connector.emulator.faults import Fault, FaultPlan
from connector.emulator.limits import DEFAULT_RATE_WINDOW_SECONDS, REFUSALS, RateLimiter
from connector.emulator.model import STATUS_COMPLETE, Company
from connector.emulator.push import DEFAULT_PUSH_DELAY, PushLedger
from connector.emulator.store import Mutator, Sizing, Store, utc_stamp
from connector.emulator.webhooks import WEBHOOK_FAULTS, WebhookSender
from connector.emulator.wire import ERROR_TEXTS, Request, Response, error_response

DEFAULT_API_KEY = "emulator-key"
REQUEST_LOG_SIZE = 100_000

Proceed = Callable[[], Response]


@dataclass
class Exchange:
    """One Codat request on its way through the pipeline, and what the steps learn about it."""

    request: Request
    match: Match | None
    company_id: str | None
    fault: Fault | None = None
    refusal: str | None = None  # the rate limit that refused the request, one of `REFUSALS`

    @classmethod
    def of(cls, request: Request) -> Exchange:
        """Match the request's route and the company it is about."""
        segments = request.segments
        company_id = segments[1] if len(segments) > 1 and segments[0] == "companies" else None
        return cls(request, match_route(request.method, segments), company_id)

    @property
    def operation(self) -> str:
        """The route's operation name, "unknown" when no route matches."""
        return self.match.operation if self.match is not None else "unknown"

    @property
    def idempotency_key(self) -> str | None:
        """The `Idempotency-Key` of a POST to a known route, if it sends one."""
        if self.request.method != "POST" or self.match is None:
            return None
        return self.request.headers.get("Idempotency-Key") or None

    def log_entry(self, status: int) -> dict[str, Any]:
        """The request log's record of this exchange, answered with `status`."""
        return {
            "method": self.request.method,
            "path": self.request.path,
            "params": self.request.params,
            "operation": self.operation,
            "company_id": self.company_id,
            "client_ip": self.request.client_ip,
            "status": status,
            "fault": self.fault.kind if self.fault else None,
            "refused": self.refusal,
        }


Step = Callable[[Exchange, Proceed], Response]


def run_pipeline(exchange: Exchange, steps: Sequence[Step], last: Callable[[Exchange], Response]) -> Response:
    """Pass the exchange through `steps` in order, then to `last`; any step may answer instead."""
    if not steps:
        return last(exchange)
    return steps[0](exchange, lambda: run_pipeline(exchange, steps[1:], last))


class Emulator:
    """The emulated Codat account and everything that shapes its answers.

    Tests drive it in-process through these methods; out-of-process clients use the same
    operations over HTTP under `/_emulator/` (see `connector.emulator.control`).
    """

    def __init__(
        self,
        sizing: Sizing | None = None,
        api_key: str = DEFAULT_API_KEY,
        latency: float = 0.0,
        latency_per_record: float = 0.0,
        daily_limit: int | None = None,
        push_delay: float = DEFAULT_PUSH_DELAY,
        per_minute_limit: int | None = None,
        window_seconds: float = DEFAULT_RATE_WINDOW_SECONDS,
    ) -> None:
        self.store = Store(sizing or Sizing())
        self.api_key = api_key
        self.latency = latency
        self.latency_per_record = latency_per_record
        self.ledger = PushLedger(delay=push_delay)
        self.faults = FaultPlan()
        self.limiter = RateLimiter(
            companies=len(self.store.companies),
            daily_limit=daily_limit,
            per_minute_limit=per_minute_limit,
            window_seconds=window_seconds,
        )
        self.mutator = Mutator(self.store)
        self.webhooks = WebhookSender()
        self.store.on_read = self._company_read
        self.api = CodatApi(self.store, self.ledger)
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._log_lock = threading.Lock()

    # -- control -------------------------------------------------------------------------

    def reset(
        self, seed: int | None = None, companies: int | None = None, customers: int | None = None
    ) -> None:
        """Regenerate the account and forget faults, pushes, usage and the request log."""
        self.mutator.stop()
        current = self.store.sizing
        self.store.reset(
            Sizing(
                seed=current.seed if seed is None else seed,
                companies=current.companies if companies is None else companies,
                customers=current.customers if customers is None else customers,
            )
        )
        self.faults.clear()
        self.webhooks.reset()
        self.ledger.reset()
        self.limiter.companies = len(self.store.companies)
        self.limiter.reset()
        self.clear_log()

    def _company_read(self, company: Company, modified: bool) -> None:
        connections = [c.id for c in company.accounting_connections]
        self.webhooks.company_read(company.id, company.name, connections, modified)

    def clear_log(self) -> None:
        """Forget the request log (the stats are computed from it)."""
        with self._log_lock:
            self.request_log.clear()

    def add_fault(self, kind: str, **options: Any) -> None:
        """Script a fault for the next matching answers (see `Fault`), or the next webhooks."""
        if kind in WEBHOOK_FAULTS:
            self.webhooks.add_fault(kind, int(options.get("count", 1)))
            return
        self.faults.add(Fault.from_json({"kind": kind, **options}))

    def sync(self, company_id: str | None = None) -> int:
        """Simulate Codat syncing companies: settled successful pushes appear in the data.

        A named company is read whatever its state (a never-read company becomes readable);
        without a name, every company already read is synced. Returns the records written.
        """
        applied = 0
        changed: set[str] = set()
        stamp = utc_stamp()
        with self.store.locked():
            for operation in self.ledger.settled():
                if operation.applied or operation.status != "Success":
                    continue
                if company_id is not None and operation.company_id != company_id:
                    continue
                company = self.store.company(operation.company_id)
                if company is None:
                    continue
                self.store.put_customer(company, {**operation.customer, "modifiedDate": stamp})
                changed.add(company.id)
                operation.applied = True
                applied += 1
            if company_id is not None:
                targets = [c for c in [self.store.company(company_id)] if c is not None]
            else:  # an account-wide sync leaves unread companies in their state
                targets = [c for c in self.store.companies.values() if c.customers_status == STATUS_COMPLETE]
            for company in targets:
                self.store.mark_synced(company, stamp, modified=company.id in changed)
        return applied

    def stats(self) -> dict[str, Any]:
        """Request counts per operation, company, status and refusing limit; the quota in force."""
        with self._log_lock:
            entries = list(self.request_log)
        refused = Counter(e["refused"] for e in entries if e["refused"])
        return {
            "requests": len(entries),
            "by_operation": dict(Counter(e["operation"] for e in entries)),
            "by_company": dict(Counter(e["company_id"] for e in entries if e["company_id"])),
            "by_status": {str(k): v for k, v in Counter(e["status"] for e in entries).items()},
            "refused": {limit: refused[limit] for limit in REFUSALS},
            "rate_limit": {"limit": self.limiter.limit, "used": self.limiter.used},
            "mutations": self.mutator.changes,
        }

    # -- serving -------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[Response, Fault | None]:
        """Answer any request: the control API under `/_emulator/`, Codat's API otherwise."""
        if request.path.startswith(CONTROL_PREFIX):
            return handle_control(self, request), None
        return self.serve(request)

    def serve(self, request: Request) -> tuple[Response, Fault | None]:
        """Answer one Codat request through `pipeline`, and log it.

        Returns:
            The answer, and the fault taken, if any, which tells the transport how to send it
            (`connector.emulator.faults.deliver`).
        """
        exchange = Exchange.of(request)
        response = run_pipeline(exchange, self.pipeline(), self.route)
        self._log(exchange, response.status)
        return response, exchange.fault

    def pipeline(self) -> tuple[Step, ...]:
        """The steps of a Codat request, in order; each answers itself or proceeds to the next."""
        return (
            self.authenticate,
            self.admit,
            self.take_fault,
            self.wait_latency,
            self.answer_error_fault,
            self.replay_idempotent,
            self.wait_slow_fault,
        )

    def authorized(self, header: str | None) -> bool:
        """Whether `Authorization` is `Basic <base64 of the API key>`."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.api_key.encode())

    def authenticate(self, exchange: Exchange, proceed: Proceed) -> Response:
        """`401` unless the request is `authorized`."""
        if not self.authorized(exchange.request.headers.get("Authorization")):
            return error_response(401, ERROR_TEXTS["401"])
        return proceed()

    def admit(self, exchange: Exchange, proceed: Proceed) -> Response:
        """`429` when a rate limit refuses; the rate-limit headers go on every answer from here."""
        exchange.refusal, headers = self.limiter.admit(exchange.company_id, exchange.request.client_ip)
        if exchange.refusal is not None:
            response = error_response(429, ERROR_TEXTS["429"])
        else:
            try:
                response = proceed()
            finally:
                self.limiter.release(exchange.company_id)
        response.headers.update(headers)
        return response

    def take_fault(self, exchange: Exchange, proceed: Proceed) -> Response:
        """Take the first scripted fault that matches the path, if any."""
        exchange.fault = self.faults.take(exchange.request.path)
        return proceed()

    def wait_latency(self, exchange: Exchange, proceed: Proceed) -> Response:
        """Spend the configured latency before answering, and the per-record time of a page."""
        # Latency and slow faults are time spent serving: the request holds its concurrency
        # slot and, for a POST with an Idempotency-Key, its claim on the key meanwhile.
        if self.latency:
            time.sleep(self.latency)
        response = proceed()
        if self.latency_per_record and response.records:
            time.sleep(self.latency_per_record * response.records)
        return response

    def answer_error_fault(self, exchange: Exchange, proceed: Proceed) -> Response:
        """An error fault's answer in place of the route's."""
        error = exchange.fault.error_response() if exchange.fault is not None else None
        return proceed() if error is None else error

    def replay_idempotent(self, exchange: Exchange, proceed: Proceed) -> Response:
        """For a POST with an `Idempotency-Key`: replay the key's first answer, or keep this one.

        A key still being answered gets `409`; a key sent with another body, `422`.
        """
        key = exchange.idempotency_key
        if key is None:
            return proceed()
        claim = self.ledger.claim(key, exchange.request.body)
        if claim == "conflict":
            return error_response(409, "A request with this Idempotency-Key is still being processed.")
        if claim == "mismatch":
            return error_response(422, "This Idempotency-Key was used with a different request body.")
        if isinstance(claim, tuple):
            return Response(claim[0], claim[1])
        response = proceed()
        self.ledger.finish(key, (response.status, response.body))
        return response

    def wait_slow_fault(self, exchange: Exchange, proceed: Proceed) -> Response:
        """Wait out a `slow` fault, then answer normally."""
        if exchange.fault is not None:
            exchange.fault.stall()
        return proceed()

    def route(self, exchange: Exchange) -> Response:
        """The matched route's answer, or `404` when no route matches."""
        request = exchange.request
        if exchange.match is None:
            return error_response(404, f"No route for {request.method} {request.path}")
        return self.api.answer(exchange.match, request)

    def _log(self, exchange: Exchange, status: int) -> None:
        with self._log_lock:
            self.request_log.append(exchange.log_entry(status))
