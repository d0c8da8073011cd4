"""Scripted faults: their kinds, the queue they wait in, and what each kind does to an answer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Protocol

from connector.emulator.wire import ERROR_TEXTS, Response, error_response

# An error kind answers its status with Codat's message instead of the route's answer.
ERROR_KINDS = tuple(ERROR_TEXTS)
SLOW = "slow"  # waits `delay` seconds, then answers normally
RESET = "reset"  # the answer is computed, then the connection is reset instead of sent
TRUNCATE = "truncate"  # half the answer's body is sent, then the connection is closed
INVALID_JSON = "invalid_json"  # a 200 answer is replaced by a body that is not JSON
FAULT_KINDS = (*ERROR_KINDS, SLOW, RESET, TRUNCATE, INVALID_JSON)
BROKEN_JSON = b'{"results": [{"id": "broken", '


@dataclass
class Fault:
    """What the next `count` matching answers do instead of (or before) their normal answer.

    `match` is a substring of the request path (empty matches everything); `retry_after`
    is sent with `429` answers, as seconds ("2") or "http-date" for an HTTP date that
    many seconds ahead; `delay` is how long `slow` waits before answering normally.
    """

    kind: str
    count: int = 1
    match: str = ""
    retry_after: str = "1"
    delay: float = 1.0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        """Build from a control-API body, rejecting unknown kinds and keys."""
        unknown = set(body) - {"kind", "count", "match", "retry_after", "delay"}
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))}")
        fault = cls(**body)
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if fault.count < 1:
            raise ValueError("fault count must be at least 1")
        return fault

    def retry_after_header(self) -> str:
        """The `Retry-After` value, in the form the fault asks for."""
        if self.retry_after.startswith("http-date"):
            seconds = int(self.retry_after.partition(":")[2] or "1")
            return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)
        return self.retry_after

    def error_response(self) -> Response | None:
        """The error an error kind answers with (a `429` with `Retry-After`); None for other kinds."""
        if self.kind not in ERROR_KINDS:
            return None
        headers = {"Retry-After": self.retry_after_header()} if self.kind == "429" else {}
        return error_response(int(self.kind), ERROR_TEXTS[self.kind], headers=headers)

    def stall(self) -> None:
        """Wait out a `slow` fault's delay; other kinds do not wait."""
        if self.kind == SLOW:
            time.sleep(self.delay)


@dataclass
class FaultPlan:
    """A queue of scripted faults, consumed by matching requests in order."""

    faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        """Queue a fault after those already queued."""
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self.faults.clear()

    def take(self, path: str) -> Fault | None:
        """The fault the request at `path` must suffer, if any, counting it down."""
        with self._lock:
            for fault in self.faults:
                if fault.match in path:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
        return None


class Transport(Protocol):
    """The connection an answer goes out on, as the HTTP server offers it."""

    def send_answer(self, response: Response, cut: int | None = None) -> None:
        """Send the answer; with `cut`, only that many body bytes, then close the connection."""

    def reset_connection(self) -> None:
        """Drop the connection with a TCP reset, sending nothing."""


def deliver(response: Response, fault: Fault | None, transport: Transport) -> None:
    """Send an answer as the fault, if any, has it go out on the wire."""
    kind = fault.kind if fault is not None else None
    if kind == RESET:
        transport.reset_connection()
    elif kind == TRUNCATE:
        transport.send_answer(response, cut=max(len(response.body) // 2, 1))
    elif kind == INVALID_JSON and response.status == 200:
        transport.send_answer(Response(200, BROKEN_JSON))
    else:
        transport.send_answer(response)
