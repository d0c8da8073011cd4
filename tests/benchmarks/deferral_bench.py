"""The state a deferred first load leaves: 500,000 customers whose attachment listings wait."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import dlt

from connector.destinations import duckdb_destination
from connector.emulator.launch import emulator_process
from connector.sync import run_sync

KEY = "bench-key"
COMPANIES = 20
CUSTOMERS = 500_000
BUDGET = 200  # requests: the customer pages fit, almost every attachment listing is deferred


def bench_deferral(
    companies: int = COMPANIES, customers: int = CUSTOMERS, quick: bool = False
) -> dict[str, Any]:
    """A full load whose request budget is spent: how big the pipeline's source state gets.

    Args:
        companies: Companies in the emulated account.
        customers: Customers in it (all listed as deferred work).
        quick: A small account, for a smoke run.
    """
    if quick:
        customers = 5_000
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
    flags = [
        *("--api-key", KEY, "--companies", str(companies), "--customers", str(customers)),
        *("--seed", "7", "--daily-limit", "100000000", "--per-minute-limit", "0"),
    ]
    with emulator_process(*flags, ready_timeout=300) as url, tempfile.TemporaryDirectory() as tmp:
        pipeline = dlt.pipeline(
            pipeline_name="deferral_bench",
            destination=duckdb_destination(os.path.join(tmp, "bench.duckdb")),
            dataset_name="codat",
            pipelines_dir=os.path.join(tmp, "pipelines"),
        )
        started = time.monotonic()
        summary = run_sync(
            pipeline, api_key=KEY, base_url=url, request_budget=BUDGET, requests_per_minute=None
        )
        seconds = time.monotonic() - started
        state = pipeline.state.get("sources", {})
    return {
        "companies": companies,
        "customers": summary.customers_new,
        "request_budget": BUDGET,
        "requests": summary.requests,
        "attachments_deferred": summary.attachments_deferred,
        "source_state_bytes": len(json.dumps(state, default=str)),
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small account, for a smoke run")
    print(json.dumps(bench_deferral(quick=parser.parse_args().quick)))  # one line: `run_child` reads it
