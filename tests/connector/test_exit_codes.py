"""Every exit code of the README's table, produced by a run that ends that way.

The codes are read from the table (between its markers); each has a scenario here, so a code
added to the table without one fails `test_every_exit_code_of_the_readme_has_a_scenario`.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector import cli
from connector.emulator.emulator import Emulator
from tests import children
from tests.killtools import RunDirs, run_env, start_run, wait_for_requests
from tests.synctools import hold_duckdb_file, readable
from tests.utils import API_KEY, ROOT, small_disk

README = ROOT / "README.md"


def readme_codes() -> list[int]:
    """The exit codes the README's table lists, in its order."""
    block = README.read_text().split("<!-- exit-codes:start -->")[1].split("<!-- exit-codes:end -->")[0]
    rows = [line for line in block.splitlines()[3:] if line.strip()]
    return [int(code) for row in rows for code in re.findall(r"`(\d+)`", row.split("|")[1])]


@dataclass
class Ended:
    """How a run ended: its exit code and what it printed."""

    code: int
    out: str
    err: str


Scenario = Callable[[Emulator, str, Path, pytest.MonkeyPatch, pytest.CaptureFixture[str]], Ended]


def in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *flags: str
) -> Ended:
    """`codat-sync` run by its `main`, in this process, on the test's own warehouse."""
    monkeypatch.chdir(tmp_path)
    args = [
        "--quiet",
        "--pipelines-dir",
        str(tmp_path / "pipelines"),
        "--duckdb-file",
        str(tmp_path / "wh.duckdb"),
    ]
    try:
        code = cli.main([*args, *flags])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Ended(code, out, err)


def clean(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    return in_process(tmp_path, monkeypatch, capsys)


def company_failed(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    victim = readable(emulator)[0]
    emulator.add_fault("400", count=1, match=f"/companies/{victim.id}/data/customers")
    return in_process(tmp_path, monkeypatch, capsys)


def bad_flag(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    return in_process(tmp_path, monkeypatch, capsys, "--companies", ",")


def api_unreachable(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    monkeypatch.setenv("SOURCES__CODAT__BREAKER_FAILURES", "3")
    monkeypatch.setenv("SOURCES__CODAT__BREAKER_SECONDS", "0")
    emulator.add_fault("503", count=50, match="/data/customers")
    return in_process(tmp_path, monkeypatch, capsys)


def quota_spent(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    emulator.add_fault("429", count=50, retry_after="3600", match="/data/customers")
    return in_process(tmp_path, monkeypatch, capsys)


def busy(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    holder = hold_duckdb_file(tmp_path / "wh.duckdb")
    try:
        return in_process(tmp_path, monkeypatch, capsys)
    finally:
        holder.kill()
        holder.wait()


def disk_full(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
    with small_disk(tmp_path / "disk", "1m") as disk:
        dirs = RunDirs(tmp_path)
        args = [sys.executable, "-m", "connector.cli", *dirs.args()]
        args[args.index("--duckdb-file") + 1] = str(disk / "wh.duckdb")
        run = children.run(args, env=run_env(dirs, base_url), capture_output=True, text=True, timeout=300)
        return Ended(run.returncode, run.stdout, run.stderr)


def signalled(signum: int) -> Scenario:
    def scenario(emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch, capsys) -> Ended:
        emulator.latency = 0.05
        run = start_run(RunDirs(tmp_path), base_url)
        wait_for_requests(emulator, 20)
        run.send_signal(signum)
        out, err = run.communicate(timeout=60)
        return Ended(run.returncode, out, err)

    return scenario


# Each code, the run that ends with it, and the line (on stdout or stderr) it ends with.
SCENARIOS: dict[int, tuple[Scenario, str]] = {
    0: (clean, "time: "),
    1: (company_failed, "FAILED "),
    2: (bad_flag, "codat-sync: error: argument --companies: "),
    3: (api_unreachable, "STOPPED: API unreachable: "),
    4: (quota_spent, "STOPPED: daily quota spent: "),
    5: (busy, "codat-sync: the DuckDB file "),
    6: (disk_full, "codat-sync: disk full: no space left on the device of "),
    130: (signalled(signal.SIGINT), "STOPPED: interrupted: SIGINT received; "),
    143: (signalled(signal.SIGTERM), "STOPPED: interrupted: SIGTERM received; "),
}


def test_every_exit_code_of_the_readme_has_a_scenario() -> None:
    codes = readme_codes()
    assert codes == sorted(set(codes)), codes
    assert set(codes) == set(SCENARIOS)


@pytest.mark.parametrize("code", sorted(SCENARIOS), ids=[str(c) for c in sorted(SCENARIOS)])
def test_a_run_that_ends_this_way_exits_with_the_readme_s_code(
    code: int,
    emulator: Emulator,
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__BACKOFF_FACTOR", "0.01")
    scenario, ending = SCENARIOS[code]
    began = time.monotonic()

    ended = scenario(emulator, base_url, tmp_path, monkeypatch, capsys)

    assert ended.code == code, ended.out + ended.err[-3000:]
    last = (ended.err if code in (2, 5, 6) else ended.out).splitlines()
    assert any(line.startswith(ending) for line in last[-3:]), last[-3:]
    assert "Traceback" not in ended.err
    assert API_KEY not in ended.out + ended.err
    assert time.monotonic() - began < 120
