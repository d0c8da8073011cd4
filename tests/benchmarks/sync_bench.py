"""One measured load in a fresh process: ours (`run_sync`) or the `rest_api` peer, into DuckDB.

`python -m tests.benchmarks.sync_bench ours|peer --base-url URL --duckdb FILE --pipelines-dir DIR`
prints one JSON line: the load's seconds, the pipeline's state size and this process's peak RSS.
The parent starts the emulator and reads the row counts from the DuckDB file itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import dlt

from connector.destinations import duckdb_destination
from connector.sync import run_sync
from tests.benchmarks.harness import API_KEY, DATASET
from tests.benchmarks.rest_api_peer import codat_rest_api_source

ENGINES = ("ours", "peer")


def load(
    engine: str, base_url: str, database: Path, pipelines_dir: Path, history: bool = False
) -> dict[str, Any]:
    """Run one load (full on a fresh pipeline, incremental on an existing one) and measure it.

    `history` keeps every version of a customer (ours only, `connector.history`).
    """
    # Ours as `codat-sync` configures DuckDB; the peer with dlt's defaults.
    destination = duckdb_destination(database) if engine == "ours" else dlt.destinations.duckdb(str(database))
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{engine}",
        destination=destination,
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )
    figures: dict[str, Any] = {"engine": engine}
    started = time.perf_counter()
    if engine == "ours":
        summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url, attachments=False, history=history)
        figures["seconds"] = round(time.perf_counter() - started, 3)
        figures.update(
            reported_requests=summary.requests,
            customers_new=summary.customers_new,
            customers_updated=summary.customers_updated,
            failed_companies=len(summary.failed),
            steps={name: round(seconds, 3) for name, seconds in summary.steps.items()},
        )
    else:
        pipeline.run(codat_rest_api_source(API_KEY, base_url))
        figures["seconds"] = round(time.perf_counter() - started, 3)
        figures["loader_file_format"] = pipeline.destination.capabilities().preferred_loader_file_format
    state = dict(pipeline.state)
    figures["source_state_bytes"] = len(json.dumps(state.get("sources", {}), default=str))
    figures["pipeline_state_bytes"] = len(json.dumps(state, default=str))
    figures["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, load once, print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--duckdb", type=Path, required=True)
    parser.add_argument("--pipelines-dir", type=Path, required=True)
    parser.add_argument("--history", action="store_true", help="keep every version (ours only)")
    args = parser.parse_args(argv)
    if args.history and args.engine != "ours":
        parser.error("--history is the connector's (ours)")
    print(json.dumps(load(args.engine, args.base_url, args.duckdb, args.pipelines_dir, args.history)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
