"""Deterministic generator of the emulator's account: companies, connections, customers, files."""

from __future__ import annotations

import base64
import calendar
import hashlib
import random
import time
import uuid
from collections.abc import Callable
from itertools import count

from connector.emulator import names as n
from connector.emulator.customer_records import (
    EARLIEST,
    CustomerFactory,
    business_name,
    format_instant,
    new_customer,
    pick,
    random_form,
    source_modified_date,
    uuid_text,
)
from connector.emulator.model import (
    STATUS_COMPLETE,
    STATUS_FETCHING,
    STATUS_NEVER_READ,
    Attachment,
    Company,
    Connection,
    gc_paused,
)

__all__ = [
    "SPECIAL_STATES",
    "attachment_bytes",
    "company_states",
    "generate_account",
    "new_attachment",
    "new_connection",
    "new_customer",
    "split_customers",
]

DAY = 86_400
FIRST_INSTANT = EARLIEST
LAST_CREATED = 1703980800  # 2023-12-31T00:00:00Z
FIRST_LAST_SYNC = 1717200000  # 2024-06-01T00:00:00Z
LAST_INSTANT = 1764460800  # 2025-11-30T00:00:00Z: no generated date is later
ZIPF_EXPONENT = 1.1
MIN_COMPANIES_FOR_STATES = 5
FETCHING_EXTRA_CUSTOMERS = 5
HOSTILE_ID_EVERY = 61
DOT_ID_AT = 36  # a dot id replaces the generated id at this index of every 61 (hostile ones: 1)
HOSTILE_ATTACHMENT_ID_EVERY = 25  # the 3rd of every 25 attachments of a company has a hostile id
MAX_ATTACHMENT_SIZE = 65_536

NORMAL = "normal"
# Appended, in this order, after the normal companies once there are at least 5 companies.
SPECIAL_STATES = ("never_read", "no_accounting", "two_connections", "fetching")

_MAGIC = {
    "application/pdf": b"%PDF-1.7\n",
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff\xe0",
    "application/zip": b"PK\x03\x04",
}


def company_states(companies: int) -> list[str]:
    """The state of each company index: `normal`, or one of `SPECIAL_STATES` for the last four.

    With 5 or more companies, index `companies - 4` is never read (`NotRead`, no customers),
    `companies - 3` has only a Banking connection (`NotRead`, no customers), `companies - 2` has
    an accounting and a Banking connection (otherwise normal), and `companies - 1` has a read
    still running (`Fetching`) over a few customers from its previous read. Fewer companies are
    all normal.
    """
    if companies < MIN_COMPANIES_FOR_STATES:
        return [NORMAL] * companies
    return [NORMAL] * (companies - len(SPECIAL_STATES)) + list(SPECIAL_STATES)


def split_customers(total: int, companies: int) -> list[int]:
    """Split `total` customers over `companies` by a Zipf law: the first is largest.

    Every company gets at least one customer when `total >= companies`; the sizes sum to `total`.
    """
    if companies <= 0:
        return []
    base = 1 if total >= companies else 0
    rest = total - base * companies
    weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(companies)]
    shares = [rest * w / sum(weights) for w in weights]
    sizes = [base + int(share) for share in shares]
    by_remainder = sorted(range(companies), key=lambda i: (int(shares[i]) - shares[i], i))
    for index in by_remainder[: total - sum(sizes)]:
        sizes[index] += 1
    return sizes


def generate_account(seed: int, companies: int, customers: int) -> list[Company]:
    """Build `companies` companies holding `customers` customers in total, deterministically.

    The customers are split over the companies that can hold them (normal ones and the one with
    two connections) by `split_customers`; the `Fetching` company holds
    `FETCHING_EXTRA_CUSTOMERS` more, outside that total. See `company_states` for which index gets
    which state. Same arguments, same account; no clock or OS entropy is read.

    Args:
        seed: Seed of the one random source everything is drawn from.
        companies: Number of companies.
        customers: Number of customers over the companies that hold them.

    Returns:
        The companies in index order.
    """
    with gc_paused():
        return _generate(random.Random(seed), companies, customers)


def _generate(rng: random.Random, companies: int, customers: int) -> list[Company]:
    states = company_states(companies)
    regular = [i for i, state in enumerate(states) if state in (NORMAL, "two_connections")]
    sizes = dict(zip(regular, split_customers(customers, len(regular)), strict=True))
    sizes.update({i: FETCHING_EXTRA_CUSTOMERS for i, s in enumerate(states) if s == "fetching"})
    platforms = _platform_order(rng)
    factory = CustomerFactory(random.Random(rng.getrandbits(64)))
    account = []
    for index, state in enumerate(states):
        company_rng = random.Random(rng.getrandbits(64))
        platform = platforms[index % len(platforms)]
        company = _company(company_rng, state, platform)
        _fill_customers(company_rng, factory, company, platform, sizes.get(index, 0))
        account.append(company)
    return account


