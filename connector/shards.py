"""Company shards, each run by a pipeline of its own: its own state, cursors and staging dataset.

An orchestrator (`connector.orchestration` for Dagster) runs the shards of a `ShardPlan` in
parallel, on any worker. What a shard run does:

1. drop the pipeline's local state, as dagster-dlt does, and restore it from the destination,
   so no worker depends on what another left on its disk;
2. refuse to run if the dataset was loaded with another shard count;
3. sync its companies (`connector.sync.run_sync`), retrying a load that lost a race with
   another shard creating the same table or column.

`prepare_dataset` creates the tables once before the shards fan out; `combined_duckdb` reads the
per-shard DuckDB files as one database.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.common.destination import Destination
from dlt.common.destination.exceptions import SqlClientNotAvailable
from dlt.common.schema import Schema
from dlt.common.schema.typing import TColumnSchema, TTableSchemaColumns
from dlt.common.schema.utils import new_table
from dlt.destinations.exceptions import DatabaseException, DatabaseUndefinedRelation
from dlt.pipeline.exceptions import PipelineStepFailed

from connector.batches import CHILD_TABLES, child_columns
from connector.destinations import duckdb_destination
from connector.errors import InvalidOption
from connector.lock import pipeline_lock
from connector.placement import ShardPlan
from connector.records import LISTING_COLUMNS, LISTING_KEY, LISTINGS_TABLE
from connector.source import codat_source
from connector.status import STATUS_COLUMNS, STATUS_KEY
from connector.sync import SyncSummary, run_sync
from connector.views import create_views
from connector.warehouse import destination_tables

logger = logging.getLogger(__name__)

SCHEMA_RACE_ATTEMPTS = 5
# What PostgreSQL answers the loser of two concurrent CREATE or ALTER statements on one schema,
# table or column: "duplicate schema/table/column/object", or a unique violation on the catalog
# index of schemas, types or relations. A unique violation on a data table is not a race.
_RACE_CODES = frozenset({"42P06", "42P07", "42701", "42710"})
_UNIQUE_VIOLATION = "23505"
_CATALOG_INDEXES = ("pg_namespace_nspname_index", "pg_type_typname_nsp_index", "pg_class_relname_nsp_index")


class ShardPlanChanged(InvalidOption):
    """The dataset was loaded with another shard count: each company's cursor is in another shard."""


def shard_destination(plan: ShardPlan, shard: int) -> Any:
    """The shard's destination: its own DuckDB file, or the shared one with its own staging dataset."""
    if plan.per_file:
        return duckdb_destination(plan.duckdb_file(shard))
    return Destination.from_reference(
        plan.destination, credentials=plan.credentials, staging_dataset_name_layout=plan.staging_layout(shard)
    )


def shard_pipeline(plan: ShardPlan, shard: int) -> dlt.Pipeline:
    """The shard's dlt pipeline (`codat_shard_07_of_16`), loading into the plan's dataset."""
    return _pipeline(plan, plan.pipeline_name(shard), shard_destination(plan, shard))


def _pipeline(plan: ShardPlan, name: str, destination: Any) -> dlt.Pipeline:
    options: dict[str, Any] = {"pipeline_name": name, "destination": destination}
    options["dataset_name"] = plan.dataset_name
    if plan.pipelines_dir:
        options["pipelines_dir"] = plan.pipelines_dir
    pipeline: dlt.Pipeline = dlt.pipeline(**options)
    return pipeline


def loaded_shard_counts(plan: ShardPlan, pipeline: dlt.Pipeline | None = None) -> dict[int, list[str]]:
    """The shard counts the plan's dataset (or DuckDB folder) was loaded with, and by which pipelines.

    The DuckDB shard files are named after their pipelines: the folder says it all. A shared
    dataset is asked through `pipeline`, any pipeline of the plan's destination and dataset.
    """
    if plan.per_file:
        names = [path.stem for path in Path(plan.duckdb_folder).expanduser().glob(f"{plan.prefix}_shard_*")]
    elif pipeline is None:
        raise ValueError(f"a pipeline of the {plan.destination} dataset is needed to read its shard counts")
    else:
        names = _state_pipeline_names(pipeline)
    counts: dict[int, list[str]] = {}
    for name in sorted(names):
        parsed = plan.parse(name)
        if parsed is not None:
            counts.setdefault(parsed[1], []).append(name)
    return counts


def _state_pipeline_names(pipeline: dlt.Pipeline) -> list[str]:
    """Every pipeline that stored its state in the dataset (none before the first load)."""
    try:
        with pipeline.sql_client() as sql:
            table = sql.make_qualified_table_name("_dlt_pipeline_state")
            rows = sql.execute_sql(f"SELECT DISTINCT pipeline_name FROM {table}") or []
            return [str(row[0]) for row in rows]
    except (DatabaseUndefinedRelation, SqlClientNotAvailable):
        return []


