"""Customer history (`history = true`): every version kept, with validity, and "as of" answers.

Expected values come from the emulator: after each run the test takes what Codat then held
(`expected_customers`) and the instant the run ended. A customer's versions must be its distinct
states in run order (a state repeated by the next run is no new version), and the warehouse "as
of" an instant between two runs must be what the emulator held at the first of them.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from connector import cli, history
from connector.emulator.emulator import Emulator
from connector.emulator.store import utc_stamp
from connector.errors import InvalidOption
from connector.exits import EXIT_OK
from connector.sync import run_sync
from tests import children
from tests.killtools import KILLPOINT, RUN_TIMEOUT, RunDirs, run_env
from tests.postgres import PostgresServer
from tests.synctools import FAST_RETRIES, Warehouse, expected_customers, normalise, readable
from tests.utils import API_KEY

Key = tuple[str, str]
State = dict[str, Any]
FIELDS = (
    "company_id, id, customer_name, default_currency, status, is_deleted, modified_date, supplemental_data"
)
HISTORY_SQL = f"SELECT {FIELDS}, valid_from, valid_to FROM {{dataset}}.customers_history"
AS_OF_SQL = {
    "duckdb": f"SELECT {FIELDS} FROM {{dataset}}.customers_as_of(CAST(? AS TIMESTAMPTZ))",
    "postgres": f"SELECT {FIELDS} FROM {{dataset}}.customers_as_of(%s)",
}


# -- the model: what the emulator held after each run ----------------------------------------------


class Timeline:
    """What the emulator held after each run, and an instant between that run and the next change."""

    def __init__(self) -> None:
        self.states: list[dict[Key, State]] = []
        self.instants: list[datetime] = []

    def record(self, emulator: Emulator) -> None:
        self.states.append(expected_customers(emulator))
        time.sleep(0.01)
        self.instants.append(datetime.now(UTC))
        time.sleep(0.01)

    def versions(self) -> dict[Key, list[State]]:
        """Each customer's distinct states, in run order: what its versions must be."""
        out: dict[Key, list[State]] = {}
        for state in self.states:
            for key, row in state.items():
                seen = out.setdefault(key, [])
                if not seen or seen[-1] != row:
                    seen.append(row)
        return out

    def live(self, run: int) -> dict[Key, State]:
        """The customers not deleted after a run (0-based): what "as of" its instant must give."""
        return {k: v for k, v in self.states[run].items() if not v["is_deleted"]}


# -- reading the warehouse ------------------------------------------------------------------------


Execute = Callable[..., list[tuple[Any, ...]]]


