"""Every row of the README's bad-input table: the input gets its exit code and its one line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import duckdb
import pytest

from connector import cli, push_cli
from connector.emulator.emulator import Emulator
from tests.synctools import database_rows
from tests.utils import API_KEY, ROOT

README = ROOT / "README.md"
ROW = re.compile(r"^\| `(?P<input>.+)` \| (?P<exit>\d) \| `(?P<message>.+)` \|$")
# Rows whose input can only be judged from an answer of the API.
ASKS_THE_API = ("ZZZnomatch", "wrong-key", "127.0.0.1:9", "unknown_company.csv")
COMMANDS = {"codat-sync": cli.main, "codat-push": push_cli.main}
# The files the README's `codat-push` rows read (its text says what each holds).
PUSH_FILES = {
    "rows.csv": "company_id,customer_name\nc1,Acme\n",
    "not_json.jsonl": "company_id=c1\n",
    "no_company.csv": "customer_name\nAcme\n",
    "extra_column.csv": "company_id,customer_name,favourite_colour\nc1,Acme,red\n",
    "unknown_company.csv": "company_id,customer_name\nno-such-company,Acme\n",
}


def table() -> list[tuple[str, int, str]]:
    """The rows between the README's bad-input markers."""
    text = README.read_text()
    block = text.split("<!-- bad-input:start -->")[1].split("<!-- bad-input:end -->")[0]
    rows = [ROW.match(line) for line in block.splitlines()[3:] if line.strip()]
    assert all(rows), "a row of the bad-input table is not `input` | exit | `message`"
    return [(m["input"], int(m["exit"]), m["message"]) for m in rows if m]


ROWS = table()


def test_the_table_covers_every_kind_of_bad_input() -> None:
    inputs = " ".join(row[0] for row in ROWS)
    assert len(ROWS) >= 20
    for flag in ("--companies", "--company-query", "--request-budget", "--since", "--duckdb-file"):
        assert flag in inputs, flag
    for setting in ("PAGE_SIZE", "ATTACHMENT_CONCURRENCY", "API_KEY", "BASE_URL"):
        assert f"SOURCES__CODAT__{setting}=" in inputs, setting


@pytest.mark.parametrize(("line", "exit_code", "message"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_exits_with_its_code_and_one_line_naming_it(
    line: str,
    exit_code: int,
    message: str,
    emulator: Emulator,
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__BASE_URL", base_url)
    monkeypatch.setenv("SOURCES__CODAT__BACKOFF_FACTOR", "0.01")
    words = shlex.split(line)
    command = next(i for i, word in enumerate(words) if word in COMMANDS)
    for assignment in words[:command]:
        name, _, value = assignment.partition("=")
        monkeypatch.setenv(name, value)
    if words[command] == "codat-push":
        for name, text in PUSH_FILES.items():
            (tmp_path / name).write_text(text)
        duckdb.connect(str(tmp_path / "rows.duckdb")).close()

    try:
        run = COMMANDS[words[command]]
        code = run(["--quiet", "--pipelines-dir", str(tmp_path / "pipelines"), *words[command + 1 :]])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)

    out, err = capsys.readouterr()
    assert code == exit_code, err
    assert out == ""
    pattern = ".*".join(re.escape(part) for part in message.split("…"))
    assert re.fullmatch(pattern, err.splitlines()[-1]), err
    assert API_KEY not in err
    if any(marker in line for marker in ASKS_THE_API):
        assert loaded_tables(tmp_path) == []
    else:
        assert not emulator.request_log  # refused before the first request
        assert not [p for p in tmp_path.glob("*.duckdb") if p.name != "rows.duckdb"]  # nor the destination


def loaded_tables(folder: Path) -> list[tuple[str]]:
    """The tables of the `codat` dataset in the folder's DuckDB file, if it has one."""
    database = folder / "codat_warehouse.duckdb"
    if not database.exists():
        return []
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'codat'"
    return database_rows(database, sql)
