"""`codat-push` against the emulator: rows from a file or the warehouse become creates and updates, once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from connector.destinations import duckdb_destination
from connector.lock import destination_lock
from connector.push_cli import main
from tests import children
from tests.synctools import Warehouse
from tests.utils import API_KEY, ROOT

FAST = ["--poll-interval", "0.02", "--push-timeout", "20"]


@pytest.fixture
def push_env(emulator, base_url, monkeypatch):
    emulator.ledger.delay = 0.05
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__BACKOFF_FACTOR", "0.01")
    return emulator


def company_on(emulator, platform):
    company = next(c for c in emulator.store.companies.values() if c.platform == platform)
    assert len(company.accounting_connections) == 1, "the row names no connection: it needs one"
    return company


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def push(tmp_path: Path, *args: str) -> int:
    warehouse = ["--duckdb-file", str(tmp_path / "wh.duckdb"), "--pipelines-dir", str(tmp_path / "pipelines")]
    return main([*warehouse, *FAST, *args])


def pushes_sent(emulator) -> list[dict[str, Any]]:
    return [r for r in emulator.request_log if r["method"] in ("POST", "PUT") and "/push/" in r["path"]]


def results(tmp_path: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        return con.sql(
            "SELECT row_number, operation, status, record_id IS NOT NULL, validation_errors "
            "FROM codat.push_results ORDER BY row_number"
        ).fetchall()


def records(emulator, company_id: str) -> list[dict[str, Any]]:
    return list(emulator.store.company(company_id).customers.values())


def fits_xero(record: dict[str, Any]) -> bool:
    """Whether Codat's record passes Xero's model as it is (an update resends what it does not change)."""
    addresses = record.get("addresses") or []
    typed = all(a.get("type") in ("Billing", "Delivery") for a in addresses)
    return bool(record.get("customerName")) and record.get("status") in (None, "Active", "InActive") and typed


def names_in_codat(emulator, company_id: str) -> list[str]:
    return sorted(str(c.get("customerName")) for c in records(emulator, company_id))


def test_csv_creates_valid_rows_reports_the_invalid_one_and_a_rerun_sends_nothing(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    rows = [
        {
            "company_id": company.id,
            "customer_name": "Acme Widgets",
            "email_address": "a@acme.test",
            "status": "Active",
        },
        {"company_id": company.id, "customer_name": "", "email_address": "nobody@x.test", "status": "Active"},
        {"company_id": company.id, "customer_name": "Bolt & Co", "email_address": None, "status": "Active"},
    ]
    source = write_csv(tmp_path / "new.csv", rows)
    before = names_in_codat(push_env, company.id)

    first = push(tmp_path, "--csv", str(source), "--mode", "create")
    out, err = capsys.readouterr()
    push_env.sync(company.id)
    sent = len(pushes_sent(push_env))
    second = push(tmp_path, "--csv", str(source), "--mode", "create")
    again = capsys.readouterr().out
    push_env.sync(company.id)

    assert first == 1  # a row was invalid
    assert "row 2: not sent: customerName: required by Xero" in out
    assert "pushed: 2 succeeded, 0 failed, 1 invalid, 0 pushed before" in out
    assert err.splitlines()[-1] == "pushes: 2 of 2 settled, 2 succeeded, 0 failed"  # the progress line
    assert sent == 2
    assert names_in_codat(push_env, company.id) == sorted([*before, "Acme Widgets", "Bolt & Co"])
    assert results(tmp_path) == [
        (1, "create", "Success", True, None),
        (2, "create", "Invalid", False, '["customerName: required by Xero"]'),
        (3, "create", "Success", True, None),
    ]
    assert second == 1
    assert "2 pushed before" in again
    assert len(pushes_sent(push_env)) == sent  # nothing sent twice
    assert names_in_codat(push_env, company.id).count("Acme Widgets") == 1


def test_an_update_from_the_warehouse_changes_only_the_columns_the_query_gives(push_env, base_url, tmp_path):
    company = company_on(push_env, "Xero")
    warehouse = Warehouse(tmp_path, base_url, name="codat_wh")
    warehouse.sync(attachments=False)
    live = [c for c in records(push_env, company.id) if fits_xero(c)]
    live = [c for c in live if not (c.get("metadata") or {}).get("isDeleted")]
    chosen = sorted(c["id"] for c in live)[:3]
    before = {c["id"]: dict(c) for c in records(push_env, company.id) if c["id"] in chosen}
    assert len(before) == 3
    query = (
        "SELECT company_id, id, customer_name || ' (edited)' AS customer_name FROM codat.customers "
        f"WHERE company_id = '{company.id}' AND id IN ({', '.join(repr(i) for i in chosen)})"
    )

    code = main(
        ["--duckdb-file", str(warehouse.db), "--pipelines-dir", str(tmp_path / "push"), *FAST]
        + ["--query", query, "--mode", "update"]
    )
    push_env.sync(company.id)

    assert code == 0
    after = {c["id"]: c for c in records(push_env, company.id) if c["id"] in chosen}
    for customer_id, old in before.items():
        new = after[customer_id]
        assert new["customerName"] == old["customerName"] + " (edited)"
        unchanged = ("emailAddress", "phone", "addresses", "status")
        assert {k: new.get(k) for k in unchanged} == {k: old.get(k) for k in unchanged}
    assert [r["method"] for r in pushes_sent(push_env)] == ["PUT"] * 3
    warehouse.sync(attachments=False)  # the round trip: Codat's next read brings the edits back
    edited = warehouse.rows(
        f"SELECT id, customer_name FROM codat.customers WHERE company_id = '{company.id}' ORDER BY id"
    )
    assert [(i, n) for i, n in edited if i in chosen] == [
        (i, before[i]["customerName"] + " (edited)") for i in chosen
    ]


def test_upsert_updates_rows_with_an_id_and_creates_the_others(push_env, tmp_path):
    company = company_on(push_env, "Xero")
    existing = sorted(c["id"] for c in records(push_env, company.id) if fits_xero(c))[0]
    rows = [
        {"companyId": company.id, "id": existing, "customerName": "Upserted Existing"},
        {"companyId": company.id, "customerName": "Upserted New"},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))

    code = push(tmp_path, "--jsonl", str(source), "--mode", "upsert")
    push_env.sync(company.id)

    assert code == 0
    assert sorted(r["method"] for r in pushes_sent(push_env)) == ["POST", "PUT"]
    names = {c["id"]: c.get("customerName") for c in records(push_env, company.id)}
    assert names[existing] == "Upserted Existing"
    assert list(names.values()).count("Upserted New") == 1


def test_dry_run_prints_what_would_be_sent_and_sends_nothing(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", [{"company_id": company.id, "customer_name": "Dry Run Ltd"}])

    code = push(tmp_path, "--csv", str(source), "--mode", "create", "--dry-run")

    out = capsys.readouterr().out
    assert code == 0
    assert f"row 1: would create in company {company.id}" in out
    assert "'customerName': 'Dry Run Ltd'" in out
    assert "dry run: 1 to send, 0 pushed before, 0 invalid; nothing sent" in out
    assert pushes_sent(push_env) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        pytest.param({"customer_name": "No Company"}, "row 1: no company_id", id="no-company"),
        pytest.param(
            {"company_id": "COMPANY", "customer_name": "X", "favourite_colour": "red"},
            "row 1: column 'favourite_colour' is no Customer field Codat takes",
            id="unknown-column",
        ),
        pytest.param(
            {"company_id": "00000000-0000-0000-0000-000000000000", "customer_name": "X"},
            "row 1: company 00000000-0000-0000-0000-000000000000 is unknown to Codat",
            id="unknown-company",
        ),
        pytest.param(
            {"company_id": "COMPANY", "connection_id": "nope", "customer_name": "X"},
            "row 1: connection nope is no accounting connection of company COMPANY",
            id="unknown-connection",
        ),
    ],
)
def test_bad_input_is_refused_before_any_push(push_env, tmp_path, capsys, row, message):
    company = company_on(push_env, "Xero")
    row = {k: (company.id if v == "COMPANY" else v) for k, v in row.items()}
    source = write_csv(tmp_path / "bad.csv", [row])

    code = push(tmp_path, "--csv", str(source), "--mode", "create")

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "codat-push: " + message.replace("COMPANY", company.id)
    assert pushes_sent(push_env) == []


def test_a_missing_input_file_is_refused(push_env, tmp_path, capsys):
    code = push(tmp_path, "--csv", str(tmp_path / "absent.csv"), "--mode", "create")

    assert code == 2
    assert capsys.readouterr().err.strip() == f"codat-push: --csv {tmp_path / 'absent.csv'}: no such file"


def test_a_quota_spent_mid_push_exits_4_and_the_rerun_creates_each_customer_once(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    rows = [{"company_id": company.id, "customer_name": f"Quota Customer {n}"} for n in range(1, 6)]
    source = write_csv(tmp_path / "new.csv", rows)
    before = names_in_codat(push_env, company.id)
    push_env.limiter.daily_limit = len(push_env.request_log) + 6  # the plan's 2 reads, then a few pushes

    stopped = push(tmp_path, "--csv", str(source), "--mode", "create", "--concurrency", "1")
    err = capsys.readouterr().err
    push_env.limiter.daily_limit = None
    rerun = push(tmp_path, "--csv", str(source), "--mode", "create")
    push_env.sync(company.id)

    assert stopped == 4, err
    assert "daily quota" in err.lower() or "quota" in err.lower()
    assert rerun == 0
    created = [n for n in names_in_codat(push_env, company.id) if n not in before]
    assert sorted(created) == [f"Quota Customer {n}" for n in range(1, 6)]
    assert [r[2] for r in results(tmp_path)] == ["Success"] * 5


def test_each_row_is_checked_against_its_own_platforms_model(push_env, tmp_path, capsys):
    push_env.reset(7, 12, 200)  # twelve companies: Xero and FreeAgent among them
    xero, freeagent = company_on(push_env, "Xero"), company_on(push_env, "FreeAgent")
    rows = [
        {"company_id": xero.id, "customer_name": "Same Row Ltd", "contact_name": None, "status": None},
        {"company_id": freeagent.id, "customer_name": "Same Row Ltd", "contact_name": None, "status": None},
        {
            "company_id": freeagent.id,
            "customer_name": "Full Row Ltd",
            "contact_name": "Ann",
            "status": "Active",
        },
    ]

    code = push(tmp_path, "--csv", str(write_csv(tmp_path / "rows.csv", rows)), "--mode", "create")

    out = capsys.readouterr().out
    assert code == 1
    assert "row 2: not sent: contactName: required by FreeAgent; status: required by FreeAgent" in out
    assert [(r[0], r[2]) for r in results(tmp_path)] == [(1, "Success"), (2, "Invalid"), (3, "Success")]


def test_a_stale_update_is_reported_failed_and_force_update_sends_it(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    customer_id = sorted(c["id"] for c in records(push_env, company.id) if fits_xero(c))[0]
    push_env.store.edit_in_platform(company.id, [customer_id])
    source = write_csv(
        tmp_path / "edit.csv", [{"company_id": company.id, "id": customer_id, "customer_name": "Fixed"}]
    )

    refused = push(tmp_path, "--csv", str(source), "--mode", "update")
    out = capsys.readouterr().out
    forced = push(tmp_path, "--csv", str(source), "--mode", "update", "--force-update")
    push_env.sync(company.id)

    assert refused == 1
    assert "row 1: Failed:" in out
    assert "forceUpdate" in out
    assert forced == 0
    assert [r[2] for r in results(tmp_path)] == ["Success"]
    assert push_env.store.company(company.id).customers[customer_id]["customerName"] == "Fixed"


def test_a_push_codat_times_out_is_reported_as_such(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", [{"company_id": company.id, "customer_name": "Slow Ltd"}])

    code = push(tmp_path, "--csv", str(source), "--mode", "create", "--timeout-in-minutes", "0")

    assert code == 1
    assert "row 1: TimedOut:" in capsys.readouterr().out
    assert [r[2] for r in results(tmp_path)] == ["TimedOut"]


def test_a_push_killed_midway_then_rerun_creates_each_customer_once(push_env, base_url, tmp_path):
    company = company_on(push_env, "Xero")
    rows = [{"company_id": company.id, "customer_name": f"Killed Run Customer {n}"} for n in range(1, 21)]
    source = write_csv(tmp_path / "new.csv", rows)
    before = names_in_codat(push_env, company.id)
    push_env.latency = 0.05  # the run is still pushing when the kill lands
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "connector.push_cli", "--duckdb-file", str(tmp_path / "wh.duckdb")]
    command += [
        "--pipelines-dir",
        str(tmp_path / "pipelines"),
        *FAST,
        "--csv",
        str(source),
        "--mode",
        "create",
    ]
    child = children.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(pushes_sent(push_env)) < 5:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the run sent no pushes"
        time.sleep(0.01)
    child.kill()
    assert child.wait(30) == -signal.SIGKILL
    assert len(push_env.ledger.operations) >= 5  # creates Codat took: the rerun must not repeat them
    push_env.latency = 0.0

    rerun = push(tmp_path, "--csv", str(source), "--mode", "create")
    push_env.sync(company.id)

    assert rerun == 0
    created = sorted(n for n in names_in_codat(push_env, company.id) if n not in before)
    assert created == sorted(f"Killed Run Customer {n}" for n in range(1, 21))
    assert [r[2] for r in results(tmp_path)] == ["Success"] * 20


def new_customers(emulator, company_id: str, label: str, count: int) -> list[dict[str, Any]]:
    """`count` rows creating customers named `<label> <n>`, none of which the company holds yet."""
    rows = [{"company_id": company_id, "customer_name": f"{label} {n}"} for n in range(1, count + 1)]
    assert not {r["customer_name"] for r in rows} & set(names_in_codat(emulator, company_id))
    return rows


def answered_429(emulator) -> list[dict[str, Any]]:
    return [e for e in emulator.request_log if e["status"] == 429]


def test_429s_on_the_pushes_and_their_polls_are_waited_out_and_each_customer_is_created_once(
    push_env, tmp_path
):
    company = company_on(push_env, "Xero")
    rows = new_customers(push_env, company.id, "Throttled Customer", 3)
    held = len(records(push_env, company.id))
    polls = f"/companies/{company.id}/push/"  # GET .../push/{key}; a create's path has /connections/ between
    push_env.add_fault("429", count=2, match="/push/customers", retry_after="0")
    push_env.add_fault("429", count=2, match=polls, retry_after="1")

    code = push(tmp_path, "--csv", str(write_csv(tmp_path / "new.csv", rows)), "--mode", "create")
    push_env.sync(company.id)

    assert code == 0
    assert push_env.faults.faults == []  # every 429 was served
    log = list(push_env.request_log)
    throttled = answered_429(push_env)
    assert sorted((e["operation"], e["fault"]) for e in throttled) == [
        ("create-customer", "429"),
        ("create-customer", "429"),
        ("get-push-operation", "429"),
        ("get-push-operation", "429"),
    ]
    creates = [e["status"] for e in log if e["operation"] == "create-customer"]
    assert sorted(creates) == [200, 200, 200, 429, 429]  # each refused create was sent again
    for at, entry in enumerate(log):  # each refused poll was asked again, and answered
        if entry["operation"] == "get-push-operation" and entry["status"] == 429:
            assert any(e["path"] == entry["path"] and e["status"] == 200 for e in log[at + 1 :]), entry
    assert len(push_env.ledger.operations) == 3  # Codat took three creates, not five
    assert len(records(push_env, company.id)) == held + 3
    created = [n for n in names_in_codat(push_env, company.id) if n.startswith("Throttled Customer")]
    assert created == ["Throttled Customer 1", "Throttled Customer 2", "Throttled Customer 3"]
    assert results(tmp_path) == [(n, "create", "Success", True, None) for n in (1, 2, 3)]


def test_a_push_paced_to_the_per_minute_limit_meets_no_429(push_env, tmp_path, monkeypatch):
    limit, window, rows = 10, 1.0, 5  # 2 reads, 5 creates and at least 5 polls: 12 requests unpaced
    company = company_on(push_env, "Xero")
    push_env.limiter.per_minute_limit, push_env.limiter.window_seconds = limit, window
    unpaced = tmp_path / "unpaced"
    unpaced.mkdir()
    source = write_csv(unpaced / "new.csv", new_customers(push_env, company.id, "Unpaced Customer", rows))
    assert push(unpaced, "--csv", str(source), "--mode", "create") == 0  # the conftest leaves it unpaced
    assert {e["refused"] for e in answered_429(push_env)} == {"per_minute"}, (
        "the emulator's per-minute limit must bind an unpaced push for this test to mean anything"
    )
    push_env.reset()
    monkeypatch.setenv("SOURCES__CODAT__REQUESTS_PER_MINUTE", str(limit))
    monkeypatch.setenv("SOURCES__CODAT__RATE_WINDOW", str(window))
    held = len(records(push_env, company.id))

    source = write_csv(tmp_path / "new.csv", new_customers(push_env, company.id, "Paced Customer", rows))
    code = push(tmp_path, "--csv", str(source), "--mode", "create")
    push_env.sync(company.id)

    assert code == 0
    assert answered_429(push_env) == []
    assert len(push_env.request_log) > limit  # more requests than one window admits
    assert len(records(push_env, company.id)) == held + rows
    created = [n for n in names_in_codat(push_env, company.id) if n.startswith("Paced Customer")]
    assert created == [f"Paced Customer {n}" for n in range(1, rows + 1)]
    assert results(tmp_path) == [(n, "create", "Success", True, None) for n in range(1, rows + 1)]


def test_a_company_with_two_accounting_connections_takes_the_one_each_row_names(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    [first] = company.accounting_connections
    second = push_env.store.link_connection(company.id, "QuickBooks Online")
    assert [c.id for c in company.accounting_connections] == [first.id, second.id]
    row = {"company_id": company.id, "connection_id": first.id, "status": "Active"}
    unnamed = [
        {**row, "customer_name": "Named Ltd"},
        {**row, "connection_id": None, "customer_name": "Unnamed Ltd"},
    ]
    named = [
        {**row, "customer_name": "Via Xero Ltd"},
        {**row, "connection_id": second.id, "customer_name": "Via QBO Ltd"},
    ]
    choices = [f"{first.id} (Xero)", f"{second.id} (QuickBooks Online)"]  # listed in id order
    held = len(records(push_env, company.id))

    refused = push(tmp_path, "--csv", str(write_csv(tmp_path / "unnamed.csv", unnamed)), "--mode", "create")
    err = capsys.readouterr().err
    sent_when_refused = pushes_sent(push_env)
    pushed = push(tmp_path, "--csv", str(write_csv(tmp_path / "named.csv", named)), "--mode", "create")
    push_env.sync(company.id)

    assert refused == 2
    assert err.splitlines() == [
        f"codat-push: row 2: company {company.id} has 2 accounting connections; "
        f"name one in connection_id: {', '.join(sorted(choices))}"
    ]
    assert sent_when_refused == []
    assert pushed == 0
    sent = [(e["path"], e["status"]) for e in pushes_sent(push_env)]
    assert sorted(sent) == sorted(
        (f"/companies/{company.id}/connections/{c.id}/push/customers", 200) for c in (first, second)
    )
    operations = [o.to_json() for o in push_env.ledger.operations.values()]
    assert sorted((o["data"]["customerName"], o["dataConnectionKey"], o["status"]) for o in operations) == [
        ("Via QBO Ltd", second.id, "Success"),
        ("Via Xero Ltd", first.id, "Success"),
    ]
    assert len(records(push_env, company.id)) == held + 2
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.sql(
            "SELECT row_number, connection_id, status FROM codat.push_results ORDER BY row_number"
        ).fetchall() == [(1, first.id, "Success"), (2, second.id, "Success")]


def test_a_company_without_an_accounting_connection_is_refused_before_any_push(push_env, tmp_path, capsys):
    push_env.reset(7, 6, 200)  # six companies: one of them has only a Banking connection
    [banking] = [c for c in push_env.store.companies.values() if not c.accounting_connections]
    assert [c.source_type for c in banking.connections] == ["Banking"]
    source = write_csv(tmp_path / "rows.csv", [{"company_id": banking.id, "customer_name": "Nowhere Ltd"}])

    code = push(tmp_path, "--csv", str(source), "--mode", "create")

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"codat-push: row 1: company {banking.id} has no accounting connection to push customers to"
    )
    assert pushes_sent(push_env) == []


@pytest.mark.postgres
def test_push_results_go_to_any_destination_and_a_rerun_there_sends_nothing(
    push_env, tmp_path, monkeypatch, postgres, capsys
):
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", [{"company_id": company.id, "customer_name": "Postgres Ltd"}])
    dataset = f"push_{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)  # where a DuckDB file would go by default
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", postgres.url)
    args = ["--pipelines-dir", str(tmp_path / "pipelines"), *FAST, "--csv", str(source), "--mode", "create"]
    args += ["--destination", "postgres", "--dataset", dataset]

    first = main(args)
    second = main(args)

    assert (first, second) == (0, 0)
    assert "1 pushed before" in capsys.readouterr().out
    assert len(pushes_sent(push_env)) == 1
    with postgres.connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT row_number, operation, status FROM {dataset}.push_results")
        assert cursor.fetchall() == [(1, "create", "Success")]
    assert not (tmp_path / "codat_warehouse.duckdb").exists()


# -- one run at a time on a warehouse --------------------------------------------------------------


def push_command(tmp_path: Path, source: Path) -> list[str]:
    """`codat-push` creating the rows of `source` into `tmp_path`'s warehouse, for a child process."""
    warehouse = ["--duckdb-file", str(tmp_path / "wh.duckdb"), "--pipelines-dir", str(tmp_path / "pipelines")]
    return [*warehouse, *FAST, "--csv", str(source), "--mode", "create"]


