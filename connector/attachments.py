"""Attachment metadata of customers: many companies at once, within Codat's limits.

A run lists the attachments of three kinds of customers, in this order of call on its
requests: those an earlier run left (`backlog_pages`), those that changed (`for_customers`),
and unchanged ones whose turn in the rolling refresh has come (`refresh_pages`,
`connector.refresh`). Listings run on a shared pool of threads, at most `concurrency` per
company, every request paced by the client. Each page of customers becomes a `Batch` whose
rows deferred dlt items collect, so the extract goes on reading customers while listings run.
What a run cannot list of the first two kinds (request budget, daily quota, failures) is left
as watermark spans (`connector.watermarks`) that the next run lists first; the refresh keeps
its own place.

Each listing also gives a row of `customer_attachment_listings`: after the load, the rows of
`customer_attachments` that a later listing of their customer did not return are retired
(`connector.listings`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import dlt
import pendulum

from connector import refresh as rolling
from connector.client import CodatClient
from connector.defaults import (
    CODAT_DAILY_REQUESTS_PER_COMPANY,
    DEFAULT_IN_FLIGHT_PER_COMPANY,
    DEFAULT_PAGE_SIZE,
    DEFAULT_QUOTA_RESERVE,
    DEFAULT_REFRESH_DAYS,
)
from connector.errors import CodatApiError, PagingError, RunStopped
from connector.files import FileStore
from connector.pacing import QUOTA_SPENT, CompanyQueue, checked_in_flight
from connector.paging import ModifiedDateSeekPaginator
from connector.records import LISTINGS_TABLE, Json, map_attachment, parse_codat_datetime
from connector.refresh import STATE_KEY as REFRESH_STATE_KEY
from connector.refresh import Cycle, cycle_days
from connector.status import OK, UNCHANGED, RunReport
from connector.watermarks import (
    LEGACY_STATE_KEY,
    NO_DATE,
    STATE_KEY,
    CustomerPass,
    Key,
    Span,
    customer_key,
    merge_spans,
)

logger = logging.getLogger(__name__)
DeferredListing = Callable[[], Any]

MAX_WORKERS = 32  # threads listing for all companies together
# Final answers: the listing will not succeed by asking again in this run; the company fails.
FINAL_STATUSES = frozenset({400, 401, 402, 403, 404, 409})
# Why a customer is listed, in the order of their call on the run's requests.
LEFT_OVER, CHANGED, REFRESH = "left over", "changed", "refresh"


@dataclass(frozen=True)
class Task:
    """One customer's listing on each of its company's accounting connections."""

    company_id: str
    customer_id: str
    connections: tuple[str, ...]
    key: Key | None  # None for a task of the previous version's backlog
    stream: CustomerPass | None  # None for a refresh task: its pass keeps its place
    reason: str  # LEFT_OVER, CHANGED or REFRESH

    @property
    def backlog(self) -> bool:
        """Left by an earlier run: first call on the request budget."""
        return self.reason == LEFT_OVER


class RefreshPass:
    """One company's refresh in this run: its customers in key order, and which are listed.

    Listings finish out of order; the cycle moves on to the last customer of the longest run of
    listed ones from the start, so a customer not listed (budget, quota, failure) is where the
    next run starts again.
    """

    def __init__(self, cycle: Cycle, total: int | None) -> None:
        self.cycle = cycle
        self.total = total
        self.keys: deque[Key] = deque()
        self.listed: set[Key] = set()
        self.read_all = False  # the cycle's customers were all handed out
        self.stuck = False  # a customer was not listed: the cycle stops before it

    def listed_one(self, key: Key) -> None:
        """A customer of this pass is listed: move the cycle past the listed ones at the front."""
        self.listed.add(key)
        last, count = None, 0
        while self.keys and self.keys[0] in self.listed:
            last = self.keys.popleft()
            self.listed.discard(last)
            count += 1
        if last is not None:
            self.cycle = self.cycle.advanced(last, count)

    @property
    def complete(self) -> bool:
        """Every customer of the cycle is listed."""
        return self.read_all and not self.keys and not self.stuck


class Batch:
    """The rows of one page of tasks, complete once each task is listed or deferred."""

    def __init__(self, size: int) -> None:
        self.rows: list[Json] = []
        self.listings: list[Json] = []  # one per customer and connection listed
        self._left = size
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        if size == 0:
            self._done.set()

    def add(self, rows: list[Json], listings: list[Json], error: BaseException | None = None) -> None:
        """One task's rows and listings (or the bug that ended it)."""
        with self._lock:
            self.rows.extend(rows)
            self.listings.extend(listings)
            self._error = self._error or error
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def wait(self) -> list[Json]:
        """Every task's rows, once all are done; a bug in a task is raised here, in dlt's thread."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self.rows


@dlt.defer
def collect(batch: Batch) -> list[Json] | None:
    """A dlt deferred item: the batch's rows, evaluated in dlt's extract thread pool."""
    return batch.wait() or None


@dlt.defer
def collect_listings(batch: Batch) -> Any:
    """A dlt deferred item: the batch's listings, for `customer_attachment_listings`."""
    batch.wait()
    return dlt.mark.with_table_name(batch.listings, LISTINGS_TABLE) if batch.listings else None


