"""Creating and updating customers in a company's accounting platform through Codat push operations."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from connector.client import CodatClient
from connector.defaults import DEFAULT_POLL_INTERVAL, DEFAULT_PUSH_TIMEOUT
from connector.records import Json

PENDING = "Pending"
SUCCESS = "Success"
READ_ONLY_FIELDS = frozenset({"id", "modifiedDate", "sourceModifiedDate"})


@dataclass(frozen=True)
class PushResult:
    """What became of one create or update.

    Attributes:
        push_operation_key: Codat's key of the push operation, to poll or to quote to support.
        status: `Pending`, `Success`, `Failed` or `TimedOut`.
        record_id: The id of the customer written, once `status` is `Success`.
        validation_errors: The platform's validation errors, as `"<field>: <message>"`.
        error_message: Codat's `errorMessage` for a failed or timed-out push.
        operation: The push operation as Codat last answered it.
    """

    push_operation_key: str
    status: str
    record_id: str | None = None
    validation_errors: list[str] = field(default_factory=list)
    error_message: str | None = None
    operation: Json = field(default_factory=dict, repr=False)

    @classmethod
    def from_operation(cls, operation: Json) -> PushResult:
        """Read a Codat `PushOperation` body."""
        status = str(operation.get("status"))
        refs = [change.get("recordRef") or {} for change in operation.get("changes") or []]
        record_id = next((str(r["id"]) for r in refs if r.get("id") is not None), None)
        errors = (operation.get("validation") or {}).get("errors") or []
        return cls(
            push_operation_key=str(operation.get("pushOperationKey")),
            status=status,
            record_id=record_id if status == SUCCESS else None,
            validation_errors=[f"{e.get('itemId') or '$'}: {e.get('message')}" for e in errors],
            error_message=operation.get("errorMessage"),
            operation=operation,
        )


def create_customer(
    client: CodatClient,
    company_id: str,
    connection_id: str,
    customer: Json,
    *,
    idempotency_key: str | None = None,
    timeout_in_minutes: int | None = None,
    wait: bool = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    timeout: float = DEFAULT_PUSH_TIMEOUT,
) -> PushResult:
    """Create a customer in the platform behind an accounting connection.

    Every create carries an `Idempotency-Key`, a fresh uuid4 per call unless one is given. The
    client retries a request whose connection dropped or that got `429`/`5xx`, though the first
    attempt may have reached Codat; with the key, Codat answers the retry with the first attempt's
    push operation (for 90 minutes) instead of creating the customer twice. Pass a key you keep
    to make a create safe to repeat across runs too.

    Args:
        client: The Codat client.
        company_id: The company.
        connection_id: Its accounting connection.
        customer: The `Customer` body; `id`, `modifiedDate` and `sourceModifiedDate` are ignored.
        idempotency_key: A uuid naming this create.
        timeout_in_minutes: How long Codat may take before the push is `TimedOut`.
        wait: Whether to poll until the push settles, rather than return it `Pending`.
        poll_interval: Seconds before the first poll and between two polls.
        timeout: Seconds to wait for the push to settle before `TimeoutError`.

    Returns:
        The push's outcome; the customer appears in `data/customers` after Codat's next sync.
    """
    key = idempotency_key or str(uuid.uuid4())
    operation = client.create_customer(company_id, connection_id, customer, timeout_in_minutes, key)
    return _outcome(client, company_id, operation, wait, timeout, poll_interval)


def update_customer(
    client: CodatClient,
    company_id: str,
    connection_id: str,
    customer_id: str,
    customer: Json,
    *,
    force_update: bool = False,
    timeout_in_minutes: int | None = None,
    wait: bool = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    timeout: float = DEFAULT_PUSH_TIMEOUT,
) -> PushResult:
    """Update a customer in the platform behind an accounting connection (a `PUT`: safe to retry).

    Args:
        client: The Codat client.
        company_id: The company.
        connection_id: Its accounting connection.
        customer_id: The customer to update.
        customer: The `Customer` body; `id`, `modifiedDate` and `sourceModifiedDate` are ignored.
        force_update: Overwrite changes made in the platform since Codat last read the customer;
            without it such an update fails.
        timeout_in_minutes: How long Codat may take before the push is `TimedOut`.
        wait: Whether to poll until the push settles, rather than return it `Pending`.
        poll_interval: Seconds before the first poll and between two polls.
        timeout: Seconds to wait for the push to settle before `TimeoutError`.

    Returns:
        The push's outcome.
    """
    operation = client.update_customer(
        company_id, connection_id, customer_id, customer, force_update, timeout_in_minutes
    )
    return _outcome(client, company_id, operation, wait, timeout, poll_interval)


def _outcome(
    client: CodatClient, company_id: str, operation: Json, wait: bool, timeout: float, poll_interval: float
) -> PushResult:
    if wait and operation.get("status") == PENDING:
        key = str(operation["pushOperationKey"])
        operation = wait_for_push(client, company_id, key, timeout, poll_interval, just_pushed=True)
    return PushResult.from_operation(operation)


def wait_for_push(
    client: CodatClient,
    company_id: str,
    key: str,
    timeout: float = DEFAULT_PUSH_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    *,
    just_pushed: bool = False,
) -> Json:
    """Poll a push operation until it is no longer `Pending`, and return it.

    Args:
        client: The Codat client.
        company_id: The company the push was made for.
        key: The `pushOperationKey`.
        timeout: Seconds to wait at most.
        poll_interval: Seconds between two polls.
        just_pushed: Codat has just answered the push `Pending`: the first poll waits one
            interval too, as one sent at once would rarely find it settled and would spend a
            request of the minute's and the day's quota for nothing.

    Raises:
        TimeoutError: It was still `Pending` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    if just_pushed:
        time.sleep(min(poll_interval, timeout))
    while (operation := client.get_push_operation(company_id, key)).get("status") == PENDING:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"Push operation {key} of company {company_id} still Pending after {timeout:g} s"
            )
        time.sleep(min(poll_interval, remaining))
    return operation


