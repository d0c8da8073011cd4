"""What one run did to each company: the rows of `sync_status` and the run summary."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dlt.common.schema.typing import TTableSchemaColumns

from connector.client import RequestCounter
from connector.errors import CodatApiError, RunStopped
from connector.pacing import API_UNREACHABLE, DISK_FULL, INTERRUPTED, QUOTA_SPENT, StopSwitch

OK = "ok"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
NOT_READY = "not_ready"  # Codat has not read the company's customers yet (409): not an error
FAILED = "failed"
# The run stopped sending requests before this company was done; the next run goes on.
STOPPED_STATUSES = {
    API_UNREACHABLE: "api_unreachable",
    QUOTA_SPENT: "quota_spent",
    INTERRUPTED: "interrupted",
    DISK_FULL: "disk_full",
}
STATUSES = (OK, UNCHANGED, SKIPPED, NOT_READY, FAILED, *STOPPED_STATUSES.values())  # summary order
# The `sync_status` table: a row per company of each run (`RunReport.rows`).
STATUS_KEY = ("load_id", "company_id")  # a run's row per company, written once however often loaded
STATUS_COLUMNS: TTableSchemaColumns = {
    "company_id": {"data_type": "text", "nullable": False},
    "company_name": {"data_type": "text"},
    "status": {"data_type": "text", "nullable": False},
    "http_status": {"data_type": "bigint"},
    "error": {"data_type": "text"},
    "correlation_id": {"data_type": "text"},
    "notes": {"data_type": "text"},
    "deferral_reason": {"data_type": "text"},
    "attachments_added": {"data_type": "bigint"},  # counted after the load (SQL destinations)
    "attachments_removed": {"data_type": "bigint"},
    "refresh_done": {"data_type": "bigint"},
    "refresh_total": {"data_type": "bigint"},
    "refresh_behind": {"data_type": "bigint"},
    "refresh_cycle_started": {"data_type": "timestamp"},
    "requests": {"data_type": "bigint"},
    "run_started_at": {"data_type": "timestamp"},
    "load_id": {"data_type": "text", "nullable": False},
}


@dataclass
class CompanyReport:
    """One company's outcome in one run."""

    company_id: str
    company_name: str | None
    status: str = OK
    customers_loaded: int = 0
    customers_deleted: int = 0  # loaded with `isDeleted`
    first_load: bool = False  # no cursor before this run: every customer is new to the warehouse
    transient: bool = False  # the error was no answer, a `5xx` or a `429`
    attachments_loaded: int = 0  # attachments found by this run's listings
    attachment_listings: int = 0  # listings made (one per customer and accounting connection)
    attachments_deferred: int = 0
    deferral_reason: str | None = None
    attachments_refreshed: int = 0  # unchanged customers listed again by the rolling refresh
    attachments_added: int | None = None  # counted in the destination after the load
    attachments_removed: int | None = None  # retired: a later listing no longer returned them
    refresh_done: int | None = None  # customers listed again in the current refresh cycle
    refresh_total: int | None = None  # customers in that cycle, as last counted
    refresh_behind: int | None = None  # customers due by now in the cycle and not listed yet
    refresh_cycle_started: datetime | None = None
    files_downloaded: int = 0
    requests: int = 0
    http_status: int | None = None
    error: str | None = None
    correlation_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, exc: CodatApiError | Exception, status: str = FAILED) -> None:
        """Record a failure; the first one is kept as the company's error."""
        if self.error is not None:
            self.notes.append(str(exc))
            return
        self.status = status
        self.error = str(exc)
        if isinstance(exc, CodatApiError):
            self.http_status = exc.status
            self.correlation_id = exc.correlation_id
            self.transient = exc.status is None or exc.status == 429 or exc.status >= 500

    def not_ready(self, exc: CodatApiError) -> None:
        """Codat has not read the company's customers (`409`), or is reading them."""
        self.fail(exc, NOT_READY)
        self.error = exc.error  # Codat's reason, for the summary and `sync_status`

    def record_stop(self, reason: RunStopped) -> None:
        """The run stopped before this company was done; whatever it said before is a note."""
        if self.error is not None:
            self.notes.append(self.error)
        self.status = STOPPED_STATUSES[reason.kind]
        self.error = str(reason)


@dataclass
class RunReport:
    """Every company's outcome in this run, shared by the source's resources."""

    run_started: datetime = field(default_factory=lambda: datetime.now(UTC))
    companies: dict[str, CompanyReport] = field(default_factory=dict)
    requests: RequestCounter = field(default_factory=RequestCounter)
    stop: StopSwitch = field(default_factory=StopSwitch)  # the client's: why its requests stopped
    quota_low: RunStopped | None = None  # attachment listings stopped at the quota's reserve
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def company(self, company_id: str, name: str | None = None) -> CompanyReport:
        """The company's record for this run, created on first use (the name kept once known)."""
        with self._lock:
            outcome = self.companies.get(company_id)
            if outcome is None:
                outcome = self.companies[company_id] = CompanyReport(company_id, name)
            elif outcome.company_name is None and name is not None:
                outcome.company_name = name
            return outcome

    @property
    def attachments_deferred(self) -> int:
        """Customers whose attachment listing was left for a later run."""
        return sum(c.attachments_deferred for c in self.companies.values())

    @property
    def deferral_reasons(self) -> list[str]:
        """Why listings were left for a later run, each reason once."""
        return list(dict.fromkeys(c.deferral_reason for c in self.companies.values() if c.deferral_reason))

    @property
    def failed(self) -> list[CompanyReport]:
        """Companies that failed in this run."""
        return [c for c in self.companies.values() if c.status == FAILED]

    def mark_cut_short(self) -> None:
        """Once the run has stopped, mark the companies it cut short as stopped, not failed or ok.

        They are the failures the stop explains (no answer, `5xx`, `429`), and the companies
        whose attachment listings it deferred.
        """
        reason = self.stop.reason or self.quota_low
        if reason is None:
            return
        for outcome in self.companies.values():
            cut_short = outcome.status in (OK, UNCHANGED) and outcome.deferral_reason == str(reason)
            if (outcome.status == FAILED and outcome.transient) or cut_short:
                outcome.record_stop(reason)

    def rows(self, load_id: str | None) -> list[dict[str, Any]]:
        """The `sync_status` rows of this run, one per company."""
        rows = []
        for outcome in self.companies.values():
            row = asdict(outcome)
            for internal in ("first_load", "transient"):
                del row[internal]
            row["requests"] = self.requests.by_company.get(outcome.company_id, 0)
            row["notes"] = "; ".join(outcome.notes) or None
            row["run_started_at"] = self.run_started
            row["load_id"] = load_id
            rows.append(row)
        return rows
