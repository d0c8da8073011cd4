"""Benchmark of `codat-push`: 1,000 creates across 10 companies at 200 ms a request, against the ideal.

`bench_push()` (run.py's `push`) starts the emulator in its own process with Codat's limits (10
requests in flight per company, 1,000 a minute per IP), a latency per request and its push
delay; writes 100 create rows per company to a CSV file, each valid for its company's
platform's create model; runs the real `codat-push` command on it in a fresh process (peak RSS
from `wait4`); checks 1,000 `Success` rows in `push_results` and 1,000 new customers in the
emulator, each once; and sets the time against `ideal()`, worked out from Codat's limits and
the documented behaviour alone (no counter of the code is read):

- a row needs `1 + polls` requests: its push, then a look one poll interval after Codat
  answered it `Pending` and one every interval after that, until the push has settled. A look
  sees the push as it is when answered, so look `j` (from 1) sees it `j * (interval + latency)`
  after it was accepted: `polls = max(1, ceil(delay / (interval + latency)))`;
- a company needs 2 more: its connections listed, its accounting connection's model read;
- `R` requests in all. No client is done sooner than the largest of: the per-IP bound
  `floor((R - 1) / limit) * window + latency` (request `i + limit` goes a window after
  request `i`), the slot bound `ceil(requests of a company / 10) * latency`, and the chain of
  one row (connections, model, push, polls) `2 * latency + latency + polls * (interval + latency)`.

    .venv/bin/python -m tests.benchmarks.push_bench [--rows-per-company 100] [--window 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from connector.defaults import DEFAULT_PUSH_CONCURRENCY
from connector.emulator.launch import emulator_process
from connector.emulator.push import DEFAULT_PUSH_DELAY
from connector.emulator.push_models import has_model, load_model
from connector.push import check_against_model
from tests.benchmarks.harness import (
    API_KEY,
    DATASET,
    EMULATOR_DAILY_LIMIT,
    EmulatorHandle,
    Figures,
    fresh_workdir,
    run_process,
)

# Codat's limits, as its documentation states them (not the connector's defaults).
CODAT_IN_FLIGHT_PER_COMPANY = 10
CODAT_REQUESTS_PER_MINUTE = 1000
CODAT_WINDOW = 60.0
COMPANIES = 10
ROWS_PER_COMPANY = 100
QUICK_ROWS_PER_COMPANY = 10
LATENCY = 0.2
PUSH_DELAY = DEFAULT_PUSH_DELAY  # the emulator's: seconds a push stays Pending
POLL_INTERVAL = 2.0  # codat-push's documented default --poll-interval, passed explicitly
PLANNING_REQUESTS = 2  # per company: its connections listed, its connection's model read
# Seed 5's 11 companies: 10 with one accounting connection on a platform with its own model, and
# one with a banking connection only (no seed from 1 to 300 makes 10 companies that all qualify).
SEED = 5
ACCOUNT_COMPANIES = 11
ACCOUNT_CUSTOMERS = 1100
NAME_PREFIX = "Push bench"


class PushBenchFailed(AssertionError):
    """The run's results, or the emulator's customers, are not what 1,000 creates make."""


def polls_per_row(latency: float, push_delay: float, poll_interval: float) -> int:
    """Looks at a push until one sees it settled: one every poll interval after it was accepted."""
    return max(1, math.ceil(push_delay / (poll_interval + latency)))


@dataclass(frozen=True)
class Ideal:
    """The shortest time any client takes for the creates under Codat's limits, and its bounds."""

    polls_per_row: int
    requests: int
    per_ip_bound_s: float
    slot_bound_s: float
    chain_bound_s: float

    @property
    def seconds(self) -> float:
        """The largest bound."""
        return max(self.per_ip_bound_s, self.slot_bound_s, self.chain_bound_s)

    @property
    def binding(self) -> str:
        """Which bound it is."""
        bounds = {"per-IP": self.per_ip_bound_s, "slots": self.slot_bound_s, "chain": self.chain_bound_s}
        return max(bounds, key=lambda name: bounds[name])


