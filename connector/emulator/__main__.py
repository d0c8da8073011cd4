"""Command line: run the Codat emulator on a local port until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from connector.emulator.emulator import DEFAULT_API_KEY, Emulator
from connector.emulator.limits import DEFAULT_PER_MINUTE_LIMIT, DEFAULT_RATE_WINDOW_SECONDS
from connector.emulator.push import DEFAULT_PUSH_DELAY
from connector.emulator.server import EmulatorServer
from connector.emulator.store import Sizing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the emulator's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m connector.emulator",
        description="A local emulator of the Codat API: customers, companies, connections, pushes.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8787, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--companies", type=int, default=3, help="companies to generate (default: %(default)s)"
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=1000,
        help="customers in total, skewed across companies (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of the generated data (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="the API key clients must send (default: %(default)s)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds each admitted request takes, holding its concurrency slot (default: 0)",
    )
    parser.add_argument(
        "--latency-per-record",
        type=float,
        default=0.0,
        help="seconds more per record a page carries, so a page of 5000 takes longer than one of 1 "
        "(default: 0)",
    )
    parser.add_argument(
        "--daily-limit",
        type=int,
        default=None,
        help="daily request quota (default: 1000 x (1 + companies))",
    )
    parser.add_argument(
        "--push-delay",
        type=float,
        default=DEFAULT_PUSH_DELAY,
        help="seconds before a push operation settles (default: %(default)s)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=10,
        help="concurrent requests per company before 429 (default: 10)",
    )
    parser.add_argument(
        "--per-minute-limit",
        type=int,
        default=DEFAULT_PER_MINUTE_LIMIT,
        help="requests per client IP in any --rate-window before 429; 0 turns it off (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-window",
        type=float,
        default=DEFAULT_RATE_WINDOW_SECONDS,
        help="seconds of the rolling window of --per-minute-limit (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-url", help="post a signed read.completed here after each read of a company"
    )
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get("CODAT_EMULATOR_WEBHOOK_SECRET"),
        help="the whsec_... secret the webhooks are signed with (default: $CODAT_EMULATOR_WEBHOOK_SECRET)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the emulator and serve until Ctrl-C."""
    args = parse_args(argv)
    for name in ("companies", "customers", "per_minute_limit", "latency", "latency_per_record"):
        if getattr(args, name) < 0:
            print(f"--{name.replace('_', '-')} must be 0 or more", file=sys.stderr)
            return 2
    if not args.rate_window > 0:
        print("--rate-window must be more than 0", file=sys.stderr)
        return 2
    emulator = Emulator(
        Sizing(seed=args.seed, companies=args.companies, customers=args.customers),
        api_key=args.api_key,
        latency=args.latency,
        latency_per_record=args.latency_per_record,
        daily_limit=args.daily_limit,
        push_delay=args.push_delay,
        per_minute_limit=args.per_minute_limit or None,
        window_seconds=args.rate_window,
    )
    emulator.limiter.max_concurrent = args.max_concurrent
    if args.webhook_url:
        if not args.webhook_secret:
            print("--webhook-url needs --webhook-secret (or CODAT_EMULATOR_WEBHOOK_SECRET)", file=sys.stderr)
            return 2
        try:
            emulator.webhooks.configure(args.webhook_url, args.webhook_secret)
        except ValueError as exc:
            print(f"--webhook-secret: {exc}", file=sys.stderr)
            return 2
    try:
        server = EmulatorServer(emulator, host=args.host, port=args.port)
    except OSError as exc:
        print(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port",
            file=sys.stderr,
        )
        return 2
    companies = emulator.store.companies.values()
    customers = sum(len(c.customers) for c in companies)
    print(f"Codat emulator ready at {server.url} ({len(companies)} companies, {customers} customers)")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
