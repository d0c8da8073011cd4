"""A full disk ends a run with one line naming the place, the summary and exit 6; the rerun is exact.

Each test puts one of the run's places (the DuckDB file, dlt's working folder, the attachment
files folder) on a small tmpfs of its own, runs `codat-sync` in a child process until the disk
is full, makes room (remounts the tmpfs larger) and runs it again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from connector.disk import describe_full_disk, full_disk_path
from connector.emulator.emulator import Emulator
from tests import children
from tests.attachmenttools import attachment_rows
from tests.killtools import account_of, files
from tests.synctools import database_customers, database_rows, expected_customers, normalise
from tests.utils import API_KEY, ROOT, make_room, small_disk

EXIT_DISK_FULL = 6


def codat_sync(
    base_url: str, root: Path, db: Path, pipelines: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SOURCES__CODAT__API_KEY": API_KEY,
        "SOURCES__CODAT__BASE_URL": base_url,
        "SOURCES__CODAT__REQUESTS_PER_MINUTE": "1000000",
        "SOURCES__CODAT__BACKOFF_FACTOR": "0.01",
        "DLT_DATA_DIR": str(root / "dlt"),
        "DLT_PROJECT_DIR": str(root / "dlt"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "connector.cli",
        "--duckdb-file",
        str(db),
        "--pipelines-dir",
        str(pipelines),
    ]
    return children.run(
        [*command, "--quiet", *flags],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_stopped_by_a_full_disk(run: subprocess.CompletedProcess[str], full: Path, place: str) -> None:
    """Exit 6, one line on stderr naming the place, no traceback, the summary marked stopped."""
    assert run.returncode == EXIT_DISK_FULL, run.stdout + run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    problem = run.stderr.splitlines()[-1]
    assert problem.startswith(f"codat-sync: disk full: no space left on the device of {full}"), problem
    assert f"({place})" in problem
    assert "free of" in problem
    assert "No space left on device" not in run.stderr  # dlt's own words about it are not repeated
    out = run.stdout.splitlines()
    assert out[0].startswith("companies: ")
    assert out[-1].startswith("STOPPED: disk full: no space left on the device of "), out


def assert_exact(emulator: Emulator, db: Path, folder: Path | None = None) -> None:
    """The warehouse (and files) hold what a complete sync of the emulator's account holds."""
    assert normalise(database_customers(db)) == expected_customers(emulator)
    loaded = database_rows(
        db, "SELECT company_id, connection_id, customer_id, id FROM codat.customer_attachments"
    )
    assert sorted(loaded) == attachment_rows(emulator)
    if folder is not None:
        account = account_of(emulator)
        assert len(files(folder)) == len(account.files)
        assert sorted(files(folder).values()) == sorted(account.files.values())


