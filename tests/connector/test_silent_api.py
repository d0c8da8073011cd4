"""A silent API (connections accepted, no answer) ends a run within its timeouts and the breaker's silence.

The runs here use timeouts of half a second; the defaults' own figures, which no test can wait
for, are computed by driving the real `CircuitBreaker` and dlt's backoff on a fake clock.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dlt.sources.helpers.requests.retry import wait_exponential_retry_after
from requests.exceptions import ReadTimeout
from tenacity import RetryCallState, Retrying

from connector import cli, defaults
from connector.emulator.emulator import Emulator
from connector.pacing import CircuitBreaker
from tests.synctools import (
    attachment_keys,
    database_customers,
    database_rows,
    expected_customers,
    normalise,
    readable,
)
from tests.utils import API_KEY, ROOT

# What a run does besides waiting for the API (start, company listing, loading what it read),
# allowed on top of the breaker's figure: seconds on a busy 2-core test machine.
END_OF_RUN = 15.0
SLOW = 2.0  # seconds a slow emulator answer takes: well past the tests' read timeout
STOPPED_BY_SILENCE = r"no answer for \d+ s while 2 attempts failed"


@dataclass(frozen=True)
class Settings:
    """The settings that time a run against an API that does not answer."""

    connect_timeout: float = defaults.DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = defaults.DEFAULT_READ_TIMEOUT
    breaker_silence: float = defaults.DEFAULT_BREAKER_SILENCE
    breaker_failures: int = defaults.DEFAULT_BREAKER_FAILURES
    breaker_seconds: float = defaults.DEFAULT_BREAKER_SECONDS
    max_attempts: int = defaults.DEFAULT_MAX_ATTEMPTS
    backoff_factor: float = defaults.DEFAULT_BACKOFF_FACTOR
    max_retry_wait: float = defaults.DEFAULT_MAX_RETRY_WAIT

    def environment(self) -> dict[str, str]:
        """The settings as `SOURCES__CODAT__*` variables."""
        return {f"SOURCES__CODAT__{name.upper()}": str(value) for name, value in vars(self).items()}

    def backoff(self, attempt: int) -> float:
        """dlt's wait after a timed-out attempt, as `CodatClient` configures its retries."""
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = attempt
        state.set_exception((ReadTimeout, ReadTimeout(), None))
        return float(
            wait_exponential_retry_after(multiplier=self.backoff_factor, max=self.max_retry_wait)(state)
        )


DEFAULTS = Settings()
FAST = Settings(connect_timeout=0.5, read_timeout=0.5, breaker_silence=0.8, backoff_factor=0.01)


@dataclass
class Timeline:
    """How a run's requests end when every attempt fails after `seconds_per_attempt`."""

    seconds: float  # from the first attempt to the end of the last
    attempts: int
    opened: str | None  # why the breaker opened; None: the requests gave up first


def timeline(settings: Settings, seconds_per_attempt: float, requests: int = 1) -> Timeline:
    """Requests sent one after another (as a company listing, then a page per company), on a fake clock.

    Each attempt fails after `seconds_per_attempt`, and each request makes `max_attempts` with
    dlt's backoff between them; the attempt that opens the real `CircuitBreaker` ends it all.
    """
    now = [0.0]
    breaker = CircuitBreaker(
        settings.breaker_failures, settings.breaker_seconds, settings.breaker_silence, clock=lambda: now[0]
    )
    attempts = 0
    for _ in range(requests):
        for attempt in range(1, settings.max_attempts + 1):
            with breaker.attempt():
                attempts += 1
                now[0] += seconds_per_attempt
                opened = breaker.failed()
            if opened is not None:
                return Timeline(now[0], attempts, opened)
            if attempt < settings.max_attempts:
                now[0] += settings.backoff(attempt)
    return Timeline(now[0], attempts, None)


# -- the defaults' arithmetic ------------------------------------------------------------------


