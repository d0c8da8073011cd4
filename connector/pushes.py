"""Warehouse rows as Codat customer creates and updates: read, mapped, checked and planned before a push.

A row names its company (`company_id`), optionally its accounting connection (`connection_id`)
and, to update, its customer (`id`); every other column is a Customer field, named as the
`customers` table names it (`customer_name`) or as Codat does (`customerName`). Addresses,
contacts and supplemental data are JSON (text, or the lists and objects DuckDB returns). The
columns the warehouse adds (`modified_date`, `_dlt_id`, ...) are left out, as are Codat's
read-only fields.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from connector.batches import CUSTOMER_KEYS
from connector.client import CodatClient
from connector.customers import accounting_connection_ids
from connector.errors import CodatApiError, InvalidOption
from connector.push import READ_ONLY_FIELDS, check_against_model
from connector.records import Json

CREATE, UPDATE, UPSERT = "create", "update", "upsert"
MODES = (CREATE, UPDATE, UPSERT)
COMPANY, CONNECTION, CUSTOMER = "company_id", "connection_id", "id"
# Columns the warehouse keeps beside Codat's fields: never sent.
WAREHOUSE_COLUMNS = frozenset(
    {"is_deleted", "extracted_at", "record_hash", "unmapped_fields", "metadata", "_dlt_load_id", "_dlt_id"}
)
JSON_FIELDS = frozenset({"addresses", "contacts", "supplementalData"})
SENDABLE = CUSTOMER_KEYS - READ_ONLY_FIELDS - {"metadata"}
KEY_NAMESPACE = uuid.UUID("6f1c7e52-8a51-4f43-9d0e-0c0da7c0dc75")  # this connector's idempotency keys


def camel(name: str) -> str:
    """`customer_name` as Codat names it: `customerName` (a name already camelCase stays)."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {camel(str(k)): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


@dataclass(frozen=True)
class PushRow:
    """One input row, mapped to Codat's names.

    Attributes:
        number: Its position in the input, from 1.
        company_id: The company it writes to.
        connection_id: The accounting connection it names, if any.
        customer_id: The customer it updates, if any.
        fields: The Customer fields it sets, camelCase, read-only ones left out.
        key: The value of the key column the user named, if any.
    """

    number: int
    company_id: str
    connection_id: str | None
    customer_id: str | None
    fields: Json
    key: str | None = None


