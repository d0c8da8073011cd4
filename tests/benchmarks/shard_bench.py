"""Company shards against one process: one emulated account loaded both ways, timed and counted.

`bench_shards()` (run.py's `shards`) starts one emulator with a per-request latency, loads the
account once by one process into one DuckDB file (`run_sync`), then by N shard processes
started together, each into its own file under one folder (`run_shard`). Every load is a child
process of this module (`python -m tests.benchmarks.shard_bench one|prepare|shard ...`, one
JSON line out); its peak RSS comes from `wait4` in the parent, its requests from the emulator.
Both sides must hold exactly the emulator's readable customers, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dlt
import duckdb

from connector.destinations import duckdb_destination
from connector.placement import ShardPlan
from connector.shards import combined_duckdb, prepare_dataset, run_shard
from connector.sync import SyncSummary, run_sync
from tests.benchmarks.harness import (
    API_KEY,
    DATASET,
    ChildRun,
    EmulatorHandle,
    Figures,
    count_customers,
    fresh_workdir,
    run_child,
    running_emulator,
)

MODULE = "tests.benchmarks.shard_bench"
PREFIX = "bench"
DEFAULT_SHARDS = 4
# An assumed answer time, between Codat's company listing and its page of 5,000 customers:
# the waits add up in one process and overlap across shards.
DEFAULT_LATENCY = 0.5
# Far above what either side sends: the client's pacing is not what is measured.
REQUESTS_PER_MINUTE = 1_000_000


class ShardBenchFailed(AssertionError):
    """The two sides, or one side and the emulator, disagree on the customers loaded."""


@dataclass(frozen=True)
class Account:
    """The emulated account both sides load, and the emulator's latency."""

    companies: int = 40
    customers: int = 100_000
    latency: float = DEFAULT_LATENCY


FULL = Account()
QUICK = Account(companies=8, customers=4_000, latency=0.1)


# -- the child processes ---------------------------------------------------------------------


def shard_plan(folder: Path, pipelines_dir: Path, count: int) -> ShardPlan:
    """The plan every shard child (and `prepare`) builds alike: all shards at once, one folder."""
    return ShardPlan(
        count=count,
        prefix=PREFIX,
        dataset_name=DATASET,
        duckdb_folder=str(folder),
        pipelines_dir=str(pipelines_dir),
        shards_at_once=count,
        requests_per_minute=REQUESTS_PER_MINUTE,
    )


def summary_figures(summary: SyncSummary, seconds: float) -> Figures:
    """What a child reports of its run: time, its own count of requests and rows, its CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": round(seconds, 3),
        "companies": summary.companies,
        "failed_companies": len(summary.failed),
        "customers_new": summary.customers_new,
        "reported_requests": summary.requests,
        "exit_code": summary.exit_code(),
        "steps": {name: round(value, 3) for name, value in summary.steps.items()},
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    }


def load_one(base_url: str, database: Path, pipelines_dir: Path) -> Figures:
    """Every company by one pipeline into one DuckDB file, as `codat-sync` runs."""
    pipeline = dlt.pipeline(
        pipeline_name=f"{PREFIX}_one",
        destination=duckdb_destination(database),
        dataset_name=DATASET,
        pipelines_dir=str(pipelines_dir),
    )
    started = time.perf_counter()
    summary = run_sync(
        pipeline,
        api_key=API_KEY,
        base_url=base_url,
        attachments=False,
        requests_per_minute=REQUESTS_PER_MINUTE,
    )
    return summary_figures(summary, time.perf_counter() - started)


def load_shard(base_url: str, folder: Path, pipelines_dir: Path, count: int, shard: int) -> Figures:
    """One shard's companies into its own file; it paces itself to its part of the plan's limit."""
    plan = shard_plan(folder, pipelines_dir, count)
    started = time.perf_counter()
    summary = run_shard(plan, shard, api_key=API_KEY, base_url=base_url, attachments=False)
    figures = summary_figures(summary, time.perf_counter() - started)
    return figures | {"shard": shard, "requests_per_minute": plan.shard_requests_per_minute()}


def prepare(folder: Path, pipelines_dir: Path, count: int) -> Figures:
    """`prepare_dataset` once before the fan-out, as an orchestrator does."""
    started = time.perf_counter()
    tables = prepare_dataset(shard_plan(folder, pipelines_dir, count))
    return {"seconds": round(time.perf_counter() - started, 3), "tables": tables}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run one step, print its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("one", "prepare", "shard"))
    parser.add_argument("--base-url")
    parser.add_argument("--duckdb", type=Path, help="the one process's DuckDB file")
    parser.add_argument("--folder", type=Path, help="the shards' DuckDB folder")
    parser.add_argument("--pipelines-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=DEFAULT_SHARDS)
    parser.add_argument("--shard", type=int, default=0)
    args = parser.parse_args(argv)
    if args.step == "one":
        figures = load_one(args.base_url, args.duckdb, args.pipelines_dir)
    elif args.step == "prepare":
        figures = prepare(args.folder, args.pipelines_dir, args.count)
    else:
        figures = load_shard(args.base_url, args.folder, args.pipelines_dir, args.count, args.shard)
    print(json.dumps(figures))
    return 0


# -- the parent ------------------------------------------------------------------------------


def emulator_cpu_seconds() -> float | None:
    """CPU seconds so far of this process's emulator child (Linux `/proc`); None elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if "SC_CLK_TCK" in os.sysconf_names else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and b"connector.emulator" in command:
            return round((int(fields[11]) + int(fields[12])) / ticks, 2)
    return None