def ideal(
    rows_per_company: list[int],
    latency: float,
    push_delay: float,
    poll_interval: float,
    in_flight: int = CODAT_IN_FLIGHT_PER_COMPANY,
    limit: int = CODAT_REQUESTS_PER_MINUTE,
    window: float = CODAT_WINDOW,
) -> Ideal:
    """The ideal of creating `rows_per_company[c]` customers in each company `c` (see the module)."""
    polls = polls_per_row(latency, push_delay, poll_interval)
    per_company = [PLANNING_REQUESTS + rows * (1 + polls) for rows in rows_per_company]
    requests = sum(per_company)
    return Ideal(
        polls_per_row=polls,
        requests=requests,
        per_ip_bound_s=round((requests - 1) // limit * window + latency, 3),
        slot_bound_s=round(max(math.ceil(n / in_flight) for n in per_company) * latency, 3),
        chain_bound_s=round(PLANNING_REQUESTS * latency + latency + polls * (poll_interval + latency), 3),
    )


def pushable_companies(emulator: EmulatorHandle, count: int) -> list[Figures]:
    """The first `count` companies with one accounting connection on a platform with its own model."""
    found = [
        company
        for company in emulator.account()
        if [c["sourceType"] for c in company["connections"]].count("Accounting") == 1
        and has_model(company["platform"])
    ]
    if len(found) < count:
        raise PushBenchFailed(f"seed {SEED} has {len(found)} companies a create can go to; {count} wanted")
    return found[:count]


def create_rows(company: Figures, count: int) -> list[dict[str, Any]]:
    """`count` create rows for the company, named apart, each valid for its platform's create model."""
    platform = company["platform"]
    model = load_model(platform)
    needs_contacts = bool(((model.get("properties") or {}).get("contacts") or {}).get("required"))
    rows = []
    for number in range(count):
        name = f"{NAME_PREFIX} {company['id'][:8]} {number:04d}"
        email = f"bench{number:04d}@{company['id'][:8]}.test"
        contacts = [{"name": name, "email": email, "status": "Active"}] if needs_contacts else None
        fields = {"customerName": name, "contactName": "Ann Bench", "emailAddress": email, "status": "Active"}
        problems = check_against_model(model, fields | ({"contacts": contacts} if contacts else {}), platform)
        if problems:
            raise PushBenchFailed(f"a bench row for {platform} is not valid: {problems}")
        rows.append(
            {
                "company_id": company["id"],
                "customer_name": name,
                "contact_name": fields["contactName"],
                "email_address": email,
                "status": "Active",
                "contacts": json.dumps(contacts) if contacts else "",
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as `codat-push --csv` reads them."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def push_results(database: Path) -> list[tuple[Any, ...]]:
    """`(company_id, status, record_id, requested_at, settled_at)` of every row in `push_results`."""
    with duckdb.connect(str(database), read_only=True) as db:
        return db.execute(
            f"SELECT company_id, status, record_id, requested_at, settled_at FROM {DATASET}.push_results"
        ).fetchall()


def check_results(results: list[tuple[Any, ...]], wanted: dict[str, int]) -> None:
    """Every row `Success` once, with its own record id, and as many per company as were written."""
    statuses = Counter(row[1] for row in results)
    per_company = Counter(row[0] for row in results)
    records = {row[2] for row in results}
    if statuses != Counter({"Success": sum(wanted.values())}) or per_company != Counter(wanted):
        raise PushBenchFailed(f"push_results: {dict(statuses)}, per company {dict(per_company)}")
    if None in records or len(records) != len(results):
        raise PushBenchFailed("push_results: a Success row without its own record id")


def check_customers(
    emulator: EmulatorHandle, before: dict[str, int], wanted: dict[str, int], record_ids: set[str]
) -> int:
    """After Codat's next sync, each company holds its new customers once: the records created.

    Returns:
        The new customers found.
    """
    found: Counter[tuple[str, str, str]] = Counter()
    emulator.control("POST", "config", {"per_minute_limit": None, "latency": 0})  # the run is over
    with emulator.session() as session:
        for company_id in wanted:
            emulator.control("POST", "sync", {"company_id": company_id})
            url = f"{emulator.url}/companies/{company_id}/data/customers"
            body = session.get(url, params={"page": 1, "pageSize": 5000}, timeout=60).json()
            if body["totalResults"] > len(body["results"]):
                raise PushBenchFailed(f"company {company_id} holds more customers than one page")
            found.update(
                (company_id, c["id"], c["customerName"])
                for c in body["results"]
                if str(c.get("customerName")).startswith(NAME_PREFIX)
            )
    after = {c["id"]: c["customers"] for c in emulator.account()}
    grown = {company: after[company] - before[company] for company in wanted}
    names = Counter(name for _, _, name in found)
    ids = {customer for _, customer, _ in found}
    if grown != wanted or any(n != 1 for n in found.values()) or any(n != 1 for n in names.values()):
        raise PushBenchFailed(
            f"customers: grown {grown}, names seen more than once {+names - Counter(set(names))}"
        )
    if ids != record_ids:
        raise PushBenchFailed(f"customers: {len(ids ^ record_ids)} differ from push_results' record ids")
    return sum(grown.values())


def where_time_goes(results: list[tuple[Any, ...]], started: datetime, ended: datetime) -> Figures:
    """From `push_results`' times: before the first push, the pushes, after the last settled."""
    requested = [row[3].replace(tzinfo=UTC) for row in results]
    settled = [row[4].replace(tzinfo=UTC) for row in results]
    pushing = (max(settled) - min(requested)).total_seconds()
    rows = [(s - r).total_seconds() for r, s in zip(requested, settled, strict=True)]
    return {
        "before_pushes_s": round((min(requested) - started).total_seconds(), 2),
        "pushes_s": round(pushing, 2),
        "after_pushes_s": round((ended - max(settled)).total_seconds(), 2),
        "row_mean_s": round(sum(rows) / len(rows), 3),
        "row_max_s": round(max(rows), 3),
        "pushes_in_flight_mean": round(sum(rows) / pushing, 2) if pushing else None,
    }


def bench_push(
    quick: bool = False,
    rows_per_company: int | None = None,
    window: float = CODAT_WINDOW,
    concurrency: int | None = None,
) -> Figures:
    """Run `codat-push --mode create` on the rows and check and time it; the figures.

    Args:
        quick: 10 rows a company instead of 100, for a smoke run.
        rows_per_company: Rows per company, overriding `quick`.
        window: Seconds of the per-IP window, told to the emulator and to the client alike.
        concurrency: `--concurrency` of the command; its default when None.
    """
    rows_per_company = rows_per_company or (QUICK_ROWS_PER_COMPANY if quick else ROWS_PER_COMPANY)
    flags = [
        *("--api-key", API_KEY, "--seed", str(SEED), "--companies", str(ACCOUNT_COMPANIES)),
        *("--customers", str(ACCOUNT_CUSTOMERS), "--daily-limit", str(EMULATOR_DAILY_LIMIT)),
        *("--latency", str(LATENCY), "--push-delay", str(PUSH_DELAY)),
        *("--max-concurrent", str(CODAT_IN_FLIGHT_PER_COMPANY)),
        *("--per-minute-limit", str(CODAT_REQUESTS_PER_MINUTE), "--rate-window", str(window)),
    ]
    with emulator_process(*flags) as url, fresh_workdir("push") as workdir:
        emulator = EmulatorHandle(url, 0.0)
        companies = pushable_companies(emulator, COMPANIES)
        wanted = {company["id"]: rows_per_company for company in companies}
        rows = [row for company in companies for row in create_rows(company, rows_per_company)]
        source = write_csv(workdir / "creates.csv", rows)
        database = workdir / "warehouse.duckdb"
        before = {c["id"]: c["customers"] for c in emulator.account()}
        # Paths relative to the folder it runs in, so the command reads as it would be typed.
        command = [str(Path(sys.executable).parent / "codat-push"), "--csv", source.name, "--mode", "create"]
        command += ["--duckdb-file", database.name, "--pipelines-dir", "pipelines"]
        command += ["--poll-interval", str(POLL_INTERVAL)]
        command += ["--concurrency", str(concurrency)] if concurrency else []
        env = {"SOURCES__CODAT__API_KEY": API_KEY, "SOURCES__CODAT__BASE_URL": url}
        env["SOURCES__CODAT__RATE_WINDOW"] = str(window)
        emulator.clear_requests()
        started = datetime.now(UTC)
        run = run_process(command, workdir, env)
        ended = datetime.now(UTC)
        stats = emulator.control("GET", "stats")
        if run.status != 0:
            raise PushBenchFailed(
                f"codat-push exited with {run.status}: {run.stdout[-1000:]} {run.stderr[-1000:]}"
            )
        results = push_results(database)
        check_results(results, wanted)
        created = check_customers(emulator, before, wanted, {str(row[2]) for row in results})
    best = ideal(list(wanted.values()), LATENCY, PUSH_DELAY, POLL_INTERVAL, window=window)
    return {
        "companies": COMPANIES,
        "account_companies": ACCOUNT_COMPANIES,
        "rows": len(rows),
        "latency_s": LATENCY,
        "push_delay_s": PUSH_DELAY,
        "poll_interval_s": POLL_INTERVAL,
        "per_minute_limit": CODAT_REQUESTS_PER_MINUTE,
        "window_s": window,
        "in_flight_per_company": CODAT_IN_FLIGHT_PER_COMPANY,
        "concurrency": concurrency or DEFAULT_PUSH_CONCURRENCY,
        "command": " ".join(["codat-push", *command[1:]]),
        "seconds": run.seconds,
        "ideal_s": best.seconds,
        "ideal": asdict(best) | {"binding": best.binding},
        "ratio_to_ideal": round(run.seconds / best.seconds, 3),
        "peak_rss_mib": run.peak_rss_mib,
        "requests": stats["requests"],
        "requests_by_operation": stats["by_operation"],
        "http_429": stats["by_status"].get("429", 0),
        "success_rows": len(results),
        "customers_created": created,
        "exact": True,  # every check above passed, or it raised
        "time": where_time_goes(results, started, ended),
        "last_line": run.stdout.strip().splitlines()[-1],
    }


def main() -> None:
    """Run with the command line's settings and print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-company", type=int, default=ROWS_PER_COMPANY)
    parser.add_argument("--window", type=float, default=CODAT_WINDOW, help="per-IP window, seconds")
    parser.add_argument("--concurrency", type=int, help="codat-push --concurrency (default: its own)")
    args = parser.parse_args()
    print(
        json.dumps(
            bench_push(
                rows_per_company=args.rows_per_company, window=args.window, concurrency=args.concurrency
            )
        )
    )


if __name__ == "__main__":
    main()
