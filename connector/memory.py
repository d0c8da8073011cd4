"""What a run does so that the process's memory stays what the run holds, not what it once held."""

from __future__ import annotations

import ctypes
import logging
import os

import pyarrow as pa

logger = logging.getLogger(__name__)


def arrow_memory_from_system() -> None:
    """Have Arrow allocate from the C library's allocator, unless `ARROW_DEFAULT_MEMORY_POOL` chose one.

    Arrow's default pool (mimalloc) keeps the pages a run frees for reuse, so the process grows
    to the most that several threads' pages ever held at once, plus DuckDB's share during the
    load (461 MiB where the system allocator peaks at 288 MiB, for 100,000 customers in 40
    companies); the system allocator gives large buffers back as soon as they are freed, at no
    cost in time measured. The pool is the process's: set once, before the first page.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
        logger.debug("Arrow allocates from the system allocator from now on")


def release_free_memory() -> None:
    """Give the memory the process freed back to the system, where the C library can (glibc).

    Pages read on several threads leave freed memory scattered over each thread's heap, which
    the process keeps; the load that follows would add DuckDB's share on top of it.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return
    trim(0)
