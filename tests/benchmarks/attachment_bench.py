"""Benchmark of attachment listings against a rate-limited emulator: throughput vs ideal, and 429s.

The emulator runs in its own process with request latency, 20 companies and its per-minute
limit on; the client is configured with the same limit and window. The ideal listing rate is
min(limit / window, 10 × companies / latency): Codat's per-minute limit or its 10 requests in
flight per company, whichever binds. A shortened window (`--window 6`) keeps the run short
and is fair only because the client is told the same window; `--window 60` is Codat's own.

    .venv/bin/python -m tests.benchmarks.attachment_bench [--window 60] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from typing import Any

import dlt
import requests

from connector.defaults import MAX_IN_FLIGHT_PER_COMPANY
from connector.emulator.launch import emulator_process
from connector.source import codat_source
from connector.status import RunReport

KEY = "bench-key"
COMPANIES = 20
LATENCY = 0.05
PER_MINUTE_LIMIT = 1000
WINDOW = 6.0  # a tenth of Codat's minute: ten times its rate, for a short run
SECONDS = 30.0  # run length at the ideal rate, which sizes the account
SAMPLE_EVERY = 0.25


class ListingSampler:
    """Polls the emulator's stats: (time, listings answered) pairs, to time the listing phase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ListingSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(SAMPLE_EVERY):
                stats = session.get(f"{self.url}/_emulator/stats", timeout=10).json()
                listed = stats["by_operation"].get("list-customer-attachments", 0)
                self.samples.append((time.monotonic(), listed))

    def rate(self) -> float:
        """Listings per second from the first sample with a listing to the last new one."""
        active = [(t, n) for t, n in self.samples if n > 0]
        if len(active) < 2:
            return 0.0
        final = active[-1][1]
        end = next(t for t, n in active if n == final)
        start, first = active[0]
        return (final - first) / (end - start) if end > start else 0.0


def emulator_stats(url: str) -> dict[str, Any]:
    """The emulator's request counters."""
    stats: dict[str, Any] = requests.get(f"{url}/_emulator/stats", timeout=10).json()
    return stats


def bench_attachments(
    companies: int = COMPANIES,
    latency: float = LATENCY,
    per_minute_limit: int = PER_MINUTE_LIMIT,
    window: float = WINDOW,
    seconds: float = SECONDS,
) -> dict[str, Any]:
    """List every customer's attachments once, paced; report throughput against the ideal.

    Args:
        companies: Companies in the emulated account.
        latency: Seconds each request takes in the emulator.
        per_minute_limit: Requests the emulator admits per client in any `window` seconds.
        window: The length of that window, given to the emulator and the client alike.
        seconds: How long the listings would take at the ideal rate (sizes the account).

    Returns:
        Figures: listings, rates, share of ideal, 429s, run time.
    """
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
    ideal = min(per_minute_limit / window, MAX_IN_FLIGHT_PER_COMPANY * companies / latency)
    customers = max(100, round(ideal * seconds))
    flags = [
        *("--api-key", KEY, "--companies", str(companies), "--customers", str(customers)),
        *("--latency", str(latency), "--seed", "7", "--daily-limit", "100000000"),
        *("--per-minute-limit", str(per_minute_limit), "--rate-window", str(window)),
    ]
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as tmp:
        pipeline = dlt.pipeline(
            pipeline_name="attachment_bench",
            destination=dlt.destinations.duckdb(os.path.join(tmp, "bench.duckdb")),
            dataset_name="codat",
            pipelines_dir=os.path.join(tmp, "pipelines"),
        )
        report = RunReport()
        source = codat_source(
            api_key=KEY,
            base_url=url,
            requests_per_minute=per_minute_limit,
            rate_window=window,
            report=report,
        )
        started = time.monotonic()
        with ListingSampler(url) as sampler:
            pipeline.extract(source)
        extract_seconds = time.monotonic() - started
        stats = emulator_stats(url)
    listings = stats["by_operation"].get("list-customer-attachments", 0)
    rate = sampler.rate()
    return {
        "companies": companies,
        "latency_s": latency,
        "per_minute_limit": per_minute_limit,
        "window_s": window,
        "customers": customers,
        "listings": listings,
        "requests": stats["requests"],
        "http_429": stats["by_status"].get("429", 0),
        "extract_s": round(extract_seconds, 2),
        "ideal_per_s": round(ideal, 2),
        "listings_per_s": round(rate, 2),
        "share_of_ideal": round(rate / ideal, 3),
        "requests_per_s_overall": round(stats["requests"] / extract_seconds, 2),
        "deferred": report.attachments_deferred,
    }


def main() -> None:
    """Run with the command line's settings and print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--companies", type=int, default=COMPANIES)
    parser.add_argument("--latency", type=float, default=LATENCY)
    parser.add_argument("--per-minute-limit", type=int, default=PER_MINUTE_LIMIT)
    parser.add_argument("--window", type=float, default=WINDOW)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args()
    figures = bench_attachments(
        args.companies, args.latency, args.per_minute_limit, args.window, args.seconds
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
