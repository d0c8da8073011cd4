"""`codat-sync` SIGKILLed at any of 32 points of a run, then run again, leaves what a clean run leaves.

Each point is a separate child process run, killed, then run again plainly; the runs go two at a
time against the session's emulator, which serves one account unchanged throughout the module.
The harness is `tests/killtools.py`; `test_package_kill_points.py` kills at every file step of
dlt's load packages.
"""

from __future__ import annotations

import pytest

from connector.emulator.store import Sizing
from tests import killtools
from tests.killtools import (
    Account,
    KillPoint,
    Runs,
    Snapshot,
    assert_holds_account,
    assert_rerun_equals_clean,
)

# The module's account, served unchanged throughout (`tests/killtools.py`): a third of the default
# one's customers, so that each run costs less, with work left at every point below.
SIZING = Sizing(seed=7, companies=3, customers=100)

# This account (56, 27 and 17 customers, so three pages for the largest; 32 attachments: 17, 11
# and 4) at PAGE_SIZE makes one run call: list_companies 1, PageBuilder.tables 6 (one per customer
# page), list_customer_attachments 100, download_customer_attachment, pipe_file and mv 32,
# _on_response 139 (every HTTP answer; the 126th comes with about 90 listings and 28 downloads
# done); Pipeline.extract 1 (the source, then `sync_status` as a second source of the same
# package), RunReport.rows 1 (the `sync_status` rows, made within that extract), _save_state 4,
# Extract.commit_packages 1, Pipeline.normalize 1, PackageStorage.delete_package 2,
# Load.initialize_package 1, Load.submit_job 17, complete_job and save_pending_transition as many,
# Load.complete_package 1; DuckDB commits 14, SqlLoadJob.run 6 (the merge jobs, `sync_status`'s
# among them). `python tests/killpoint.py TARGET 0 -- ...` prints a count to re-derive one.
CLIENT = "connector.client:CodatClient"
PIPELINE_CLASS = "dlt.pipeline.pipeline:Pipeline"
LOAD = "dlt.load.load:Load"
POINTS = [
    KillPoint("companies-listing", f"{CLIENT}.list_companies", 1),
    KillPoint("customer-page-1", "connector.batches:PageBuilder.tables", 1),
    KillPoint("customer-page-2-early", "connector.batches:PageBuilder.tables", 2),
    KillPoint("customer-page-3-middle", "connector.batches:PageBuilder.tables", 3),
    KillPoint("customer-page-6-last", "connector.batches:PageBuilder.tables", 6),
    KillPoint("attachment-listing-1", f"{CLIENT}.list_customer_attachments", 1),
    KillPoint("attachment-listing-50", f"{CLIENT}.list_customer_attachments", 50),
    KillPoint("attachment-listing-100-last", f"{CLIENT}.list_customer_attachments", 100),
    KillPoint("file-download-1", f"{CLIENT}.download_customer_attachment", 1),
    KillPoint("file-download-16", f"{CLIENT}.download_customer_attachment", 16),
    KillPoint("file-write-8", "fsspec.implementations.local:LocalFileSystem.pipe_file", 8),
    KillPoint("file-rename-24", "fsspec.implementations.local:LocalFileSystem.mv", 24),
    KillPoint("http-answer-126", f"{CLIENT}._on_response", 126),
    KillPoint("extract-commit", "dlt.extract.extract:Extract.commit_packages", 1),
    KillPoint("state-commit", f"{PIPELINE_CLASS}._save_state", 3),
    KillPoint("normalize-start", f"{PIPELINE_CLASS}.normalize", 1),
    KillPoint("normalize-spool", "dlt.normalize.normalize:Normalize.spool_files", 1),
    KillPoint("normalize-commit", "dlt.common.storages.load_storage:LoadStorage.commit_new_load_package", 1),
    KillPoint(
        "normalize-extracted-cleanup", "dlt.common.storages.load_package:PackageStorage.delete_package", 2
    ),
    KillPoint("load-start", f"{LOAD}.initialize_package", 1),
    KillPoint("load-job-1", f"{LOAD}.submit_job", 1),
    KillPoint("load-job-6", f"{LOAD}.submit_job", 6),
    KillPoint(
        "load-commit-5", "dlt.destinations.impl.duckdb.sql_client:DuckDbSqlClient.commit_transaction", 5
    ),
    # Job 'customers__contacts' committed in DuckDB, not yet marked done in its package.
    KillPoint(
        "load-job-committed-unmarked",
        "dlt.common.storages.load_package:PackageStorage.save_pending_transition",
        1,
        "customers__contacts.",
    ),
    KillPoint("load-after-7-jobs", "dlt.common.storages.load_package:PackageStorage.complete_job", 8),
    KillPoint("load-merge-sql", "dlt.destinations.job_client_impl:SqlLoadJob.run", 2),
    KillPoint("load-package-complete", f"{LOAD}.complete_package", 1),
    KillPoint(
        "load-package-archive", "dlt.common.storages.load_storage:LoadStorage.complete_load_package", 1
    ),
    KillPoint("prune-child-rows", "connector.sync:prune_child_rows", 1),
    KillPoint("views", "connector.sync:create_views", 1),
    KillPoint("sync-status-rows", "connector.status:RunReport.rows", 1),
    KillPoint(
        "sync-status-job", "dlt.common.storages.load_package:PackageStorage.complete_job", 1, "sync_status."
    ),
]

# The kill tests' fixtures (`tests/killtools.py`): they read SIZING, POINTS and CLEAN_KILL here.
unlimited, account, runs, clean = killtools.unlimited, killtools.account, killtools.runs, killtools.clean


def test_the_clean_run_holds_the_account(account: Account, clean: Snapshot) -> None:
    """The reference is checked against a model of its own, and has work in every phase to kill."""
    assert len(account.companies) == SIZING.companies
    assert len(account.customers) == SIZING.customers
    assert len(account.attachments) == len(account.files) == 32
    assert {key[0] for key in account.attachments} == set(account.companies)
    assert_holds_account(clean, account)


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_killed_run_then_rerun_equals_a_clean_run(
    runs: Runs, account: Account, clean: Snapshot, point: KillPoint
) -> None:
    """Tables, views, files, state and `sync_status` after the rerun are the clean run's."""
    assert_rerun_equals_clean(runs.points[point.id].result(), point, clean, account)
