"""What a run does so that the process's memory stays what the run holds, not what it once held."""

from __future__ import annotations

import ctypes
import os

import pyarrow as pa

# glibc's `mallopt` parameter for the number of heaps its threads share (`MALLOC_ARENA_MAX`).
M_ARENA_MAX = -8
MALLOC_ARENAS = 4


def keep_memory_flat() -> None:
    """Before a run's first page: memory it frees goes back to the system, not to a thread's spare.

    Arrow's default pool (mimalloc) keeps the pages a run frees for reuse, so the process grows
    to the most that several threads' pages ever held at once (461 MiB where the system
    allocator peaks at 288 MiB, for 100,000 customers in 40 companies); the system allocator
    gives large buffers back as soon as they are freed. glibc then gives each reader thread a
    heap of its own, up to 8 per core, and keeps what each freed: 16 readers of 500,000
    customers peaked at 451 to 465 MiB, against 367 MiB on four heaps (21.7 and 22.4 s against
    24.9 to 26.2 s; two heaps peaked at 340 MiB but took 23 to 28 s, the threads waiting on them).
    Both are the process's: set once, each unless its environment variable chose otherwise
    (`ARROW_DEFAULT_MEMORY_POOL`, `MALLOC_ARENA_MAX`).
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL") and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    if not os.environ.get("MALLOC_ARENA_MAX") and (libc := _glibc()) is not None:
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - only glibc has it (not macOS, not musl)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def release_free_memory() -> None:
    """Give the memory the process freed back to the system, where the C library can (glibc).

    Pages read on several threads leave freed memory scattered over each thread's heap, which
    the process keeps; the load that follows would add DuckDB's share on top of it.
    """
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)
