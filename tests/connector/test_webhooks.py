"""Change-driven runs: Codat's webhooks queue companies, a worker syncs exactly those.

The receiver runs as a real uvicorn server on 127.0.0.1 (or as the `codat-webhooks` process),
deliveries are signed with Svix's own library (or by the emulator, as Codat sends them), and
the runs load a real DuckDB file from the session's emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from connector import cli, syncqueue
from connector.emulator.emulator import Emulator
from connector.exits import EXIT_BAD_INPUT, EXIT_OK
from connector.lock import pipeline_lock
from connector.syncqueue import SyncQueue
from connector.webhooks import (
    DEFAULT_DEBOUNCE_SECONDS,
    NotAnEvent,
    QueueWorker,
    companies_to_sync,
    receiver_app,
    sync_companies,
)
from connector.webhooks import main as webhooks_main
from tests.synctools import readable
from tests.utils import API_KEY, ROOT
from tests.webhooktools import OTHER_SECRET, SECRET, read_completed, serving, signed

# -- reading events -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (read_completed("co-1"), ("read.completed", ["co-1"])),
        (read_completed("co-1", modified=False), ("read.completed", [])),
        (read_completed("co-1", data_type="invoices"), ("read.completed", [])),
        (
            {**read_completed("co-2"), "eventType": "read.completed.initial"},
            ("read.completed.initial", ["co-2"]),
        ),
        (
            {"RuleType": "Dataset data changed", "CompanyId": "co-3", "Data": {"dataType": "customers"}},
            ("Dataset data changed", ["co-3"]),
        ),
        (
            {"eventType": "DatasetDataChanged", "payload": {"companyId": "co-4", "dataType": "invoices"}},
            ("DatasetDataChanged", []),
        ),
        ({"eventType": "DataSyncCompleted", "CompanyId": "co-5"}, ("DataSyncCompleted", ["co-5"])),
        ({"eventType": "company.created", "payload": {}}, ("company.created", [])),
    ],
)
def test_an_event_queues_the_company_only_when_its_customers_changed(event: Any, expected: Any) -> None:
    assert companies_to_sync(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        [],
        {"payload": {}},
        {"eventType": "read.completed", "payload": {"dataTypes": []}},
        {"eventType": "read.completed", "payload": {"referenceCompany": {"id": "co"}}},
        {"eventType": "DatasetDataChanged", "Data": {"dataType": "customers"}},
    ],
)
def test_a_body_that_is_no_codat_event_is_refused(event: Any) -> None:
    with pytest.raises(NotAnEvent):
        companies_to_sync(event)


# -- the receiver ---------------------------------------------------------------------------------


def post(url: str, delivery: tuple[bytes, dict[str, str]]) -> requests.Response:
    body, headers = delivery
    return requests.post(url, data=body, headers=headers, timeout=10, proxies={"http": "", "https": ""})


def test_the_receiver_stores_a_signed_delivery_once_and_refuses_the_rest(tmp_path: Path) -> None:
    queue = SyncQueue(tmp_path / "queue.sqlite")
    woken: list[int] = []
    with serving(receiver_app(SECRET, queue, lambda: woken.append(1))) as url:
        first = signed(read_completed("co-1"), webhook_id="msg_1")
        assert post(url, first).json() == {"queued": ["co-1"], "duplicate": False}
        again = post(url, first)  # Codat's redelivery: the same id
        assert (again.status_code, again.json()) == (200, {"queued": [], "duplicate": True})
        svix_headers = post(url, signed(read_completed("co-2"), prefix="svix"))
        assert svix_headers.status_code == 200
        unchanged = post(url, signed(read_completed("co-3", modified=False)))
        assert unchanged.json() == {"queued": [], "duplicate": False}  # acknowledged, nothing to sync

        body, headers = signed(read_completed("co-4"))
        unsigned = {k: v for k, v in headers.items() if "signature" not in k}
        refused = {
            "unsigned": post(url, (body, unsigned)),
            "another secret": post(url, signed(read_completed("co-4"), secret=OTHER_SECRET)),
            "stale": post(url, signed(read_completed("co-4"), at=datetime.now(UTC) - timedelta(minutes=6))),
            "body changed": post(url, (body.replace(b"co-4", b"co-5"), headers)),
        }
        malformed = post(url, signed(b"{not json"))
        no_company = post(url, signed({"eventType": "read.completed", "payload": {"dataTypes": []}}))

    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 401)
    assert (malformed.status_code, no_company.status_code) == (400, 400)
    assert SECRET not in json.dumps([r.json() for r in refused.values()])
    assert {(q.company_id, q.events) for q in queue.pending()} == {("co-1", 1), ("co-2", 1)}
    assert queue.deliveries() == 3  # co-1, co-2 and the unchanged read
    assert len(woken) == 2


def test_a_bad_secret_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"webhook_secret \(SOURCES__CODAT__WEBHOOK_SECRET\)"):
        receiver_app("not-a-secret", SyncQueue(tmp_path / "queue.sqlite"))


# -- the worker, against the emulator -------------------------------------------------------------


def sync_args(tmp_path: Path, *more: str) -> argparse.Namespace:
    return cli.parse_args(
        [
            "--duckdb-file",
            str(tmp_path / "wh.duckdb"),
            "--pipelines-dir",
            str(tmp_path / "p"),
            "--quiet",
            *more,
        ]
    )


@pytest.fixture
def configured(base_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__WEBHOOK_SECRET", SECRET)
    return base_url


def status_runs(db: Path) -> dict[str, set[str]]:
    """Each run's load id and the companies its `sync_status` rows name."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT load_id, company_id FROM codat.sync_status").fetchall()
    runs: dict[str, set[str]] = {}
    for load_id, company_id in rows:
        runs.setdefault(load_id, set()).add(company_id)
    return runs


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_change_reaches_the_warehouse_seconds_after_its_webhook(
    emulator: Emulator, configured: str, tmp_path: Path
) -> None:
    emulator.reset(7, 3, 60)
    args = sync_args(tmp_path, "--no-attachments")
    assert cli.main(["--no-attachments", *sys_args(args)]) == EXIT_OK  # the first load, from cron
    companies = sorted(c.id for c in readable(emulator))
    changed_company = companies[1]
    queue = SyncQueue(tmp_path / "queue.sqlite")
    worker = QueueWorker(queue, sync_companies(args), debounce=0.2)
    worker.start()
    try:
        with serving(receiver_app(SECRET, queue, worker.wake)) as url:
            emulator.webhooks.configure(url, SECRET)
            customer = emulator.store.mutate(changed_company, "modify", 1)[0]
            name = emulator.store.company(changed_company).customers[customer]["customerName"]

            # Done only once loaded (the test reads DuckDB once the worker is idle: one process
            # cannot open one file with two configurations).
            waited = wait_for(
                lambda: queue.deliveries() >= 1 and not queue.pending(), 20, "the webhook's company synced"
            )
    finally:
        emulator.webhooks.configure(None, None)
        worker.stop(30)
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        found = con.execute(
            "SELECT customer_name FROM codat.customers WHERE company_id = ? AND id = ?",
            [changed_company, customer],
        ).fetchall()
    assert found == [(name,)]
    runs = status_runs(tmp_path / "wh.duckdb")
    assert len(runs) == 2
    assert sorted(runs.values(), key=len) == [{changed_company}, set(companies)]
    assert worker.runs == 1
    assert waited < 20


