"""What the SIGKILL tests share: runs killed at a point and run again, and warehouses read back.

A kill test runs `codat-sync` in a child process that SIGKILLs itself at a point
(`tests/killpoint.py`), runs it again plainly on the same warehouse, and compares what the
two left with what one uninterrupted run leaves (`test_kill_points.py` kills at named
calls, `test_package_kill_points.py` at every file step of dlt's load packages). Its fixtures
`account`, `runs` and `clean` serve both modules, each of which names its `SIZING` and `POINTS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from connector.emulator.data import attachment_bytes
from connector.emulator.emulator import Emulator
from connector.emulator.limits import MAX_CONCURRENT_PER_COMPANY
from connector.emulator.store import Sizing
from tests import children
from tests.attachmenttools import attachment_rows
from tests.synctools import expected_customers, normalise, readable
from tests.utils import API_KEY, DEFAULT_SIZING, ROOT

KILLPOINT = ROOT / "tests" / "killpoint.py"
PIPELINE = "codat"  # the command line's default pipeline and dataset name
DATASET = "codat"
PAGE_SIZE = 20
WORKERS = 2  # runs at once: the CPUs of a developer's machine and CI's
RUN_TIMEOUT = 120  # seconds; a run takes about three
# Columns that differ from run to run by design, left out of every comparison: dlt's load and
# row ids and the child rows' links to row ids (`keyed_children` compares those links by the
# customer's key instead), `extracted_at`, the instant the connector read the customer's page, and
# `listed_at`, the instant of an attachment listing.
RUN_COLUMNS = frozenset(
    {"_dlt_load_id", "_dlt_id", "_dlt_parent_id", "_dlt_root_id", "extracted_at", "listed_at"}
)
REFRESH_STATE = "attachment_refresh"  # its cycles' `started` is the instant of the run that began them
CHILD_TABLES = ("customers__addresses", "customers__contacts", "customers__contacts__phone")
ATTACHMENT_KEY = ("company_id", "connection_id", "customer_id", "id")


@dataclass(frozen=True)
class KillPoint:
    """Where a run dies: on entering the `call`-th call of `target` (see `tests/killpoint.py`).

    With `match`, only calls with an argument holding that text count; with the target
    `files`, `match` is a file step and `call` its occurrence.
    """

    id: str
    target: str
    call: int
    match: str | None = None


@dataclass(frozen=True)
class RunDirs:
    """One warehouse: its DuckDB file, dlt's pipelines folder and the attachment files."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "wh.duckdb"

    @property
    def pipelines(self) -> Path:
        return self.root / "pipelines"

    @property
    def files(self) -> Path:
        return self.root / "files"

    def args(self) -> list[str]:
        return [
            "--duckdb-file", str(self.db), "--pipelines-dir", str(self.pipelines),
            "--files", "--files-url", str(self.files), "--quiet",
        ]  # fmt: skip


