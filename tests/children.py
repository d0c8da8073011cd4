"""Python child processes for the tests, forked from an interpreter that has imported the connector.

A test that runs `codat-sync` in a child process with `subprocess` pays a fresh interpreter's
imports (dlt, pyarrow, duckdb: about 1.5 s of CPU) at every start, and the suite starts several
hundred. `run` and `Popen` take `subprocess`'s arguments for a Python command line
(`[sys.executable, "-m", module, ...]`, `[sys.executable, "script.py", ...]` or
`[sys.executable, "-c", code, ...]`) and start it as a fork of a server process that imported
those modules once (multiprocessing's forkserver). The child is a real process all the same: its
own pid, environment (replaced whole, as `env=` does), working folder, standard streams and exit
status; a signal kills it as it would any other, and `returncode` is `-9` after a SIGKILL.

What needs a fresh interpreter stays on `subprocess`: a check of what happens at start-up
(environment read by a library as it is imported, a console script, the demo as a user runs it).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Imported once by the server; each child then imports only what a run adds.
PRELOAD = [
    "connector.cli",
    "connector.orchestration",  # and Dagster, for the shard workers (`tests/shardrun.py`)
    "connector.emulator.emulator",
    "dlt.destinations.impl.duckdb.duck",
    "dlt.destinations.impl.duckdb.factory",
    "dlt.extract.extract",
    "dlt.load.load",
    "dlt.normalize.normalize",
    "duckdb",
    "pyarrow.parquet",
]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_running: weakref.WeakSet[Popen] = weakref.WeakSet()

Stream = int | None  # subprocess.PIPE, subprocess.DEVNULL or None (the server's own stream)


def _command(args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The command line after the interpreter, checked to be one this module can run."""
    command = [str(arg) for arg in args]
    if len(command) < 2 or command[0] != sys.executable:
        raise ValueError(f"not a command line of this interpreter: {command[:3]}")
    if command[1] in ("-m", "-c") and len(command) < 3:
        raise ValueError(f"{command[1]} without its argument")
    return command[1:]


def _child(
    command: list[str], env: dict[str, str], cwd: str | None, out: str | None, err: str | None
) -> None:
    """The child's body: the process as `python <command>` would have started it."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        if path is not None:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
    try:
        if command[0] == "-m":
            sys.argv = [command[1], *command[2:]]
            # `python -m` runs the module as `__main__`, apart from any import of it: so here.
            sys.modules.pop(command[1], None)
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        elif command[0] == "-c":
            sys.argv = ["-c", *command[2:]]
            exec(compile(command[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        else:
            sys.argv = command
            runpy.run_path(command[0], run_name="__main__")
    finally:
        atexit._run_exitfuncs()  # a fork ends with os._exit: run what an interpreter runs at exit
        sys.stdout.flush()
        sys.stderr.flush()


class Popen:
    """A child started like `subprocess.Popen(args, env=, cwd=, stdout=, stderr=, text=)`.

    Output asked for with `subprocess.PIPE` is collected in files and read once the child has
    ended (`communicate`); reading it while the child runs is not offered.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Stream = None,
        stderr: Stream = None,
        text: bool = False,
    ) -> None:
        self.args = list(args)
        self.text = text
        self.returncode: int | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="codat-child-"))
        self._out = self._stream_path(stdout, "stdout")
        self._err = self._stream_path(stderr, "stderr")
        environment = dict(os.environ if env is None else env)
        directory = None if cwd is None else str(cwd)
        self._process = _context.Process(
            target=_child, args=(_command(args), environment, directory, self._out, self._err), daemon=False
        )
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid
        _running.add(self)
        weakref.finalize(self, shutil.rmtree, self._folder, True)

    def _stream_path(self, stream: Stream, name: str) -> str | None:
        if stream == subprocess.PIPE:
            return str(self._folder / name)
        if stream == subprocess.DEVNULL:
            return os.devnull
        if stream is None:
            return None
        raise ValueError(f"{name}={stream!r}: only PIPE, DEVNULL or None")

    def poll(self) -> int | None:
        """The exit status if the child has ended, else None."""
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to end; `subprocess.TimeoutExpired` if it has not after `timeout`."""
        self._process.join(timeout)
        if self.poll() is None:
            assert timeout is not None
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Wait for the child to end, then its piped output (None for a stream not piped)."""
        self.wait(timeout)
        return self._read(self._out), self._read(self._err)

    def _read(self, path: str | None) -> Any:
        if path is None or not path.startswith(str(self._folder)):
            return None
        data = Path(path).read_bytes() if Path(path).exists() else b""
        return data.decode(errors="replace") if self.text else data

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the child, unless it has ended."""
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Forget the child's output files (the child is killed first if it still runs)."""
        if self.poll() is None:
            self.kill()
            self.wait()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    """Children a test left running end with the session (else multiprocessing waits for them)."""
    for child in list(_running):
        child.kill()


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture_output: bool = False,
    stdout: Stream = None,
    stderr: Stream = None,
    text: bool = False,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """A child run to its end, like `subprocess.run` with the same arguments."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    with Popen(args, env=env, cwd=cwd, stdout=stdout, stderr=stderr, text=text) as child:
        try:
            out, err = child.communicate(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
    assert child.returncode is not None
    done = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    if check:
        done.check_returncode()
    return done