def test_the_defaults_stop_an_api_that_never_answers_within_two_minutes() -> None:
    silent = timeline(DEFAULTS, DEFAULTS.read_timeout, requests=3)  # the listing, or the first page
    backoffs = [DEFAULTS.backoff(n) for n in range(1, DEFAULTS.max_attempts)]

    assert backoffs == [1.0, 2.0, 4.0, 8.0, 16.0]
    # Timed out at 30 s (silent 30 s < 40: retried), again at 30 + 1 + 30 = 61 s (>= 40): stop.
    assert (silent.seconds, silent.attempts) == (61.0, 2)
    assert silent.opened == "no answer for 61 s while 2 attempts failed"
    assert silent.seconds + END_OF_RUN <= 120  # was 393 s (6 x 60 s + backoff) and 650 s
    # Many requests in flight, silence at any moment: the breaker opens within the silence, a
    # backoff and an attempt; the attempts then in flight end within their read timeout.
    anywhere = DEFAULTS.breaker_silence + max(backoffs) + 2 * DEFAULTS.read_timeout
    assert anywhere == 116.0
    assert anywhere <= 120


def test_the_defaults_stop_a_dead_api_sooner() -> None:
    black_hole = timeline(DEFAULTS, DEFAULTS.connect_timeout, requests=3)  # no connection accepted
    refused = timeline(DEFAULTS, 0.0, requests=3)  # a page per company, each refused 6 times
    listing = timeline(DEFAULTS, 0.0)  # the company listing alone: it gives up, and the run ends

    assert (black_hole.seconds, black_hole.attempts) == (47.0, 4)  # 10, 21, 33, 47 s
    assert (refused.seconds, refused.attempts, refused.opened) == (
        38.0,
        10,
        "10 attempts in a row failed over 38 s",
    )
    assert (listing.seconds, listing.attempts, listing.opened) == (31.0, 6, None)


def test_the_readme_states_the_figures_the_defaults_give() -> None:
    readme = (ROOT / "README.md").read_text()
    bullet = readme.split("- **Circuit breaker.**")[1].split("\n- **")[0]

    for figure in (
        "30 + 1 + 30 = 61 s",
        "10, 21, 33, 47 s",
        "at 38 s",
        "at 31 s",
        "40 + 16 + 30 = 86 s",
        "116 s",
    ):
        assert figure in bullet, figure


# -- runs against an API that does not answer ------------------------------------------------


class SilentServer:
    """A TCP server on loopback that accepts connections and reads requests, and never answers."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self._closed = threading.Event()
        self._connections: list[socket.socket] = []
        self.requests: list[float] = []  # when each request arrived (time.monotonic)
        threading.Thread(target=self._accept, name="silent-server", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        received = b""
        while True:
            try:
                chunk = connection.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            received += chunk
            while b"\r\n\r\n" in received:  # a GET's head: no body follows
                _, received = received.split(b"\r\n\r\n", 1)
                self.requests.append(time.monotonic())

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def codat_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str, settings: Settings) -> int:
    """`codat-sync` in process, against `base_url`, with the test's warehouse and settings."""
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        **settings.environment(),
    }.items():
        monkeypatch.setenv(name, value)
    warehouse = ["--duckdb-file", str(tmp_path / "wh.duckdb"), "--pipelines-dir", str(tmp_path / "pipelines")]
    return cli.main([*warehouse, "--quiet"])


