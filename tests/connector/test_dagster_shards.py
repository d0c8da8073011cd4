"""Company shards on Dagster: every shard materialized in parallel processes, as workers would.

Each materialization is `dagster.materialize(..., partition_key=...)` in a child process
(`tests/shardrun.py`), against the emulator as a real HTTP server, into a real PostgreSQL
dataset or real DuckDB files. No Dagster daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from connector.emulator.emulator import Emulator
from connector.orchestration import (
    DATASET_ASSET,
    QUEUED_TAG,
    TABLE_RESOURCES,
    asset_names,
    codat_definitions,
    take_off_queue,
)
from connector.placement import ShardPlan
from connector.shards import combined_duckdb, run_shard
from connector.source import codat_source
from connector.syncqueue import SyncQueue
from tests import children
from tests.postgres import PostgresServer
from tests.shardtools import Database, child_outcome, postgres_plan, run_child, source_options
from tests.synctools import attachment_keys, codat_instant, readable
from tests.utils import ROOT

SHARDS = 3
# Seed 11 with 8 companies spreads the readable ones over all 3 shards (asserted by `account`).
SEED, COMPANIES, CUSTOMERS = 11, 8, 800
RUN_TIMEOUT = 240
CUSTOMER_ROWS = """
    SELECT company_id, id, customer_name, status, is_deleted, modified_date AT TIME ZONE 'UTC'
    FROM {prefix}customers"""
ATTACHMENT_ROWS = "SELECT company_id, connection_id, customer_id, id FROM {prefix}customer_attachments"
CURRENT_ROWS = (
    "SELECT company_id, id, customer_name, billing_line1, main_contact_name FROM {prefix}customers_current"
)
COUNTED = ("customers__addresses", "customers__contacts", "customers__contacts__phone", "companies")


def account(emulator: Emulator) -> dict[int, list[str]]:
    """The readable companies of the test account by shard; every shard has some."""
    emulator.reset(SEED, COMPANIES, CUSTOMERS)
    by_shard: dict[int, list[str]] = {}
    for company in readable(emulator):
        by_shard.setdefault(ShardPlan(count=SHARDS).shard_of(company.id), []).append(company.id)
    assert sorted(by_shard) == list(range(SHARDS)), f"a shard without companies: {by_shard}"
    return by_shard


def duckdb_plan(tmp_path: Path, count: int = SHARDS, worker: str = "worker") -> ShardPlan:
    return ShardPlan(
        count=count,
        duckdb_folder=str(tmp_path / "shards"),
        pipelines_dir=str(tmp_path / worker),
        shards_at_once=count,
        requests_per_minute=1_000_000,
    )


def spec_file(tmp_path: Path, plan: ShardPlan, base_url: str, **source: Any) -> Path:
    path = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"plan": asdict(plan), "source": source_options(base_url, **source)}))
    return path


def start(spec: Path, key: str, kill: tuple[str, int] | None = None) -> children.Popen:
    """A worker process materializing one partition (`dataset` for the tables asset)."""
    return run_child(["-m", "tests.shardrun", str(spec), key, *map(str, kill or ())])


def outcome(process: children.Popen) -> dict[str, Any]:
    """The worker's outcome line; fails the test with its output if there is none."""
    return child_outcome(process, RUN_TIMEOUT)[0]


def materialize_all(spec: Path, plan: ShardPlan) -> dict[str, dict[str, Any]]:
    """The tables first, then every shard in parallel processes; each must succeed."""
    first = outcome(start(spec, "dataset"))
    assert first["success"], first["error"]
    workers = {key: start(spec, key) for key in plan.partition_keys()}
    results = {key: outcome(process) for key, process in workers.items()}
    for key, result in results.items():
        assert result["success"], f"shard {key}: {result['error']}"
    return results


