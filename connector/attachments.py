"""Attachment metadata of changed customers: parallel per company, within a request budget."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.client import CodatApiError, CodatClient
from connector.files import FileStore
from connector.records import map_attachment
from connector.status import RunLedger

logger = logging.getLogger(__name__)
Json = dict[str, Any]
Task = tuple[str, str]  # (connection id, customer id)

MAX_CONCURRENCY = 10  # Codat answers 429 past 10 concurrent requests for one company
DEFAULT_CONCURRENCY = 8
# Final answers: the listing will not succeed by asking again.
FINAL_STATUSES = frozenset({400, 401, 402, 403, 404, 409})


@dataclass
class AttachmentSync:
    """Lists attachments for customers, deferring what the run's budget cannot afford.

    `backlog` (the source state's) maps company id to tasks left over by earlier runs;
    they are listed before any new task may spend the budget.
    """

    client: CodatClient
    ledger: RunLedger
    connections: Callable[[str], list[str]]  # company id -> accounting connection ids
    backlog: dict[str, list[list[str]]]
    concurrency: int = DEFAULT_CONCURRENCY
    budget: int | None = None
    files: FileStore | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"attachment_concurrency must be between 1 and {MAX_CONCURRENCY} "
                f"(Codat refuses more concurrent requests per company); got {self.concurrency}"
            )
        self._reserved = sum(len(tasks) for tasks in self.backlog.values())

    def for_customers(
        self, company_id: str, customers: Sequence[tuple[datetime | None, str]]
    ) -> Iterator[list[Json]]:
        """Attachments of one company's customers on one page, given as (modifiedDate, id)."""
        connections = self.connections(company_id)
        tasks = [(conn, customer_id) for _, customer_id in customers for conn in connections]
        yield from self._list(company_id, tasks, reserved=self._reserved)

    def backlog_pages(self) -> Iterator[list[Json]]:
        """Attachments left undone by earlier runs, listed first."""
        for company_id in list(self.backlog):
            tasks = [(conn, cust) for conn, cust in self.backlog.pop(company_id)]
            self._reserved -= len(tasks)
            yield from self._list(company_id, tasks, reserved=0)

    def _affordable(self, count: int, reserved: int) -> int:
        if self.budget is None:
            return count
        return max(0, min(count, self.budget - self.client.requests.total - reserved))

    def _defer(self, company_id: str, tasks: list[Task]) -> None:
        if tasks:
            self.backlog.setdefault(company_id, []).extend([list(t) for t in tasks])
            self.ledger.company(company_id).attachments_deferred += len(tasks)

    def _list(self, company_id: str, tasks: list[Task], reserved: int) -> Iterator[list[Json]]:
        run = self.ledger.company(company_id)
        allowed = self._affordable(len(tasks), reserved)
        self._defer(company_id, tasks[allowed:])
        rows: list[Json] = []
        retry_later: list[Task] = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = pool.map(lambda task: self._one(company_id, task), tasks[:allowed])
            for task, outcome in zip(tasks[:allowed], results, strict=True):
                if isinstance(outcome, CodatApiError):
                    if outcome.status in FINAL_STATUSES:
                        run.fail(outcome)
                    else:
                        retry_later.append(task)
                    continue
                rows.extend(outcome)
        self._defer(company_id, retry_later)
        run.attachments_loaded += len(rows)
        if rows:
            yield rows

    def _one(self, company_id: str, task: Task) -> list[Json] | CodatApiError:
        connection_id, customer_id = task
        try:
            found = self.client.list_customer_attachments(company_id, connection_id, customer_id)
            rows = [map_attachment(a, company_id, connection_id, customer_id) for a in found]
            if self.files is not None:
                rows = [self.files.fetch(self.client, row, self.ledger) for row in rows]
            return rows
        except CodatApiError as exc:
            logger.warning("Attachments of customer %r failed: %s", customer_id, exc)
            return exc
