"""Helpers shared by the tests: the repository's paths, the test API key, HTTP helpers for
talking to the emulator over loopback, and a small filesystem to fill. Fixtures live in `conftest.py`."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from connector.emulator.store import Sizing

ROOT = Path(__file__).resolve().parents[1]  # the repository
FIXTURES = ROOT / "tests" / "fixtures" / "codat"  # Codat's example bodies and schema, vendored
API_KEY = "test-key-5f2c9a"
DEFAULT_SIZING = Sizing(seed=7, companies=3, customers=300)


def basic_auth(api_key: str = API_KEY) -> str:
    """The `Authorization` value Codat expects: `Basic` and the base64 of the key alone."""
    return "Basic " + base64.b64encode(api_key.encode()).decode()


class CodatSession(requests.Session):
    """A keep-alive session whose URLs are paths under the emulator's base URL."""

    def __init__(self, base_url: str, api_key: str | None = API_KEY) -> None:
        super().__init__()
        self.base_url = base_url
        if api_key is not None:
            self.headers["Authorization"] = basic_auth(api_key)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        return super().request(method, self.base_url + str(url), *args, **kwargs)


ERROR_KEYS = {"statusCode", "service", "error", "correlationId", "canBeRetried", "detailedErrorCode"}


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET a request target exactly as written (dot segments kept), with the test API key."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        connection.request("GET", target, headers={"Authorization": basic_auth()})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_error(response: requests.Response, status: int, error: str | None = None) -> dict:
    """Check an `ErrorMessage` answer and return its body."""
    assert response.status_code == status
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["statusCode"] == status
    assert isinstance(body["correlationId"], str)
    assert len(body["correlationId"]) == 32
    assert body["canBeRetried"] == "Unknown"
    assert body["detailedErrorCode"] == 0
    if error is not None:
        assert body["error"] == error
    return body


def customers_path(company_id: str) -> str:
    return f"/companies/{company_id}/data/customers"


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder` (root only); unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a small filesystem here (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def make_room(folder: Path) -> None:
    """Remount the small filesystem larger, keeping what is on it."""
    subprocess.run(["mount", "-o", "remount,size=256m", str(folder)], check=True)