def expected_rows(emulator: Emulator) -> dict[str, Any]:
    """What every table must hold, from the emulator's own records (the connector not involved)."""
    customers = []
    for company in readable(emulator):
        for record in company.customers.values():
            metadata = record.get("metadata") or {}
            customers.append(
                (
                    company.id,
                    str(record["id"]),
                    record.get("customerName"),
                    record.get("status"),
                    bool(metadata.get("isDeleted")),
                    codat_instant(record.get("modifiedDate")),
                )
            )
    return {
        "customers": sorted(customers, key=str),
        "customer_attachments": sorted(attachment_keys(emulator)),
    }


def read(execute: Callable[[str], list[tuple[Any, ...]]], prefix: str) -> dict[str, Any]:
    """The compared rows of a dataset (`prefix` is `dataset.` or empty for the combined view)."""

    def rows(query: str) -> list[tuple[Any, ...]]:
        found = [tuple(_utc(v) for v in row) for row in execute(query.format(prefix=prefix))]
        return sorted(found, key=str)

    snap: dict[str, Any] = {
        "customers": rows(CUSTOMER_ROWS),
        "customer_attachments": rows(ATTACHMENT_ROWS),
        "customers_current": rows(CURRENT_ROWS),
    }
    for table in COUNTED:
        snap[table] = execute(f"SELECT COUNT(*) FROM {prefix}{table}")[0][0]
    return snap