def duckdb_reader(db: Path) -> Execute:
    def execute(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute(sql, list(args)).fetchall()

    return execute


def postgres_reader(pg: PostgresServer) -> Execute:
    def execute(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with pg.connect() as con, con.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    return execute


def state_of(row: tuple[Any, ...]) -> tuple[Key, State]:
    names = [n.strip() for n in FIELDS.split(",")]
    state = dict(zip(names, row[: len(names)], strict=True))
    return (state["company_id"], state["id"]), normalise({("", ""): state})[("", "")]


def stored_versions(
    execute: Execute, dataset: str
) -> dict[Key, list[tuple[State, datetime, datetime | None]]]:
    """Each customer's versions in the warehouse, oldest first, with their validity."""
    out: dict[Key, list[tuple[State, datetime, datetime | None]]] = {}
    for row in execute(HISTORY_SQL.format(dataset=dataset)):
        key, state = state_of(row)
        out.setdefault(key, []).append((state, row[-2], row[-1]))
    for versions in out.values():
        versions.sort(key=lambda v: v[1])
    return out


def as_of(execute: Execute, kind: str, dataset: str, instant: datetime) -> dict[Key, State]:
    return dict(state_of(row) for row in execute(AS_OF_SQL[kind].format(dataset=dataset), instant))


def assert_history(execute: Execute, kind: str, dataset: str, timeline: Timeline) -> None:
    """Versions, their validity chain and the "as of" answers are the timeline's."""
    stored = stored_versions(execute, dataset)
    expected = timeline.versions()
    assert set(stored) == set(expected)
    for key, versions in stored.items():
        assert [v[0] for v in versions] == expected[key], key
        for (_, _, valid_to), (_, next_from, _) in zip(versions, versions[1:], strict=False):
            assert valid_to == next_from, f"{key}: a version must end where the next begins"
        assert versions[-1][2] is None, f"{key}: the latest version is the current one"
    first_load = min(v[0][1] for v in stored.values())
    assert as_of(execute, kind, dataset, first_load - timedelta(seconds=1)) == {}
    for run, instant in enumerate(timeline.instants):
        assert as_of(execute, kind, dataset, instant) == timeline.live(run), f"as of the end of run {run + 1}"


# -- the changes between runs ---------------------------------------------------------------------


def companies(emulator: Emulator) -> list[str]:
    found = sorted(c.id for c in readable(emulator))
    assert len(found) >= 2, "two companies: one changes, one is restamped"
    return found


def next_second() -> None:
    """Let the emulator's clock (whole seconds) move past the last run's reads."""
    time.sleep(1.05 - (time.time() % 1.0))


def first_round(emulator: Emulator) -> dict[str, list[str]]:
    """Modify (one customer twice), delete and add in the first company."""
    company = companies(emulator)[0]
    store = emulator.store
    held = store.company(company)
    assert held is not None
    live = sorted(i for i, r in held.customers.items() if not (r.get("metadata") or {}).get("isDeleted"))
    assert len(live) >= 5
    next_second()
    modified = store.mutate(company, "modify", ids=live[:3])
    twice = store.mutate(company, "modify", ids=[modified[0]])
    deleted = store.mutate(company, "delete", ids=live[3:5])
    added = store.mutate(company, "add", 2)
    return {"modified": modified, "twice": twice, "deleted": deleted, "added": added}


def second_round(emulator: Emulator, deleted: str) -> None:
    """Add a deleted customer back, and restamp every customer of the second company."""
    first, second = companies(emulator)[:2]
    next_second()
    company = emulator.store.company(first)
    assert company is not None
    record = company.customers[deleted]
    assert record["metadata"]["isDeleted"] is True
    stamp = utc_stamp()
    emulator.store.put_customer(company, {**record, "metadata": {"isDeleted": False}, "modifiedDate": stamp})
    emulator.store.mark_synced(company, stamp)  # as a Codat sync that brought it back would
    emulator.store.mutate(second, "restamp")


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys_a_batch", [history.KEYS_A_BATCH, 3], ids=["one-batch", "batches-of-3"])
def test_every_version_is_kept_and_as_of_answers_what_the_api_held(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys_a_batch: int
) -> None:
    monkeypatch.setattr(history, "KEYS_A_BATCH", keys_a_batch)  # settled this many customers at a time
    emulator.reset(7, 2, 30)
    warehouse = Warehouse(tmp_path, base_url)
    timeline = Timeline()

    first = warehouse.sync(history=True)
    timeline.record(emulator)
    changed = first_round(emulator)
    second = warehouse.sync(history=True)
    timeline.record(emulator)
    second_round(emulator, changed["deleted"][0])
    third = warehouse.sync(history=True)
    timeline.record(emulator)
    fourth = warehouse.sync(history=True)  # nothing changed: no version

    assert first.customers_new == 30
    assert (second.customers_new, second.customers_updated, second.customers_deleted) == (2, 3, 2)
    assert third.customers_updated == len(emulator.store.company(companies(emulator)[1]).customers) + 1
    assert (fourth.customers_new, fourth.customers_updated, fourth.customers_deleted) == (0, 0, 0)
    execute = duckdb_reader(warehouse.db)
    assert_history(execute, "duckdb", "codat", timeline)
    versions = stored_versions(execute, "codat")
    company = companies(emulator)[0]
    assert len(versions[(company, changed["twice"][0])]) == 2, "changed twice between runs: one version"
    assert [v[0]["is_deleted"] for v in versions[(company, changed["deleted"][0])]] == [False, True, False]
    restamped = companies(emulator)[1]
    assert all(len(v) == 2 for k, v in versions.items() if k[0] == restamped)
    current = execute("SELECT company_id, id FROM codat.customers_current")
    assert set(current) == set(timeline.live(2))
    assert execute("SELECT COUNT(*) FROM codat.customers WHERE valid_from IS NULL") == [(0,)]


def test_each_version_keeps_its_own_child_rows(emulator: Emulator, base_url: str, tmp_path: Path) -> None:
    emulator.reset(7, 2, 30)
    warehouse = Warehouse(tmp_path, base_url)
    company_id = companies(emulator)[0]
    company = emulator.store.company(company_id)
    assert company is not None
    customer_id = next(i for i, r in company.customers.items() if len(r.get("addresses") or []) >= 2)
    warehouse.sync(history=True)
    next_second()
    record = company.customers[customer_id]
    one_address = [
        {"type": "Billing", "line1": "1 History Lane", "city": "Leeds", "country": "United Kingdom"}
    ]
    stamp = utc_stamp()
    emulator.store.put_customer(company, {**record, "addresses": one_address, "modifiedDate": stamp})
    emulator.store.mark_synced(company, stamp)
    warehouse.sync(history=True)
    warehouse.sync(history=True)

    rows = warehouse.rows(
        "SELECT c.valid_to IS NULL, COUNT(a._dlt_id) FROM codat.customers c "
        "LEFT JOIN codat.customers__addresses a ON a._dlt_root_id = c._dlt_id "
        f"WHERE c.company_id = '{company_id}' AND c.id = '{customer_id}' GROUP BY ALL ORDER BY 1"
    )
    assert rows == [(False, len(record["addresses"])), (True, 1)]
    orphans = warehouse.rows(
        "SELECT COUNT(*) FROM codat.customers__addresses a WHERE NOT EXISTS "
        "(SELECT 1 FROM codat.customers c WHERE c._dlt_id = a._dlt_root_id)"
    )
    assert orphans == [(0,)]
    view = warehouse.rows(
        "SELECT billing_line1 FROM codat.customers_current "
        f"WHERE company_id = '{company_id}' AND id = '{customer_id}'"
    )
    assert view == [("1 History Lane",)]


def test_a_customer_read_twice_in_one_run_is_one_version_of_that_load(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    emulator.reset(7, 2, 60)
    emulator.latency = 0.02
    emulator.limiter.daily_limit = 100_000
    warehouse = Warehouse(tmp_path, base_url)
    emulator.mutator.start(companies(emulator), rate=100, duration=2, action="modify")  # while it pages
    try:
        summary = warehouse.sync(history=True, page_size=5, attachments=False)
    finally:
        emulator.mutator.stop()
    assert emulator.mutator.changes > 0
    read = sum(row["customers_loaded"] for row in summary.status_rows)
    customers = warehouse.rows("SELECT COUNT(*), COUNT(DISTINCT (company_id, id)) FROM codat.customers")
    assert read > customers[0][0], "the run must have read some customers twice"
    assert customers[0][0] == customers[0][1], "one version a customer in one load"

    emulator.latency = 0.0
    timeline = Timeline()
    warehouse.sync(history=True, attachments=False)
    timeline.record(emulator)
    execute = duckdb_reader(warehouse.db)
    assert as_of(execute, "duckdb", "codat", timeline.instants[0]) == timeline.live(0)
    per_load = warehouse.rows(
        "SELECT COUNT(*) FROM (SELECT company_id, id, _dlt_load_id FROM codat.customers "
        "GROUP BY ALL HAVING COUNT(*) > 1) d"
    )
    assert per_load == [(0,)]
    assert warehouse.rows(
        "SELECT COUNT(*) FROM (SELECT company_id, id FROM codat.customers WHERE valid_to IS NULL "
        "GROUP BY ALL HAVING COUNT(*) > 1) d"
    ) == [(0,)]


def test_turning_history_on_keeps_what_is_loaded_and_off_is_refused(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    emulator.reset(7, 2, 30)
    warehouse = Warehouse(tmp_path, base_url)
    timeline = Timeline()
    warehouse.sync()
    timeline.record(emulator)
    changed = first_round(emulator)
    second = warehouse.sync(history=True)
    timeline.record(emulator)

    assert (second.customers_new, second.customers_updated, second.customers_deleted) == (2, 3, 2)
    execute = duckdb_reader(warehouse.db)
    assert_history(execute, "duckdb", "codat", timeline)
    modified = (companies(emulator)[0], changed["modified"][1])
    assert len(stored_versions(execute, "codat")[modified]) == 2, "the row loaded before is the first version"

    requests = len(emulator.request_log)
    tables_before = warehouse.rows("SELECT COUNT(*) FROM codat.customers")
    with pytest.raises(InvalidOption, match=r"--history.*--full-refresh"):
        warehouse.sync()
    assert len(emulator.request_log) == requests, "refused before any request"
    assert warehouse.rows("SELECT COUNT(*) FROM codat.customers") == tables_before

    warehouse.sync(full_refresh=True)
    columns = {r[0] for r in warehouse.rows("DESCRIBE codat.customers")}
    assert "valid_to" not in columns
    assert normalise(warehouse.customers()) == expected_customers(emulator)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hard_delete": True}, r"hard_delete \(SOURCES__CODAT__HARD_DELETE\)"),
        ({"shards": 2, "shard": 0}, r"not available for company shards"),
    ],
)
def test_history_with_a_setting_it_cannot_keep_is_refused_before_any_request(
    emulator: Emulator, base_url: str, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidOption, match=message):
        Warehouse(tmp_path, base_url).sync(history=True, **options)
    assert len(emulator.request_log) == 0


def test_history_into_files_is_refused_before_any_request(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    pipeline = dlt.pipeline(
        pipeline_name=f"history_lake_{uuid.uuid4().hex[:6]}",
        destination=dlt.destinations.filesystem(bucket_url=str(tmp_path / "lake")),
        dataset_name="codat",
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    with pytest.raises(InvalidOption, match="filesystem destination"):
        run_sync(pipeline, api_key=API_KEY, base_url=base_url, history=True)
    assert len(emulator.request_log) == 0
    assert not (tmp_path / "lake").exists()


def test_history_set_in_configuration_is_the_flag(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.reset(7, 2, 20)
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    db = tmp_path / "flag.duckdb"
    args = ["--duckdb-file", str(db), "--pipelines-dir", str(tmp_path / "p"), "--quiet"]
    assert cli.main([*args, "--history"]) == EXIT_OK
    monkeypatch.setenv("SOURCES__CODAT__HISTORY", "true")
    configured = tmp_path / "configured.duckdb"
    args = ["--duckdb-file", str(configured), "--pipelines-dir", str(tmp_path / "q"), "--quiet"]
    assert cli.main(args) == EXIT_OK
    for file in (db, configured):
        execute = duckdb_reader(file)
        assert execute("SELECT COUNT(*) FROM codat.customers_history") == [(20,)]
        assert execute("SELECT COUNT(*) FROM codat.customers_as_of(now())") == execute(
            "SELECT COUNT(*) FROM codat.customers_current"
        )


def test_duckdb_and_postgres_keep_the_same_history(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    emulator.reset(7, 2, 30)
    dataset = f"codat_{uuid.uuid4().hex[:8]}"
    pipelines = {
        "duckdb": dlt.pipeline(
            pipeline_name=f"history_duckdb_{tmp_path.name}",
            destination=dlt.destinations.duckdb(str(tmp_path / "wh.duckdb")),
            dataset_name=dataset,
            pipelines_dir=str(tmp_path / "pipelines" / "duckdb"),
        ),
        "postgres": dlt.pipeline(
            pipeline_name=f"history_postgres_{tmp_path.name}",
            destination=dlt.destinations.postgres(credentials=postgres.url),
            dataset_name=dataset,
            pipelines_dir=str(tmp_path / "pipelines" / "postgres"),
        ),
    }
    timeline = Timeline()

    def sync_both() -> None:
        for kind, pipeline in pipelines.items():
            summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url, history=True, **FAST_RETRIES)
            assert summary.failed == [], f"{kind}: {summary.lines()}"
        timeline.record(emulator)

    sync_both()
    changed = first_round(emulator)
    sync_both()
    second_round(emulator, changed["deleted"][0])
    sync_both()

    readers = {"duckdb": duckdb_reader(tmp_path / "wh.duckdb"), "postgres": postgres_reader(postgres)}
    for kind, execute in readers.items():
        assert_history(execute, kind, dataset, timeline)
    contents = {
        kind: {key: [v[0] for v in versions] for key, versions in stored_versions(execute, dataset).items()}
        for kind, execute in readers.items()
    }
    assert contents["duckdb"] == contents["postgres"]


# -- killed during a history run ------------------------------------------------------------------

HISTORY_KILL_POINTS = {
    # the customers job committed in DuckDB, not marked done: the rerun loads it again
    "customers-job-committed-unmarked": (
        "dlt.common.storages.load_package:PackageStorage.save_pending_transition",
        1,
        "customers.",
    ),
    "before-settling": ("connector.sync:settle_history", 1, None),
    "while-settling": ("connector.history:_close", 1, None),
}


def history_run(dirs: RunDirs, base_url: str, kill: tuple[str, int, str | None] | None = None) -> int:
    """`codat-sync` with history set in the environment, in a child process; its exit code."""
    env = {**run_env(dirs, base_url), "SOURCES__CODAT__HISTORY": "true"}
    if kill is None:
        command = [sys.executable, "-m", "connector.cli"]
    else:
        target, call, match = kill
        command = [sys.executable, str(KILLPOINT), target, str(call), *([match] if match else []), "--"]
    done = children.run(
        [*command, *dirs.args()],
        env=env,
        cwd=dirs.root,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


@pytest.mark.parametrize("point", list(HISTORY_KILL_POINTS))
def test_a_history_run_killed_then_rerun_keeps_exactly_the_versions(
    emulator: Emulator, base_url: str, tmp_path: Path, point: str
) -> None:
    emulator.reset(7, 2, 30)
    killed, clean = RunDirs(tmp_path / "killed"), RunDirs(tmp_path / "clean")
    for dirs in (killed, clean):
        dirs.root.mkdir()
        assert history_run(dirs, base_url) == 0
    timeline = Timeline()
    timeline.record(emulator)
    first_round(emulator)

    assert history_run(killed, base_url, HISTORY_KILL_POINTS[point]) == -signal.SIGKILL
    assert history_run(killed, base_url) == 0
    assert history_run(clean, base_url) == 0
    timeline.record(emulator)

    got = duckdb_reader(killed.db)
    assert_history(got, "duckdb", "codat", timeline)
    want = stored_versions(duckdb_reader(clean.db), "codat")
    assert {k: [v[0] for v in vs] for k, vs in stored_versions(got, "codat").items()} == {
        k: [v[0] for v in vs] for k, vs in want.items()
    }
    for table in ("customers", "customers__addresses", "customers__contacts"):
        twice = f"SELECT COUNT(*) - COUNT(DISTINCT _dlt_id) FROM codat.{table}"
        assert got(twice) == [(0,)], f"{table}: rows loaded twice"
    orphans = (
        "SELECT COUNT(*) FROM codat.customers__addresses a WHERE NOT EXISTS "
        "(SELECT 1 FROM codat.customers c WHERE c._dlt_id = a._dlt_root_id)"
    )
    assert got(orphans) == [(0,)]
    assert got("SELECT COUNT(*) FROM codat.customers__addresses") == duckdb_reader(clean.db)(
        "SELECT COUNT(*) FROM codat.customers__addresses"
    )