def check_plan(plan: ShardPlan, pipeline: dlt.Pipeline | None = None) -> None:
    """Refuse a shard count other than the one the dataset was loaded with.

    A company's shard is a function of the count, and its cursor lives in its shard's state:
    under another count, companies would be read again from the start by one shard while
    their old shard never runs again.

    Args:
        plan: The plan.
        pipeline: A pipeline of the plan's dataset; not needed for DuckDB shard files.

    Raises:
        ShardPlanChanged: The dataset holds shards of another count.
    """
    loaded = loaded_shard_counts(plan, pipeline)
    other = {count: names for count, names in loaded.items() if count != plan.count}
    if not other:
        return
    count, names = max(other.items(), key=lambda item: len(item[1]))
    where = f"the folder {plan.duckdb_folder}" if plan.per_file else f"the dataset {plan.dataset_name}"
    found = names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")
    raise ShardPlanChanged(
        f"{where} was loaded in {count} shards ({found}), and this "
        f"run is sharded {plan.count} ways. Each company's cursor is in its shard's state, so the "
        f"count cannot change in place: keep the shard count at {count}, or load the new count "
        "into a new dataset (README, 'Company shards on Dagster')"
    )


def dataset_schema() -> Schema:
    """The connector's schema with every table it declares: the source's, the child tables', `sync_status`."""
    schema = codat_source(api_key="unused: schema only").discover_schema()  # builds a client; sends nothing
    for table in CHILD_TABLES:
        child = new_table(table, write_disposition="append", columns=_columns(child_columns(table)))
        schema.update_table({**child, "resource": "customers"})
    listings = _columns(LISTING_COLUMNS)
    for column in listings:
        column["primary_key"] = column["name"] in LISTING_KEY
    schema.update_table(
        {
            **new_table(LISTINGS_TABLE, write_disposition="merge", columns=listings),
            "resource": "customer_attachments",
        }
    )
    status = _columns(STATUS_COLUMNS)
    for column in status:
        column["primary_key"] = column["name"] in STATUS_KEY
    schema.update_table(new_table("sync_status", write_disposition="merge", columns=status))
    return schema


def _columns(columns: TTableSchemaColumns) -> list[TColumnSchema]:
    return [{**column, "name": name} for name, column in columns.items()]


def prepare_dataset(plan: ShardPlan) -> list[str]:
    """Create the dataset's tables before the shards fan out, so they do not race to create them.

    With one DuckDB file per shard there is nothing shared to create: only the plan is checked.
    Columns Codat adds later (on `companies`, `connections`) are still created by whichever
    shard meets them first; a shard that loses that race retries (`run_shard`).

    Returns:
        The tables the destination now holds (empty for per-shard files).

    Raises:
        ShardPlanChanged: The dataset was loaded with another shard count.
    """
    if plan.per_file:
        Path(plan.duckdb_folder).expanduser().mkdir(parents=True, exist_ok=True)
        check_plan(plan)
        return []
    # A pipeline of its own that never loads data: it stores no state in the dataset.
    pipeline = _pipeline(plan, f"{plan.prefix}_shard_schema", shard_destination(plan, 0))
    check_plan(plan, pipeline)
    pipeline.extract([], table_name="sync_status", schema=dataset_schema())
    tables = sorted(pipeline.sync_schema())
    with destination_tables(pipeline) as created:
        create_views(created)  # now, or the shards' first runs would race to create them
    pipeline.drop()
    return tables