def test_a_push_while_another_run_holds_the_warehouse_exits_5_having_sent_nothing(push_env, tmp_path, capsys):
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", new_customers(push_env, company.id, "Locked Out", 2))
    other = dlt.pipeline(
        pipeline_name="codat_sync_elsewhere",
        destination=duckdb_destination(tmp_path / "wh.duckdb"),
        dataset_name="codat",
        pipelines_dir=str(tmp_path / "elsewhere"),
    )

    with destination_lock(other):  # as a codat-sync run of another pipeline holds it
        code = main(push_command(tmp_path, source))
    err = capsys.readouterr().err

    assert code == 5
    assert err.startswith("codat-push: another codat-sync run (pid ")
    assert f"holds the DuckDB file {tmp_path / 'wh.duckdb'}; this run did nothing" in err
    assert list(push_env.request_log) == []  # not even the models were read


def test_a_push_while_another_process_has_the_duckdb_file_open_exits_5_having_sent_nothing(
    push_env, tmp_path
):
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", new_customers(push_env, company.id, "Opened Elsewhere", 2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    with duckdb.connect(str(tmp_path / "wh.duckdb")):  # this process holds the file for writing
        run = children.run(
            [sys.executable, "-m", "connector.push_cli", *push_command(tmp_path, source)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run.returncode == 5, run.stderr
    assert run.stderr.startswith("codat-push: ")
    assert "wh.duckdb is locked by" in run.stderr
    assert list(push_env.request_log) == []


def killed_push(tmp_path: Path, script: str, arguments: list[str]) -> None:
    """`codat-push` with `arguments` in a child that `script` (a kill point, then the command) kills."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = children.run(
        [sys.executable, "-c", script, *arguments],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr


KILL_AT_RESULTS_LOAD = """
import sys
from tests.killpoint import install
install("dlt.pipeline.pipeline:Pipeline.load", 1)
from connector.push_cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_push_killed_while_loading_its_results_is_not_sent_again_by_the_rerun(push_env, tmp_path, capsys):
    """The rerun loads the outcomes the killed run had extracted before it reads which rows are done."""
    company = company_on(push_env, "Xero")
    source = write_csv(tmp_path / "new.csv", new_customers(push_env, company.id, "Loaded Late", 3))

    killed_push(tmp_path, KILL_AT_RESULTS_LOAD, push_command(tmp_path, source))
    assert len(push_env.ledger.operations) == 3  # every create was taken before the kill
    assert not (tmp_path / "wh.duckdb").exists() or not results_table_exists(tmp_path)
    sent = len(pushes_sent(push_env))

    rerun = main(push_command(tmp_path, source))
    out = capsys.readouterr().out

    assert rerun == 0
    assert "pushed: 0 succeeded, 0 failed, 0 invalid, 3 pushed before" in out
    assert len(pushes_sent(push_env)) == sent  # nothing sent again
    assert [r[2] for r in results(tmp_path)] == ["Success"] * 3


def results_table_exists(tmp_path: Path) -> bool:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        tables = con.sql("SELECT table_name FROM information_schema.tables").fetchall()
    return ("push_results",) in tables


KILL_BEFORE_SIXTH_CREATE = """
import sys
from tests.killpoint import install
install("connector.push_cli:create_customer", 6)
from connector.push_cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_push_killed_then_rerun_after_codat_forgot_its_idempotency_keys_creates_each_customer_once(
    push_env, tmp_path, capsys
):
    """The rerun follows the pushes the killed run had Codat accept (its journal), whenever it comes."""
    company = company_on(push_env, "Xero")
    rows = new_customers(push_env, company.id, "Journaled", 8)
    source = write_csv(tmp_path / "new.csv", rows)
    before = names_in_codat(push_env, company.id)
    one_at_a_time = [*push_command(tmp_path, source), "--concurrency", "1"]

    killed_push(tmp_path, KILL_BEFORE_SIXTH_CREATE, one_at_a_time)
    assert len(push_env.ledger.operations) == 5  # five creates taken, the sixth never sent
    push_env.ledger.forget_idempotency_keys()  # 90 minutes later, as far as Codat knows

    rerun = main(push_command(tmp_path, source))
    out = capsys.readouterr().out
    push_env.sync(company.id)

    assert rerun == 0
    assert "pushed: 8 succeeded, 0 failed, 0 invalid, 0 pushed before" in out
    assert len(push_env.ledger.operations) == 8  # the five followed, three sent
    created = sorted(n for n in names_in_codat(push_env, company.id) if n not in before)
    assert created == sorted(r["customer_name"] for r in rows)  # each once
    assert [r[2] for r in results(tmp_path)] == ["Success"] * 8
    assert not list((tmp_path / "pipelines").glob("*.journal"))  # cleared once the outcomes loaded
