"""Customer pages as Arrow tables: the customers table and its child tables, typed column by column.

dlt's JSON normaliser walks every record in Python and writes it twice (extract, then normalize);
an Arrow table goes to Parquet once and on to the destination as it is. The child tables keep the
names and link columns dlt's normaliser gives them (`_dlt_parent_id`, `_dlt_root_id`,
`_dlt_list_idx`, `_dlt_id`), so the tables read the same whichever path wrote them.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import MAXYEAR, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.data_types import TDataType
from dlt.common.schema.typing import TColumnSchema, TTableSchemaColumns

from connector.records import NULL_DATE_YEAR, Json, is_no_date, parse_codat_datetime

logger = logging.getLogger(__name__)

ADDRESSES = "customers__addresses"
CONTACTS = "customers__contacts"
PHONES = "customers__contacts__phone"
CHILD_TABLES = (ADDRESSES, CONTACTS, PHONES)

# (Codat field, column): text columns of each table, in Codat's camelCase and dlt's snake_case.
CUSTOMER_TEXT = (
    ("id", "id"),
    ("customerName", "customer_name"),
    ("contactName", "contact_name"),
    ("emailAddress", "email_address"),
    ("defaultCurrency", "default_currency"),
    ("phone", "phone"),
    ("registrationNumber", "registration_number"),
    ("taxNumber", "tax_number"),
    ("status", "status"),
)
CUSTOMER_DATES = (("modifiedDate", "modified_date"), ("sourceModifiedDate", "source_modified_date"))
ADDRESS_TEXT = (
    ("type", "type"),
    ("line1", "line1"),
    ("line2", "line2"),
    ("city", "city"),
    ("region", "region"),
    ("country", "country"),
    ("postalCode", "postal_code"),
)
CONTACT_TEXT = (("name", "name"), ("email", "email"), ("status", "status"))
PHONE_TEXT = (("number", "number"), ("type", "type"))

CUSTOMER_KEYS = frozenset(
    [k for k, _ in CUSTOMER_TEXT + CUSTOMER_DATES] + ["addresses", "contacts", "metadata", "supplementalData"]
)
ADDRESS_KEYS = frozenset(k for k, _ in ADDRESS_TEXT)
CONTACT_KEYS = frozenset([k for k, _ in CONTACT_TEXT] + ["modifiedDate", "address", "phone"])
PHONE_KEYS = frozenset(k for k, _ in PHONE_TEXT)
UNMAPPED = "unmapped_fields"

TIMESTAMP = pa.timestamp("us", tz="UTC")
TEXT = pa.string()

# Each child row names its company, so a shard prunes only its own companies' rows while other
# shards load the same tables (`connector.views.prune_child_rows`). Nullable: rows loaded before
# the column existed have none.
COMPANY_FIELD = pa.field("company_id", TEXT)
# The link columns dlt's normaliser writes on child tables. They are not `root_key` and
# `parent_key` here: dlt keeps those hints for tables its normaliser nests.
LINK_FIELDS = [
    pa.field("_dlt_root_id", TEXT, nullable=False),
    pa.field("_dlt_parent_id", TEXT, nullable=False),
    pa.field("_dlt_list_idx", pa.int64(), nullable=False),
    pa.field("_dlt_id", TEXT, nullable=False),
]
DATA_TYPES: dict[pa.DataType, TDataType] = {
    TEXT: "text",
    TIMESTAMP: "timestamp",
    pa.bool_(): "bool",
    pa.int64(): "bigint",
}
ROW_KEY: TColumnSchema = {"unique": True, "row_key": True}
JSON_TEXT: TColumnSchema = {"data_type": "json"}  # JSON carried as text in Arrow


def _text_fields(pairs: tuple[tuple[str, str], ...], prefix: str = "") -> list[pa.Field]:
    return [pa.field(prefix + column, TEXT, nullable=column != "id") for _, column in pairs]


CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("company_id", TEXT, nullable=False),
        *_text_fields(CUSTOMER_TEXT),
        *[pa.field(column, TIMESTAMP) for _, column in CUSTOMER_DATES],
        pa.field("is_deleted", pa.bool_(), nullable=False),
        pa.field("extracted_at", TIMESTAMP),
        pa.field("supplemental_data", TEXT),
        pa.field(UNMAPPED, TEXT),
        pa.field("_dlt_load_id", TEXT, nullable=False),
        pa.field("_dlt_id", TEXT, nullable=False),
    ]
)
ADDRESS_SCHEMA = pa.schema([*_text_fields(ADDRESS_TEXT), COMPANY_FIELD, *LINK_FIELDS])
CONTACT_SCHEMA = pa.schema(
    [
        *_text_fields(CONTACT_TEXT),
        *_text_fields(ADDRESS_TEXT, "address__"),
        pa.field("modified_date", TIMESTAMP),
        COMPANY_FIELD,
        *LINK_FIELDS,
    ]
)
PHONE_SCHEMA = pa.schema([*_text_fields(PHONE_TEXT), COMPANY_FIELD, *LINK_FIELDS])
CHILD_SCHEMAS = {ADDRESSES: ADDRESS_SCHEMA, CONTACTS: CONTACT_SCHEMA, PHONES: PHONE_SCHEMA}


def table_columns(schema: pa.Schema, hints: dict[str, TColumnSchema] | None = None) -> TTableSchemaColumns:
    """Dlt's column hints for a table written with this Arrow schema, `hints` laid over them."""
    columns: TTableSchemaColumns = {}
    for field in schema:
        column: TColumnSchema = {"data_type": DATA_TYPES[field.type], "nullable": field.nullable}
        if field.name == "_dlt_id":
            column.update(ROW_KEY)
        column.update((hints or {}).get(field.name, {}))
        columns[field.name] = column
    return columns