def collectors(batch: Batch) -> Iterator[DeferredListing]:
    """The deferred items of one batch: its attachment rows, then its listings."""
    yield collect(batch)
    yield collect_listings(batch)


class AttachmentSync:
    """Lists attachments for customers, deferring what the run cannot afford to the state.

    Args:
        client: The Codat client (paced; its request counter is the budget's measure).
        report: Each company's outcome in this run.
        connections: Company id to its accounting connection ids.
        state: The source state: spans left by earlier runs are read and rewritten in it.
        page_size: Customers per page when paging a span.
        concurrency: Listings in flight per company, 1 to 10.
        budget: Requests this run may spend; listings beyond it are deferred.
        quota_reserve: Listings stop when the daily quota has this many requests left.
        files: Where to download attachment files, if at all.
    """

    def __init__(
        self,
        client: CodatClient,
        report: RunReport,
        connections: Callable[[str], list[str]],
        state: dict[str, Any],
        page_size: int = DEFAULT_PAGE_SIZE,
        concurrency: int = DEFAULT_IN_FLIGHT_PER_COMPANY,
        budget: int | None = None,
        quota_reserve: int = DEFAULT_QUOTA_RESERVE,
        files: FileStore | None = None,
        refresh_days: float = DEFAULT_REFRESH_DAYS,
        refresh_all: bool = False,
    ) -> None:
        checked_in_flight(concurrency)
        self.client = client
        self.report = report
        self.connections = connections
        self.page_size = page_size
        self.budget = budget
        self.quota_reserve = quota_reserve
        self.files = files
        self._state = state
        self._spans: dict[str, Any] = state.setdefault(STATE_KEY, {})
        self._old: dict[str, list[CustomerPass]] = {
            company_id: [CustomerPass(span) for span in map(Span.from_state, spans or []) if span]
            for company_id, spans in self._spans.items()
        }
        self._new: dict[str, CustomerPass] = {}
        self._reserved = sum(s.source.listings for ss in self._old.values() for s in ss if s.source)
        self._reserved += sum(len(pairs) for pairs in (state.get(LEGACY_STATE_KEY) or {}).values())
        self._in_flight = 0  # requests of started listings not yet counted by the client
        self._waiting = 0  # requests of queued listings that call on the budget before the refresh
        self._stopped: str | None = None
        self.refresh_period = timedelta(days=refresh_days) if refresh_days > 0 else None
        self.refresh_all = refresh_all
        self._cycles: dict[str, Any] = state.setdefault(REFRESH_STATE_KEY, {})
        self._passes: dict[str, RefreshPass] = {}
        self._bounds: dict[str, datetime | None] = {}  # each company's cursor before this run
        self._customers_read = threading.Event()
        self._short: list[tuple[float, str, int]] = []  # companies whose quota share is too small
        self._lock = threading.RLock()
        self._queue = CompanyQueue(MAX_WORKERS, concurrency)

    # -- this run's changed customers, and what earlier runs left -------------------------

    def for_customers(
        self, company_id: str, customers: Sequence[tuple[datetime | None, str]]
    ) -> Iterator[DeferredListing]:
        """Attachments of one company's customers on one page, given as (modifiedDate, id)."""
        connections = tuple(self.connections(company_id))
        if not connections or not customers:
            return
        with self._lock:
            stream = self._new.setdefault(company_id, CustomerPass())
        tasks = [
            Task(company_id, str(cid), connections, customer_key(modified, str(cid)), stream, CHANGED)
            for modified, cid in customers
        ]
        yield from collectors(self._submit(company_id, tasks))

    def backlog_pages(self) -> Iterator[DeferredListing]:
        """Attachments left undone by earlier runs: the old version's tasks, then the spans."""
        legacy: dict[str, list[list[str]]] = self._state.pop(LEGACY_STATE_KEY, None) or {}
        for company_id, pairs in legacy.items():
            by_customer: dict[str, list[str]] = defaultdict(list)
            for connection_id, customer_id in pairs:
                by_customer[customer_id].append(connection_id)
            tasks = [
                Task(company_id, c, tuple(conns), None, None, LEFT_OVER) for c, conns in by_customer.items()
            ]
            yield from collectors(self._submit(company_id, tasks))
        for company_id, streams in self._old.items():
            for stream in streams:
                if self._stopped:
                    self._report_all()
                    return
                yield from self._read_span(company_id, stream)

    # -- spans -----------------------------------------------------------------------------

    def _read_span(self, company_id: str, stream: CustomerPass) -> Iterator[DeferredListing]:
        span = stream.source
        connections = tuple(self.connections(company_id))
        if span is None or not connections:  # not a company of this run: its span waits
            return
        since, until = span.dates()
        paginator = ModifiedDateSeekPaginator(self.page_size, since=since, until=until)
        seen: set[Key] = set()  # customers at the seek bound, which the next page repeats
        try:
            for page in self.client.list_customers(company_id, paginator):
                stamps = page.stamps()
                tasks = []
                for sent, customer_id in stamps:
                    key = customer_key(parse_codat_datetime(sent), customer_id)
                    if key in seen or not span.covers(key):
                        continue
                    seen.add(key)
                    tasks.append(Task(company_id, key[1], connections, key, stream, LEFT_OVER))
                if stamps:
                    bound = customer_key(parse_codat_datetime(stamps[-1][0]), "")
                    seen = {k for k in seen if k[0] == bound[0]}
                    with self._lock:
                        stream.advance(bound, len(tasks))
                        self._save(company_id)
                if tasks:
                    yield from collectors(self._submit(company_id, tasks))
                if self._stopped:
                    return
        except CodatApiError as exc:
            self._span_failed(company_id, exc)
            return
        except PagingError as exc:  # a repeated page, or customers without a readable date
            self._note(company_id, f"attachments left for the next run: {exc}")
            return
        with self._lock:
            stream.finish()
            self._save(company_id)

    def _span_failed(self, company_id: str, exc: CodatApiError) -> None:
        # The span stays as far as it was read, whatever the error: a few bytes of state.
        if self._stopped_by_client() is None:
            logger.warning("Customers left by an earlier run of company %s: %s", company_id, exc)
        self._note(company_id, f"attachments left for the next run: {exc}")

    # -- the rolling refresh (`connector.refresh`) ------------------------------------------

    def customers_started(self, cursors: dict[str, Any]) -> None:
        """Before any customer is read: each company's cursor, where its refresh ends this run.

        Customers past it changed since the previous run and are listed as such.
        """
        for company_id, saved in cursors.items():
            cursor = saved.get("cursor") if isinstance(saved, dict) else None
            self._bounds[company_id] = parse_codat_datetime(cursor)

    def customers_read(self) -> None:
        """Every company's customers are read: the refresh may spend what the run has left."""
        self._customers_read.set()

    def refresh_pages(self) -> Iterator[DeferredListing | None]:
        """Attachments of unchanged customers whose turn has come, once the customers are read.

        Yields None (dlt's "nothing yet") while the customers are read, so that this run's
        changed customers are queued before any refresh listing calls on the requests left.
        """
        while not self._customers_read.is_set():
            yield None
        if self.refresh_period is None:
            return
        now = rolling.now()
        companies = [c for c in self.report.companies.values() if self.connections(c.company_id)]
        share = CODAT_DAILY_REQUESTS_PER_COMPANY * (1 + len(companies)) / max(len(companies), 1)
        for outcome in companies:
            if self._stopped:
                break
            if outcome.status not in (OK, UNCHANGED):  # failed, not ready or cut short: next run
                continue
            yield from self._refresh(outcome.company_id, now, share)
        self._warn_short(share)

    def _refresh(self, company_id: str, now: datetime, share: float) -> Iterator[DeferredListing]:
        outcome = self.report.company(company_id)
        if outcome.first_load or company_id not in self._bounds:
            # Every customer was listed as new just now: that is the cycle's first pass.
            self._set_cycle(company_id, Cycle(now, total=outcome.customers_loaded))
            return
        assert self.refresh_period is not None
        cycle = Cycle.from_state(self._cycles.get(company_id)) or Cycle(now)
        if self.refresh_all and not cycle.forced:
            cycle = cycle.restarted(now, cycle.total, forced=True)
        connections = tuple(self.connections(company_id))
        due = cycle.due(now, self.refresh_period)
        refresh = self._passes[company_id] = RefreshPass(cycle, cycle.total)
        self._report_cycle(company_id)
        if due == 0:
            return
        bound = self._bounds[company_id]
        since = cycle.after[0] if cycle.after is not None and cycle.after[0] != NO_DATE else None
        until = None if bound is None else bound + timedelta(microseconds=1)
        paginator = ModifiedDateSeekPaginator(
            self.page_size if due is None else min(self.page_size, due), since=since, until=until
        )
        seen: set[Key] = set()  # customers at the seek bound, which the next page repeats
        behind: set[Key] = set()  # customers the seek's first date holds at or before `after`
        found: int | None = None  # Codat's count of the customers from `after`'s date on
        handed = 0  # customers handed out to list
        try:
            for page in self.client.list_customers(company_id, paginator):
                stamps = page.stamps()
                if found is None:
                    found = page.total or len(stamps)
                fresh: list[Key] = []
                for sent, customer_id in stamps:
                    key = customer_key(parse_codat_datetime(sent), customer_id)
                    if cycle.after is not None and key <= cycle.after:
                        behind.add(key)
                    elif key not in seen:
                        seen.add(key)
                        fresh.append(key)
                refresh.total = cycle.done + found - len(behind)
                due = cycle.due(now, self.refresh_period, refresh.total)
                if due is not None:
                    fresh = fresh[: max(due - handed, 0)]
                tasks = [Task(company_id, key[1], connections, key, None, REFRESH) for key in fresh]
                if stamps:
                    bound_key = customer_key(parse_codat_datetime(stamps[-1][0]), "")
                    seen = {k for k in seen if k[0] == bound_key[0]}
                with self._lock:
                    refresh.keys.extend(t.key for t in tasks if t.key is not None)
                handed += len(tasks)
                if tasks:
                    yield from collectors(self._submit(company_id, tasks))
                if self._stopped or (due is not None and handed >= due):
                    break
            else:
                with self._lock:
                    refresh.read_all = True
            if found is not None and refresh.total is not None:
                self._check_share(company_id, refresh.total, len(connections), share)
        except CodatApiError as exc:
            if self._stopped_by_client() is None:
                logger.warning("Attachment refresh of company %s: %s", company_id, exc)
            self._note(company_id, f"attachment refresh goes on next run: {exc}")
        except PagingError as exc:
            self._note(company_id, f"attachment refresh goes on next run: {exc}")
        with self._lock:
            self._save_cycle(company_id)

    def _check_share(self, company_id: str, total: int, connections: int, share: float) -> None:
        """Note a company whose share of the daily quota cannot carry its refresh cycle."""
        assert self.refresh_period is not None
        period = self.refresh_period.total_seconds() / 86400
        days = cycle_days(total, connections, share)
        if days > period:
            self._short.append((days, company_id, total))
            self._note(
                company_id, f"attachment refresh: the company's quota share carries a {days:.0f}-day cycle"
            )

    def _warn_short(self, share: float) -> None:
        if not self._short:
            return
        assert self.refresh_period is not None
        days, company_id, total = max(self._short)
        logger.warning(
            "Attachment refresh: %d company(ies) cannot be listed again every %g days within their "
            "share of Codat's daily quota (about %d requests a day each); company %s (%d customers) "
            "carries a %.0f-day cycle at best. The refresh goes on as far as the quota allows.",
            len(self._short),
            self.refresh_period.total_seconds() / 86400,
            share,
            company_id,
            total,
            days,
        )

    def _set_cycle(self, company_id: str, cycle: Cycle) -> None:
        with self._lock:
            self._cycles[company_id] = cycle.to_state()
            self._passes[company_id] = RefreshPass(cycle, cycle.total)
            self._report_cycle(company_id)

    def _save_cycle(self, company_id: str) -> None:
        """Rewrite the company's cycle from its pass (lock held); a finished cycle starts again."""
        refresh = self._passes[company_id]
        cycle = refresh.cycle
        if refresh.total is not None and cycle.total != refresh.total:
            cycle = replace(cycle, total=refresh.total)
        if refresh.complete:
            cycle = cycle.restarted(rolling.now(), cycle.done)
        self._cycles[company_id] = cycle.to_state()
        self._report_cycle(company_id, cycle)

    def _report_cycle(self, company_id: str, cycle: Cycle | None = None) -> None:
        cycle = cycle or self._passes[company_id].cycle
        outcome = self.report.company(company_id)
        outcome.refresh_cycle_started = cycle.started
        outcome.refresh_done = cycle.done
        outcome.refresh_total = cycle.total
        if self.refresh_period is not None and cycle.total is not None:
            due = cycle.due(rolling.now(), self.refresh_period)
            outcome.refresh_behind = cycle.total - cycle.done if due is None else due

    # -- running tasks ---------------------------------------------------------------------

    def _submit(self, company_id: str, tasks: list[Task]) -> Batch:
        batch = Batch(len(tasks))
        if self._stopped:  # nothing will start: no thread needed to say so
            for task in tasks:
                self._not_started(task, self._stopped)
                batch.add([], [])
            return batch
        with self._lock:
            self._waiting += sum(len(t.connections) for t in tasks if t.reason != REFRESH)
        self._queue.put(company_id, [self._job(task, batch) for task in tasks])
        return batch

    def _job(self, task: Task, batch: Batch) -> Callable[[], None]:
        def run() -> None:
            try:
                batch.add(*self._run(task))
            except Exception as exc:  # noqa: BLE001 - a bug: raised by the collector, not lost
                batch.add([], [], exc)

        return run

    def _run(self, task: Task) -> tuple[list[Json], list[Json]]:
        reason = self._admit(task)
        if reason is not None:
            self._not_started(task, reason)
            return [], []
        rows: list[Json] = []
        listings: list[Json] = []
        try:
            for connection_id in task.connections:
                found = self.client.list_customer_attachments(
                    task.company_id, connection_id, task.customer_id
                )
                listed_at = pendulum.now("UTC")
                mapped = [
                    map_attachment(a, task.company_id, connection_id, task.customer_id, listed_at)
                    for a in found
                ]
                if self.files is not None:
                    mapped = [self.files.fetch(self.client, row, self.report) for row in mapped]
                rows.extend(mapped)
                listings.append(
                    {
                        "company_id": task.company_id,
                        "connection_id": connection_id,
                        "customer_id": task.customer_id,
                        "listed_at": listed_at,
                        "attachments": len(found),
                        "reason": task.reason,
                    }
                )
        except (CodatApiError, RunStopped) as exc:  # RunStopped: the files folder is full
            self._failed(task, exc)
        else:
            self._done(task, rows)
        finally:
            with self._lock:
                self._in_flight -= len(task.connections)
        return rows, listings

    def _admit(self, task: Task) -> str | None:
        """Why the task may not start now (it is then deferred), or None and it is counted."""
        cost = len(task.connections)
        with self._lock:
            if task.reason != REFRESH:
                self._waiting -= cost
            if self._stopped:
                return self._stopped
            if (stopped := self._stopped_by_client()) is not None:
                return stopped
            # What listings of an earlier call on the requests still need, queued or not started.
            ahead = 0 if task.backlog else self._reserved
            if task.reason == REFRESH:
                ahead += self._waiting
            remaining = self.client.pacer.quota.remaining
            if remaining is not None and remaining - self._in_flight - cost < self.quota_reserve:
                self.report.quota_low = RunStopped(
                    QUOTA_SPENT, f"{remaining} requests left, {self.quota_reserve} kept for customer pages"
                )
                return self._stop(str(self.report.quota_low))
            refresh_short = (
                remaining is not None and remaining - self._in_flight - cost - ahead < self.quota_reserve
            )
            if task.reason == REFRESH and refresh_short:
                return "daily quota kept for changed customers' listings"
            if self.budget is not None:
                spent = self.client.requests.total + self._in_flight + cost
                if spent > self.budget:
                    return self._stop(f"request budget of {self.budget} spent")
                if spent + ahead > self.budget:
                    return f"request budget of {self.budget} kept for listings that come first"
            if task.backlog:
                self._reserved = max(0, self._reserved - cost)
            self._in_flight += cost
            return None

    def _stopped_by_client(self) -> str | None:
        """Why no more listings start, if the client stopped (API unreachable, quota spent)."""
        stopped = self.client.stop_cause
        return None if stopped is None else self._stop(str(stopped))

    def _stop(self, reason: str) -> str:
        with self._lock:
            if self._stopped is None:
                logger.warning("No more attachment listings in this run: %s", reason)
                self._stopped = reason
            return self._stopped

    def _failed(self, task: Task, exc: CodatApiError | RunStopped) -> None:
        if (stopped := self._stopped_by_client()) is not None:
            self._not_started(task, stopped)
            return
        logger.warning("Attachments of customer %r failed: %s", task.customer_id, exc)
        if isinstance(exc, CodatApiError) and exc.status in FINAL_STATUSES:  # asking again will not help
            with self._lock:
                self.report.company(task.company_id).fail(exc)
        # A changed customer's cursor has moved on: only its deferral brings the listing back.
        self._not_started(task, f"listing failed, retried next run: {exc}")

    def _done(self, task: Task, rows: list[Json]) -> None:
        with self._lock:
            outcome = self.report.company(task.company_id)
            outcome.attachments_loaded += len(rows)
            outcome.attachment_listings += len(task.connections)
            if task.reason == REFRESH and task.key is not None:
                outcome.attachments_refreshed += 1
                self._passes[task.company_id].listed_one(task.key)
                self._save_cycle(task.company_id)
            elif task.stream is not None and task.key is not None:
                task.stream.done(task.key)
                if task.stream.pending:
                    self._save(task.company_id)

    def _not_started(self, task: Task, reason: str) -> None:
        """A task not listed: a refresh stops before it, any other is deferred."""
        if task.reason != REFRESH:
            self._defer(task, reason)
            return
        with self._lock:
            self._passes[task.company_id].stuck = True
            self._save_cycle(task.company_id)

    def _defer(self, task: Task, reason: str) -> None:
        with self._lock:
            if task.stream is not None and task.key is not None:
                task.stream.defer(task.key, reason)
            else:
                pairs = self._state.setdefault(LEGACY_STATE_KEY, {}).setdefault(task.company_id, [])
                pairs.extend([c, task.customer_id] for c in task.connections)
            self._save(task.company_id, reason)

    # -- state and reports -----------------------------------------------------------------

    def _save(self, company_id: str, reason: str | None = None) -> None:
        """Rewrite the company's spans in the state from what its passes leave (lock held)."""
        streams = [
            *self._old.get(company_id, []),
            *([self._new[company_id]] if company_id in self._new else []),
        ]
        spans = merge_spans(span for stream in streams for span in stream.spans())
        if spans:
            self._spans[company_id] = [span.to_state() for span in spans]
        else:
            self._spans.pop(company_id, None)
        legacy = self._state.get(LEGACY_STATE_KEY, {}).get(company_id, [])
        outcome = self.report.company(company_id)
        outcome.attachments_deferred = sum(span.listings for span in spans) + len(legacy)
        if outcome.attachments_deferred:
            first = spans[0].reason if spans else None
            outcome.deferral_reason = outcome.deferral_reason or reason or self._stopped or first
        else:
            outcome.deferral_reason = None

    def _report_all(self) -> None:
        ours = [company_id for company_id in self._old if self.connections(company_id)]
        with self._lock:
            for company_id in ours:
                self._save(company_id)

    def _note(self, company_id: str, note: str) -> None:
        with self._lock:
            self.report.company(company_id).notes.append(note)
