"""The benchmark figures against their targets: a table, the README section and the chart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.defaults import DEFAULT_COMPANY_CONCURRENCY

MIB_PER_MB = 1_000_000 / 2**20
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
CHART_LINK = "docs/benchmarks.png"

Document = dict[str, Any]


@dataclass
class Row:
    """One figure, with its target when it has one (`op` and `goal`)."""

    figure: str
    value: Any
    unit: str = ""
    op: str | None = None
    goal: Any = None
    target: str = "—"

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target or a value."""
        if self.op is None or self.value is None or isinstance(self.value, str):
            return None
        if self.op == "==":
            return bool(self.value == self.goal)
        compare = {"<=": float.__le__, "<": float.__lt__, ">=": float.__ge__}[self.op]
        return bool(compare(float(self.value), float(self.goal)))

    @property
    def verdict(self) -> str:
        """`met`, or how far it is missed."""
        met = self.met
        if self.op is None:
            return ""
        if met is None:
            return "not measured"
        if met:
            return "met"
        if self.op == "==":
            return "missed"
        if self.op == ">=":
            return f"missed by {fmt(self.goal - self.value)}{self.unit} ({self.value / self.goal:.0%} of it)"
        return f"missed by {fmt(self.value - self.goal)} {self.unit} (+{self.value / self.goal - 1:.0%})"

    def shown(self) -> str:
        """The value with its unit, as the table prints it."""
        if self.value is None:
            return "—"
        if isinstance(self.value, bool):
            return "yes" if self.value else "no"
        if isinstance(self.value, str):
            return self.value
        return (
            f"{fmt(self.value)}{self.unit}" if self.unit == "×" else f"{fmt(self.value)} {self.unit}".strip()
        )

    def as_json(self) -> dict[str, Any]:
        """The row for `benchmarks.json`."""
        return {
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "verdict": self.verdict,
        }


def fmt(value: float) -> str:
    """A number with as many digits as a reader needs."""
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rows(document: Document) -> list[Row]:
    """Every figure of the document, with its target, section by section."""
    table: list[Row] = []
    for name, section in (
        ("comparison", _comparison_rows),
        ("floor", _floor_rows),
        ("scale", _scale_rows),
        ("emulator", _emulator_rows),
        ("attachments", _attachment_rows),
        ("deferral", _deferral_rows),
        ("refresh", _refresh_rows),
        ("shards", _shard_rows),
        ("push", _push_rows),
        ("history", _history_rows),
        ("webhooks", _webhook_rows),
    ):
        figures = document.get(name)
        if figures is None:
            continue
        if "error" in figures:
            table.append(Row(f"{name} benchmark", f"failed: {figures['error']}"))
        else:
            table.extend(section(figures))
    return table


def _comparison_rows(figures: Document) -> Iterator[Row]:
    ours, peer, runs = figures["ours"], figures["peer"], len(figures["ours"]["runs"])
    what = f"full load of {figures['customers']:,} customers in {figures['companies']} companies"
    yield Row(f"{what}, ours (median of {runs})", ours["seconds"], "s")
    yield Row(f"{what}, dlt `rest_api` peer (median of {runs})", peer["seconds"], "s")
    yield Row("speed-up over the peer (peer s / ours s)", figures["speedup"], "×", ">=", 8, "≥ 8×")
    yield Row(
        "peak RSS of the load, ours",
        ours["peak_rss_mib"],
        "MiB",
        "<=",
        400 * MIB_PER_MB,
        "≤ 400 MB (381 MiB)",
    )
    yield Row("peak RSS of the load, peer", peer["peak_rss_mib"], "MiB")
    yield Row(
        f"customers in DuckDB, ours {ours['rows']:,} = peer {peer['rows']:,}",
        figures["rows_equal"],
        op="==",
        goal=True,
        target="equal",
    )


def _steps(run: Document) -> str:
    """Where a `codat-sync` process's time went: its steps, and the rest (imports, locks, counts, views)."""
    steps = run.get("steps") or {}
    rest = run["process_seconds"] - sum(steps.values())
    return ", ".join(
        [*(f"{name} {seconds:.1f} s" for name, seconds in steps.items()), f"the rest {rest:.1f} s"]
    )


