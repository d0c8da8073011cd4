"""Run `codat-sync`, SIGKILLing the process on entering the N-th call of one named callable.

    python tests/killpoint.py TARGET N [MATCH] -- <codat-sync arguments>

TARGET is `package.module:Attr.attr` (`connector.sync:prune_child_rows`,
`dlt.load.load:Load.complete_package`), patched where it is looked up. The kill lands on
whichever thread makes the N-th call and takes the whole process. With MATCH, only calls with
an argument whose text holds MATCH count (one load job among those running at once). A target
called fewer than N times lets the run finish with its usual exit code, so a caller asserts
the -9 it expects. N = 0 never kills and prints the number of calls on stderr, to choose N by.

TARGET `files` kills on a file operation of dlt's working folder instead: every `os.rename`,
`os.replace` and `os.link` under `--pipelines-dir` is a step of a load package's life (a move
between `new/`, `normalized/` and `loaded/`, a job file's move, a state or schema write), named
by `step_of`; MATCH is the step and N its occurrence. With N = 0 every step is printed on
stderr as `killpoint step: <step>`, in the order made.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
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
FILES = "files"  # the TARGET that kills on a file operation of dlt's working folder
STEP_PREFIX = "killpoint step: "
LOAD_ID = re.compile(r"(?<![^/])\d{10}\.\d+(?![^/])")  # dlt's load ids (the extract's Unix time)
TEMP_NAME = re.compile(r"(?<![^/])[0-9a-f]{16}(?![^/])")  # dlt's temporary file and folder names
JOB_FILE_ID = re.compile(r"\.[0-9a-f]{10}\.")  # the unique part of a job file's name


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


class Steps:
    """Names the file operations under a folder as steps, the same in every run of one pipeline.

    Load ids become `L1`, `L2`, ... in the order they first appear, temporary names `<tmp>`,
    job file ids `<id>`; a path outside the folder keeps its name only (`<outside>/name`).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root) + os.sep
        self.loads: dict[str, str] = {}
        self.lock = threading.Lock()

    def path(self, path: str) -> str:
        full = os.path.realpath(path) if os.path.isabs(path) else path
        text = (
            full.removeprefix(self.root)
            if full.startswith(self.root)
            else "<outside>/" + os.path.basename(full)
        )
        text = TEMP_NAME.sub("<tmp>", JOB_FILE_ID.sub(".<id>.", text))  # a job id may be all digits
        return LOAD_ID.sub(lambda m: self.loads.setdefault(m.group(), f"L{len(self.loads) + 1}"), text)

    def step_of(self, operation: str, source: Any, destination: Any) -> str | None:
        """The step a file operation is, or None when it is not under the folder."""
        paths = [os.fspath(source), os.fspath(destination)]
        if not any(os.path.realpath(p).startswith(self.root) for p in paths):
            return None
        with self.lock:
            return f"{operation} {self.path(paths[0])} -> {self.path(paths[1])}"


def install_files(root: str, kill_at: int, step: str | None) -> list[int]:
    """Kill on the `kill_at`-th occurrence of `step` among file operations under `root` (0: print each)."""
    steps = Steps(root)
    calls = [0]
    lock = threading.Lock()

    def watched(operation: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(source: Any, destination: Any, *args: Any, **kwargs: Any) -> Any:
            named = steps.step_of(operation, source, destination)
            if named is not None and kill_at == 0:
                with lock:  # one whole line at a time: load jobs move their files from many threads
                    print(STEP_PREFIX + named, file=sys.stderr, flush=True)
            elif named == step:
                with lock:
                    calls[0] += 1
                    now = calls[0]
                if now == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                    os._exit(NOT_KILLED)
            return function(source, destination, *args, **kwargs)

        return wrapper

    for operation in ("rename", "replace", "link"):
        setattr(os, operation, watched(operation, getattr(os, operation)))
    return calls


def pipelines_dir(args: list[str]) -> str:
    """The `--pipelines-dir` of `codat-sync` arguments; the harness needs it to name steps."""
    if "--pipelines-dir" not in args:
        raise SystemExit("killpoint: target 'files' needs --pipelines-dir in the codat-sync arguments")
    return args[args.index("--pipelines-dir") + 1]


def main(argv: list[str]) -> int:
    """Patch the target, then run the command line with the arguments after `--`."""
    if "--" not in argv or argv.index("--") not in (2, 3):
        raise SystemExit(__doc__)
    split = argv.index("--")
    target, kill_at, match = argv[0], int(argv[1]), argv[2] if split == 3 else None
    if target == FILES:
        calls = install_files(pipelines_dir(argv[split + 1 :]), kill_at, match)
    else:
        calls = install(target, kill_at, match)
    from connector.cli import main as codat_sync

    code = codat_sync(argv[split + 1 :])
    if kill_at == 0:
        print(f"killpoint: {target} called {calls[0]} times", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