TYPES: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Number": (int, float),
    "Boolean": (bool,),
    "DateTime": (str,),
    "Array": (list,),
    "Object": (dict,),
}


def check_against_model(model: Json, customer: Json, platform: str = "the platform") -> list[str]:
    """What a create/update model refuses in a customer, before a push is spent on it.

    A required field that is absent, null, blank, `[]` or `{}`; a value not among the field's
    options; a value of another type. Fields of objects and of each array item are checked when
    their parent is present. Read-only fields are skipped.

    Args:
        model: The `PushOption` from `CodatClient.get_create_update_model`.
        customer: The `Customer` body to push.
        platform: The connection's `platformName`, for the messages.

    Returns:
        One message per problem, naming the field: `"customerName: required by Xero"`.
    """
    properties = {k: v for k, v in (model.get("properties") or {}).items() if k not in READ_ONLY_FIELDS}
    return _problems(properties, customer, "", platform)


def _problems(properties: Json, value: Json, path: str, platform: str) -> list[str]:
    problems: list[str] = []
    for name, prop in properties.items():
        where, child = f"{path}.{name}" if path else name, value.get(name)
        if child is None or child in ([], {}) or (isinstance(child, str) and not child.strip()):
            if prop.get("required"):
                problems.append(f"{where}: required by {platform}")
            continue
        wanted = TYPES.get(str(prop.get("type")))
        if wanted is not None and (
            not isinstance(child, wanted) or isinstance(child, bool) != (bool in wanted)
        ):
            problems.append(f"{where}: {prop.get('type')} expected by {platform}, got {type(child).__name__}")
            continue
        options = [o.get("value") for o in prop.get("options") or [] if isinstance(o, dict)]
        if options and isinstance(child, str) and child not in options:
            problems.append(f"{where}: {child!r} is not one of {platform}'s {', '.join(map(str, options))}")
        nested = prop.get("properties") or {}
        if isinstance(child, dict):
            problems += _problems(nested, child, where, platform)
        elif isinstance(child, list):
            for index, item in enumerate(child):
                if isinstance(item, dict):
                    problems += _problems(nested, item, f"{where}[{index}]", platform)
    return problems
