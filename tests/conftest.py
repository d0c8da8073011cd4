"""Shared fixtures: one emulator server per session on 127.0.0.1, reset before each test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Tests never read the repository's .dlt/ nor the user's ~/.dlt: dlt looks here instead.
_DLT_HOME = tempfile.mkdtemp(prefix="codat-tests-dlt-")
atexit.register(shutil.rmtree, _DLT_HOME, True)  # each session (each xdist worker) makes its own
os.environ["DLT_PROJECT_DIR"] = _DLT_HOME
os.environ["DLT_DATA_DIR"] = _DLT_HOME
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
# The emulator has no per-minute limit unless a test turns it on: neither has the client then.
os.environ["SOURCES__CODAT__REQUESTS_PER_MINUTE"] = "1000000"

import pytest  # noqa: E402 - after the environment above

from connector.emulator.emulator import Emulator  # noqa: E402
from connector.emulator.server import EmulatorServer  # noqa: E402
from connector.shards import prepare_dataset  # noqa: E402
from tests.postgres import PostgresServer, running_postgres  # noqa: E402
from tests.shardtools import (  # noqa: E402
    SHARDS,
    SIZING,
    Database,
    Scratch,
    postgres_plan,
    shard_customers,
)
from tests.utils import API_KEY, DEFAULT_SIZING, CodatSession  # noqa: E402


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    server = EmulatorServer(Emulator(DEFAULT_SIZING, api_key=API_KEY, push_delay=0.2)).start()
    yield server
    server.stop()


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Emulator:
    """The session's emulator, regenerated with the default sizing and no faults."""
    emu = emulator_server.emulator
    emu.reset(DEFAULT_SIZING.seed, DEFAULT_SIZING.companies, DEFAULT_SIZING.customers)
    emu.latency = 0.0
    emu.latency_per_record = 0.0
    emu.limiter.daily_limit = None
    emu.limiter.max_concurrent = 10
    emu.limiter.per_minute_limit = None  # the suite sends thousands of requests a minute
    emu.limiter.window_seconds = 60.0
    emu.ledger.delay = 0.2
    return emu


@pytest.fixture
def base_url(emulator: Emulator, emulator_server: EmulatorServer) -> str:
    return emulator_server.url


@pytest.fixture
def codat(base_url: str) -> Iterator[CodatSession]:
    """A session that sends the right API key to the freshly reset emulator."""
    with CodatSession(base_url) as session:
        yield session


@pytest.fixture
def control(base_url: str) -> Iterator[CodatSession]:
    """A session without credentials, for the emulator's `/_emulator/` control API."""
    with CodatSession(base_url, api_key=None) as session:
        yield session


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's own PostgreSQL server (tests/postgres.py); skipped where none is installed."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def sharded(emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer) -> Iterator[Any]:
    """A plan whose tables exist (the orchestrator's first step), the test's sessions, shards' companies."""
    emulator.reset(*SIZING)
    plan = postgres_plan(tmp_path, postgres, SHARDS)
    companies = shard_customers(emulator, plan)
    assert all(companies.values()), f"a shard without customers proves nothing: {companies}"
    assert "customers" in prepare_dataset(plan)
    db = Database(postgres, plan.dataset_name)
    try:
        yield plan, db, companies
    finally:
        db.close()


@pytest.fixture
def scratch(postgres: PostgresServer, tmp_path: Path) -> Iterator[Scratch]:
    """A dataset name of the test's own; nothing is created yet."""
    made = Scratch(postgres, tmp_path)
    try:
        yield made
    finally:
        made.db.close()