def child_columns(table: str) -> TTableSchemaColumns:
    """Dlt's column hints of a child table."""
    return table_columns(CHILD_SCHEMAS[table])


CUSTOMER_COLUMNS = table_columns(
    CUSTOMER_SCHEMA,
    {"extracted_at": {"dedup_sort": "desc"}, "supplemental_data": JSON_TEXT, UNMAPPED: JSON_TEXT},
)


def _struct(pairs: tuple[tuple[str, str], ...], *more: tuple[str, pa.DataType]) -> pa.StructType:
    return pa.struct([*[(key, TEXT) for key, _ in pairs], *more])


ADDRESS_STRUCT = _struct(ADDRESS_TEXT)
PHONE_STRUCT = _struct(PHONE_TEXT)
CONTACT_STRUCT = _struct(
    CONTACT_TEXT,
    ("modifiedDate", TEXT),
    ("address", ADDRESS_STRUCT),
    ("phone", pa.list_(PHONE_STRUCT)),
)
# The shape Arrow reads the records in (keys it does not name are left out, see `unmapped_fields`).
CUSTOMER_STRUCT = _struct(
    CUSTOMER_TEXT,
    ("sourceModifiedDate", TEXT),
    ("metadata", pa.struct([("isDeleted", pa.bool_())])),
    ("addresses", pa.list_(ADDRESS_STRUCT)),
    ("contacts", pa.list_(CONTACT_STRUCT)),
)


@dataclass
class CustomerPage:
    """One page of customers as the four tables' Arrow tables."""

    customers: pa.Table
    children: dict[str, pa.Table]

    @property
    def deleted(self) -> int:
        """Customers on the page flagged `metadata.isDeleted`."""
        return int(pc.sum(self.customers.column("is_deleted")).as_py() or 0)


