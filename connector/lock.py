"""One run per pipeline, and one writer per destination: OS file locks and PostgreSQL advisory locks.

The pipeline lock is an `flock` on a file beside the pipeline's working folder; it goes with the
process that holds it: a run killed by SIGKILL or a reboot leaves no lock behind, only the file
naming it, which the next run takes over. The file names the holder (pid, start time, host) for
the message a second run prints. It sits beside the working folder, not in it: dlt may wipe that
folder when it restores state from the destination.

The destination lock keeps runs of other pipelines (another `--pipeline-name`, another pipelines
folder) off the same warehouse for the whole run:

- DuckDB: an `flock` on `<file>.codat-sync.lock` beside the DuckDB file, exclusive whatever the
  run (DuckDB takes one writer per file; shards on DuckDB each have their own file), deleted when
  the run ends. Readers of the DuckDB file never look at it.
- PostgreSQL: session advisory locks, held by a connection of the run's own that idles until the
  run ends; PostgreSQL drops them with the session, so a killed run leaves none. A whole-dataset
  run takes the dataset's key exclusively; a shard run takes it shared, and its shard's key
  exclusively, so the shards of one plan load the dataset together while a whole-dataset run, or
  the same shard run twice, is kept out. The keys are a blake2b hash of the database and dataset
  (and shard), the same in every process.
- Other destinations (filesystem, warehouses): nothing; their runs need the orchestrator to keep
  them apart, as do runs on two machines sharing one pipeline name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
from dlt.common.destination.exceptions import DestinationException
from dlt.destinations.sql_client import SqlClientBase

from connector.destinations import duckdb_path, is_postgres
from connector.errors import CodatError, DestinationLocked, DestinationUnusable, PipelineBusy

logger = logging.getLogger(__name__)

APPLICATION = "codat-sync"  # the lock session's application_name starts so: "codat-sync 1234@host codat"
_APPLICATION_NAME = re.compile(rf"{APPLICATION} (\d+)@(\S+) ?(.*)")
_NAME_LIMIT = 63  # PostgreSQL keeps that many bytes of application_name


def lock_path(pipelines_dir: str, pipeline_name: str) -> Path:
    """Where the lock of a pipeline lives."""
    return Path(pipelines_dir) / f".{pipeline_name}.codat-sync.lock"


def duckdb_lock_path(database: Path) -> Path:
    """Where the lock of a DuckDB file lives: beside it, `wh.duckdb.codat-sync.lock`."""
    return database.with_name(f"{database.name}.codat-sync.lock")


# Pipeline locks each thread holds: taking one again in the same thread is a no-op (the command
# line takes it, then `run_sync`); another thread of the process is refused like another process.
_held = threading.local()


def _held_by_this_thread() -> set[Path]:
    if not hasattr(_held, "paths"):
        _held.paths = set()
    paths: set[Path] = _held.paths
    return paths


@contextlib.contextmanager
def pipeline_lock(pipelines_dir: str, pipeline_name: str) -> Iterator[None]:
    """Hold the pipeline's lock for the block (re-entrant within a thread).

    The command line takes it before dlt creates the pipeline (two runs creating one working
    folder at once would trip over each other), and `run_sync` again for callers in Python.

    Raises:
        PipelineBusy: Another live process, or another thread of this one, holds it.
    """
    path = lock_path(pipelines_dir, pipeline_name).resolve()
    held = _held_by_this_thread()
    if path in held:
        yield
        return

    def busy(holder: dict[str, Any]) -> CodatError:
        return PipelineBusy(
            f"another codat-sync run (pid {holder.get('pid', '?')}, started "
            f"{holder.get('started', '?')}) holds pipeline {pipeline_name}; this run did nothing "
            f"(lock file {path})"
        )

    with _file_lock(path, pipeline_name, busy):
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)


@contextlib.contextmanager
def destination_lock(
    pipeline: dlt.Pipeline, shard: int | None = None, shards: int = 1, database: Path | None = None
) -> Iterator[None]:
    """Hold the pipeline's destination for the block against runs of other pipelines.

    Args:
        pipeline: The run's pipeline; its DuckDB file, or its PostgreSQL database and dataset,
            are locked (the module's docstring says how; other destinations are not).
        shard: The shard the run syncs, with `shards` > 1: it shares the dataset with the
            plan's other shards. None: the run syncs the whole dataset.
        shards: The plan's shard count (1: not sharded).
        database: The pipeline's DuckDB file, where the caller has it (`duckdb_path`): resolving
            it resolves the destination's configuration. None: looked up here.

    Raises:
        DestinationLocked: Another run holds the destination (or the shard).
        DestinationUnusable: PostgreSQL cannot be reached to take the lock.
    """
    database = database or duckdb_path(pipeline)
    if database is not None:
        path = duckdb_lock_path(database)

        def busy(holder: dict[str, Any]) -> CodatError:
            return DestinationLocked(
                f"another codat-sync run ({_holder_text(holder)}) holds the DuckDB file {database}; "
                f"this run did nothing (lock file {path})"
            )

        with _file_lock(path, pipeline.pipeline_name, busy, remove=True):
            yield
    elif is_postgres(pipeline):
        with _advisory_lock(pipeline, shard if shards > 1 else None, shards):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(
    path: Path, pipeline_name: str, busy: Callable[[dict[str, Any]], CodatError], remove: bool = False
) -> Iterator[None]:
    """Hold an `flock` on `path` for the block, the file naming this process meanwhile.

    With `remove`, the file is deleted on the way out (still locked), so nothing is left beside
    a DuckDB file; a run that opened it meanwhile finds it gone once it has the lock, and
    locks a new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise busy(holder) from None
        if not remove or _is_file(fd, path):
            break
        os.close(fd)
    try:
        left = _read(fd)
        if left.get("pid"):
            logger.info("Took over the lock %s left by pid %s", path, left["pid"])
        _write(fd, {**_this_run(), "pipeline": pipeline_name})
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
            else:
                _write(fd, {})
    finally:
        os.close(fd)  # releases the lock


def _is_file(fd: int, path: Path) -> bool:
    """Whether `fd` is the file at `path` now (not one deleted since it was opened)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino)


@contextlib.contextmanager
def _advisory_lock(pipeline: dlt.Pipeline, shard: int | None, shards: int) -> Iterator[None]:
    """Hold the dataset's advisory lock (a shard: shared, and its own exclusively) on a session of its own."""
    client = pipeline.sql_client()
    try:
        client.open_connection()
    except (DestinationException, getattr(client.dbapi, "Error", DestinationException)) as exc:
        reason = (str(getattr(exc, "inner_exc", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DestinationUnusable(
            f"cannot connect to PostgreSQL to lock the dataset {pipeline.dataset_name}: {reason}"
        ) from None
    try:
        this = _this_run()
        name = f"{APPLICATION} {this['pid']}@{this['host']} {pipeline.pipeline_name}"
        client.execute_sql("SELECT set_config('application_name', %s, false)", name[:_NAME_LIMIT])
        database = str(_one(client, "SELECT current_database()"))
        what = f"the dataset {pipeline.dataset_name} of PostgreSQL database {database}"
        locks = [(advisory_key(database, pipeline.dataset_name), shard is not None, what)]
        if shard is not None:
            key = advisory_key(database, pipeline.dataset_name, f"shard {shard} of {shards}")
            locks.append((key, False, f"shard {shard} of {shards} of {what}"))
        for key, shared, held in locks:
            if not _one(client, f"SELECT pg_try_advisory_lock{'_shared' if shared else ''}(%s)", key):
                raise DestinationLocked(
                    f"another codat-sync run ({_session_holder(client, key)}) holds {held}; "
                    f"this run did nothing (advisory lock {key})"
                )
        yield
    finally:
        client.close_connection()  # ends the session, and with it its advisory locks


def advisory_key(database: str, dataset: str, part: str = "") -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a dataset, or a part of it."""
    text = "\0".join([APPLICATION, database, dataset, *([part] if part else [])])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def _one(client: SqlClientBase[Any], sql: str, *args: Any) -> Any:
    rows = client.execute_sql(sql, *args)
    return rows[0][0] if rows else None


def _session_holder(client: SqlClientBase[Any], key: int) -> str:
    """Who holds an advisory lock: the run its session's application_name names, else the session."""
    rows = client.execute_sql(
        "SELECT a.pid, a.application_name, "
        "to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.pid <> pg_backend_pid() AND l.classid::bigint = %s AND l.objid::bigint = %s "
        "ORDER BY a.backend_start",
        (key >> 32) & 0xFFFFFFFF,
        key & 0xFFFFFFFF,
    )
    if not rows:
        return "one that has let go since; run again"
    backend, application, started = rows[0]
    started = started or "?"  # hidden from other roles without pg_read_all_stats
    more = f", and {len(rows) - 1} more" if len(rows) > 1 else ""
    ours = _APPLICATION_NAME.fullmatch(application or "")
    if ours is None:
        return f"PostgreSQL session {backend} ({application or 'no application_name'}), since {started}{more}"
    holder = {"pid": ours.group(1), "host": ours.group(2), "pipeline": ours.group(3), "started": started}
    return f"{_holder_text(holder)}, PostgreSQL session {backend}{more}"


def _holder_text(holder: dict[str, Any]) -> str:
    """`pid 1234, started 2026-01-01 00:00:00 UTC on host db1, pipeline codat`, from what is known."""
    text = f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
    text += f" on host {holder['host']}" if holder.get("host") else ""
    return text + (f", pipeline {holder['pipeline']}" if holder.get("pipeline") else "")


def _this_run() -> dict[str, Any]:
    return {"pid": os.getpid(), "started": _now(), "host": socket.gethostname()}


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
