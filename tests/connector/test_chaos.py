"""Chaos: runs SIGKILLed at seeded random moments, among changes and faults, then rerun, equal the API.

One warehouse lives through ROUNDS rounds. Each round changes some customers in the emulator,
queues a few faults (server errors, dropped and cut answers, a short `429`), starts
`codat-sync` (attachments and files on) and SIGKILLs it after a random delay, unless it ended
first; then it runs again plainly, and the warehouse must hold exactly what the API holds:
customers, their child rows, attachments, files, nothing pending, no `sync_status` row twice.
The seed is fixed so a failure replays; its message names the seed and the round.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from connector.emulator.emulator import Emulator
from tests import children
from tests.attachmenttools import attachment_rows
from tests.killtools import RUN_TIMEOUT, RunDirs, account_of, codat_sync, files, run_env
from tests.synctools import database_customers, database_rows, expected_customers, normalise, readable

SEED = 20261207
ROUNDS = 10
LATENCY = 0.002  # seconds per request: spreads a run over time, so kills land in every phase
FAULT_KINDS = ("500", "503", "reset", "truncate", "invalid_json", "429")
FAULT_PATHS = ("/data/customers", "/attachments", "/download", "/companies")
CHILD_COUNTS = {
    "customers__addresses": lambda r: len(r.get("addresses") or []),
    "customers__contacts": lambda r: len(r.get("contacts") or []),
    "customers__contacts__phone": lambda r: sum(len(c.get("phone") or []) for c in r.get("contacts") or []),
}


def change(emulator: Emulator, rng: random.Random) -> str:
    """Some customers of a random company modified, deleted or added, as a Codat sync would."""
    company = rng.choice(readable(emulator))
    action, count = rng.choice(("modify", "delete", "add")), rng.randint(1, 40)
    emulator.store.mutate(company.id, action, count=count)
    return f"{action} {count} in {company.id}"


def queue_faults(emulator: Emulator, rng: random.Random) -> list[str]:
    """Up to three faults a run retries through (fewer in a row than its attempts)."""
    queued = []
    for _ in range(rng.randint(0, 3)):
        kind, match, count = rng.choice(FAULT_KINDS), rng.choice(FAULT_PATHS), rng.randint(1, 2)
        emulator.add_fault(kind, count=count, match=match, retry_after="0")
        queued.append(f"{kind} x{count} on {match}")
    return queued


def killed_run(dirs: RunDirs, base_url: str, delay: float) -> int | None:
    """`codat-sync` SIGKILLed `delay` seconds after it started; its exit code if it ended first."""
    run = children.Popen(
        [sys.executable, "-m", "connector.cli", *dirs.args()],
        env=run_env(dirs, base_url),
        cwd=dirs.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return run.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=RUN_TIMEOUT)
        return None


def mismatches(emulator: Emulator, dirs: RunDirs) -> list[str]:
    """How the warehouse differs from what the API holds (empty when it is exact)."""
    wrong = []
    if normalise(database_customers(dirs.db)) != expected_customers(emulator):
        wrong.append("customers differ from the API's")
    keys = database_rows(dirs.db, "SELECT company_id, id FROM codat.customers")
    if len(keys) != len(set(keys)):
        wrong.append("a customer is loaded twice")
    records = {(c.id, str(r["id"])): r for c in readable(emulator) for r in c.customers.values()}
    for table, count in CHILD_COUNTS.items():
        sql = (
            f"SELECT c.company_id, c.id, COUNT(*) FROM codat.{table} x "
            "LEFT JOIN codat.customers c ON c._dlt_id = x._dlt_root_id GROUP BY 1, 2"
        )
        loaded = Counter({(company, customer): n for company, customer, n in database_rows(dirs.db, sql)})
        expected = Counter({key: count(r) for key, r in records.items() if count(r)})
        if loaded != expected:
            extra, missing = sum((loaded - expected).values()), sum((expected - loaded).values())
            wrong.append(f"{table}: {extra} rows extra, {missing} missing")
    attachments = database_rows(
        dirs.db, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    if sorted(attachments) != attachment_rows(emulator):
        wrong.append("attachments differ from the API's")
    if sorted(files(dirs.files).values()) != sorted(account_of(emulator).files.values()):
        wrong.append("files differ from the API's")
    status = database_rows(dirs.db, "SELECT load_id, company_id FROM codat.sync_status")
    if len(status) != len(set(status)):
        wrong.append("a sync_status row is there twice")
    return wrong


def test_random_kills_among_changes_and_faults_leave_the_warehouse_equal_to_the_api(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    emulator.latency = LATENCY
    dirs = RunDirs(tmp_path)
    assert len(account_of(emulator).files) > 100, "files to kill a download among"
    began = time.monotonic()
    first = codat_sync(dirs, base_url)
    lasted = time.monotonic() - began  # a plain run's length: the kills land within it
    assert first.returncode == 0, first.stderr[-2000:]
    assert mismatches(emulator, dirs) == []
    killed = 0
    for round_number in range(1, ROUNDS + 1):
        what = [change(emulator, rng) for _ in range(rng.randint(1, 3))]
        what += queue_faults(emulator, rng)
        delay = rng.uniform(0.05, max(lasted, 0.5))  # a fork of the tests' server: no interpreter start
        ended = killed_run(dirs, base_url, delay)
        killed += ended is None
        emulator.faults.clear()

        began = time.monotonic()
        rerun = codat_sync(dirs, base_url)
        lasted = time.monotonic() - began

        where = (
            f"seed {SEED}, round {round_number}: {'; '.join(what)}; killed at {delay:.2f} s: {ended is None}"
        )
        assert rerun.returncode == 0, f"{where}: {rerun.stderr[-2000:]}"
        assert mismatches(emulator, dirs) == [], where
    assert killed >= ROUNDS // 2, f"only {killed} of {ROUNDS} runs were killed: the delays miss the runs"
