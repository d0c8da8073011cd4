"""The floor of a load, and `codat-sync` as a whole process set against it, with and without latency.

The floor is what no connector can beat: one process that GETs every customer page of the
account and parses its JSON, nothing else (`python -m tests.benchmarks.floor_bench URL`). Each
load is `codat-sync --no-attachments` as a user runs it, in a fresh process (imports, locks, the
load and the views included), against the same emulator in the same run; its time is given as a
multiple of the floor's. The same load is then run with the emulator answering after a delay
(per request, and per record a page carries), to show how much of Codat's latency one process
hides; and, at 500,000 customers, the full load and the 1% incremental run, with and without
latency. Every load must hold exactly the emulator's readable customers.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from tests.benchmarks.harness import (
    API_KEY,
    CHANGED_SHARE,
    EmulatorHandle,
    Figures,
    count_changed,
    count_customers,
    fresh_workdir,
    median,
    run_child,
    run_process,
    running_emulator,
    spread,
)

MODULE = "tests.benchmarks.floor_bench"
PAGE_SIZE = 5000
STEPS = re.compile(r"^time: ([\d.]+) s(?: \((.*)\))?$", re.MULTILINE)


@dataclass(frozen=True)
class Plan:
    """Sizes and latencies of the floor benchmark."""

    companies: int = 40
    customers: int = 100_000
    latency: float = 0.5  # seconds per request
    latency_per_record: float = 0.0001  # seconds per record: 0.5 s more for a page of 5,000
    large_companies: int = 200
    large_customers: int = 500_000
    incremental_latency: float = 0.3
    rounds: int = 2


FULL = Plan()
QUICK = Plan(companies=8, customers=4_000, large_companies=10, large_customers=12_000, rounds=1)


# -- the floor, a child process ---------------------------------------------------------------


def floor(base_url: str) -> Figures:
    """GET every customer page of every company, by page number, and parse it; nothing else."""
    started = time.perf_counter()
    session = requests.Session()
    session.headers["Authorization"] = "Basic " + base64.b64encode(API_KEY.encode()).decode()
    companies = json.loads(session.get(f"{base_url}/companies", params={"pageSize": PAGE_SIZE}).content)
    pages = customers = size = 0
    for company in companies["results"]:
        page = 1
        while True:
            params = {"page": page, "pageSize": PAGE_SIZE, "orderBy": "modifiedDate"}
            answer = session.get(f"{base_url}/companies/{company['id']}/data/customers", params=params)
            if answer.status_code != 200:  # not ready in Codat (409): nothing to read
                break
            body = json.loads(answer.content)
            pages, customers, size = pages + 1, customers + len(body["results"]), size + len(answer.content)
            if page * PAGE_SIZE >= body["totalResults"]:
                break
            page += 1
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "pages": pages,
        "customers": customers,
        "json_mb": round(size / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """`floor_bench URL`: the floor's figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    print(json.dumps(floor(parser.parse_args(argv).base_url)))
    return 0


# -- the parent --------------------------------------------------------------------------------


def floor_run(emulator: EmulatorHandle, workdir: Path) -> Figures:
    """The floor in a fresh process; its wall time from spawn to exit is what loads are set against."""
    child = run_child(MODULE, [emulator.url], workdir)
    return child.figures | {"process_seconds": child.process_seconds, "peak_rss_mib": child.peak_rss_mib}


def codat_sync(emulator: EmulatorHandle, workdir: Path, **settings: Any) -> Figures:
    """`codat-sync --no-attachments` into `workdir` (a first load there, else incremental), as a process."""
    env = {"SOURCES__CODAT__API_KEY": API_KEY, "SOURCES__CODAT__BASE_URL": emulator.url}
    env |= {f"SOURCES__CODAT__{name.upper()}": str(value) for name, value in settings.items()}
    database = workdir / "bench.duckdb"
    command = [sys.executable, "-m", "connector.cli", "--no-attachments", "--quiet"]
    command += ["--duckdb-file", str(database), "--pipelines-dir", str(workdir / "pipelines")]
    emulator.clear_requests()
    process = run_process(command, workdir, env)
    if process.status not in (0, 1):  # 1: a company not ready is not an error of the load
        raise RuntimeError(f"codat-sync exited with {process.status}: {process.stderr[-2000:]}")
    found = STEPS.search(process.stdout)
    steps = dict(_step(part) for part in found.group(2).split(", ")) if found and found.group(2) else {}
    return {
        "process_seconds": process.seconds,
        "run_seconds": float(found.group(1)) if found else None,
        "steps": steps,
        "peak_rss_mib": process.peak_rss_mib,
        "requests": emulator.requests_served(),
        "rows": count_customers(database, "company_id"),
        **settings,
    }


def _step(text: str) -> tuple[str, float]:
    name, seconds, _unit = text.rsplit(" ", 2)
    return name, float(seconds)


