"""Builds customer records in every shape the Codat examples show, from a seeded random source."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from connector.emulator import names as n
from connector.emulator.model import Json

# Zone-less dates are written as UTC wall time: Codat's cache stamps are UTC.
OFFSETS = (("+01:00", 3600), ("-05:00", -18000), ("+05:30", 19800))
ZERO_DATE = "0001-01-01T00:00:00"
SOURCE_DATE_FLOOR = 1262304000  # 2010-01-01T00:00:00Z
POOL_BITS = 10
EARLIEST = 1546387200  # 2019-01-02T00:00:00Z: no generated modifiedDate is earlier

# How an optional field is written: a value, "", null, or left out.
VALUE, EMPTY, NULL, MISSING = 0, 1, 2, 3

SCALARS = (
    "customerName",
    "contactName",
    "emailAddress",
    "defaultCurrency",
    "phone",
    "registrationNumber",
    "taxNumber",
)
_ADDRESS_LINES = ("line1", "line2", "city", "region", "country", "postalCode")
_EMPTY_ADDRESS = dict.fromkeys(_ADDRESS_LINES, "")


def format_instant(seconds: int, ticks: int = 0, form: int = 0) -> str:
    """Write an instant (Unix seconds plus 100 ns ticks) in one of Codat's date forms.

    Args:
        seconds: Whole Unix seconds of the instant.
        ticks: Sub-second part in 100 ns units (0..9_999_999).
        form: 0 `...Z`, 1 zone-less, 2.. an offset from `OFFSETS`; the same instant in every form.

    Returns:
        The ISO 8601 text; a non-zero `ticks` is always written with 7 fractional digits.
    """
    suffix = "Z"
    if form == 1:
        suffix = ""
    elif form >= 2:
        suffix, shift = OFFSETS[(form - 2) % len(OFFSETS)]
        seconds += shift
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if ticks:
        text += f".{ticks:07d}"
    return text + suffix


def random_form(rng: random.Random) -> int:
    """Pick a date form for `format_instant`: mostly `...Z`, else zone-less or an offset."""
    draw = rng.random()
    if draw < 0.72:
        return 0
    if draw < 0.86:
        return 1
    return 2 + int(rng.random() * len(OFFSETS))


def uuid_text(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng` (no OS entropy, so it is reproducible)."""
    h = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def source_modified_date(rng: random.Random, modified: int) -> str | None:
    """A `sourceModifiedDate` up to three years before `modified`, or null, or year one."""
    draw = rng.random()
    if draw < 0.05:
        return None
    if draw < 0.09:
        return ZERO_DATE
    seconds = max(SOURCE_DATE_FLOOR, modified - int(rng.random() * 94_608_000))
    return format_instant(seconds, 0, 1 if rng.random() < 0.45 else 0)


def pick(rng: random.Random, items: tuple[Any, ...]) -> Any:
    """One item of `items`, drawn from `rng`."""
    return items[int(rng.random() * len(items))]


def business_name(rng: random.Random) -> str:
    """A business's name (or, a third of the time, a person's), as customers and companies carry."""
    if rng.random() < 0.33:
        return _person(rng)[0]
    words = (pick(rng, n.COMPANY_WORDS), pick(rng, n.COMPANY_KINDS), pick(rng, n.COMPANY_SUFFIXES))
    return " ".join(w for w in words if w)


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = pick(rng, n.FIRST_NAMES), pick(rng, n.LAST_NAMES)
    email = f"{first}.{last}@{pick(rng, n.EMAIL_DOMAINS)}".replace(" ", "").replace("'", "")
    return f"{first} {last}", email


def _phone_number(rng: random.Random) -> str:
    digits = rng.getrandbits(40) % 10_000_000_000
    style = int(rng.random() * 4)
    if style == 0:
        return f"0{digits // 1_000_000 % 10_000:04d} {digits % 1_000_000:06d}"
    if style == 1:
        return f"0800 {digits // 10_000 % 1000:03d} {digits % 10_000:04d}"
    if style == 2:
        return f"+1 ({digits // 10_000_000:03d}) 555-{digits % 10_000:04d}"
    return f"+44 20 {digits // 10_000 % 10_000:04d} {digits % 10_000:04d}"


