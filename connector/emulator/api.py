"""The Codat API routes the emulator serves, as handlers over the account and its push ledger."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlencode

from connector.emulator.data import attachment_bytes
from connector.emulator.model import STATUS_COMPLETE, STATUS_NEVER_READ, Company, Connection, Json
from connector.emulator.push import PushLedger
from connector.emulator.push_models import READ_ONLY_FIELDS, load_model, validate_customer
from connector.emulator.query import QueryError
from connector.emulator.selection import cached_query, select
from connector.emulator.store import Store, utc_stamp
from connector.emulator.wire import ERROR_TEXTS, CodatError, Request, Response, json_response

MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 100
MAX_QUERY_LENGTH = 2048
NOT_VALID = ERROR_TEXTS["400"]
NOT_REQUESTED = ERROR_TEXTS["409"]
T = TypeVar("T")

Handler = Callable[["CodatApi", Request, list[str]], Response]
ROUTES: list[tuple[str, tuple[str, ...], str, Handler]] = []


def route(method: str, pattern: str, operation: str) -> Callable[[Handler], Handler]:
    """Register a handler for `pattern`, where `{}` stands for one path segment."""

    def register(handler: Handler) -> Handler:
        ROUTES.append((method, tuple(pattern.strip("/").split("/")), operation, handler))
        return handler

    return register


class Match(NamedTuple):
    """The route a request matched: its operation name, handler and path arguments."""

    operation: str
    handler: Handler
    args: list[str]


def match_route(method: str, segments: list[str]) -> Match | None:
    """The route a request matches, or None."""
    for route_method, pattern, operation, handler in ROUTES:
        if route_method != method or len(pattern) != len(segments):
            continue
        args = []
        for part, segment in zip(pattern, segments, strict=True):
            if part == "{}":
                args.append(segment)
            elif part != segment:
                break
        else:
            return Match(operation, handler, args)
    return None


def paging_params(request: Request) -> tuple[int, int, str | None, str | None]:
    """Validate `page`, `pageSize`, `query` and `orderBy` as Codat does."""
    try:
        page = int(request.params.get("page", "1"))
        page_size = int(request.params.get("pageSize", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        raise CodatError(400, f"{NOT_VALID} page and pageSize must be integers.") from None
    if page < 1:
        raise CodatError(400, f"{NOT_VALID} page must be 1 or more.")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise CodatError(400, f"{NOT_VALID} pageSize must be between 1 and {MAX_PAGE_SIZE}.")
    if len(request.raw_params.get("query", "")) >= MAX_QUERY_LENGTH:
        raise CodatError(400, "Error parsing query - Query must be under 2048 characters.", "ClientsApi")
    return (
        page,
        page_size,
        request.params.get("query") or None,
        request.params.get("orderBy") or None,
    )


def page_links(request: Request, page: int, page_size: int, total: int) -> Json:
    """Codat's `_links`: host-relative hrefs, `next`/`previous` only where such a page exists."""

    def href(number: int) -> dict[str, str]:
        params = {"page": str(number), "pageSize": str(page_size)}
        for name in ("query", "orderBy"):
            if request.params.get(name):
                params[name] = request.params[name]
        return {"href": f"{request.path}?{urlencode(params, quote_via=quote)}"}

    links: Json = {"self": {"href": request.path}, "current": href(page)}
    if page * page_size < total:
        links["next"] = href(page + 1)
    if page > 1:
        links["previous"] = href(page - 1)
    return links


def window(records: Sequence[T], page: int, page_size: int) -> Sequence[T]:
    """The items on one page."""
    start = (page - 1) * page_size
    return records[start : start + page_size]


def paged(request: Request, encoded: list[bytes], total: int, page: int, page_size: int) -> Response:
    """One Codat page around the already encoded records of its window."""
    links = json.dumps(page_links(request, page, page_size, total)).encode()
    body = b"".join(
        [
            b'{"results":[',
            b",".join(encoded),
            b'],"pageNumber":%d,"pageSize":%d,"totalResults":%d,"_links":' % (page, page_size, total),
            links,
            b"}",
        ]
    )
    return Response(200, body, records=len(encoded))


def paged_json(request: Request, records: list[Json], page: int, page_size: int) -> Response:
    """One Codat page of small records encoded on the fly."""
    encoded = [json.dumps(r).encode() for r in window(records, page, page_size)]
    return paged(request, encoded, len(records), page, page_size)


def select_or_400(records: list[Json], schema: str, query: str | None, order_by: str | None) -> list[Json]:
    """`select`, with query errors answered as Codat's `400`."""
    try:
        return select(records, schema, query, order_by)
    except QueryError as exc:
        raise CodatError(400, str(exc), "ClientsApi") from None