def sys_args(args: argparse.Namespace) -> list[str]:
    return ["--duckdb-file", args.duckdb_file, "--pipelines-dir", args.pipelines_dir, "--quiet"]


def test_a_burst_of_webhooks_makes_a_handful_of_runs(
    emulator: Emulator, configured: str, tmp_path: Path
) -> None:
    emulator.reset(7, 200, 400)
    companies = sorted(c.id for c in readable(emulator))
    assert len(companies) >= 150
    args = sync_args(tmp_path, "--no-attachments")
    queue = SyncQueue(tmp_path / "queue.sqlite")
    # Each company's five events come a few seconds apart in the burst: the default window holds them.
    worker = QueueWorker(queue, sync_companies(args), debounce=DEFAULT_DEBOUNCE_SECONDS)
    worker.start()
    events = [read_completed(companies[i % len(companies)]) for i in range(1000)]
    try:
        with serving(receiver_app(SECRET, queue, worker.wake)) as url, requests.Session() as session:
            session.trust_env = False
            for event in events:
                body, headers = signed(event)
                assert session.post(url, data=body, headers=headers, timeout=10).status_code == 200
            wait_for(lambda: not queue.pending(), 120, "every queued company synced")
    finally:
        worker.stop(120)
    runs = status_runs(tmp_path / "wh.duckdb")
    assert set().union(*runs.values()) == set(companies)
    assert 1 <= len(runs) == worker.runs <= 5, f"{worker.runs} runs for 1,000 webhooks"


