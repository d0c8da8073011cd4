"""Helpers for shard tests: shard runs in child processes, the test's PostgreSQL sessions, reading back.

Fixtures built on them (`sharded`, `scratch`) live in `conftest.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dlt
import pytest
from dlt.destinations.exceptions import DatabaseException

from connector.emulator.emulator import Emulator
from connector.placement import ShardPlan
from tests import children
from tests.postgres import PostgresServer
from tests.synctools import FAST_RETRIES, normalise, readable
from tests.utils import API_KEY, ROOT

SHARDS = 2
# seed, companies, customers: shard 0 of 2 gets one company (169 customers), shard 1 two (80, 51).
SIZING = (7, 3, 300)
WAIT_SECONDS = 60
POLL_SECONDS = 0.02

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
plan = ShardPlan(**args["plan"])
shard, options = args["shard"], args["options"]
if args["layout"] is None:
    summary = run_shard(plan, shard, **options)
else:
    destination = Destination.from_reference("postgres", credentials=plan.credentials,
                                             staging_dataset_name_layout=args["layout"])
    pipeline = dlt.pipeline(pipeline_name=plan.pipeline_name(shard), destination=destination,
                            dataset_name=plan.dataset_name, pipelines_dir=plan.pipelines_dir)
    summary = run_sync(pipeline, shards=plan.count, shard=shard, **options)
print(json.dumps({"exit_code": summary.exit_code(), "failed": summary.failed,
                  "status_rows": summary.status_rows, "interrupted": summary.interrupted}, default=str))
"""


def run_child(args: list[str]) -> children.Popen:
    """`python ARGS` in the repository, its output piped: a worker, as the tests start one."""
    return children.Popen(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def child_outcome(process: children.Popen, timeout: float) -> tuple[dict[str, Any], str]:
    """Wait for a child to end: the JSON object on its last line of output, and its stderr.

    Fails the test, with the child's output, if the last line is not a JSON object.
    """
    out, err = process.communicate(timeout=timeout)
    last = (out.strip().splitlines() or [""])[-1]
    assert last.startswith("{"), f"exit {process.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    return dict(json.loads(last)), err


def source_options(base_url: str, **more: Any) -> dict[str, Any]:
    """The `codat_source` options of a shard run against the emulator at `base_url`."""
    return {"api_key": API_KEY, "base_url": base_url, **FAST_RETRIES, **more}


def postgres_plan(tmp_path: Path, postgres: PostgresServer, count: int, dataset: str = "") -> ShardPlan:
    """`count` shards, all running at once, into `dataset` (by default one of its own) of the database."""
    return ShardPlan(
        count=count,
        destination="postgres",
        credentials=postgres.url,
        dataset_name=dataset or f"codat_{uuid.uuid4().hex[:8]}",
        pipelines_dir=str(tmp_path / "worker"),
        shards_at_once=count,
        requests_per_minute=1_000_000,
    )


@dataclass
class Shard:
    """A shard's run in a child process, and the name its PostgreSQL sessions carry."""

    shard: int
    name: str
    process: children.Popen
    log: str = ""  # what the run wrote on stderr, once it ended

    def summary(self) -> dict[str, Any]:
        """Wait for the run to end; its summary (it must have exited 0)."""
        summary, self.log = child_outcome(self.process, WAIT_SECONDS)
        assert self.process.returncode == 0, (
            f"shard {self.shard} exited {self.process.returncode}:\n{self.log}"
        )
        return summary


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
def shard_processes() -> Iterator[list[children.Popen]]:
    """Child processes started inside; killed if still running on the way out (a failed test)."""
    started: list[children.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def start_shard(
    plan: ShardPlan, shard: int, layout: str | None, base_url: str, started: list[children.Popen]
) -> Shard:
    """Run a shard in a child process: `run_shard` (layout None) or `run_sync` with that staging layout."""
    name = plan.pipeline_name(shard)
    args = {
        "plan": {**asdict(plan), "credentials": f"{plan.credentials}?application_name={name}"},
        "shard": shard,
        "layout": layout,
        "options": source_options(base_url),
    }
    process = run_child(["-c", CHILD, json.dumps(args)])
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


class Scratch:
    """A dataset of the test's own, reached through dlt's SQL client and the test's sessions."""

    def __init__(self, postgres: PostgresServer, tmp_path: Path) -> None:
        self.dataset = f"race_{uuid.uuid4().hex[:8]}"
        self.application = f"scratch_{self.dataset}"
        self.pipeline = dlt.pipeline(
            pipeline_name=self.application,
            destination=dlt.destinations.postgres(
                credentials=f"{postgres.url}?application_name={self.application}"
            ),
            dataset_name=self.dataset,
            pipelines_dir=str(tmp_path / "pipelines"),
        )
        self.db = Database(postgres, self.dataset)

    def sql(self, statement: str) -> None:
        with self.pipeline.sql_client() as client:
            client.execute_sql(statement)

    def error(self, statement: str) -> DatabaseException:
        """The error dlt's SQL client raises on `statement`."""
        with pytest.raises(DatabaseException) as caught:
            self.sql(statement)
        return caught.value

    def error_behind(self, held: str, action: Callable[[], Any]) -> BaseException:
        """The error `action` raises when it waits behind `held`, run uncommitted by another session."""
        holder, holder_pid = self.db.lock_session()
        holder.cursor().execute(held)
        pool = ThreadPoolExecutor(max_workers=1)
        running = pool.submit(action)

        def waits() -> bool:
            assert not running.done(), f"it ended before waiting behind {held!r}: {running.exception()}"
            return any(holder_pid in by for _, by, _ in self.db.waiting(self.application))

        try:
            wait_for(waits, f"the statement waits behind {held!r}", [])
            holder.commit()
            error = running.exception(timeout=60)
        finally:
            holder.rollback()  # after a failure: let the statement go on, so the thread ends
            pool.shutdown()
        assert error is not None, f"nothing failed behind {held!r}"
        return error
