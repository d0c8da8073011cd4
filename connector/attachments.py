"""Attachment metadata of changed customers: many companies at once, within Codat's limits.

Listings run on a shared pool of threads, at most `concurrency` per company, every request
paced by the client. Each page of customers becomes a `Batch` whose rows a deferred dlt
item collects, so the extract goes on reading customers while listings run. What a run
cannot list (request budget, daily quota, failures) is left as watermark spans
(`connector.watermarks`) that the next run lists first.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dlt

from connector.client import CodatClient
from connector.defaults import DEFAULT_IN_FLIGHT_PER_COMPANY, DEFAULT_PAGE_SIZE, DEFAULT_QUOTA_RESERVE
from connector.errors import CodatApiError, PagingError, RunStopped
from connector.files import FileStore
from connector.pacing import QUOTA_SPENT, CompanyQueue, checked_in_flight
from connector.paging import ModifiedDateSeekPaginator
from connector.records import Json, map_attachment, parse_codat_datetime
from connector.status import RunReport
from connector.watermarks import LEGACY_STATE_KEY, STATE_KEY, Key, Span, Stream, customer_key, merge_spans

logger = logging.getLogger(__name__)
Collector = Callable[[], list[Json] | None]

MAX_WORKERS = 32  # threads listing for all companies together
# Final answers: the listing will not succeed by asking again in this run; the company fails.
FINAL_STATUSES = frozenset({400, 401, 402, 403, 404, 409})


@dataclass(frozen=True)
class Task:
    """One customer's listing on each of its company's accounting connections."""

    company_id: str
    customer_id: str
    connections: tuple[str, ...]
    key: Key | None  # None for a task of the previous version's backlog
    stream: Stream | None
    backlog: bool  # left by an earlier run: first call on the request budget


class Batch:
    """The rows of one page of tasks, complete once each task is listed or deferred."""

    def __init__(self, size: int) -> None:
        self.rows: list[Json] = []
        self._left = size
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        if size == 0:
            self._done.set()

    def add(self, rows: list[Json], error: BaseException | None = None) -> None:
        """One task's rows (or the bug that ended it)."""
        with self._lock:
            self.rows.extend(rows)
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
        self._old: dict[str, list[Stream]] = {
            company_id: [Stream(span) for span in map(Span.from_state, spans or []) if span]
            for company_id, spans in self._spans.items()
        }
        self._new: dict[str, Stream] = {}
        self._reserved = sum(s.source.listings for ss in self._old.values() for s in ss if s.source)
        self._reserved += sum(len(pairs) for pairs in (state.get(LEGACY_STATE_KEY) or {}).values())
        self._in_flight = 0  # requests of started listings not yet counted by the client
        self._stopped: str | None = None
        self._lock = threading.RLock()
        self._queue = CompanyQueue(MAX_WORKERS, concurrency)

    @property
    def stopped(self) -> str | None:
        """Why no more listings start in this run, if they do not."""
        return self._stopped

    # -- the two entry points: this run's changed customers, and what earlier runs left ----

    def for_customers(
        self, company_id: str, customers: Sequence[tuple[datetime | None, str]]
    ) -> Iterator[Collector]:
        """Attachments of one company's customers on one page, given as (modifiedDate, id)."""
        connections = tuple(self.connections(company_id))
        if not connections or not customers:
            return
        with self._lock:
            stream = self._new.setdefault(company_id, Stream())
        tasks = [
            Task(company_id, str(cid), connections, customer_key(modified, str(cid)), stream, False)
            for modified, cid in customers
        ]
        yield collect(self._submit(company_id, tasks))

    def backlog_pages(self) -> Iterator[Collector]:
        """Attachments left undone by earlier runs: the old version's tasks, then the spans."""
        legacy: dict[str, list[list[str]]] = self._state.pop(LEGACY_STATE_KEY, None) or {}
        for company_id, pairs in legacy.items():
            by_customer: dict[str, list[str]] = defaultdict(list)
            for connection_id, customer_id in pairs:
                by_customer[customer_id].append(connection_id)
            tasks = [Task(company_id, c, tuple(conns), None, None, True) for c, conns in by_customer.items()]
            yield collect(self._submit(company_id, tasks))
        for company_id, streams in self._old.items():
            for stream in streams:
                if self._stopped:
                    self._report_all()
                    return
                yield from self._read_span(company_id, stream)

    # -- spans -----------------------------------------------------------------------------

    def _read_span(self, company_id: str, stream: Stream) -> Iterator[Collector]:
        span = stream.source
        connections = tuple(self.connections(company_id))
        if span is None or not connections:  # not a company of this run: its span waits
            return
        since, until = span.dates()
        paginator = ModifiedDateSeekPaginator(self.page_size, since=since, until=until)
        seen: set[Key] = set()  # customers at the seek bound, which the next page repeats
        try:
            for page in self.client.list_customers(company_id, paginator):
                records = page.get("results") or []
                tasks = []
                for record in records:
                    modified = parse_codat_datetime(record.get("modifiedDate"))
                    key = customer_key(modified, str(record.get("id")))
                    if key in seen or not span.covers(key):
                        continue
                    seen.add(key)
                    tasks.append(Task(company_id, key[1], connections, key, stream, True))
                if records:
                    bound = customer_key(parse_codat_datetime(records[-1].get("modifiedDate")), "")
                    seen = {k for k in seen if k[0] == bound[0]}
                    with self._lock:
                        stream.advance(bound, len(tasks))
                        self._save(company_id)
                if tasks:
                    yield collect(self._submit(company_id, tasks))
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

    # -- running tasks ---------------------------------------------------------------------

    def _submit(self, company_id: str, tasks: list[Task]) -> Batch:
        batch = Batch(len(tasks))
        if self._stopped:  # nothing will start: no thread needed to say so
            for task in tasks:
                self._defer(task, self._stopped)
                batch.add([])
            return batch
        self._queue.put(company_id, [self._job(task, batch) for task in tasks])
        return batch

    def _job(self, task: Task, batch: Batch) -> Callable[[], None]:
        def run() -> None:
            try:
                batch.add(self._run(task))
            except Exception as exc:  # noqa: BLE001 - a bug: raised by the collector, not lost
                batch.add([], exc)

        return run

    def _run(self, task: Task) -> list[Json]:
        reason = self._admit(task)
        if reason is not None:
            self._defer(task, reason)
            return []
        rows: list[Json] = []
        try:
            for connection_id in task.connections:
                found = self.client.list_customer_attachments(
                    task.company_id, connection_id, task.customer_id
                )
                mapped = [map_attachment(a, task.company_id, connection_id, task.customer_id) for a in found]
                if self.files is not None:
                    mapped = [self.files.fetch(self.client, row, self.report) for row in mapped]
                rows.extend(mapped)
        except (CodatApiError, RunStopped) as exc:  # RunStopped: the files folder is full
            self._failed(task, exc)
        else:
            self._done(task, rows)
        finally:
            with self._lock:
                self._in_flight -= len(task.connections)
        return rows

    def _admit(self, task: Task) -> str | None:
        """Why the task may not start now (it is then deferred), or None and it is counted."""
        cost = len(task.connections)
        with self._lock:
            if self._stopped:
                return self._stopped
            if (stopped := self._stopped_by_client()) is not None:
                return stopped
            remaining = self.client.pacer.quota.remaining
            if remaining is not None and remaining - self._in_flight - cost < self.quota_reserve:
                self.report.quota_low = RunStopped(
                    QUOTA_SPENT, f"{remaining} requests left, {self.quota_reserve} kept for customer pages"
                )
                return self._stop(str(self.report.quota_low))
            if self.budget is not None:
                spent = self.client.requests.total + self._in_flight + cost
                if spent > self.budget:
                    return self._stop(f"request budget of {self.budget} spent")
                if not task.backlog and spent + self._reserved > self.budget:
                    return f"request budget of {self.budget} kept for listings left by earlier runs"
            if task.backlog:
                self._reserved = max(0, self._reserved - cost)
            self._in_flight += cost
            return None

    def _stopped_by_client(self) -> str | None:
        """Why no more listings start, if the client stopped (API unreachable, quota spent)."""
        stopped = self.client.stopped
        return None if stopped is None else self._stop(str(stopped))

    def _stop(self, reason: str) -> str:
        with self._lock:
            if self._stopped is None:
                logger.warning("No more attachment listings in this run: %s", reason)
                self._stopped = reason
            return self._stopped

    def _failed(self, task: Task, exc: CodatApiError | RunStopped) -> None:
        if (stopped := self._stopped_by_client()) is not None:
            self._defer(task, stopped)
            return
        logger.warning("Attachments of customer %r failed: %s", task.customer_id, exc)
        if isinstance(exc, CodatApiError) and exc.status in FINAL_STATUSES:  # asking again will not help
            with self._lock:
                self.report.company(task.company_id).fail(exc)
        # The customer's cursor has moved on: only its deferral brings the listing back.
        self._defer(task, f"listing failed, retried next run: {exc}")

    def _done(self, task: Task, rows: list[Json]) -> None:
        with self._lock:
            outcome = self.report.company(task.company_id)
            outcome.attachments_loaded += len(rows)
            outcome.attachment_listings += len(task.connections)
            if task.stream is not None and task.key is not None:
                task.stream.done(task.key)
                if task.stream.pending:
                    self._save(task.company_id)

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
