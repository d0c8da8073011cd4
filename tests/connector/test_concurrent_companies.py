"""Several companies' customer pages read at once in one process, within Codat's limits, exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from connector.emulator.emulator import Emulator
from connector.placement import ShardPlan
from connector.shards import prepare_dataset, run_shard
from tests.shardtools import source_options
from tests.synctools import Warehouse, expected_customers, normalise, readable

LATENCY = 0.2  # seconds per answer: long enough for a sampler to see who is in flight


@contextmanager
def companies_in_flight(emulator: Emulator) -> Iterator[list[int]]:
    """The most companies with a request in flight at once while the block runs, as `[count]`."""
    most = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(emulator.limiter.in_flight))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield most
    finally:
        done.set()
        sampler.join()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_companies_are_read_at_once_up_to_the_setting_and_the_data_is_exact(
    emulator: Emulator, base_url: str, tmp_path, concurrency: int
) -> None:
    emulator.reset(11, 12, 3000)
    readable_companies = [c.id for c in readable(emulator)]
    assert len(readable_companies) > concurrency  # more companies than readers
    emulator.latency = LATENCY
    warehouse = Warehouse(tmp_path, base_url)

    with companies_in_flight(emulator) as most:
        summary = warehouse.sync(attachments=False, company_concurrency=concurrency, page_size=200)

    assert most[0] == concurrency
    assert normalise(warehouse.customers()) == expected_customers(emulator)
    assert summary.customers_new == len(expected_customers(emulator))
    assert emulator.stats()["refused"] == {"quota": 0, "concurrency": 0, "per_minute": 0}
    cursors = warehouse.state()["cursors"]
    assert set(readable_companies) <= set(cursors)


def test_each_companys_cursor_is_its_own_so_the_next_run_reads_only_what_changed(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(11, 12, 3000)
    warehouse = Warehouse(tmp_path, base_url)
    warehouse.sync(attachments=False, company_concurrency=6, page_size=200)
    changed = readable(emulator)[0].id
    assert len(emulator.store.mutate(changed, "modify", count=5)) == 5
    emulator.clear_log()

    summary = warehouse.sync(attachments=False, company_concurrency=6, page_size=200)

    assert summary.customers_updated == 5
    assert summary.customers_new == 0
    pages = [e for e in emulator.request_log if e["operation"] == "list-customers" and e["status"] == 200]
    assert {e["company_id"] for e in pages} == {changed}  # the others are unchanged, or not ready (409)
    assert normalise(warehouse.customers()) == expected_customers(emulator)


def test_a_failing_company_leaves_the_others_read_at_once_whole(
    emulator: Emulator, base_url: str, tmp_path
) -> None:
    emulator.reset(11, 12, 3000)
    broken = readable(emulator)[1].id
    emulator.add_fault("404", match=f"/companies/{broken}/data/customers", count=1000)
    warehouse = Warehouse(tmp_path, base_url)

    summary = warehouse.sync(attachments=False, company_concurrency=4, page_size=200)

    assert summary.failed == [broken]
    expected = {key: row for key, row in expected_customers(emulator).items() if key[0] != broken}
    assert normalise(warehouse.customers()) == expected


def test_a_shard_run_reads_its_companies_at_once_too(emulator: Emulator, base_url: str, tmp_path) -> None:
    """The Dagster assets run `run_shard`, which gets the same readers: one shard of the account."""
    emulator.reset(11, 12, 3000)
    plan = ShardPlan(
        count=1,
        duckdb_folder=str(tmp_path / "shards"),
        pipelines_dir=str(tmp_path / "pipelines"),
        shards_at_once=1,
        requests_per_minute=1_000_000,
    )
    prepare_dataset(plan)
    emulator.latency = LATENCY

    with companies_in_flight(emulator) as most:
        summary = run_shard(plan, 0, **source_options(base_url, attachments=False, company_concurrency=3))

    assert most[0] == 3
    assert summary.customers_new == len(expected_customers(emulator))