class CodatApi:
    """Handlers for every Codat route the emulator serves, over the account and its pushes."""

    def __init__(self, store: Store, ledger: PushLedger) -> None:
        self.store = store
        self.ledger = ledger

    def answer(self, match: Match, request: Request) -> Response:
        """The matched route's answer; a `CodatError` it raises becomes Codat's error answer."""
        try:
            return match.handler(self, request, match.args)
        except CodatError as exc:
            return exc.response()

    def company(self, company_id: str) -> Company:
        """The company, or Codat's `404`."""
        company = self.store.company(company_id)
        if company is None:
            raise CodatError(404, f"No company was found with ID {company_id}", "ClientsApi")
        return company

    def customers_read(self, company_id: str) -> Company:
        """The company, or `409` while its customers have not been read into Codat."""
        company = self.company(company_id)
        if company.customers_status != STATUS_COMPLETE:
            raise CodatError(409, NOT_REQUESTED)
        return company

    def connection(self, company: Company, connection_id: str) -> Connection:
        """The company's connection, or Codat's `404`."""
        for connection in company.connections:
            if connection.id == connection_id:
                return connection
        raise CodatError(404, f"Data connection {connection_id} not found")

    def customer(self, company: Company, customer_id: str) -> Json:
        """A customer of the company, or `404`."""
        record = company.customers.get(customer_id)
        if record is None:
            raise CodatError(404, f"No data available for customers for ID {customer_id}")
        return record


@route("GET", "/companies", "list-companies")
def list_companies(api: CodatApi, request: Request, args: list[str]) -> Response:
    """List companies, paged."""
    page, page_size, query, order_by = paging_params(request)
    with api.store.locked():
        records = [c.to_json() for c in api.store.companies.values()]
    return paged_json(request, select_or_400(records, "companies", query, order_by), page, page_size)


@route("GET", "/companies/{}", "get-company")
def get_company(api: CodatApi, request: Request, args: list[str]) -> Response:
    """One company."""
    with api.store.locked():
        return json_response(api.company(args[0]).to_json())


@route("GET", "/companies/{}/connections", "list-connections")
def list_connections(api: CodatApi, request: Request, args: list[str]) -> Response:
    """A company's connections, paged."""
    page, page_size, query, order_by = paging_params(request)
    with api.store.locked():
        company = api.company(args[0])
        records = [c.to_json(company.id) for c in company.connections]
    return paged_json(request, select_or_400(records, "connections", query, order_by), page, page_size)


@route("GET", "/companies/{}/dataStatus", "get-companies-data-status")
def data_status(api: CodatApi, request: Request, args: list[str]) -> Response:
    """The state of each data type in the company's cache."""
    with api.store.locked():
        company = api.company(args[0])
        statuses: Json = {}
        if company.customers_status != STATUS_NEVER_READ:
            statuses["customers"] = {
                "dataType": "customers",
                "lastSuccessfulSync": company.customers_last_successful_sync,
                "currentStatus": company.customers_status,
                "latestSyncId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{company.id}/{company.last_sync}")),
                "latestSuccessfulSyncId": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"{company.id}/{company.customers_last_successful_sync}")
                ),
            }
    return json_response(statuses)


@route("GET", "/companies/{}/data/customers", "list-customers")
def list_customers(api: CodatApi, request: Request, args: list[str]) -> Response:
    """A company's customers, filtered, ordered and paged."""
    page, page_size, query, order_by = paging_params(request)
    with api.store.locked():
        company = api.customers_read(args[0])
    try:
        if query:  # a bad query is reported before a bad orderBy, as `select` does
            cached_query(query, "customers")
        view = api.store.view(company, order_by)
        positions = view.select(query)
    except QueryError as exc:
        raise CodatError(400, str(exc), "ClientsApi") from None
    encoded = [view.encoded[i] for i in window(positions, page, page_size)]
    return paged(request, encoded, len(positions), page, page_size)


@route("GET", "/companies/{}/data/customers/{}", "get-customer")
def get_customer(api: CodatApi, request: Request, args: list[str]) -> Response:
    """One customer."""
    with api.store.locked():
        company = api.customers_read(args[0])
        return Response(200, api.store.encoded_customer(company.id, api.customer(company, args[1])))


@route("GET", "/companies/{}/push/{}", "get-push-operation")
def get_push_operation(api: CodatApi, request: Request, args: list[str]) -> Response:
    """One push operation, settled if its delay has passed."""
    with api.store.locked():
        api.company(args[0])
    operation = api.ledger.get(args[1])
    if operation is None or operation.company_id != args[0]:
        raise CodatError(404, f"No push operation was found with key {args[1]}")
    return json_response(operation.to_json())


