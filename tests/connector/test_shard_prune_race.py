"""Two shards loading one PostgreSQL dataset: a shard's prune must spare the other's fresh child rows.

A run appends the child tables (`customers__addresses`, `customers__contacts`,
`customers__contacts__phone`) straight into the dataset, merges `customers` through its staging
dataset, and then prunes the child rows whose `_dlt_root_id` names no `customers._dlt_id`. Between
its child appends and its merge, a shard's new child rows join to nothing yet. The test forces
another shard's prune into that gap, with a table lock it holds and releases itself:

1. Both shards load once, one after the other. Then some customers of shard B (shard 1) change
   in the emulator; shard A's (shard 0) do not. A leftover child row of A's company (as a
   replaced customer version leaves) is planted in each child table, so A's prune has rows of
   its own to delete, and the test sees that it ran.
2. The test holds `LOCK TABLE <dataset>.customers IN SHARE MODE` (readers pass, writers wait).
3. Shard B appends its child rows for the new customer versions, committed, and waits in its
   merge into `customers` for the lock.
4. Shard A runs to its end meanwhile: it has no customer to merge, so it never waits for the
   lock, and it prunes after its load as every run does.
5. The lock goes; B merges and finishes.

A shard prunes only its own companies' rows (`prune_child_rows(..., company_ids=...)`): B's rows
outlive A's prune. The unscoped prune every shard ran before child rows named their company
deletes them at that moment, and B's changed customers end up with no address or contact,
although B reported success.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlt
import pytest

from connector.emulator.emulator import Emulator
from connector.placement import ShardPlan
from connector.shards import shard_destination
from connector.views import prune_child_rows
from connector.warehouse import destination_tables
from tests import children
from tests.shardtools import Database, Shard, shard_processes, start_shard, wait_for
from tests.synctools import readable

A, B = 0, 1
CHANGED = 20  # customers of shard B changed between its runs
CHILD_TABLES = ("customers__addresses", "customers__contacts", "customers__contacts__phone")
LEFTOVER_ROOT = "replaced-version"  # the `_dlt_root_id` of the rows planted for shard A's prune

Counts = dict[str, Counter[tuple[str, str]]]


def api_children(emulator: Emulator, skip: frozenset[tuple[str, str]] = frozenset()) -> Counts:
    """Per child table, the rows each (company, customer) has in the API, but `skip`'s (no zeros)."""
    counts: Counts = {table: Counter() for table in CHILD_TABLES}
    for company in readable(emulator):
        for record in company.customers.values():
            key = (company.id, str(record["id"]))
            if key in skip:
                continue
            contacts = record.get("contacts") or []
            counts["customers__addresses"][key] += len(record.get("addresses") or [])
            counts["customers__contacts"][key] += len(contacts)
            counts["customers__contacts__phone"][key] += sum(len(k.get("phone") or []) for k in contacts)
    return {table: +counter for table, counter in counts.items()}


def dataset_children(db: Database) -> Counts:
    """Per child table, the rows each (company, customer) has, joined to the customer's row."""
    sql = (
        "SELECT c.company_id, c.id, COUNT(*) FROM {ds}.{table} x "
        "JOIN {ds}.customers c ON c._dlt_id = x._dlt_root_id GROUP BY 1, 2"
    )
    return {
        table: Counter({(c, k): n for c, k, n in db.rows(sql.format(ds=db.dataset, table=table))})
        for table in CHILD_TABLES
    }


def per_table(db: Database, where: str, *args: Any) -> dict[str, int]:
    """Per child table, the rows `where` (about the table `x`) selects."""
    return {
        table: db.rows(f"SELECT COUNT(*) FROM {db.dataset}.{table} x WHERE {where}", *args)[0][0]
        for table in CHILD_TABLES
    }


def orphans(db: Database) -> dict[str, int]:
    """Rows whose root is no customer: leftovers, or rows whose customers are not merged yet."""
    return per_table(
        db, f"NOT EXISTS (SELECT 1 FROM {db.dataset}.customers c WHERE c._dlt_id = x._dlt_root_id)"
    )


