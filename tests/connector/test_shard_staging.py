"""Two shards merging into one PostgreSQL dataset: a shared staging dataset loses a shard's rows.

dlt issue 4297: every pipeline of a dataset stages its merges in `<dataset>_staging`. A load
TRUNCATEs the staging tables it loads at its start, and the merge copies the whole staging table
into the dataset, without filtering by load id. The test forces, with table locks it holds and
releases itself, the one interleaving that shows it, with no sleep and no timing luck:

1. The test holds `LOCK TABLE <dataset>.customers IN SHARE MODE` (readers pass, writers wait).
2. Shard A (shard 0) truncates and fills its staging `customers`, committed, and waits in its
   merge (`DELETE FROM <dataset>.customers ... ; INSERT ...`) for the lock, before its merge
   has read its staging table: PostgreSQL locks a DELETE's target before the tables in its WHERE.
3. A second connection of the test asks for the same SHARE lock. It queues behind A's waiting
   request (ROW EXCLUSIVE conflicts with SHARE), and keeps the lock once A has committed.
4. Shard B (shard 1) truncates and fills its staging `customers`, and waits in its merge behind
   the second connection. With one staging dataset, B's TRUNCATE emptied A's staged rows.
5. The first lock goes: A merges what staging holds then, and finishes. Only then the second
   lock goes, and B merges.

With the shared layout A merges B's rows, not its own: A's customers are missing for good,
although A reported success and its cursor moved past them. With each shard's own staging
dataset (`ShardPlan.staging_layout`, what `run_shard` uses), the same interleaving keeps every row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlt
import pytest
from dlt.common.destination import Destination

from connector.emulator.emulator import Emulator
from connector.placement import ShardPlan
from connector.shards import prepare_dataset
from tests.postgres import PostgresServer
from tests.synctools import FAST_RETRIES, codat_instant, expected_customers, normalise, readable
from tests.utils import API_KEY, ROOT

SHARDS = 2
A, B = 0, 1
# seed, companies, customers: shard 0 of 2 gets one company (169 customers), shard 1 two (80, 51).
SIZING = (7, 3, 300)
WAIT_SECONDS = 60
POLL_SECONDS = 0.02
SHARED_LAYOUT = "%s_staging"  # dlt's default: one staging dataset for every pipeline of the dataset

# One shard's run in a child process; prints its summary as JSON on its last line of output.
CHILD = """
import json, logging, sys
import dlt
from dlt.common.destination import Destination
from connector.placement import ShardPlan
from connector.shards import run_shard
from connector.sync import run_sync
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
args = json.loads(sys.argv[1])
plan = ShardPlan(count=args["count"], dataset_name=args["dataset"], destination="postgres",
                 credentials=args["credentials"], pipelines_dir=args["pipelines_dir"],
                 shards_at_once=args["count"], requests_per_minute=1_000_000)
shard, options = args["shard"], args["options"]
if args["layout"] is None:
    summary = run_shard(plan, shard, **options)
else:
    destination = Destination.from_reference("postgres", credentials=args["credentials"],
                                             staging_dataset_name_layout=args["layout"])
    pipeline = dlt.pipeline(pipeline_name=plan.pipeline_name(shard), destination=destination,
                            dataset_name=plan.dataset_name, pipelines_dir=plan.pipelines_dir)
    summary = run_sync(pipeline, shards=plan.count, shard=shard, **options)
print(json.dumps({"exit_code": summary.exit_code(), "failed": summary.failed,
                  "status_rows": summary.status_rows, "interrupted": summary.interrupted}, default=str))
"""


@dataclass
class Shard:
    """A shard's run in a child process, and the name its PostgreSQL sessions carry."""

    shard: int
    name: str
    process: subprocess.Popen[str]
    log: str = ""  # what the run wrote on stderr, once it ended

    def summary(self) -> dict[str, Any]:
        """Wait for the run to end; its summary (it must have exited 0)."""
        out, self.log = self.process.communicate(timeout=WAIT_SECONDS)
        assert self.process.returncode == 0, (
            f"shard {self.shard} exited {self.process.returncode}:\n{self.log}"
        )
        return dict(json.loads(out.strip().splitlines()[-1]))


