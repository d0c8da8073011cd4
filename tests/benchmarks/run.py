"""Benchmarks of the sync, its `rest_api` peer, the emulator, attachments, shards, pushes: one JSON document.

Run with `make bench` (`.venv/bin/python tests/benchmarks/run.py --out benchmarks.json`); `--quick`
for a smoke run at small sizes, `--only NAME` (repeatable) for some of them. Each benchmark is a
function registered with `@benchmark("name")`: it gets a `Context` and returns a dict of figures,
stored under its name next to `machine` and `date`. Every load runs in a fresh process (see
`sync_bench.py`) against an emulator in another process. At the end the figures are set against
their targets (`report.py`): a table on stdout, the chart, and the README's bench section.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `tests.benchmarks` must be importable
    sys.path.insert(0, str(ROOT))

from tests.benchmarks import report  # noqa: E402
from tests.benchmarks.harness import (  # noqa: E402
    CHANGED_SHARE,
    EmulatorHandle,
    Figures,
    count_changed,
    count_customers,
    count_rows,
    fresh_workdir,
    median,
    run_child,
    running_emulator,
    spread,
)
from tests.benchmarks.page_bench import bench_pages  # noqa: E402

ENGINES = ("ours", "peer")
COMPANY_COLUMN = {"ours": "company_id", "peer": "_companies_id"}
DEFAULT_ROUNDS = 2
DEFAULT_SECONDS = 10.0


@dataclass(frozen=True)
class Sizes:
    """How many customers (and companies) each benchmark loads."""

    compare_companies: int = 5
    compare_customers: int = 20_000
    curve_ours: tuple[int, ...] = (5_000,)
    curve_peer: tuple[int, ...] = (5_000, 10_000)
    scale_companies: int = 200
    scale_customers: tuple[int, int] = (50_000, 500_000)
    page_customers: int = 500_000


FULL = Sizes()
QUICK = Sizes(
    compare_customers=1_000,
    curve_ours=(250,),
    curve_peer=(250, 500),
    scale_companies=20,
    scale_customers=(2_000, 6_000),
    page_customers=20_000,
)
BENCHMARKS: list[tuple[str, Callable[[Context], Figures]]] = []


def benchmark(name: str) -> Callable[[Callable[[Context], Figures]], Callable[[Context], Figures]]:
    """Register a benchmark; its figures go under `name` in the JSON document."""

    def register(function: Callable[[Context], Figures]) -> Callable[[Context], Figures]:
        BENCHMARKS.append((name, function))
        return function

    return register


@dataclass
class Context:
    """What benchmarks share: sizes, rounds, the emulator walk's time budget."""

    sizes: Sizes
    rounds: int
    seconds: float
    quick: bool


def say(message: str) -> None:
    """Progress on stderr, so stdout keeps the final table."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_once(engine: str, emulator: EmulatorHandle, workdir: Path, history: bool = False) -> Figures:
    """One load in a fresh process into `workdir`'s DuckDB file; rows and requests counted outside it."""
    database = workdir / "bench.duckdb"
    emulator.clear_requests()
    args = [
        engine,
        "--base-url",
        emulator.url,
        "--duckdb",
        str(database),
        *(["--history"] if history else []),
    ]
    child = run_child(
        "tests.benchmarks.sync_bench", [*args, "--pipelines-dir", str(workdir / "pipelines")], workdir
    )
    extra = {k: v for k, v in child.figures.items() if k not in ("engine", "seconds")}
    return {
        "seconds": child.figures["seconds"],
        "process_seconds": child.process_seconds,
        "peak_rss_mib": child.peak_rss_mib,
        "requests": emulator.requests_served(),
        "rows": count_customers(database, COMPANY_COLUMN[engine]),
        **extra,
    }


def fresh_load(engine: str, companies: int, customers: int) -> Figures:
    """A full load by `engine` from a fresh emulator into a fresh DuckDB file and pipelines dir."""
    say(f"{engine}: full load of {customers:,} customers in {companies} companies")
    with running_emulator(companies, customers) as emulator, fresh_workdir(engine) as workdir:
        figures = load_once(engine, emulator, workdir)
        figures["expected"] = sum(emulator.readable_customers().values())
        figures["emulator_ready_s"] = emulator.ready_seconds
    say(f"{engine}: {figures['seconds']} s, {figures['peak_rss_mib']} MiB, {figures['rows']:,} rows")
    return figures


