"""One client for the Codat API: auth, pacing, retries, error reporting and every operation a sync needs."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from base64 import b64encode
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from dlt.common.configuration.specs.base_configuration import configspec
from dlt.common.typing import TSecretStrValue
from dlt.sources.helpers.requests.retry import Client
from dlt.sources.helpers.rest_client.auth import AuthConfigBase
from dlt.sources.helpers.rest_client.client import RESTClient
from dlt.sources.helpers.rest_client.typing import HTTPMethod
from requests import PreparedRequest, Response
from requests.exceptions import ChunkedEncodingError, HTTPError

from connector.bodies import CustomerBody, read_customer_body
from connector.defaults import (
    DEFAULT_BASE_URL,
    DEFAULT_LIST_PAGE_SIZE,
)
from connector.errors import CodatApiError, InvalidOption, RunStopped
from connector.pacing import (
    CircuitBreaker,
    PacedAdapter,
    Pacer,
    StopSwitch,
    company_of,
    escape_dot_segment,
    retry_after_seconds,
)
from connector.paging import CodatPaginator, TotalResultsPaginator
from connector.records import Json
from connector.settings import ApiLimits, BreakerPolicy, RetryPolicy

logger = logging.getLogger(__name__)

NOTED_WAIT = 5.0  # seconds: a Retry-After this long is logged, so a waiting run is not silent
RETRY_STATUSES = tuple(range(500, 600))  # and 429, when its Retry-After is short enough to wait
CONNECTION_POOL_SIZE = 64


@configspec
class CodatKeyAuth(AuthConfigBase):
    """Codat's Basic auth: the base64 of the API key alone, from dlt secrets."""

    api_key: TSecretStrValue = None  # type: ignore[assignment]  # dlt resolves it from secrets

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        """Add the `Authorization` header to one request."""
        request.headers["Authorization"] = "Basic " + b64encode(str(self.api_key).encode()).decode()
        return request

    def __repr__(self) -> str:
        return "CodatKeyAuth(api_key=***)"

    __str__ = __repr__


class CodatHTTPError(HTTPError):
    """An error answer from Codat, with the fields Codat support asks for.

    It is an `HTTPError` carrying its response, so dlt's retrying session retries it when
    the status is `429` or `5xx` and gives it up at once otherwise.
    """

    def __init__(self, response: Response) -> None:
        body = _error_body(response)
        self.status = response.status_code
        self.error = str(body.get("error") or response.reason or "no error text")
        self.correlation_id = body.get("correlationId")
        self.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        super().__init__(f"HTTP {self.status}: {self.error}", response=response)


class InvalidBody(ChunkedEncodingError):
    """A `2xx` answer with a cut or malformed JSON body: retried like a dropped connection."""


def _error_body(response: Response) -> Json:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RequestCounter:
    """Counts every HTTP attempt (retries included) per company, thread-safely.

    `listeners` are told of each attempt (the run's progress display).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_company: Counter[str] = Counter()
        self.total = 0
        self.listeners: list[Callable[[], None]] = []

    def count(self, url: str) -> None:
        """Count one attempt at `url` (sent, whether or not it gets an answer)."""
        with self._lock:
            self.total += 1
            company = company_of(url)
            if company:
                self.by_company[company] += 1
        for listener in self.listeners:
            listener()


class BodyGate:
    """At most `permits` threads at once hold a page's body, from its answer until they let go.

    Several companies' pages are read at once (`connector.readers`) to overlap Codat's answer
    times; what each holds once its answer came (the JSON body, then its records as Python
    objects, then its Arrow tables) is what a run's memory grows with. A reader enters when its
    answer arrives (a response hook, before the body is read) and leaves once it has turned the
    page into Arrow tables and handed them on; waiting for an answer holds no permit. Entering
    again before leaving (a retry of the same page) keeps the one permit.
    """

    def __init__(self, permits: int) -> None:
        self._permits = threading.Semaphore(permits)
        self._held = threading.local()

    def enter(self, response: Response, *args: Any, **kwargs: Any) -> Response:
        """Take a permit for the calling thread, waiting for one if need be (a response hook)."""
        if not getattr(self._held, "permit", False):
            self._permits.acquire()
            self._held.permit = True
        return response

    def leave(self) -> None:
        """Give back the calling thread's permit, if it holds one."""
        if getattr(self._held, "permit", False):
            self._held.permit = False
            self._permits.release()


