"""Destinations with the connector's defaults: a DuckDB file that loads in bounded memory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

from connector.defaults import DEFAULT_DUCKDB_MEMORY_LIMIT
from connector.errors import DestinationLocked, DestinationUnusable


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
    holder = re.search(r"lock is held in (.+?) \(PID (\d+)\)", text)
    if holder:
        return (
            f"the DuckDB file {path} is locked by pid {holder.group(2)} ({holder.group(1)}), which has "
            "it open for writing; close that session (or open it with read_only=True) and run again"
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
    credentials = DuckDbCredentials(str(duckdb_file(path)))
    credentials.global_config = {"memory_limit": memory_limit, "preserve_insertion_order": False}
    return dlt.destinations.duckdb(credentials)


def describe_destination(pipeline: dlt.Pipeline) -> str:
    """Where a pipeline's data goes, without credentials: the DuckDB file, or the destination."""
    credentials = pipeline.destination.config_params.get("credentials")
    place = pipeline.destination.destination_name
    if isinstance(credentials, DuckDbCredentials) and credentials.database:
        place += f" file {credentials.database}"
    return f"{place}, dataset {pipeline.dataset_name}"


def check_destination(pipeline: dlt.Pipeline) -> None:
    """Fail early and clearly when the pipeline's DuckDB file is held by another process.

    Raises:
        DestinationLocked: Another process holds the file.
        DestinationUnusable: The file cannot be opened.
    """
    credentials = pipeline.destination.config_params.get("credentials")
    if isinstance(credentials, DuckDbCredentials) and credentials.database:
        check_duckdb_file(Path(credentials.database))
    elif pipeline.destination.destination_name == "duckdb" and isinstance(credentials, str | Path):
        check_duckdb_file(Path(credentials))
