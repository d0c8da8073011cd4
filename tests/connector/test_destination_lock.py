"""One warehouse, one writer: the destination lock, and the DuckDB file taken by another process mid-run.

A run is parked at a chosen call (`HOOKED` below) until the test lets it go: the first of two
runs holds its locks while the second starts, or a run waits while the test opens its DuckDB
file from another process. No sleeps, no timing luck.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from connector.destinations import duckdb_destination, duckdb_lock_problem
from connector.emulator.emulator import Emulator
from connector.errors import DestinationLocked
from connector.lock import advisory_key, destination_lock, duckdb_lock_path
from connector.placement import ShardPlan
from tests import children
from tests.postgres import PostgresServer
from tests.shardtools import WAIT_SECONDS, Database, dataset_customers, source_options, wait_for
from tests.synctools import (
    attachment_keys,
    database_customers,
    database_rows,
    expected_customers,
    hold_duckdb_file,
    normalise,
    requests_by,
)
from tests.utils import API_KEY, ROOT

# `codat-sync` (or a shard's `run_shard`) with one callable parked: on its `call`-th call it
# creates the file `reached`, waits for the file `go`, then goes on.
HOOKED = """
import importlib, json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
module, _, path = args["target"].partition(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original, calls = getattr(owner, name), [0]
def parked(*a, **k):
    calls[0] += 1
    if calls[0] == args["call"]:
        Path(args["reached"]).touch()
        deadline = time.monotonic() + 120
        while not Path(args["go"]).exists():
            if time.monotonic() > deadline:
                raise SystemExit("never told to go")
            time.sleep(0.02)
    return original(*a, **k)
setattr(owner, name, parked)
if "argv" in args:
    from connector.cli import main
    raise SystemExit(main(args["argv"]))
from connector.errors import CodatError
from connector.placement import ShardPlan
from connector.shards import run_shard
try:
    summary = run_shard(ShardPlan(**args["plan"]), args["shard"], **args["options"])
except CodatError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(5)
print(json.dumps({"exit_code": summary.exit_code(), "failed": summary.failed}))
"""
LIST_COMPANIES = "connector.client:CodatClient.list_companies"  # a run's first request
HOLDER = re.compile(r"pid (\d+), started [0-9: -]+ UTC on host \S+, pipeline (\w+)")
DUCKDB_BUSY = re.compile(
    rf"^codat-sync: another codat-sync run \({HOLDER.pattern}\) holds the DuckDB file (\S+); "
    r"this run did nothing \(lock file (\S+)\)\n$"
)
POSTGRES_BUSY = re.compile(
    rf"^codat-sync: another codat-sync run \({HOLDER.pattern}, PostgreSQL session \d+\) holds the "
    r"dataset (\w+) of PostgreSQL database (\w+); this run did nothing \(advisory lock -?\d+\)\n$"
)


@dataclass
class Parked:
    """A run in a child process that waits at a call until `release`."""

    process: children.Popen
    reached: Path
    go: Path

    def wait_parked(self) -> None:
        def parked() -> bool:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                pytest.fail(f"the run exited {self.process.returncode} before it was parked:\n{out}{err}")
            return self.reached.exists()

        wait_for(parked, "the run is parked", [])

    def release(self) -> tuple[int, str, str]:
        """Let it go on; its exit code, stdout and stderr once it ends."""
        self.go.touch()
        out, err = self.process.communicate(timeout=WAIT_SECONDS)
        return self.process.returncode, out, err


@pytest.fixture
def started() -> Iterator[list[children.Popen]]:
    """Child processes started by the test; killed if still running on the way out."""
    processes: list[children.Popen] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def environment(base_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """A child's environment against the emulator at `base_url`, with dlt's data in `data_dir`."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "SOURCES__CODAT__BACKOFF_FACTOR": "0.01",
        "DLT_DATA_DIR": str(data_dir),
        "DLT_PROJECT_DIR": str(data_dir),
        **settings,
    }


def command(pipeline: str, pipelines_dir: Path, *destination: str) -> list[str]:
    return ["--quiet", "--pipeline-name", pipeline, "--pipelines-dir", str(pipelines_dir), *destination]


