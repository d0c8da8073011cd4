"""Codat's rate limits: the daily quota, concurrency per company, requests per IP."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connector.emulator.wire import LOOPBACK

DEFAULT_DAILY_REQUESTS_PER_COMPANY = 1000
MAX_CONCURRENT_PER_COMPANY = 10
DEFAULT_PER_MINUTE_LIMIT = 1000  # Codat's per-IP limit; the command line's default
DEFAULT_RATE_WINDOW_SECONDS = 60.0
REFUSALS = ("quota", "per_minute", "concurrency")  # the order in which limits are checked


def next_midnight(now: datetime) -> datetime:
    """The next 00:00 UTC, when Codat resets the daily quota."""
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class RateLimiter:
    """Codat's three rate limits: the daily quota, per-company concurrency, and per-IP rate.

    The daily limit is `daily_limit` when set, otherwise 1,000 × (1 + companies), as Codat
    computes it from the number of active companies. The per-IP limit admits at most
    `per_minute_limit` requests from one client address in any `window_seconds` (None or 0:
    off). A refused request uses nothing: no quota, no concurrency slot, no per-IP slot, so a
    client that waits its `Retry-After` is admitted.
    """

    companies: int = 0
    daily_limit: int | None = None
    max_concurrent: int = MAX_CONCURRENT_PER_COMPANY
    per_minute_limit: int | None = None
    window_seconds: float = DEFAULT_RATE_WINDOW_SECONDS
    used: int = 0
    day: str = ""
    in_flight: Counter[str] = field(default_factory=Counter)
    # Client address -> monotonic times of its admitted requests within the window.
    _admitted: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def limit(self) -> int:
        """The daily request limit in force."""
        if self.daily_limit is not None:
            return self.daily_limit
        return DEFAULT_DAILY_REQUESTS_PER_COMPANY * (1 + self.companies)

    def admit(self, company_id: str | None, client_ip: str = LOOPBACK) -> tuple[str | None, dict[str, str]]:
        """Count a request; return a refusal (one of `REFUSALS`, or None) and the rate-limit headers.

        Args:
            company_id: The company the request is about, if any (for the concurrency limit).
            client_ip: The address the request came from (for the per-IP limit).

        Returns:
            The refusal, checked in the order of `REFUSALS`, and the `X-Rate-Limit-*` headers,
            with `Retry-After` in seconds when refused.
        """
        now, clock = datetime.now(UTC), time.monotonic()
        with self._lock:
            today = now.date().isoformat()
            if today != self.day:
                self.day, self.used = today, 0
            refusal, retry_after = self._refusal(company_id, client_ip, now, clock)
            if refusal is None:
                self._take(company_id, client_ip, clock)
            headers = {
                "X-Rate-Limit-Limit": str(self.limit),
                "X-Rate-Limit-Remaining": str(max(self.limit - self.used, 0)),
                "X-Rate-Limit-Reset": next_midnight(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return refusal, headers

    def _refusal(
        self, company_id: str | None, client_ip: str, now: datetime, clock: float
    ) -> tuple[str | None, int | None]:
        """Which limit refuses the request, and the seconds to wait; (None, None) to admit it."""
        if self.used >= self.limit:
            return "quota", int((next_midnight(now) - now).total_seconds()) + 1
        wait = self._per_ip_wait(client_ip, clock)
        if wait is not None:
            return "per_minute", wait
        if company_id is not None and self.in_flight[company_id] >= self.max_concurrent:
            return "concurrency", 1
        return None, None

    def _per_ip_wait(self, client_ip: str, clock: float) -> int | None:
        """Whole seconds (at least 1) until the address has a free slot, or None if it has one."""
        if not self.per_minute_limit:
            return None
        admitted = self._admitted[client_ip]
        while admitted and admitted[0] <= clock - self.window_seconds:
            admitted.popleft()
        excess = len(admitted) - self.per_minute_limit
        if excess < 0:
            return None
        # Once the oldest `excess + 1` requests leave the window, one slot is free.
        return max(1, math.ceil(admitted[excess] + self.window_seconds - clock))

    def _take(self, company_id: str | None, client_ip: str, clock: float) -> None:
        self.used += 1
        if company_id is not None:
            self.in_flight[company_id] += 1
        if self.per_minute_limit:
            self._admitted[client_ip].append(clock)

    def release(self, company_id: str | None) -> None:
        """Mark a company's admitted request as finished."""
        if company_id is None:
            return
        with self._lock:
            self.in_flight[company_id] -= 1
            if self.in_flight[company_id] <= 0:
                del self.in_flight[company_id]

    def reset(self) -> None:
        """Forget the day's usage, requests in flight and the per-IP windows."""
        with self._lock:
            self.used = 0
            self.in_flight.clear()
            self._admitted.clear()