def set_latency(emulator: EmulatorHandle, per_request: float = 0.0, per_record: float = 0.0) -> None:
    """The emulator's answer time from now on."""
    emulator.control("POST", "config", {"latency": per_request, "latency_per_record": per_record})


def fresh_sync(emulator: EmulatorHandle, name: str, **settings: Any) -> Figures:
    """A full load into a fresh folder."""
    with fresh_workdir(name) as workdir:
        return codat_sync(emulator, workdir, **settings)


def exact(figures: Figures, expected: int) -> Figures:
    """The figures, marked whether the load holds exactly the expected customers."""
    return figures | {"expected": expected, "exact": figures["rows"] == expected}


def small_account(plan: Plan, say: Any) -> Figures:
    """100,000 customers in 40 companies: the floor, the load, the load with latency."""
    figures: Figures = {"companies": plan.companies, "customers": plan.customers}
    with running_emulator(plan.companies, plan.customers) as emulator, fresh_workdir("floor") as workdir:
        expected = sum(emulator.readable_customers().values())
        floors, loads = [], []
        for _ in range(plan.rounds):
            floors.append(floor_run(emulator, workdir))
            loads.append(exact(fresh_sync(emulator, "load"), expected))
            say(f"floor {floors[-1]['process_seconds']} s, codat-sync {loads[-1]['process_seconds']} s")
        figures["floor"] = {"runs": floors, "process_seconds": median([f["process_seconds"] for f in floors])}
        figures["load"] = {"runs": loads, "process_seconds": median([f["process_seconds"] for f in loads])}
        figures["load_vs_floor"] = round(
            figures["load"]["process_seconds"] / figures["floor"]["process_seconds"], 2
        )
        set_latency(emulator, per_request=plan.latency)
        figures["latency"] = exact(fresh_sync(emulator, "latency"), expected)
        figures["latency_one_company_at_a_time"] = exact(
            fresh_sync(emulator, "serial", company_concurrency=1), expected
        )
        set_latency(emulator, per_record=plan.latency_per_record)
        figures["latency_per_record"] = exact(fresh_sync(emulator, "per-record"), expected)
        set_latency(emulator)
    zero = figures["load"]["process_seconds"]
    for name in ("latency", "latency_one_company_at_a_time", "latency_per_record"):
        figures[name]["vs_no_latency"] = round(figures[name]["process_seconds"] / zero, 2)
    figures |= {"latency_s": plan.latency, "latency_per_record_s": plan.latency_per_record}
    return figures


def large_account(plan: Plan, say: Any) -> Figures:
    """500,000 customers in 200 companies: floor, full load; 1% changed, incremental with, without latency."""

    figures: Figures = {"companies": plan.large_companies, "customers": plan.large_customers}
    with (
        running_emulator(plan.large_companies, plan.large_customers) as emulator,
        fresh_workdir("floor-large") as workdir,
    ):
        readable = emulator.readable_customers()
        expected = sum(readable.values())
        figures["floor"] = floor_run(emulator, workdir)
        loaded = workdir / "loaded"
        loaded.mkdir()
        figures["full"] = exact(codat_sync(emulator, loaded), expected)
        floor_s, full_s = figures["floor"]["process_seconds"], figures["full"]["process_seconds"]
        say(f"large: floor {floor_s} s, full {full_s} s")
        since = datetime.now(UTC).replace(microsecond=0)
        changed: dict[str, list[str]] = {}
        for company, count in spread(readable, CHANGED_SHARE).items():
            body = {"action": "modify", "company_id": company, "count": count}
            changed |= emulator.control("POST", "mutate", body)["changed"]
        twin = workdir / "twin"
        shutil.copytree(loaded, twin)  # the same warehouse, for the same incremental run with latency
        for name, folder, latency in (
            ("incremental", loaded, 0.0),
            ("incremental_latency", twin, plan.incremental_latency),
        ):
            set_latency(emulator, per_request=latency)
            run = exact(codat_sync(emulator, folder), expected)
            found = count_changed(folder / "bench.duckdb", changed, since)
            figures[name] = run | {
                "latency_s": latency,
                "changed": sum(map(len, changed.values())),
                "changed_found": found,
            }
        set_latency(emulator)
    figures["full_vs_floor"] = round(
        figures["full"]["process_seconds"] / figures["floor"]["process_seconds"], 2
    )
    figures["incremental_latency_vs_none"] = round(
        figures["incremental_latency"]["process_seconds"] / figures["incremental"]["process_seconds"], 2
    )
    return figures


def bench_floor(quick: bool = False, say: Any = print) -> Figures:
    """The floor benchmark's figures (run.py's `floor`)."""
    plan = QUICK if quick else FULL
    return {"small": small_account(plan, say), "large": large_account(plan, say)}


if __name__ == "__main__":
    sys.exit(main())
