"""A run reports its progress to the pipeline's collector: companies of all, customers, requests."""

from __future__ import annotations

from typing import Any

import dlt
from dlt.common.runtime.collector import DictCollector

from connector.emulator.emulator import Emulator
from connector.sync import run_sync
from tests.synctools import readable
from tests.utils import API_KEY


class RecordingCollector(DictCollector):
    """dlt's counting collector that keeps each step's counters and totals after the step ends."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[str, dict[str, int]]] = []
        self.totals: dict[str, int] = {}

    def update(self, name: str, inc: int = 1, total: Any = None, **kwargs: Any) -> None:
        if total is not None:
            self.totals[name] = total
        self.counters[name] += inc

    def _stop(self) -> None:
        self.steps.append((str(self.step), dict(self.counters)))
        super()._stop()


def test_extract_reports_companies_of_all_customers_and_requests(emulator: Emulator, base_url: str, tmp_path):
    emulator.reset(7, 6, 400)
    collector = RecordingCollector()
    pipeline = dlt.pipeline(
        pipeline_name="progress",
        destination=dlt.destinations.duckdb(str(tmp_path / "p.duckdb")),
        dataset_name="codat",
        pipelines_dir=str(tmp_path / "pipelines"),
        progress=collector,
    )

    summary = run_sync(pipeline, api_key=API_KEY, base_url=base_url)

    extract = next(counters for step, counters in collector.steps if step.startswith("Extract"))
    customers = sum(len(c.customers) for c in readable(emulator))
    assert customers == 400  # the readable companies hold the whole generated count
    assert collector.totals["Companies"] == 6
    assert extract["Companies"] == 6
    assert extract["Customers"] == 400
    # every request the run spent, but the company listing that may come before the customers
    assert summary.requests > 400  # one attachment listing per customer, at the least
    assert summary.requests - 1 <= extract["API requests"] <= summary.requests
