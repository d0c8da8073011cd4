"""Shared fixtures: one emulator server per session on 127.0.0.1, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.emulator.server import Emulator, EmulatorServer
from connector.emulator.store import Sizing

API_KEY = "test-key-5f2c9a"
DEFAULT_SIZING = Sizing(seed=7, companies=3, customers=300)


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
    emu.limiter.daily_limit = None
    emu.limiter.max_concurrent = 10
    emu.ledger.delay = 0.2
    return emu


@pytest.fixture
def base_url(emulator: Emulator, emulator_server: EmulatorServer) -> str:
    return emulator_server.url