def run_env(dirs: RunDirs, base_url: str) -> dict[str, str]:
    """The environment of a `codat-sync` child process on one warehouse."""
    return {
        **os.environ,
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "SOURCES__CODAT__PAGE_SIZE": str(PAGE_SIZE),
        "SOURCES__CODAT__REQUESTS_PER_MINUTE": "1000000",
        "SOURCES__CODAT__BACKOFF_FACTOR": "0.01",
        "DLT_DATA_DIR": str(dirs.root / "dlt"),
        "DLT_PROJECT_DIR": str(dirs.root / "dlt"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "PYTHONPATH": str(ROOT),
    }


def codat_sync(
    dirs: RunDirs, base_url: str, kill: KillPoint | None = None
) -> subprocess.CompletedProcess[str]:
    """One `codat-sync` run in a child process; with `kill`, one that dies at that point."""
    if kill is None:
        command = [sys.executable, "-m", "connector.cli"]
    else:
        match = [kill.match] if kill.match is not None else []
        command = [sys.executable, str(KILLPOINT), kill.target, str(kill.call), *match, "--"]
    return children.run(
        [*command, *dirs.args()],
        env=run_env(dirs, base_url),
        cwd=dirs.root,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def start_run(dirs: RunDirs, base_url: str) -> children.Popen:
    """A plain `codat-sync` run started in a child process, its output piped."""
    return children.Popen(
        [sys.executable, "-m", "connector.cli", *dirs.args()],
        env=run_env(dirs, base_url),
        cwd=dirs.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_requests(emulator: Emulator, count: int, timeout: float = 60.0) -> None:
    """Until the emulator has answered `count` requests: a run is well into its extract."""
    deadline = time.monotonic() + timeout
    while len(emulator.request_log) < count:
        assert time.monotonic() < deadline, f"the run made only {len(emulator.request_log)} requests"
        time.sleep(0.02)


# -- reading a warehouse back ------------------------------------------------------------------


@dataclass
class Snapshot:
    """What a run left: rows of every table and view, files, the source state, `sync_status`."""

    rows: dict[str, Counter[tuple[Any, ...]]]  # table or view -> its rows without RUN_COLUMNS
    columns: dict[str, list[str]]
    children: dict[str, Counter[tuple[Any, ...]]]  # child rows keyed by their customer
    files: dict[str, str]  # path under the files folder -> sha256
    state: dict[str, Any]  # the `codat` source state
    pending: bool  # packages dlt has not loaded yet
    status: list[dict[str, Any]]


def snapshot(dirs: RunDirs) -> Snapshot:
    """Read back what the runs on one warehouse left."""
    pipeline = dlt.attach(pipeline_name=PIPELINE, pipelines_dir=str(dirs.pipelines))
    with duckdb.connect(str(dirs.db), read_only=True) as con:
        names = [
            name
            for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [DATASET]
            ).fetchall()
            if not name.startswith("_dlt_") and name != "sync_status"
        ]
        rows, columns = {}, {}
        for name in names:
            described = [r[0] for r in con.sql(f"DESCRIBE {DATASET}.{name}").fetchall()]
            columns[name] = [c for c in described if c not in RUN_COLUMNS]
            picked = ", ".join(columns[name])
            found = con.sql(f"SELECT {picked} FROM {DATASET}.{name}").fetchall()
            rows[name] = Counter(relative_paths(columns[name], found, dirs.files))
        return Snapshot(
            rows=rows,
            columns=columns,
            children={table: keyed_children(con, table, columns[table]) for table in CHILD_TABLES},
            files=files(dirs.files),
            state=run_free_state(pipeline.state["sources"][PIPELINE]),
            pending=pipeline.has_pending_data,
            status=status_rows(con),
        )


def run_free_state(state: dict[str, Any]) -> dict[str, Any]:
    """The source state without the instants of the runs that wrote it (refresh cycles' start)."""
    cycles = {
        company_id: {k: v for k, v in cycle.items() if k != "started"}
        for company_id, cycle in (state.get(REFRESH_STATE) or {}).items()
    }
    return {**state, REFRESH_STATE: cycles} if REFRESH_STATE in state else dict(state)


def relative_paths(columns: list[str], rows: list[tuple[Any, ...]], root: Path) -> list[tuple[Any, ...]]:
    """`file_path` values made relative to the files folder (each warehouse has its own)."""
    if "file_path" not in columns:
        return rows
    at = columns.index("file_path")
    prefix = str(root) + "/"
    out = []
    for row in rows:
        path = row[at]
        assert path is None or path.startswith(prefix), f"{path!r} is outside {root}"
        out.append((*row[:at], path and path.removeprefix(prefix), *row[at + 1 :]))
    return out


def keyed_children(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str]
) -> Counter[tuple[Any, ...]]:
    """A child table's rows with the key of their customer (NULL for an orphan) and list positions.

    Row ids are random per run; what links a row to its customer and to its place in the
    customer's lists is what must match.
    """
    data = ", ".join(f"x.{c}" for c in columns)
    if table == "customers__contacts__phone":
        sql = (
            f"SELECT c.company_id, c.id, k._dlt_list_idx, {data} FROM {DATASET}.{table} x "
            f"LEFT JOIN {DATASET}.customers__contacts k ON k._dlt_id = x._dlt_parent_id "
            f"LEFT JOIN {DATASET}.customers c ON c._dlt_id = x._dlt_root_id"
        )
    else:
        sql = (
            f"SELECT c.company_id, c.id, {data} FROM {DATASET}.{table} x "
            f"LEFT JOIN {DATASET}.customers c ON c._dlt_id = x._dlt_root_id"
        )
    return Counter(con.sql(sql).fetchall())


def files(root: Path) -> dict[str, str]:
    """Every file under the folder (leftovers such as `.part` files included) and its sha256."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def status_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The `sync_status` rows, compared apart: every run adds its own."""
    cursor = con.execute(f"SELECT company_id, status, load_id, run_started_at FROM {DATASET}.sync_status")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def records(got: Snapshot, table: str) -> list[dict[str, Any]]:
    """A table's rows as dicts, each as often as it occurs."""
    return [dict(zip(got.columns[table], row, strict=True)) for row in got.rows[table].elements()]


def differences(got: Counter[tuple[Any, ...]], want: Counter[tuple[Any, ...]], shown: int = 3) -> str:
    """The rows one multiset has more of than the other, a few of each, or "" when equal."""
    missing, extra = want - got, got - want
    if not missing and not extra:
        return ""
    return (
        f"{sum(missing.values())} missing, e.g. {list(missing)[:shown]}; "
        f"{sum(extra.values())} extra, e.g. {list(extra)[:shown]}"
    )


# -- the account, as a model independent of the connector says a sync must load it ------------


@dataclass
class Account:
    """The emulator's account, as a model independent of the connector says a sync must load it."""

    customers: dict[tuple[str, str], dict[str, Any]]
    attachments: list[tuple[str, str, str, str]]
    files: dict[tuple[str, str, str, str], str]  # attachment key -> sha256 of its bytes
    companies: list[str]


def account_of(emulator: Emulator) -> Account:
    """What a complete sync of the emulator's account must load."""
    companies = readable(emulator)
    return Account(
        customers=expected_customers(emulator),
        attachments=attachment_rows(emulator),
        files={
            (c.id, connection_id, customer_id, a.id): hashlib.sha256(attachment_bytes(a)).hexdigest()
            for c in companies
            for (connection_id, customer_id), items in c.attachments.items()
            for a in items
        },
        companies=sorted(c.id for c in companies),
    )


@pytest.fixture(scope="module")
def unlimited(emulator_server: Any) -> Iterator[Emulator]:
    """The session's emulator with no limit that could refuse a request, for the whole module.

    Two runs at once send thousands of requests: a refused listing would be deferred, and the
    run would no longer match the clean one. The module resets the account itself.
    """
    emulator: Emulator = emulator_server.emulator
    emulator.latency = 0.0
    emulator.limiter.daily_limit = 10**9
    emulator.limiter.per_minute_limit = None
    emulator.limiter.max_concurrent = 1000
    yield emulator
    emulator.limiter.daily_limit = None
    emulator.limiter.max_concurrent = MAX_CONCURRENT_PER_COMPANY
    emulator.reset(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)


def reset_account(emulator: Emulator, sizing: Sizing) -> Account:
    """Regenerate the account from `sizing`; what a sync of it must load."""
    emulator.reset(sizing.seed, sizing.companies, sizing.customers)
    return account_of(emulator)


# -- the runs ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A killed run and the plain run after it, on one warehouse."""

    dirs: RunDirs
    killed: subprocess.CompletedProcess[str]
    rerun: subprocess.CompletedProcess[str] | None  # None when the kill missed
    rerun_started: datetime


def kill_and_rerun(dirs: RunDirs, base_url: str, point: KillPoint) -> Outcome:
    """A run killed at the point, then, if it did die there, a plain run on the same warehouse."""
    killed = codat_sync(dirs, base_url, kill=point)
    started = datetime.now(UTC)
    rerun = codat_sync(dirs, base_url) if killed.returncode == -signal.SIGKILL else None
    return Outcome(dirs, killed, rerun, started)


@dataclass
class Runs:
    """The clean run and each selected point's runs, under way."""

    clean_dirs: RunDirs
    clean: Future[subprocess.CompletedProcess[str]]
    points: dict[str, Future[Outcome]]


def selected_points(session: pytest.Session) -> set[str]:
    """The ids of the points whose tests this session runs (`-k` may leave some out)."""
    ids = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)  # parametrized tests only
        point = callspec.params.get("point") if callspec is not None else None
        if isinstance(point, KillPoint):
            ids.add(point.id)
    return ids


