"""What the rolling attachment refresh costs: a daily run's requests, and a full refresh's time.

Two parts, each against an emulator in another process:

1. At scale (500,000 customers in 200 companies, unpaced): a first load without attachments,
   a run that starts every company's refresh cycle, then the run a day later. Its refresh
   requests (customer pages and listings) are set against Codat's daily quota for the account,
   1,000 x (1 + companies).
2. Paced (1,000 requests per 6 s window, 50 ms latency, 20 companies): `--refresh-attachments`
   over the whole account, timed. The share of the limit it reaches gives the time a full
   refresh of the large account takes at Codat's 1,000 a minute.

The refresh's clock (`connector.refresh.now`) is set by the benchmark; nothing else's is.

    .venv/bin/python -m tests.benchmarks.refresh_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import requests

from connector import refresh
from connector.defaults import CODAT_DAILY_REQUESTS_PER_COMPANY
from connector.destinations import duckdb_destination
from connector.emulator.launch import emulator_process
from connector.sync import SyncSummary, run_sync
from tests.attachmenttools import refresh_clock

KEY = "bench-key"
START = datetime(2026, 3, 2, 3, 30, tzinfo=UTC)
PACED_LIMIT, PACED_WINDOW, PACED_LATENCY = 1000, 6.0, 0.05


def account_listings(url: str) -> int:
    """Listings a full refresh makes: customers x accounting connections, readable companies."""
    account = requests.get(f"{url}/_emulator/account", timeout=30).json()
    return sum(
        company["customers"] * sum(1 for c in company["connections"] if c["sourceType"] == "Accounting")
        for company in account
        if company["customers_status"] == "Complete"
    )


def timed_run(pipeline: dlt.Pipeline, moment: datetime, **options: Any) -> tuple[SyncSummary, float]:
    started = time.monotonic()
    with refresh_clock(moment):
        summary = run_sync(pipeline, api_key=KEY, **options)
    return summary, time.monotonic() - started


def make_pipeline(folder: str, name: str) -> dlt.Pipeline:
    return dlt.pipeline(
        pipeline_name=name,
        destination=duckdb_destination(os.path.join(folder, f"{name}.duckdb")),
        dataset_name="codat",
        pipelines_dir=os.path.join(folder, "pipelines"),
    )


def daily_cost(companies: int, customers: int) -> dict[str, Any]:
    """Part 1: the refresh requests of a daily run, unpaced, against the daily quota."""
    flags = [
        *("--api-key", KEY, "--companies", str(companies), "--customers", str(customers)),
        *("--seed", "7", "--daily-limit", "1000000000", "--per-minute-limit", "0"),
    ]
    with emulator_process(*flags, ready_timeout=300) as url, tempfile.TemporaryDirectory() as tmp:
        pipeline = make_pipeline(tmp, "refresh_bench")
        unpaced = {"base_url": url, "requests_per_minute": None}
        loaded, load_s = timed_run(pipeline, START - timedelta(hours=1), attachments=False, **unpaced)
        started, _ = timed_run(pipeline, START, **unpaced)  # counts each company: its cycle starts
        daily, daily_s = timed_run(pipeline, START + timedelta(days=1), **unpaced)
        full_listings = account_listings(url)
        state = pipeline.state.get("sources", {}).get("codat", {}).get(refresh.STATE_KEY, {})
    quota = CODAT_DAILY_REQUESTS_PER_COMPANY * (1 + companies)
    return {
        "companies": companies,
        "customers": loaded.customers_new,
        "load_s": round(load_s, 1),
        "cycle_start_requests": started.requests,
        "daily_requests": daily.requests,
        "daily_refreshed": daily.attachments_refreshed,
        "daily_listings": daily.attachment_listings,
        "daily_s": round(daily_s, 1),
        "daily_quota": quota,
        "daily_share_of_quota": round(daily.requests / quota, 3),
        "full_refresh_listings": full_listings,
        "refresh_state_bytes": len(json.dumps(state)),
    }


def paced_rate(companies: int, customers: int) -> dict[str, Any]:
    """Part 2: a full `--refresh-attachments`, paced; the share of the limit it reaches."""
    flags = [
        *("--api-key", KEY, "--companies", str(companies), "--customers", str(customers)),
        *("--latency", str(PACED_LATENCY), "--seed", "7", "--daily-limit", "100000000"),
        *("--per-minute-limit", str(PACED_LIMIT), "--rate-window", str(PACED_WINDOW)),
    ]
    paced = {"requests_per_minute": PACED_LIMIT, "rate_window": PACED_WINDOW}
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as tmp:
        pipeline = make_pipeline(tmp, "refresh_paced")
        timed_run(pipeline, START - timedelta(hours=1), base_url=url, attachments=False, **paced)
        timed_run(pipeline, START, base_url=url, **paced)
        full, seconds = timed_run(
            pipeline, START + timedelta(hours=1), base_url=url, refresh_attachments=True, **paced
        )
    limit_per_s = PACED_LIMIT / PACED_WINDOW
    return {
        "paced_companies": companies,
        "paced_refreshed": full.attachments_refreshed,
        "paced_requests": full.requests,
        "paced_s": round(seconds, 1),
        "paced_share_of_limit": round(full.requests / seconds / limit_per_s, 3),
        "paced_behind": full.refresh_behind,
    }


def bench_refresh(quick: bool = False) -> dict[str, Any]:
    """Both parts; the full refresh's time at Codat's 1,000 a minute from the paced share."""
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
    figures = daily_cost(20, 5_000) if quick else daily_cost(200, 500_000)
    figures.update(paced_rate(20, 500 if quick else 2_000))
    share = figures["paced_share_of_limit"] or 1.0
    # Listings plus about one customer page per 5,000 customers.
    requests_needed = figures["full_refresh_listings"] + figures["customers"] // 5000 + figures["companies"]
    figures["full_refresh_requests"] = requests_needed
    figures["full_refresh_minutes_at_codat_limit"] = round(requests_needed / (1000 * share), 0)
    # This process's own peak: the emulators it starts are its children, and a parent's `wait4`
    # would count them in.
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small account, for a smoke run")
    print(json.dumps(bench_refresh(quick=parser.parse_args().quick)))  # one line: `run_child` reads it
