"""Operations: runs that end, and say why, when the API dies, the quota runs out or a run overlaps."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from connector import cli
from connector.client import CodatClient
from connector.emulator.emulator import Emulator
from connector.emulator.launch import emulator_process
from connector.emulator.store import Sizing
from connector.lock import lock_path
from connector.settings import RetryPolicy
from tests import children
from tests.synctools import (
    Warehouse,
    attachment_keys,
    database_customers,
    database_rows,
    expected_customers,
    hold_duckdb_file,
    normalise,
    readable,
)
from tests.utils import API_KEY, ROOT

REPO = ROOT
BUSY = re.compile(
    r"^codat-sync: another codat-sync run \(pid (\d+), started [0-9: -]+ UTC\) holds pipeline codat"
)


def environment(base_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a `codat-sync` child process against `base_url`."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "DLT_PROJECT_DIR": str(tmp_path / "dlt"),
        **settings,
    }


def start(tmp_path: Path, env: dict[str, str], *args: str) -> children.Popen:
    """`codat-sync` in a child process, on the test's warehouse and pipelines folder."""
    command = [sys.executable, "-m", "connector.cli", "--quiet", *warehouse_args(tmp_path), *args]
    return children.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def warehouse_args(tmp_path: Path) -> list[str]:
    return ["--duckdb-file", str(tmp_path / "wh.duckdb"), "--pipelines-dir", str(tmp_path / "pipelines")]


