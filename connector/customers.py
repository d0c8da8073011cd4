"""Incremental sync of one company's customers, with its own cursor in the source state."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connector.batches import CustomerPage, PageBuilder
from connector.bodies import CustomerBody
from connector.client import BodyGate, CodatClient
from connector.defaults import PAGES_HELD_AT_ONCE
from connector.errors import CodatApiError, PagingError
from connector.paging import ModifiedDateSeekPaginator
from connector.records import ExtractionClock, Json, format_codat_datetime, parse_codat_datetime, record_hash
from connector.status import SKIPPED, UNCHANGED, CompanyReport

logger = logging.getLogger(__name__)


class BoundaryDeduper:
    """Drops records already loaded, and tracks the cursor the next run starts from.

    The cursor is the latest `modifiedDate` seen; the boundary is the digests of the records
    at exactly that instant. A later run asks for `modifiedDate>=cursor`, so it gets those
    records again: the ones whose digest matches are unchanged and dropped, while one that
    changed without its date moving (or arrived at the same instant) still loads. Within a
    run, records come again only at the cursor (the seek's `>=` bound, a tie group paged
    twice), so only records at the cursor are hashed: a page costs a digest or two.
    """

    def __init__(self, cursor: datetime | None, boundary: list[str]) -> None:
        self.cursor = cursor
        self.boundary = set(boundary)
        self.read_any = False  # whether a page with records has been read

    def fresh(self, page: CustomerBody, modified: pa.Array) -> tuple[CustomerBody, pa.Array]:
        """The records of a page (and their `modifiedDate`s, an Arrow timestamp array) not loaded before.

        Only records at the cursor are compared, and only the page's latest instant is hashed for
        the next boundary: the dates are compared in Arrow, not record by record in Python.
        """
        self.read_any = self.read_any or len(page) > 0
        dropped: set[int] = set()
        if self.cursor is not None:
            for index in _indices_at(modified, self.cursor):
                digest = record_hash(page.record(index))
                if digest in self.boundary:
                    dropped.add(index)
                else:
                    self.boundary.add(digest)
        top = pc.max(modified).as_py() if len(modified) else None
        if top is not None and (self.cursor is None or top > self.cursor):
            self.cursor = top
            self.boundary = {record_hash(page.record(i)) for i in _indices_at(modified, top)}
        if not dropped:
            return page, modified
        keep = [i not in dropped for i in range(len(page))]
        return page.select(keep), modified.filter(pa.array(keep))


def _indices_at(modified: pa.Array, instant: datetime) -> list[int]:
    """The positions of `modified` at exactly `instant`."""
    same = pc.fill_null(pc.equal(modified, pa.scalar(instant, modified.type)), False)
    return list(pc.indices_nonzero(same).to_pylist())


@dataclass
class CompanyCursor:
    """A company's incremental state, as kept in the pipeline state."""

    cursor: str | None = None
    boundary: tuple[str, ...] = ()
    last_sync: str | None = None

    @classmethod
    def from_state(cls, value: Any) -> CompanyCursor:
        """Read it back from the state dict (absent: a first run)."""
        if not isinstance(value, dict):
            return cls()
        return cls(value.get("cursor"), tuple(value.get("boundary") or ()), value.get("last_sync"))

    def to_state(self) -> Json:
        """The state dict form."""
        return {"cursor": self.cursor, "boundary": list(self.boundary), "last_sync": self.last_sync}


def accounting_connection_ids(company: Json) -> list[str]:
    """The ids of the company's connections that carry accounting data (and so customers)."""
    return [c["id"] for c in company.get("dataConnections") or [] if c.get("sourceType") == "Accounting"]