def unmerged(db: Database) -> dict[str, int]:
    """Orphans but the planted leftovers: rows a load appended before merging their customers."""
    planted = leftovers(db)
    return {table: count - planted[table] for table, count in orphans(db).items()}


def leftovers(db: Database) -> dict[str, int]:
    return per_table(db, "_dlt_root_id = %s", LEFTOVER_ROOT)


def plant_leftovers(db: Database, company: str) -> None:
    """Copy one child row of the company in each table as the leftover of a replaced customer version."""
    with db.reader.cursor() as cursor:
        for table in CHILD_TABLES:
            one = f"SELECT * FROM {db.dataset}.{table} WHERE company_id = %s LIMIT 1"
            cursor.execute(f"CREATE TEMP TABLE leftover AS {one}", (company,))
            cursor.execute(
                "UPDATE leftover SET _dlt_id = _dlt_id || '-left', _dlt_root_id = %s", (LEFTOVER_ROOT,)
            )
            cursor.execute(f"INSERT INTO {db.dataset}.{table} SELECT * FROM leftover")
            cursor.execute("DROP TABLE leftover")
    assert leftovers(db) == dict.fromkeys(CHILD_TABLES, 1)


def change_customers(emulator: Emulator, companies: set[str]) -> set[tuple[str, str]]:
    """Modify CHANGED customers of one of the companies, each with addresses and phoned contacts."""
    company = min(companies)
    records = emulator.store.companies[company].customers
    rich = sorted(
        cid
        for cid, record in records.items()
        if record.get("addresses") and any(k.get("phone") for k in record.get("contacts") or [])
    )
    assert len(rich) >= CHANGED, f"{company} has {len(rich)} customers with addresses and phones"
    changed = emulator.store.mutate(company, "modify", ids=rich[:CHANGED])
    return {(company, cid) for cid in changed}


def load_once(plan: ShardPlan, base_url: str, started: list[children.Popen]) -> None:
    for shard in (A, B):
        summary = start_shard(plan, shard, None, base_url, started).summary()
        assert summary["exit_code"] == 0, summary


def blocked_by(db: Database, shard: Shard, blocker: int) -> list[str]:
    """The statements of the shard's sessions waiting for a lock `blocker` holds."""
    return [query for _, by, query in db.waiting(shard.name) if blocker in by]


@dataclass
class Gap:
    """What the test saw while shard B waited in its merge, and B's summary."""

    b_rows_before: dict[str, int]  # B's child rows in the tables when the prune began
    b_rows_after: dict[str, int]  # and when it had ended
    leftovers_after: dict[str, int]
    summary_b: dict[str, Any]


def prune_while_b_waits(
    plan: ShardPlan,
    base_url: str,
    db: Database,
    expected: dict[str, int],
    prune: Callable[[Shard, int], None],
    started: list[children.Popen],
) -> Gap:
    """Run shard B until its child rows are in and its merge waits; `prune`; let B finish.

    `prune` is given shard B and the pid of the session holding the lock.
    """
    holder, holder_pid = db.lock_session()
    holder.cursor().execute(db.lock_statement())
    try:
        shard_b = start_shard(plan, B, None, base_url, started)
        merge = f'DELETE FROM "{db.dataset}"."customers"'
        wait_for(
            lambda: any(merge in q for q in blocked_by(db, shard_b, holder_pid)) and unmerged(db) == expected,
            "shard B's child rows are in and its merge waits for the lock",
            [shard_b],
        )
        before = unmerged(db)
        prune(shard_b, holder_pid)
        assert shard_b.process.poll() is None, "shard B ended while the test held the lock"
        assert blocked_by(db, shard_b, holder_pid), "shard B stopped waiting for the lock"
        after, left = unmerged(db), leftovers(db)
    finally:
        holder.rollback()
    return Gap(before, after, left, shard_b.summary())


def loaded(summary: dict[str, Any]) -> dict[str, int]:
    assert summary["exit_code"] == 0, summary
    assert summary["failed"] == []
    return {row["company_id"]: row["customers_loaded"] for row in summary["status_rows"]}


