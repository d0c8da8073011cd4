"""The `codat-sync` command in process against the session emulator, and `make demo` end to end."""

from __future__ import annotations

import base64
import gzip
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from connector import cli
from connector.emulator.emulator import Emulator
from connector.emulator.model import STATUS_COMPLETE
from tests.synctools import database_rows
from tests.utils import API_KEY, ROOT

ROOT = ROOT
DB_NAME = "warehouse.duckdb"
TIME_LINE = re.compile(r"^time: \d+\.\d s \(extract \d+\.\d s, normalize \d+\.\d s, load \d+\.\d s\)$")
DEMO_SECTIONS = (
    "== Run 1: first sync",
    "== Changes in the emulator",
    "== Run 2: incremental",
    "== Run 3: every customer's attachments listed again",
    "== Customers per company",
    "== Currency mix",
    "== Deleted customers",
    "== Attachment content types",
    "== Latest sync_status rows",
)


@pytest.fixture(autouse=True)
def codat_env(monkeypatch: pytest.MonkeyPatch, base_url: str, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository, whatever the command writes
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__BACKOFF_FACTOR", "0.01")


def codat_sync(tmp_path: Path, *args: str) -> int:
    base = ["--pipelines-dir", str(tmp_path / "pipelines"), "--duckdb-file", str(tmp_path / DB_NAME)]
    return cli.main([*base, "--quiet", *args])


def summary(out: str) -> list[str]:
    """The printed lines, with the run time (the one varying line) checked and dropped."""
    lines = out.splitlines()
    assert any(TIME_LINE.match(line) for line in lines), lines
    return [line for line in lines if not TIME_LINE.match(line)]


def data_line(tmp_path: Path) -> str:
    return f"data: duckdb file {(tmp_path / DB_NAME).resolve()}, dataset codat"


def rows(tmp_path: Path, sql: str) -> list[tuple]:
    return database_rows(tmp_path / DB_NAME, sql)


def tables(tmp_path: Path) -> set[str]:
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'codat'"
    return {name for (name,) in rows(tmp_path, sql)}


def readable(emulator: Emulator, ids: set[str] | None = None) -> list:
    return [
        c
        for c in emulator.store.companies.values()
        if c.customers_status == STATUS_COMPLETE and (ids is None or c.id in ids)
    ]


def deleted_count(emulator: Emulator, ids: set[str] | None = None) -> int:
    return sum(
        1
        for company in readable(emulator, ids)
        for record in company.customers.values()
        if (record.get("metadata") or {}).get("isDeleted")
    )


def attachment_count(emulator: Emulator, ids: set[str] | None = None) -> int:
    total = 0
    for company in readable(emulator, ids):
        accounting = {c.id for c in company.accounting_connections}
        total += sum(len(items) for (conn, _), items in company.attachments.items() if conn in accounting)
    return total


def operations(emulator: Emulator) -> list[str]:
    return [entry["operation"] for entry in emulator.request_log]


def listings(emulator: Emulator) -> int:
    """Attachment listings the emulator answered."""
    return operations(emulator).count("list-customer-attachments")


def test_a_clean_run_exits_0_and_prints_what_it_loaded(emulator: Emulator, tmp_path, capsys) -> None:
    customers = sum(len(c.customers) for c in readable(emulator))

    code = codat_sync(tmp_path)

    out, err = capsys.readouterr()
    assert code == 0, err
    assert summary(out) == [
        "companies: 3 (0 failed)",
        f"customers: {customers} new, 0 updated, 0 deleted, {deleted_count(emulator)} loaded already deleted",
        f"attachments: {attachment_count(emulator)} found in {listings(emulator)} listings, "
        f"{attachment_count(emulator)} added, 0 removed, 0 files downloaded",
        f"requests spent: {len(emulator.request_log)}",
        data_line(tmp_path),
    ]
    assert len(emulator.request_log) == 1 + 3 + customers  # companies, a page each, attachments
    assert rows(tmp_path, "SELECT COUNT(*) FROM codat.customers") == [(customers,)]
    assert rows(tmp_path, "SELECT COUNT(*) FROM codat.customer_attachments") == [
        (attachment_count(emulator),)
    ]
    assert {"customers_current", "customer_attachments_with_customers", "sync_status"} <= tables(tmp_path)


def test_a_second_run_without_changes_loads_nothing_for_one_request(
    emulator: Emulator, tmp_path, capsys
) -> None:
    assert codat_sync(tmp_path) == 0
    capsys.readouterr()
    emulator.clear_log()

    code = codat_sync(tmp_path)

    assert code == 0
    assert summary(capsys.readouterr().out) == [
        "companies: 3 (0 failed, 3 unchanged)",
        "customers: 0 new, 0 updated, 0 deleted",
        "attachments: 0 found in 0 listings, 0 added, 0 removed, 0 files downloaded",
        "requests spent: 1",
        data_line(tmp_path),
    ]
    assert operations(emulator) == ["list-companies"]


@pytest.mark.parametrize(("strict", "exit_code"), [(False, 0), (True, 1)], ids=["default", "strict"])
def test_companies_codat_has_not_read_are_not_ready_not_failed(
    emulator: Emulator, tmp_path, capsys, strict: bool, exit_code: int
) -> None:
    emulator.reset(7, 6, 300)
    companies = list(emulator.store.companies.values())
    unread = [c for c in companies if c.customers_status != STATUS_COMPLETE and c.accounting_connections]
    assert len(unread) == 2  # never read, and a read still running

    code = codat_sync(tmp_path, *(["--strict"] if strict else []))

    out, err = capsys.readouterr()
    assert code == exit_code
    lines = out.splitlines()
    assert lines[0] == "companies: 6 (0 failed, 1 skipped, 2 not_ready)"
    assert not [line for line in lines if line.startswith("FAILED ")]
    not_ready = sorted(line for line in lines if line.startswith("NOT READY "))
    assert not_ready == sorted(
        f"NOT READY {c.id} ({c.name}): The data set has not been requested." for c in unread
    )
    assert "409" not in err  # not an error: nothing on stderr for cron to mail
    statuses = rows(tmp_path, "SELECT company_id, status, http_status, error FROM codat.sync_status")
    assert {r for r in statuses if r[1] == "not_ready"} == {
        (c.id, "not_ready", 409, "The data set has not been requested.") for c in unread
    }
    stored = rows(tmp_path, "SELECT DISTINCT company_id FROM codat.customers")
    assert {cid for (cid,) in stored} == {c.id for c in readable(emulator) if c.customers}


def test_a_missing_api_key_exits_2_naming_the_variable(
    emulator: Emulator, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("SOURCES__CODAT__API_KEY")

    code = codat_sync(tmp_path)

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "missing configuration: api_key" in err
    assert "SOURCES__CODAT__API_KEY" in err
    assert not emulator.request_log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "since (SOURCES__CODAT__SINCE) must be a date such as 2024-01-31"),
        (["--until", "31/01/2024"], "until (SOURCES__CODAT__UNTIL) must be a date such as 2024-01-31"),
        (["--duckdb-file", "codat.duckdb"], "share a name, which DuckDB cannot tell apart"),
    ],
    ids=["bad-since", "bad-until", "duckdb-file-named-like-dataset"],
)
def test_bad_arguments_exit_2_before_any_request(
    emulator: Emulator, tmp_path, capsys, args: list[str], message: str
) -> None:
    code = cli.main(["--pipelines-dir", str(tmp_path / "pipelines"), "--quiet", *args])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("codat-sync: ")
    assert message in err
    assert not emulator.request_log
    assert not list(tmp_path.glob("*.duckdb"))