def test_an_api_that_never_answers_ends_the_run_at_the_breaker(
    silent_server: SilentServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = timeline(FAST, FAST.read_timeout)  # 0.5 s, then 0.01 + 0.5 s: silent 1.01 s >= 0.8

    code = codat_sync(tmp_path, monkeypatch, silent_server.url, FAST)
    ended = time.monotonic()

    out, err = capsys.readouterr()
    assert code == 3, err
    assert out == ""  # no company was listed: nothing to sum up
    assert re.fullmatch(
        r"codat-sync: list companies failed: stopped: API unreachable: "
        rf"{STOPPED_BY_SILENCE}; the last: ReadTimeout",
        err.splitlines()[-1],
    ), err
    assert len(silent_server.requests) == expected.attempts == 2
    took = ended - silent_server.requests[0]
    assert expected.seconds <= took <= expected.seconds + END_OF_RUN
    assert codat_tables(tmp_path / "wh.duckdb") == []


def codat_tables(database: Path) -> list[tuple[str]]:
    """The tables of the `codat` dataset, if the DuckDB file was made at all."""
    if not database.exists():
        return []
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'codat'"
    return database_rows(database, sql)


def wait_for_log(emulator: Emulator, fault: str, count: int) -> list[dict[str, object]]:
    """The request log's entries of a fault once `count` are there (slow answers log when done)."""
    deadline = time.monotonic() + SLOW + 10
    while True:
        entries = [e for e in list(emulator.request_log) if e["fault"] == fault]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_an_api_that_hangs_after_the_company_listing_ends_the_run_and_a_rerun_is_exact(
    emulator: Emulator,
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert codat_sync(tmp_path, monkeypatch, base_url, FAST) == 0
    database = tmp_path / "wh.duckdb"
    loaded = database_customers(database)
    listed = database_rows(database, "SELECT * FROM codat.customer_attachments ORDER BY ALL")
    changed = readable(emulator)
    for company in changed:
        emulator.store.mutate(company.id, "modify", count=5)
    emulator.add_fault("slow", count=1000, delay=SLOW, match="/data/")  # every request after the listing
    capsys.readouterr()
    # The timeline is of requests one after another: one company at a time. Companies read at
    # once fail their attempts side by side and stop at the same silence, with more attempts.
    monkeypatch.setenv("SOURCES__CODAT__COMPANY_CONCURRENCY", "1")
    expected = timeline(FAST, FAST.read_timeout)

    began = time.monotonic()
    code = codat_sync(tmp_path, monkeypatch, base_url, FAST)
    took = time.monotonic() - began

    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert re.fullmatch(
        rf"STOPPED: API unreachable: {STOPPED_BY_SILENCE}; the last: ReadTimeout; "
        "the next run resumes where this one stopped",
        out.splitlines()[-1],
    ), out
    assert took <= expected.seconds + END_OF_RUN
    assert emulator.faults.faults[0].count == 1000 - expected.attempts  # 2 attempts, then nothing sent
    run = database_rows(database, "SELECT MAX(load_id) FROM codat.sync_status")[0][0]
    statuses = dict(
        database_rows(database, f"SELECT company_id, status FROM codat.sync_status WHERE load_id = '{run}'")
    )
    assert statuses == {company.id: "api_unreachable" for company in changed}
    assert database_customers(database) == loaded  # nothing already loaded is lost
    assert database_rows(database, "SELECT * FROM codat.customer_attachments ORDER BY ALL") == listed

    assert len(wait_for_log(emulator, "slow", expected.attempts)) == expected.attempts
    emulator.faults.clear()
    assert codat_sync(tmp_path, monkeypatch, base_url, FAST) == 0
    assert normalise(database_customers(database)) == expected_customers(emulator)
    keys = database_rows(
        database, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert sorted(keys) == sorted(attachment_keys(emulator))


def test_one_slow_answer_among_healthy_ones_is_retried(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.add_fault("slow", count=1, delay=SLOW, match="/data/customers")  # the first customer page

    code = codat_sync(tmp_path, monkeypatch, base_url, FAST)

    assert code == 0
    slow = wait_for_log(emulator, "slow", 1)
    assert len(slow) == 1
    retried = [
        e
        for e in emulator.request_log
        if (e["path"], e["params"]) == (slow[0]["path"], slow[0]["params"]) and e["fault"] is None
    ]
    assert [e["status"] for e in retried] == [200]
    assert normalise(database_customers(tmp_path / "wh.duckdb")) == expected_customers(emulator)
