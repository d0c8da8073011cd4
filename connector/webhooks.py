"""Change-driven runs: Codat's webhooks queue the companies that changed, and a worker syncs them.

`codat-webhooks` serves `POST /webhooks/codat` (Starlette on uvicorn). A delivery is checked by
Svix's library (`webhook-id`, `webhook-timestamp`, `webhook-signature`, or the same with `svix-`;
a timestamp more than 5 minutes off is refused), read (`companies_to_sync`), and stored with its
companies in the queue (`connector.syncqueue`) before the 2xx: a bad signature gets 401, a body
that is no Codat event 400, and neither stores anything. A redelivery (same id) is answered 200
and queues nothing. The worker (`QueueWorker`, in the receiver's process unless `--no-worker`,
or `codat-sync --from-queue` from cron) takes the companies whose events have been quiet for the
debounce window and runs the ordinary sync for exactly those, under the pipeline's lock; a company
leaves the queue only once its run has loaded it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from connector.sync import SyncSummary
from connector.syncqueue import SyncQueue

logger = logging.getLogger(__name__)

PATH = "/webhooks/codat"
# The events that say Codat has read a company's data, with the data types it read.
READ_EVENTS = ("read.completed", "read.completed.initial")
# The rule-based events older accounts still send: a company's data (of one type) changed.
LEGACY_EVENTS = ("DataSyncCompleted", "DatasetDataChanged", "Data sync completed", "Dataset data changed")
DATA_TYPE = "customers"
DEFAULT_DEBOUNCE_SECONDS = 5.0  # events for one company within this window make one sync
POLL_SECONDS = 1.0  # how often the worker looks at the queue when no event wakes it


class NotAnEvent(ValueError):
    """A webhook body that is not a Codat event the connector reads."""


def companies_to_sync(event: Any) -> tuple[str, list[str]]:
    """The event's type and the companies whose customers it says changed (none: nothing to do).

    `read.completed` (and `.initial`) name the company in `payload.referenceCompany.id` and list
    what was read in `payload.dataTypes`: the company is synced when customers were read with
    `recordsModified` true. The legacy `DataSyncCompleted` and `DatasetDataChanged` name it in
    `CompanyId` (or `payload.companyId`) and their data type in `Data`/`payload` `dataType`.

    Raises:
        NotAnEvent: The body is not an object with an event type, or names no company.
    """
    if not isinstance(event, dict):
        raise NotAnEvent("the body is not a JSON object")
    event_type = event.get("eventType") or event.get("RuleType") or event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise NotAnEvent("the body has no eventType")
    payload: dict[str, Any] = event["payload"] if isinstance(event.get("payload"), dict) else {}
    if event_type in READ_EVENTS:
        company = (payload.get("referenceCompany") or {}).get("id")
        if not isinstance(company, str) or not company:
            raise NotAnEvent(f"{event_type} without payload.referenceCompany.id")
        read = payload.get("dataTypes")
        if not isinstance(read, list):
            raise NotAnEvent(f"{event_type} without payload.dataTypes")
        changed = any(
            isinstance(item, dict)
            and item.get("dataType") == DATA_TYPE
            and item.get("recordsModified") is True
            for item in read
        )
        return event_type, [company] if changed else []
    if event_type in LEGACY_EVENTS:
        company = event.get("CompanyId") or payload.get("companyId")
        if not isinstance(company, str) or not company:
            raise NotAnEvent(f"{event_type} without CompanyId")
        data: dict[str, Any] = event["Data"] if isinstance(event.get("Data"), dict) else payload
        data_type = data.get("dataType") or data.get("DataType")
        return event_type, [company] if data_type in (None, DATA_TYPE) else []
    return event_type, []  # another event: acknowledged, nothing to sync


def _customers_modified(item: Any) -> bool:
    return (
        isinstance(item, dict) and item.get("dataType") == DATA_TYPE and item.get("recordsModified") is True
    )


@dataclass
class QueueWorker:
    """Syncs the queued companies, debounced, one run at a time, until stopped.

    `sync(company_ids)` runs the ordinary sync for those companies and returns, per company, the
    error that kept it from loading (an empty dict: all loaded), or raises if nothing could run.
    """

    queue: SyncQueue
    sync: Callable[[list[str]], dict[str, str]]
    debounce: float = DEFAULT_DEBOUNCE_SECONDS
    runs: int = 0
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def wake(self) -> None:
        """An event was queued: look at the queue now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        """Run in a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="codat-queue-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the run under way (if any)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_due()
            except Exception:  # noqa: BLE001 - logged; the worker keeps serving the queue
                logger.exception("the queue worker's run failed; its companies stay queued")

    def run_due(self, debounce: float | None = None) -> list[str]:
        """Sync the companies due now (quiet for the debounce window); returns those loaded."""
        claims = self.queue.due(self.debounce if debounce is None else debounce)
        if not claims:
            return []
        self.runs += 1
        try:
            errors = self.sync(sorted(claims))
        except Exception as exc:
            self.queue.failed(list(claims), f"{type(exc).__name__}: {exc}")
            raise
        return self.queue.settle(claims, errors)


def receiver_app(
    secret: str,
    queue: SyncQueue,
    on_queued: Callable[[], None] | None = None,
    worker: QueueWorker | None = None,
) -> Any:
    """The ASGI app that takes Codat's webhooks into `queue`; `on_queued` is called when one queued work.

    With `worker`, the app starts it with the server and, on SIGINT or SIGTERM, stops it after
    the run under way before the server exits (uvicorn then ends the process with that signal).

    Raises:
        InvalidOption: The secret is not a `whsec_...` Svix secret.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from svix.webhooks import Webhook, WebhookVerificationError

    from connector.errors import InvalidOption
    from connector.settings import setting

    try:
        base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        verifier = Webhook(secret) if secret.startswith("whsec_") else None
    except (binascii.Error, ValueError):  # never echo the secret
        verifier = None
    if verifier is None:
        what = setting("webhook_secret")
        raise InvalidOption(f"{what} is not a webhook secret: whsec_ and base64, as Codat's portal shows it")

    async def codat(request: Request) -> JSONResponse:
        body = await request.body()
        headers = dict(request.headers)
        try:
            verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            return JSONResponse({"error": f"not a delivery signed with the webhook secret: {exc}"}, 401)
        try:
            event_type, companies = companies_to_sync(json.loads(body))
        except (NotAnEvent, ValueError) as exc:
            return JSONResponse({"error": f"not a Codat event: {exc}"}, 400)
        webhook_id = headers.get("webhook-id") or headers.get("svix-id") or ""
        new = await run_in_threadpool(queue.record, webhook_id, event_type, companies)
        if new and companies and on_queued is not None:
            on_queued()
        return JSONResponse({"queued": companies if new else [], "duplicate": not new})

    async def health(request: Request) -> JSONResponse:
        pending = await run_in_threadpool(queue.pending)
        return JSONResponse({"ok": True, "queued": len(pending)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop)

    routes = [Route(PATH, codat, methods=["POST"]), Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def run_companies(args: argparse.Namespace, stop: Any, company_ids: list[str]) -> tuple[int, dict[str, str]]:
    """One `codat-sync` run (the command line's options) for these companies.

    Returns its exit code and, per company that did not load, why: a company that failed keeps
    the run's error for it; a run refused as a whole (the pipeline busy with a cron run, a bad
    setting) keeps every company with its reason.
    """
    from connector import cli

    run = argparse.Namespace(**{**vars(args), "companies": ",".join(company_ids), "company_query": None})
    code, summary, problem = cli.run_once(run, stop)
    if summary is None:
        return code, dict.fromkeys(company_ids, problem or f"codat-sync exited with {code}")
    return code, unloaded(summary, company_ids)


def unloaded(summary: SyncSummary, company_ids: Iterable[str]) -> dict[str, str]:
    """Of these companies, those a run did not load, each with why (the run's error for it)."""
    if summary.customers_not_loaded:  # read, not loaded: the next run loads it first
        return dict.fromkeys(company_ids, "read but not loaded yet")
    wanted = set(company_ids)
    return {
        row["company_id"]: str(row.get("error") or row.get("status"))
        for row in summary.status_rows
        if row["company_id"] in summary.failed and row["company_id"] in wanted
    }


def sync_companies(args: argparse.Namespace) -> Callable[[list[str]], dict[str, str]]:
    """`QueueWorker.sync` for the command line's pipeline: `run_companies`, each run stoppable by nothing."""
    from connector.pacing import StopSwitch

    return lambda company_ids: run_companies(args, StopSwitch(), company_ids)[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`codat-webhooks`' command line: where to listen, and `codat-sync`'s options for the runs."""
    from connector import cli

    parser = cli.build_parser(
        "codat-webhooks",
        "Receive Codat's webhooks and sync the companies that changed. The signing secret comes "
        "from SOURCES__CODAT__WEBHOOK_SECRET or webhook_secret under [sources.codat] in .dlt/secrets.toml.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--queue", help="the queue's SQLite file (default: beside the pipeline's state)")
    parser.add_argument(
        "--debounce",
        type=float,
        default=DEFAULT_DEBOUNCE_SECONDS,
        help="seconds a company's events must be quiet before its sync (default: %(default)s)",
    )
    parser.add_argument(
        "--no-worker", action="store_true", help="only receive; run `codat-sync --from-queue` to sync"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve the receiver (and its worker) until SIGINT or SIGTERM."""
    from connector import cli
    from connector.errors import InvalidOption
    from connector.exits import EXIT_BAD_INPUT

    def refuse(message: str) -> int:
        print(f"codat-webhooks: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT

    args = parse_args(argv)
    try:
        import svix.webhooks  # noqa: F401 - the receiver's, checked before anything starts
        import uvicorn
    except ImportError as exc:
        return refuse(
            f"the webhooks extra is not installed ({exc.name} is missing): "
            "pip install -e '.[webhooks]' (Starlette, uvicorn, svix)"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        secret = cli.webhook_secret()
        queue = SyncQueue(cli.queue_file(args))
        worker = QueueWorker(queue, sync_companies(args), debounce=args.debounce)
        if args.no_worker:
            app = receiver_app(secret, queue)
        else:
            app = receiver_app(secret, queue, worker.wake, worker)
    except InvalidOption as exc:
        return refuse(str(exc))
    print(
        f"codat-webhooks listening on http://{args.host}:{args.port}{PATH} (queue {queue.path})", flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
