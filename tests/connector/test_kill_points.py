"""`codat-sync` SIGKILLed at any of 32 points of a run, then run again, leaves what a clean run leaves.

Each point is a separate child process run, killed, then run again plainly; the runs go two at a
time against the session's emulator, which serves one account unchanged throughout the module.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
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
from connector.emulator.limits import MAX_CONCURRENT_PER_COMPANY
from connector.emulator.server import EmulatorServer
from tests.attachmenttools import attachment_rows
from tests.synctools import expected_customers, normalise, readable
from tests.utils import API_KEY, DEFAULT_SIZING, ROOT

REPO = ROOT
KILLPOINT = REPO / "tests" / "killpoint.py"
PIPELINE = "codat"  # the command line's default pipeline and dataset name
DATASET = "codat"
PAGE_SIZE = 20
WORKERS = 2  # runs at once: the CPUs of a developer's machine and CI's
RUN_TIMEOUT = 120  # seconds; a run takes about three
# Columns that differ from run to run by design, left out of every comparison: dlt's load and
# row ids and the child rows' links to row ids (`keyed_children` compares those links by the
# customer's key instead), and `extracted_at`, the instant the connector read the customer's page.
RUN_COLUMNS = frozenset({"_dlt_load_id", "_dlt_id", "_dlt_parent_id", "_dlt_root_id", "extracted_at"})
CHILD_TABLES = ("customers__addresses", "customers__contacts", "customers__contacts__phone")
ATTACHMENT_KEY = ("company_id", "connection_id", "customer_id", "id")


@dataclass(frozen=True)
class KillPoint:
    """Where a run dies: on entering the `call`-th call of `target` (see `tests/killpoint.py`).

    With `match`, only calls with an argument holding that text count.
    """

    id: str
    target: str
    call: int
    match: str | None = None


# The default account (seed 7: 3 companies, 300 customers) at PAGE_SIZE makes one run call:
# list_companies 1, PageBuilder.build 19 (one per customer page), list_customer_attachments 300,
# download_customer_attachment, pipe_file and mv 121, _on_response 442 (every HTTP answer);
# Pipeline.extract 2 (the source, then `sync_status`), _save_state 4 (the 3rd after the source's
# extract), Extract.commit_packages 2, Pipeline.normalize 1, PackageStorage.delete_package 4 (the
# 2nd drops the source's extracted package once normalized); per package, the source's then
# `sync_status`'s: Load.initialize_package 1 + 1, Load.submit_job 13 + 2, complete_job and
# save_pending_transition as many, Load.complete_package 1 + 1; DuckDB commits 13, SqlLoadJob.run 5
# (the merge jobs). `python tests/killpoint.py TARGET 0 -- ...` prints a count to re-derive one.
CLIENT = "connector.client:CodatClient"
PIPELINE_CLASS = "dlt.pipeline.pipeline:Pipeline"
LOAD = "dlt.load.load:Load"
POINTS = [
    KillPoint("companies-listing", f"{CLIENT}.list_companies", 1),
    KillPoint("customer-page-1", "connector.batches:PageBuilder.build", 1),
    KillPoint("customer-page-3-early", "connector.batches:PageBuilder.build", 3),
    KillPoint("customer-page-10-middle", "connector.batches:PageBuilder.build", 10),
    KillPoint("customer-page-19-last", "connector.batches:PageBuilder.build", 19),
    KillPoint("attachment-listing-1", f"{CLIENT}.list_customer_attachments", 1),
    KillPoint("attachment-listing-150", f"{CLIENT}.list_customer_attachments", 150),
    KillPoint("attachment-listing-300-last", f"{CLIENT}.list_customer_attachments", 300),
    KillPoint("file-download-1", f"{CLIENT}.download_customer_attachment", 1),
    KillPoint("file-download-60", f"{CLIENT}.download_customer_attachment", 60),
    KillPoint("file-write-30", "fsspec.implementations.local:LocalFileSystem.pipe_file", 30),
    KillPoint("file-rename-90", "fsspec.implementations.local:LocalFileSystem.mv", 90),
    KillPoint("http-answer-400", f"{CLIENT}._on_response", 400),
    KillPoint("extract-commit", "dlt.extract.extract:Extract.commit_packages", 1),
    KillPoint("state-commit", f"{PIPELINE_CLASS}._save_state", 3),
    KillPoint("normalize-start", f"{PIPELINE_CLASS}.normalize", 1),
    KillPoint("normalize-spool", "dlt.normalize.normalize:Normalize.spool_files", 1),
    KillPoint("normalize-commit", "dlt.common.storages.load_storage:LoadStorage.commit_new_load_package", 1),
    KillPoint(
        "normalize-extracted-cleanup", "dlt.common.storages.load_package:PackageStorage.delete_package", 2
    ),
    KillPoint("load-start", f"{LOAD}.initialize_package", 1),
    KillPoint("load-job-1", f"{LOAD}.submit_job", 1),
    KillPoint("load-job-6", f"{LOAD}.submit_job", 6),
    KillPoint(
        "load-commit-5", "dlt.destinations.impl.duckdb.sql_client:DuckDbSqlClient.commit_transaction", 5
    ),
    # Job 'customers__contacts' committed in DuckDB, not yet marked done in its package.
    KillPoint(
        "load-job-committed-unmarked",
        "dlt.common.storages.load_package:PackageStorage.save_pending_transition",
        1,
        "customers__contacts.",
    ),
    KillPoint("load-after-7-jobs", "dlt.common.storages.load_package:PackageStorage.complete_job", 8),
    KillPoint("load-merge-sql", "dlt.destinations.job_client_impl:SqlLoadJob.run", 2),
    KillPoint("load-package-complete", f"{LOAD}.complete_package", 1),
    KillPoint(
        "load-package-archive", "dlt.common.storages.load_storage:LoadStorage.complete_load_package", 1
    ),
    KillPoint("prune-child-rows", "connector.sync:prune_child_rows", 1),
    KillPoint("views", "connector.sync:create_views", 1),
    KillPoint("sync-status-extract", f"{PIPELINE_CLASS}.extract", 2),
    KillPoint("sync-status-load", f"{LOAD}.complete_package", 2),
]


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


def codat_sync(
    dirs: RunDirs, base_url: str, kill: KillPoint | None = None
) -> subprocess.CompletedProcess[str]:
    """One `codat-sync` run in a child process; with `kill`, one that dies at that point."""
    env = {
        **os.environ,
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "SOURCES__CODAT__PAGE_SIZE": str(PAGE_SIZE),
        "SOURCES__CODAT__REQUESTS_PER_MINUTE": "1000000",
        "SOURCES__CODAT__BACKOFF_FACTOR": "0.01",
        "DLT_DATA_DIR": str(dirs.root / "dlt"),
        "DLT_PROJECT_DIR": str(dirs.root / "dlt"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "PYTHONPATH": str(REPO),
    }
    if kill is None:
        command = [sys.executable, "-m", "connector.cli"]
    else:
        match = [kill.match] if kill.match is not None else []
        command = [sys.executable, str(KILLPOINT), kill.target, str(kill.call), *match, "--"]
    return subprocess.run(
        [*command, *dirs.args()],
        env=env,
        cwd=dirs.root,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


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
            state=dict(pipeline.state["sources"][PIPELINE]),
            pending=pipeline.has_pending_data,
            status=status_rows(con),
        )


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


def differences(got: Counter[tuple[Any, ...]], want: Counter[tuple[Any, ...]], shown: int = 3) -> str:
    """The rows one multiset has more of than the other, a few of each, or "" when equal."""
    missing, extra = want - got, got - want
    if not missing and not extra:
        return ""
    return (
        f"{sum(missing.values())} missing, e.g. {list(missing)[:shown]}; "
        f"{sum(extra.values())} extra, e.g. {list(extra)[:shown]}"
    )


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
class Account:
    """The emulator's account, as a model independent of the connector says a sync must load it."""

    customers: dict[tuple[str, str], dict[str, Any]]
    attachments: list[tuple[str, str, str, str]]
    files: dict[tuple[str, str, str, str], str]  # attachment key -> sha256 of its bytes
    companies: list[str]


