"""What the benchmarks measure with: fresh child processes, emulator processes, DuckDB counts."""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import requests

from connector.emulator.launch import emulator_process

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bench-key"
SEED = 7
DATASET = "codat"
EMULATOR_READY_TIMEOUT = 900.0
CHILD_TIMEOUT = 1800.0
# Far above any benchmark's use: the quota is not what is measured.
EMULATOR_DAILY_LIMIT = 100_000_000
CHANGED_SHARE = 0.01  # customers changed before an incremental run

Figures = dict[str, Any]


class ChildError(RuntimeError):
    """A benchmark child process failed or timed out."""


@dataclass
class ChildRun:
    """What one child process printed, and what the parent saw of it."""

    figures: Figures
    process_seconds: float
    peak_rss_mib: float


def run_child(module: str, args: list[str], workdir: Path, timeout: float = CHILD_TIMEOUT) -> ChildRun:
    """Run `python -m module args` in a fresh process; its last stdout line is a JSON object.

    The peak RSS comes from `wait4`, so it is this process's own (and that of any worker process
    it reaps), never the parent's nor the emulator's. The child runs in `workdir` with dlt's
    project and data directories there, so neither the repository's `.dlt/` nor `~/.dlt` is read.
    """
    process = run_process([sys.executable, "-m", module, *args], workdir, timeout=timeout)
    if process.status != 0:
        raise ChildError(f"{module} {' '.join(args)} exited with {process.status}: {process.stderr[-2000:]}")
    lines = process.stdout.strip().splitlines()
    if not lines:
        raise ChildError(f"{module} printed nothing: {process.stderr[-2000:]}")
    return ChildRun(json.loads(lines[-1]), process.seconds, process.peak_rss_mib)


@dataclass
class ProcessRun:
    """A finished child process: how it ended, what it printed, its wall time and peak RSS."""

    status: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float


def run_process(
    command: list[str], workdir: Path, env: dict[str, str] | None = None, timeout: float = CHILD_TIMEOUT
) -> ProcessRun:
    """Run `command` in `workdir`, with dlt's project and data directories there, timed from spawn to exit."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")])),
        "DLT_PROJECT_DIR": str(workdir),
        "DLT_DATA_DIR": str(workdir / "dlt-data"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "RUNTIME__LOG_LEVEL": "ERROR",
        **(env or {}),
    }
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err, env=environment)
        status, usage = _wait(process, timeout)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return ProcessRun(
            status, out.read(), err.read().strip(), round(elapsed, 2), round(usage.ru_maxrss / 1024, 1)
        )


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise ChildError(f"child {process.args!r} ran longer than {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class EmulatorHandle:
    """A running emulator process: its URL, how long it took to be ready, its control API."""

    url: str
    ready_seconds: float

    def control(self, method: str, route: str, body: Any = None) -> Any:
        """Call `/_emulator/<route>` and return the JSON answer."""
        response = requests.request(method, f"{self.url}/_emulator/{route}", json=body, timeout=600)
        response.raise_for_status()
        return response.json()

    def account(self) -> list[Figures]:
        """Every company with its status, customer count and connections."""
        result: list[Figures] = self.control("GET", "account")
        return result

    def readable_customers(self) -> dict[str, int]:
        """Customers per company that a sync can read: read complete, with an accounting connection."""
        return {
            c["id"]: c["customers"]
            for c in self.account()
            if c["customers_status"] == "Complete"
            and any(x["sourceType"] == "Accounting" for x in c["connections"])
        }

    def requests_served(self) -> int:
        """Requests in the log since it was last cleared."""
        return int(self.control("GET", "stats")["requests"])

    def clear_requests(self) -> None:
        """Forget the request log, so that `requests_served` counts from now."""
        self.control("DELETE", "requests")

    def session(self) -> requests.Session:
        """A keep-alive session that authenticates as Codat expects."""
        session = requests.Session()
        session.headers["Authorization"] = "Basic " + base64.b64encode(API_KEY.encode()).decode()
        return session


@contextmanager
def running_emulator(companies: int, customers: int) -> Iterator[EmulatorHandle]:
    """An emulator in its own process, timed from start until it announces its URL."""
    flags = ["--api-key", API_KEY, "--seed", str(SEED), "--companies", str(companies)]
    flags += ["--customers", str(customers), "--daily-limit", str(EMULATOR_DAILY_LIMIT)]
    started = time.perf_counter()
    with emulator_process(*flags, ready_timeout=EMULATOR_READY_TIMEOUT) as url:
        yield EmulatorHandle(url, round(time.perf_counter() - started, 2))


@contextmanager
def fresh_workdir(name: str) -> Iterator[Path]:
    """A fresh directory for one run's DuckDB file and pipelines, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"codat-bench-{name}-") as path:
        yield Path(path)


def count_customers(database: Path, company_column: str) -> int:
    """Distinct `(company, id)` keys in `codat.customers`, read straight from the DuckDB file."""
    table = f'"{DATASET}"."customers"'
    with duckdb.connect(str(database), read_only=True) as db:
        query = f"SELECT COUNT(*) FROM (SELECT DISTINCT {company_column}, id FROM {table})"
        row = db.execute(query).fetchone()
    return int(row[0]) if row else 0


def count_rows(database: Path, table: str) -> int:
    """Rows of a table of the dataset (with history, every version of `customers`)."""
    with duckdb.connect(str(database), read_only=True) as db:
        row = db.execute(f'SELECT COUNT(*) FROM "{DATASET}"."{table}"').fetchone()
    return int(row[0]) if row else 0


def count_changed(database: Path, changed: dict[str, list[str]], since: datetime) -> int:
    """How many of the changed customers DuckDB holds in their changed version.

    A `modify` appends `(rev <its time>)` to the name and stamps `modifiedDate` with the current
    time, so a changed row has both; the version loaded before has neither.
    """
    with duckdb.connect(str(database), read_only=True) as db:
        rows = db.execute(
            f"""SELECT company_id, id FROM "{DATASET}"."customers"
            WHERE customer_name LIKE '%(rev %' AND modified_date >= ?""",
            [since],
        ).fetchall()
    found = {(str(company), str(customer)) for company, customer in rows}
    return sum((company, customer) in found for company, ids in changed.items() for customer in ids)


def spread(customers: dict[str, int], share: float) -> dict[str, int]:
    """How many customers to change per company: `share` of all (at least one), in proportion to size."""
    total = max(1, round(sum(customers.values()) * share))
    wanted = {company: count * total / sum(customers.values()) for company, count in customers.items()}
    picked = {company: int(value) for company, value in wanted.items()}
    by_remainder = sorted(wanted, key=lambda company: picked[company] - wanted[company])
    for company in by_remainder[: total - sum(picked.values())]:
        picked[company] += 1
    return {company: count for company, count in picked.items() if count}


def median(values: list[float]) -> float:
    """The median, rounded for the report."""
    return round(statistics.median(values), 3)