def _floor_rows(figures: Document) -> Iterator[Row]:
    small, large = figures.get("small"), figures.get("large")
    if small is not None:
        what = f"{small['customers']:,} customers in {small['companies']} companies"
        floor_s, load = small["floor"]["process_seconds"], small["load"]
        yield Row(f"floor: GET and json.loads every customer page, one process, {what}", floor_s, "s")
        yield Row(
            f"codat-sync --no-attachments, full load, whole process, {what}", load["process_seconds"], "s"
        )
        yield Row("... where its time goes", _steps(load["runs"][0]))
        yield Row("... as a multiple of the floor", small["load_vs_floor"], "×", "<=", 2.5, "≤ 2.5×")
        latency = f"{small['latency_s'] * 1000:.0f} ms per request"
        for name, label, goal in (
            ("latency", f"{latency}, {DEFAULT_COMPANY_CONCURRENCY} companies at once (the default)", 1.3),
            ("latency_one_company_at_a_time", f"{latency}, one company at a time", None),
            ("latency_per_record", f"{small['latency_per_record_s'] * 1e6:.0f} µs per record served", None),
        ):
            run = small[name]
            target = ("<=", goal, f"≤ {goal}×") if goal else ()
            yield Row(f"full load, {what}, {label}", run["process_seconds"], "s")
            yield Row("... against answers at once", run["vs_no_latency"], "×", *target)
        exact = all(
            r["exact"] for r in [*load["runs"], *(small[n] for n in ("latency", "latency_per_record"))]
        )
        yield Row(
            "customers in DuckDB = emulator's readable customers, every load above",
            exact,
            op="==",
            goal=True,
            target="exact",
        )
    if large is not None:
        what = f"{large['customers']:,} customers in {large['companies']} companies"
        full = large["full"]
        yield Row(f"floor, {what}", large["floor"]["process_seconds"], "s")
        yield Row(
            f"codat-sync --no-attachments, full load, whole process, {what}", full["process_seconds"], "s"
        )
        yield Row("... where its time goes", _steps(full))
        yield Row("... as a multiple of the floor", large["full_vs_floor"], "×", "<=", 2.5, "≤ 2.5×")
        yield Row("... peak RSS", full["peak_rss_mib"], "MiB", "<=", 400 * MIB_PER_MB, "≤ 400 MB (381 MiB)")
        incremental, slow = large["incremental"], large["incremental_latency"]
        changed = f"incremental run after {incremental['changed']:,} customers (1%) changed, {what}"
        yield Row(f"{changed}, answers at once", incremental["process_seconds"], "s")
        yield Row(f"{changed}, {slow['latency_s'] * 1000:.0f} ms per request", slow["process_seconds"], "s")
        yield Row(
            "... against answers at once", large["incremental_latency_vs_none"], "×", "<=", 1.5, "≤ 1.5×"
        )
        exact = (
            all(r["exact"] and r["changed_found"] == r["changed"] for r in (incremental, slow))
            and full["exact"]
        )
        yield Row(
            "customers in DuckDB exact, every change found, every load above",
            exact,
            op="==",
            goal=True,
            target="exact",
        )


def _scale_rows(figures: Document) -> Iterator[Row]:
    for role in ("small", "large"):
        size = figures.get(role)
        if size is None:
            continue
        large = role == "large"
        full, incremental = size["full"], size["incremental"]
        what = f"{size['customers']:,} customers in {size['companies']} companies"
        yield Row(f"emulator start until ready, {what}", size["emulator_ready_s"], "s")
        yield Row(f"full load of {what}", full["seconds"], "s", *(("<=", 90, "≤ 90 s") if large else ()))
        peak_target = ("<=", 500 * MIB_PER_MB, "≤ 500 MB (477 MiB)") if large else ()
        yield Row(f"peak RSS, full load of {what}", full["peak_rss_mib"], "MiB", *peak_target)
        yield Row(
            f"rows in DuckDB = emulator's readable customers ({full['rows']:,} / {full['expected']:,})",
            full["exact"],
            op="==",
            goal=True,
            target="exact",
        )
        changed = f"incremental run after {incremental['changed']:,} customers (1%) changed"
        yield Row(f"{changed}, {what}", incremental["seconds"], "s", *(("<=", 10, "≤ 10 s") if large else ()))
        yield Row(f"{changed}: requests", incremental["requests"])
        yield Row(
            f"{changed}: changed rows in DuckDB ({incremental['changed_found']:,})",
            incremental["all_changed_found"] and incremental["exact"],
            op="==",
            goal=True,
            target="all, none lost",
        )
        yield Row(
            f"source state after the incremental run, {what}", incremental["source_state_bytes"], "bytes"
        )
    if figures.get("flatness") is not None:
        yield Row("peak RSS flatness (large / small)", figures["flatness"], "×", "<", 1.25, "< 1.25")


