"""Benchmark of the sync: a full load and a no-change rerun into DuckDB, emulator out of process."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import dlt

from connector.emulator.launch import emulator_process
from connector.sync import run_sync

KEY = "bench-key"


def bench_sync(companies: int = 1, customers: int = 20_000) -> dict[str, Any]:
    """Time a full load and an unchanged rerun; report rates, requests and peak memory."""
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
    flags = ["--api-key", KEY, "--companies", str(companies), "--customers", str(customers), "--seed", "7"]
    # The emulator in its own process, so this process's memory is the sync's alone.
    with emulator_process(*flags) as url, tempfile.TemporaryDirectory() as tmp:
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            destination=dlt.destinations.duckdb(os.path.join(tmp, "bench.duckdb")),
            dataset_name="codat",
            pipelines_dir=os.path.join(tmp, "pipelines"),
        )
        started = time.perf_counter()
        full = run_sync(pipeline, api_key=KEY, base_url=url, attachments=False)
        full_seconds = time.perf_counter() - started
        started = time.perf_counter()
        rerun = run_sync(pipeline, api_key=KEY, base_url=url, attachments=False)
        rerun_seconds = time.perf_counter() - started
    return {
        "customers": full.customers_new,
        "full_load_seconds": round(full_seconds, 2),
        "full_load_customers_per_second": round(full.customers_new / full_seconds),
        "full_load_requests": full.requests,
        "rerun_seconds": round(rerun_seconds, 2),
        "rerun_requests": rerun.requests,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


if __name__ == "__main__":
    print(json.dumps(bench_sync(customers=int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)))
