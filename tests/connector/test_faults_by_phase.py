"""Every emulator fault in every phase of a sync: the run ends, and the next clean run loads exactly."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
import pytest

from connector.emulator.data import attachment_bytes
from connector.emulator.emulator import Emulator
from connector.emulator.faults import FAULT_KINDS
from connector.emulator.model import Attachment
from connector.emulator.store import Sizing
from connector.emulator.wire import ERROR_TEXTS
from tests.attachmenttools import attachment_rows
from tests.synctools import FAST_RETRIES, Warehouse, expected_customers, normalise, readable

SIZING = Sizing(seed=7, companies=2, customers=40)  # 27 and 13 customers, 14 attachment files
PAGE_SIZE = 5
ATTEMPTS = int(FAST_RETRIES["max_attempts"])
HANG_GUARD = 60.0  # seconds: a generous bound that only a hung run exceeds
RETRIED = ("429", "500", "503", "reset", "truncate", "invalid_json")  # the client asks again
SLOW_DELAY = 0.3
QUOTA_WAIT = 5.0  # max_retry_wait of the spent-quota case; its Retry-After is an hour
AttachmentKey = tuple[str, str, str, str]  # company, connection, customer, attachment
FileRow = tuple[str | None, str | None, str | None]  # file_path, sha256, file_status


@dataclass(frozen=True)
class Targets:
    """The ids each phase's fault aims at: the largest company, and a late customer of it."""

    company_id: str
    connection_id: str
    customer_id: str
    attachment_id: str


@dataclass(frozen=True)
class Phase:
    """A phase of a sync: the emulator's operation, the connector's name for it, the fault's match."""

    name: str
    operation: str
    client_operation: str
    match: Callable[[Targets], str]


PHASES = (
    Phase("companies", "list-companies", "list companies", lambda t: "/companies"),
    Phase(
        "customer-pages",
        "list-customers",
        "list customers",
        lambda t: f"/companies/{t.company_id}/data/customers",
    ),
    Phase(
        "attachment-listing",
        "list-customer-attachments",
        "list customer attachments",
        lambda t: f"/connections/{t.connection_id}/data/customers/{t.customer_id}/attachments",
    ),
    Phase(
        "file-download",
        "download-customer-attachment",
        "download customer attachment",
        lambda t: f"/attachments/{t.attachment_id}/download",
    ),
)


@dataclass(frozen=True)
class Case:
    """One fault as queued: its kind, how many answers it spoils, and the client's patience."""

    name: str
    kind: str
    count: int
    retry_after: str = "0"  # waiting it out is `test_operations.py`'s; here only the path matters
    max_retry_wait: float | None = None

    @property
    def final(self) -> bool:
        """Whether the faulted request has no good answer in the run (given up, or not retried)."""
        if self.max_retry_wait is not None:  # a Retry-After longer than that is not waited for
            return True
        return self.kind != "slow" and (self.kind not in RETRIED or self.count > ATTEMPTS)

    @property
    def retried(self) -> bool:
        """Whether the faulted request is asked again until it is answered."""
        return self.kind in RETRIED and not self.final


CASES = (
    *(Case(f"{kind}-once", kind, 1) for kind in FAULT_KINDS),
    *(Case(f"{kind}-final", kind, ATTEMPTS + 2) for kind in RETRIED),
    Case("429-quota-spent", "429", 1, retry_after="3600", max_retry_wait=QUOTA_WAIT),
)


# -- what the account holds, computed from the emulator's store ---------------------------------


def pick_targets(emulator: Emulator) -> Targets:
    """The company with most customers, its latest-modified customer with two attachments, the second."""
    company = max(readable(emulator), key=lambda c: len(c.customers))
    connection_id = company.accounting_connections[0].id
    candidates = [
        customer_id
        for (conn, customer_id), items in company.attachments.items()
        if conn == connection_id and len(items) >= 2 and customer_id.isalnum()
    ]
    assert candidates, "the account must hold a customer with two attachment files"
    customer_id = max(candidates, key=lambda c: str(company.customers[c].get("modifiedDate")))
    return Targets(
        company.id, connection_id, customer_id, company.attachments[(connection_id, customer_id)][1].id
    )