def child_figures(child: ChildRun) -> Figures:
    """A child's own figures, with the parent's view of it: wall time from spawn to exit, peak RSS."""
    return child.figures | {"process_seconds": child.process_seconds, "peak_rss_mib": child.peak_rss_mib}


def one_process(emulator: EmulatorHandle, workdir: Path) -> Figures:
    """Side (a): one child syncs every company into `workdir/one.duckdb`."""
    workdir.mkdir()
    database = workdir / "one.duckdb"
    args = ["one", "--base-url", emulator.url, "--duckdb", str(database)]
    args += ["--pipelines-dir", str(workdir / "pipelines")]
    emulator.clear_requests()
    cpu, load = emulator_cpu_seconds(), os.getloadavg()[0]
    child = run_child(MODULE, args, workdir)
    return child_figures(child) | {
        "load_average_before": load,
        "requests": emulator.requests_served(),
        "emulator_cpu_seconds": _spent(cpu),
        "customers": count_customers(database, "company_id"),
    }


def fan_out(emulator: EmulatorHandle, workdir: Path, count: int) -> Figures:
    """Side (b): `prepare_dataset`, then `count` shard children started together, timed to the last."""
    workdir.mkdir()
    plan = shard_plan(workdir / "files", workdir / "pipelines", count)
    common = ["--folder", plan.duckdb_folder, "--pipelines-dir", str(plan.pipelines_dir)]
    common += ["--count", str(count)]
    prepared = run_child(MODULE, ["prepare", *common], workdir)
    emulator.clear_requests()
    cpu, load = emulator_cpu_seconds(), os.getloadavg()[0]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(
                run_child, MODULE, ["shard", "--base-url", emulator.url, *common, "--shard", str(k)], workdir
            )
            for k in range(count)
        ]
    seconds = time.perf_counter() - started
    shards = [child_figures(future.result()) for future in futures]
    for shard in shards:
        shard["customers"] = shard_customers(plan, shard["shard"])
    return {
        "load_average_before": load,
        "wall_seconds": round(seconds, 3),
        "prepare_process_seconds": prepared.process_seconds,
        "requests": emulator.requests_served(),
        "emulator_cpu_seconds": _spent(cpu),
        "customers": combined_customers(plan),
        "customers_per_file_sum": sum(shard["customers"] for shard in shards),
        "peak_rss_mib": max(shard["peak_rss_mib"] for shard in shards),
        "peak_rss_mib_sum": round(sum(shard["peak_rss_mib"] for shard in shards), 1),
        "cpu_seconds": round(sum(shard["cpu_seconds"] for shard in shards), 2),
        "shards": shards,
    }


