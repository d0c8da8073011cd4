"""The emulator's HTTP/1.1 server: auth, rate limits, faults, routing and request log."""

from __future__ import annotations

import base64
import binascii
import hmac
import socket
import struct
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

from connector.emulator.api import (
    CodatApi,
    CodatError,
    Request,
    Response,
    error_response,
    match_route,
)
from connector.emulator.limits import (
    DEFAULT_RATE_WINDOW_SECONDS,
    ERROR_TEXTS,
    LOOPBACK,
    REFUSALS,
    Fault,
    FaultPlan,
    RateLimiter,
)
from connector.emulator.model import STATUS_COMPLETE
from connector.emulator.push import DEFAULT_PUSH_DELAY, PushLedger
from connector.emulator.store import Mutator, Sizing, Store, utc_stamp

DEFAULT_API_KEY = "emulator-key"
REQUEST_LOG_SIZE = 100_000
CONTROL_PREFIX = "/_emulator/"


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
        daily_limit: int | None = None,
        push_delay: float = DEFAULT_PUSH_DELAY,
        per_minute_limit: int | None = None,
        window_seconds: float = DEFAULT_RATE_WINDOW_SECONDS,
    ) -> None:
        self.store = Store(sizing or Sizing())
        self.api_key = api_key
        self.latency = latency
        self.ledger = PushLedger(delay=push_delay)
        self.faults = FaultPlan()
        self.limiter = RateLimiter(
            companies=len(self.store.companies),
            daily_limit=daily_limit,
            per_minute_limit=per_minute_limit,
            window_seconds=window_seconds,
        )
        self.mutator = Mutator(self.store)
        self.api = CodatApi(self)
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
        self.ledger = PushLedger(delay=self.ledger.delay)
        self.limiter.companies = len(self.store.companies)
        self.limiter.reset()
        self.clear_log()

    def clear_log(self) -> None:
        """Forget the request log (the stats are computed from it)."""
        with self._log_lock:
            self.request_log.clear()

    def add_fault(self, kind: str, **options: Any) -> None:
        """Script a fault for the next matching answers (see `Fault`)."""
        self.faults.add(Fault.from_json({"kind": kind, **options}))

    def sync(self, company_id: str | None = None) -> int:
        """Simulate Codat syncing companies: settled successful pushes appear in the data.

        A named company is read whatever its state (a never-read company becomes readable);
        without a name, every company already read is synced. Returns the records written.
        """
        applied = 0
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
                operation.applied = True
                applied += 1
            if company_id is not None:
                targets = [c for c in [self.store.company(company_id)] if c is not None]
            else:  # an account-wide sync leaves unread companies in their state
                targets = [c for c in self.store.companies.values() if c.customers_status == STATUS_COMPLETE]
            for company in targets:
                self.store.mark_synced(company, stamp)
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

    def authorized(self, header: str | None) -> bool:
        """Whether `Authorization` is `Basic <base64 of the API key>`."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.api_key.encode())

    def serve(self, request: Request) -> tuple[Response, Fault | None]:
        """Answer one Codat request; the fault, if any, tells the transport how to misbehave.

        In turn: authenticate (`401`), admit under the rate limits (`429`), answer (a scripted
        fault or the route), log.
        """
        found = match_route(request.method, request.segments)
        operation = found[0] if found else "unknown"
        company_id = (
            request.segments[1] if len(request.segments) > 1 and request.segments[0] == "companies" else None
        )
        fault: Fault | None = None
        refusal: str | None = None
        if not self.authorized(request.headers.get("Authorization")):
            response = error_response(401, ERROR_TEXTS["401"])
        else:
            refusal, rate_headers = self.limiter.admit(company_id, request.client_ip)
            if refusal is not None:
                response = error_response(429, ERROR_TEXTS["429"])
            else:
                try:
                    fault = self.faults.take(request.path)
                    response = self._answer(request, found, fault)
                finally:
                    self.limiter.release(company_id)
            response.headers.update(rate_headers)
        self._log(request, operation, company_id, response.status, fault, refusal)
        return response, fault

    def _answer(self, request: Request, found: Any, fault: Fault | None) -> Response:
        # Latency and slow faults are time spent serving: the request holds its concurrency
        # slot and, for a POST with an Idempotency-Key, its claim on the key meanwhile.
        if self.latency:
            time.sleep(self.latency)
        if fault is not None and fault.kind in ERROR_TEXTS:
            headers = {"Retry-After": fault.retry_after_header()} if fault.kind == "429" else {}
            return error_response(int(fault.kind), ERROR_TEXTS[fault.kind], headers=headers)
        key = request.headers.get("Idempotency-Key") if request.method == "POST" and found else None
        if key:
            claim = self.ledger.claim(key, request.body)
            if claim == "conflict":
                return error_response(409, "A request with this Idempotency-Key is still being processed.")
            if claim == "mismatch":
                return error_response(422, "This Idempotency-Key was used with a different request body.")
            if isinstance(claim, tuple):
                return Response(claim[0], claim[1])
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if found is None:
            return error_response(404, f"No route for {request.method} {request.path}")
        response = self._dispatch(request, found)
        if key:
            self.ledger.finish(key, (response.status, response.body))
        return response

    def _dispatch(self, request: Request, found: Any) -> Response:
        _, handler, args = found
        try:
            response: Response = handler(self.api, request, args)
        except CodatError as exc:
            return exc.response()
        return response

    def _log(
        self,
        request: Request,
        operation: str,
        company_id: str | None,
        status: int,
        fault: Fault | None,
        refusal: str | None,
    ) -> None:
        entry = {
            "method": request.method,
            "path": request.path,
            "params": request.params,
            "operation": operation,
            "company_id": company_id,
            "client_ip": request.client_ip,
            "status": status,
            "fault": fault.kind if fault else None,
            "refused": refusal,
        }
        with self._log_lock:
            self.request_log.append(entry)


def parse_request(method: str, target: str, headers: Any, body: bytes, client_ip: str = LOOPBACK) -> Request:
    """Split a request target into decoded path segments and query parameters."""
    path, _, query = target.partition("?")
    raw_pairs = parse_qsl(query, keep_blank_values=True)
    raw_params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        raw_params.setdefault(unquote(name), value)
    segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    return Request(
        method=method,
        path=path,
        segments=segments,
        params=dict(reversed(raw_pairs)) if raw_pairs else {},
        raw_params=raw_params,
        headers=headers,
        body=body,
        client_ip=client_ip,
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CodatEmulator/1.0"
    # Headers and body go out in two writes: with Nagle on, keep-alive clients wait ~40 ms for each.
    disable_nagle_algorithm = True
    emulator: Emulator

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: the request log is kept in memory instead."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = parse_request(self.command, self.path, self.headers, body, self.client_address[0])
        if request.path.startswith(CONTROL_PREFIX):
            from connector.emulator.control import handle_control

            self._send(handle_control(self.emulator, request))
            return
        response, fault = self.emulator.serve(request)
        if fault is not None and fault.kind == "reset":
            self._reset_connection()
        elif fault is not None and fault.kind == "truncate":
            self._send(response, cut=max(len(response.body) // 2, 1))
        elif fault is not None and fault.kind == "invalid_json" and response.status == 200:
            self._send(Response(200, b'{"results": [{"id": "broken", '))
        else:
            self._send(response)

    def _send(self, response: Response, cut: int | None = None) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body if cut is None else response.body[:cut])
        self.wfile.flush()

    def _reset_connection(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that drop connections are part of the job, not errors to print."""


class EmulatorServer:
    """Runs an `Emulator` on a loopback port in a background thread."""

    def __init__(self, emulator: Emulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator or Emulator()
        handler = type("Handler", (_Handler,), {"emulator": self.emulator})
        self._httpd = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use in place of `https://api.codat.io`."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.emulator.mutator.stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread (the command line's way)."""
        self._httpd.serve_forever()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