class Database:
    """The test's own sessions: one that reads, and one per lock it holds."""

    def __init__(self, postgres: PostgresServer, dataset: str) -> None:
        self.postgres = postgres
        self.dataset = dataset
        self.reader = postgres.connect()
        self.reader.autocommit = True
        self.locks: list[Any] = []

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.reader.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def lock_session(self) -> tuple[Any, int]:
        connection = self.postgres.connect()
        self.locks.append(connection)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return connection, int(cursor.fetchone()[0])

    def lock_statement(self) -> str:
        return f"LOCK TABLE {self.dataset}.customers IN SHARE MODE"

    def waiting(self, application: str) -> list[tuple[int, list[int], str]]:
        """(pid, blocking pids, query) of the application's sessions waiting for a lock."""
        found = self.rows(
            "SELECT pid, pg_blocking_pids(pid), query FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            application,
        )
        return [(pid, list(blockers), query) for pid, blockers, query in found]

    def close(self) -> None:
        for connection in [*self.locks, self.reader]:
            connection.close()


@contextmanager
def shard_processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started inside; killed if still running on the way out (a failed test)."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def make_plan(tmp_path: Path, postgres: PostgresServer) -> ShardPlan:
    """Two shards into a dataset of its own in the session's database."""
    return ShardPlan(
        count=SHARDS,
        dataset_name=f"codat_{uuid.uuid4().hex[:8]}",
        destination="postgres",
        credentials=postgres.url,
        pipelines_dir=str(tmp_path / "pipelines"),
        shards_at_once=SHARDS,
        requests_per_minute=1_000_000,
    )


def start_shard(
    plan: ShardPlan, shard: int, layout: str | None, base_url: str, started: list[subprocess.Popen[str]]
) -> Shard:
    """Run a shard in a child process: `run_shard` (layout None) or `run_sync` with that staging layout."""
    name = plan.pipeline_name(shard)
    args = {
        "count": plan.count,
        "dataset": plan.dataset_name,
        "credentials": f"{plan.credentials}?application_name={name}",
        "pipelines_dir": plan.pipelines_dir,
        "shard": shard,
        "layout": layout,
        "options": {"api_key": API_KEY, "base_url": base_url, **FAST_RETRIES},
    }
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    return Shard(shard, name, process)


def wait_for(found: Callable[[], Any], what: str, running: list[Shard]) -> Any:
    """Poll until `found()` is truthy; fail if it is not within WAIT_SECONDS or a shard exits first."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        for shard in running:
            if shard.process.poll() is not None:
                out, err = shard.process.communicate()
                pytest.fail(f"shard {shard.shard} exited before {what}:\n{out}{err[-3000:]}")
        time.sleep(POLL_SECONDS)
    pytest.fail(f"not within {WAIT_SECONDS} s: {what}")


def waiting_merge(db: Database, shard: Shard, blocker: int, running: list[Shard]) -> int:
    """Wait until the shard's merge into `customers` waits for a lock `blocker` holds; its pid."""
    merge = f'DELETE FROM "{db.dataset}"."customers"'

    def blocked() -> int | None:
        return next(
            (pid for pid, by, query in db.waiting(shard.name) if blocker in by and merge in query), None
        )

    return int(wait_for(blocked, f"{shard.name} waits in its merge for session {blocker}", running))


def staged_companies(db: Database, layout: str | None, plan: ShardPlan, shard: int) -> set[str]:
    """The companies in the shard's staging `customers` (its own, or the one `layout` names)."""
    staging = (layout or plan.staging_layout(shard)) % plan.dataset_name
    return {row[0] for row in db.rows(f"SELECT DISTINCT company_id FROM {staging}.customers")}


@dataclass
class Overlap:
    """What the forced interleaving left: both shards' summaries and what staging held meanwhile."""

    summaries: dict[int, dict[str, Any]]
    staged: dict[int, set[str]]  # companies in each shard's staging `customers` while both waited


def run_overlapping(
    plan: ShardPlan, layout: str | None, base_url: str, db: Database, started: list[subprocess.Popen[str]]
) -> Overlap:
    """Run shards A and B so that B stages its rows after A staged, before A merges (module docstring)."""
    first, first_pid = db.lock_session()
    first.cursor().execute(db.lock_statement())
    shard_a = start_shard(plan, A, layout, base_url, started)
    a_pid = waiting_merge(db, shard_a, first_pid, [shard_a])

    second, second_pid = db.lock_session()
    pool = ThreadPoolExecutor(max_workers=1)
    granted: Future[None] = pool.submit(second.cursor().execute, db.lock_statement())
    try:
        wait_for(
            lambda: db.rows("SELECT pg_blocking_pids(%s)", second_pid)[0][0] == [a_pid],
            "the second lock queues behind shard A's merge",
            [shard_a],
        )
        shard_b = start_shard(plan, B, layout, base_url, started)
        waiting_merge(db, shard_b, second_pid, [shard_a, shard_b])
        staged = {shard: staged_companies(db, layout, plan, shard) for shard in (A, B)}

        first.rollback()  # A merges, commits, and hands the lock to the second session
        granted.result(timeout=WAIT_SECONDS)
        summary_a = shard_a.summary()
        assert shard_b.process.poll() is None
        assert db.waiting(shard_b.name), "shard B merged before shard A had finished"
        second.rollback()
    finally:
        if not granted.done():  # the test failed: stop the wait, or the thread would never end
            second.cancel()
        pool.shutdown()
    return Overlap({A: summary_a, B: shard_b.summary()}, staged)


