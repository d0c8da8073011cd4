"""The `codat-sync` command: one incremental sync run, made for cron."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import dlt
import duckdb
from dlt.common.configuration.exceptions import (
    ConfigFieldMissingException,
    ConfigValueCannotBeCoercedException,
)
from dlt.common.destination.exceptions import DestinationException, UnknownDestinationModule
from dlt.common.pipeline import get_dlt_pipelines_dir
from dlt.common.runtime.collector import LogCollector, TqdmCollector
from dlt.pipeline.exceptions import PipelineStepFailed

from connector.defaults import DEFAULT_DUCKDB_FILE
from connector.destinations import duckdb_destination, duckdb_lock_problem
from connector.disk import DISK_FULL_TEXTS, describe_full_disk, full_disk_path
from connector.errors import (
    CodatApiError,
    DestinationLocked,
    DestinationUnusable,
    InvalidOption,
    PipelineBusy,
)
from connector.exits import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_DISK_FULL,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    api_exit_code,
)
from connector.lock import pipeline_lock
from connector.pacing import DISK_FULL, INTERRUPTED, StopSwitch
from connector.settings import coercion_problem, missing_problem, resolve_settings, setting
from connector.source import dlt_logger_filtered
from connector.sync import SyncSummary, run_sync
from connector.syncqueue import SyncQueue, queue_path

PROGRESS_PERIOD = 2.0  # seconds between progress reports
INTERRUPTING = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what cron wrappers, systemd and Dagster send


SYNC_DESCRIPTION = (
    "Sync Codat customers (and their attachments) into DuckDB or any dlt destination. "
    "The API key comes from SOURCES__CODAT__API_KEY or .dlt/secrets.toml."
)


def build_parser(prog: str = "codat-sync", description: str = SYNC_DESCRIPTION) -> argparse.ArgumentParser:
    """The options of a sync run (`codat-webhooks` adds its own to them)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--companies", help="comma-separated company ids (default: every company)")
    which.add_argument("--company-query", help="a Codat query on companies, e.g. 'name~Acme'")
    parser.add_argument("--destination", default="duckdb", help="dlt destination (default: duckdb)")
    parser.add_argument(
        "--duckdb-file", default=DEFAULT_DUCKDB_FILE, help="DuckDB file (default: %(default)s)"
    )
    parser.add_argument("--dataset", default="codat", help="dataset / schema name (default: codat)")
    parser.add_argument("--pipeline-name", default="codat", help="dlt pipeline name (default: codat)")
    parser.add_argument("--pipelines-dir", help="where dlt keeps pipeline state (default: dlt's)")
    parser.add_argument("--full-refresh", action="store_true", help="drop tables and cursors, load all")
    parser.add_argument("--since", help="backfill from this date/instant (cursors untouched)")
    parser.add_argument("--until", help="backfill up to this date/instant, exclusive")
    parser.add_argument("--files", action="store_true", help="download attachment files too")
    parser.add_argument("--files-url", help="folder or fsspec URL for files (default: codat_files)")
    parser.add_argument("--no-attachments", action="store_true", help="skip attachment metadata")
    parser.add_argument("--request-budget", type=whole_number(1), help="requests this run may spend")
    parser.add_argument(
        "--requests-per-minute",
        type=whole_number(2),
        help="pace requests to this many a minute (default: 1000)",
    )
    parser.add_argument(
        "--refresh-attachments",
        action="store_true",
        help="list every customer's attachments again now (what does not fit, the next runs list)",
    )
    parser.add_argument(
        "--hard-delete", action="store_true", help="remove deleted customers and removed attachments"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="keep every version of a customer, with valid_from and valid_to (see the README)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a company is not ready in Codat (409)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display (on stderr)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = build_parser()
    parser.add_argument(
        "--from-queue",
        action="store_true",
        help="sync the companies Codat's webhooks queued (codat-webhooks --no-worker), then take them off",
    )
    parser.add_argument("--queue", help="the queue's SQLite file (default: beside the pipeline's state)")
    args = parser.parse_args(argv)
    if args.from_queue and (args.companies is not None or args.company_query is not None):
        parser.error("argument --from-queue: the queue names the companies; leave out --companies")
    if args.companies is not None and not company_ids(args.companies):
        parser.error(
            f"argument --companies: {args.companies!r} names no company id; "
            "give ids separated by commas, or leave it out for every company"
        )
    if args.company_query is not None and not args.company_query.strip():
        parser.error("argument --company-query: empty; give a Codat query such as 'name~Acme'")
    return args


def whole_number(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}; got {value}")
        return value

    return parse


def company_ids(text: str) -> list[str]:
    """The ids of a comma-separated list, blanks dropped."""
    return [c.strip() for c in text.split(",") if c.strip()]


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets; the rest come from dlt's configuration (`resolve_settings`)."""
    options: dict[str, Any] = {}
    if args.companies is not None:
        options["company_ids"] = company_ids(args.companies)
    for name in ("company_query", "since", "until", "request_budget", "requests_per_minute", "files_url"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.files:
        options["download_files"] = True
    if args.no_attachments:
        options["attachments"] = False
    if args.hard_delete:
        options["hard_delete"] = True
    if args.refresh_attachments:
        options["refresh_attachments"] = True
    if args.history:
        options["history"] = True
    return options


def make_pipeline(args: argparse.Namespace) -> dlt.Pipeline:
    """The dlt pipeline the command line describes.

    Raises:
        InvalidOption: The DuckDB file is named like the dataset.
        DestinationUnusable: The DuckDB file's folder cannot be made, or another process holds it.
    """
    destination: Any = args.destination
    if destination == "duckdb":
        if Path(args.duckdb_file).stem.casefold() == args.dataset.casefold():
            raise InvalidOption(
                f"the DuckDB file {args.duckdb_file!r} and the dataset {args.dataset!r} share a name, "
                "which DuckDB cannot tell apart; rename one (--duckdb-file or --dataset)"
            )
        destination = duckdb_destination(args.duckdb_file)
    options: dict[str, Any] = {"pipelines_dir": args.pipelines_dir} if args.pipelines_dir else {}
    if not args.quiet:
        # On stderr, so stdout carries only the summary (what cron mails): bars on a terminal,
        # a line every few seconds in a log file.
        if sys.stderr.isatty():
            options["progress"] = TqdmCollector(file=sys.stderr, dynamic_ncols=True)
        else:
            options["progress"] = LogCollector(PROGRESS_PERIOD, logger=sys.stderr, dump_system_stats=False)
    pipeline: dlt.Pipeline = dlt.pipeline(
        pipeline_name=args.pipeline_name, destination=destination, dataset_name=args.dataset, **options
    )
    pipeline.config.runtime.intercept_signals = False  # the command's own handlers stop the run
    return pipeline


def main(argv: list[str] | None = None) -> int:
    """Run one sync; the exit codes are `connector.exits`' EXIT_* (the README's "Operations")."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = StopSwitch()
    with interruptible(stop) as received, quiet_full_disk():
        code = sync(args, stop)
    return EXIT_SIGNAL_BASE + received[0] if received else code


@contextlib.contextmanager
def interruptible(stop: StopSwitch) -> Iterator[list[int]]:
    """SIGINT and SIGTERM stop the run's requests; it loads what it read and says so in its summary.

    Yields the signals received. A second signal ends the process at once, as a kill would
    (the next run finishes what it left).
    """
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if received:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        name = signal.Signals(signum).name
        stop.trip(INTERRUPTED, f"{name} received", signum)
        os.write(  # not print: the main thread may be inside a print when the signal lands
            sys.stderr.fileno(),
            f"codat-sync: {name} received: no more requests; loading what was read "
            f"(send {name} again to stop at once)\n".encode(),
        )

    previous = {number: signal.signal(number, interrupt) for number in INTERRUPTING}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _QuietFullDisk(logging.Filter):
    """Drops dlt's records of a full disk (a traceback per retried load job): the run says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and full_disk_path(error) is not None:
            return False
        return not any(text in record.getMessage() for text in DISK_FULL_TEXTS)


def quiet_full_disk() -> contextlib.AbstractContextManager[None]:
    """Hold dlt's own words on a full disk back for the command's run."""
    return dlt_logger_filtered(_QuietFullDisk())


def sync(args: argparse.Namespace, stop: StopSwitch) -> int:
    """One run as the command line asks for it, `stop` tripped on a signal; its exit code."""
    if getattr(args, "from_queue", False):
        return sync_from_queue(args, stop)
    return run_once(args, stop)[0]


def sync_from_queue(args: argparse.Namespace, stop: StopSwitch) -> int:
    """Sync every company the webhooks queued, in one run; each loaded one leaves the queue."""
    from connector.webhooks import run_companies

    queue = SyncQueue(queue_file(args))
    claims = queue.due(0.0)
    if not claims:
        print(f"queue {queue.path}: no company to sync")
        return EXIT_OK
    code, errors = run_companies(args, stop, sorted(claims))
    taken = queue.settle(claims, errors)
    print(f"queue {queue.path}: {len(taken)} companies synced and taken off, {len(queue.pending())} queued")
    return code


def queue_file(args: argparse.Namespace) -> Path:
    """The queue's file: `--queue`, or beside the pipeline's lock."""
    if args.queue:
        return Path(args.queue)
    return queue_path(args.pipelines_dir or get_dlt_pipelines_dir(), args.pipeline_name)


def webhook_secret() -> str:
    """The webhooks' signing secret from the source's configuration.

    Raises:
        InvalidOption: It is set nowhere (or a setting is bad).
    """
    secret = resolve_settings().webhook_secret
    if not secret:
        raise InvalidOption(
            f"{setting('webhook_secret')} is not set: give the whsec_... secret of the endpoint "
            "registered in Codat's portal (webhook_secret under [sources.codat] in .dlt/secrets.toml)"
        )
    return str(secret)


def run_once(args: argparse.Namespace, stop: StopSwitch) -> tuple[int, SyncSummary | None, str | None]:
    """One run; its exit code, its summary (None if refused or failed as a whole) and why it was."""

    def refused(message: str, code: int = EXIT_BAD_INPUT) -> tuple[int, None, str]:
        return fail(message, code), None, message

    pipelines_dir = args.pipelines_dir or get_dlt_pipelines_dir()
    try:
        settings = resolve_settings(**source_options(args))  # refused here, before anything is locked
        with pipeline_lock(pipelines_dir, args.pipeline_name):
            pipeline = make_pipeline(args)
            summary = run_sync(pipeline, full_refresh=args.full_refresh, stop=stop, settings=settings)
    except ConfigFieldMissingException as exc:  # the destination's (the source's: InvalidOption)
        return refused(missing_problem(exc))
    except ConfigValueCannotBeCoercedException as exc:
        return refused(coercion_problem(exc))
    except UnknownDestinationModule:
        return refused(
            f"--destination {args.destination!r} is not a dlt destination; use duckdb, postgres, "
            "filesystem, bigquery, snowflake, ... (install its extra, e.g. '.[postgres]')"
        )
    except (PipelineBusy, DestinationLocked) as exc:
        return refused(str(exc), EXIT_BUSY)
    except DestinationUnusable as exc:
        return refused(str(exc))
    except (PipelineStepFailed, CodatApiError, InvalidOption) as exc:
        return refused(*describe(exc))
    except (DestinationException, duckdb.Error) as exc:  # the DuckDB file taken mid-run, between steps
        if (problem := duckdb_lock_problem(exc)) is None:
            raise
        return refused(problem, EXIT_BUSY)
    except OSError as exc:  # before the run's steps: its lock file, dlt's working folder
        if (path := full_disk_path(exc)) is None:
            raise
        places = {"dlt's working folder": Path(pipelines_dir), "the DuckDB file": Path(args.duckdb_file)}
        return refused(
            f"{DISK_FULL}: {describe_full_disk(path, places)}; free space there and run again", EXIT_DISK_FULL
        )
    for line in summary.lines():
        print(line)
    if summary.stopped is not None and summary.stopped.kind == DISK_FULL:
        fail(f"{summary.stopped}; free space there and run again")
    return summary.exit_code(strict=args.strict), summary, None


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Say on stderr why the run could not happen; return its exit code."""
    print(f"codat-sync: {message}", file=sys.stderr)
    return code


def describe(exc: BaseException) -> tuple[str, int]:
    """The innermost useful message of a failed step (dlt wraps source errors twice), and its exit code."""
    if (problem := duckdb_lock_problem(exc)) is not None:
        return problem, EXIT_BUSY
    while isinstance(exc, PipelineStepFailed) and exc.__cause__ is not None:
        exc = exc.__cause__
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, CodatApiError):
            return str(error), api_exit_code(error)
        if isinstance(error, ConfigValueCannotBeCoercedException):
            return coercion_problem(error), EXIT_BAD_INPUT
        if isinstance(error, InvalidOption):
            return str(error), EXIT_BAD_INPUT
    return str(exc), EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
