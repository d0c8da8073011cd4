"""`codat-push`: customers edited in the warehouse (or a CSV or JSON Lines file) created and updated in Codat.

Every row is read, mapped and checked against its connection's create/update model before the
first push; a row the model refuses is reported and not sent, the others go on. Each row's
outcome goes to the `push_results` table of the dataset, keyed by the row (its content, or the
key column named), so a rerun skips the rows already `Success`; a create carries that key as its
`Idempotency-Key`, so a retry or a rerun within Codat's window never creates a customer twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.destination.exceptions import SqlClientNotAvailable, UnknownDestinationModule
from dlt.destinations.exceptions import DatabaseException

from connector.cli import make_pipeline as sync_pipeline
from connector.client import CodatClient
from connector.defaults import (
    DEFAULT_DUCKDB_FILE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PUSH_CONCURRENCY,
    DEFAULT_PUSH_TIMEOUT,
)
from connector.destinations import check_duckdb_file, duckdb_path
from connector.errors import (
    CodatApiError,
    CodatError,
    DestinationLocked,
    DestinationUnusable,
    InvalidOption,
    PipelineBusy,
)
from connector.exits import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_COMPANY_FAILED,
    EXIT_OK,
    api_exit_code,
    stop_exit_code,
)
from connector.lock import destination_lock, lock_path, pipeline_lock
from connector.packages import finish_kill_leftovers
from connector.push import PENDING, PushResult, create_customer, update_customer, wait_for_push
from connector.pushes import CREATE, MODES, PlannedPush, PushRow, planned, read_rows, to_push_row
from connector.settings import resolve_settings
from connector.warehouse import destination_tables

logger = logging.getLogger(__name__)

RESULTS_TABLE = "push_results"
PROGRESS_SECONDS = 2.0
SUCCESS = "Success"
INVALID = "Invalid"
# Every column declared: a run whose pushes all failed still makes the whole table.
RESULT_COLUMNS: dict[str, Any] = {
    "row_key": {"data_type": "text", "nullable": False},
    "row_number": {"data_type": "bigint"},
    **{
        name: {"data_type": "text"}
        for name in ("company_id", "connection_id", "mode", "operation", "customer_id")
    },
    **{
        name: {"data_type": "text"} for name in ("push_operation_key", "status", "record_id", "error_message")
    },
    "validation_errors": {"data_type": "json"},
    "requested_at": {"data_type": "timestamp"},
    "settled_at": {"data_type": "timestamp"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--help` describes it."""
    parser = argparse.ArgumentParser(
        prog="codat-push", description=__doc__.splitlines()[0] if __doc__ else None
    )
    source = parser.add_argument_group("rows")
    source.add_argument(
        "--duckdb-file", type=Path, help="the warehouse: read by --query/--table, and where push_results goes"
    )
    source.add_argument("--query", help="SQL whose rows are pushed (on --duckdb-file)")
    source.add_argument("--table", help="a table whose rows are pushed (on --duckdb-file)")
    source.add_argument("--csv", type=Path, help="a CSV file of rows")
    source.add_argument("--jsonl", type=Path, help="a JSON Lines file of rows")
    parser.add_argument("--mode", choices=MODES, required=True, help="create, update (needs id), or upsert")
    parser.add_argument(
        "--key-column", help="a column that names each row across runs (else its content does)"
    )
    parser.add_argument(
        "--force-update",
        action="store_true",
        help="overwrite changes made in the platform since Codat read them",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and print what would be sent; send nothing"
    )
    parser.add_argument(
        "--destination",
        default="duckdb",
        help="dlt destination of push_results (default: duckdb, --duckdb-file)",
    )
    parser.add_argument("--dataset", default="codat", help="the dataset of push_results (default: codat)")
    parser.add_argument(
        "--pipeline-name", default="codat_push", help="the dlt pipeline that loads push_results"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--pipelines-dir", help="dlt's working folder (default: dlt's)")
    parser.add_argument(
        "--timeout-in-minutes", type=int, help="how long Codat may take over a push before it is TimedOut"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_PUSH_CONCURRENCY,
        help="pushes waiting at once (the requests stay within Codat's limits)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL, help="seconds between looks at a push"
    )
    parser.add_argument(
        "--push-timeout", type=float, default=DEFAULT_PUSH_TIMEOUT, help="seconds a push may stay Pending"
    )
    return parser.parse_args(argv)