def test_companies_and_company_query_exclude_each_other(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        codat_sync(tmp_path, "--companies", "a", "--company-query", "name~Acme")

    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_companies_selects_only_those(emulator: Emulator, tmp_path, capsys) -> None:
    chosen = [c.id for c in readable(emulator)[:2]]
    customers = sum(len(c.customers) for c in readable(emulator, set(chosen)))

    code = codat_sync(tmp_path, "--companies", f"{chosen[0]}, {chosen[1]}")

    assert code == 0
    assert summary(capsys.readouterr().out)[:2] == [
        "companies: 2 (0 failed)",
        f"customers: {customers} new, 0 updated, 0 deleted, "
        f"{deleted_count(emulator, set(chosen))} loaded already deleted",
    ]
    assert {e["company_id"] for e in emulator.request_log} == set(chosen)
    assert "list-companies" not in operations(emulator)
    assert rows(tmp_path, "SELECT DISTINCT company_id FROM codat.customers ORDER BY 1") == [
        (cid,) for cid in sorted(chosen)
    ]


def test_no_attachments_lists_none(emulator: Emulator, tmp_path, capsys) -> None:
    code = codat_sync(tmp_path, "--no-attachments")

    assert code == 0
    out = summary(capsys.readouterr().out)
    assert out[2:] == [
        "attachments: 0 found in 0 listings, 0 added, 0 removed, 0 files downloaded",
        "requests spent: 4",
        data_line(tmp_path),
    ]
    assert "list-customer-attachments" not in operations(emulator)
    assert "customer_attachments" not in tables(tmp_path)
    assert rows(tmp_path, "SELECT COUNT(*) FROM codat.customers") == [
        (sum(len(c.customers) for c in readable(emulator)),)
    ]


def test_full_refresh_loads_everything_again(emulator: Emulator, tmp_path, capsys) -> None:
    customers = sum(len(c.customers) for c in readable(emulator))
    assert codat_sync(tmp_path) == 0
    capsys.readouterr()
    emulator.clear_log()

    code = codat_sync(tmp_path, "--full-refresh")

    assert code == 0
    assert summary(capsys.readouterr().out) == [
        "companies: 3 (0 failed)",
        f"customers: {customers} new, 0 updated, 0 deleted, {deleted_count(emulator)} loaded already deleted",
        f"attachments: {attachment_count(emulator)} found in {customers} listings, "
        f"{attachment_count(emulator)} added, 0 removed, 0 files downloaded",
        f"requests spent: {1 + 3 + customers}",
        data_line(tmp_path),
    ]
    assert len(emulator.request_log) == 1 + 3 + customers
    assert rows(tmp_path, "SELECT COUNT(*), COUNT(DISTINCT (company_id, id)) FROM codat.customers") == [
        (customers, customers)
    ]


def test_the_api_key_never_leaks(emulator: Emulator, tmp_path, capsys, caplog, monkeypatch) -> None:
    emulator.reset(7, 6, 300)  # skips and companies not ready, stored too
    emulator.add_fault("404", match="/attachments")  # a failure, logged and stored
    monkeypatch.setenv("RUNTIME__LOG_LEVEL", "DEBUG")
    dlt_logger = logging.getLogger("dlt")  # dlt's logger does not propagate to the root
    dlt_logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dlt")  # in case dlt set its level up before this test
    try:
        first = codat_sync(tmp_path, "--files", "--files-url", str(tmp_path / "files"))
        emulator.store.mutate(readable(emulator)[0].id, "modify", count=3)
        second = codat_sync(tmp_path, "--files", "--files-url", str(tmp_path / "files"))
    finally:
        dlt_logger.removeHandler(caplog.handler)

    assert (first, second) == (1, 0)
    secrets = (API_KEY, base64.b64encode(API_KEY.encode()).decode())
    out, err = capsys.readouterr()
    assert "files downloaded" in out
    assert not [s for s in secrets if s in out + err]
    assert any(r.name.startswith("dlt") for r in caplog.records)  # dlt's records are captured too
    assert any(r.levelno == logging.WARNING and r.name.startswith("connector") for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(message)s %(args)s")
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    assert not [s for s in secrets if s in logged]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "state.json" for p in files)
    assert any(p.name == "trace.pickle" for p in files)
    assert any(p.suffix == ".gz" for p in files)
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data += gzip.decompress(data)
        assert not [s for s in secrets if s.encode() in data], path
    with duckdb.connect(str(tmp_path / DB_NAME), read_only=True) as con:
        names = con.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'codat'")
        for (table,) in names.fetchall():
            for secret in secrets:
                sql = f'SELECT COUNT(*) FROM codat."{table}" t WHERE CAST(t AS VARCHAR) LIKE ?'
                assert con.execute(sql, [f"%{secret}%"]).fetchone() == (0,), table


def test_demo_runs_end_to_end(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SOURCES__CODAT__API_KEY")
    env.pop("SOURCES__CODAT__BASE_URL")

    done = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr
    positions = [done.stdout.find(section) for section in DEMO_SECTIONS]
    assert -1 not in positions, done.stdout
    assert positions == sorted(positions)
    assert done.stdout.count("   companies: 3 (0 failed)") == 2
    run_2 = done.stdout.split("== Run 2")[1].splitlines()
    assert run_2[2] == "   companies: 3 (0 failed)"
    assert run_2[3].startswith("   customers: 30 new, ")  # 10 added in each company
    run_3 = done.stdout.split("== Run 3")[1].splitlines()
    assert run_3[2] == "   companies: 3 (0 failed, 3 unchanged)"
    # 5 attached and 5 detached in each company (those of customers changed meanwhile went in run 2).
    attachments = re.fullmatch(
        r"   attachments: \d+ found in \d+ listings, (\d+) added, (\d+) removed, .*", run_3[4]
    )
    assert attachments is not None, run_3
    assert 0 < int(attachments[1]) <= 15
    assert 0 < int(attachments[2]) <= 15
    assert not re.search(r"demo-[0-9a-f]{16}", done.stdout + done.stderr)  # the key is never printed
    assert (tmp_path / "codat_warehouse.duckdb").is_file()
    assert not (ROOT / "pipelines" / "codat_warehouse.duckdb").exists()
