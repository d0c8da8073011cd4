"""`python -m connector.emulator` as a subprocess: it announces its URL, serves, and rejects bad flags."""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.utils import basic_auth

READY = re.compile(r"ready at (http://127\.0\.0\.1:(\d+))")


def emulator_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "connector.emulator", *flags]


def stop(process: subprocess.Popen) -> None:
    """Kill the emulator (it holds nothing to flush; see `connector.emulator.launch`)."""
    process.kill()
    process.wait(timeout=30)


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line the process prints, waiting at most `timeout` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return process.stdout.readline()


@pytest.fixture
def running_emulator():
    """Start the command line emulator on a free port; terminate it whatever the test does."""
    flags = ["--port", "0", "--companies", "2", "--customers", "50", "--seed", "3", "--api-key", "K"]
    process = subprocess.Popen(
        emulator_command(*flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process, read_line(process, timeout=30)
    finally:
        stop(process)
        process.stdout.close()
        process.stderr.close()


def test_command_line_emulator_announces_its_url_and_serves(running_emulator):
    process, line = running_emulator
    match = READY.search(line)
    assert match, line
    assert line.rstrip() == f"Codat emulator ready at {match[1]} (2 companies, 50 customers)"
    url, port = match[1], int(match[2])
    assert port > 0
    auth = {"Authorization": basic_auth("K")}
    companies = requests.get(f"{url}/companies", headers=auth, timeout=5).json()
    assert companies["totalResults"] == 2
    totals = [
        requests.get(f"{url}/companies/{c['id']}/data/customers", headers=auth, timeout=5).json()[
            "totalResults"
        ]
        for c in companies["results"]
    ]
    assert sum(totals) == 50
    assert (
        requests.get(f"{url}/companies", headers={"Authorization": basic_auth()}, timeout=5).status_code
        == 401
    )
    assert requests.get(f"{url}/_emulator/health", timeout=5).json() == {"ok": True}
    assert process.poll() is None


def test_same_seed_serves_the_same_ids_in_two_processes(running_emulator):
    _, line = running_emulator
    first = requests.get(
        f"{READY.search(line)[1]}/companies", headers={"Authorization": basic_auth("K")}, timeout=5
    )
    flags = ["--port", "0", "--companies", "2", "--customers", "50", "--seed", "3", "--api-key", "K"]
    other = subprocess.Popen(
        emulator_command(*flags), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        url = READY.search(read_line(other, timeout=30))[1]
        second = requests.get(f"{url}/companies", headers={"Authorization": basic_auth("K")}, timeout=5)
    finally:
        stop(other)
        other.stdout.close()
    assert [c["id"] for c in second.json()["results"]] == [c["id"] for c in first.json()["results"]]


def test_per_minute_limit_is_on_by_default_at_codats_figure(running_emulator):
    _, line = running_emulator
    config = requests.post(f"{READY.search(line)[1]}/_emulator/config", json={}, timeout=5).json()
    assert (config["per_minute_limit"], config["window_seconds"]) == (1000, 60.0)


@pytest.mark.parametrize(
    ("flags", "limit", "window"),
    [
        (["--per-minute-limit", "2", "--rate-window", "30"], 2, 30.0),
        (["--per-minute-limit", "0"], None, 60.0),
    ],
    ids=["two-in-30-s", "zero-is-off"],
)
def test_per_minute_flags(flags, limit, window):
    command = emulator_command(
        "--port", "0", "--companies", "1", "--customers", "5", "--api-key", "K", *flags
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = READY.search(read_line(process, timeout=30))[1]
        config = requests.post(f"{url}/_emulator/config", json={}, timeout=5).json()
        assert (config["per_minute_limit"], config["window_seconds"]) == (limit, window)
        auth = {"Authorization": basic_auth("K")}
        answers = [requests.get(f"{url}/companies", headers=auth, timeout=5) for _ in range(3)]
    finally:
        stop(process)
        process.stdout.close()
    if limit is None:
        assert [a.status_code for a in answers] == [200, 200, 200]
    else:
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert 1 <= int(answers[2].headers["Retry-After"]) <= 30


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--companies", "-1"], "--companies must be 0 or more"),
        (["--customers", "-5"], "--customers must be 0 or more"),
        (["--per-minute-limit", "-1"], "--per-minute-limit must be 0 or more"),
        (["--rate-window", "0"], "--rate-window must be more than 0"),
        (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
        (["--seed"], "argument --seed: expected one argument"),
        (["--colour", "blue"], "unrecognized arguments: --colour blue"),
    ],
    ids=[
        "negative-companies",
        "negative-customers",
        "negative-per-minute-limit",
        "empty-rate-window",
        "port-not-a-number",
        "missing-value",
        "unknown-flag",
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(flags, message):
    result = subprocess.run(
        emulator_command("--port", "0", *flags), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_port_in_use_exits_2_with_a_clear_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            emulator_command("--port", str(port)), capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_the_codat_emulator_command_is_installed_with_the_package_and_serves() -> None:
    command = Path(sys.executable).parent / "codat-emulator"
    assert command.is_file(), f"{command} is missing: install the package (pip install -e .)"
    process = subprocess.Popen(
        [str(command), "--port", "0", "--companies", "1", "--customers", "5", "--api-key", "K"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(process, timeout=30)
        match = READY.search(line)
        assert match, line
        answer = requests.get(f"{match[1]}/companies", headers={"Authorization": basic_auth("K")}, timeout=10)
    finally:
        stop(process)
        process.stdout.close()
        process.stderr.close()

    assert line.rstrip() == f"Codat emulator ready at {match[1]} (1 companies, 5 customers)"
    assert answer.status_code == 200
    assert answer.json()["totalResults"] == 1