def _utc(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


def read_postgres(pg: PostgresServer, dataset: str) -> dict[str, Any]:
    db = Database(pg, dataset)
    try:
        return read(db.rows, f"{dataset}.")
    finally:
        db.close()


def read_shard_files(plan: ShardPlan) -> dict[str, Any]:
    con = combined_duckdb(plan)
    try:
        return read(lambda query: con.execute(query).fetchall(), "")
    finally:
        con.close()


def assert_equals_api(snap: dict[str, Any], emulator: Emulator) -> None:
    expected = expected_rows(emulator)
    keys = [row[:2] for row in snap["customers"]]
    assert len(keys) == len(set(keys)), "a customer loaded twice"
    by_company = {c.id for c in readable(emulator)}
    for company_id in sorted(by_company):
        got = [row for row in snap["customers"] if row[0] == company_id]
        want = [row for row in expected["customers"] if row[0] == company_id]
        assert got == want, f"company {company_id} differs from the API"
    assert snap["customers"] == expected["customers"]
    assert snap["customer_attachments"] == expected["customer_attachments"]


def change_account(emulator: Emulator, by_shard: dict[int, list[str]]) -> None:
    """Modify, delete and add customers in a company of every shard."""
    for companies in by_shard.values():
        emulator.store.mutate(companies[0], "modify", count=5)
        emulator.store.mutate(companies[0], "delete", count=2)
        emulator.store.mutate(companies[0], "add", count=3)


@pytest.mark.postgres
def test_every_shard_in_parallel_into_postgres_equals_the_api_then_incrementally(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    by_shard = account(emulator)
    plan = postgres_plan(tmp_path, postgres, SHARDS)
    spec = spec_file(tmp_path, plan, base_url)

    first = materialize_all(spec, plan)
    snap = read_postgres(postgres, plan.dataset_name)
    assert_equals_api(snap, emulator)
    every = [plan.key(plan.shard_of(company_id)) for company_id in emulator.store.companies]
    assert {key: r["metadata"]["companies"] for key, r in first.items()} == {
        key: every.count(key) for key in plan.partition_keys()
    }
    assert sum(r["metadata"]["companies"] for r in first.values()) == COMPANIES

    change_account(emulator, by_shard)
    emulator.clear_log()
    again = materialize_all(spec, plan)

    assert_equals_api(read_postgres(postgres, plan.dataset_name), emulator)
    # Incremental: each shard read one page, its changed company's changed customers; the
    # companies nobody changed were not read, those Codat has not read yet were asked again.
    changed = {"customers_new": 3, "customers_updated": 5, "customers_deleted": 2}
    for key, result in again.items():
        assert {name: result["metadata"][name] for name in changed} == changed, key
    not_read = [
        c
        for c in emulator.store.companies.values()
        if c.accounting_connections and c not in readable(emulator)
    ]
    assert emulator.stats()["by_operation"].get("list-customers") == SHARDS + len(not_read)


@pytest.mark.postgres
def test_a_shard_killed_mid_load_is_exact_after_its_rerun(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    by_shard = account(emulator)
    plan = postgres_plan(tmp_path, postgres, SHARDS)
    spec = spec_file(tmp_path, plan, base_url, page_size=50)
    materialize_all(spec, plan)
    change_account(emulator, by_shard)

    # Shard 01 dies after its first load job, before its package (and state) is complete.
    killed = start(spec, plan.key(1), ("dlt.load.load:Load.submit_job", 2))
    killed.communicate(timeout=RUN_TIMEOUT)
    assert killed.returncode == -9, f"the shard was not killed (exit {killed.returncode})"
    # A fresh worker (another pipelines folder) takes the shard over.
    other_worker = ShardPlan(**{**asdict(plan), "pipelines_dir": str(tmp_path / "other-worker")})
    rerun = outcome(start(spec_file(tmp_path, other_worker, base_url, page_size=50), plan.key(1)))
    assert rerun["success"], rerun["error"]
    others = [start(spec, key) for key in plan.partition_keys() if key != plan.key(1)]
    assert all(outcome(p)["success"] for p in others)

    assert_equals_api(read_postgres(postgres, plan.dataset_name), emulator)


@pytest.mark.postgres
def test_duckdb_shard_files_read_as_one_equal_the_postgres_dataset(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    by_shard = account(emulator)
    pg_plan = postgres_plan(tmp_path, postgres, SHARDS)
    files_plan = duckdb_plan(tmp_path)
    pg_spec = spec_file(tmp_path, pg_plan, base_url)
    files_spec = spec_file(tmp_path, files_plan, base_url)
    materialize_all(pg_spec, pg_plan)
    materialize_all(files_spec, files_plan)
    change_account(emulator, by_shard)
    materialize_all(pg_spec, pg_plan)
    materialize_all(files_spec, files_plan)

    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        f"codat_shard_{key}_of_{SHARDS}.duckdb" for key in files_plan.partition_keys()
    ]
    from_files = read_shard_files(files_plan)
    assert from_files == read_postgres(postgres, pg_plan.dataset_name)
    assert_equals_api(from_files, emulator)
    assert all(from_files[table] > 0 for table in COUNTED), from_files


def test_cursors_survive_a_worker_that_starts_without_local_state(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    by_shard = account(emulator)
    first_worker = duckdb_plan(tmp_path, worker="worker-a")
    materialize_all(spec_file(tmp_path, first_worker, base_url), first_worker)
    shard = 0
    emulator.store.mutate(by_shard[shard][0], "add", count=4)
    emulator.clear_log()
    second_worker = duckdb_plan(tmp_path, worker="worker-b")
    assert not Path(second_worker.pipelines_dir or "").exists()

    result = outcome(start(spec_file(tmp_path, second_worker, base_url), second_worker.key(shard)))

    assert result["success"], result["error"]
    assert result["metadata"]["customers_new"] == 4
    assert result["metadata"]["customers_updated"] == 0
    # From the cursors on: one page for the changed company; the other, unchanged since, is not read.
    assert len(by_shard[shard]) == 2
    assert emulator.stats()["by_operation"].get("list-customers") == 1, emulator.stats()["by_operation"]
    assert result["metadata"]["statuses"] == {"ok": 1, "unchanged": 1}
    assert_equals_api(read_shard_files(second_worker), emulator)


def test_the_shard_files_answer_a_query_from_the_command_line(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    account(emulator)
    plan = duckdb_plan(tmp_path)
    materialize_all(spec_file(tmp_path, plan, base_url), plan)
    expected = expected_rows(emulator)["customers"]
    env = {**os.environ, "SHARDS__COUNT": str(SHARDS), "SHARDS__DUCKDB_FOLDER": plan.duckdb_folder}
    command = [sys.executable, "-m", "connector.shards"]

    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return children.run(
            [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    counted = query("SELECT count(*) AS n, count(DISTINCT company_id) AS c FROM customers")
    wrong = query("SELECT no_such_column FROM customers")
    elsewhere = children.run(
        [*command, "SELECT 1"],
        cwd=ROOT,
        env={**env, "SHARDS__DUCKDB_FOLDER": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert counted.returncode == 0, counted.stderr
    cells = [line.split("│")[1:3] for line in counted.stdout.splitlines() if line.startswith("│")]
    companies = {row[0] for row in expected}
    assert [cell.strip() for cell in cells[-1]] == [str(len(expected)), str(len(companies))]
    assert wrong.returncode == 2
    assert "no_such_column" in wrong.stderr
    assert elsewhere.returncode == 2
    assert f"no shard file in {tmp_path / 'empty'}: materialize the shards first" in elsewhere.stderr


@pytest.mark.postgres
def test_a_different_shard_count_is_refused_and_changes_nothing(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    account(emulator)
    plan = postgres_plan(tmp_path, postgres, SHARDS)
    materialize_all(spec_file(tmp_path, plan, base_url), plan)
    before = read_postgres(postgres, plan.dataset_name)
    emulator.clear_log()

    for count in (2, 4):
        moved = postgres_plan(tmp_path, postgres, count=count, dataset=plan.dataset_name)
        spec = spec_file(tmp_path, moved, base_url)
        refused = [outcome(start(spec, "dataset")), outcome(start(spec, moved.key(count - 1)))]
        for result in refused:
            assert not result["success"]
            assert f"was loaded in {SHARDS} shards" in result["error"], result["error"]
            assert f"keep the shard count at {SHARDS}" in result["error"]

    assert emulator.stats()["requests"] == 0
    assert read_postgres(postgres, plan.dataset_name) == before


def test_a_different_shard_count_is_refused_for_duckdb_files(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    account(emulator)
    plan = duckdb_plan(tmp_path)
    materialize_all(spec_file(tmp_path, plan, base_url), plan)
    moved = duckdb_plan(tmp_path, count=SHARDS + 1)

    result = outcome(start(spec_file(tmp_path, moved, base_url), moved.key(SHARDS)))

    assert not result["success"]
    assert f"the folder {moved.duckdb_folder} was loaded in {SHARDS} shards" in result["error"]
    assert not moved.duckdb_file(SHARDS).exists()


@contextmanager
def dagster_signals_undone() -> Iterator[None]:
    """Put back the signal handlers Dagster's in-process instance replaces.

    It maps SIGTERM to SIGINT's handler, which in a background job (CI) is "ignore": every
    process the test session starts afterwards would then ignore SIGTERM too.
    """
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_the_nightly_schedule_starts_every_shard_once_a_night(tmp_path: Path) -> None:
    plan = duckdb_plan(tmp_path, count=4)
    defs = codat_definitions(plan)
    schedule = defs.resolve_schedule_def("codat_nightly")
    assert schedule.cron_schedule == "0 2 * * *"

    night = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    with (
        dagster_signals_undone(),
        dg.build_schedule_context(
            scheduled_execution_time=night, repository_def=defs.get_repository_def()
        ) as context,
    ):
        requests = list(schedule.evaluate_tick(context).run_requests or [])

    assert [r.partition_key for r in requests] == ["00", "01", "02", "03"]
    assert [r.run_key for r in requests] == [f"2026-11-21-0{i}" for i in range(4)]


def test_the_definitions_name_a_partitioned_asset_per_table_after_the_dataset(tmp_path: Path) -> None:
    defs = codat_definitions(duckdb_plan(tmp_path, count=16))
    graph = defs.resolve_asset_graph()
    tables = {"companies", "connections", "customers", "customer_attachments"}

    assert set(graph.get_all_asset_keys()) == {DATASET_ASSET} | {dg.AssetKey(["codat", t]) for t in tables}
    for table in tables:
        node = graph.get(dg.AssetKey(["codat", table]))
        assert node.parent_keys == {DATASET_ASSET}
        assert node.partitions_def is not None
        assert node.partitions_def.get_partition_keys() == [f"{i:02d}" for i in range(16)]
        assert node.pools == {"codat_api"}


def test_dagster_loads_the_pipelines_file(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SHARDS__COUNT": "5",
        "SHARDS__DUCKDB_FOLDER": str(tmp_path / "s"),
        "DAGSTER_HOME": str(tmp_path),
    }
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "list", "-f", "pipelines/dagster_defs.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr[-3000:]
    assert sorted(listed.stdout.split()) == sorted(
        [
            "codat/dataset",
            "codat/companies",
            "codat/connections",
            "codat/customers",
            "codat/customer_attachments",
        ]
    )


def test_a_bad_setting_fails_the_shard_run_not_the_definitions_and_loading_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", "any key")
    monkeypatch.setenv("SOURCES__CODAT__PAGE_SIZE", "many")
    plan = duckdb_plan(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    defs = codat_definitions(plan)
    graph = defs.resolve_asset_graph()
    written = sorted(tmp_path.rglob("*"))
    result = dg.materialize(
        [defs.get_assets_def(dg.AssetKey(["codat", "customers"]))],
        partition_key="00",
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    failures = [event for event in result.all_events if event.is_step_failure]

    assert before == [tmp_path / "cwd"]
    assert written == before
    assert dg.AssetKey(["codat", "customers"]) in graph.get_all_asset_keys()
    assert not result.success
    assert len(failures) == 1
    error = failures[0].step_failure_data.error
    assert error is not None
    assert "InvalidOption: page_size (SOURCES__CODAT__PAGE_SIZE) must be a whole number; got 'many'" in str(
        error.message
    ) + str(error.cause.message if error.cause else "")


def test_the_asset_names_are_the_sources_own_resources() -> None:
    resources = codat_source(api_key="only names its resources").resources

    assert set(TABLE_RESOURCES) <= set(resources)
    assert {r.name: r.table_name for r in asset_names().resources.values()} == {t: t for t in TABLE_RESOURCES}


def test_the_webhook_sensor_starts_the_shards_of_queued_companies_once(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    plan = duckdb_plan(tmp_path, count=4)
    by_shard: dict[int, list[str]] = {}
    for company in readable(emulator):
        by_shard.setdefault(plan.shard_of(company.id), []).append(company.id)
    assert len(by_shard) >= 2, f"companies in two shards at least: {by_shard}"
    one, two = sorted(by_shard.items())[:2]
    queued = [one[1][0], two[1][0]]
    queue = SyncQueue(tmp_path / "queue.sqlite")
    queue.record("msg_1", "read.completed", queued)
    defs = codat_definitions(plan, queue_file=str(queue.path), debounce=0.0)
    sensor = defs.resolve_sensor_def("codat_webhooks")

    def tick() -> list[dg.RunRequest]:
        with (
            dagster_signals_undone(),
            dg.build_sensor_context(repository_def=defs.get_repository_def()) as context,
        ):
            return list(sensor.evaluate_tick(context).run_requests or [])

    requests = tick()
    keys = plan.partition_keys()
    assert [r.partition_key for r in requests] == [keys[one[0]], keys[two[0]]]
    assert [json.loads(r.tags[QUEUED_TAG]) for r in requests] == [{queued[0]: 1}, {queued[1]: 1}]
    assert [r.run_key for r in tick()] == [r.run_key for r in requests], (
        "asked again while under way: one run"
    )

    summary = run_shard(plan, one[0], **source_options(base_url))  # the run the first request starts
    take_off_queue(queue, requests[0].tags, summary)
    assert [q.company_id for q in queue.pending()] == [queued[1]]
    assert [r.partition_key for r in tick()] == [keys[two[0]]]


def test_without_a_queue_there_is_no_webhook_sensor(tmp_path: Path) -> None:
    defs = codat_definitions(duckdb_plan(tmp_path, count=4))
    assert [s.name for s in defs.sensors or []] == []