def stored_files(emulator: Emulator) -> dict[AttachmentKey, Attachment]:
    """Every attachment a sync must list, by its key."""
    out = {}
    for company in readable(emulator):
        accounting = {c.id for c in company.accounting_connections}
        for (connection_id, customer_id), items in company.attachments.items():
            if connection_id in accounting:
                out.update({(company.id, connection_id, customer_id, a.id): a for a in items})
    return out


# -- what the warehouse holds ---------------------------------------------------------------------


def table_rows(warehouse: Warehouse, sql: str, table: str) -> list[tuple[Any, ...]]:
    """Rows of a query, or none if the run never created the database or the table."""
    if not warehouse.db.exists():
        return []
    with duckdb.connect(str(warehouse.db), read_only=True) as con:
        tables = {r[0] for r in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    return warehouse.rows(sql) if table in tables else []


def loaded_customers(warehouse: Warehouse) -> dict[tuple[str, str], dict[str, Any]]:
    if not table_rows(warehouse, "SELECT 1 FROM codat.customers LIMIT 1", "customers"):
        return {}
    return normalise(warehouse.customers())


def loaded_files(warehouse: Warehouse) -> dict[AttachmentKey, FileRow]:
    rows = table_rows(
        warehouse,
        "SELECT company_id, connection_id, customer_id, id, file_path, sha256, file_status "
        "FROM codat.customer_attachments",
        "customer_attachments",
    )
    keys = [tuple(r[:4]) for r in rows]
    assert len(keys) == len(set(keys)), "an attachment loaded twice"
    return {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6]) for r in rows}


