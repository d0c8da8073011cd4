"""`make demo`: sync a local Codat emulator into DuckDB three times, with changes between, then query it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

import duckdb

from connector import cli
from connector.defaults import DEFAULT_DUCKDB_FILE
from connector.emulator.launch import EmulatorStartError, emulator_process
from connector.exits import EXIT_OK

SEED, COMPANIES, CUSTOMERS = 7, 3, 2000
# Codat allows 1,000 requests a minute; the demo's emulator allows 1,000 every 2 s (and the sync
# paces itself to that), so the first run's 2,000 attachment listings take seconds, not minutes.
RATE_WINDOW = "2"
# Codat's daily quota for 3 companies is 4,000 requests; run 3 lists every customer's attachments
# again on the same "day" as run 1, which a real account spreads over a week (the rolling refresh).
DAILY_LIMIT = "20000"
DUCKDB_FILE = Path(DEFAULT_DUCKDB_FILE)
DATASET = "codat"
# Per company, between the first two runs: what one Codat sync of the companies might bring, and
# attachments added and removed in the platform, which move no customer's `modifiedDate`.
CHANGES = (("modify", 20), ("delete", 5), ("add", 10), ("attach", 5), ("detach", 5))
NAME_WIDTH = 40
NUMBERS = (int, float, Decimal)

QUERIES: dict[str, str] = {
    "Customers per company (view customers_current: deleted ones excluded)": """
        SELECT co.name AS company, co.platform, COUNT(c.id) AS customers
        FROM codat.companies co LEFT JOIN codat.customers_current c ON c.company_id = co.id
        GROUP BY ALL ORDER BY customers DESC, company""",
    "Currency mix (current customers)": """
        SELECT COALESCE(default_currency, '(none)') AS currency, COUNT(*) AS customers,
               ROUND(100.0 * COUNT(*) / SUM(COUNT(*)) OVER (), 1)::DECIMAL(4, 1) AS share_pct
        FROM codat.customers_current GROUP BY ALL ORDER BY customers DESC, currency""",
    "Deleted customers (kept with is_deleted = true), per company": """
        SELECT co.name AS company, COUNT(*) AS deleted, MAX(c.modified_date) AS latest_change
        FROM codat.customers c JOIN codat.companies co ON co.id = c.company_id
        WHERE c.is_deleted GROUP BY ALL ORDER BY deleted DESC, company""",
    "Attachment content types (attachments Codat still lists, of current customers)": """
        SELECT content_type, COUNT(*) AS attachments,
               ROUND(SUM(file_size) / 1e6, 2)::DECIMAL(12, 2) AS reported_mb,
               COUNT(*) - COUNT(file_size) AS size_unknown
        FROM codat.customer_attachments_with_customers
        GROUP BY ALL ORDER BY attachments DESC, content_type""",
    "Latest sync_status rows": """
        SELECT strftime(run_started_at, '%H:%M:%S') AS run_started, company_name AS company, status,
               customers_loaded AS customers, customers_deleted AS deleted,
               attachments_added AS att_added, attachments_removed AS att_removed,
               attachments_refreshed AS refreshed, requests
        FROM codat.sync_status ORDER BY run_started_at DESC, company_name LIMIT 6""",
}


class DemoError(RuntimeError):
    """A step of the demo failed."""


@contextlib.contextmanager
def running_emulator(api_key: str) -> Iterator[str]:
    """Start the emulator on a free port, yield its URL, and stop it whatever happens."""
    flags = ["--seed", str(SEED), "--companies", str(COMPANIES), "--customers", str(CUSTOMERS)]
    flags += ["--per-minute-limit", "1000", "--rate-window", RATE_WINDOW, "--daily-limit", DAILY_LIMIT]
    try:
        with emulator_process(*flags, "--api-key", api_key) as url:
            print(
                f"Codat emulator ready at {url} ({COMPANIES} companies, {CUSTOMERS} customers; "
                f"1,000 requests per {RATE_WINDOW} s where Codat allows 1,000 a minute)"
            )
            yield url
    except EmulatorStartError as exc:
        raise DemoError(str(exc)) from None


def control(base_url: str, method: str, route: str, body: Any = None) -> Any:
    """Call the emulator's control API (`/_emulator/<route>`), never through a proxy."""
    data = None if body is None else json.dumps(body).encode()
    request = Request(f"{base_url}/_emulator/{route}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with build_opener(ProxyHandler({})).open(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def sync(base_url: str, title: str, pipelines_dir: str, progress: bool, *flags: str) -> None:
    """One `codat-sync` run, in process; print its summary and the requests the emulator saw."""
    argv = ["--duckdb-file", str(DUCKDB_FILE), "--dataset", DATASET, "--pipelines-dir", pipelines_dir]
    argv += flags
    if not progress:
        argv.append("--quiet")
    print(f"\n== {title}\n   codat-sync {' '.join(argv)}")
    control(base_url, "DELETE", "requests")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    for line in out.getvalue().splitlines():
        print(f"   {line}")
    if code != EXIT_OK:
        raise DemoError(f"codat-sync exited with {code}")
    stats = control(base_url, "GET", "stats")
    by_operation = ", ".join(f"{op} {n}" for op, n in sorted(stats["by_operation"].items()))
    print(f"   the emulator saw {stats['requests']} requests: {by_operation}")


def change_customers(base_url: str) -> None:
    """Modify, delete and add customers in every company, as a Codat sync of them would."""
    done = []
    for action, count in CHANGES:
        changed = control(base_url, "POST", "mutate", {"action": action, "count": count})["changed"]
        done.append(f"{sum(len(ids) for ids in changed.values())} {action}")
    print(f"\n== Changes in the emulator (POST /_emulator/mutate): {', '.join(done)}")


def show(title: str, con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Print a query's result as a table with aligned columns (numbers to the right)."""
    cursor = con.execute(sql)
    headers = [d[0] for d in cursor.description or []]
    rows = cursor.fetchall()
    print(f"\n== {title}")
    print(format_table(headers, rows))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under their headers, columns padded to their widest cell."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], NUMBERS) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True))
        return "   " + "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def format_cell(value: Any) -> str:
    """A cell's text: no microseconds on instants, long names cut short."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= NAME_WIDTH else text[: NAME_WIDTH - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every step worked."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--progress", action="store_true", help="show dlt's progress (on stderr)")
    args = parser.parse_args(argv)
    api_key = f"demo-{secrets.token_hex(8)}"  # a throwaway key the emulator and the sync share
    for path in (DUCKDB_FILE, DUCKDB_FILE.with_name(DUCKDB_FILE.name + ".wal")):
        path.unlink(missing_ok=True)
    try:
        with running_emulator(api_key) as base_url, tempfile.TemporaryDirectory() as pipelines_dir:
            os.environ["SOURCES__CODAT__API_KEY"] = api_key
            os.environ["SOURCES__CODAT__BASE_URL"] = base_url
            os.environ["SOURCES__CODAT__RATE_WINDOW"] = RATE_WINDOW
            sync(base_url, "Run 1: first sync, everything", pipelines_dir, args.progress)
            change_customers(base_url)
            sync(base_url, "Run 2: incremental, only what changed", pipelines_dir, args.progress)
            time.sleep(float(RATE_WINDOW))  # the per-minute limit counts run 2's requests for a window
            title = "Run 3: every customer's attachments listed again, to find the platform's changes"
            sync(base_url, title, pipelines_dir, args.progress, "--refresh-attachments")
        with duckdb.connect(str(DUCKDB_FILE), read_only=True) as con:
            for title, sql in QUERIES.items():
                show(title, con, sql)
    except Exception as exc:  # noqa: BLE001 - any failure ends the demo with its reason
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    print(f"\nAll in {DUCKDB_FILE} (dataset {DATASET}): try SELECT * FROM {DATASET}.customers_current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
