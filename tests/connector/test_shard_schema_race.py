"""Shards creating the same schema at once: the loser loads again (`run_shard`), and every row lands.

The race is forced, not hoped for: the test creates the dataset's schema in a transaction it
keeps open, so both shards find no schema and wait in their own `CREATE SCHEMA` behind it. The
test rolls back; both shards' statements go on at once and one of them loses to the other.
`is_schema_race` is checked on errors PostgreSQL really raised, through dlt's SQL client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from connector.emulator.emulator import Emulator
from connector.shards import is_schema_race
from tests.postgres import PostgresServer
from tests.shardtools import (
    SHARDS,
    SIZING,
    Database,
    Scratch,
    Shard,
    dataset_customers,
    postgres_plan,
    shard_customers,
    shard_processes,
    start_shard,
    wait_for,
)
from tests.synctools import expected_customers


def wait_in_create_schema(db: Database, shard: Shard, holder_pid: int, running: list[Shard]) -> None:
    """Wait until the shard's `CREATE SCHEMA` of the dataset waits for the test's own."""
    create = f'CREATE SCHEMA "{db.dataset}"'

    def waits() -> bool:
        return any(holder_pid in by and query.startswith(create) for _, by, query in db.waiting(shard.name))

    wait_for(waits, f"{shard.name} waits in its CREATE SCHEMA behind the test's", running)


@pytest.mark.postgres
def test_shards_racing_to_create_the_schema_load_again_and_keep_every_row(
    emulator: Emulator, base_url: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    emulator.reset(*SIZING)
    plan = postgres_plan(tmp_path, postgres, SHARDS)
    companies = shard_customers(emulator, plan)
    assert all(companies.values()), f"a shard without customers proves nothing: {companies}"
    db = Database(postgres, plan.dataset_name)
    try:
        assert db.rows("SELECT 1 FROM pg_namespace WHERE nspname = %s", plan.dataset_name) == []
        holder, holder_pid = db.lock_session()
        holder.cursor().execute(f"CREATE SCHEMA {plan.dataset_name}")
        with shard_processes() as started:
            shards = [start_shard(plan, shard, None, base_url, started) for shard in range(plan.count)]
            for shard in shards:
                wait_in_create_schema(db, shard, holder_pid, shards)
            holder.rollback()  # both CREATE SCHEMA go on at once: one loses to the other
            summaries = [shard.summary() for shard in shards]
        rows, loaded = dataset_customers(db)
    finally:
        db.close()

    for summary in summaries:
        assert summary["exit_code"] == 0
        assert summary["failed"] == []
    losers = [s for s in shards if f"connector.shards WARNING {s.name} lost a race" in s.log]
    assert losers, "no shard lost the race:\n" + "\n".join(s.log for s in shards)
    for loser in losers:  # its next attempt first loaded the package the lost attempt left
        mine = companies[loser.shard]
        held = sum(len(emulator.store.companies[c].customers) for c in mine)
        interrupted = " ".join(summaries[loser.shard]["interrupted"])
        assert f"held: {len(mine)} companies, {held} customers" in interrupted
    assert loaded == expected_customers(emulator)
    assert rows == len(loaded)


# -- is_schema_race on what PostgreSQL answers ---------------------------------------------------


def create_things(scratch: Scratch) -> None:
    """The dataset with one table, `things`, holding one row."""
    scratch.sql(f"CREATE SCHEMA {scratch.dataset}")
    scratch.sql(f"CREATE TABLE {scratch.dataset}.things (id bigint PRIMARY KEY, name text NOT NULL)")
    scratch.sql(f"INSERT INTO {scratch.dataset}.things VALUES (1, 'one')")


@pytest.mark.postgres
def test_a_load_that_waited_behind_another_create_schema_lost_a_race(scratch: Scratch) -> None:
    def load() -> None:
        scratch.pipeline.run([{"id": 1}], table_name="things")

    error = scratch.error_behind(f"CREATE SCHEMA {scratch.dataset}", load)

    assert isinstance(error, PipelineStepFailed)
    assert error.step == "load"
    assert "pg_namespace_nspname_index" in str(error)
    assert is_schema_race(error)


@pytest.mark.postgres
def test_a_create_table_that_waited_behind_another_lost_a_race(scratch: Scratch) -> None:
    scratch.sql(f"CREATE SCHEMA {scratch.dataset}")
    create = f"CREATE TABLE {scratch.dataset}.things (id bigint)"

    error = scratch.error_behind(create, lambda: scratch.sql(create))

    assert "pg_type_typname_nsp_index" in str(error)
    assert is_schema_race(error)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE {dataset}.things (id bigint)",
        "ALTER TABLE {dataset}.things ADD COLUMN name text",
    ],
    ids=["table-created-meanwhile", "column-added-meanwhile"],
)
def test_creating_what_exists_is_a_lost_race(scratch: Scratch, statement: str) -> None:
    create_things(scratch)

    error = scratch.error(statement.format(dataset=scratch.dataset))

    assert "already exists" in str(error)
    assert is_schema_race(error)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM {dataset}.missing",
        "INSERT INTO {dataset}.things VALUES (2, NULL)",
        "SELEC 1",
    ],
    ids=["undefined-table", "not-null-violation", "syntax-error"],
)
def test_other_database_errors_are_not_races(scratch: Scratch, statement: str) -> None:
    create_things(scratch)

    error = scratch.error(statement.format(dataset=scratch.dataset))

    assert not is_schema_race(error)


@pytest.mark.postgres
def test_a_duplicate_key_in_the_data_is_not_a_race(scratch: Scratch) -> None:
    create_things(scratch)

    error = scratch.error(f"INSERT INTO {scratch.dataset}.things VALUES (1, 'one again')")

    assert "violates unique constraint" in str(error)
    assert not is_schema_race(error)