def _platform_order(rng: random.Random) -> list[n.Platform]:
    """All platforms in a weighted random order, so that small accounts mix platforms."""
    return sorted(n.PLATFORMS, key=lambda p: -(rng.random() ** (1.0 / p.weight)))


def _company(rng: random.Random, state: str, platform: n.Platform) -> Company:
    created = FIRST_INSTANT + int(rng.random() * (LAST_CREATED - FIRST_INSTANT))
    last = FIRST_LAST_SYNC + int(rng.random() * (LAST_INSTANT - FIRST_LAST_SYNC))
    connections = []
    if state != "no_accounting":
        synced = None if state == "never_read" else last
        connections.append(_connection(rng, platform.name, platform.key, created, synced))
    if state in ("no_accounting", "two_connections"):
        bank_name, bank_key = n.BANKING_PLATFORMS[int(rng.random() * len(n.BANKING_PLATFORMS))]
        connections.append(_connection(rng, bank_name, bank_key, created, last, "Banking"))
    read = state not in ("never_read", "no_accounting")
    company = Company(
        id=uuid_text(rng),
        name=business_name(rng),
        description=None if rng.random() < 0.3 else pick(rng, n.COMPANY_DESCRIPTIONS),
        platform="" if state == "no_accounting" else platform.name,
        created=format_instant(created),
        last_sync=None if state == "never_read" else format_instant(last),
        connections=connections,
        customers_status=STATUS_FETCHING if state == "fetching" else STATUS_COMPLETE,
        customers_last_successful_sync=format_instant(last) if read else None,
    )
    if not read:
        company.customers_status = STATUS_NEVER_READ
    return company


def _connection(
    rng: random.Random,
    name: str,
    key: str,
    created: int,
    last_sync: int | None,
    source_type: str = "Accounting",
) -> Connection:
    return Connection(
        id=uuid_text(rng),
        integration_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"codat-integration:{key}")),
        integration_key=key,
        source_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"codat-source:{key}")),
        platform_name=name,
        source_type=source_type,
        status="Linked",
        created=format_instant(created + int(rng.random() * 3 * DAY)),
        last_sync=None if last_sync is None else format_instant(last_sync),
    )


def new_connection(rng: random.Random, platform_name: str, stamp: str) -> Connection:
    """A new `Linked` accounting connection to `platform_name`, created at `stamp` and never synced.

    Raises:
        ValueError: `platform_name` is no accounting platform the emulator knows.
    """
    platform = next((p for p in n.PLATFORMS if p.name == platform_name), None)
    if platform is None:
        known = ", ".join(p.name for p in n.PLATFORMS)
        raise ValueError(f"no accounting platform {platform_name!r}; use one of {known}")
    connection = _connection(rng, platform.name, platform.key, _seconds(stamp), None)
    connection.created = stamp
    return connection


def _fill_customers(
    rng: random.Random,
    factory: CustomerFactory,
    company: Company,
    platform: n.Platform,
    size: int,
) -> None:
    """Add `size` customers, 10-20% of them stamped at one shared instant, and their files.

    Every `modifiedDate` lies between the day after the company was created and its last sync.
    """
    start = _seconds(company.created) + DAY
    end = _seconds(company.customers_last_successful_sync or company.created)
    batch = end - int(rng.random() * min(180 * DAY, end - start))
    batch_share = 0.10 + rng.random() * 0.10
    next_id = _id_factory(rng, platform.id_style)
    hostile, dots = count(), count()
    connection_ids = [c.id for c in company.accounting_connections]
    files = _FileNamer()
    customers = company.customers
    for index in range(size):
        customer_id = _ranked(n.HOSTILE_IDS, next(hostile)) if index % HOSTILE_ID_EVERY == 1 else next_id()
        if index % HOSTILE_ID_EVERY == DOT_ID_AT:  # after next_id(), so the rest stays the same
            customer_id = _ranked(n.DOT_IDS, next(dots))
        while customer_id in customers:
            customer_id = next_id()
        if rng.random() < batch_share:
            seconds, ticks, form = batch, 0, (0 if rng.random() < 0.8 else random_form(rng))
        else:
            seconds = start + int(rng.random() * (end - start))
            ticks = rng.getrandbits(24) % 10_000_000 if rng.random() < 0.1 else 0
            form = random_form(rng)
        modified = format_instant(seconds, ticks, form)
        source = source_modified_date(rng, seconds)
        customers[customer_id] = factory.build(rng, customer_id, modified, seconds, source)
        for connection_id in connection_ids:
            attachments = _attachments(rng, files, start, end)
            if attachments:
                company.attachments[(connection_id, customer_id)] = attachments