def _letters(number: int) -> str:
    return chr(65 + number % 26) + chr(65 + number // 26 % 26)


def _address(rng: random.Random) -> Json:
    city, region, country, code = pick(rng, n.CITIES)
    number = rng.getrandbits(16)
    return {
        "type": "Billing",
        "line1": f"{pick(rng, ('Suite', 'Apt.', 'Unit'))} {number % 900 + 100}",
        "line2": f"{number} {pick(rng, n.STREET_NAMES)}",
        "city": city,
        "region": region,
        "country": country if rng.random() < 0.7 else code,
        "postalCode": f"{_letters(number)}{number % 99} {number % 9}{_letters(number >> 8)}",
    }


def _numbers(rng: random.Random) -> tuple[str, str]:
    """A registration number and a tax number."""
    number = rng.getrandbits(32)
    registration = f"NI{number:08X}" if number & 1 else f"{number % 100_000_000:08d}"
    tax = f"GB{number % 1_000_000_000:09d}" if number & 2 else f"{number}.{number % 999_983}"
    return registration, tax


def _kinds(rng: random.Random) -> list[int]:
    """How each optional field of one customer is written, by the customer's overall shape."""
    draw = rng.random()
    count = len(SCALARS) + 2
    if draw < 0.55:
        return [VALUE] * count
    if draw < 0.65:
        return [EMPTY] * count
    if draw < 0.72:
        return [NULL] * count
    if draw < 0.82:
        return [VALUE if rng.random() < 0.5 else MISSING for _ in range(count)]
    return [int(rng.random() * 4) for _ in range(count)]


def _metadata(rng: random.Random, record: Json) -> None:
    """Leave `metadata` out, or null, or `isDeleted` null, false or (7%) true."""
    draw = rng.random()
    if draw < 0.22:
        return
    if draw < 0.24:
        record["metadata"] = None
    elif draw < 0.27:
        record["metadata"] = {"isDeleted": None}
    else:
        record["metadata"] = {"isDeleted": draw >= 0.93}


def _supplemental(rng: random.Random, record: Json) -> None:
    """Leave `supplementalData` out, or null, or its content null, or a map of maps."""
    draw = rng.random()
    if draw < 0.85:
        return
    if draw < 0.88:
        record["supplementalData"] = None
    elif draw < 0.91:
        record["supplementalData"] = {"content": None}
    else:
        count = rng.getrandbits(8)
        content = {
            "orders": {"count": count % 17, "tags": ["a", "vip"][: count % 3], "last": None},
            pick(rng, n.SUPPLEMENTAL_KEYS): {"score": count / 7, "active": bool(count & 1)},
        }
        record["supplementalData"] = {"content": content}


def _status(draw: float) -> str:
    return "Active" if draw < 0.85 else ("Archived" if draw < 0.95 else "Unknown")


class CustomerFactory:
    """Builds customers fast from pools of names, addresses and numbers drawn once up front."""

    def __init__(self, rng: random.Random, pool_bits: int = POOL_BITS) -> None:
        self.bits = pool_bits
        size = 1 << pool_bits
        self.people = [_person(rng) for _ in range(size)]
        self.businesses = [business_name(rng) for _ in range(size)]
        self.addresses = [_address(rng) for _ in range(size)]
        self.phones = [_phone_number(rng) for _ in range(size)]
        self.numbers = [_numbers(rng) for _ in range(size)]

    def build(
        self,
        rng: random.Random,
        customer_id: str,
        modified_date: str,
        modified: int | None = None,
        source: str | None = None,
    ) -> Json:
        """Build one customer whose shape (present, null, empty or missing fields) is random.

        Args:
            rng: The random source of this record's choices.
            customer_id: The record's `id`.
            modified_date: The `modifiedDate` text.
            modified: The same instant in Unix seconds; None builds a plain record instead: every
                field filled, `Active`, not deleted, `sourceModifiedDate` equal to `modifiedDate`.
            source: The `sourceModifiedDate` text or None; left out of 3% of records.

        Returns:
            The record as Codat serves it, camelCase keys.
        """
        plain = modified is None
        kinds = [VALUE] * (len(SCALARS) + 2) if plain else _kinds(rng)
        if kinds[3] == EMPTY:  # an ISO 4217 code or null, never "" (as in the examples)
            kinds[3] = VALUE
        bits = self.bits
        person, email = self.people[rng.getrandbits(bits)]
        name = self.businesses[rng.getrandbits(bits)] if rng.random() < 0.7 else person
        registration, tax = self.numbers[rng.getrandbits(bits)]
        currency = None if rng.random() < 0.08 and not plain else pick(rng, n.CURRENCIES)
        phone = self.phones[rng.getrandbits(bits)]
        values = (name, person, email, currency, phone, registration, tax)
        record: Json = {"id": customer_id}
        for key, kind, value in zip(SCALARS, kinds, values, strict=False):
            if kind != MISSING:
                record[key] = value if kind == VALUE else ("" if kind == EMPTY else None)
        record["addresses"] = self._items(rng, kinds[-2], lambda: self._address(rng, kinds[-2]))
        record["contacts"] = self._items(rng, kinds[-1], lambda: self._contact(rng, kinds[-1], modified))
        record["status"] = "Active" if plain else _status(rng.random())
        record["modifiedDate"] = modified_date
        if plain:
            record["sourceModifiedDate"] = modified_date
            record["metadata"] = {"isDeleted": False}
            return record
        if rng.random() >= 0.03:
            record["sourceModifiedDate"] = source
        _metadata(rng, record)
        _supplemental(rng, record)
        return record

    def _items(self, rng: random.Random, kind: int, make: Callable[[], Json]) -> list[Json] | None:
        """An `addresses` or `contacts` array: null, empty, or one to five items."""
        if kind == NULL and rng.random() < 0.5:
            return None
        if kind == EMPTY and rng.random() < 0.5:
            return []
        draw = rng.random()
        count = 1 if draw < 0.72 else (2 if draw < 0.92 else 3 + int(rng.random() * 3))
        return [make() for _ in range(count)]

    def _address(self, rng: random.Random, kind: int) -> Json:
        draw = rng.random()
        address_type = "Billing" if draw < 0.6 else ("Delivery" if draw < 0.85 else "Unknown")
        if kind == EMPTY:
            return {"type": address_type, **_EMPTY_ADDRESS}
        template = self.addresses[rng.getrandbits(self.bits)]
        if kind == MISSING:
            return {"type": address_type, "country": template["country"]}
        address = {**template, "type": address_type}
        if kind == NULL:
            address["line2"] = address["region"] = None
        return address

    def _contact(self, rng: random.Random, kind: int, modified: int | None) -> Json:
        if kind == EMPTY:
            contact: Json = {"name": "", "email": "", "phone": []}
        else:
            name, email = self.people[rng.getrandbits(self.bits)]
            contact = {"name": name, "email": email if rng.random() < 0.85 else None}
            contact["phone"] = None if kind == NULL else self._phones(rng)
        if rng.random() < 0.6:
            contact["address"] = self._address(rng, kind)
        draw = rng.random()
        contact["status"] = "Active" if draw < 0.85 else ("Unknown" if draw < 0.95 else "Archived")
        if modified is not None and rng.random() < 0.1:
            earlier = max(EARLIEST, modified - int(rng.random() * 8_000_000))
            contact["modifiedDate"] = format_instant(earlier)
        return contact

    def _phones(self, rng: random.Random) -> list[Json]:
        """No phone, one to three, or (6%) one of every type; a few numbers are null."""
        draw = rng.random()
        if draw < 0.4:
            return []
        types = n.PHONE_TYPES
        if draw >= 0.46:
            types = tuple(pick(rng, n.PHONE_TYPES) for _ in range(1 + int(rng.random() * 3)))
        return [
            {
                "number": None if rng.random() < 0.06 else self.phones[rng.getrandbits(self.bits)],
                "type": phone_type,
            }
            for phone_type in types
        ]


def new_customer(rng: random.Random, modified_date: str) -> Json:
    """One fresh, fully populated, not deleted customer with a UUID id, as a new sync would add.

    Args:
        rng: The random source.
        modified_date: The `modifiedDate` (and `sourceModifiedDate`) to stamp it with.

    Returns:
        The record as Codat serves it.
    """
    return CustomerFactory(rng, pool_bits=1).build(rng, uuid_text(rng), modified_date)