@benchmark("comparison")
def peer_comparison(context: Context) -> Figures:
    """Ours against dlt's `rest_api` peer, full loads alternating ours/peer, medians of the rounds."""
    companies, customers = context.sizes.compare_companies, context.sizes.compare_customers
    runs: dict[str, list[Figures]] = {engine: [] for engine in ENGINES}
    for _ in range(context.rounds):
        for engine in ENGINES:
            runs[engine].append(fresh_load(engine, companies, customers))
    figures: Figures = {"customers": customers, "companies": companies, "rounds": context.rounds}
    for engine, done in runs.items():
        figures[engine] = {
            "seconds": median([r["seconds"] for r in done]),
            "process_seconds": median([r["process_seconds"] for r in done]),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in done]),
            "requests": done[-1]["requests"],
            "rows": done[-1]["rows"],
            "runs": done,
        }
    loaded = {r["rows"] for done in runs.values() for r in done} | {runs["ours"][0]["expected"]}
    figures["rows_equal"] = len(loaded) == 1
    figures["speedup"] = round(figures["peer"]["seconds"] / figures["ours"]["seconds"], 2)
    return figures


@benchmark("curve")
def size_curve(context: Context) -> Figures:
    """More full loads at other sizes, one run each, for the chart (the peer cannot do 500,000)."""
    points = []
    for engine, sizes in (("ours", context.sizes.curve_ours), ("peer", context.sizes.curve_peer)):
        for customers in sizes:
            figures = fresh_load(engine, context.sizes.compare_companies, customers)
            points.append(
                {"engine": engine, "customers": customers, "companies": context.sizes.compare_companies}
                | {k: figures[k] for k in ("seconds", "peak_rss_mib", "rows", "requests")}
            )
    return {"points": points}


def change_one_percent(emulator: EmulatorHandle, readable: dict[str, int]) -> dict[str, list[str]]:
    """Modify 1% of the customers (`CHANGED_SHARE`), spread over the companies by size; ids per company."""
    changed: dict[str, list[str]] = {}
    for company, count in spread(readable, CHANGED_SHARE).items():
        body = {"action": "modify", "company_id": company, "count": count}
        changed |= emulator.control("POST", "mutate", body)["changed"]
    return changed


def scale_run(companies: int, customers: int) -> Figures:
    """A full load, then an incremental run after 1% of the customers changed; both checked exactly."""
    say(f"scale: emulator with {customers:,} customers in {companies} companies")
    with running_emulator(companies, customers) as emulator, fresh_workdir("scale") as workdir:
        readable = emulator.readable_customers()
        expected = sum(readable.values())
        say(f"scale: ready in {emulator.ready_seconds} s; full load of {expected:,} readable customers")
        full = load_once("ours", emulator, workdir)
        full |= {"expected": expected, "exact": full["rows"] == expected}
        say(f"scale: full load {full['seconds']} s, {full['peak_rss_mib']} MiB, exact: {full['exact']}")
        since = datetime.now(UTC).replace(microsecond=0)
        changed = change_one_percent(emulator, readable)
        incremental = load_once("ours", emulator, workdir)
        found = count_changed(workdir / "bench.duckdb", changed, since)
        total_changed = sum(len(ids) for ids in changed.values())
        incremental |= {
            "changed": total_changed,
            "changed_found": found,
            "all_changed_found": found == total_changed,
            "expected": expected,
            "exact": incremental["rows"] == expected,
        }
        say(f"scale: incremental {incremental['seconds']} s, {incremental['requests']} requests")
        return {
            "customers": customers,
            "companies": companies,
            "emulator_ready_s": emulator.ready_seconds,
            "full": full,
            "incremental": incremental,
        }


