"""Run the emulator's command line in a child process, for demos and benchmarks."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_READY_TIMEOUT = 60.0
READY = re.compile(r"ready at (http://[^\s:]+:\d+)")


class EmulatorStartError(RuntimeError):
    """The emulator process did not announce its URL."""


@contextlib.contextmanager
def emulator_process(*flags: str, ready_timeout: float = DEFAULT_READY_TIMEOUT) -> Iterator[str]:
    """Start `python -m connector.emulator --port 0 FLAGS...`, yield its URL, stop it on exit.

    Args:
        *flags: More command-line flags (`--companies`, `--api-key`, ...).
        ready_timeout: Seconds to wait for the "ready at" line.

    Yields:
        The emulator's base URL.

    Raises:
        EmulatorStartError: It exited or stayed silent instead of announcing its URL.
    """
    command = [sys.executable, "-m", "connector.emulator", "--port", "0", *flags]
    path = os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        try:
            yield _wait_until_ready(process, errors, ready_timeout)
        finally:
            # The emulator holds nothing to flush, so it is killed, not asked to stop: a caller
            # that ignores SIGTERM (as a background job's Dagster instance made the test session
            # do) passes that on to its children, and a test of an API that dies needs it gone.
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _wait_until_ready(process: subprocess.Popen[str], errors: IO[str], timeout: float) -> str:
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise EmulatorStartError(f"the emulator did not start within {timeout:.0f} s") from None
    found = READY.search(line)
    if found is None:
        process.wait(timeout=10)
        errors.seek(0)
        said = (line + errors.read()).strip() or "no output"
        raise EmulatorStartError(f"the emulator did not start: {said}")
    return found.group(1)