def check_files(
    loaded: dict[AttachmentKey, FileRow],
    stored: dict[AttachmentKey, Attachment],
    folder: Path,
) -> set[Path]:
    """Each loaded row names a stored attachment whose file is on disk with its exact bytes.

    Returns the files on disk, each checked against the attachment its path names: company,
    connection, customer and attachment id, each stored as one safe segment (`..` is `%2E%2E`).
    """
    assert set(loaded) <= set(stored), "attachments loaded that the account does not hold"
    for key, (path, sha256, status) in loaded.items():
        content = attachment_bytes(stored[key])
        assert status in ("downloaded", "unchanged"), (key, status)
        assert path is not None
        assert Path(path).read_bytes() == content, key
        assert sha256 == hashlib.sha256(content).hexdigest(), key
    on_disk = {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    for file in on_disk:
        parts = file.relative_to(folder).parts
        named = tuple(unquote(part) for part in parts)
        assert len(named) == 4, f"a file outside company/connection/customer/attachment: {file}"
        assert named in stored, f"a file that is no attachment: {file}"
        assert file.read_bytes() == attachment_bytes(stored[named]), file
    return on_disk


# -- running a sync -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a run ended: its summary, or the error it raised."""

    summary: Any = None
    error: BaseException | None = None


def run_bounded(call: Callable[[], Any]) -> Outcome:
    """Run a sync in a thread and fail the test if it has not ended within `HANG_GUARD` seconds."""
    outcome = Outcome()

    def target() -> None:
        try:
            outcome.summary = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.error = exc

    thread = threading.Thread(target=target, name="faulted-sync", daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"the sync has not ended after {HANG_GUARD:.0f} s"
    return outcome


def flags_trouble(summary: Any) -> bool:
    """Whether a summary says the run left something undone (failed, not ready, deferred...)."""
    statuses = {row["status"] for row in summary.status_rows}
    return bool(summary.failed or summary.attachments_deferred or statuses - {"ok", "unchanged"})


# -- the checks -----------------------------------------------------------------------------------


def queue_fault(emulator: Emulator, phase: Phase, case: Case, match: str) -> None:
    """Queue the case's fault; customer pages get it on the second page, after a no-op on the first."""
    if phase.name == "customer-pages":
        emulator.add_fault("slow", count=1, match=match, delay=0.0)
    emulator.add_fault(
        case.kind, count=case.count, match=match, retry_after=case.retry_after, delay=SLOW_DELAY
    )


def check_fault_taken(log: list[dict[str, Any]], phase: Phase, case: Case, match: str) -> None:
    """The fault hit the phase's requests only, and was retried away or final as the case means."""
    faulted = [e for e in log if e["fault"] == case.kind and match in e["path"]]
    assert faulted, "the fault was never taken"
    assert {e["operation"] for e in faulted} == {phase.operation}
    if phase.name == "customer-pages":
        pages = [e for e in log if match in e["path"]]
        assert (pages[0]["fault"], pages[0]["status"]) == ("slow", 200)
        assert pages[1]["fault"] == case.kind, "the fault missed the second page"

    def request(entry: dict[str, Any]) -> tuple[str, str]:
        return entry["path"], str(sorted(entry["params"].items()))

    hit = request(faulted[-1])
    answered = [e for e in log if request(e) == hit and e["fault"] is None and e["status"] == 200]
    if case.final:
        assert not answered, "the fault was meant to outlast the request's retries"
    if case.retried:
        assert answered, "a fault of one answer is retried"
    if case.max_retry_wait is not None:
        assert len(faulted) == 1, "a 429 asking to wait an hour is not retried"


def check_error(error: BaseException | None, phase: Phase, case: Case) -> None:
    """A run that raised says which operation failed, and with which HTTP status."""
    if error is None:
        return
    message = str(error)
    assert phase.client_operation in message, message
    if case.kind in ERROR_TEXTS:
        assert f"HTTP {case.kind}" in message, message


def check_nothing_wrong(
    warehouse: Warehouse, emulator: Emulator, stored: dict[AttachmentKey, Attachment], first: Outcome
) -> None:
    """What the faulted run loaded is exact; if it is not all, its summary says something was left."""
    expected = expected_customers(emulator)
    customers = loaded_customers(warehouse)
    for key, row in customers.items():
        assert row == expected.get(key), f"customer {key} loaded wrong by the faulted run"
    files = loaded_files(warehouse)
    check_files(files, stored, warehouse.tmp_path / "files")
    complete = customers == expected and set(files) == set(stored)
    if first.summary is not None and not complete:
        assert flags_trouble(first.summary), f"an incomplete run claims success: {first.summary.lines()}"


def check_exact(warehouse: Warehouse, emulator: Emulator, stored: dict[AttachmentKey, Attachment]) -> None:
    """Customers, attachment rows and files on disk are exactly the account's."""
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    files = loaded_files(warehouse)
    assert set(files) == set(attachment_rows(emulator))
    on_disk = check_files(files, stored, warehouse.tmp_path / "files")
    assert on_disk == {Path(str(path)) for path, _, _ in files.values()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.name)
def test_a_fault_in_any_phase_ends_the_run_and_the_next_run_loads_exactly(
    emulator: Emulator, base_url: str, tmp_path: Path, phase: Phase, case: Case
) -> None:
    emulator.reset(SIZING.seed, SIZING.companies, SIZING.customers)
    targets = pick_targets(emulator)
    stored = stored_files(emulator)
    assert len(stored) > PAGE_SIZE
    assert all(a.file_size > 0 for a in stored.values())
    company = emulator.store.company(targets.company_id)
    assert company is not None
    assert len(company.customers) > 2 * PAGE_SIZE
    match = phase.match(targets)
    queue_fault(emulator, phase, case, match)
    options: dict[str, Any] = {
        "page_size": PAGE_SIZE,
        "download_files": True,
        "files_url": str(tmp_path / "files"),
    }
    if case.max_retry_wait is not None:
        options["max_retry_wait"] = case.max_retry_wait
    warehouse = Warehouse(tmp_path, base_url)

    first = run_bounded(lambda: warehouse.sync(**options))

    check_fault_taken(list(emulator.request_log), phase, case, match)
    check_error(first.error, phase, case)
    check_nothing_wrong(warehouse, emulator, stored, first)

    emulator.faults.clear()
    second = run_bounded(lambda: warehouse.sync(**options))

    assert second.error is None, f"the clean run raised: {second.error!r}"
    check_exact(warehouse, emulator, stored)