def parked(
    tmp_path: Path,
    env: dict[str, str],
    started: list[children.Popen],
    target: str,
    call: int,
    **args: Any,
) -> Parked:
    """Start a run parked at `target`: `argv` for `codat-sync`, or a shard's `plan`, `shard`, `options`."""
    folder = tmp_path / f"park_{len(started)}"
    folder.mkdir()
    reached, go = folder / "reached", folder / "go"
    hook = {"target": target, "call": call, "reached": str(reached), "go": str(go), **args}
    process = children.Popen(
        [sys.executable, "-c", HOOKED, json.dumps(hook)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    return Parked(process, reached, go)


def codat_sync(tmp_path: Path, env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return children.run(
        [sys.executable, "-m", "connector.cli", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 3,
    )


def assert_exact(database: Path, emulator: Emulator) -> None:
    """The DuckDB file holds what a clean run leaves: every customer and attachment once, the views."""
    assert normalise(database_customers(database)) == expected_customers(emulator)
    listed = database_rows(
        database, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert sorted(listed) == sorted(attachment_keys(emulator))
    assert database_rows(
        database, "SELECT COUNT(*) - COUNT(DISTINCT (load_id, company_id)) FROM codat.sync_status"
    ) == [(0,)]
    current = database_rows(database, "SELECT COUNT(*) FROM codat.customers_current")
    assert current == [(sum(not row["is_deleted"] for row in expected_customers(emulator).values()),)]


# -- two pipelines, one warehouse --------------------------------------------------------------


def test_two_pipelines_on_one_duckdb_file_cannot_hold_it_at_once(tmp_path: Path) -> None:
    database = tmp_path / "wh.duckdb"

    def pipeline(name: str) -> dlt.Pipeline:
        return dlt.pipeline(
            pipeline_name=name,
            destination=duckdb_destination(database),
            dataset_name="codat",
            pipelines_dir=str(tmp_path / name),
        )

    first, second = pipeline("first"), pipeline("second")
    with destination_lock(first):
        named = json.loads(duckdb_lock_path(database).read_text())
        with pytest.raises(DestinationLocked) as busy, destination_lock(second):
            pass
    with destination_lock(second):  # let go: the next takes it
        pass

    assert named["pid"] == os.getpid()
    assert named["pipeline"] == "first"
    assert str(busy.value).startswith(f"another codat-sync run (pid {os.getpid()}, started ")
    assert f", pipeline first) holds the DuckDB file {database}; this run did nothing" in str(busy.value)
    assert not duckdb_lock_path(database).exists()
    assert not database.exists()  # the lock never opens the DuckDB file


def test_destinations_without_a_lock_are_not_locked(tmp_path: Path) -> None:
    pipeline = dlt.pipeline(
        pipeline_name="files",
        destination=dlt.destinations.filesystem(str(tmp_path / "bucket")),
        dataset_name="codat",
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    with destination_lock(pipeline), destination_lock(pipeline):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipelines"]


def test_duckdb_lock_is_found_when_a_wrapper_kept_only_its_text() -> None:
    text = (
        'IO Error: Could not set lock on file "/data/wh.duckdb": Conflicting lock is held in '
        "/usr/bin/duckdb (PID 42) by user ana. However, you would be able to open this database in "
        "read-only mode, e.g. by using the -readonly parameter in the CLI."
    )
    wrapped = RuntimeError(f"Job for customers.parquet failed terminally: {text}")

    assert duckdb_lock_problem(wrapped) == (
        "the DuckDB file /data/wh.duckdb is locked by pid 42 (/usr/bin/duckdb), which has it open "
        "read-only; close that session and run again"
    )
    assert duckdb_lock_problem(RuntimeError("IO Error: No space left on device")) is None


def test_advisory_keys_are_the_same_in_every_process() -> None:
    # blake2b of the database, dataset and part, not Python's salted `hash`: fixed values
    assert advisory_key("codat_test", "codat") == -6392917623943530290
    assert advisory_key("codat_test", "codat", "shard 1 of 2") == 3711554519274914745
    assert advisory_key("other", "codat") != advisory_key("codat_test", "codat")


def test_a_second_pipeline_on_the_same_duckdb_file_exits_5_at_once_and_sends_nothing(
    emulator: Emulator, base_url: str, tmp_path: Path, started: list[children.Popen]
) -> None:
    database = tmp_path / "wh.duckdb"
    warehouse = ["--duckdb-file", str(database)]
    first = parked(
        tmp_path,
        environment(base_url, tmp_path / "dlt_first"),
        started,
        LIST_COMPANIES,
        1,
        argv=command("codat", tmp_path / "first", *warehouse),
    )
    first.wait_parked()  # both locks taken, no request sent yet

    second = codat_sync(
        tmp_path,
        environment(base_url, tmp_path / "dlt_second"),
        command("other", tmp_path / "second", *warehouse),
    )
    sent_meanwhile = list(emulator.request_log)
    code, out, err = first.release()

    assert second.returncode == 5, second.stderr
    assert second.stdout == ""
    busy = DUCKDB_BUSY.match(second.stderr)
    assert busy, second.stderr
    assert (int(busy.group(1)), busy.group(2)) == (first.process.pid, "codat")
    assert busy.group(3) == str(database)
    assert busy.group(4) == str(duckdb_lock_path(database))
    assert sent_meanwhile == []  # the first run was parked before its first request: none is the second's
    assert code == 0, err
    assert requests_by(emulator, "list-companies") == 1
    assert_exact(database, emulator)
    assert not duckdb_lock_path(database).exists()  # released, and nothing left beside the file


def test_the_destination_lock_leaves_readers_of_the_duckdb_file_alone(
    emulator: Emulator, base_url: str, tmp_path: Path, started: list[children.Popen]
) -> None:
    database = tmp_path / "wh.duckdb"
    env = environment(base_url, tmp_path / "dlt")
    argv = command("codat", tmp_path / "pipelines", "--duckdb-file", str(database))
    assert codat_sync(tmp_path, env, argv).returncode == 0
    again = parked(tmp_path, env, started, LIST_COMPANIES, 1, argv=argv)
    again.wait_parked()

    customers = database_rows(database, "SELECT COUNT(*) FROM codat.customers")  # read-only, meanwhile
    code, _, err = again.release()

    assert customers == [(len(expected_customers(emulator)),)]
    assert code == 0, err


@pytest.mark.postgres
def test_a_second_pipeline_on_the_same_postgres_dataset_exits_5_at_once_and_sends_nothing(
    emulator: Emulator,
    base_url: str,
    tmp_path: Path,
    postgres: PostgresServer,
    started: list[children.Popen],
) -> None:
    dataset = f"lock_{tmp_path.name[-12:].lower().replace('-', '_')}"
    warehouse = ["--destination", "postgres", "--dataset", dataset]
    settings = {"DESTINATION__POSTGRES__CREDENTIALS": postgres.url}
    first = parked(
        tmp_path,
        environment(base_url, tmp_path / "dlt_first", **settings),
        started,
        LIST_COMPANIES,
        1,
        argv=command("codat", tmp_path / "first", *warehouse),
    )
    first.wait_parked()

    second = codat_sync(
        tmp_path,
        environment(base_url, tmp_path / "dlt_second", **settings),
        command("other", tmp_path / "second", *warehouse),
    )
    sent_meanwhile = list(emulator.request_log)
    code, _, err = first.release()
    db = Database(postgres, dataset)
    try:
        rows, loaded = dataset_customers(db)
        # the first run's session ended with it (its server process may take a moment to go)
        wait_for(
            lambda: db.rows("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)],
            "no lock",
            [],
        )
    finally:
        db.close()

    assert second.returncode == 5, second.stderr
    busy = POSTGRES_BUSY.match(second.stderr)
    assert busy, second.stderr
    assert (int(busy.group(1)), busy.group(2)) == (first.process.pid, "codat")
    assert (busy.group(3), busy.group(4)) == (dataset, postgres.database)
    assert sent_meanwhile == []
    assert code == 0, err
    assert requests_by(emulator, "list-companies") == 1
    assert loaded == expected_customers(emulator)
    assert rows == len(loaded)


@pytest.mark.postgres
def test_shards_of_one_dataset_load_together_and_keep_a_whole_run_and_a_twin_out(
    emulator: Emulator,
    base_url: str,
    tmp_path: Path,
    postgres: PostgresServer,
    sharded: tuple[ShardPlan, Database, dict[int, set[str]]],
    started: list[children.Popen],
) -> None:
    plan, db, _ = sharded
    env = environment(base_url, tmp_path / "dlt")
    plan_args = {**asdict(plan), "credentials": plan.credentials}
    shards = [
        parked(
            tmp_path,
            env,
            started,
            LIST_COMPANIES,
            1,
            plan=plan_args,
            shard=shard,
            options=source_options(base_url),
        )
        for shard in range(plan.count)
    ]
    for shard in shards:
        shard.wait_parked()  # every shard holds its locks at once
    held = db.rows(
        "SELECT mode, COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted GROUP BY 1 ORDER BY 1"
    )

    whole = codat_sync(
        tmp_path,
        environment(base_url, tmp_path / "dlt_whole", DESTINATION__POSTGRES__CREDENTIALS=postgres.url),
        command("codat", tmp_path / "whole", "--destination", "postgres", "--dataset", plan.dataset_name),
    )
    twin_plan = {**plan_args, "pipelines_dir": str(tmp_path / "another_worker")}
    twin = parked(
        tmp_path, env, started, LIST_COMPANIES, 1, plan=twin_plan, shard=1, options=source_options(base_url)
    )
    twin_out, twin_err = twin.process.communicate(timeout=WAIT_SECONDS)
    outcomes = [shard.release() for shard in shards]
    rows, loaded = dataset_customers(db)

    assert held == [("ExclusiveLock", plan.count), ("ShareLock", plan.count)]
    assert whole.returncode == 5, whole.stderr
    assert re.match(
        rf"^codat-sync: another codat-sync run \({HOLDER.pattern}, PostgreSQL session \d+, and 1 more\) "
        rf"holds the dataset {plan.dataset_name} of PostgreSQL database \w+; this run did nothing",
        whole.stderr,
    ), whole.stderr
    assert twin.process.returncode == 5, twin_err
    assert json.loads(twin_out)["error"].startswith(
        f"another codat-sync run (pid {shards[1].process.pid}, started "
    )
    assert f"pipeline {plan.pipeline_name(1)}, PostgreSQL session " in twin_out
    assert f"holds shard 1 of {plan.count} of the dataset {plan.dataset_name}" in twin_out
    assert not twin.reached.exists()  # it sent nothing
    for code, out, err in outcomes:
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"exit_code": 0, "failed": []}
    assert requests_by(emulator, "list-companies") == plan.count
    assert loaded == expected_customers(emulator)
    assert rows == len(loaded)


# -- the DuckDB file taken by another process mid-run ------------------------------------------


@dataclass(frozen=True)
class Step:
    """Where a run is when another process takes its DuckDB file: on entering a call."""

    id: str
    target: str
    call: int
    loaded_before: bool = False  # a clean run loaded the file first (else the run is the first)
    fresh_pipelines: bool = False  # the run's pipelines folder is new: dlt restores state first


STEPS = [
    Step("state-restore", "connector.sync:finish_interrupted", 1, loaded_before=True, fresh_pipelines=True),
    Step("load", "connector.sync:one_duckdb_connection", 1),  # before the run opens it to count and load
]
# From the counts before the load to the views the run holds the file open: another process is
# refused it there.
HELD_STEPS = [
    Step("counting", "connector.sync:count_customers", 1),
    Step("load", "dlt.pipeline.pipeline:Pipeline.load", 1),
    Step("pruning", "connector.sync:prune_child_rows", 1),
    Step("views", "connector.sync:create_views", 1),
]


@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_a_duckdb_file_taken_mid_run_exits_5_naming_the_holder_and_the_next_run_is_exact(
    emulator: Emulator, base_url: str, tmp_path: Path, started: list[children.Popen], step: Step
) -> None:
    database = tmp_path / "wh.duckdb"
    env = environment(base_url, tmp_path / "dlt")
    argv = command("codat", tmp_path / "pipelines", "--duckdb-file", str(database))
    if step.loaded_before:
        assert codat_sync(tmp_path, env, argv).returncode == 0
    if step.fresh_pipelines:
        argv = command("codat", tmp_path / "new_pipelines", "--duckdb-file", str(database))
    run = parked(tmp_path, env, started, step.target, step.call, argv=argv)
    run.wait_parked()
    holder = hold_duckdb_file(database)
    started.append(holder)
    code, out, err = run.release()
    assert holder.stdin is not None
    holder.stdin.close()  # the session ends
    holder.wait(timeout=WAIT_SECONDS)
    rerun = codat_sync(tmp_path, env, argv)

    assert code == 5, err
    assert out == ""
    assert re.fullmatch(
        rf"codat-sync: the DuckDB file {re.escape(str(database))} is locked by pid {holder.pid} \(.+\), "
        r"which has it open for writing; close that session and run again\n",
        err,
    ), err
    assert "Traceback" not in err
    assert rerun.returncode == 0, rerun.stderr
    assert_exact(database, emulator)
    with duckdb.connect(str(database), read_only=True) as con:
        views = con.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'codat' "
            "AND table_type = 'VIEW' ORDER BY 1"
        ).fetchall()
    assert views == [("customer_attachments_with_customers",), ("customers_current",)]


@pytest.mark.parametrize("step", HELD_STEPS, ids=[s.id for s in HELD_STEPS])
def test_another_process_is_refused_the_duckdb_file_while_the_run_loads_and_the_run_is_exact(
    emulator: Emulator, base_url: str, tmp_path: Path, started: list[children.Popen], step: Step
) -> None:
    database = tmp_path / "wh.duckdb"
    env = environment(base_url, tmp_path / "dlt")
    argv = command("codat", tmp_path / "pipelines", "--duckdb-file", str(database))
    run = parked(tmp_path, env, started, step.target, step.call, argv=argv)
    run.wait_parked()
    taking = "import duckdb, sys; duckdb.connect(sys.argv[1])"
    taken = subprocess.run([sys.executable, "-c", taking, str(database)], capture_output=True, text=True)
    code, out, err = run.release()

    assert taken.returncode == 1
    assert re.search(rf"Conflicting lock is held in .+ \(PID {run.process.pid}\)", taken.stderr), taken.stderr
    assert code == 0, err
    assert_exact(database, emulator)
