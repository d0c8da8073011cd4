"""The emulator's mutable state: the account, its changes, and the pages served from it."""

from __future__ import annotations

import gc
import json
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from connector.emulator.data import generate_account, new_attachment, new_connection, new_customer
from connector.emulator.model import STATUS_COMPLETE, Attachment, Company, Connection, Json, gc_paused
from connector.emulator.selection import SortedView, build_view, update_view

MUTATE_ACTIONS = ("modify", "delete", "add", "restamp", "attach", "detach")
# Actions that change attachments only: no customer record, `modifiedDate` or sync moves.
ATTACHMENT_ACTIONS = ("attach", "detach")
MAX_VIEWS = 256
# The order the connector reads in, whose views `reset` builds before the first request.
WARM_ORDER = "modifiedDate"
# A company's change log is dropped (its next views are sorted afresh) beyond this many changes,
# 5% of its customers but at least LOG_FLOOR and at most LOG_CEILING.
LOG_FLOOR = 1_000
LOG_CEILING = 50_000
# From this size on, `reset` collects garbage once itself, so that the collector's first passes
# over millions of new objects (seconds) do not land on a later request instead.
COLLECT_AFTER_CUSTOMERS = 20_000
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def utc_stamp(moment: datetime | None = None) -> str:
    """Format a moment the way Codat writes `modifiedDate` (whole seconds, `Z`)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Sizing:
    """What the account is generated from."""

    seed: int = 7
    companies: int = 3
    customers: int = 1000


@dataclass
class Store:
    """The account the emulator serves, guarded by one lock.

    Each customer's JSON encoding is cached, and each company's customers are kept sorted per
    `orderBy` (`SortedView`) until they change, so a 5000-record page is a bisection and a join
    of bytes. Every write of a customer goes through `put_customer`, which drops the encoding
    and logs the change, so that a view is brought up to date by merging in the changed records
    (`update_view`) rather than by sorting the company again.
    """

    sizing: Sizing = field(default_factory=Sizing)
    companies: dict[str, Company] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    platform_changed: set[tuple[str, str]] = field(default_factory=set)
    _encoded: dict[tuple[str, str], tuple[Json, bytes]] = field(default_factory=dict)
    _views: dict[tuple[str, str], tuple[tuple[int, int], SortedView]] = field(default_factory=dict)
    _versions: dict[str, int] = field(default_factory=dict)  # company id -> changes so far
    _epoch: int = 0  # resets so far
    # company id -> (version, record before or None, record after), from just after the oldest
    # cached view of the company; kept only while the company has cached views.
    _changes: dict[str, list[tuple[int, Json | None, Json]]] = field(default_factory=dict)
    full_builds: int = 0  # views sorted from scratch
    merged_builds: int = 0  # views brought up to date by `update_view`
    _rng: random.Random = field(default_factory=random.Random)
    # Told of each simulated Codat read of a company (`mark_synced`): the emulator's webhooks.
    on_read: Callable[[Company, bool], None] | None = None

    def __post_init__(self) -> None:
        self.reset(self.sizing)

    def reset(self, sizing: Sizing) -> None:
        """Regenerate the whole account from `sizing`."""
        account = generate_account(sizing.seed, sizing.companies, sizing.customers)
        with self.lock:
            self.sizing = sizing
            self.companies = {c.id: c for c in account}
            self._encoded.clear()
            self._views.clear()
            self._versions.clear()
            self._changes.clear()
            self._epoch += 1
            self.platform_changed.clear()
            self._rng = random.Random(sizing.seed ^ 0x5EED)
        with gc_paused():  # one pause for every company, not one collection after each
            for company in account[:MAX_VIEWS]:
                self.view(company, WARM_ORDER)
        if sizing.customers >= COLLECT_AFTER_CUSTOMERS:
            gc.collect()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock."""
        with self.lock:
            yield

    def company(self, company_id: str) -> Company | None:
        """The company with this id, if any."""
        return self.companies.get(company_id)

    def encoded_customer(self, company_id: str, record: Json) -> bytes:
        """The JSON bytes of one customer, cached until it changes.

        Safe without the lock: each entry carries the record it encodes, so an entry written by
        a thread that raced a change is never served for the new record.
        """
        cache_key = (company_id, str(record["id"]))
        cached = self._encoded.get(cache_key)
        if cached is not None and cached[0] is record:
            return cached[1]
        encoded = _ENCODER.encode(record).encode()
        self._encoded[cache_key] = (record, encoded)
        return encoded

    def put_customer(self, company: Company, record: Json) -> None:
        """Insert or replace a customer, dropping its cached encoding and logging the change."""
        customer_id = str(record["id"])
        with self.lock:
            before = company.customers.get(customer_id)
            company.customers[customer_id] = record
            self._encoded.pop((company.id, customer_id), None)
            version = self._versions.get(company.id, 0) + 1
            self._versions[company.id] = version
            log = self._changes.get(company.id)
            if log is None:
                return
            cap = min(LOG_CEILING, max(LOG_FLOOR, len(company.customers) // 20))
            if self.companies.get(company.id) is not company or len(log) >= cap:
                del self._changes[company.id]  # a gap: the company's next views are sorted afresh
            else:
                log.append((version, before, record))

    def view(self, company: Company, order_by: str | None) -> SortedView:
        """The company's customers sorted by `order_by`, kept up to date as they change.

        A cached view that the company's change log covers is updated by merging in the
        changed records; otherwise the customers are sorted afresh. Both run outside the lock
        (on a snapshot, into new lists: published views are never changed), and the result is
        kept only if the company is still the account's and none of its customers changed
        meanwhile.

        Raises:
            QueryError: `order_by` is not a valid `orderBy` for customers.
        """
        cache_key = (company.id, order_by or "")

        def encode(record: Json) -> bytes:
            return self.encoded_customer(company.id, record)

        with self.lock:
            current = self.companies.get(company.id) is company
            stamp = (self._epoch, self._versions.get(company.id, 0))
            cached = self._views.get(cache_key)
            if current and cached is not None and cached[0] == stamp:
                return cached[1]
            changes = self._changes_since(company.id, cached[0]) if current and cached else None
            records = list(company.customers.values()) if changes is None else None
        view = update_view(cached[1], order_by, changes, encode) if cached and changes else None
        if view is None:
            if records is None:  # an empty gap, or a logged record missing from its view
                with self.lock:
                    current = self.companies.get(company.id) is company
                    stamp = (self._epoch, self._versions.get(company.id, 0))
                    records = list(company.customers.values())
            view = build_view(records, order_by, encode)
        with self.lock:
            if records is None:
                self.merged_builds += 1
            else:
                self.full_builds += 1
            if current and stamp == (self._epoch, self._versions.get(company.id, 0)):
                self._publish(cache_key, stamp, view)
        return view

    def _changes_since(
        self, company_id: str, built: tuple[int, int]
    ) -> list[tuple[Json | None, Json]] | None:
        """Per customer changed since a view's stamp, its record then and now; None if unknown."""
        log = self._changes.get(company_id)
        version = self._versions.get(company_id, 0)
        if built[0] != self._epoch or not log or log[0][0] > built[1] + 1 or log[-1][0] != version:
            return None
        net: dict[str, tuple[Json | None, Json]] = {}
        for _, before, after in log[built[1] + 1 - log[0][0] :]:
            customer_id = str(after["id"])
            net[customer_id] = (net[customer_id][0] if customer_id in net else before, after)
        return list(net.values())

    def _publish(self, cache_key: tuple[str, str], stamp: tuple[int, int], view: SortedView) -> None:
        """Cache a view (the oldest view goes first) and trim the change logs it no longer needs."""
        self._views.pop(cache_key, None)
        self._views[cache_key] = (stamp, view)
        while len(self._views) > MAX_VIEWS:
            evicted = next(iter(self._views))
            del self._views[evicted]
            if not any(key[0] == evicted[0] for key in self._views):
                self._changes.pop(evicted[0], None)
        company_id = cache_key[0]
        log = self._changes.setdefault(company_id, [])
        oldest = min(built[1] for key, (built, _) in self._views.items() if key[0] == company_id)
        if log:
            del log[: max(0, oldest + 1 - log[0][0])]

    def mark_synced(self, company: Company, stamp: str, modified: bool = True) -> None:
        """Record a simulated Codat sync of the company's customers at `stamp`.

        `modified`: whether the sync changed customers; `on_read` (the webhooks) is told either way.
        """
        company.last_sync = stamp
        company.customers_last_successful_sync = stamp
        company.customers_status = STATUS_COMPLETE
        self.platform_changed -= {k for k in self.platform_changed if k[0] == company.id}
        for connection in company.accounting_connections:
            connection.last_sync = stamp
        if self.on_read is not None:
            self.on_read(company, modified)

    def mutate(
        self,
        company_id: str,
        action: str,
        count: int = 1,
        ids: list[str] | None = None,
        timestamp: str | None = None,
    ) -> list[str]:
        """Change customers as one simulated Codat sync would, and return the ids changed.

        `modify` edits fields, `delete` sets `metadata.isDeleted`, `add` creates customers,
        `restamp` sets every customer's `modifiedDate` to one timestamp. All changes of one
        call share one `modifiedDate` (the current second unless `timestamp` is given), and the
        company's last sync moves to it.

        `attach` and `detach` add or remove one attachment per customer, as a user does in the
        accounting platform: the customer record, its `modifiedDate` and the company's last sync
        stay as they were (see `_change_attachments`).
        """
        if action not in MUTATE_ACTIONS:
            raise ValueError(f"unknown action {action!r}; use one of {', '.join(MUTATE_ACTIONS)}")
        with self.lock:
            company = self.companies.get(company_id)
            if company is None:
                raise KeyError(f"no company {company_id}")
            stamp = timestamp or utc_stamp()
            if action in ATTACHMENT_ACTIONS:
                return self._change_attachments(company, action, count, ids, stamp)
            if action == "add":
                changed = [self._add(company, stamp) for _ in range(count)]
            elif action == "restamp":
                changed = list(company.customers)
                for cid in changed:
                    self.put_customer(company, {**company.customers[cid], "modifiedDate": stamp})
            else:
                targets = ids if ids is not None else self._pick(company, count)
                changed = [self._edit(company, cid, action, stamp) for cid in targets]
            self.mark_synced(company, stamp)
            return changed

    def _change_attachments(
        self, company: Company, action: str, count: int, ids: list[str] | None, stamp: str
    ) -> list[str]:
        """Add (`attach`) or remove (`detach`) one attachment per customer; return their ids.

        The customers are `ids`, or `count` picked at random: any customer to attach to, one
        with an attachment to detach from. `attach` adds a new attachment created at `stamp` on
        the company's first accounting connection; `detach` removes one attachment, picked at
        random, from the first accounting connection holding any. Nothing else changes: no
        customer record, no `modifiedDate`, no last sync. Either every customer changes or none.

        Raises:
            KeyError: a customer in `ids` does not exist, has no attachment to detach, or the
                company has no accounting connection to attach to.
        """
        with self.lock:
            connection_ids = [c.id for c in company.accounting_connections]
            if ids is not None:
                targets = list(ids)
            elif action == "attach":
                targets = self._pick(company, count)
            else:
                holders = {
                    cid
                    for (xid, cid), files in company.attachments.items()
                    if files and xid in connection_ids
                }
                candidates = sorted(holders & company.customers.keys())
                targets = self._rng.sample(candidates, min(count, len(candidates)))
            pending: dict[tuple[str, str], list[Attachment]] = {}

            def files_of(key: tuple[str, str]) -> list[Attachment]:
                return pending[key] if key in pending else company.attachments.get(key, [])

            for customer_id in targets:
                if customer_id not in company.customers:
                    raise KeyError(f"no customer {customer_id!r} in company {company.id}")
                if action == "attach":
                    if not connection_ids:
                        raise KeyError(f"company {company.id} has no accounting connection to attach to")
                    key = (connection_ids[0], customer_id)
                    pending[key] = [*files_of(key), new_attachment(self._rng, stamp)]
                    continue
                holding = next(
                    ((xid, customer_id) for xid in connection_ids if files_of((xid, customer_id))), None
                )
                if holding is None:
                    raise KeyError(
                        f"customer {customer_id!r} in company {company.id} has no attachment to detach"
                    )
                files = list(files_of(holding))
                del files[self._rng.randrange(len(files))]
                pending[holding] = files
            for key, files in pending.items():  # new lists: a listing being served keeps its own
                if files:
                    company.attachments[key] = files
                else:
                    company.attachments.pop(key, None)
            return targets

    def link_connection(self, company_id: str, platform_name: str) -> Connection:
        """Link one more accounting platform to a company, as its user does through Codat's Link flow.

        The new connection is `Linked` and not yet synced. Nothing else changes: Codat keeps one
        set of customers per company, so the company's customers stay as they are, and the new
        connection holds no attachments. A push may name it from now on.

        Raises:
            KeyError: No such company.
            ValueError: No such accounting platform.
        """
        with self.lock:
            company = self.companies.get(company_id)
            if company is None:
                raise KeyError(f"no company {company_id}")
            connection = new_connection(self._rng, platform_name, utc_stamp())
            company.connections = [*company.connections, connection]  # a listing being served keeps its own
            return connection

    def edit_in_platform(self, company_id: str, ids: list[str]) -> None:
        """Mark customers as changed in the accounting platform since Codat last read them.

        An update of such a customer fails unless it is forced; Codat's next sync clears it.
        """
        with self.lock:
            company = self.companies.get(company_id)
            if company is None:
                raise KeyError(f"no company {company_id}")
            for customer_id in ids:
                if customer_id not in company.customers:
                    raise KeyError(f"no customer {customer_id!r} in company {company_id}")
                self.platform_changed.add((company_id, customer_id))

    def _pick(self, company: Company, count: int) -> list[str]:
        candidates = sorted(company.customers)
        return self._rng.sample(candidates, min(count, len(candidates)))

    def _add(self, company: Company, stamp: str) -> str:
        record = new_customer(self._rng, stamp)
        self.put_customer(company, record)
        return str(record["id"])

    def _edit(self, company: Company, customer_id: str, action: str, stamp: str) -> str:
        record = company.customers.get(customer_id)
        if record is None:
            raise KeyError(f"no customer {customer_id!r} in company {company.id}")
        record = {**record, "modifiedDate": stamp}
        if action == "delete":
            record["metadata"] = {"isDeleted": True}
        else:
            record["customerName"] = f"{record.get('customerName') or 'Customer'} (rev {stamp})"
            record["phone"] = f"+44 20 {self._rng.randint(1000, 9999)} {self._rng.randint(1000, 9999)}"
        self.put_customer(company, record)
        return customer_id


class Mutator:
    """Keeps mutating customers at a fixed rate in a background thread, for a bounded time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = 0

    def start(self, company_ids: list[str], rate: float, duration: float, action: str) -> None:
        """Change one customer every 1/rate seconds, cycling over companies, for `duration` s."""
        self.stop()
        self._stop = threading.Event()
        self.changes = 0
        self._thread = threading.Thread(
            target=self._run, args=(company_ids, rate, duration, action), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop mutating and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self, company_ids: list[str], rate: float, duration: float, action: str) -> None:
        interval = 1.0 / rate
        deadline = datetime.now(UTC).timestamp() + duration
        turn = 0
        while not self._stop.is_set() and datetime.now(UTC).timestamp() < deadline:
            company_id = company_ids[turn % len(company_ids)]
            turn += 1
            try:
                if self._store.mutate(company_id, action, count=1):  # `detach` may find nothing
                    self.changes += 1
            except (KeyError, ValueError):
                return
            self._stop.wait(interval)
