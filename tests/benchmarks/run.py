"""Benchmarks of the emulator and of the sync, written as one JSON document.

Run with `make bench` (`.venv/bin/python tests/benchmarks/run.py --out benchmarks.json`). Each
benchmark is a function registered with `@benchmark("name")`: it gets a `Context` and returns a dict
of figures, stored under its name next to `machine` and `date`. Add a benchmark by writing one more
such function; `Context.emulator()` gives it a running emulator of any size.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from connector.emulator.server import Emulator, EmulatorServer
from connector.emulator.store import Sizing

API_KEY = "bench-key"
DEFAULT_CUSTOMERS = 50_000
DEFAULT_SECONDS = 10.0  # time budget of each benchmark's measured loop
PAGE_SIZE = 5000
SYNC_CUSTOMERS = 20_000
SINCE = "2019-01-01T00:00:00Z"  # earlier than every generated modifiedDate: every customer matches

Figures = dict[str, Any]
BENCHMARKS: list[tuple[str, Callable[[Context], Figures]]] = []


def benchmark(name: str) -> Callable[[Callable[[Context], Figures]], Callable[[Context], Figures]]:
    """Register a benchmark; its figures go under `name` in the JSON document."""

    def register(function: Callable[[Context], Figures]) -> Callable[[Context], Figures]:
        BENCHMARKS.append((name, function))
        return function

    return register


@dataclass
class Context:
    """What benchmarks share: the command line settings and emulators started on demand."""

    customers: int
    seconds: float
    stack: ExitStack
    _servers: dict[tuple[int, int, int], EmulatorServer] = field(default_factory=dict)

    def emulator(self, sizing: Sizing) -> EmulatorServer:
        """A running in-process emulator of this size (started once, stopped at exit)."""
        key = (sizing.seed, sizing.companies, sizing.customers)
        if key not in self._servers:
            server = EmulatorServer(Emulator(sizing, api_key=API_KEY)).start()
            self.stack.callback(server.stop)
            self._servers[key] = server
        return self._servers[key]

    @staticmethod
    def session() -> requests.Session:
        """A keep-alive session that authenticates as the benchmarks' emulators expect."""
        session = requests.Session()
        session.headers["Authorization"] = "Basic " + base64.b64encode(API_KEY.encode()).decode()
        return session


def fetch_pages(session: requests.Session, url: str) -> list[tuple[float, bytes]]:
    """Every page of an incremental read: the transfer time and the raw body of each.

    Only the transfer is timed: the page count comes from `totalResults` in the first body's tail.
    """
    pages: list[tuple[float, bytes]] = []
    params: dict[str, str | int] = {
        "pageSize": PAGE_SIZE,
        "orderBy": "modifiedDate",
        "query": f"modifiedDate>={SINCE}",
    }
    total = PAGE_SIZE
    while len(pages) * PAGE_SIZE < total:
        started = time.perf_counter()
        response = session.get(url, params={**params, "page": len(pages) + 1})
        body = response.content
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        if not pages:
            total = int(re.findall(rb'"totalResults":\s*(\d+)', body[-4096:])[-1])
        pages.append((elapsed, body))
    return pages


@benchmark("emulator")
def emulator_serving(context: Context) -> Figures:
    """Serve 5000-customer incremental pages over keep-alive; parse them apart from the transfer."""
    started = time.perf_counter()
    server = context.emulator(Sizing(seed=7, companies=1, customers=context.customers))
    generated = time.perf_counter() - started
    company_id = next(iter(server.emulator.store.companies))
    url = f"{server.url}/companies/{company_id}/data/customers"
    with context.session() as session:
        first = fetch_pages(session, url)  # warm-up: compiles the query, encodes every customer
        # The emulator's millions of long-lived objects share this process with the client:
        # freezing them keeps full garbage collections from charging their traversal to either side.
        gc.collect()
        gc.freeze()
        rounds, serve_times = 0, []
        deadline = time.perf_counter() + context.seconds
        while time.perf_counter() < deadline or rounds == 0:
            serve_times += [elapsed for elapsed, _ in fetch_pages(session, url)]
            rounds += 1
    bodies = [body for _, body in first]
    parse_times, customers = [], 0
    for body in bodies:
        started = time.perf_counter()
        parsed = json.loads(body)
        parse_times.append(time.perf_counter() - started)
        customers += len(parsed["results"])
    serve_total, parse_total = sum(serve_times), sum(parse_times)
    serve_per_page, parse_per_page = serve_total / len(serve_times), parse_total / len(parse_times)
    page_bytes = sum(len(b) for b in bodies) / len(bodies)
    return {
        "customers": customers,
        "generate_s": round(generated, 3),
        "page_size": PAGE_SIZE,
        "pages_per_read": len(bodies),
        "rounds": rounds,
        "requests": len(serve_times),
        "requests_per_s": round(len(serve_times) / serve_total, 2),
        "customers_per_s": round(customers * rounds / serve_total),
        "mb_per_s": round(page_bytes * len(serve_times) / serve_total / 1e6, 2),
        "bytes_per_customer": round(sum(len(b) for b in bodies) / customers),
        "serve_s_per_page": round(serve_per_page, 4),
        "parse_s_per_page": round(parse_per_page, 4),
        "parse_customers_per_s": round(customers / parse_total),
        "serve_to_parse_ratio": round(serve_per_page / parse_per_page, 2),
    }


@benchmark("sync")
def sync_full_and_rerun(context: Context) -> Figures:
    """A full load of one company into DuckDB and an unchanged rerun, in a fresh process.

    Its own process, so `peak_rss_mib` is the sync's alone (the emulator runs in another).
    """
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tests.benchmarks.sync_bench", str(SYNC_CUSTOMERS)]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True, timeout=600)
    figures: Figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def machine() -> Figures:
    """Where the figures were measured."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def print_table(results: dict[str, Figures]) -> None:
    """A short table of every benchmark's figures."""
    rows = [(name, key, value) for name, figures in results.items() for key, value in figures.items()]
    width = max(len(name) for name, _, _ in rows)
    key_width = max(len(key) for _, key, _ in rows)
    print(f"{'benchmark':<{width}}  {'figure':<{key_width}}  value")
    for name, key, value in rows:
        print(f"{name:<{width}}  {key:<{key_width}}  {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks.json"), help="JSON file to write")
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS, help="customers in the company")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measuring time per benchmark")
    names = [name for name, _ in BENCHMARKS]
    parser.add_argument("--only", choices=names, action="append", help="run only these benchmarks")
    args = parser.parse_args(argv)
    if args.customers < PAGE_SIZE or args.seconds <= 0:
        parser.error(f"--customers must be at least {PAGE_SIZE} and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print a table and write the JSON document."""
    args = parse_args(argv)
    results: dict[str, Figures] = {}
    with ExitStack() as stack:
        context = Context(customers=args.customers, seconds=args.seconds, stack=stack)
        for name, function in BENCHMARKS:
            if args.only is None or name in args.only:
                results[name] = function(context)
    print_table(results)
    document = {**results, "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
