"""Ctrl-C and SIGTERM: the run stops asking, loads what it read, says so, exits 130 or 143 in seconds.

`codat-sync` runs in a child process against an emulator slow enough (a latency per request)
that a signal lands mid-extract; the rerun after it must be exact.
"""

from __future__ import annotations

import signal
import time

import pytest

from connector.emulator.emulator import Emulator
from tests.attachmenttools import attachment_rows
from tests.killtools import RunDirs, codat_sync, start_run, wait_for_requests
from tests.synctools import database_customers, database_rows, expected_customers, normalise

LATENCY = 0.05  # seconds per request: 300 listings take seconds, time enough to signal the run
BOUND = 10.0  # seconds from the signal to the exit (a few seconds: loading what was read)


def assert_exact(emulator: Emulator, dirs: RunDirs) -> None:
    assert normalise(database_customers(dirs.db)) == expected_customers(emulator)
    loaded = database_rows(
        dirs.db, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert sorted(loaded) == attachment_rows(emulator)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_stops_the_requests_loads_what_was_read_and_exits_with_its_code(
    emulator: Emulator, base_url: str, tmp_path, signum: int, code: int
) -> None:
    emulator.latency = LATENCY
    dirs = RunDirs(tmp_path)
    run = start_run(dirs, base_url)
    wait_for_requests(emulator, 40)

    run.send_signal(signum)
    signalled = time.monotonic()
    out, err = run.communicate(timeout=60)
    lasted = time.monotonic() - signalled
    sent = len(emulator.request_log)

    name = signal.Signals(signum).name
    assert run.returncode == code, out + err
    assert lasted < BOUND, f"exited {lasted:.1f} s after {name}"
    assert "Traceback" not in err, err
    assert f"codat-sync: {name} received: no more requests; loading what was read" in err
    lines = out.splitlines()
    assert lines[0].startswith("companies: ")
    assert lines[-1] == f"STOPPED: interrupted: {name} received; the next run resumes where this one stopped"
    statuses = dict(database_rows(dirs.db, "SELECT company_id, status FROM codat.sync_status"))
    assert "interrupted" in statuses.values(), statuses
    read = database_rows(dirs.db, "SELECT COUNT(*) FROM codat.customers")[0][0]
    assert read > 0, "what was read before the signal is loaded"
    time.sleep(0.5)
    assert len(emulator.request_log) == sent, "no request after the run ended"

    emulator.latency = 0.0
    rerun = codat_sync(dirs, base_url)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exact(emulator, dirs)


def test_a_second_signal_ends_the_run_at_once_and_the_rerun_is_exact(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.latency = LATENCY
    dirs = RunDirs(tmp_path)
    run = start_run(dirs, base_url)
    wait_for_requests(emulator, 40)

    run.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=60)

    assert run.returncode == -signal.SIGTERM
    emulator.latency = 0.0
    rerun = codat_sync(dirs, base_url)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exact(emulator, dirs)
