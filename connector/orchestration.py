"""Dagster definitions: the account's company shards as partitions of dlt assets (`.[dagster]`).

- `codat_dataset` (not partitioned) creates the tables once and checks the shard count.
- `codat_shards` is a `@dlt_assets` multi-asset, one asset per table the source loads,
  partitioned by shard (`00` to `15`). Each partition runs `connector.shards.run_shard`: its own
  pipeline, state restored from the destination, its own staging dataset.
- Every shard run takes a slot of the concurrency pool `codat_api`; set that pool's limit to the
  plan's `shards_at_once` times the workers' egress IPs, so the shards together stay within
  Codat's limit per IP (each paces itself to its part of it).
- `codat_nightly` starts one run per shard every night.
- With a `queue_file`, the sensor `codat_webhooks` starts a run of each shard holding companies
  that Codat's webhooks queued (`codat-webhooks --no-worker --queue FILE`); the run takes them
  off the queue once it has loaded them.

The asset body runs the connector's own `run_sync` rather than `DagsterDltResource.run`: the
connector writes its child tables and `sync_status` and repairs what a killed run left, which a
bare `pipeline.run` would not. Like that resource, it drops the local state before each run.
"""

import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import dlt
from dagster import AssetExecutionContext, ScheduleEvaluationContext
from dagster_dlt import DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData
from dlt.common.schema import Schema
from dlt.sources import DltSource

from connector.errors import CodatError
from connector.exits import EXIT_OK
from connector.placement import ShardPlan
from connector.shards import plan_from_config, prepare_dataset, run_shard
from connector.sync import SyncSummary
from connector.syncqueue import SyncQueue
from connector.webhooks import DEFAULT_DEBOUNCE_SECONDS, unloaded

POOL = "codat_api"
QUEUED_TAG = "codat/queued"  # a webhook-started run's companies and their queue versions (JSON)
SENSOR_INTERVAL = 30  # seconds between looks at the webhooks' queue
GROUP = "codat"
NIGHTLY = "0 2 * * *"
DATASET_ASSET = dg.AssetKey(["codat", "dataset"])
# The tables each shard run loads: one asset each (the backlog of attachment listings is the
# same table as `customer_attachments`, and the child tables and `sync_status` go with customers).
TABLE_RESOURCES = ("companies", "connections", "customers", "customer_attachments")


class CodatTranslator(DagsterDltTranslator):
    """Asset keys `codat/<table>` (the resources are named after their tables), after `codat/dataset`."""

    def get_asset_spec(self, data: DltResourceTranslatorData) -> dg.AssetSpec:
        """The default spec, keyed by table, in the `codat` group, after `codat/dataset`."""
        spec = super().get_asset_spec(data)
        return spec.replace_attributes(
            key=dg.AssetKey(["codat", data.resource.name]),
            deps=[DATASET_ASSET],
            group_name=GROUP,
        )


@contextmanager
def _reported() -> Iterator[None]:
    """Raise the connector's own errors as a Dagster `Failure` that shows their message.

    Bad settings, a changed shard count, a busy pipeline: Dagster would otherwise show them
    wrapped in its own step error, under a traceback.
    """
    try:
        yield
    except CodatError as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}") from exc


def summary_metadata(summary: SyncSummary) -> dict[str, Any]:
    """What a shard run did, as Dagster metadata (numbers as numbers, lines as text)."""
    statuses: dict[str, int] = {}
    for row in summary.status_rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return {
        "companies": summary.companies,
        "companies_failed": len(summary.failed),
        "customers_new": summary.customers_new,
        "customers_updated": summary.customers_updated,
        "customers_deleted": summary.customers_deleted,
        "attachments": summary.attachments,
        "requests": summary.requests,
        "load_id": summary.load_id or "",
        "statuses": dg.MetadataValue.json(statuses),
        "summary": dg.MetadataValue.md("\n".join(f"- {line}" for line in summary.lines())),
    }


def asset_names() -> DltSource:
    """The shards' tables as resources that only name the assets: no setting is resolved yet.

    Each run resolves its settings and builds its shard's source (`run_shard`), so a bad
    `SOURCES__CODAT__*` value fails that run with the connector's message, not the code location.
    """
    resources = [dlt.resource([], name=name, table_name=name) for name in TABLE_RESOURCES]
    return DltSource(Schema("codat"), "codat", resources)


def destination_kind(plan: ShardPlan) -> dlt.Pipeline:
    """A pipeline that only tells Dagster the plan's kind of destination.

    dlt makes a pipeline's working folder as it makes the pipeline: this one's is a temporary
    folder, removed at once, so loading the definitions leaves nothing on disk.
    """
    with tempfile.TemporaryDirectory(prefix="codat-dagster-") as folder:
        pipeline: dlt.Pipeline = dlt.pipeline(
            pipeline_name=f"{plan.prefix}_assets",
            destination=plan.destination,
            dataset_name=plan.dataset_name,
            pipelines_dir=folder,
        )
    return pipeline


