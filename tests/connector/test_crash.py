"""A run killed with SIGKILL mid-extract or mid-load, then run again, equals a clean run."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from connector.emulator.emulator import Emulator
from tests import children
from tests.synctools import Warehouse, expected_customers, normalise, requests_by
from tests.utils import API_KEY, ROOT

REPO = ROOT

# Runs one sync in a child process; with "load" it extracts and normalizes, then kills
# itself once the load step has started writing to DuckDB.
CHILD = """
import os, signal, sys, threading, time
import dlt
from connector.source import codat_source
base_url, db, pipelines_dir, name, mode = sys.argv[1:6]
pipeline = dlt.pipeline(name, destination=dlt.destinations.duckdb(db), dataset_name="codat",
                        pipelines_dir=pipelines_dir)
source = codat_source(api_key=os.environ["KEY"], base_url=base_url, page_size=5)
if mode == "extract":
    pipeline.run(source)
else:
    pipeline.extract(source)
    pipeline.normalize()
    def kill_when_loading():
        jobs = os.path.join(pipelines_dir, name, "load", "normalized")
        while not any("started_jobs" in root and files for root, _, files in os.walk(jobs)):
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=kill_when_loading, daemon=True).start()
    pipeline.load()
    time.sleep(30)
"""


def start_child(warehouse: Warehouse, mode: str) -> children.Popen:
    env = {**os.environ, "KEY": API_KEY, "PYTHONPATH": str(REPO)}
    args = [warehouse.base_url, str(warehouse.db), str(warehouse.pipelines_dir), warehouse.name, mode]
    return children.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=warehouse.tmp_path)


def assert_equals_clean_run(warehouse: Warehouse, emulator: Emulator) -> None:
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    counts = warehouse.rows(
        "SELECT (SELECT COUNT(*) FROM codat.customers__addresses),"
        " (SELECT COUNT(*) FROM codat.customers__contacts__phone),"
        " (SELECT COUNT(*) FROM codat.customer_attachments)"
    )
    clean = Warehouse(warehouse.tmp_path, warehouse.base_url, name="clean_run")
    clean.sync()
    assert counts == clean.rows(
        "SELECT (SELECT COUNT(*) FROM codat.customers__addresses),"
        " (SELECT COUNT(*) FROM codat.customers__contacts__phone),"
        " (SELECT COUNT(*) FROM codat.customer_attachments)"
    )
    dupes = warehouse.rows("SELECT COUNT(*) - COUNT(DISTINCT (company_id, id)) FROM codat.customers")
    assert dupes == [(0,)]


def test_killed_during_extract_then_rerun_equals_a_clean_run(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    emulator.latency = 0.01
    warehouse = Warehouse(tmp_path, base_url)
    child = start_child(warehouse, "extract")
    deadline = time.monotonic() + 60
    while requests_by(emulator, "list-customers") < 15 and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    emulator.latency = 0.0

    warehouse.sync(page_size=5)

    assert_equals_clean_run(warehouse, emulator)


@pytest.mark.parametrize("changed_between", [False, True], ids=["no-changes", "changes-before-rerun"])
def test_killed_during_load_then_rerun_equals_a_clean_run(
    emulator: Emulator, base_url: str, tmp_path: Path, changed_between: bool
) -> None:
    warehouse = Warehouse(tmp_path, base_url)
    child = start_child(warehouse, "load")
    assert child.wait(timeout=120) == -signal.SIGKILL
    assert warehouse.pipeline().list_normalized_load_packages(), "the kill missed the load step"
    if changed_between:
        company = next(iter(emulator.store.companies.values()))
        emulator.store.mutate(company.id, "modify", count=5)
        emulator.store.mutate(company.id, "delete", count=2)

    warehouse.sync(page_size=5)

    assert_equals_clean_run(warehouse, emulator)