def _emulator_rows(figures: Document) -> Iterator[Row]:
    what = f"{figures['customers']:,} customers in one company"
    yield Row(f"emulator start until ready, {what}", figures["generate_s"], "s")
    yield Row(f"emulator first seek request, {what}", figures["first_request_s"], "s")
    yield Row(
        f"customers the seek walk read ({figures['customers_seen']:,} of {figures['customers']:,})",
        figures["customers_seen"] == figures["customers"],
        op="==",
        goal=True,
        target="all",
    )
    yield Row(
        f"emulator seek page of {figures['page_size']:,} after the first request, {what}",
        round(figures["s_per_page"] * 1000, 1),
        "ms",
        "<=",
        20,
        "≤ 20 ms",
    )


def _attachment_rows(figures: Document) -> Iterator[Row]:
    if "skipped" in figures:
        yield Row("attachment throughput", f"skipped: {figures['skipped']}")
        return
    what = (
        f"attachment listings, {figures['companies']} companies, {figures['latency_s'] * 1000:.0f} ms "
        f"latency, {figures['per_minute_limit']:,} per {figures['window_s']:g} s"
    )
    yield Row(f"{what}: listings per second", figures["listings_per_s"], "/s")
    yield Row(f"{what}: ideal, min(limit, 10 × companies / latency)", figures["ideal_per_s"], "/s")
    yield Row(f"{what}: share of the ideal", figures["share_of_ideal"], "", ">=", 0.8, "≥ 0.8")
    yield Row(f"{what}: 429 answers", figures["http_429"], "", "<=", 0, "0")


PACED = "1,000 per 6 s, 50 ms latency"


def _deferral_rows(figures: Document) -> Iterator[Row]:
    what = f"{figures['customers']:,} customers in {figures['companies']} companies"
    yield Row(
        f"attachment listings deferred, {what}, budget {figures['request_budget']}",
        figures["attachments_deferred"],
    )
    yield Row(
        f"source state with those deferred, {what}",
        figures["source_state_bytes"],
        "bytes",
        "<=",
        1_000_000,
        "≤ 1 MB",
    )


def _refresh_rows(figures: Document) -> Iterator[Row]:
    what = f"{figures['customers']:,} customers in {figures['companies']} companies"
    yield Row(
        f"attachment refresh of a daily run, {what}: customers listed again",
        figures["daily_refreshed"],
    )
    yield Row(f"attachment refresh of a daily run, {what}: requests", figures["daily_requests"])
    yield Row(
        f"... against the daily quota of {figures['daily_quota']:,} (1,000 × (1 + companies))",
        figures["daily_share_of_quota"],
        "",
        "<=",
        0.5,
        "≤ 0.5",
    )
    yield Row(f"attachment refresh of a daily run, {what}: time, unpaced", figures["daily_s"], "s")
    yield Row(
        f"peak RSS, first load, then the daily run, then a paced --refresh-attachments, {what}",
        figures["peak_rss_mib"],
        "MiB",
        "<=",
        500,
        "≤ 500 MiB",
    )
    yield Row(f"refresh state, {what}", figures["refresh_state_bytes"], "bytes", "<=", 1_000_000, "≤ 1 MB")
    yield Row(
        f"--refresh-attachments, {figures['paced_refreshed']:,} customers in {figures['paced_companies']} "
        f"companies, {PACED}: share of the limit over the whole run (start, pages, load included)",
        figures["paced_share_of_limit"],
    )
    yield Row(
        f"--refresh-attachments, {what}: requests ({figures['full_refresh_listings']:,} listings)",
        figures["full_refresh_requests"],
    )
    yield Row(
        f"--refresh-attachments, {what}: time at Codat's 1,000 a minute, at that share",
        figures["full_refresh_minutes_at_codat_limit"],
        "min",
    )


