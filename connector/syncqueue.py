"""The durable queue of companies to sync that Codat's webhooks fill (`connector.webhooks`).

A SQLite file (by default beside the pipeline's lock): a webhook is stored, with the companies
it names, in one transaction before the receiver answers 2xx, so a receiver killed after that
loses nothing and Codat's redelivery of it (same `webhook-id`) queues nothing twice. A company
stays queued until a sync has loaded it: the worker claims the queued companies with their
version, and marks them done after the load only if no event came for them meanwhile (a newer
event leaves the company queued for the next sync). A failed company stays queued with its error
and waits a little longer after each failure.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from connector.lock import lock_path

# Codat retries a failed delivery for about a day: its id is remembered for two.
DELIVERY_MEMORY_SECONDS = 2 * 24 * 3600
# A company whose events keep coming is synced anyway once it has waited this long.
MAX_WAIT_SECONDS = 300.0
# A failed company waits this long times 2**(failures - 1) before its next attempt, at most an hour.
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 3600.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    webhook_id TEXT PRIMARY KEY, received_at REAL NOT NULL, event_type TEXT, companies INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queued (
    company_id TEXT PRIMARY KEY, first_event REAL NOT NULL, last_event REAL NOT NULL,
    events INTEGER NOT NULL, version INTEGER NOT NULL, failures INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, last_error TEXT
);
"""


@dataclass(frozen=True)
class Queued:
    """A company waiting for a sync, as the queue holds it."""

    company_id: str
    first_event: float
    last_event: float
    events: int
    version: int
    failures: int
    last_error: str | None


def queue_path(pipelines_dir: str | Path, pipeline_name: str) -> Path:
    """Where a pipeline's queue is kept by default: beside its lock, outside dlt's working folder."""
    return lock_path(str(pipelines_dir), pipeline_name).with_suffix(".queue.sqlite")


class SyncQueue:
    """Companies to sync, kept in a SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # stored means on disk before the 2xx
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record(
        self, webhook_id: str, event_type: str, company_ids: list[str], now: float | None = None
    ) -> bool:
        """Store a delivery and queue its companies; False (nothing queued) for one seen before."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("DELETE FROM deliveries WHERE received_at < ?", (now - DELIVERY_MEMORY_SECONDS,))
            stored = db.execute(
                "INSERT INTO deliveries VALUES (?, ?, ?, ?) ON CONFLICT (webhook_id) DO NOTHING",
                (webhook_id, now, event_type, len(company_ids)),
            )
            if stored.rowcount == 0:
                return False
            for company_id in company_ids:
                db.execute(
                    "INSERT INTO queued (company_id, first_event, last_event, events, version) "
                    "VALUES (?, ?, ?, 1, 1) ON CONFLICT (company_id) DO UPDATE SET "
                    "last_event = excluded.last_event, events = events + 1, version = version + 1",
                    (company_id, now, now),
                )
        return True

    def due(self, debounce: float, now: float | None = None) -> dict[str, int]:
        """The companies to sync now, with their versions: quiet for `debounce` seconds, or waiting long.

        A company whose last event is less than `debounce` seconds old waits for more (events for one
        company within the window make one sync), unless its first event is `MAX_WAIT_SECONDS` old.
        """
        now = time.time() if now is None else now
        with self._connection() as db:
            rows = db.execute(
                "SELECT company_id, version FROM queued WHERE not_before <= ? "
                "AND (last_event <= ? OR first_event <= ?) ORDER BY first_event",
                (now, now - debounce, now - MAX_WAIT_SECONDS),
            ).fetchall()
        return {company_id: version for company_id, version in rows}

    def done(self, claims: dict[str, int]) -> list[str]:
        """Take companies off the queue after their load (not one with a newer event); returns those taken."""
        taken = []
        with self._transaction() as db:
            for company_id, version in claims.items():
                gone = db.execute(
                    "DELETE FROM queued WHERE company_id = ? AND version = ?", (company_id, version)
                )
                if gone.rowcount:
                    taken.append(company_id)
        return taken

    def failed(self, company_ids: list[str], error: str, now: float | None = None) -> None:
        """Keep companies queued with their error, each waiting longer after each failure."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            for company_id in company_ids:
                db.execute(
                    "UPDATE queued SET failures = failures + 1, last_error = ?, not_before = ? + "
                    "MIN(?, ? * (1 << MIN(failures, 20))) WHERE company_id = ?",
                    (error, now, RETRY_MAX_SECONDS, RETRY_BASE_SECONDS, company_id),
                )

    def settle(self, claims: dict[str, int], errors: dict[str, str]) -> list[str]:
        """After a run for the claimed companies: those with an error stay (`failed`), the rest are done.

        Returns the companies taken off the queue.
        """
        for error in sorted(set(errors.values())):
            self.failed([c for c, e in errors.items() if e == error], error)
        return self.done({c: v for c, v in claims.items() if c not in errors})

    def pending(self) -> list[Queued]:
        """Every queued company, oldest first."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT company_id, first_event, last_event, events, version, failures, last_error "
                "FROM queued ORDER BY first_event"
            ).fetchall()
        return [Queued(*row) for row in rows]

    def deliveries(self) -> int:
        """Deliveries remembered (to refuse a redelivery)."""
        with self._connection() as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        return int(row[0])
