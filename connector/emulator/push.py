"""Asynchronous create/update of customers: push operations, idempotency and platform staleness."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from connector.emulator.model import Json

IDEMPOTENCY_WINDOW_SECONDS = 90 * 60
DEFAULT_PUSH_DELAY = 0.5  # seconds before a Pending push operation settles


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


@dataclass
class PushOperation:
    """One create or update, as Codat tracks it until it settles."""

    key: str
    company_id: str
    connection_id: str
    customer: Json  # the record as it will appear after Codat's next sync
    change_type: str  # "Created" or "Modified"
    requested: float
    settle_at: float
    timeout_minutes: int | None
    errors: list[dict[str, str | None]]
    stale: bool = False
    status: str = "Pending"
    completed: float | None = None
    applied: bool = False

    def settle(self, now: float) -> None:
        """Move a Pending operation to its final status once its delay has passed."""
        if self.status != "Pending" or now < self.settle_at:
            return
        self.completed = self.settle_at
        if self.timeout_minutes is not None and self.settle_at - self.requested > self.timeout_minutes * 60:
            self.status = "TimedOut"
        elif self.errors or self.stale:
            self.status = "Failed"
        else:
            self.status = "Success"

    def to_json(self) -> Json:
        """Render as Codat's `PushOperation`."""
        failed = self.status in ("Failed", "TimedOut")
        error = None
        if self.status == "TimedOut":
            error = "Push operation timed out."
        elif self.stale:
            error = (
                "The record was modified in the platform since Codat last read it; "
                "sync the company or retry with forceUpdate=true."
            )
        elif self.errors:
            error = "The record failed validation against the create/update model."
        return {
            "changes": [
                {
                    "type": self.change_type,
                    "recordRef": {"id": self.customer["id"], "dataType": "customers"},
                    "attachmentId": None,
                }
            ]
            if self.status == "Success"
            else [],
            "dataType": "customers",
            "companyId": self.company_id,
            "pushOperationKey": self.key,
            "dataConnectionKey": self.connection_id,
            "requestedOnUtc": _iso(self.requested),
            "completedOnUtc": _iso(self.completed) if self.completed is not None else None,
            "timeoutInMinutes": self.timeout_minutes,
            "timeoutInSeconds": None if self.timeout_minutes is None else self.timeout_minutes * 60,
            "status": self.status,
            "errorMessage": error if failed else None,
            "validation": {
                "errors": self.errors if self.status == "Failed" else [],
                "warnings": [],
            },
            "statusCode": {"Pending": 202, "Success": 200, "TimedOut": 504}.get(self.status, 400),
            "data": self.customer,
        }


@dataclass
class _Replay:
    body_hash: str
    created: float
    answer: tuple[int, bytes] | None = None  # None while the first request is still running


@dataclass
class PushLedger:
    """All push operations and idempotency keys of the account."""

    delay: float = DEFAULT_PUSH_DELAY
    operations: dict[str, PushOperation] = field(default_factory=dict)
    _replays: dict[str, _Replay] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Forget every operation and idempotency key; the delay stays."""
        with self._lock:
            self.operations.clear()
            self._replays.clear()

    def forget_idempotency_keys(self) -> None:
        """Forget every idempotency key, as Codat has 90 minutes after each request; operations stay."""
        with self._lock:
            self._replays.clear()

    def record(self, operation: PushOperation) -> None:
        """Track a new operation."""
        with self._lock:
            self.operations[operation.key] = operation

    def new_operation(self, **fields: Any) -> PushOperation:
        """Create a Pending operation that settles after the configured delay."""
        now = time.time()
        return PushOperation(key=str(uuid.uuid4()), requested=now, settle_at=now + self.delay, **fields)

    def get(self, key: str) -> PushOperation | None:
        """An operation by key, settled if its time has come."""
        with self._lock:
            operation = self.operations.get(key)
        if operation is not None:
            operation.settle(time.time())
        return operation

    def settled(self) -> list[PushOperation]:
        """Every operation settled as of now."""
        now = time.time()
        with self._lock:
            operations = list(self.operations.values())
        for operation in operations:
            operation.settle(now)
        return operations

    def claim(self, key: str, body: bytes) -> tuple[int, bytes] | str:
        """Start an idempotent request: a replayed answer, "conflict", "mismatch" or "new"."""
        body_hash = hashlib.sha256(body).hexdigest()
        now = time.time()
        with self._lock:
            replay = self._replays.get(key)
            if replay is None or now - replay.created > IDEMPOTENCY_WINDOW_SECONDS:
                self._replays[key] = _Replay(body_hash, now)
                return "new"
            if replay.body_hash != body_hash:
                return "mismatch"
            if replay.answer is None:
                return "conflict"
            return replay.answer

    def finish(self, key: str, answer: tuple[int, bytes]) -> None:
        """Store the first answer for a key; a failed first request frees the key."""
        with self._lock:
            if answer[0] >= 500:
                self._replays.pop(key, None)
            elif key in self._replays:
                self._replays[key].answer = answer