class PageBatch:
    """Pages gathered into larger tables before they go to dlt, which costs the same per table however big.

    dlt checks a table's schema hints each time it is handed one, and a page of a small company
    is a few rows. Gathered up to a page's worth (`rows`), never more, so that a Parquet row
    group is no larger than a page's (DuckDB loads one within its memory limit). Pages of several
    companies mix in one batch: each row names its company.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._pages: list[CustomerPage] = []
        self._count = 0

    def add(self, page: CustomerPage) -> list[tuple[str, pa.Table]]:
        """Keep a page; returns the batch before it (`take`) when the page would take it past `rows`."""
        taken = self.take() if self._pages and self._count + page.customers.num_rows > self.rows else []
        self._pages.append(page)
        self._count += page.customers.num_rows
        return taken

    def take(self) -> list[tuple[str, pa.Table]]:
        """The batch as (table name, Arrow table) pairs, customers first; the batch is empty after."""
        pages, self._pages, self._count = self._pages, [], 0
        if not pages:
            return []
        tables = [("customers", pa.concat_tables([p.customers for p in pages]))]
        for name in CHILD_TABLES:
            parts = [p.children[name] for p in pages if name in p.children]
            if parts:
                tables.append((name, pa.concat_tables(parts)))
        return tables


class PageBuilder:
    """Builds the Arrow tables of customer pages, warning once per field it does not map or read."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._unreadable: set[str] = set()  # date fields already warned about

    def build(
        self,
        records: Sequence[Json],
        company_id: str,
        extracted_at: datetime,
        load_id: str,
        modified: pa.Array | None = None,
    ) -> CustomerPage:
        """The tables of one page of Codat customer records, read as Python objects.

        Arrow reads the records in C++; Python only parses dates and serialises JSON columns.
        Fields the connector does not know go to the JSON column `unmapped_fields` (never
        dropped); a value of another JSON type where Codat documents text is kept as its JSON text.

        Args:
            records: Codat customer records, as served.
            company_id: The company they belong to.
            extracted_at: When the page was read (newest wins when one run sees a customer twice).
            load_id: The dlt load id stamped on every customer row.
            modified: The records' `modifiedDate`s if the caller already read them (`modified_dates`).
        """
        try:
            parsed = pa.array(records, type=CUSTOMER_STRUCT)
            shaped = True  # every list a list of objects, every text text, ...
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            parsed = pa.array([_conform(r, CUSTOMER_STRUCT) for r in records], type=CUSTOMER_STRUCT)
            shaped = False
        return self.tables(
            parsed,
            company_id,
            extracted_at,
            load_id,
            modified_dates(records) if modified is None else modified,
            supplemental=pa.array([json_or_none(r.get("supplementalData")) for r in records], TEXT),
            unmapped=pa.array(self._unmapped_fields(records, shaped), TEXT),
            sent=lambda key: [r.get(key) for r in records],
        )

    def build_read(
        self,
        parsed: pa.StructArray,
        supplemental: pa.Array,
        company_id: str,
        extracted_at: datetime,
        load_id: str,
        modified: pa.Array,
    ) -> CustomerPage:
        """The tables of one page Arrow read from its bytes (`connector.bodies`): no field unmapped.

        Args:
            parsed: The records, with every field `CUSTOMER_STRUCT` names.
            supplemental: Their `supplementalData` as JSON text.
            company_id: The company they belong to.
            extracted_at: When the page was read.
            load_id: The dlt load id stamped on every customer row.
            modified: The records' `modifiedDate`s.
        """
        return self.tables(
            parsed,
            company_id,
            extracted_at,
            load_id,
            modified,
            supplemental=supplemental,
            unmapped=pa.nulls(len(parsed), TEXT),
            sent=lambda key: pc.struct_field(parsed, key).to_pylist(),
        )

    def tables(
        self,
        parsed: pa.StructArray,
        company_id: str,
        extracted_at: datetime,
        load_id: str,
        modified: pa.Array,
        supplemental: pa.Array,
        unmapped: pa.Array,
        sent: Callable[[str], list[Any]],
    ) -> CustomerPage:
        """The four tables of a page read as `CUSTOMER_STRUCT`; `sent(key)` gives each record's value."""
        count = len(parsed)
        prefix = secrets.token_urlsafe(9)
        root_ids = pa.array([f"{prefix}{i:x}" for i in range(count)], TEXT)
        columns: dict[str, Any] = {"company_id": pa.array([company_id] * count, TEXT)}
        for key, column in CUSTOMER_TEXT:
            columns[column] = pc.struct_field(parsed, key)
        columns["modified_date"] = modified
        columns["source_modified_date"] = parse_dates(pc.struct_field(parsed, "sourceModifiedDate"))
        self._check_dates(sent, company_id, "modifiedDate", modified)
        self._check_dates(sent, company_id, "sourceModifiedDate", columns["source_modified_date"])
        columns["is_deleted"] = pc.fill_null(pc.struct_field(parsed, ["metadata", "isDeleted"]), False)
        columns["extracted_at"] = pa.array([extracted_at] * count, TIMESTAMP)
        columns["supplemental_data"] = supplemental
        columns[UNMAPPED] = unmapped
        columns["_dlt_load_id"] = pa.array([load_id] * count, TEXT)
        columns["_dlt_id"] = root_ids
        children = _children(parsed, root_ids, company_id)
        return CustomerPage(
            customers=pa.Table.from_arrays(
                [columns[f.name] for f in CUSTOMER_SCHEMA], schema=CUSTOMER_SCHEMA
            ),
            children={name: table for name, table in children.items() if table.num_rows},
        )

    def _check_dates(
        self, sent: Callable[[str], list[Any]], company_id: str, key: str, read: pa.Array
    ) -> None:
        """Warn, once per field in a run, of a date Codat sent that cannot be read (stored as NULL)."""
        if key in self._unreadable or read.null_count == 0:
            return
        values = sent(key)
        if read.null_count == sum(1 for v in values if is_no_date(v)):
            return  # every NULL is Codat's own "no date"
        for value, customer_id, moment in zip(values, sent("id"), read.to_pylist(), strict=True):
            if moment is None and value is not None and not is_no_date(value):
                self._unreadable.add(key)
                logger.warning(
                    "Customer %r of company %s has a %s that is not a date (%r); stored as NULL. "
                    "Further unreadable %s values in this run are not reported",
                    customer_id,
                    company_id,
                    key,
                    value,
                    key,
                )
                return

    def _unmapped_fields(self, records: Sequence[Json], shaped: bool) -> list[str | None]:
        """Each record's `unmapped_fields`; a page Arrow read as it is (`shaped`) of known keys at once."""
        if shaped and _all_keys_known(records):
            return [None] * len(records)
        return [self._unmapped(r) for r in records]

    def _unmapped(self, record: Json) -> str | None:
        if CUSTOMER_KEYS.issuperset(record) and _children_known(record):
            return None
        extra: Json = {k: v for k, v in record.items() if k not in CUSTOMER_KEYS}
        for name in ("addresses", "contacts"):
            if not _list_of_dicts(record.get(name)):
                extra[name] = record[name]
        for name, known in (("addresses", ADDRESS_KEYS), ("contacts", CONTACT_KEYS)):
            for index, item in enumerate(_dict_items(record.get(name))):
                for key in item.keys() - known:
                    extra[f"{name}[{index}].{key}"] = item[key]
        for index, contact in enumerate(_dict_items(record.get("contacts"))):
            if not _list_of_dicts(contact.get("phone")):
                extra[f"contacts[{index}].phone"] = contact["phone"]
            for number, phone in enumerate(_dict_items(contact.get("phone"))):
                for key in phone.keys() - PHONE_KEYS:
                    extra[f"contacts[{index}].phone[{number}].{key}"] = phone[key]
        new = set(extra) - self._warned
        if new:
            self._warned |= new
            logger.warning(
                "Codat sent customer fields this connector does not map; kept in %s: %s",
                UNMAPPED,
                ", ".join(sorted(new)),
            )
        return json_or_none(extra) if extra else None