def combined_customers(plan: ShardPlan) -> int:
    """Distinct `(company_id, id)` over every shard file, read through `combined_duckdb`."""
    with combined_duckdb(plan) as db:
        row = db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT company_id, id FROM customers)").fetchone()
    return int(row[0]) if row else 0


def shard_customers(plan: ShardPlan, shard: int) -> int:
    """Distinct `(company_id, id)` in one shard's file; 0 if its companies loaded no customers table."""
    try:
        return count_customers(plan.duckdb_file(shard), "company_id")
    except duckdb.CatalogException:
        return 0


def _spent(before: float | None) -> float | None:
    after = emulator_cpu_seconds()
    return None if before is None or after is None else round(after - before, 2)


def check(expected: int, one: Figures, sharded: Figures) -> None:
    """Fail loudly unless both sides hold exactly the emulator's readable customers, once each.

    Raises:
        ShardBenchFailed: A side lost or doubled customers, a company failed, or two shard
            files hold the same customer.
    """
    problems = [
        f"{side} loaded {loaded:,} customers, the emulator has {expected:,}"
        for side, loaded in (("one process", one["customers"]), ("the shards", sharded["customers"]))
        if loaded != expected
    ]
    if sharded["customers_per_file_sum"] != sharded["customers"]:
        problems.append(
            f"the shard files hold {sharded['customers_per_file_sum']:,} customers, "
            f"{sharded['customers']:,} of them distinct"
        )
    runs = [("one process", one), *((f"shard {run['shard']}", run) for run in sharded["shards"])]
    problems += [
        f"{side} ended with exit code {run['exit_code']}, {run['failed_companies']} companies failed"
        for side, run in runs
        if run["exit_code"] or run["failed_companies"]
    ]
    if problems:
        raise ShardBenchFailed("; ".join(problems))


def bench_shards(quick: bool = False, shards: int = DEFAULT_SHARDS, latency: float | None = None) -> Figures:
    """The same account loaded by one process, then by `shards` processes at once; both checked exactly.

    The emulator's per-minute limit (on by default in its command line) is turned off; its
    CPU per side is measured too (it encodes customers once, at start, so it stays small).

    Args:
        quick: A small account and latency, for a smoke run.
        shards: Shard processes started together.
        latency: Seconds each request takes in the emulator; default the account's.

    Returns:
        Both sides' figures and their ratio.

    Raises:
        ShardBenchFailed: The customers loaded differ between the sides or from the emulator's.
    """
    account = QUICK if quick else FULL
    latency = account.latency if latency is None else latency
    with (
        running_emulator(account.companies, account.customers) as emulator,
        fresh_workdir("shards") as workdir,
    ):
        expected = sum(emulator.readable_customers().values())
        config = emulator.control("POST", "config", {"latency": latency, "per_minute_limit": 0})
        one = one_process(emulator, workdir / "one")
        sharded = fan_out(emulator, workdir / "shards", shards)
    check(expected, one, sharded)
    return {
        "companies": account.companies,
        "customers": expected,
        "shards": shards,
        "latency_s": config["latency"],
        "emulator_per_minute_limit": config["per_minute_limit"],
        "requests_per_minute": REQUESTS_PER_MINUTE,
        "shard_requests_per_minute": sharded["shards"][0]["requests_per_minute"],
        "one_process_seconds": one["process_seconds"],
        "shards_seconds": sharded["wall_seconds"],
        "speedup": round(one["process_seconds"] / sharded["wall_seconds"], 2),
        "one_process_peak_rss_mib": one["peak_rss_mib"],
        "shards_peak_rss_mib": sharded["peak_rss_mib"],
        "shards_peak_rss_mib_sum": sharded["peak_rss_mib_sum"],
        "shard_peak_rss_mib": [shard["peak_rss_mib"] for shard in sharded["shards"]],
        "one_process_requests": one["requests"],
        "shards_requests": sharded["requests"],
        "exact": True,  # `check` raised otherwise
        "one_process": one,
        "sharded": sharded,
    }


if __name__ == "__main__":
    sys.exit(main())
