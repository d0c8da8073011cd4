"""Run `codat-sync`, SIGKILLing the process on entering the N-th call of one named callable.

    python tests/killpoint.py TARGET N [MATCH] -- <codat-sync arguments>

TARGET is `package.module:Attr.attr` (`connector.sync:prune_child_rows`,
`dlt.load.load:Load.complete_package`), patched where it is looked up. The kill lands on
whichever thread makes the N-th call and takes the whole process. With MATCH, only calls with
an argument whose text holds MATCH count (one load job among those running at once). A target
called fewer than N times lets the run finish with its usual exit code, so a caller asserts
the -9 it expects. N = 0 never kills and prints the number of calls on stderr, to choose N by.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `python tests/killpoint.py` puts tests/ first on sys.path: its modules must not shadow others.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

NOT_KILLED = 99  # the exit code if SIGKILL somehow returned


def resolve(target: str) -> tuple[Any, str]:
    """The object holding the target and the attribute's name on it."""
    module_name, sep, path = target.partition(":")
    if not sep or not path:
        raise SystemExit(f"killpoint: target {target!r} is not package.module:Attr.attr")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    if not hasattr(owner, name):
        raise SystemExit(f"killpoint: {target!r} names nothing")
    return owner, name


def counting(
    function: Callable[..., Any], kill_at: int, calls: list[int], match: str | None = None
) -> Callable[..., Any]:
    """`function`, killing the process on entering its `kill_at`-th (matching) call (0: never)."""
    lock = threading.Lock()

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if match is not None and not any(
            isinstance(a, str) and match in a for a in (*args, *kwargs.values())
        ):
            return function(*args, **kwargs)
        with lock:
            calls[0] += 1
            now = calls[0]
        if now == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
            os._exit(NOT_KILLED)
        return function(*args, **kwargs)

    return wrapper


def install(target: str, kill_at: int, match: str | None = None) -> list[int]:
    """Replace the target with its counting wrapper; returns the call counter (a one-item list)."""
    owner, name = resolve(target)
    # Static and class methods keep their descriptor, or the wrapper would receive the class.
    raw = inspect.getattr_static(owner, name)
    calls = [0]
    replacement: Any
    if isinstance(raw, staticmethod | classmethod):
        replacement = type(raw)(counting(raw.__func__, kill_at, calls, match))
    else:
        replacement = counting(raw, kill_at, calls, match)
    setattr(owner, name, replacement)
    return calls


def main(argv: list[str]) -> int:
    """Patch the target, then run the command line with the arguments after `--`."""
    if "--" not in argv or argv.index("--") not in (2, 3):
        raise SystemExit(__doc__)
    split = argv.index("--")
    target, kill_at, match = argv[0], int(argv[1]), argv[2] if split == 3 else None
    calls = install(target, kill_at, match)
    from connector.cli import main as codat_sync

    code = codat_sync(argv[split + 1 :])
    if kill_at == 0:
        print(f"killpoint: {target} called {calls[0]} times", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