def _all_keys_known(records: Sequence[Json]) -> bool:
    """Whether no record of the page, nor any of their addresses, contacts or phones, has a key not mapped.

    For records Arrow read as `CUSTOMER_STRUCT`, which refuses any list that is not a list of
    objects (or nulls). A union of key sets per level, not a walk of each record: the common
    case, a page of known fields, costs a few set operations. A null item in a list is left to
    `_unmapped`, which keeps it.
    """
    if not CUSTOMER_KEYS.issuperset(set().union(*records)):
        return False
    addresses = [a for r in records for a in r.get("addresses") or ()]
    contacts = [c for r in records for c in r.get("contacts") or ()]
    if None in addresses or None in contacts:
        return False
    phones = [p for c in contacts for p in c.get("phone") or ()]
    return (
        None not in phones
        and ADDRESS_KEYS.issuperset(set().union(*addresses))
        and CONTACT_KEYS.issuperset(set().union(*contacts))
        and PHONE_KEYS.issuperset(set().union(*phones))
    )


def _list_of_dicts(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, dict) for v in value))


def _children_known(record: Json) -> bool:
    addresses, contacts = record.get("addresses"), record.get("contacts")
    if not (_list_of_dicts(addresses) and _list_of_dicts(contacts)):
        return False
    for address in addresses or ():
        if not ADDRESS_KEYS.issuperset(address):
            return False
    for contact in contacts or ():
        phones = contact.get("phone")
        if not (CONTACT_KEYS.issuperset(contact) and _list_of_dicts(phones)):
            return False
        for phone in phones or ():
            if not PHONE_KEYS.issuperset(phone):
                return False
    return True


def _dict_items(value: Any) -> list[Json]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _children(parsed: pa.StructArray, root_ids: pa.Array, company_id: str) -> dict[str, pa.Table]:
    """The child tables' rows of one company, linked to their parents as dlt's normaliser links them."""
    addresses, address_parents, address_index = _unnest(pc.struct_field(parsed, "addresses"))
    contacts, contact_parents, contact_index = _unnest(pc.struct_field(parsed, "contacts"))
    phones, phone_parents, phone_index = _unnest(pc.struct_field(contacts, "phone"))
    address_roots = pc.take(root_ids, address_parents)
    contact_roots = pc.take(root_ids, contact_parents)
    contact_ids = _child_ids(contact_roots, "c", contact_index)
    contact_address = pc.struct_field(contacts, "address")
    contact_columns = [pc.struct_field(contacts, key) for key, _ in CONTACT_TEXT]
    contact_columns += [pc.struct_field(contact_address, key) for key, _ in ADDRESS_TEXT]
    contact_columns.append(parse_dates(pc.struct_field(contacts, "modifiedDate")))
    return {
        ADDRESSES: _child_table(
            ADDRESS_SCHEMA,
            [pc.struct_field(addresses, key) for key, _ in ADDRESS_TEXT],
            company_id,
            address_roots,
            address_roots,
            address_index,
            _child_ids(address_roots, "a", address_index),
        ),
        CONTACTS: _child_table(
            CONTACT_SCHEMA,
            contact_columns,
            company_id,
            contact_roots,
            contact_roots,
            contact_index,
            contact_ids,
        ),
        PHONES: _child_table(
            PHONE_SCHEMA,
            [pc.struct_field(phones, key) for key, _ in PHONE_TEXT],
            company_id,
            pc.take(contact_roots, phone_parents),
            pc.take(contact_ids, phone_parents),
            phone_index,
            _child_ids(pc.take(contact_ids, phone_parents), "p", phone_index),
        ),
    }