@pytest.fixture(scope="module")
def account(emulator_server: EmulatorServer) -> Iterator[Account]:
    """The default account, unchanged for the whole module: its tests never reset the emulator."""
    emulator = emulator_server.emulator
    emulator.reset(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)
    emulator.latency = 0.0
    # Two runs at once, some 30,000 requests in all: no limit may refuse one (a refused listing
    # is deferred, and the run no longer matches the clean one).
    emulator.limiter.daily_limit = 10**9
    emulator.limiter.per_minute_limit = None
    emulator.limiter.max_concurrent = 1000
    companies = readable(emulator)
    yield Account(
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
    emulator.limiter.daily_limit = None
    emulator.limiter.max_concurrent = MAX_CONCURRENT_PER_COMPANY
    emulator.reset(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)


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


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest,
    emulator_server: EmulatorServer,
    account: Account,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """Starts the clean run and the selected points' runs, WORKERS at a time, in table order."""
    selected = selected_points(request.session)
    url = emulator_server.url
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        clean_dirs = RunDirs(tmp_path_factory.mktemp("clean"))
        clean = pool.submit(codat_sync, clean_dirs, url)
        points = {
            point.id: pool.submit(kill_and_rerun, RunDirs(tmp_path_factory.mktemp(point.id)), url, point)
            for point in POINTS
            if point.id in selected
        }
        yield Runs(clean_dirs, clean, points)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def clean(runs: Runs) -> Snapshot:
    """What one uninterrupted run leaves."""
    done = runs.clean.result()
    assert done.returncode == 0, done.stderr[-2000:]
    return snapshot(runs.clean_dirs)


def records(got: Snapshot, table: str) -> list[dict[str, Any]]:
    """A table's rows as dicts, each as often as it occurs."""
    return [dict(zip(got.columns[table], row, strict=True)) for row in got.rows[table].elements()]


def test_the_clean_run_holds_the_account(account: Account, clean: Snapshot) -> None:
    """The reference is checked against a model of its own, and has work in every phase to kill."""
    assert len(account.companies) == DEFAULT_SIZING.companies
    assert len(account.customers) == DEFAULT_SIZING.customers
    assert len(account.attachments) == len(account.files) == 121
    assert {key[0] for key in account.attachments} == set(account.companies)

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


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_killed_run_then_rerun_equals_a_clean_run(
    runs: Runs, account: Account, clean: Snapshot, point: KillPoint
) -> None:
    """Tables, views, files, state and `sync_status` after the rerun are the clean run's."""
    outcome = runs.points[point.id].result()
    killed, rerun = outcome.killed, outcome.rerun
    assert killed.returncode == -signal.SIGKILL, (
        f"{point.target} not called {point.call} times (exit {killed.returncode}): {killed.stderr[-2000:]}"
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
