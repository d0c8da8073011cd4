"""A run puts Arrow on the system allocator, unless the environment chose one; in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.utils import ROOT

PROBE = (
    "import pyarrow as pa; from connector.memory import keep_memory_flat, release_free_memory; "
    "before = pa.default_memory_pool().backend_name; keep_memory_flat(); release_free_memory(); "
    "print(before, pa.default_memory_pool().backend_name)"
)


def pools(**env: str) -> list[str]:
    """Arrow's pool before and after `keep_memory_flat` in a fresh process with `env` added."""
    chosen = ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")
    clean = {k: v for k, v in os.environ.items() if k not in chosen}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_arrow_moves_from_its_default_pool_to_the_system_allocator() -> None:
    before, after = pools()

    assert before != "system"  # mimalloc or jemalloc, as pyarrow's wheels build it
    assert after == "system"


@pytest.mark.parametrize("chosen", ["mimalloc", "jemalloc"])
def test_a_pool_the_environment_chose_is_kept(chosen: str) -> None:
    assert pools(ARROW_DEFAULT_MEMORY_POOL=chosen) == [chosen, chosen]