def arrange(
    emulator: Emulator, base_url: str, sharded: Any, started: list[children.Popen]
) -> tuple[set[tuple[str, str]], dict[str, int]]:
    """Load both shards, change B's customers, plant A's leftovers: the changed keys and their rows."""
    plan, db, companies = sharded
    for shard in (A, B):
        with_addresses = [
            c
            for c in companies[shard]
            for r in emulator.store.companies[c].customers.values()
            if r.get("addresses")
        ]
        assert with_addresses, f"shard {shard} has no customer with addresses"
    load_once(plan, base_url, started)
    assert dataset_children(db) == api_children(emulator)
    assert orphans(db) == dict.fromkeys(CHILD_TABLES, 0)

    changed = change_customers(emulator, companies[B])
    plant_leftovers(db, min(companies[A]))
    fresh = api_children(emulator)
    expected = {table: sum(fresh[table][key] for key in changed) for table in CHILD_TABLES}
    assert all(expected.values()), expected
    return changed, expected


@pytest.mark.postgres
def test_a_shard_pruning_while_another_loads_keeps_its_child_rows(
    emulator: Emulator, base_url: str, sharded: Any
) -> None:
    plan, db, companies = sharded
    summaries: dict[int, dict[str, Any]] = {}

    def run_a(shard_b: Shard, holder: int) -> None:
        shard_a = start_shard(plan, A, None, base_url, started)
        wait_for(
            lambda: shard_a.process.poll() is not None or blocked_by(db, shard_a, holder),
            "shard A ends or waits for the lock",
            [shard_b],
        )
        assert shard_a.process.poll() is not None, f"shard A waits: {blocked_by(db, shard_a, holder)}"
        summaries[A] = shard_a.summary()

    with shard_processes() as started:
        changed, expected = arrange(emulator, base_url, sharded, started)
        gap = prune_while_b_waits(plan, base_url, db, expected, run_a, started)

    assert gap.b_rows_before == expected
    assert loaded(summaries[A]) == dict.fromkeys(companies[A], 0)  # nothing to merge into `customers`
    assert gap.leftovers_after == dict.fromkeys(CHILD_TABLES, 0)  # A pruned its own, while B waited
    assert gap.b_rows_after == expected  # and left B's
    assert loaded(gap.summary_b) == {c: sum(k[0] == c for k in changed) for c in companies[B]}
    assert dataset_children(db) == api_children(emulator)
    assert orphans(db) == dict.fromkeys(CHILD_TABLES, 0)


@pytest.mark.postgres
def test_an_unscoped_prune_while_another_shard_loads_deletes_its_child_rows(
    emulator: Emulator, base_url: str, sharded: Any, tmp_path: Path
) -> None:
    """Why a shard prunes only its own companies: a prune over all of them, as before, loses rows."""
    plan, db, companies = sharded

    def prune_everything(_: Shard, __: int) -> None:
        pipeline = dlt.pipeline(
            pipeline_name=plan.pipeline_name(A),
            destination=shard_destination(plan, A),
            dataset_name=plan.dataset_name,
            pipelines_dir=str(tmp_path / "unscoped"),
        )
        pipeline.sync_destination()
        with destination_tables(pipeline) as tables:
            prune_child_rows(tables)

    with shard_processes() as started:
        changed, expected = arrange(emulator, base_url, sharded, started)
        gap = prune_while_b_waits(plan, base_url, db, expected, prune_everything, started)

    assert gap.b_rows_before == expected
    assert gap.leftovers_after == dict.fromkeys(CHILD_TABLES, 0)
    assert gap.b_rows_after == dict.fromkeys(CHILD_TABLES, 0)  # B's fresh rows went with them
    assert loaded(gap.summary_b) == {c: sum(k[0] == c for k in changed) for c in companies[B]}
    # B's changed customers lost every address, contact and phone; the rest are whole.
    assert dataset_children(db) == api_children(emulator, skip=frozenset(changed))
    assert orphans(db) == dict.fromkeys(CHILD_TABLES, 0)