def test_a_full_duckdb_disk_stops_the_load_and_the_rerun_after_room_is_exact(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    # Small enough that the load's write-ahead log fills it, not the steps after it.
    with small_disk(tmp_path / "disk", "256k") as disk:
        db, pipelines = disk / "wh.duckdb", tmp_path / "pipelines"

        full = codat_sync(base_url, tmp_path, db, pipelines)

        assert_stopped_by_a_full_disk(full, db, "the DuckDB file")
        customers = len(expected_customers(emulator))
        assert f"customers: {customers} read and not loaded: the next run loads them first" in full.stdout
        make_room(disk)

        again = codat_sync(base_url, tmp_path, db, pipelines)

        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.startswith("interrupted run finished first: ")  # its packages, loaded first
        assert_exact(emulator, db)


def test_a_duckdb_disk_that_holds_the_load_but_not_its_checkpoint_exits_6_and_the_rerun_is_exact(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    # Room for the load in DuckDB's write-ahead log, not for writing it into the file.
    with small_disk(tmp_path / "disk", "1m") as disk:
        db, pipelines = disk / "wh.duckdb", tmp_path / "pipelines"

        full = codat_sync(base_url, tmp_path, db, pipelines)

        assert_stopped_by_a_full_disk(full, db, "the DuckDB file")
        customers = len(expected_customers(emulator))
        assert full.stdout.startswith(f"companies: 3 (0 failed)\ncustomers: {customers} new, 0 updated, ")
        assert Path(f"{db}.wal").stat().st_size > 0  # loaded, in the log DuckDB replays when it opens
        assert_exact(emulator, db)
        make_room(disk)

        again = codat_sync(base_url, tmp_path, db, pipelines)

        assert again.returncode == 0, again.stderr[-3000:]
        unchanged = "companies: 3 (0 failed, 3 unchanged)\ncustomers: 0 new, 0 updated, 0 deleted\n"
        assert again.stdout.startswith(unchanged)
        assert not Path(f"{db}.wal").exists()
        assert_exact(emulator, db)


def test_a_full_working_folder_ends_the_run_with_exit_6_and_the_rerun_is_exact(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        db, pipelines = tmp_path / "wh.duckdb", disk / "pipelines"

        full = codat_sync(base_url, tmp_path, db, pipelines)

        assert_stopped_by_a_full_disk(full, disk, "dlt's working folder")
        make_room(disk)

        again = codat_sync(base_url, tmp_path, db, pipelines)

        assert again.returncode == 0, again.stderr[-3000:]
        assert_exact(emulator, db)


def test_a_full_files_folder_stops_the_downloads_and_the_rerun_fetches_the_rest(
    emulator: Emulator, base_url: str, tmp_path: Path
) -> None:
    account = account_of(emulator)
    assert len(account.files) > 100, "the files must not all fit"
    with small_disk(tmp_path / "disk", "256k") as disk:
        db, pipelines, folder = tmp_path / "wh.duckdb", tmp_path / "pipelines", disk / "files"
        flags = ("--files", "--files-url", str(folder))

        full = codat_sync(base_url, tmp_path, db, pipelines, *flags)

        assert_stopped_by_a_full_disk(full, disk, "the attachment files folder")
        statuses = database_rows(db, "SELECT DISTINCT status FROM codat.sync_status")
        assert ("disk_full",) in statuses
        downloads = len(files(folder))
        assert 0 < downloads < len(account.files)
        make_room(disk)

        again = codat_sync(base_url, tmp_path, db, pipelines, *flags)

        assert again.returncode == 0, again.stderr[-3000:]
        assert_exact(emulator, db, folder)


def test_the_full_place_is_named_from_the_error_or_found_by_its_free_space(tmp_path: Path) -> None:
    db = tmp_path / "wh.duckdb"
    duckdb_words = RuntimeError(f'Failed to commit: Could not write file "{db}.wal": No space left on device')
    assert full_disk_path(duckdb_words) == f"{db}.wal"
    copy = OSError(errno.ENOSPC, "No space left on device", "/tmp/job.sql", None, str(tmp_path / "p" / "x"))
    wrapped = RuntimeError("load failed")
    wrapped.__cause__ = copy
    assert full_disk_path(wrapped) == str(tmp_path / "p" / "x")  # the copy's target, not its source
    assert full_disk_path(OSError(errno.ENOSPC, "No space left on device")) == ""
    assert full_disk_path(OSError(errno.EACCES, "Permission denied", "/x")) is None

    places = {"the DuckDB file": db, "dlt's working folder": tmp_path / "p"}
    line = describe_full_disk(f"{db}.wal", places)
    assert line.startswith(f"no space left on the device of {db}.wal (the DuckDB file): ")
    assert line.endswith(" there")
    with small_disk(tmp_path / "disk", "64k") as disk:
        (disk / "filler").write_bytes(b"\0" * 60_000)
        unnamed = describe_full_disk("", {**places, "the attachment files folder": disk})
        assert unnamed.startswith(f"no space left on the device of {disk} (the attachment files folder): ")