def _unnest(lists: pa.ListArray) -> tuple[pa.StructArray, pa.Array, pa.Array]:
    """A list column's items, the row each came from and its position in that row's list."""
    items = lists.flatten()
    parents = pc.list_parent_indices(lists)
    starts = pc.take(lists.offsets, parents)
    positions = pc.subtract(pa.array(range(len(items)), pa.int64()), starts)
    return items, parents, positions


def _child_ids(parent_ids: pa.Array, kind: str, positions: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(parent_ids, pc.cast(positions, TEXT), "." + kind)


def _child_table(
    schema: pa.Schema,
    values: list[pa.Array],
    company_id: str,
    roots: pa.Array,
    parents: pa.Array,
    positions: pa.Array,
    ids: pa.Array,
) -> pa.Table:
    company = pa.array([company_id] * len(ids), TEXT)
    return pa.Table.from_arrays([*values, company, roots, parents, positions, ids], schema=schema)


# Codat's date forms (`connector.records._CODAT_DATE`), brought by regex to the one Arrow casts
# in C++ (seconds, up to six fractional digits, `Z` or an offset): a 7th digit dropped, a date
# alone made midnight, no zone made UTC, as `parse_codat_datetime` reads them.
DATE_REWRITES = (
    (r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6})\d", r"\1"),
    (r"^(\d{4}-\d{2}-\d{2})$", r"\1T00:00:00"),
    (r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)$", r"\1Z"),
)
ARROW_DATE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:[0-5]\d)$"


def parse_dates(texts: pa.Array) -> pa.Array:
    """Codat dates (text) as UTC timestamps, exactly as `parse_codat_datetime` reads each.

    In Arrow, when every value has one of Codat's forms and is a real instant; otherwise (text
    that is no date, month 13, year 0) value by value in Python.
    """
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), TIMESTAMP)
    rewritten = texts
    for pattern, replacement in DATE_REWRITES:
        rewritten = pc.replace_substring_regex(rewritten, pattern, replacement)
    if pc.all(pc.match_substring_regex(rewritten, ARROW_DATE)).as_py():
        try:
            moments = pc.cast(rewritten, TIMESTAMP)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # shaped like a date but impossible (month 13)
        else:
            years = pc.year(moments)
            # Year 0, or past 9999 once in UTC: no date in Python's calendar.
            if not pc.any(pc.or_(pc.less(years, NULL_DATE_YEAR), pc.greater(years, MAXYEAR))).as_py():
                return pc.if_else(pc.equal(years, NULL_DATE_YEAR), pa.scalar(None, TIMESTAMP), moments)
    return pa.array([parse_codat_datetime(v) for v in texts.to_pylist()], TIMESTAMP)


def modified_dates(records: Sequence[Json]) -> pa.Array:
    """The records' `modifiedDate`s as UTC timestamps (NULL where none can be read)."""
    return parse_dates(
        pa.array([v if isinstance(v := r.get("modifiedDate"), str) else None for r in records], TEXT)
    )


def _conform(value: Any, kind: pa.DataType) -> Any:
    """`value` bent to the Arrow type it is read as: other JSON types become their JSON text."""
    if value is None:
        return None
    if pa.types.is_struct(kind):
        source = value if isinstance(value, dict) else {}
        return {field.name: _conform(source.get(field.name), field.type) for field in kind}
    if pa.types.is_list(kind):
        return [_conform(v, kind.value_type) for v in value] if isinstance(value, list) else None
    if pa.types.is_boolean(kind):
        return value if isinstance(value, bool) else str(value).strip().lower() == "true"
    return value if isinstance(value, str) else _json_text(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_or_none(value: Any) -> str | None:
    """A JSON value as compact text (non-ASCII kept), None for null."""
    return None if value is None else _json_text(value)