def is_schema_race(exc: BaseException) -> bool:
    """Whether a failed step lost a race with another shard creating the same table or column."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _lost_race(current):
            return True
        nested = getattr(current, "exception", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__ or current.__context__
    return False


def _lost_race(error: BaseException) -> bool:
    code = getattr(error, "pgcode", None)  # PostgreSQL's own error (psycopg2), under dlt's
    if isinstance(code, str):
        text = str(error)
        return code in _RACE_CODES or (code == _UNIQUE_VIOLATION and any(i in text for i in _CATALOG_INDEXES))
    # Other warehouses: their wording, without the data's own "duplicate key ... already exists".
    text = str(error).lower()
    return isinstance(error, DatabaseException) and "already exists" in text and "duplicate key" not in text


def run_shard(plan: ShardPlan, shard: int, fresh_state: bool = True, **source_options: Any) -> SyncSummary:
    """Sync one shard's companies into the plan's destination.

    Args:
        plan: The shard plan.
        shard: Which shard, 0 to `plan.count` - 1.
        fresh_state: Drop the local state first and restore it from the destination (as
            dagster-dlt does), so any worker can take any shard. False keeps a local package
            of an interrupted run to finish instead.
        **source_options: Passed to `codat_source` (api_key, base_url, download_files, ...);
            `requests_per_minute` defaults to the shard's part of the plan's limit.

    Returns:
        The run's summary; `exit_code()` tells how it ended.

    Raises:
        ShardPlanChanged: The dataset was loaded with another shard count.
        InvalidOption: `shard` is not a shard of the plan, or a source option is out of range.
        PipelineStepFailed: A step failed for another reason than a lost schema race, or lost
            it `SCHEMA_RACE_ATTEMPTS` times.
    """
    plan.check_shard(shard)
    pipeline = shard_pipeline(plan, shard)
    with pipeline_lock(pipeline.pipelines_dir, pipeline.pipeline_name):
        if fresh_state:
            pipeline = pipeline.drop()
        check_plan(plan, pipeline)
        options = {
            "requests_per_minute": plan.shard_requests_per_minute(),
            **source_options,
            "shards": plan.count,
            "shard": shard,
        }
        attempt = 1
        while True:
            try:
                return run_sync(pipeline, **options)
            except (PipelineStepFailed, DatabaseException) as exc:  # a load, or the views after it
                if attempt >= SCHEMA_RACE_ATTEMPTS or not is_schema_race(exc):
                    raise
                logger.warning(
                    "%s lost a race with another shard creating a table, column or view (%s); loading again",
                    pipeline.pipeline_name,
                    getattr(exc, "step", "views"),
                )
                time.sleep(random.uniform(0.1, 0.5) * attempt)  # noqa: S311 - jitter, not secrets
                attempt += 1


def plan_from_config() -> ShardPlan:
    """The shard plan from dlt's configuration (`[shards]`, `SHARDS__COUNT`, ...); defaults for the rest."""
    settings: dict[str, Any] = {
        "count": dlt.config.get("shards.count", int),
        "prefix": dlt.config.get("shards.prefix", str),
        "dataset_name": dlt.config.get("shards.dataset_name", str),
        "destination": dlt.config.get("shards.destination", str),
        "duckdb_folder": dlt.config.get("shards.duckdb_folder", str),
        "pipelines_dir": dlt.config.get("shards.pipelines_dir", str),
        "shards_at_once": dlt.config.get("shards.shards_at_once", int),
        "requests_per_minute": dlt.config.get("shards.requests_per_minute", int),
    }
    return ShardPlan(**{name: value for name, value in settings.items() if value is not None})


def combined_duckdb(plan: ShardPlan) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that reads every shard file of the plan as one dataset.

    Each file is attached read-only, and each table or view of the dataset becomes a view of
    the same name over all shards (`UNION ALL BY NAME`: a column one shard lacks reads NULL).
    Shard files being written at the moment cannot be attached: query between runs.

    Raises:
        InvalidOption: The plan writes one dataset, not files; or the folder holds no shard file.
    """
    if not plan.per_file:
        raise InvalidOption(f"the plan loads into one {plan.destination} dataset: query it there")
    present = {shard: path for shard in range(plan.count) if (path := plan.duckdb_file(shard)).exists()}
    if not present:
        raise InvalidOption(f"no shard file in {plan.duckdb_folder}: materialize the shards first")
    con = duckdb.connect()
    tables: dict[str, list[str]] = {}
    for shard, path in present.items():
        alias = f"shard_{plan.key(shard)}"
        con.execute(f"ATTACH '{_sql_text(str(path))}' AS {alias} (READ_ONLY)")
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_schema = ?",
            [alias, plan.dataset_name],
        ).fetchall()
        for (name,) in rows:
            if not name.startswith("_dlt_"):
                tables.setdefault(name, []).append(f'{alias}."{plan.dataset_name}"."{name}"')
    for name, sources in sorted(tables.items()):
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {source}" for source in sources)
        con.execute(f'CREATE VIEW "{name}" AS {union}')
    return con


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def main(argv: list[str] | None = None) -> int:
    """`python -m connector.shards "SQL"`: run a query over the plan's DuckDB shard files as one."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print('usage: python -m connector.shards "SELECT ... FROM customers"', file=sys.stderr)
        return 2
    try:
        con = combined_duckdb(plan_from_config())
    except InvalidOption as exc:
        print(f"connector.shards: {exc}", file=sys.stderr)
        return 2
    with con:
        try:
            con.sql(args[0]).show(max_rows=100)
        except duckdb.Error as exc:
            print(f"connector.shards: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