def shard_customers(emulator: Emulator, plan: ShardPlan) -> dict[int, set[str]]:
    """Each shard's companies that hold customers Codat has read."""
    companies: dict[int, set[str]] = {shard: set() for shard in range(plan.count)}
    for company in readable(emulator):
        if company.customers:
            companies[plan.shard_of(company.id)].add(company.id)
    return companies


def dataset_customers(db: Database) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
    """The rows of the dataset's `customers`, and its customers by key as `expected_customers` maps them."""
    cursor = db.reader.cursor()
    cursor.execute(
        "SELECT company_id, id, customer_name, default_currency, status, is_deleted, "
        f"modified_date, supplemental_data FROM {db.dataset}.customers"
    )
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    return len(rows), normalise({(r[0], r[1]): dict(zip(names, r, strict=True)) for r in rows})


def destination_cursors(plan: ShardPlan, shard: int, tmp_path: Path) -> dict[str, Any]:
    """The shard's per-company cursors as a new worker restores them from the destination."""
    pipeline = dlt.pipeline(
        pipeline_name=plan.pipeline_name(shard),
        destination=Destination.from_reference("postgres", credentials=plan.credentials),
        dataset_name=plan.dataset_name,
        pipelines_dir=str(tmp_path / "restored"),
    )
    pipeline.sync_destination()
    return dict(pipeline.state["sources"]["codat"]["cursors"])


def assert_reported_success(summary: dict[str, Any], companies: set[str], emulator: Emulator) -> None:
    """The run ended with exit code 0, and says it loaded every customer of its companies."""
    assert summary["exit_code"] == 0
    assert summary["failed"] == []
    loaded = {row["company_id"]: row["customers_loaded"] for row in summary["status_rows"]}
    assert loaded == {c: len(emulator.store.companies[c].customers) for c in companies}


@pytest.fixture
def sharded(emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer) -> Iterator[Any]:
    """A plan whose tables exist (the orchestrator's first step), the test's sessions, shards' companies."""
    emulator.reset(*SIZING)
    plan = make_plan(tmp_path, postgres)
    companies = shard_customers(emulator, plan)
    assert all(companies.values()), f"a shard without customers proves nothing: {companies}"
    assert "customers" in prepare_dataset(plan)
    db = Database(postgres, plan.dataset_name)
    try:
        yield plan, db, companies
    finally:
        db.close()


@pytest.mark.postgres
def test_shared_staging_dataset_loses_the_rows_of_a_shard_that_reported_success(
    emulator: Emulator, base_url: str, tmp_path: Path, sharded: Any
) -> None:
    plan, db, companies = sharded

    with shard_processes() as started:
        overlap = run_overlapping(plan, SHARED_LAYOUT, base_url, db, started)

    # While both waited, the one staging table held B's rows only: B's TRUNCATE emptied A's.
    assert overlap.staged == {A: companies[B], B: companies[B]}
    assert_reported_success(overlap.summaries[A], companies[A], emulator)
    assert_reported_success(overlap.summaries[B], companies[B], emulator)
    expected = expected_customers(emulator)
    rows, loaded = dataset_customers(db)
    assert loaded == {key: row for key, row in expected.items() if key[0] in companies[B]}  # none of A's
    assert rows == len(loaded)
    # A's cursors, stored in the destination, stand past the customers it lost: no run reads them again.
    cursors = destination_cursors(plan, A, tmp_path)
    for company in companies[A]:
        newest = max(row["modified_date"] for key, row in expected.items() if key[0] == company)
        assert codat_instant(cursors[company]["cursor"]) == newest


@pytest.mark.postgres
def test_per_shard_staging_datasets_keep_every_row(emulator: Emulator, base_url: str, sharded: Any) -> None:
    plan, db, companies = sharded

    with shard_processes() as started:
        overlap = run_overlapping(plan, None, base_url, db, started)

    assert overlap.staged == companies
    assert_reported_success(overlap.summaries[A], companies[A], emulator)
    assert_reported_success(overlap.summaries[B], companies[B], emulator)
    rows, loaded = dataset_customers(db)
    assert loaded == expected_customers(emulator)
    assert rows == len(loaded)