def _shard_rows(figures: Document) -> Iterator[Row]:
    what = (
        f"full load of {figures['customers']:,} customers in {figures['companies']} companies, "
        f"{figures['latency_s'] * 1000:.0f} ms latency"
    )
    shards = f"{figures['shards']} shard processes at once"
    yield Row(f"{what}, one process", figures["one_process_seconds"], "s")
    yield Row(f"{what}, {shards}", figures["shards_seconds"], "s")
    yield Row(f"speed-up of {shards} (one process s / shards s)", figures["speedup"], "×")
    yield Row("peak RSS, one process", figures["one_process_peak_rss_mib"], "MiB")
    yield Row(
        f"peak RSS, largest shard ({figures['shards_peak_rss_mib_sum']:,.0f} MiB all shards together)",
        figures["shards_peak_rss_mib"],
        "MiB",
    )
    yield Row(
        "requests the emulator answered, one process / shards",
        f"{figures['one_process_requests']:,} / {figures['shards_requests']:,}",
    )
    yield Row(
        "customers in DuckDB = emulator's readable customers, one process and shards alike",
        figures["exact"],
        op="==",
        goal=True,
        target="exact",
    )


def _push_rows(figures: Document) -> Iterator[Row]:
    what = (
        f"codat-push --mode create, {figures['rows']:,} rows in {figures['companies']} companies, "
        f"{figures['latency_s'] * 1000:.0f} ms latency, push delay {figures['push_delay_s']:g} s"
    )
    best, spent = figures["ideal"], figures["time"]
    yield Row(f"{what}: time, whole process", figures["seconds"], "s")
    yield Row(
        f"... ideal under Codat's limits ({best['requests']:,} requests; {best['binding']} bound)",
        figures["ideal_s"],
        "s",
    )
    yield Row("... against the ideal", figures["ratio_to_ideal"], "×")
    yield Row(
        "... where its time goes",
        f"start and planning {spent['before_pushes_s']:.1f} s, pushes {spent['pushes_s']:.1f} s "
        f"({spent['pushes_in_flight_mean']:.1f} at once, {spent['row_mean_s']:.2f} s a row), "
        f"load {spent['after_pushes_s']:.1f} s",
    )
    yield Row(
        "... requests the emulator answered (429s among them)",
        f"{figures['requests']:,} ({figures['http_429']})",
    )
    yield Row("... peak RSS", figures["peak_rss_mib"], "MiB")
    yield Row(
        f"... Success rows in push_results = new customers, each once ({figures['customers_created']:,})",
        figures["exact"] and figures["success_rows"] == figures["customers_created"] == figures["rows"],
        op="==",
        goal=True,
        target="exact",
    )


def _history_rows(figures: Document) -> Iterator[Row]:
    what = f"{figures['customers']:,} customers in {figures['companies']} companies"
    changed = f"incremental run after {figures['changed']:,} customers (1%) changed"
    for label, role in ((f"full load of {what}", "full"), (changed, "incremental")):
        off, on = figures[f"{role}_off"], figures[f"{role}_on"]
        yield Row(f"history on: {label}, off / on", f"{off['seconds']:.2f} s / {on['seconds']:.2f} s")
        yield Row("... on against off, time", figures[f"{role}_ratio"], "×")
        yield Row("... peak RSS off / on", f"{off['peak_rss_mib']:.0f} MiB / {on['peak_rss_mib']:.0f} MiB")
        yield Row(
            "... both exact (keys, and every changed customer in its new version)",
            off["exact"] and on["exact"],
            op="==",
            goal=True,
            target="exact",
        )
    yield Row(
        f"history on: versions kept = customers + changes ({figures['versions_kept']:,})",
        figures["versions_exact"],
        op="==",
        goal=True,
        target="exact",
    )


def _webhook_rows(figures: Document) -> Iterator[Row]:
    what = (
        f"codat-webhooks, {figures['changes']} changes one at a time, {figures['customers']:,} customers "
        f"in {figures['companies']} companies, debounce {figures['debounce_s']:g} s"
    )
    yield Row(f"{what}: change to row, median", figures["latency_median_s"], "s")
    yield Row("... worst", figures["latency_worst_s"], "s")
    yield Row(
        "... requests of the webhook runs / of one nightly run for the same changes",
        f"{figures['webhook_requests']:,} / {figures['nightly_requests']:,}",
    )