@contextlib.contextmanager
def started_runs(
    session: pytest.Session,
    base_url: str,
    points: list[KillPoint],
    tmp_path_factory: pytest.TempPathFactory,
    clean_kill: KillPoint | None = None,
) -> Iterator[Runs]:
    """Starts the clean run and the selected points' runs, WORKERS at a time, in list order.

    `clean_kill` is a point the clean run passes without dying (a journal of its steps).
    """
    selected = selected_points(session)
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        clean_dirs = RunDirs(tmp_path_factory.mktemp("clean"))
        clean = pool.submit(codat_sync, clean_dirs, base_url, clean_kill)
        outcomes = {
            point.id: pool.submit(kill_and_rerun, RunDirs(tmp_path_factory.mktemp("point")), base_url, point)
            for point in points
            if point.id in selected
        }
        yield Runs(clean_dirs, clean, outcomes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def account(request: pytest.FixtureRequest, unlimited: Emulator) -> Account:
    """The module's account (its `SIZING`), unchanged for the whole module."""
    return reset_account(unlimited, request.module.SIZING)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest,
    emulator_server: Any,
    account: Account,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """The clean run and the runs of the module's selected `POINTS`, two at a time, in order.

    The clean run passes the module's `CLEAN_KILL`, if it has one, without dying.
    """
    points, clean_kill = request.module.POINTS, getattr(request.module, "CLEAN_KILL", None)
    with started_runs(request.session, emulator_server.url, points, tmp_path_factory, clean_kill) as started:
        yield started


@pytest.fixture(scope="module")
def clean(runs: Runs) -> Snapshot:
    """What one uninterrupted run leaves."""
    done = runs.clean.result()
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(runs.clean_dirs)


# -- what the tests assert -----------------------------------------------------------------------


def assert_holds_account(clean: Snapshot, account: Account) -> None:
    """An uninterrupted run loaded the account exactly, and has work in every phase to kill."""
    fields = list(next(iter(account.customers.values())))
    customers = {(r["company_id"], r["id"]): {k: r[k] for k in fields} for r in records(clean, "customers")}
    assert normalise(customers) == account.customers
    assert sum(clean.rows["customers"].values()) == len(account.customers)

    attachments = records(clean, "customer_attachments")
    assert sorted(tuple(r[k] for k in ATTACHMENT_KEY) for r in attachments) == account.attachments
    assert {
        tuple(r[k] for k in ATTACHMENT_KEY): clean.files[r["file_path"]] for r in attachments
    } == account.files
    assert len(clean.files) == len(account.files)
    assert {r["file_status"] for r in attachments} == {"downloaded"}

    for table in CHILD_TABLES:
        assert clean.children[table], f"no rows in {table}"
        assert all(row[0] is not None for row in clean.children[table]), f"orphans in {table}"
    assert clean.rows["customers_current"]
    assert clean.rows["customer_attachments_with_customers"]
    assert not clean.pending
    assert sorted(r["company_id"] for r in clean.status) == account.companies
    assert {r["status"] for r in clean.status} == {"ok"}


def assert_rerun_equals_clean(outcome: Outcome, point: KillPoint, clean: Snapshot, account: Account) -> None:
    """Tables, views, files, state and `sync_status` after the rerun are the clean run's."""
    killed, rerun = outcome.killed, outcome.rerun
    assert killed.returncode == -signal.SIGKILL, (
        f"{point.target} {point.match or ''} not reached {point.call} times "
        f"(exit {killed.returncode}): {killed.stderr[-2000:]}"
    )
    assert rerun is not None
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    got = snapshot(outcome.dirs)
    assert sorted(got.rows) == sorted(clean.rows)
    assert got.columns == clean.columns
    problems = {name: differences(got.rows[name], clean.rows[name]) for name in clean.rows}
    problems |= {f"{t} by customer": differences(got.children[t], clean.children[t]) for t in CHILD_TABLES}
    wrong = [f"{name}: {text}" for name, text in problems.items() if text]
    assert not wrong, "\n".join(wrong)
    assert got.files == clean.files
    assert got.state == clean.state
    assert not got.pending

    # The killed run's rows may be there (it got as far as extracting them); twice, never.
    keys = Counter((r["load_id"], r["company_id"]) for r in got.status)
    assert [key for key, n in keys.items() if n > 1] == []
    rerun_rows = [r for r in got.status if r["run_started_at"] >= outcome.rerun_started]
    assert sorted(r["company_id"] for r in rerun_rows) == account.companies
    assert {r["status"] for r in rerun_rows} <= {"ok", "unchanged"}
    earlier = Counter(r["company_id"] for r in got.status if r["run_started_at"] < outcome.rerun_started)
    assert set(earlier) <= set(account.companies)
    assert max(earlier.values(), default=0) <= 1