@dataclass
class Outcome:
    """One row's fate in this run."""

    plan: PlannedPush
    status: str
    result: PushResult | None = None
    error: str | None = None
    requested_at: datetime | None = None
    settled_at: datetime | None = None

    def row(self, mode: str) -> dict[str, Any]:
        """Its `push_results` row."""
        plan, result = self.plan, self.result
        return {
            "row_key": plan.row_key,
            "row_number": plan.row.number,
            "company_id": plan.row.company_id,
            "connection_id": plan.connection_id,
            "mode": mode,
            "operation": plan.operation,
            "customer_id": plan.row.customer_id,
            "push_operation_key": result.push_operation_key if result else None,
            "status": self.status,
            "record_id": result.record_id if result else None,
            "validation_errors": (result.validation_errors if result else plan.problems) or None,
            "error_message": self.error or (result.error_message if result else None),
            "requested_at": self.requested_at,
            "settled_at": self.settled_at,
        }


class PushJournal:
    """The push operations Codat accepted in a run, on disk until the run's outcomes are loaded.

    A line is written (and synced) as soon as Codat answers a push, before it is polled. A run
    killed before its outcomes were loaded leaves them; the next run polls those operations
    instead of pushing their rows again, so a row is created once however long after the kill
    the rerun comes (Codat's `Idempotency-Key` covers 90 minutes). It lives beside the
    pipeline's lock, not in dlt's working folder, which dlt may wipe. A run killed between
    loading its outcomes and clearing the journal has the next run poll its failed rows'
    operations once more (reporting the same failure); the run after sends them again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> dict[str, str]:
        """The push operation key of each row the journal holds, by row key."""
        if not self.path.exists():
            return {}
        keys = {}
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
                keys[str(entry["row_key"])] = str(entry["push_operation_key"])
            except (ValueError, KeyError, TypeError):
                continue  # a line the kill cut short: its push was not accepted before it
        return keys

    def accepted(self, row_key: str, push_operation_key: str) -> None:
        """Record that Codat accepted the row's push, durably, before it is polled."""
        line = json.dumps({"row_key": row_key, "push_operation_key": push_operation_key}) + "\n"
        with self._lock, self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def clear(self) -> None:
        """Forget the run's operations, once their outcomes are loaded."""
        self.path.unlink(missing_ok=True)


def push_one(
    client: CodatClient,
    plan: PlannedPush,
    args: argparse.Namespace,
    journal: PushJournal,
    accepted: str | None,
) -> Outcome:
    """Send one planned row (or, `accepted`, follow the push an earlier run sent) until it settles."""
    requested = datetime.now(UTC)
    row = plan.row
    polling: dict[str, Any] = {"poll_interval": args.poll_interval, "timeout": args.push_timeout}
    try:
        if accepted is not None:
            result = PushResult.from_operation(wait_for_push(client, row.company_id, accepted, **polling))
        else:
            options: dict[str, Any] = {"timeout_in_minutes": args.timeout_in_minutes, "wait": False}
            if plan.operation == CREATE:
                options["idempotency_key"] = plan.row_key
                result = create_customer(client, row.company_id, plan.connection_id, plan.body, **options)
            else:
                options["force_update"] = args.force_update
                customer_id = str(row.customer_id)
                result = update_customer(
                    client, row.company_id, plan.connection_id, customer_id, plan.body, **options
                )
            journal.accepted(plan.row_key, result.push_operation_key)
            if result.status == PENDING:
                key = result.push_operation_key
                operation = wait_for_push(client, row.company_id, key, just_pushed=True, **polling)
                result = PushResult.from_operation(operation)
    except (CodatApiError, TimeoutError) as exc:
        return Outcome(plan, "Error", error=str(exc), requested_at=requested, settled_at=datetime.now(UTC))
    return Outcome(plan, result.status, result, requested_at=requested, settled_at=datetime.now(UTC))