def query(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    return database_rows(tmp_path / "wh.duckdb", sql)


def assert_exact(tmp_path: Path, emulator: Emulator) -> None:
    """The warehouse holds exactly the emulator's customers and attachments, once each."""
    assert normalise(database_customers(tmp_path / "wh.duckdb")) == expected_customers(emulator)
    listed = query(
        tmp_path, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert len(listed) == len(set(listed))
    assert set(listed) == attachment_keys(emulator)
    assert query(
        tmp_path, "SELECT COUNT(*) - COUNT(DISTINCT (load_id, company_id)) FROM codat.sync_status"
    ) == [(0,)]


# -- the API goes away ---------------------------------------------------------------------


def test_an_api_that_dies_mid_run_ends_it_within_two_minutes_and_a_rerun_is_exact(tmp_path: Path) -> None:
    sizing = ("--companies", "3", "--customers", "1500", "--seed", "11", "--api-key", API_KEY)
    flags = (*sizing, "--per-minute-limit", "0")
    env_settings = {"SOURCES__CODAT__REQUESTS_PER_MINUTE": "1000000"}
    # 0.2 s an answer: the 1,500 listings take about 10 s, so the emulator dies mid-listing even
    # on a busy machine (at 0.05 s a loaded CI machine once let the run finish first).
    with emulator_process(*flags, "--latency", "0.2") as url:
        env = environment(url, tmp_path, **env_settings)
        run = start(tmp_path, env)
        deadline = time.monotonic() + 60
        while listings_served(url) < 100:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run never listed attachments"
            time.sleep(0.02)
    gone = time.monotonic()  # the emulator process is terminated here, mid-listing

    out, err = run.communicate(timeout=180)

    assert time.monotonic() - gone < 120, "the run went on for more than two minutes"
    assert run.returncode == 3, out + err
    lines = out.splitlines()
    assert lines[-1].startswith("STOPPED: API unreachable: ")
    assert lines[-1].endswith("; the next run resumes where this one stopped")
    attachments = next(line for line in lines if line.startswith("attachments: "))
    assert re.search(r", \d+ deferred to the next run: API unreachable: ", attachments), attachments
    statuses = dict(query(tmp_path, "SELECT company_id, status FROM codat.sync_status"))
    assert set(statuses.values()) == {"api_unreachable"}
    assert len(statuses) == 3

    with emulator_process(*flags) as url:
        rerun = start(tmp_path, environment(url, tmp_path, **env_settings))
        out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out + err
    again = Emulator(Sizing(seed=11, companies=3, customers=1500), api_key=API_KEY)
    assert_exact(tmp_path, again)


def listings_served(url: str) -> int:
    stats = requests.get(f"{url}/_emulator/stats", timeout=5).json()
    return int(stats["by_operation"].get("list-customer-attachments", 0))


def test_5xx_in_a_row_open_the_breaker_after_a_few_attempts_not_every_retry(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    emulator.add_fault("503", count=100_000, match="/data/customers")

    summary = Warehouse(tmp_path, base_url).sync(breaker_failures=5, breaker_seconds=0, max_attempts=6)

    customer_pages = [e for e in emulator.request_log if e["operation"] == "list-customers"]
    assert 5 <= len(customer_pages) <= 6  # five failures open it; the companies after send nothing
    assert summary.exit_code() == 3
    assert {row["status"] for row in summary.status_rows} == {"api_unreachable"}
    assert str(summary.stopped).startswith("API unreachable: 5 attempts in a row failed")

    emulator.faults.clear()
    again = Warehouse(tmp_path, base_url).sync()
    assert again.exit_code() == 0


def test_dropped_connections_are_counted_as_requests(emulator: Emulator, base_url: str) -> None:
    company = readable(emulator)[0]
    emulator.add_fault("reset", count=2, match=f"/companies/{company.id}/dataStatus")
    client = CodatClient(API_KEY, base_url, retry=RetryPolicy(backoff_factor=0.01))

    client.data_status(company.id)

    assert [e["fault"] for e in emulator.request_log] == ["reset", "reset", None]
    assert client.requests.total == 3
    assert client.requests.by_company[company.id] == 3


def test_waiting_out_a_retry_after_says_so(
    emulator: Emulator, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    company = readable(emulator)[0]
    emulator.add_fault("429", retry_after="5", match=f"/companies/{company.id}/dataStatus")
    client = CodatClient(API_KEY, base_url, retry=RetryPolicy(backoff_factor=0.01))

    with caplog.at_level(logging.WARNING, logger="connector"):
        client.data_status(company.id)

    said = [r.getMessage() for r in caplog.records if r.name == "connector.client"]
    assert said == [
        f"Codat answered 429 (too many requests) for /companies/{company.id}/dataStatus: "
        "waiting 5 s as its Retry-After asks"
    ]


# -- the daily quota -----------------------------------------------------------------------


def test_a_spent_quota_ends_each_day_cleanly_and_the_next_days_finish_exactly(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__PAGE_SIZE", "40")
    monkeypatch.setenv("SOURCES__CODAT__QUOTA_RESERVE", "10")
    monkeypatch.setenv("SOURCES__CODAT__BACKOFF_FACTOR", "0.01")
    emulator.limiter.daily_limit = 80
    work = 1 + sum(-(-len(c.customers) // 40) + len(c.customers) for c in readable(emulator))
    assert work > 3 * 80  # more than three days of quota

    codes = []
    for _day in range(12):
        codes.append(cli.main([*warehouse_args(tmp_path), "--quiet"]))
        if codes[-1] != 4:
            break
        assert emulator.limiter.used <= 80  # no request past the day's quota
        emulator.limiter.reset()  # midnight: a new day's quota

    assert codes[-1] == 0
    assert set(codes[:-1]) == {4}
    assert len(codes) > 3
    statuses = query(tmp_path, "SELECT DISTINCT status FROM codat.sync_status")
    assert {"quota_spent"} <= {s for (s,) in statuses}
    assert_exact(tmp_path, emulator)


# -- overlapping runs and held files ---------------------------------------------------------


def test_two_runs_started_together_one_runs_the_other_exits_at_once(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    emulator.latency = 0.01
    env = environment(base_url, tmp_path, SOURCES__CODAT__BACKOFF_FACTOR="0.01")

    runs = [start(tmp_path, env), start(tmp_path, env)]
    results = [(run.wait(timeout=180), *run.communicate()) for run in runs]

    assert sorted(code for code, _, _ in results) == [0, 5], results
    (_, busy_out, busy_err), (_, _, _) = sorted(results, key=lambda r: -r[0])
    winner = next(run for run, (code, _, _) in zip(runs, results, strict=True) if code == 0)
    assert busy_out == ""
    found = BUSY.match(busy_err)
    assert found, busy_err
    assert int(found.group(1)) == winner.pid
    assert [e["operation"] for e in emulator.request_log].count("list-companies") == 1  # one run's
    assert_exact(tmp_path, emulator)


def test_a_lock_left_by_a_dead_run_is_taken_over(emulator: Emulator, base_url: str, tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = lock_path(str(tmp_path / "pipelines"), "codat")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "started": "2026-01-01 00:00:00 UTC"}))

    done = start(tmp_path, environment(base_url, tmp_path, SOURCES__CODAT__BACKOFF_FACTOR="0.01"))
    out, err = done.communicate(timeout=180)

    assert done.returncode == 0, err
    assert path.read_text() == ""  # released
    assert_exact(tmp_path, emulator)


def test_a_duckdb_file_held_by_another_process_is_named_with_its_pid(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "wh.duckdb"
    holder = hold_duckdb_file(database)
    try:
        run = start(tmp_path, environment(base_url, tmp_path))
        out, err = run.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()

    assert run.returncode == 5
    assert out == ""
    assert err.startswith(f"codat-sync: the DuckDB file {database} is locked by pid {holder.pid} (")
    assert "close that session" in err
    assert len(err.splitlines()) == 1
    assert not emulator.request_log


def test_missing_folders_of_the_duckdb_file_are_created(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "new" / "deeper" / "wh.duckdb"
    run = children.run(
        [sys.executable, "-m", "connector.cli", "--quiet", "--duckdb-file", str(database),
         "--pipelines-dir", str(tmp_path / "pipelines")],
        env=environment(base_url, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert database.is_file()
    assert f"data: duckdb file {database}, dataset codat" in run.stdout.splitlines()


def test_a_relative_duckdb_file_is_resolved_against_the_current_folder(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    env = environment(base_url, tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    outputs = []
    for folder in (first, second):
        folder.mkdir()
        run = children.run(
            [sys.executable, "-m", "connector.cli", "--quiet", "--duckdb-file", "wh.duckdb",
             "--pipelines-dir", str(tmp_path / "pipelines")],
            env=env, cwd=folder, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)

    for folder, out in zip((first, second), outputs, strict=True):
        assert f"data: duckdb file {folder / 'wh.duckdb'}, dataset codat" in out.splitlines()
        customers = database_rows(folder / "wh.duckdb", "SELECT COUNT(*) FROM codat.customers")
        assert customers == [(sum(len(c.customers) for c in readable(emulator)),)]


# -- a run killed, then finished by the next ------------------------------------------------


def sync_child(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`codat-sync` with these arguments, in a child process."""
    return children.run(
        [sys.executable, "-m", "connector.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def second_run_killed(
    emulator: Emulator, base_url: str, tmp_path: Path, target: str, call: int
) -> tuple[dict[str, str], list[str], set[str]]:
    """A clean first run, 5 customers of the first company modified, then a run killed on the
    `call`-th call of `target`; returns the runs' environment and arguments, and the modified ids."""
    env = environment(base_url, tmp_path, SOURCES__CODAT__BACKOFF_FACTOR="0.01")
    command = ["--quiet", *warehouse_args(tmp_path)]
    first = children.run([sys.executable, "-m", "connector.cli", *command], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    changed = set(emulator.store.mutate(readable(emulator)[0].id, "modify", count=5))
    killpoint = [sys.executable, str(REPO / "tests" / "killpoint.py"), target, str(call)]
    killed = children.run([*killpoint, "--", *command], env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return env, command, changed


def test_a_run_killed_between_normalizing_and_deleting_its_extract_is_finished_by_the_next(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    """dlt moves the normalized package, then deletes the extracted one: a kill between leaves both.

    Found by `test_chaos.py`: every later run built the package again and failed on the move.
    Only a run after a first one meets it (a first run's rerun starts its working folder afresh).
    """
    # The second call: normalize deletes `load/new/<id>` (a retry's leftover), moves the package
    # it built to `load/normalized/`, then deletes `normalize/extracted/<id>`.
    env, command, _ = second_run_killed(
        emulator, base_url, tmp_path, "dlt.common.storages.load_package:PackageStorage.delete_package", 2
    )
    working = tmp_path / "pipelines" / "codat"
    extracted = {p.name for p in (working / "normalize" / "extracted").iterdir()}
    normalized = {p.name for p in (working / "load" / "normalized").iterdir()}
    assert len(extracted) == 1
    assert extracted == normalized

    for _ in range(2):  # the rerun finishes it; the one after finds nothing left
        rerun = sync_child(command, env)
        assert rerun.returncode == 0, rerun.stderr
        assert_exact(tmp_path, emulator)
    lines = rerun.stdout.splitlines()
    assert lines[0] == "companies: 3 (0 failed, 3 unchanged)"
    assert [p.name for p in (working / "normalize" / "extracted").iterdir()] == []
    assert [p.name for p in (working / "load" / "new").iterdir()] == []
    assert [p.name for p in (working / "load" / "normalized").iterdir()] == []


def test_the_run_that_finishes_a_killed_runs_load_reports_what_it_held(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    env, command, changed = second_run_killed(
        emulator, base_url, tmp_path, "dlt.pipeline.pipeline:Pipeline.load", 1
    )
    company = readable(emulator)[0]

    rerun = sync_child(command, env)

    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stdout.splitlines()
    # One package: the customers and the run's `sync_status` rows are extracted together.
    assert re.fullmatch(r"interrupted run finished first: 1 load package\(s\) [\d.]+", lines[0])
    attachments = len({k for k in attachment_keys(emulator) if k[0] == company.id and k[2] in changed})
    assert (
        lines[1] == f"interrupted run held: 3 companies, {len(changed)} customers, {attachments} attachments"
    )
    assert lines[2] == "companies: 3 (0 failed, 3 unchanged)"
    assert len(query(tmp_path, "SELECT * FROM codat.sync_status")) == 9  # three runs of three companies
    assert_exact(tmp_path, emulator)