def markdown(document: Document, table: list[Row]) -> str:
    """The README section: when and where, the table, the chart."""
    machine = document["machine"]
    lines = [
        f"Measured by `make bench` on {document['date'][:10]}, {machine['cpu']} "
        f"({machine['cpu_count']} cores, {machine['memory_gib']} GiB), {machine['system']}, "
        f"Python {machine['python']}. Each load runs in a fresh process against an emulator in "
        "another process; every run is in `benchmarks.json`.",
        "",
        "| figure | value | target | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.figure} | {r.shown()} | {r.target} | {r.verdict} |" for r in table]
    lines += ["", f"![benchmarks]({CHART_LINK})"]
    return "\n".join(lines)


def rewrite_readme(readme: Path, section: str) -> bool:
    """Replace what lies between the bench markers; warn and leave the file alone without them."""
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines()
    try:
        start, end = lines.index(README_START), lines.index(README_END)
    except ValueError:
        start = end = -1
    if not 0 <= start < end:
        print(
            f"warning: {readme} has no {README_START} ... {README_END} lines; left as it is", file=sys.stderr
        )
        return False
    new = [*lines[: start + 1], section, *lines[end:]]
    readme.write_text("\n".join(new) + ("\n" if text.endswith("\n") else ""), encoding="utf-8")
    return True


def chart_points(document: Document) -> dict[str, list[tuple[int, float, float, int]]]:
    """(customers, seconds, peak MiB, companies) of every full load, ours and the peer's."""
    points: dict[str, list[tuple[int, float, float, int]]] = {"ours": [], "peer": []}
    for point in (document.get("curve") or {}).get("points", []):
        points[point["engine"]].append(
            (point["customers"], point["seconds"], point["peak_rss_mib"], point["companies"])
        )
    comparison = document.get("comparison") or {}
    for engine in ("ours", "peer"):
        if engine in comparison:
            figures = comparison[engine]
            points[engine].append(
                (
                    comparison["customers"],
                    figures["seconds"],
                    figures["peak_rss_mib"],
                    comparison["companies"],
                )
            )
    scale = document.get("scale") or {}
    for role in ("small", "large"):
        if role in scale:
            full = scale[role]["full"]
            points["ours"].append(
                (scale[role]["customers"], full["seconds"], full["peak_rss_mib"], scale[role]["companies"])
            )
    return {engine: sorted(found) for engine, found in points.items()}


def draw_chart(document: Document, path: Path) -> bool:
    """Time and peak memory against customers, ours and the peer's, as two panels in a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    points = chart_points(document)
    if not any(points.values()):
        return False
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "ours": ("ours (run_sync)", "tab:blue", "o"),
        "peer": ("dlt rest_api peer", "tab:orange", "s"),
    }
    for engine, found in points.items():
        if not found:
            continue
        label, color, marker = styles[engine]
        customers = [p[0] for p in found]
        time_axis.plot(customers, [p[1] for p in found], marker=marker, color=color, label=label)
        memory_axis.plot(customers, [p[2] for p in found], marker=marker, color=color, label=label)
        for size, seconds, _memory, companies in found:
            time_axis.annotate(
                f"{companies} co.",
                (size, seconds),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=color,
            )
    memory_axis.axhline(500 * MIB_PER_MB, color="grey", linestyle="--", linewidth=0.8)
    memory_axis.text(
        0.01,
        500 * MIB_PER_MB,
        "500 MB target",
        transform=memory_axis.get_yaxis_transform(),
        fontsize=7,
        va="bottom",
        color="grey",
    )
    sizes = sorted({p[0] for found in points.values() for p in found})
    for axis, title, unit in (
        (time_axis, "full load time", "seconds"),
        (memory_axis, "peak RSS of the loading process", "MiB"),
    ):
        axis.set_xscale("log")
        axis.set_xticks(sizes, [f"{size / 1000:g}k" if size >= 1000 else str(size) for size in sizes])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("customers")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="major", alpha=0.3)
        axis.legend()
    time_axis.set_yscale("log")
    time_axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    time_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    time_axis.yaxis.set_minor_formatter(NullFormatter())
    memory_axis.set_ylim(bottom=0)
    figure.suptitle(f"Full load into DuckDB, no attachments ({document['date'][:10]})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