@route("GET", "/companies/{}/connections/{}/options/customers", "get-create-update-customers-model")
def create_update_model(api: CodatApi, request: Request, args: list[str]) -> Response:
    """The platform's create/update model for customers."""
    with api.store.locked():
        connection = api.connection(api.company(args[0]), args[1])
    return json_response(load_model(connection.platform_name))


def _attachments(api: CodatApi, args: list[str]) -> list[Any]:
    company = api.customers_read(args[0])
    connection = api.connection(company, args[1])
    api.customer(company, args[2])
    return company.attachments.get((connection.id, args[2]), [])


def _attachment(api: CodatApi, args: list[str]) -> Any:
    for attachment in _attachments(api, args):
        if attachment.id == args[3]:
            return attachment
    raise CodatError(404, f"No attachment was found with ID {args[3]}")


ATTACHMENTS = "/companies/{}/connections/{}/data/customers/{}/attachments"


@route("GET", ATTACHMENTS, "list-customer-attachments")
def list_attachments(api: CodatApi, request: Request, args: list[str]) -> Response:
    """A customer's attachments on one connection."""
    with api.store.locked():
        return json_response({"attachments": [a.to_json() for a in _attachments(api, args)]})


@route("GET", ATTACHMENTS + "/{}", "get-customer-attachment")
def get_attachment(api: CodatApi, request: Request, args: list[str]) -> Response:
    """One attachment's metadata."""
    with api.store.locked():
        return json_response(_attachment(api, args).to_json())


@route("GET", ATTACHMENTS + "/{}/download", "download-customer-attachment")
def download_attachment(api: CodatApi, request: Request, args: list[str]) -> Response:
    """One attachment's bytes."""
    with api.store.locked():
        attachment = _attachment(api, args)
    return Response(200, attachment_bytes(attachment), content_type="application/octet-stream")


def _timeout(request: Request) -> int | None:
    raw = request.params.get("timeoutInMinutes")
    if raw is None:
        return None
    if not raw.isdigit():
        raise CodatError(400, f"{NOT_VALID} timeoutInMinutes must be a whole number of minutes.")
    return int(raw)


def _push_body(
    api: CodatApi, request: Request, company: Company, connection: Connection
) -> tuple[Json, list[Any]]:
    if not connection.is_accounting:
        raise CodatError(400, f"{NOT_VALID} Customers can only be pushed to an accounting connection.")
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise CodatError(400, f"{NOT_VALID} The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise CodatError(400, f"{NOT_VALID} The body must be a Customer object.")
    return body, validate_customer(load_model(connection.platform_name), body)


def _queue_push(
    api: CodatApi,
    company: Company,
    connection: Connection,
    record: Json,
    change_type: str,
    timeout: int | None,
    errors: list[Any],
    stale: bool = False,
) -> Response:
    """Track a Pending push operation for `record` and answer with it."""
    operation = api.ledger.new_operation(
        company_id=company.id,
        connection_id=connection.id,
        customer=record,
        change_type=change_type,
        timeout_minutes=timeout,
        errors=errors,
        stale=stale,
    )
    api.ledger.record(operation)
    return json_response(operation.to_json())


@route("POST", "/companies/{}/connections/{}/push/customers", "create-customer")
def create_customer(api: CodatApi, request: Request, args: list[str]) -> Response:
    """Queue the creation of a customer as a push operation."""
    timeout = _timeout(request)
    with api.store.locked():
        company = api.company(args[0])
        connection = api.connection(company, args[1])
    body, errors = _push_body(api, request, company, connection)
    record = {k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}
    record.update(id=str(uuid.uuid4()), sourceModifiedDate=utc_stamp(), metadata={"isDeleted": False})
    return _queue_push(api, company, connection, record, "Created", timeout, errors)


@route("PUT", "/companies/{}/connections/{}/push/customers/{}", "update-customer")
def update_customer(api: CodatApi, request: Request, args: list[str]) -> Response:
    """Queue the update of a customer as a push operation."""
    timeout = _timeout(request)
    force = request.params.get("forceUpdate", "false").lower() == "true"
    with api.store.locked():
        company = api.company(args[0])
        connection = api.connection(company, args[1])
        current = api.customer(company, args[2])
        stale = (company.id, args[2]) in api.store.platform_changed
    body, errors = _push_body(api, request, company, connection)
    record = {**current, **{k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}}
    record["sourceModifiedDate"] = utc_stamp()
    return _queue_push(api, company, connection, record, "Modified", timeout, errors, stale and not force)