def push_all(
    client: CodatClient, plans: list[PlannedPush], args: argparse.Namespace, journal: PushJournal
) -> list[Outcome]:
    """Every plan pushed, `--concurrency` at a time, with a progress line on stderr every few seconds.

    A plan whose push an earlier, killed run had Codat accept (`journal`) is followed, not sent.
    """
    outcomes: list[Outcome] = []
    shown = time.monotonic()
    accepted = journal.read()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [
            pool.submit(push_one, client, plan, args, journal, accepted.get(plan.row_key)) for plan in plans
        ]
        for future in as_completed(futures):
            outcomes.append(future.result())
            if args.quiet or (time.monotonic() - shown < PROGRESS_SECONDS and len(outcomes) < len(futures)):
                continue
            succeeded = sum(o.status == SUCCESS for o in outcomes)
            print(
                f"pushes: {len(outcomes)} of {len(futures)} settled, {succeeded} succeeded, "
                f"{len(outcomes) - succeeded} failed",
                file=sys.stderr,
            )
            shown = time.monotonic()
    return sorted(outcomes, key=lambda outcome: outcome.plan.row.number)


def make_pipeline(args: argparse.Namespace) -> dlt.Pipeline:
    """The pipeline that loads `push_results` into the dataset, as `codat-sync` makes its own."""
    warehouse = args.duckdb_file or DEFAULT_DUCKDB_FILE
    return sync_pipeline(
        argparse.Namespace(
            destination=args.destination,
            duckdb_file=str(warehouse),
            dataset=args.dataset,
            pipeline_name=args.pipeline_name,
            pipelines_dir=args.pipelines_dir,
            quiet=True,
        )
    )


def settled_keys(pipeline: dlt.Pipeline) -> set[str]:
    """The rows an earlier run pushed with success.

    The outcomes a killed run had extracted but not loaded are loaded first (what a kill left
    between two of dlt's file steps finished first, as for `codat-sync`), so that its rows
    are not sent again; then the schema is restored from the destination if this folder has
    none. (dlt's `run` restores first, and a destination that holds no load yet makes it wipe
    the working folder, outcomes and all.) A destination without SQL cannot say: its rows are
    sent again, and Codat's `Idempotency-Key` dedupes the creates within its window.

    Raises:
        DestinationUnusable: `push_results` is there but cannot be read (nothing is sent).
    """
    finish_kill_leftovers(pipeline)
    if pipeline.list_extracted_load_packages():
        pipeline.normalize()
    if pipeline.list_normalized_load_packages():
        pipeline.load()
    pipeline.sync_destination()
    with destination_tables(pipeline) as tables:
        if not tables.has_data(RESULTS_TABLE):
            return set()
        try:
            sql = tables.sql
            table = sql.make_qualified_table_name(RESULTS_TABLE)
            rows = sql.execute_sql(f"SELECT row_key FROM {table} WHERE status = %s", SUCCESS)
        except SqlClientNotAvailable:
            logger.warning("%s cannot be read on this destination: every row is sent", RESULTS_TABLE)
            return set()
        except DatabaseException as exc:
            raise DestinationUnusable(
                f"cannot read which rows earlier runs pushed ({RESULTS_TABLE}): {exc}; nothing was sent"
            ) from None
    return {str(r[0]) for r in rows or []}