def read_rows(
    *,
    duckdb_file: Path | None = None,
    query: str | None = None,
    table: str | None = None,
    csv_file: Path | None = None,
    jsonl_file: Path | None = None,
) -> list[dict[str, Any]]:
    """The input rows, as column -> value: a DuckDB query or table, a CSV file or a JSON Lines file.

    Raises:
        InvalidOption: No input, two inputs, a missing file or a query that fails; the message says which.
    """
    given = [
        name
        for name, value in (("--query/--table", query or table), ("--csv", csv_file), ("--jsonl", jsonl_file))
        if value
    ]
    if len(given) != 1:
        raise InvalidOption(
            "name one input: --query or --table (with --duckdb-file), --csv or --jsonl; "
            f"got {given or 'none'}"
        )
    if csv_file is not None:
        return _csv_rows(csv_file)
    if jsonl_file is not None:
        return _jsonl_rows(jsonl_file)
    if duckdb_file is None:
        raise InvalidOption("--query and --table read a DuckDB file: name it with --duckdb-file")
    if not duckdb_file.is_file():
        raise InvalidOption(f"--duckdb-file {duckdb_file}: no such file")
    sql = query if query else f"SELECT * FROM {table}"
    try:
        with duckdb.connect(str(duckdb_file), read_only=True) as connection:
            cursor = connection.execute(sql)
            names = [d[0] for d in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except duckdb.Error as exc:
        first = (str(exc).splitlines() or [""])[0]  # DuckDB adds lines pointing into the query
        raise InvalidOption(f"the query on {duckdb_file} failed: {first}") from None


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InvalidOption(f"--csv {path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InvalidOption(f"--jsonl {path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidOption(f"--jsonl {path}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InvalidOption(f"--jsonl {path}, line {number}: not a JSON object")
            rows.append(row)
    return rows


def to_push_row(number: int, raw: Mapping[str, Any], key_column: str | None = None) -> PushRow:
    """A row mapped to Codat's names.

    Raises:
        InvalidOption: The row names no company, a column is no Customer field, or a JSON column
            is not JSON; the message names the row and the column.
    """
    fields: Json = {}
    control: dict[str, str | None] = {COMPANY: None, CONNECTION: None, CUSTOMER: None}
    key = None
    for column, value in raw.items():
        name = str(column)
        if name == key_column:
            key = None if value is None else str(value)
            continue
        if name in WAREHOUSE_COLUMNS or name.startswith("_dlt"):
            continue
        codat = camel(name)
        if codat in ("companyId", "connectionId"):
            control[COMPANY if codat == "companyId" else CONNECTION] = None if value is None else str(value)
        elif codat == CUSTOMER:
            control[CUSTOMER] = None if value is None else str(value)
        elif codat in READ_ONLY_FIELDS:
            continue
        elif codat not in SENDABLE:
            raise InvalidOption(f"row {number}: column {name!r} is no Customer field Codat takes")
        elif value is not None:
            fields[codat] = _json_value(number, name, value) if codat in JSON_FIELDS else value
    if key_column is not None and key_column not in raw:
        raise InvalidOption(f"row {number}: no key column {key_column!r}")
    if not control[COMPANY]:
        raise InvalidOption(f"row {number}: no company_id")
    return PushRow(number, str(control[COMPANY]), control[CONNECTION], control[CUSTOMER], fields, key)


def _json_value(number: int, column: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidOption(f"row {number}: column {column!r} is not JSON ({exc.msg})") from None
    return value if column in ("supplemental_data", "supplementalData") else _camel_keys(value)


@dataclass
class PlannedPush:
    """What one row becomes: a create or an update, or the reasons it is not sent."""

    row: PushRow
    operation: str  # create or update
    connection_id: str
    body: Json
    row_key: str
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether it is sent."""
        return not self.problems


def row_key(row: PushRow, connection_id: str, operation: str) -> str:
    """The row's key across runs and its create's `Idempotency-Key`: the key column, else its content."""
    identity: Any = row.key if row.key is not None else row.fields
    text = json.dumps(
        [row.company_id, connection_id, operation, row.customer_id, identity], sort_keys=True, default=str
    )
    return str(uuid.uuid5(KEY_NAMESPACE, hashlib.sha256(text.encode()).hexdigest()))


class Planner:
    """Plans rows against what Codat holds, read once per run and cached.

    Each company's connections, each connection's model, and for an update the customer's record.
    """

    def __init__(self, client: CodatClient) -> None:
        self.client = client
        self._connections: dict[str, list[Json]] = {}
        self._models: dict[tuple[str, str], Json] = {}

    def connection(self, row: PushRow) -> Json:
        """The accounting connection the row writes through.

        Raises:
            InvalidOption: The company or the connection is unknown, the company has no accounting
                connection, or it has several and the row names none (the message lists them).
        """
        if row.company_id not in self._connections:
            try:
                listed = list(self.client.list_connections(row.company_id))
            except CodatApiError as exc:
                if exc.status in (400, 404):
                    raise InvalidOption(
                        f"row {row.number}: company {row.company_id} is unknown to Codat"
                    ) from None
                raise
            accounting = set(accounting_connection_ids({"dataConnections": listed}))
            self._connections[row.company_id] = [c for c in listed if c.get("id") in accounting]
        connections = self._connections[row.company_id]
        if row.connection_id is not None:
            found = [c for c in connections if c.get("id") == row.connection_id]
            if not found:
                raise InvalidOption(
                    f"row {row.number}: connection {row.connection_id} is no accounting connection "
                    f"of company {row.company_id}"
                )
            return found[0]
        if not connections:
            raise InvalidOption(
                f"row {row.number}: company {row.company_id} has no accounting connection "
                "to push customers to"
            )
        if len(connections) > 1:
            ordered = sorted(connections, key=lambda c: str(c.get("id")))  # Codat's own order is undocumented
            choices = ", ".join(f"{c.get('id')} ({c.get('platformName')})" for c in ordered)
            raise InvalidOption(
                f"row {row.number}: company {row.company_id} has {len(connections)} accounting connections; "
                f"name one in connection_id: {choices}"
            )
        return connections[0]

    def model(self, company_id: str, connection_id: str) -> Json:
        """The connection's create/update model, read once."""
        if (company_id, connection_id) not in self._models:
            self._models[(company_id, connection_id)] = self.client.get_create_update_model(
                company_id, connection_id
            )
        return self._models[(company_id, connection_id)]

    def plan(self, row: PushRow, mode: str) -> PlannedPush:
        """What the row becomes in `mode`; a row that cannot be sent carries its problems."""
        connection = self.connection(row)
        connection_id = str(connection["id"])
        platform = str(connection.get("platformName") or connection.get("sourceId") or "the platform")
        operation = UPDATE if mode == UPDATE or (mode == UPSERT and row.customer_id) else CREATE
        key = row_key(row, connection_id, operation)
        if operation == UPDATE and not row.customer_id:
            return PlannedPush(
                row, operation, connection_id, {}, key, ["id: an update needs the customer's id"]
            )
        body = dict(row.fields)
        if operation == UPDATE:
            try:
                current = self.client.get_customer(row.company_id, str(row.customer_id))
            except CodatApiError as exc:
                if exc.status == 404:
                    return PlannedPush(
                        row, operation, connection_id, {}, key, [f"id: no customer {row.customer_id}"]
                    )
                raise
            body = {k: v for k, v in current.items() if k in SENDABLE} | body
        problems = check_against_model(self.model(row.company_id, connection_id), body, platform)
        return PlannedPush(row, operation, connection_id, body, key, problems)


def planned(client: CodatClient, rows: list[PushRow], mode: str) -> Iterator[PlannedPush]:
    """Each row planned in `mode`, in order."""
    if mode not in MODES:
        raise InvalidOption(f"--mode {mode!r}: one of {', '.join(MODES)}")
    planner = Planner(client)
    for row in rows:
        yield planner.plan(row, mode)