def test_a_cron_run_holding_the_pipeline_keeps_the_webhook_companies_queued(
    emulator: Emulator, configured: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(syncqueue, "RETRY_BASE_SECONDS", 0.2)
    emulator.reset(7, 3, 30)
    company = sorted(c.id for c in readable(emulator))[0]
    args = sync_args(tmp_path, "--no-attachments")
    queue = SyncQueue(tmp_path / "queue.sqlite")
    worker = QueueWorker(queue, sync_companies(args), debounce=0.0)
    queue.record("msg_1", "read.completed", [company])
    result: list[int] = []
    with pipeline_lock(str(tmp_path / "p"), "codat"):  # what a cron run holds for its whole run
        thread = threading.Thread(target=lambda: result.append(len(worker.run_due())))
        thread.start()
        thread.join(60)
        assert result == [0], "nothing loaded while the pipeline is held"
        (held,) = queue.pending()
        assert held.failures == 1
        assert "another codat-sync run" in (held.last_error or "")
    time.sleep(0.3)  # its retry is due
    assert worker.run_due() == [company]
    assert queue.pending() == []
    assert list(status_runs(tmp_path / "wh.duckdb").values()) == [{company}]


def test_a_receiver_killed_with_companies_queued_loses_none(
    emulator: Emulator, configured: str, tmp_path: Path
) -> None:
    emulator.reset(7, 3, 30)
    companies = sorted(c.id for c in readable(emulator))
    queue_file = tmp_path / "queue.sqlite"
    port = free_port()
    command = [
        sys.executable, "-m", "connector.webhooks", "--no-worker", "--port", str(port),
        "--queue", str(queue_file), *sys_args(sync_args(tmp_path)),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    url = f"http://127.0.0.1:{port}/webhooks/codat"
    receiver = start(command, env, port)
    try:
        for company in companies[:2] + companies[:1]:
            assert post(url, signed(read_completed(company))).status_code == 200
    finally:
        receiver.send_signal(signal.SIGKILL)
        receiver.wait(10)
    again = start(command, env, port)
    try:
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10, proxies={"http": ""}).json()
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends with the signal, once shut down
    assert health == {"ok": True, "queued": 2}

    args = ["--from-queue", "--queue", str(queue_file), *sys_args(sync_args(tmp_path))]
    assert cli.main(args) == EXIT_OK
    assert list(status_runs(tmp_path / "wh.duckdb").values()) == [set(companies[:2])]
    assert SyncQueue(queue_file).pending() == []
    assert cli.main(args) == EXIT_OK  # nothing left: no run
    assert len(status_runs(tmp_path / "wh.duckdb")) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "codat-webhooks did not start listening"
            time.sleep(0.1)


def test_without_the_webhooks_extra_the_command_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it fails
    assert webhooks_main(["--queue", str(tmp_path / "q.sqlite"), "--port", "9"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "codat-webhooks: the webhooks extra is not installed (uvicorn is missing)" in error
    assert "pip install -e '.[webhooks]'" in error
    assert not (tmp_path / "q.sqlite").exists(), "nothing made before the refusal"


def test_without_a_webhook_secret_the_command_names_the_setting(
    configured: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SOURCES__CODAT__WEBHOOK_SECRET")
    assert webhooks_main(["--queue", str(tmp_path / "q.sqlite"), "--port", "9"]) == EXIT_BAD_INPUT
    assert "webhook_secret (SOURCES__CODAT__WEBHOOK_SECRET) is not set" in capsys.readouterr().err
