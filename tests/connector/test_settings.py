"""Settings are one thing however they are set: an argument, `.dlt/` or a `SOURCES__CODAT__*` variable.

The run reads the same resolved settings its source does (`connector.settings`): a setting made
in configuration counts, scopes and locks the run as the same setting passed as an argument.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from connector import source
from connector.emulator.emulator import Emulator
from connector.errors import InvalidOption, PipelineBusy
from connector.lock import destination_lock, pipeline_lock
from connector.placement import ShardPlan
from connector.settings import resolve_settings
from connector.shards import shard_pipeline
from connector.sync import SyncSummary, run_sync
from tests.shardtools import WAIT_SECONDS, Database, dataset_customers, source_options
from tests.synctools import Warehouse, expected_customers, readable
from tests.utils import API_KEY


def counts(summary: SyncSummary) -> tuple[int, int, int, int]:
    return (
        summary.customers_new,
        summary.customers_updated,
        summary.customers_deleted,
        summary.customers_already_deleted,
    )


@pytest.mark.parametrize("set_by", ["argument", "environment"])
def test_hard_delete_set_in_configuration_counts_as_the_argument(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, set_by: str
) -> None:
    options: dict[str, Any] = {"attachments": False}
    if set_by == "argument":
        options["hard_delete"] = True
    else:
        monkeypatch.setenv("SOURCES__CODAT__HARD_DELETE", "true")
    warehouse = Warehouse(tmp_path, base_url)
    records = expected_customers(emulator)
    already_deleted = sum(r["is_deleted"] for r in records.values())
    assert already_deleted > 0, "a first load without deleted customers proves nothing"

    first = warehouse.sync(**options)
    company = next(c for c in readable(emulator) if len(c.customers) > 3)
    gone = emulator.store.mutate(company.id, "delete", count=3)
    second = warehouse.sync(**options)

    assert counts(first) == (len(records) - already_deleted, 0, 0, already_deleted)
    assert counts(second) == (0, 0, len(gone), 0)
    assert len(gone) == 3
    assert not {k[1] for k in warehouse.customers() if k[0] == company.id} & set(gone)


@pytest.mark.postgres
def test_shard_set_in_configuration_locks_and_counts_only_its_shard(
    emulator: Emulator,
    base_url: str,
    monkeypatch: pytest.MonkeyPatch,
    sharded: tuple[ShardPlan, Database, dict[int, set[str]]],
) -> None:
    plan, db, companies = sharded
    monkeypatch.setenv("SOURCES__CODAT__SHARDS", str(plan.count))
    monkeypatch.setenv("SOURCES__CODAT__SHARD", "0")
    pipeline = shard_pipeline(plan, 0)

    # Shard 1 is loading meanwhile: it shares the dataset, so shard 0 must run beside it, as a
    # shard (a run of the whole dataset would be refused: `test_destination_lock`).
    with destination_lock(shard_pipeline(plan, 1), 1, plan.count):
        summary = run_sync(pipeline, **source_options(base_url, attachments=False))
    rows, loaded = dataset_customers(db)

    shard_zero = {k: v for k, v in expected_customers(emulator).items() if k[0] in companies[0]}
    assert summary.exit_code() == 0
    assert {row["company_id"] for row in summary.status_rows if row["status"] == "ok"} == companies[0]
    assert loaded == shard_zero
    assert rows == len(shard_zero)
    assert (summary.customers_new, summary.customers_updated) == (len(shard_zero), 0)


def test_max_file_size_of_zero_is_refused_before_any_request(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__CODAT__MAX_FILE_SIZE", "0")
    warehouse = Warehouse(tmp_path, base_url)
    emulator.clear_log()

    with pytest.raises(InvalidOption) as refused:
        warehouse.sync(download_files=True, files_url=str(tmp_path / "files"))

    assert str(refused.value) == "max_file_size (SOURCES__CODAT__MAX_FILE_SIZE) must be at least 1; got 0"
    assert list(emulator.request_log) == []
    assert not warehouse.db.exists()


@pytest.mark.parametrize(
    ("explicit", "message"),
    [
        (
            {"page_size": 0},
            "page_size (SOURCES__CODAT__PAGE_SIZE) must be between 1 and 5000 (Codat's limit); got 0",
        ),
        (
            {"attachment_concurrency": 11},
            "attachment_concurrency (SOURCES__CODAT__ATTACHMENT_CONCURRENCY) must be between 1 and 10 "
            "(Codat's limit); got 11",
        ),
        (
            {"requests_per_minute": 1},
            "requests_per_minute (SOURCES__CODAT__REQUESTS_PER_MINUTE) must be at least 2; got 1",
        ),
        (
            {"requests_per_minute": 10, "rate_burst": 10},
            "rate_burst (SOURCES__CODAT__RATE_BURST) must be between 1 and 9 (requests_per_minute - 1); "
            "got 10",
        ),
        (
            {"breaker_failures": 0},
            "breaker_failures (SOURCES__CODAT__BREAKER_FAILURES) must be at least 1; got 0",
        ),
        ({"shards": 4, "shard": 4}, "shard (SOURCES__CODAT__SHARD) must be between 0 and 3; got 4"),
        (
            {"attachment_refresh_days": -1.0},
            "attachment_refresh_days (SOURCES__CODAT__ATTACHMENT_REFRESH_DAYS) must be a number of days, "
            "0 or more (0 turns the refresh off); got -1.0",
        ),
    ],
)
def test_each_setting_is_checked_when_resolved_with_the_name_a_user_sets(
    explicit: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidOption) as refused:
        resolve_settings(api_key=API_KEY, **explicit)

    assert str(refused.value) == message


def test_a_setting_in_the_environment_reaches_the_resolved_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__CODAT__API_KEY", API_KEY)
    monkeypatch.setenv("SOURCES__CODAT__SHARDS", "4")
    monkeypatch.setenv("SOURCES__CODAT__SHARD", "3")
    monkeypatch.setenv("SOURCES__CODAT__PAGE_SIZE", "250")

    settings = resolve_settings(page_size=100)  # an explicit value wins over configuration

    assert (settings.shards, settings.shard, settings.page_size) == (4, 3, 100)
    assert settings.api_key == API_KEY


# -- what a process shares: locks and dlt's logger ---------------------------------------------


def test_a_second_thread_of_the_process_cannot_take_a_held_pipeline_lock(tmp_path: Path) -> None:
    held, refused = threading.Event(), []
    release = threading.Event()

    def first() -> None:
        with pipeline_lock(str(tmp_path), "codat"), pipeline_lock(str(tmp_path), "codat"):  # re-entrant
            held.set()
            release.wait(WAIT_SECONDS)

    def second() -> None:
        try:
            with pipeline_lock(str(tmp_path), "codat"):
                refused.append(None)
        except PipelineBusy as exc:
            refused.append(exc)

    holder = threading.Thread(target=first)
    holder.start()
    assert held.wait(WAIT_SECONDS)
    other = threading.Thread(target=second)
    other.start()
    other.join(WAIT_SECONDS)
    release.set()
    holder.join(WAIT_SECONDS)
    with pipeline_lock(str(tmp_path), "codat"):  # let go: the next takes it
        pass

    assert len(refused) == 1
    assert isinstance(refused[0], PipelineBusy), refused
    assert f"(pid {os.getpid()}, started " in str(refused[0])
    assert "holds pipeline codat; this run did nothing" in str(refused[0])


def test_dlts_expected_warning_is_hidden_only_while_customers_are_extracted(
    emulator: Emulator, base_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlt_logger = logging.getLogger("dlt")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    text = "In resource: customers, when merging arrow schema with dlt schema, several column hints differ"
    keep = Keep(logging.WARNING)
    dlt_logger.addHandler(keep)
    try:
        dlt_logger.warning(text)  # another pipeline's: kept
        summary = Warehouse(tmp_path / "hidden", base_url).sync(attachments=False)
        dlt_logger.warning(text)
        hidden = list(seen)
        with monkeypatch.context() as patched:  # the same run, nothing hidden: dlt warns
            patched.setattr(source, "expected_dlt_warnings_hidden", contextlib.nullcontext)
            Warehouse(tmp_path / "shown", base_url).sync(attachments=False)
    finally:
        dlt_logger.removeHandler(keep)

    assert summary.exit_code() == 0
    assert summary.customers_new > 0
    assert hidden == [text, text]
    assert any("In resource: customers, when merging arrow schema" in message for message in seen[2:])
    assert not [f for f in dlt_logger.filters if type(f).__name__ == "_ExpectedDltWarnings"]