def queued_run_requests(queue: SyncQueue, plan: ShardPlan, debounce: float) -> list[dg.RunRequest]:
    """A run of each shard that holds companies the webhooks queued (and quiet for `debounce` s).

    The run's tag `codat/queued` carries the companies and their queue versions, which the run
    takes off the queue once it has loaded them. The run key is the shard and those versions: while
    the run is under way the sensor asks for the same run, which Dagster starts only once; a new
    event for one of its companies asks for another.
    """
    by_shard: dict[int, dict[str, int]] = {}
    for company_id, version in queue.due(debounce).items():
        by_shard.setdefault(plan.shard_of(company_id), {})[company_id] = version
    requests = []
    for shard, claims in sorted(by_shard.items()):
        key = plan.partition_keys()[shard]
        queued = json.dumps(claims, sort_keys=True)
        digest = hashlib.sha256(queued.encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(run_key=f"{key}-{digest}", partition_key=key, tags={QUEUED_TAG: queued})
        )
    return requests


def take_off_queue(queue: SyncQueue, tags: Mapping[str, str], summary: SyncSummary) -> None:
    """After a shard run started for queued companies: the loaded ones leave the queue."""
    claims: dict[str, int] = json.loads(tags.get(QUEUED_TAG) or "{}")
    if not claims:
        return
    queue.settle(claims, unloaded(summary, claims))


def codat_definitions(
    plan: ShardPlan | None = None,
    source_options: Mapping[str, Any] | None = None,
    cron_schedule: str = NIGHTLY,
    pool: str = POOL,
    queue_file: str | None = None,
    debounce: float = DEFAULT_DEBOUNCE_SECONDS,
) -> dg.Definitions:
    """Dagster `Definitions` syncing an account's company shards.

    Args:
        plan: How the companies are split and where the data goes; default the `[shards]`
            configuration (`plan_from_config`): 16 shards, one DuckDB file each in `codat_shards/`.
        source_options: Passed to `codat_source` in every shard (the API key and address come
            from dlt's configuration by default: `SOURCES__CODAT__API_KEY`, `.dlt/`).
        cron_schedule: When `codat_nightly` starts the shards (UTC).
        pool: The concurrency pool every shard run takes a slot of.
        queue_file: The queue `codat-webhooks --no-worker --queue FILE` fills: with it, the sensor
            `codat_webhooks` starts the shards of the companies Codat's webhooks queued.
        debounce: Seconds a company's events must be quiet before the sensor starts its shard.
    """
    plan = plan or plan_from_config()
    options = dict(source_options or {})
    partitions = dg.StaticPartitionsDefinition(plan.partition_keys())

    @dg.asset(key=DATASET_ASSET, group_name=GROUP, description="The tables, created before the shards run")
    def codat_dataset() -> dg.MaterializeResult[Any]:
        with _reported():
            tables = prepare_dataset(plan)
        return dg.MaterializeResult(metadata={"tables": dg.MetadataValue.json(tables), "shards": plan.count})

    @dlt_assets(
        dlt_source=asset_names(),
        dlt_pipeline=destination_kind(plan),
        name="codat_shards",
        partitions_def=partitions,
        dagster_dlt_translator=CodatTranslator(),
        pool=pool,
        op_tags={"codat/shard_plan": f"{plan.prefix} x{plan.count}"},
    )
    def codat_shards(context: AssetExecutionContext) -> Iterator[dg.MaterializeResult[Any]]:
        shard = plan.shard(context.partition_key)
        with _reported():
            summary = run_shard(plan, shard, **options)
        if queue_file is not None:
            take_off_queue(SyncQueue(queue_file), context.run.tags, summary)
        metadata = summary_metadata(summary)
        for key in sorted(context.selected_asset_keys):
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)
        code = summary.exit_code()
        if code != EXIT_OK:
            raise dg.Failure(
                description=f"shard {context.partition_key} ended with exit code {code}",
                metadata={"summary": dg.MetadataValue.md("\n".join(summary.lines()))},
            )

    shards = dg.AssetSelection.assets(codat_shards)
    nightly_job = dg.define_asset_job("codat_nightly", selection=shards)

    @dg.schedule(job=nightly_job, cron_schedule=cron_schedule, execution_timezone="UTC")
    def codat_nightly(context: ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        night = context.scheduled_execution_time.strftime("%Y-%m-%d")
        for key in plan.partition_keys():
            yield dg.RunRequest(run_key=f"{night}-{key}", partition_key=key)

    sensors = []
    if queue_file is not None:
        webhook_job = dg.define_asset_job("codat_from_webhooks", selection=shards)

        @dg.sensor(job=webhook_job, minimum_interval_seconds=SENSOR_INTERVAL)
        def codat_webhooks(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest]:
            yield from queued_run_requests(SyncQueue(queue_file), plan, debounce)

        sensors.append(codat_webhooks)
    return dg.Definitions(
        assets=[codat_dataset, codat_shards],
        jobs=[nightly_job, *([webhook_job] if queue_file is not None else [])],
        schedules=[codat_nightly],
        sensors=sensors,
    )
