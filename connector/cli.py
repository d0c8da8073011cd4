"""The `codat-sync` command: one incremental sync run, made for cron."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import dlt
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.runtime.collector import LogCollector, TqdmCollector
from dlt.pipeline.exceptions import PipelineStepFailed

from connector.client import CodatApiError
from connector.destinations import duckdb_destination
from connector.sync import run_sync

EXIT_OK, EXIT_COMPANY_FAILED, EXIT_ERROR = 0, 1, 2
PROGRESS_PERIOD = 2.0  # seconds between progress reports
# Not `codat.duckdb`: DuckDB names the catalog after the file, and a catalog named like the
# dataset makes `codat.customers` ambiguous (a Binder Error on load and in every query).
DEFAULT_DUCKDB_FILE = "codat_warehouse.duckdb"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="codat-sync",
        description="Sync Codat customers (and their attachments) into DuckDB or any dlt destination. "
        "The API key comes from SOURCES__CODAT__API_KEY or .dlt/secrets.toml.",
    )
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
    parser.add_argument("--request-budget", type=int, help="requests this run may spend")
    parser.add_argument(
        "--requests-per-minute", type=int, help="pace requests to this many a minute (default: 1000)"
    )
    parser.add_argument("--hard-delete", action="store_true", help="remove deleted customers")
    parser.add_argument("--quiet", action="store_true", help="no progress display (on stderr)")
    return parser.parse_args(argv)


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `codat_source` arguments the command line sets; the rest come from dlt config."""
    options: dict[str, Any] = {}
    if args.companies:
        options["company_ids"] = [c.strip() for c in args.companies.split(",") if c.strip()]
    for name in ("company_query", "since", "until", "request_budget", "requests_per_minute", "files_url"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.files:
        options["download_files"] = True
    if args.no_attachments:
        options["attachments"] = False
    if args.hard_delete:
        options["hard_delete"] = True
    return options


def make_pipeline(args: argparse.Namespace) -> dlt.Pipeline:
    """The dlt pipeline the command line describes.

    Raises:
        ValueError: The DuckDB file is named like the dataset.
    """
    destination: Any = args.destination
    if destination == "duckdb":
        if Path(args.duckdb_file).stem.casefold() == args.dataset.casefold():
            raise ValueError(
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
    return pipeline


def main(argv: list[str] | None = None) -> int:
    """Run one sync; exit 1 when a company failed, 2 when the run could not happen."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run_sync(make_pipeline(args), full_refresh=args.full_refresh, **source_options(args))
    except ConfigFieldMissingException as exc:
        print(f"codat-sync: missing configuration: {', '.join(exc.fields)}. Set "
              "SOURCES__CODAT__API_KEY (or api_key under [sources.codat] in .dlt/secrets.toml).",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    except (PipelineStepFailed, CodatApiError, ValueError) as exc:
        print(f"codat-sync: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    for line in summary.lines():
        print(line)
    return EXIT_OK if summary.ok else EXIT_COMPANY_FAILED


def describe(exc: BaseException) -> str:
    """The innermost useful message of a failed step (dlt wraps source errors twice)."""
    while isinstance(exc, PipelineStepFailed) and exc.__cause__ is not None:
        exc = exc.__cause__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and isinstance(cause, CodatApiError | ValueError):
        return str(cause)
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