class CodatRESTClient(RESTClient):
    """dlt's REST client, reading the JSON body its response hook already parsed."""

    def extract_response(self, response: Response, data_selector: Any) -> list[Any]:
        """The whole parsed page: Codat's paginators and resources pick `results` themselves."""
        return [parsed_body(response)]


def parsed_body(response: Response) -> Any:
    """The JSON body of a response, parsed once by the client's response hook (`_on_response`)."""
    cached = getattr(response, "codat_body", None)
    return cached if cached is not None else response.json()


class CodatClient:
    """The Codat operations, on dlt's retrying session with `Retry-After` honoured.

    Every attempt, retries included, is paced to Codat's limits (`pacer`) and counted per
    company in `requests`, so a run can report what it spent. Two things stop every request
    not yet sent (`stopped`), so a run ends soon and leaves the rest to the next one: a `429`
    asking to wait longer than `max_retry_wait` (a spent daily quota), and the circuit
    breaker, open after `breaker_failures` attempts in a row without an answer or with a `5xx`,
    or after `breaker_silence` seconds without any answer while attempts fail. An attempt
    waits at most `connect_timeout` for its connection and `read_timeout` for its answer.

    Args:
        api_key: The Codat API key.
        base_url: The API's address.
        retry: Attempts per request, the backoff between them, the longest wait before a retry
            (`Retry-After` included), and how long an attempt waits to connect and for its answer.
        limits: The pace: requests per window for every company together, the burst, and
            requests in flight per company.
        breaker: When attempts without an answer stop the run.
        stop: The run's switch that stops its requests; a new one by default.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen: one shared default is safe
        limits: ApiLimits = ApiLimits(),  # noqa: B008
        breaker: BreakerPolicy = BreakerPolicy(),  # noqa: B008
        stop: StopSwitch | None = None,
    ) -> None:
        if not api_key:
            raise InvalidOption(
                "No Codat API key: set SOURCES__CODAT__API_KEY or api_key under [sources.codat] "
                "in .dlt/secrets.toml"
            )
        self.requests = RequestCounter()
        self.base_url = base_url.rstrip("/")
        self.max_retry_wait = retry.max_retry_wait
        self.pacer = Pacer(limits, CircuitBreaker(breaker.failures, breaker.seconds, breaker.silence), stop)
        session = Client(
            request_timeout=(retry.connect_timeout, retry.read_timeout),
            raise_for_status=False,
            status_codes=RETRY_STATUSES,
            retry_condition=self._retry_429,
            request_max_attempts=retry.max_attempts,
            request_backoff_factor=retry.backoff_factor,
            request_max_retry_delay=retry.max_retry_wait,
        ).session
        adapter = PacedAdapter(
            self.pacer, self.requests.count, pool_connections=4, pool_maxsize=CONNECTION_POOL_SIZE
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.rest = CodatRESTClient(self.base_url, auth=CodatKeyAuth(api_key=api_key), session=session)
        # Passed on every call: request-level hooks replace the session's in `requests`.
        self._hooks: Any = {"response": [self._on_response]}

    def __repr__(self) -> str:
        return f"CodatClient(base_url={self.base_url!r})"

    def _retry_429(self, response: Response | None, exception: BaseException | None) -> bool:
        if response is None or response.status_code != 429:
            return False
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if self._too_long_wait(429, retry_after) is not None:
            return False
        if retry_after is not None and retry_after >= NOTED_WAIT:
            logger.warning(
                "Codat answered 429 (too many requests) for %s: waiting %.0f s as its Retry-After asks",
                urlsplit(response.url).path,
                retry_after,
            )
        return True

    def _too_long_wait(self, status: int | None, retry_after: float | None) -> float | None:
        """The `Retry-After` of a `429` that asks to wait longer than this client waits, else None."""
        if status == 429 and retry_after is not None and retry_after > self.max_retry_wait:
            return retry_after
        return None

    @property
    def stop_cause(self) -> RunStopped | None:
        """Why this client sends no more requests (API unreachable, daily quota spent), if so."""
        return self.pacer.stop.reason

    def _on_response(
        self, response: Response, *args: Any, read: Callable[[bytes], Any] = json.loads, **kwargs: Any
    ) -> Response:
        self.pacer.quota.observe(response)
        if response.status_code >= 400:
            error = CodatHTTPError(response)
            if (wait := self._too_long_wait(error.status, error.retry_after)) is not None:
                self.pacer.quota_spent(wait)
            raise error
        if "json" in response.headers.get("Content-Type", ""):
            try:
                response.codat_body = read(response.content)  # type: ignore[attr-defined]
            except ValueError:
                raise InvalidBody(
                    f"Codat sent an unreadable JSON body ({len(response.content)} bytes)",
                    response=response,
                ) from None
            # The bytes are read: a page's 4 MB go now, not when the next answer replaces them.
            response._content = b""
        return response

    def _call(
        self, operation: str, company_id: str | None, method: HTTPMethod, path: str, **kwargs: Any
    ) -> Response:
        with _api_errors(operation, company_id):
            return self.rest.request(path, method=method, hooks=self._hooks, **kwargs)

    def _json(self, operation: str, company_id: str | None, path: str, **kwargs: Any) -> Any:
        return parsed_body(self._call(operation, company_id, "GET", path, **kwargs))

    def pages(
        self,
        operation: str,
        company_id: str | None,
        path: str,
        paginator: CodatPaginator,
        params: dict[str, Any] | None = None,
        gate: BodyGate | None = None,
        read: Callable[[bytes], Any] = json.loads,
    ) -> Iterator[Any]:
        """Every page body of a listing, as the paginator walks it (each read by `read`, within `gate`)."""
        on_response = self._on_response if read is json.loads else partial(self._on_response, read=read)
        hooks: Any = {"response": [on_response] if gate is None else [gate.enter, on_response]}
        with _api_errors(operation, company_id):
            # A data selector, or dlt parses every page again to guess one.
            pages = self.rest.paginate(
                path, params=params or {}, paginator=paginator, hooks=hooks, data_selector="$"
            )
            for page in pages:
                yield page[0]

    # -- platform --------------------------------------------------------------------------

    def list_companies(
        self, query: str | None = None, page_size: int = DEFAULT_LIST_PAGE_SIZE
    ) -> Iterator[Json]:
        """Every company of the account (paged to the end), optionally filtered by a Codat query."""
        params = {"query": query} if query else {}
        for page in self.pages(
            "list companies", None, "/companies", TotalResultsPaginator(page_size), params
        ):
            yield from page.get("results", [])

    def get_company(self, company_id: str) -> Json:
        """One company."""
        return dict(self._json("get company", company_id, f"/companies/{segment(company_id)}"))

    def list_connections(self, company_id: str, page_size: int = DEFAULT_LIST_PAGE_SIZE) -> Iterator[Json]:
        """Every data connection of a company."""
        path = f"/companies/{segment(company_id)}/connections"
        for page in self.pages("list connections", company_id, path, TotalResultsPaginator(page_size)):
            yield from page.get("results", [])

    def data_status(self, company_id: str) -> Json:
        """The state of each data type in Codat's cache for a company."""
        return dict(self._json("get data status", company_id, f"/companies/{segment(company_id)}/dataStatus"))

    def get_push_operation(self, company_id: str, push_operation_key: str) -> Json:
        """The current state of a push operation."""
        path = f"/companies/{segment(company_id)}/push/{segment(push_operation_key)}"
        return dict(self._json("get push operation", company_id, path))

    # -- customers -------------------------------------------------------------------------

    def list_customers(
        self,
        company_id: str,
        paginator: CodatPaginator,
        params: dict[str, Any] | None = None,
        gate: BodyGate | None = None,
    ) -> Iterator[CustomerBody]:
        """The customer pages of a company, as `paginator` asks for them (read within `gate`)."""
        path = f"/companies/{segment(company_id)}/data/customers"
        return self.pages("list customers", company_id, path, paginator, params, gate, read_customer_body)

    def get_customer(self, company_id: str, customer_id: str) -> Json:
        """One customer."""
        path = f"/companies/{segment(company_id)}/data/customers/{segment(customer_id)}"
        return dict(self._json("get customer", company_id, path))

    def create_customer(
        self,
        company_id: str,
        connection_id: str,
        customer: Json,
        timeout_in_minutes: int | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """Ask Codat to create a customer; returns the (Pending) push operation."""
        path = f"/companies/{segment(company_id)}/connections/{segment(connection_id)}/push/customers"
        params = {"timeoutInMinutes": timeout_in_minutes} if timeout_in_minutes is not None else {}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self._call(
            "create customer",
            company_id,
            "POST",
            path,
            json=customer,
            params=params,
            headers=headers,
        )
        return dict(parsed_body(response))

    def update_customer(
        self,
        company_id: str,
        connection_id: str,
        customer_id: str,
        customer: Json,
        force_update: bool = False,
        timeout_in_minutes: int | None = None,
    ) -> Json:
        """Ask Codat to update a customer; returns the (Pending) push operation."""
        connection = f"/companies/{segment(company_id)}/connections/{segment(connection_id)}"
        path = f"{connection}/push/customers/{segment(customer_id)}"
        params: dict[str, Any] = {"forceUpdate": str(force_update).lower()}
        if timeout_in_minutes is not None:
            params["timeoutInMinutes"] = timeout_in_minutes
        return dict(
            parsed_body(self._call("update customer", company_id, "PUT", path, json=customer, params=params))
        )

    def get_create_update_model(self, company_id: str, connection_id: str) -> Json:
        """The platform's create/update model (`PushOption`) for customers."""
        path = f"/companies/{segment(company_id)}/connections/{segment(connection_id)}/options/customers"
        return dict(self._json("get create/update customer model", company_id, path))

    def _attachments_path(self, company_id: str, connection_id: str, customer_id: str) -> str:
        return (
            f"/companies/{segment(company_id)}/connections/{segment(connection_id)}"
            f"/data/customers/{segment(customer_id)}/attachments"
        )

    def list_customer_attachments(self, company_id: str, connection_id: str, customer_id: str) -> list[Json]:
        """The attachment metadata of one customer on one connection."""
        body = self._json(
            "list customer attachments",
            company_id,
            self._attachments_path(company_id, connection_id, customer_id),
        )
        return list(body.get("attachments") or [])

    def get_customer_attachment(
        self, company_id: str, connection_id: str, customer_id: str, attachment_id: str
    ) -> Json:
        """One attachment's metadata."""
        path = self._attachments_path(company_id, connection_id, customer_id) + f"/{segment(attachment_id)}"
        return dict(self._json("get customer attachment", company_id, path))

    def download_customer_attachment(
        self, company_id: str, connection_id: str, customer_id: str, attachment_id: str
    ) -> bytes:
        """One attachment's bytes."""
        path = (
            self._attachments_path(company_id, connection_id, customer_id)
            + f"/{segment(attachment_id)}/download"
        )
        return self._call("download customer attachment", company_id, "GET", path).content


@contextlib.contextmanager
def _api_errors(operation: str, company_id: str | None) -> Iterator[None]:
    """Raise what a request raises as one `CodatApiError` naming the operation and the company.

    It covers an error answer, no answer (or a cut one), and a run that sends no more requests.
    """
    try:
        yield
    except CodatHTTPError as exc:
        raise CodatApiError(
            operation, company_id, exc.status, exc.error, exc.correlation_id, exc.retry_after
        ) from None
    except RunStopped as exc:
        raise CodatApiError(operation, company_id, None, str(exc), stop_cause=exc) from None
    except (ChunkedEncodingError, OSError) as exc:
        raise CodatApiError(operation, company_id, None, f"{type(exc).__name__}: {exc}") from None


def segment(value: str) -> str:
    """Encode an id as exactly one URL path segment that the server decodes back to the id.

    `quote` escapes `/`, `?`, `#`, `%`, spaces and non-ASCII; an id `.` or `..` would still be a
    dot segment, which URL normalisers remove, so its dots go as `%2E` (kept on the wire by
    `PacedAdapter.send`).
    """
    return escape_dot_segment(quote(value, safe=""))
