"""One run per pipeline at a time: a lock file beside the pipeline's working folder.

The lock is an OS file lock (`flock`), so it goes with the process that holds it: a run
killed by SIGKILL or a reboot leaves no lock behind, only the file naming it, which the next
run takes over. The file names the holder (pid, start time, host) for the message a second
run prints. It sits beside the working folder, not in it: dlt may wipe that folder when it
restores state from the destination. It guards runs sharing a pipelines directory; runs on
two machines loading one destination need the orchestrator to keep them apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.errors import PipelineBusy

logger = logging.getLogger(__name__)


def lock_path(pipelines_dir: str, pipeline_name: str) -> Path:
    """Where the lock of a pipeline lives."""
    return Path(pipelines_dir) / f".{pipeline_name}.codat-sync.lock"


_held: set[Path] = set()  # locks this process holds: taking one again is a no-op


@contextlib.contextmanager
def pipeline_lock(pipelines_dir: str, pipeline_name: str) -> Iterator[None]:
    """Hold the pipeline's lock for the block (re-entrant within a process).

    The command line takes it before dlt creates the pipeline (two runs creating one working
    folder at once would trip over each other), and `run_sync` again for callers in Python.

    Raises:
        PipelineBusy: Another live process holds it.
    """
    path = lock_path(pipelines_dir, pipeline_name).resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise PipelineBusy(
                f"another codat-sync run (pid {holder.get('pid', '?')}, started "
                f"{holder.get('started', '?')}) holds pipeline {pipeline_name}; this run did nothing "
                f"(lock file {path})"
            ) from None
        left = _read(fd)
        if left.get("pid"):
            logger.info("Took over the lock of pipeline %s left by pid %s", pipeline_name, left["pid"])
        _write(fd, {"pid": os.getpid(), "started": _now(), "host": socket.gethostname()})
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
            _write(fd, {})
    finally:
        os.close(fd)  # releases the lock


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder(fd: int, tries: int = 20) -> dict[str, Any]:
    """Who holds the lock: a run that has just taken it may not have written its name yet."""
    for _ in range(tries - 1):
        holder = _read(fd)
        if holder.get("pid"):
            return holder
        time.sleep(0.05)
    return _read(fd)


def _read(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode() if holder else b"")
