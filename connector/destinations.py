"""Destinations with the connector's defaults: a DuckDB file that loads in bounded memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.destinations.impl.duckdb.configuration import NON_ATTACHABLE_LOCATIONS, DuckDbCredentials

from connector.defaults import DEFAULT_DUCKDB_MEMORY_LIMIT
from connector.errors import DestinationLocked, DestinationUnusable, error_chain

DUCKDB = "dlt.destinations.duckdb"
POSTGRES = "dlt.destinations.postgres"
# DuckDB's words when another process has the file open: "... Conflicting lock is held in
# /usr/bin/duckdb (PID 1234) ...", and a hint at read-only mode when that process is a reader.
_LOCK_HELD = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")
_HOLDER_READS = "open this database in read-only mode"


def duckdb_file(path: str | Path) -> Path:
    """The DuckDB file `path` names, absolute (against the current directory), its folder made.

    dlt would resolve a relative path against the folder where the pipeline first put its
    database, not the current one.

    Raises:
        DestinationUnusable: The folder cannot be created.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file, not a folder" if resolved.parent.exists() else exc.strerror or str(exc)
        folder = resolved.parent
        raise DestinationUnusable(f"cannot create the folder {folder} for the DuckDB file: {why}") from None
    return resolved


def check_duckdb_file(path: Path) -> None:
    """Open the DuckDB file for writing once, to fail early and clearly if another process holds it.

    Raises:
        DestinationLocked: Another process holds the file.
        DestinationUnusable: The file is not a DuckDB database, or cannot be opened.
    """
    if not path.exists():
        return  # nobody holds it; dlt creates it
    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error as exc:
        problem = duckdb_problem(path, exc)
        raise (DestinationLocked if "locked by" in problem else DestinationUnusable)(problem) from None


def duckdb_problem(path: Path | None, exc: BaseException) -> str:
    """One line naming the DuckDB file (from DuckDB's message if not given) and why it cannot be opened."""
    text = str(exc)
    if path is None:
        named = re.search(r'file "([^"]+)"', text)
        path = Path(named.group(1)) if named else Path("?")
    holder = _LOCK_HELD.search(text)
    if holder:
        how = "read-only" if _HOLDER_READS in text else "for writing"
        return (
            f"the DuckDB file {path} is locked by pid {holder.group(2)} ({holder.group(1)}), which has "
            f"it open {how}; close that session and run again"
        )
    return f"cannot open the DuckDB file {path}: {text.splitlines()[0] if text else type(exc).__name__}"


def duckdb_destination(path: str | Path, memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT) -> Any:
    """A dlt DuckDB destination for `path`, with a memory limit and no insertion order to keep.

    Args:
        path: The DuckDB file, resolved against the current directory and created with its
            parent folder if missing.
        memory_limit: DuckDB's `memory_limit` for the loading connection (`"1GB"`, ...).

    Raises:
        DestinationUnusable: The folder cannot be created.
    """
    # Set, not parsed: parsing a connection string imports SQLAlchemy (0.2 s of every run)
    # only to find that a path is not a URL.
    credentials = DuckDbCredentials()
    credentials.database = str(duckdb_file(path))
    credentials.global_config = {"memory_limit": memory_limit, "preserve_insertion_order": False}
    return dlt.destinations.duckdb(credentials)


def describe_destination(pipeline: dlt.Pipeline) -> str:
    """Where a pipeline's data goes, without credentials: the DuckDB file, or the destination."""
    credentials = pipeline.destination.config_params.get("credentials")
    place = pipeline.destination.destination_name
    if isinstance(credentials, DuckDbCredentials) and credentials.database:
        place += f" file {credentials.database}"
    return f"{place}, dataset {pipeline.dataset_name}"


def duckdb_path(pipeline: dlt.Pipeline) -> Path | None:
    """The DuckDB file the pipeline loads, as dlt resolves it; None for other destinations or no file."""
    credentials = duckdb_file_credentials(pipeline)
    return None if credentials is None else Path(credentials.database)


def duckdb_file_credentials(pipeline: dlt.Pipeline) -> DuckDbCredentials | None:
    """The credentials dlt resolved for the pipeline's DuckDB file; None for other destinations or no file.

    Resolving them resolves the destination's whole configuration: a run does it once.
    """
    if pipeline.destination is None or pipeline.destination.destination_type != DUCKDB:
        return None
    credentials = pipeline.destination_client().config.credentials
    database = getattr(credentials, "database", None)
    if not isinstance(database, str) or not database or database in NON_ATTACHABLE_LOCATIONS:
        return None  # a connection handed over in-process, not a file
    assert isinstance(credentials, DuckDbCredentials)
    return credentials


@contextmanager
def one_duckdb_connection(pipeline: dlt.Pipeline, resolved: DuckDbCredentials | None) -> Iterator[None]:
    """Within the block, the pipeline's steps share one connection to its DuckDB file (if it has one).

    dlt opens the file for each load job and closes it when no job holds it, and DuckDB writes
    what was loaded into the file (a checkpoint) at each close: most of a load's time for a
    file of a few hundred MB. Held open, the file is opened once and written once, when the
    block ends. The connection takes the settings dlt resolved for the file (memory limit, ...),
    `resolved` (`duckdb_file_credentials`; None: the pipeline loads no DuckDB file, nothing to do).

    Raises:
        DestinationLocked: Another process holds the file.
        DestinationUnusable: The file cannot be opened.
    """
    if resolved is None:
        yield
        return
    path = Path(resolved.database)
    try:
        connection = duckdb.connect(str(path))
    except duckdb.Error as exc:
        problem = duckdb_problem(path, exc)
        raise (DestinationLocked if "locked by" in problem else DestinationUnusable)(problem) from None
    held = DuckDbCredentials(connection)
    for name in ("global_config", "local_config", "pragmas", "extensions", "statements"):
        setattr(held, name, getattr(resolved, name, None))
    params = pipeline.destination.config_params
    before = params.get("credentials")
    params["credentials"] = held
    try:
        yield
        # Written into the file now, so that a full disk is an error here: a checkpoint that
        # fails at `close` is silent (what was loaded stays in the WAL, replayed at next open).
        connection.execute("CHECKPOINT")
    finally:
        if before is None:
            params.pop("credentials", None)
        else:
            params["credentials"] = before
        connection.close()


def is_postgres(pipeline: dlt.Pipeline) -> bool:
    """Whether the pipeline loads into PostgreSQL."""
    return pipeline.destination is not None and pipeline.destination.destination_type == POSTGRES


def duckdb_lock_problem(exc: BaseException) -> str | None:
    """One line on DuckDB's "another process has the file open", found anywhere in an error's chain.

    dlt opens the file anew at each step, and wraps DuckDB's `IOException` when it cannot: a SQL
    client that fails to open raises `DestinationConnectionError` (the `IOException` its context
    and `inner_exc`), which is the cause of a `PipelineStepFailed` at step `sync` (the state
    restore) or `load`; the connector's own queries let it through bare. Where a wrapper kept only
    DuckDB's text, the text is read.

    Returns:
        The message `duckdb_problem` makes of it, or None when DuckDB's lock is not the cause.
    """
    errors = list(error_chain(exc))
    found = [e for e in errors if _LOCK_HELD.search(str(e))]
    found.sort(key=lambda e: not isinstance(e, duckdb.Error))  # DuckDB's own error, if it is still there
    return duckdb_problem(None, found[0]) if found else None
