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

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlt
import pytest
from dlt.common.destination import Destination

from connector.emulator.emulator import Emulator
from connector.placement import ShardPlan
from tests import children
from tests.shardtools import (
    WAIT_SECONDS,
    Database,
    Shard,
    dataset_customers,
    shard_processes,
    start_shard,
    wait_for,
)
from tests.synctools import codat_instant, expected_customers

A, B = 0, 1
SHARED_LAYOUT = "%s_staging"  # dlt's default: one staging dataset for every pipeline of the dataset


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
    plan: ShardPlan, layout: str | None, base_url: str, db: Database, started: list[children.Popen]
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
