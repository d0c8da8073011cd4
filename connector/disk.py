"""A full disk, recognised in whatever error a run meets, and said in one line.

A disk fills wherever a run writes: the DuckDB file, dlt's working folder (extracted and
normalized packages, state), the attachment files folder. The error arrives as an `OSError`
(`ENOSPC`, `EDQUOT`) or, from DuckDB and through dlt's wrappers, only as text.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from connector.errors import error_chain

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
_NAMED_FILE = re.compile(r'file "([^"]+)"')  # DuckDB: Could not write file "/x/wh.duckdb.wal": ...


def full_disk_path(exc: BaseException) -> str | None:
    """The path a write found no space for, "" when the error does not say, None if not a full disk."""
    for error in error_chain(exc):
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return str(error.filename2 or error.filename or "")  # a copy's second name is its target
    for error in error_chain(exc):
        text = str(error)
        if any(words in text for words in DISK_FULL_TEXTS):
            named = _NAMED_FILE.search(text)
            return named.group(1) if named else ""
    return None


def describe_full_disk(path: str, places: dict[str, Path]) -> str:
    """One line: the path, which of the run's places it is in, and its filesystem's free space.

    Args:
        path: What the write was for ("" when unknown).
        places: The run's places by what they are ("the DuckDB file", "dlt's working folder").
    """
    where = next((what for what, place in places.items() if _within(path, place)), None)
    if not path and places:  # the error does not say: the place whose disk has least room
        where = min(places, key=lambda what: _free_bytes(places[what]))
        path = str(places[where])
    named = f"{path} ({where})" if where else path or "a file of the run"
    return f"no space left on the device of {named}{_free_space(Path(path)) if path else ''}"


def _within(path: str, place: Path) -> bool:
    if not path:
        return False
    candidate, root = Path(path).resolve(), place.resolve()
    beside = candidate.parent == root.parent and candidate.name.startswith(root.name + ".")  # its .wal
    return candidate == root or root in candidate.parents or beside


def _usage(path: Path) -> tuple[int, int] | None:
    """Free and total bytes of the filesystem holding `path` (or its nearest existing folder)."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return usage.free, usage.total


def _free_bytes(path: Path) -> int:
    usage = _usage(path)
    return usage[0] if usage is not None else 2**63


def _free_space(path: Path) -> str:
    """`: 0 B free of 2.0 MB there`."""
    usage = _usage(path)
    return f": {_size(usage[0])} free of {_size(usage[1])} there" if usage is not None else ""


def _size(count: int) -> str:
    """`512 B`, `2.0 MB`: bytes in the largest unit that keeps the number below 1024."""
    value, units = float(count), ["B", "KB", "MB", "GB", "TB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{count} B" if units[0] == "B" else f"{value:.1f} {units[0]}"