def _seconds(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def _ranked(words: tuple[str, ...], rank: int) -> str:
    """The `rank`-th hostile id: each word as it is, then each with ` #rank`, so ids stay unique."""
    base = words[rank % len(words)]
    return base if rank < len(words) else f"{base} #{rank}"


def _id_factory(rng: random.Random, style: str) -> Callable[[], str]:
    """A source of customer ids in the style of one platform (see the examples' ids)."""
    if style == "uuid":
        return lambda: uuid_text(rng)
    if style == "hex32":
        return lambda: f"{rng.getrandbits(128):032x}"
    steps = {"small_int": 2, "int": 4, "int6": 30, "int8": 400, "zoho": 5000, "qbd": 3, "code": 1}
    starts = {"int": 1000, "int6": 600_000, "int8": 9_000_000, "zoho": 104_957_000_000_030_000}
    state = [starts.get(style, 0) + int(rng.random() * 150)]
    business = uuid_text(rng)
    prefix = "".join(chr(65 + rng.getrandbits(8) % 26) for _ in range(2))

    def next_id() -> str:
        state[0] += 1 + int(rng.random() * steps.get(style, 1))
        value = state[0]
        if style == "qbd":
            return f"{value:X}0000-{1_000_000_000 + rng.getrandbits(30)}"
        if style == "code":
            return f"{prefix}{chr(65 + value // 1000 % 26)}{value % 1000:03d}{value // 26000 or ''}"
        if style == "token":
            raw = f"Business:{business};Customer:{32_000_000 + value * 7}"
            return base64.b64encode(raw.encode()).decode()
        return str(value)

    return next_id


class _FileNamer:
    """Names attachments and picks their ids, cycling through every hostile name and id.

    A namer made with `hostile=False` keeps every drawn id and gives only plain names.
    """

    def __init__(self, hostile: bool = True) -> None:
        self.hostile_names = hostile
        self.hostile = count()
        self.made = count()

    def attachment_id(self, drawn: str) -> str:
        """The next attachment's id: `drawn`, or a hostile one in place of the 3rd of every 25."""
        index = next(self.made)
        if not self.hostile_names or index % HOSTILE_ATTACHMENT_ID_EVERY != 2:
            return drawn
        return _ranked(n.HOSTILE_ATTACHMENT_IDS, index // HOSTILE_ATTACHMENT_ID_EVERY)

    def name(self, rng: random.Random, extension: str) -> str:
        """A file name ending in `extension`; now and then a hostile one, if this namer gives them."""
        if rng.random() < 0.08 and self.hostile_names:
            names = n.HOSTILE_ATTACHMENT_NAMES
            return names[next(self.hostile) % len(names)]
        stem = n.ATTACHMENT_STEMS[int(rng.random() * len(n.ATTACHMENT_STEMS))]
        return f"{stem}-{rng.getrandbits(20)}{extension}"


def _attachments(rng: random.Random, files: _FileNamer, start: int, end: int) -> list[Attachment]:
    """Most customers have no file or one; a few have three to six."""
    draw = rng.random()
    if draw < 0.78:
        return []
    total = 1 if draw < 0.93 else (2 if draw < 0.97 else 3 + int(rng.random() * 4))
    return [
        _attachment(rng, files, lambda: format_instant(start + int(rng.random() * (end - start))))
        for _ in range(total)
    ]


def new_attachment(rng: random.Random, stamp: str) -> Attachment:
    """A new attachment with a plain name and a fresh uuid id, created at `stamp`.

    Built like the generated ones (type, size and content drawn from `rng`), for a file that a
    user adds to a customer in the accounting platform.
    """
    return _attachment(rng, _FileNamer(hostile=False), lambda: stamp)


def _attachment(rng: random.Random, files: _FileNamer, created: Callable[[], str]) -> Attachment:
    """One attachment drawn from `rng`; `created` gives its `dateCreated` (drawn after the type)."""
    content_type, extension = n.ATTACHMENT_TYPES[int(rng.random() * len(n.ATTACHMENT_TYPES))]
    date_created = created()
    return Attachment(
        id=files.attachment_id(uuid_text(rng)),  # drawn even when replaced: the rest stays the same
        name=files.name(rng, extension),
        content_type=content_type,
        date_created=date_created,
        file_size=min(MAX_ATTACHMENT_SIZE, int(200 * 2 ** (rng.random() * 8.4))),
        report_size=rng.random() >= 0.1,
        include_when_sent=rng.random() < 0.5,
        content_seed=rng.getrandbits(63),
    )


def attachment_bytes(attachment: Attachment) -> bytes:
    """The content of an attachment: exactly `file_size` bytes derived from its `content_seed`.

    Binary types start with their usual magic number; `text/*` types are ASCII lines.
    """
    size = attachment.file_size
    digest = hashlib.shake_256(str(attachment.content_seed).encode())
    head = _MAGIC.get(attachment.content_type, b"")
    if attachment.content_type.startswith("text/"):
        hexed = digest.hexdigest(1024)
        block = "".join(f"{hexed[i : i + 63]}\n" for i in range(0, len(hexed), 63)).encode()
    else:
        block = digest.digest(4096)
    return (head + block * (size // len(block) + 1))[:size]
