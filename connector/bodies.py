"""A page of Codat's customers read from its bytes: into Arrow where that is exact, else into Python objects.

Parsing a 5,000-record page into Python dicts and then into Arrow costs several times what
Arrow's own JSON reader costs to read it into columns. Arrow reads every page whose records
have only the fields the connector maps, each of the JSON type Codat documents (text as text,
`isDeleted` a boolean, lists as lists of objects): almost every page Codat serves. Any other page
(a field the connector does not know, a number where Codat documents text, a null in a list) is
read as Python objects and built as before (`connector.batches.PageBuilder.build`), so that
nothing is dropped or bent differently. Two things Arrow cannot give are taken from the page's
own bytes with msgspec, which finds a value's text without building it: `supplementalData`
(any JSON, kept as its text) and a record exactly as sent (`record_hash` of the records at the
cursor).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from typing_extensions import override

from connector.batches import (
    CUSTOMER_STRUCT,
    TEXT,
    CustomerPage,
    PageBuilder,
    json_or_none,
    modified_dates,
    parse_dates,
)
from connector.records import Json

SUPPLEMENTAL = "supplementalData"
# A record as Arrow reads it: the mapped fields, with `modifiedDate` (the paginator and the
# cursor read it) beside them.
RECORD_STRUCT = pa.struct([*CUSTOMER_STRUCT, pa.field("modifiedDate", TEXT)])
_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema([("results", pa.list_(RECORD_STRUCT)), ("totalResults", pa.int64())]),
    unexpected_field_behavior="infer",  # so that a field Arrow was not told of shows, and is not lost
)


class _RawResults(msgspec.Struct):
    results: list[msgspec.Raw] | None = None


class _RawSupplemental(msgspec.Struct):
    supplementalData: msgspec.Raw = msgspec.Raw(b"null")  # noqa: N815 - Codat's name


_RESULTS = msgspec.json.Decoder(_RawResults)
_SUPPLEMENTAL = msgspec.json.Decoder(_RawSupplemental)


class CustomerBody:
    """One answer of the customers listing: Codat's `totalResults` and the page's records."""

    total: int

    def __len__(self) -> int:
        raise NotImplementedError

    def ids(self) -> list[str]:
        """Each record's `id` as text (`None` where it has none), to recognise a page sent twice."""
        raise NotImplementedError

    def modified_text(self, index: int) -> Any:
        """The `modifiedDate` of one record, as sent."""
        raise NotImplementedError

    def stamps(self) -> list[tuple[Any, str]]:
        """Each record's `modifiedDate` as sent and its `id` as text, in the page's order."""
        raise NotImplementedError

    def modified(self) -> pa.Array:
        """The records' `modifiedDate`s as UTC timestamps (NULL where none can be read)."""
        raise NotImplementedError

    def record(self, index: int) -> Json:
        """One record exactly as Codat sent it."""
        raise NotImplementedError

    def sent(self) -> list[Json]:
        """Every record exactly as Codat sent it."""
        return [self.record(i) for i in range(len(self))]

    def select(self, keep: Sequence[bool]) -> CustomerBody:
        """The page with only the records `keep` marks."""
        raise NotImplementedError

    def build(
        self, builder: PageBuilder, company_id: str, extracted_at: datetime, load_id: str, modified: pa.Array
    ) -> CustomerPage:
        """The page's tables (`PageBuilder`)."""
        raise NotImplementedError

    def release(self) -> None:
        """Let go of the records now, not when the next answer replaces this one."""


class JsonBody(CustomerBody):
    """A page read by Python's `json` (one Arrow could not read exactly)."""

    def __init__(self, body: Json) -> None:
        self.total = int(body.get("totalResults") or 0)
        self.records: list[Json] = body.get("results") or []

    @classmethod
    def of(cls, records: list[Json]) -> JsonBody:
        """A page of these records (and as many in Codat's total)."""
        return cls({"results": records, "totalResults": len(records)})

    def __len__(self) -> int:
        return len(self.records)

    @override
    def ids(self) -> list[str]:
        return [str(r.get("id")) for r in self.records]

    @override
    def modified_text(self, index: int) -> Any:
        return self.records[index].get("modifiedDate")

    @override
    def stamps(self) -> list[tuple[Any, str]]:
        return [(r.get("modifiedDate"), str(r.get("id"))) for r in self.records]

    @override
    def modified(self) -> pa.Array:
        return modified_dates(self.records)

    @override
    def record(self, index: int) -> Json:
        return self.records[index]

    @override
    def select(self, keep: Sequence[bool]) -> CustomerBody:
        records = [r for r, kept in zip(self.records, keep, strict=True) if kept]
        return JsonBody({"results": records, "totalResults": self.total})

    @override
    def build(
        self, builder: PageBuilder, company_id: str, extracted_at: datetime, load_id: str, modified: pa.Array
    ) -> CustomerPage:
        return builder.build(self.records, company_id, extracted_at, load_id, modified)

    @override
    def release(self) -> None:
        self.records.clear()