@benchmark("history")
def history_cost(context: Context) -> Figures:
    """The large scale run's full load and 1% incremental run with history off and on, side by side.

    One emulator serves both warehouses, each load alternating off then on, so both read the same
    data on the same machine at the same moment; the checks count keys and versions outside them.
    """
    companies, customers = context.sizes.scale_companies, context.sizes.scale_customers[1]
    say(f"history: {customers:,} customers in {companies} companies, off and on")
    with (
        running_emulator(companies, customers) as emulator,
        fresh_workdir("history-off") as off,
        fresh_workdir("history-on") as on,
    ):
        readable = emulator.readable_customers()
        expected = sum(readable.values())
        runs: dict[str, Figures] = {}
        for name, workdir, history in (("full_off", off, False), ("full_on", on, True)):
            runs[name] = load_once("ours", emulator, workdir, history) | {"exact": None}
            say(f"history: {name} {runs[name]['seconds']} s, {runs[name]['peak_rss_mib']} MiB")
        since = datetime.now(UTC).replace(microsecond=0)
        changed = change_one_percent(emulator, readable)
        total_changed = sum(len(ids) for ids in changed.values())
        for name, workdir, history in (("incremental_off", off, False), ("incremental_on", on, True)):
            runs[name] = load_once("ours", emulator, workdir, history)
            runs[name]["changed_found"] = count_changed(workdir / "bench.duckdb", changed, since)
            say(f"history: {name} {runs[name]['seconds']} s, {runs[name]['peak_rss_mib']} MiB")
        versions = count_rows(on / "bench.duckdb", "customers")
        for run in runs.values():
            run["exact"] = (
                run["rows"] == expected and run.get("changed_found", total_changed) == total_changed
            )
    return {
        "customers": customers,
        "companies": companies,
        "changed": total_changed,
        "versions_kept": versions,
        "versions_exact": versions == expected + total_changed,
        **runs,
        "full_ratio": round(runs["full_on"]["seconds"] / runs["full_off"]["seconds"], 3),
        "incremental_ratio": round(runs["incremental_on"]["seconds"] / runs["incremental_off"]["seconds"], 3),
        "full_peak_ratio": round(runs["full_on"]["peak_rss_mib"] / runs["full_off"]["peak_rss_mib"], 3),
    }


@benchmark("webhooks")
def webhook_latency(context: Context) -> Figures:
    """Change to row through codat-webhooks: median and worst of 100, and requests against a nightly run."""
    from tests.benchmarks.webhook_bench import bench_webhooks

    say("webhooks: 100 changes, one at a time, each to its row through codat-webhooks")
    return bench_webhooks(quick=context.quick)


@benchmark("floor")
def floor_multiples(context: Context) -> Figures:
    """The floor (GET and parse every page), and `codat-sync` processes as multiples of it, with latency."""
    from tests.benchmarks.floor_bench import bench_floor

    say("floor")
    return bench_floor(quick=context.quick, say=say)


@benchmark("scale")
def scale(context: Context) -> Figures:
    """Ours only, at two sizes: time, peak memory, exactness, incremental; memory flatness."""
    small, large = context.sizes.scale_customers
    figures: Figures = {
        "small": scale_run(context.sizes.scale_companies, small),
        "large": scale_run(context.sizes.scale_companies, large),
    }
    peaks = [figures[role]["full"]["peak_rss_mib"] for role in ("large", "small")]
    figures["flatness"] = round(peaks[0] / peaks[1], 3)
    return figures


@benchmark("emulator")
def emulator_pages(context: Context) -> Figures:
    """The emulator's time per 5000-customer seek page, walking one large company."""
    say(f"emulator: {context.sizes.page_customers:,} customers in one company")
    with running_emulator(1, context.sizes.page_customers) as emulator, emulator.session() as session:
        company = emulator.account()[0]
        url = f"{emulator.url}/companies/{company['id']}/data/customers"
        figures = bench_pages(session, url, company["customers"], context.seconds)
    say(f"emulator: {figures['s_per_page']} s per page")
    return {"generate_s": emulator.ready_seconds, **figures}


@benchmark("attachments")
def attachment_throughput(context: Context) -> Figures:
    """`attachment_bench.bench_attachments()`, when that module is there."""
    try:
        module = importlib.import_module("tests.benchmarks.attachment_bench")
    except ModuleNotFoundError as exc:
        if exc.name != "tests.benchmarks.attachment_bench":
            raise
        return {"skipped": "attachment_bench not available"}
    function = module.bench_attachments
    options = {"quick": context.quick} if "quick" in inspect.signature(function).parameters else {}
    say("attachments")
    return dict(function(**options))


