"""The client's pacing to Codat's three limits: requests a minute, requests in flight, daily quota."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout

from connector.defaults import (
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_BREAKER_SECONDS,
    DEFAULT_BREAKER_SILENCE,
    DEFAULT_IN_FLIGHT_PER_COMPANY,
    DEFAULT_RATE_WINDOW,
    MAX_IN_FLIGHT_PER_COMPANY,
)
from connector.errors import InvalidOption, RunStopped
from connector.settings import ApiLimits

RATE_BURST_DIVISOR = 10  # the token bucket holds a tenth of the per-minute limit
SEND_JITTER = 0.25  # seconds a request may take from leaving its turn to being counted by Codat
# Why a run stops sending requests before its work is done.
API_UNREACHABLE = "API unreachable"
QUOTA_SPENT = "daily quota spent"
INTERRUPTED = "interrupted"  # SIGINT or SIGTERM (`connector.cli`): what was read is loaded
DISK_FULL = "disk full"  # a write of the run found no space (`connector.disk`)


DOT_SEGMENTS = (".", "..")  # RFC 3986 5.2.4: path segments a URL normaliser removes


def escape_dot_segment(segment: str) -> str:
    """`.` or `..` with its dots as `%2E`, which no URL normaliser removes; other segments as they are."""
    return segment.replace(".", "%2E") if segment in DOT_SEGMENTS else segment


def company_of(url: str) -> str | None:
    """The company id in a Codat URL path, if any."""
    parts = urlsplit(url).path.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "companies" else None


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` value (seconds or an HTTP date) as seconds from now, or None if unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class RateGate:
    """A token bucket: at most `limit` requests in any `window` seconds, whichever thread sends them.

    The bucket holds `burst` requests and refills at `(limit - burst) / (window + jitter)` a
    second, so any `window + jitter` seconds hold at most `burst + (limit - burst) = limit`
    requests, and the server counts at most `limit` in any window even when a request reaches
    it up to `jitter` seconds late. The burst lets a short run (one customer page per company)
    go at once instead of a request every 60 ms; a long one runs at (limit - burst) / limit of
    Codat's rate. Each request reserves the next free slot under a lock (threads are served in
    turn) and sleeps until it. A gate starts full: a second run started within a window of the
    first may exceed the limit by the burst, and Codat's `429` with its `Retry-After` covers that.
    """

    def __init__(
        self,
        limit: int,
        window: float = DEFAULT_RATE_WINDOW,
        burst: int | None = None,
        jitter: float = SEND_JITTER,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        burst = default_burst(limit) if burst is None else burst
        if limit < 2 or not window > 0 or not 1 <= burst < limit:
            raise InvalidOption(
                "requests_per_minute must be at least 2, rate_window positive and rate_burst "
                f"between 1 and requests_per_minute - 1; got {limit}, {window}, {burst}"
            )
        self.limit = limit
        self.window = window
        self.burst = burst
        self.interval = (window + jitter) / (limit - burst)
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._due = clock()  # when the bucket is full again (the "theoretical arrival time")

    @property
    def rate(self) -> float:
        """Requests per second in the long run."""
        return 1 / self.interval

    def wait(self) -> float:
        """Block until this request's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            due = max(self._due, now)
            slot = max(now, due - self._tolerance)
            self._due = due + self.interval
        if slot > now:
            self._sleep(slot - now)
        return slot - now