class ArrowBody(CustomerBody):
    """A page Arrow read into columns: its records a `RECORD_STRUCT` array (and `supplementalData`)."""

    def __init__(self, records: pa.StructArray, total: int, raws: list[msgspec.Raw]) -> None:
        self.records = records
        self.total = total
        self.raws = raws  # each record's JSON text as sent

    def __len__(self) -> int:
        return len(self.records)

    @override
    def ids(self) -> list[str]:
        return [str(i) for i in pc.struct_field(self.records, "id").to_pylist()]

    @override
    def modified_text(self, index: int) -> Any:
        return pc.struct_field(self.records, "modifiedDate")[index].as_py()

    @override
    def stamps(self) -> list[tuple[Any, str]]:
        sent = pc.struct_field(self.records, "modifiedDate").to_pylist()
        return list(zip(sent, self.ids(), strict=True))

    @override
    def modified(self) -> pa.Array:
        return parse_dates(pc.struct_field(self.records, "modifiedDate"))

    @override
    def record(self, index: int) -> Json:
        value: Json = json.loads(bytes(self.raws[index]))
        return value

    @override
    def select(self, keep: Sequence[bool]) -> CustomerBody:
        raws = [raw for raw, kept in zip(self.raws, keep, strict=True) if kept]
        return ArrowBody(self.records.filter(pa.array(keep, pa.bool_())), self.total, raws)

    def supplemental(self) -> pa.Array:
        """Each record's `supplementalData` as its JSON text (NULL where it is null or absent)."""
        if SUPPLEMENTAL not in self.records.type.names:
            return pa.nulls(len(self.records), TEXT)
        present = pc.is_valid(pc.struct_field(self.records, SUPPLEMENTAL)).to_pylist()
        if not any(present):
            return pa.nulls(len(self.records), TEXT)
        texts: list[str | None] = [None] * len(self.records)
        for index, there in enumerate(present):
            if there:
                raw = _SUPPLEMENTAL.decode(self.raws[index]).supplementalData
                texts[index] = json_or_none(json.loads(bytes(raw)))
        return pa.array(texts, TEXT)

    @override
    def build(
        self, builder: PageBuilder, company_id: str, extracted_at: datetime, load_id: str, modified: pa.Array
    ) -> CustomerPage:
        supplemental = self.supplemental()
        return builder.build_read(self.records, supplemental, company_id, extracted_at, load_id, modified)

    @override
    def release(self) -> None:
        self.raws = []


def read_customer_body(content: bytes) -> CustomerBody | Any:
    """A customers page from its bytes: Arrow's columns where exact, else Python's objects.

    Returns what `json.loads` gives when that is not an object (the paginator refuses it).

    Raises:
        ValueError: The bytes are not JSON.
    """
    body = _arrow_body(content)
    if body is not None:
        return body
    parsed = json.loads(content)
    return JsonBody(parsed) if isinstance(parsed, dict) else parsed


def _arrow_body(content: bytes) -> ArrowBody | None:
    """The page as Arrow read it, or None where Arrow's reading would differ from Python's."""
    try:
        table = pa_json.read_json(
            io.BytesIO(content),
            read_options=pa_json.ReadOptions(block_size=len(content) + 1, use_threads=False),
            parse_options=_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # not JSON, a type other than Codat's, a key twice, a lone surrogate, ...
    if table.num_rows != 1:
        return None  # not one JSON object
    read_type = table.schema.field("results").type.value_type
    extra = [name for name in read_type.names if name not in RECORD_STRUCT.names]
    if extra not in ([], [SUPPLEMENTAL]):
        return None  # a field the connector does not map: kept as `unmapped_fields` by the Python path
    if pa.struct([read_type.field(name) for name in RECORD_STRUCT.names]) != RECORD_STRUCT:
        return None  # a field nested in a mapped one (an address's, a phone's) that is not mapped
    lists = table.column("results").combine_chunks()
    records = lists.flatten()
    if records.null_count or _null_items(records):
        return None  # a null record, address, contact or phone: the Python path keeps it as sent
    try:
        raws = _RESULTS.decode(content).results or []
    except msgspec.MsgspecError:
        return None  # JSON Arrow reads and msgspec does not (NaN, a byte-order mark): Python's reading
    if len(raws) != len(records):
        return None
    total = table.column("totalResults")[0].as_py()
    return ArrowBody(records, int(total or 0), raws)


def _null_items(records: pa.StructArray) -> bool:
    addresses = pc.struct_field(records, "addresses").flatten()
    contacts = pc.struct_field(records, "contacts").flatten()
    phones = pc.struct_field(contacts, "phone").flatten()
    return bool(addresses.null_count or contacts.null_count or phones.null_count)