@benchmark("deferral")
def deferral_state(context: Context) -> Figures:
    """The source state after a first load of 500,000 customers with the request budget spent."""
    say("deferral")
    # A child process, as every load: run here, its peak would be inherited by every later child.
    with fresh_workdir("deferral") as workdir:
        child = run_child("tests.benchmarks.deferral_bench", ["--quick"] if context.quick else [], workdir)
    return child.figures | {"process_seconds": child.process_seconds}  # its RSS would count its emulator


@benchmark("refresh")
def refresh_cost(context: Context) -> Figures:
    """A daily run's attachment refresh at scale, and a full refresh's time at Codat's limit."""
    say("refresh")
    with fresh_workdir("refresh") as workdir:  # a fresh process: it measures its own peak RSS
        child = run_child("tests.benchmarks.refresh_bench", ["--quick"] if context.quick else [], workdir)
    return child.figures | {"process_seconds": child.process_seconds}


@benchmark("shards")
def shard_fan_out(context: Context) -> Figures:
    """One process against four shard processes at once, on one account with request latency."""
    from tests.benchmarks.shard_bench import bench_shards

    say("shards")
    return bench_shards(quick=context.quick)


@benchmark("push")
def push_creates(context: Context) -> Figures:
    """`codat-push`: 1,000 creates across 10 companies at 200 ms a request, against the ideal."""
    from tests.benchmarks.push_bench import bench_push

    say("push")
    return bench_push(quick=context.quick)


def machine() -> Figures:
    """Where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    memory = 0.0
    if Path("/proc/cpuinfo").exists():
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` changes the sizes and the defaults of `--chart`/`--readme`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks.json"), help="JSON file to write")
    names = [name for name, _ in BENCHMARKS]
    parser.add_argument("--only", choices=names, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the harness")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="ours/peer rounds (default 2)")
    parser.add_argument("--seconds", type=float, help="emulator walks after the first (default 10, quick 1)")
    parser.add_argument(
        "--chart", type=Path, help="chart PNG (default docs/benchmarks.png; quick: beside --out)"
    )
    parser.add_argument("--readme", type=Path, help="README to update (default README.md; quick: none)")
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else DEFAULT_SECONDS
    if args.chart is None:
        args.chart = args.out.with_suffix(".png") if args.quick else ROOT / report.CHART_LINK
    if args.readme is None and not args.quick:
        args.readme = ROOT / "README.md"
    if args.no_readme:
        args.readme = None
    return args


def previous_results(out: Path, quick: bool) -> Figures:
    """The benchmarks of an earlier run of the same kind, which a partial (`--only`) run keeps."""
    if not out.exists():
        return {}
    try:
        document = json.loads(out.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    if document.get("quick", False) != quick:
        return {}
    return {name: document[name] for name, _ in BENCHMARKS if name in document}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write the JSON document, the chart and the README section."""
    args = parse_args(argv)
    context = Context(
        sizes=QUICK if args.quick else FULL, rounds=args.rounds, seconds=args.seconds, quick=args.quick
    )
    results = previous_results(args.out, args.quick) if args.only else {}
    failed = []
    started = time.perf_counter()
    for name, function in BENCHMARKS:
        if args.only is not None and name not in args.only:
            continue
        begun = time.perf_counter()
        try:
            figures = function(context)
            results[name] = figures | {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "took_s": round(time.perf_counter() - begun, 1),
            }
        except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            failed.append(name)
        say(f"{name} took {time.perf_counter() - begun:.1f} s")
    document: Figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "total_s": round(time.perf_counter() - started, 1),
        **{name: results[name] for name, _ in BENCHMARKS if name in results},
    }
    table = report.rows(document)
    document["targets"] = [row.as_json() for row in table if row.op]
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for row in table:
        print(f"{row.figure:<100} {row.shown():>14}  {row.target:<20} {row.verdict}")
    print(f"wrote {args.out}")
    if report.draw_chart(document, args.chart):
        print(f"wrote {args.chart}")
    if args.readme is not None and report.rewrite_readme(args.readme, report.markdown(document, table)):
        print(f"updated {args.readme}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
