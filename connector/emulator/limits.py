"""Scripted faults and Codat's rate limits (daily quota, 10 concurrent requests per company)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

ERROR_TEXTS = {
    "400": "Error processing request - not valid.",
    "401": "Unauthorized",
    "402": "Your account's plan does not cover this request.",
    "403": "You are using an outdated API key or a key not associated with that resource.",
    "404": "No data available for this request.",
    "409": "The data set has not been requested.",
    "429": "You have made too many requests in a given amount of time; please retry later.",
    "500": "There is a problem with our server. Please try again later.",
    "503": "The Codat API is temporarily offline for maintenance. Please try again later.",
}
FAULT_KINDS = (*ERROR_TEXTS, "slow", "reset", "truncate", "invalid_json")
DEFAULT_DAILY_REQUESTS_PER_COMPANY = 1000
MAX_CONCURRENT_PER_COMPANY = 10


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


def next_midnight(now: datetime) -> datetime:
    """The next 00:00 UTC, when Codat resets the daily quota."""
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class RateLimiter:
    """Codat's daily quota and per-company concurrency limit.

    The daily limit is `daily_limit` when set, otherwise 1,000 × (1 + companies), as Codat
    computes it from the number of active companies.
    """

    companies: int = 0
    daily_limit: int | None = None
    max_concurrent: int = MAX_CONCURRENT_PER_COMPANY
    used: int = 0
    day: str = ""
    in_flight: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def limit(self) -> int:
        """The daily request limit in force."""
        if self.daily_limit is not None:
            return self.daily_limit
        return DEFAULT_DAILY_REQUESTS_PER_COMPANY * (1 + self.companies)

    def admit(self, company_id: str | None) -> tuple[str | None, dict[str, str]]:
        """Count a request; return a refusal reason (or None) and the rate-limit headers."""
        now = datetime.now(UTC)
        with self._lock:
            today = now.date().isoformat()
            if today != self.day:
                self.day, self.used = today, 0
            refusal = None
            if self.used >= self.limit:
                refusal = "quota"
            elif company_id is not None and self.in_flight[company_id] >= self.max_concurrent:
                refusal = "concurrency"
            else:
                self.used += 1
                if company_id is not None:
                    self.in_flight[company_id] += 1
            reset = next_midnight(now)
            headers = {
                "X-Rate-Limit-Limit": str(self.limit),
                "X-Rate-Limit-Remaining": str(max(self.limit - self.used, 0)),
                "X-Rate-Limit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if refusal == "quota":
                headers["Retry-After"] = str(int((reset - now).total_seconds()) + 1)
            elif refusal == "concurrency":
                headers["Retry-After"] = "1"
        return refusal, headers

    def release(self, company_id: str | None) -> None:
        """Mark a company's admitted request as finished."""
        if company_id is None:
            return
        with self._lock:
            self.in_flight[company_id] -= 1
            if self.in_flight[company_id] <= 0:
                del self.in_flight[company_id]

    def reset(self) -> None:
        """Forget the day's usage."""
        with self._lock:
            self.used = 0
            self.in_flight.clear()