def default_burst(limit: int) -> int:
    """A tenth of the limit (100 of Codat's 1,000 a minute), at least one request."""
    return max(1, limit // RATE_BURST_DIVISOR)


def checked_in_flight(per_company: int) -> int:
    """`attachment_concurrency` if Codat allows that many requests in flight per company.

    Raises:
        InvalidOption: It is outside 1 to 10.
    """
    if not 1 <= per_company <= MAX_IN_FLIGHT_PER_COMPANY:
        raise InvalidOption(
            f"attachment_concurrency must be between 1 and {MAX_IN_FLIGHT_PER_COMPANY} "
            f"(Codat refuses more concurrent requests per company); got {per_company}"
        )
    return per_company


class CompanySlots:
    """At most `per_company` requests in flight for each company."""

    def __init__(self, per_company: int = DEFAULT_IN_FLIGHT_PER_COMPANY) -> None:
        self.per_company = checked_in_flight(per_company)
        self._lock = threading.Lock()
        self._slots: dict[str, threading.Semaphore] = {}

    @contextlib.contextmanager
    def hold(self, company_id: str | None) -> Iterator[None]:
        """Hold one of the company's slots (requests outside a company need none)."""
        if company_id is None:
            yield
            return
        with self._lock:
            slot = self._slots.setdefault(company_id, threading.Semaphore(self.per_company))
        with slot:
            yield


class QuotaWatch:
    """The daily quota as Codat's `X-Rate-Limit-*` headers and final `429` answers tell it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.remaining: int | None = None
        self.reset: str | None = None
        self.spent_for: float | None = None  # the Retry-After of a 429 too long to wait for

    def observe(self, response: Response) -> None:
        """Read one answer's headers; answers arrive out of order, so the lowest count wins."""
        try:
            remaining = int(response.headers["X-Rate-Limit-Remaining"])
        except (KeyError, ValueError):
            return
        reset = response.headers.get("X-Rate-Limit-Reset")
        with self._lock:
            if self.remaining is None or reset != self.reset:
                self.remaining, self.reset = remaining, reset  # first answer, or a new day
            else:
                self.remaining = min(self.remaining, remaining)

    def spent(self, retry_after: float) -> None:
        """Record a `429` whose `Retry-After` is too long to wait for."""
        with self._lock:
            self.spent_for = retry_after if self.spent_for is None else max(self.spent_for, retry_after)


class StopSwitch:
    """The run's one switch that stops new requests; the first reason to trip it is kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: RunStopped | None = None

    def trip(self, kind: str, detail: str, signum: int | None = None) -> None:
        """Stop every request not yet sent (`signum`: the signal that asked for it)."""
        with self._lock:
            if self.reason is None:
                self.reason = RunStopped(kind, detail, signum)

    def check(self) -> None:
        """Raise the reason if the switch is tripped."""
        if self.reason is not None:
            raise RunStopped(self.reason.kind, self.reason.detail, self.reason.signum)


class CircuitBreaker:
    """Opens when the API stops answering: too many failures in a row, or too long a silence.

    A failure is an attempt without an answer (refused, reset, timed out) or with a `5xx`; any
    other answer ends the streak. The breaker opens at a failure when either
    - `failures` attempts in a row failed over at least `seconds` (a dead API, failing fast), or
    - the API has answered nothing, not even a `5xx`, for `silence` seconds (a silent API,
      failing one read timeout at a time). Silence counts from the last answer, or from the
      next attempt if the run asked nothing meanwhile: time the run spends not asking (reading
      a page, loading) is not the API's silence, but a retry's backoff is.
    Counting is shared by every thread of the run, whoever sends the attempts; the time bounds
    keep a blip (a burst of errors across parallel requests, one slow answer) from opening it.
    """

    def __init__(
        self,
        failures: int = DEFAULT_BREAKER_FAILURES,
        seconds: float = DEFAULT_BREAKER_SECONDS,
        silence: float = DEFAULT_BREAKER_SILENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or seconds < 0:
            raise InvalidOption(
                "breaker_failures must be at least 1 and breaker_seconds at least 0; "
                f"got {failures} and {seconds}"
            )
        if not silence > 0:
            raise InvalidOption(f"breaker_silence must be above 0 seconds; got {silence}")
        self.failures = failures
        self.seconds = seconds
        self.silence = silence
        self._clock = clock
        self._lock = threading.Lock()
        self._streak = 0
        self._since = 0.0
        self._waiting = 0  # attempts sent and not answered yet
        self._quiet_since = clock()  # when the current silence began

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """One attempt waiting for its answer (or for its failure)."""
        with self._lock:
            if self._waiting == 0 and self._streak == 0:
                self._quiet_since = self._clock()  # nothing was asked since the last answer
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1

    def answered(self) -> None:
        """An attempt got an answer that is not a server error."""
        with self._lock:
            self._streak = 0
            self._quiet_since = self._clock()

    def failed(self, answered: bool = False) -> str | None:
        """Count a failed attempt (`answered`: a `5xx`); returns why the breaker opens, if it does now."""
        with self._lock:
            now = self._clock()
            if self._streak == 0:
                self._since = now
            self._streak += 1
            if answered:
                self._quiet_since = now
            lasted, silent = now - self._since, now - self._quiet_since
            if self._streak >= self.failures and lasted >= self.seconds:
                return f"{self._streak} attempts in a row failed over {lasted:.0f} s"
            if silent >= self.silence:
                attempts = "1 attempt" if self._streak == 1 else f"{self._streak} attempts"
                return f"no answer for {silent:.0f} s while {attempts} failed"
            return None


class Pacer:
    """Everything one client shares to stay within Codat's limits.

    Args:
        limits: Requests in any window for every company together (none: unpaced), the burst
            the token bucket lets go at once, and requests in flight per company.
        breaker: Stops the run's requests when the API stops answering.
        stop: The run's switch that stops its requests (the command line trips it on a signal);
            a new one by default.
    """

    def __init__(
        self,
        limits: ApiLimits = ApiLimits(),  # noqa: B008 - frozen: one shared default is safe
        breaker: CircuitBreaker | None = None,
        stop: StopSwitch | None = None,
    ) -> None:
        rate = limits.requests_per_minute
        self.gate = RateGate(rate, limits.rate_window, limits.rate_burst) if rate else None
        self.slots = CompanySlots(limits.in_flight_per_company)
        self.quota = QuotaWatch()
        self.breaker = breaker or CircuitBreaker()
        self.stop = stop or StopSwitch()

    def failed(self, detail: str, answered: bool = False) -> None:
        """An attempt got no answer or (`answered`) a `5xx`: the breaker may open and stop the run."""
        opened = self.breaker.failed(answered)
        if opened is not None:
            self.stop.trip(API_UNREACHABLE, f"{opened}; the last: {detail}")

    def quota_spent(self, retry_after: float) -> None:
        """A `429` asked to wait longer than the client waits: no more requests in this run."""
        self.quota.spent(retry_after)
        self.stop.trip(QUOTA_SPENT, f"Retry-After {retry_after:.0f} s")

    @contextlib.contextmanager
    def turn(self, url: str) -> Iterator[None]:
        """Wait for a free slot of the URL's company, then for the next slot of the rate."""
        with self.slots.hold(company_of(url)):
            if self.gate is not None:
                self.gate.wait()
            yield


class PacedAdapter(HTTPAdapter):
    """The transport under dlt's retrying session: every attempt, retries included, is paced.

    Each attempt is counted (`on_attempt`, whether or not it gets an answer) and watched by the
    circuit breaker. `send` raises `RunStopped` instead of sending once the run is stopped, and
    instead of the failure of an attempt after which it is: no backoff before a retry not sent.
    """

    def __init__(self, pacer: Pacer, on_attempt: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pacer = pacer
        self.on_attempt = on_attempt

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        """Send one attempt in its turn, holding the company's slot until its answer's headers.

        Preparing a URL, `requests` removes its dot segments, then decodes `%2E` to `.`: a `.`
        or `..` segment left is an id that `segment` encoded, and goes out as `%2E` again, so that
        neither urllib3 (through a proxy) nor the server removes it.
        """
        head, mark, query = (request.url or "").partition("?")
        parts = [escape_dot_segment(part) for part in head.split("/")]
        url = request.url = "/".join(parts) + mark + query
        self.pacer.stop.check()
        with self.pacer.turn(url):
            self.pacer.stop.check()  # it may have tripped while this attempt waited its turn
            self.on_attempt(url)
            with self.pacer.breaker.attempt():
                try:
                    response = super().send(request, *args, **kwargs)
                except (RequestsConnectionError, Timeout) as exc:
                    self.pacer.failed(type(exc).__name__)
                    self.pacer.stop.check()
                    raise
        if response.status_code >= 500:
            self.pacer.failed(f"HTTP {response.status_code}", answered=True)
            if self.pacer.stop.reason is not None:
                response.close()
                self.pacer.stop.check()
        else:
            self.pacer.breaker.answered()
        return response


class CompanyQueue:
    """Jobs run by up to `workers` threads, at most `per_company` of one company at a time.

    Companies take turns, so one company's long queue does not hold up the others; threads
    start when there is work a company may run and end when there is none.
    """

    def __init__(self, workers: int, per_company: int) -> None:
        self.workers = workers
        self.per_company = per_company
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._turns: deque[str] = deque()  # companies with queued jobs
        self._running: Counter[str] = Counter()
        self._threads = 0

    def put(self, company_id: str, jobs: list[Callable[[], None]]) -> None:
        """Queue jobs of one company after those already queued."""
        with self._lock:
            queue = self._queues.get(company_id)
            if queue is None:
                queue = self._queues[company_id] = deque()
                self._turns.append(company_id)
            queue.extend(jobs)
            runnable = sum(min(len(q), self.per_company - self._running[c]) for c, q in self._queues.items())
            idle = self._threads - sum(self._running.values())
            for _ in range(min(self.workers - self._threads, runnable - idle)):
                self._threads += 1
                threading.Thread(target=self._work, name="codat-attachments", daemon=True).start()

    def _next(self) -> tuple[str, Callable[[], None]] | None:
        for _ in range(len(self._turns)):
            company_id = self._turns[0]
            self._turns.rotate(-1)
            if self._running[company_id] < self.per_company:
                queue = self._queues[company_id]
                job = queue.popleft()
                if not queue:
                    del self._queues[company_id]
                    self._turns.remove(company_id)
                self._running[company_id] += 1
                return company_id, job
        return None

    def _work(self) -> None:
        company_id: str | None = None
        while True:
            with self._lock:
                if company_id is not None:
                    self._running[company_id] -= 1
                picked = self._next()
                if picked is None:
                    self._threads -= 1
                    return
                company_id, job = picked
            job()  # jobs report their own outcome and never raise