def run(args: argparse.Namespace) -> int:
    """Plan every row, then push the valid ones not pushed before; load the outcomes; the exit code."""
    if args.concurrency < 1:
        raise InvalidOption(f"--concurrency must be at least 1; got {args.concurrency}")
    raw = read_rows(
        duckdb_file=args.duckdb_file,
        query=args.query,
        table=args.table,
        csv_file=args.csv,
        jsonl_file=args.jsonl,
    )
    rows = [to_push_row(number, values, args.key_column) for number, values in enumerate(raw, 1)]
    pipeline = make_pipeline(args)  # an unknown destination is refused before the first request
    # One run at a time on the pipeline and its destination, `codat-sync`'s runs among them: the
    # outcomes read first and loaded last are the dataset's, and nobody holds the file meanwhile.
    database = duckdb_path(pipeline)
    with (
        pipeline_lock(pipeline.pipelines_dir, pipeline.pipeline_name),
        destination_lock(pipeline, database=database),
    ):
        if database is not None:
            check_duckdb_file(database)
        return push_rows(args, rows, pipeline)


def push_rows(args: argparse.Namespace, rows: list[PushRow], pipeline: dlt.Pipeline) -> int:
    """Plan every row, push the valid ones not pushed before, load the outcomes; the exit code."""
    settings = resolve_settings()
    client = CodatClient(
        settings.api_key,
        settings.base_url,
        retry=settings.retry(),
        limits=settings.limits(),
        breaker=settings.breaker(),
    )
    plans = list(planned(client, rows, args.mode))  # every row checked before the first push
    done = settled_keys(pipeline)
    invalid = [p for p in plans if not p.valid]
    skipped = [p for p in plans if p.valid and p.row_key in done]
    to_send = [p for p in plans if p.valid and p.row_key not in done]
    for plan in invalid:
        print(f"row {plan.row.number}: not sent: {'; '.join(plan.problems)}")
    if args.dry_run:
        for plan in to_send:
            print(
                f"row {plan.row.number}: would {plan.operation} in company {plan.row.company_id}, "
                f"connection {plan.connection_id}: {plan.body}"
            )
        print(
            f"dry run: {len(to_send)} to send, {len(skipped)} pushed before, "
            f"{len(invalid)} invalid; nothing sent"
        )
        return EXIT_COMPANY_FAILED if invalid else EXIT_OK
    journal = PushJournal(lock_path(pipeline.pipelines_dir, pipeline.pipeline_name).with_suffix(".journal"))
    outcomes = push_all(client, to_send, args, journal)
    outcomes += [Outcome(plan, INVALID) for plan in invalid]
    if outcomes:
        pipeline.run(
            [o.row(args.mode) for o in outcomes],
            table_name=RESULTS_TABLE,
            write_disposition="merge",
            primary_key="row_key",
            columns=RESULT_COLUMNS,
        )
    journal.clear()
    failed = [o for o in outcomes if o.status not in (SUCCESS, INVALID)]
    for outcome in failed:
        reason = (
            outcome.error
            or "; ".join(outcome.result.validation_errors if outcome.result else [])
            or (outcome.result.error_message if outcome.result else "")
        )
        print(f"row {outcome.plan.row.number}: {outcome.status}: {reason}")
    sent = len(outcomes) - len(invalid)
    succeeded = sent - len(failed)
    print(
        f"pushed: {succeeded} succeeded, {len(failed)} failed, {len(invalid)} invalid, "
        f"{len(skipped)} pushed before"
    )
    if client.stop_cause is not None:  # the API stopped answering, or the daily quota is spent
        print(f"codat-push: stopped: {client.stop_cause}", file=sys.stderr)
        return stop_exit_code(client.stop_cause)
    return EXIT_COMPANY_FAILED if failed or invalid else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`codat-push`: 0 all sent, 1 some failed or invalid, 2 bad input, 3, 4 and 5 as `codat-sync`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except InvalidOption as exc:
        print(f"codat-push: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (PipelineBusy, DestinationLocked) as exc:
        print(f"codat-push: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except CodatApiError as exc:
        print(f"codat-push: {exc}", file=sys.stderr)
        return api_exit_code(exc)
    except UnknownDestinationModule:
        print(f"codat-push: --destination {args.destination!r} is not a dlt destination", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigFieldMissingException as exc:  # the destination's credentials
        print(f"codat-push: missing configuration: {', '.join(exc.fields)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CodatError as exc:
        print(f"codat-push: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
