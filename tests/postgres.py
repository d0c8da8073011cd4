"""A throwaway PostgreSQL cluster for the test session: initdb, pg_ctl on loopback, one database."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

INSTALL_COMMAND = "apt-get install -y postgresql"
DATABASE = "codat_test"
USER = "postgres"
PASSWORD = "codat-test-pw"
# Durability costs time and buys nothing in a cluster deleted at the end of the session.
FAST_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@dataclass(frozen=True)
class PostgresServer:
    """Where the session's cluster listens and how to log in."""

    host: str
    port: int
    database: str
    user: str
    password: str

    @property
    def url(self) -> str:
        """A `postgresql://` connection string, as dlt's postgres destination takes it."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        """A new psycopg2 connection to the database (or another one of the cluster)."""
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            dbname=database or self.database,
            user=self.user,
            password=self.password,
        )


def find_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding initdb, else the one on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    """A TCP port nobody listens on at the moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_account() -> str | None:
    """The account to run the server as: initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


@dataclass
class Cluster:
    """A cluster in its own temporary directory: data, socket, log and password file."""

    bin_dir: Path
    account: str | None
    root: Path

    def run(self, program: str, *args: str) -> None:
        """Run a PostgreSQL program as the server account; fail with its output."""
        command = [str(self.bin_dir / program), *args]
        if self.account:
            command = ["runuser", "-u", self.account, "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} exited with {done.returncode}:\n{done.stdout}{done.stderr}{tail}")

    def init(self) -> None:
        """Create the data directory with password logins over TCP."""
        if self.account:
            user = pwd.getpwnam(self.account)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD)
        self.run(
            "initdb",
            "--pgdata=data",
            f"--username={USER}",
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self, port: int) -> None:
        """Listen on 127.0.0.1:`port` with the unix socket inside the cluster's directory."""
        options = f"-h 127.0.0.1 -p {port} -k {self.root} {FAST_SETTINGS}"
        self.run("pg_ctl", "start", "--wait", "-D", "data", "-l", "server.log", "-o", options)

    def stop(self) -> None:
        """Stop the server without a shutdown checkpoint; the data is thrown away anyway."""
        self.run("pg_ctl", "stop", "--wait", "-D", "data", "-m", "immediate")


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own with an empty database `codat_test`, deleted on exit.

    Skips the test when no PostgreSQL is installed, except in CI (`CI=true`), where that fails.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = (
            f"PostgreSQL not found in /usr/lib/postgresql/*/bin nor on PATH; install it: {INSTALL_COMMAND}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = Cluster(bin_dir, server_account(), Path(tempfile.mkdtemp(prefix="codat-pg-")))
    try:
        cluster.init()
        port = free_port()
        cluster.start(port)
        try:
            server = PostgresServer("127.0.0.1", port, DATABASE, USER, PASSWORD)
            admin = server.connect("postgres")
            admin.autocommit = True
            admin.cursor().execute(f"CREATE DATABASE {DATABASE}")
            admin.close()
            yield server
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
