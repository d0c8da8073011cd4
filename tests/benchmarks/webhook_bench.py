"""Webhook to row: the latency of change-driven runs, and their requests against a nightly run's.

An emulator process sends its signed `read.completed` to a `codat-webhooks` process (its worker
on, a short debounce). After a first load from cron, one customer at a time is changed; the time
from the change (the emulator posts the webhook at once) to the company leaving the queue (done
only after its load) is the latency. A second warehouse, loaded the same first time, is synced
once after all the changes, as a nightly cron run would: its requests are the peer's.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from connector.syncqueue import SyncQueue
from tests.benchmarks.harness import API_KEY, Figures, fresh_workdir, run_process, running_emulator

SECRET = "whsec_" + base64.b64encode(b"codat-connector-benchmark-secret").decode()
DEBOUNCE = 0.5
COMPANIES, CUSTOMERS = 20, 2_000


def _env(base_url: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "SOURCES__CODAT__WEBHOOK_SECRET": SECRET,
        "SOURCES__CODAT__REQUESTS_PER_MINUTE": "1000000",  # the emulator's limit is off: latency, not pacing
        "DLT_DATA_DIR": str(workdir / "dlt"),
        "DLT_PROJECT_DIR": str(workdir / "dlt"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
    }


def _warehouse_args(workdir: Path) -> list[str]:
    return ["--duckdb-file", str(workdir / "wh.duckdb"), "--pipelines-dir", str(workdir / "p"), "--quiet"]


def _cron(base_url: str, workdir: Path) -> None:
    command = [sys.executable, "-m", "connector.cli", *_warehouse_args(workdir)]
    done = run_process(command, workdir, env=_env(base_url, workdir))
    if done.status != 0:
        raise RuntimeError(f"codat-sync exited with {done.status}: {done.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_webhooks(quick: bool) -> Figures:
    """Latency from a change to its row (median and worst), and requests against one nightly run."""
    changes = 10 if quick else 100
    rng = random.Random(7)
    with (
        running_emulator(COMPANIES, CUSTOMERS) as emulator,
        fresh_workdir("webhooks") as live,
        fresh_workdir("nightly") as nightly,
    ):
        companies = sorted(emulator.readable_customers())
        emulator.control("POST", "config", {"per_minute_limit": None})
        for workdir in (live, nightly):
            _cron(emulator.url, workdir)
        port = _free_port()
        queue_file = live / "queue.sqlite"
        command = [
            sys.executable, "-m", "connector.webhooks", "--port", str(port), "--queue", str(queue_file),
            "--debounce", str(DEBOUNCE), *_warehouse_args(live),
        ]  # fmt: skip
        env = {**_env(emulator.url, live), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        receiver = subprocess.Popen(command, env=env, cwd=live, stdout=subprocess.DEVNULL)
        try:
            _wait_listening(port, receiver)
            hook = {"webhook_url": f"http://127.0.0.1:{port}/webhooks/codat", "webhook_secret": SECRET}
            emulator.control("POST", "config", hook)
            queue = SyncQueue(queue_file)
            emulator.clear_requests()
            latencies = []
            for n in range(changes):
                company = rng.choice(companies)
                started = time.perf_counter()
                emulator.control("POST", "mutate", {"action": "modify", "company_id": company, "count": 1})
                while queue.deliveries() < n + 1 or queue.pending():
                    if time.perf_counter() - started > 120:
                        raise RuntimeError(f"change {n + 1} not loaded within 120 s")
                    time.sleep(0.01)
                latencies.append(time.perf_counter() - started)
            webhook_requests = emulator.requests_served()
        finally:
            receiver.terminate()
            receiver.wait(120)
        emulator.clear_requests()
        _cron(emulator.url, nightly)
        nightly_requests = emulator.requests_served()
    return {
        "changes": changes,
        "companies": COMPANIES,
        "customers": CUSTOMERS,
        "debounce_s": DEBOUNCE,
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_worst_s": round(max(latencies), 3),
        "webhook_requests": webhook_requests,
        "nightly_requests": nightly_requests,
    }


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"codat-webhooks exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError("codat-webhooks did not listen within 60 s") from None
            time.sleep(0.1)