@dataclass
class CustomerSync:
    """Pages each company's changed customers and moves its cursor when it is done."""

    client: CodatClient
    cursors: dict[str, Any]  # the source state's per-company cursors, updated in place
    page_size: int
    load_id: str
    since: datetime | None = None
    until: datetime | None = None
    clock: ExtractionClock = field(default_factory=ExtractionClock)
    builder: PageBuilder = field(default_factory=PageBuilder)
    # Pages held at once between their answer and their Arrow tables, whichever company's.
    gate: BodyGate = field(default_factory=lambda: BodyGate(PAGES_HELD_AT_ONCE))

    @property
    def backfill(self) -> bool:
        """A `--since/--until` window: cursors are neither used nor moved."""
        return self.since is not None or self.until is not None

    def pages(self, company: Json, outcome: CompanyReport) -> Iterator[CustomerPage]:
        """The company's changed customers as Arrow tables, a page at a time.

        A failure is recorded on `outcome` and ends this company only; its cursor moves to what
        was read before it, so the next run reads on from there.
        """
        company_id = str(company["id"])
        if not accounting_connection_ids(company):
            outcome.status = SKIPPED
            outcome.notes.append("no accounting connection")
            return
        saved = CompanyCursor.from_state(self.cursors.get(company_id))
        last_sync = company.get("lastSync")
        if not self.backfill and saved.last_sync is not None and saved.last_sync == last_sync:
            outcome.status = UNCHANGED
            return
        start = self.since if self.backfill else parse_codat_datetime(saved.cursor)
        outcome.first_load = not self.backfill and start is None
        paginator = ModifiedDateSeekPaginator(self.page_size, since=start, until=self.until)
        deduper = BoundaryDeduper(None if self.backfill else start, list(saved.boundary))
        try:
            for body in self.client.list_customers(company_id, paginator, gate=self.gate):
                seen_at = self.clock.now()
                fresh, dates = deduper.fresh(body, body.modified())
                page = None
                if len(fresh):
                    page = fresh.build(self.builder, company_id, seen_at, self.load_id, dates)
                # The records are let go of now, not when the next answer replaces them (dlt's
                # paginator holds the body until then); the permit goes once the page is handed
                # on (a reader waits for room in its queue holding it).
                body.release()
                fresh.release()
                if page is None:
                    self.gate.leave()
                    continue
                outcome.customers_loaded += page.customers.num_rows
                outcome.customers_deleted += page.deleted
                yield page
                self.gate.leave()
        except CodatApiError as exc:
            if self.client.stop_cause is not None:
                outcome.record_stop(self.client.stop_cause)
            elif exc.status == 409:
                logger.info("Customers of company %s are not ready: %s", company_id, exc.error)
                outcome.not_ready(exc)
            else:
                logger.warning("Customers of company %s failed: %s", company_id, exc)
                outcome.fail(exc)
            self._save_progress(company_id, deduper, saved)
            return
        except PagingError as exc:
            logger.warning("Customers of company %s failed: %s", company_id, exc)
            outcome.fail(exc)
            self._save_progress(company_id, deduper, saved)
            return
        finally:
            self.gate.leave()  # a page whose answer came and was not turned (an error, a closed run)
        self._save_progress(company_id, deduper, saved, last_sync)

    def _save_progress(
        self, company_id: str, deduper: BoundaryDeduper, saved: CompanyCursor, last_sync: str | None = None
    ) -> None:
        """Move the company's cursor to what was read (and is loaded with this state).

        Called when a company is done (with Codat's `lastSync`), and when the run stopped or the
        company failed halfway through it (without, so the next run pages it again from here):
        pages come in `modifiedDate` order, so everything before the cursor has been read (and
        is loaded with this state; reading it again would only count it as updated). A company with
        more pages than a day's quota still gets through, a day at a time.
        """
        if self.backfill:
            return
        if last_sync is None and not deduper.read_any:
            return  # stopped or failed before its first page: nothing to move past
        self.cursors[company_id] = CompanyCursor(
            format_codat_datetime(deduper.cursor) if deduper.cursor else saved.cursor,
            tuple(sorted(deduper.boundary)),
            last_sync,
        ).to_state()
