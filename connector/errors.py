"""Every error the connector raises on purpose, under one base class, `CodatError`.

A caller that wants "anything the connector reports" catches `CodatError`; anything else that
escapes is a bug. Transport-level errors the retrying session must see as `requests` errors
(`CodatHTTPError`, `InvalidBody` in `connector.client`) stay there and become `CodatApiError`
before they leave the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class CodatError(Exception):
    """Base class of the connector's errors."""


class InvalidOption(CodatError, ValueError):
    """A setting or flag out of range, or two that contradict each other; the message names it."""


class CodatApiError(CodatError):
    """A Codat operation that failed for good, named with its company and Codat's details."""

    def __init__(
        self,
        operation: str,
        company_id: str | None,
        status: int | None,
        error: str,
        correlation_id: str | None = None,
        retry_after: float | None = None,
        stop_cause: RunStopped | None = None,
    ) -> None:
        self.operation = operation
        self.company_id = company_id
        self.status = status
        self.error = error
        self.correlation_id = correlation_id
        self.retry_after = retry_after
        self.stop_cause = stop_cause  # why the run sent no more requests, if so
        where = f" for company {company_id}" if company_id else ""
        status_text = f"HTTP {status}" if status else "stopped" if stop_cause else "no answer"
        cid = f" (correlationId {correlation_id})" if correlation_id else ""
        super().__init__(f"{operation}{where} failed: {status_text}: {error}{cid}")


class RunStopped(CodatError):
    """No more requests in this run: the API is unreachable, the daily quota is spent, or a signal came.

    Not a `requests` exception, so dlt's retrying session gives it up at once.
    """

    def __init__(self, kind: str, detail: str, signum: int | None = None) -> None:
        self.kind = kind
        self.detail = detail
        self.signum = signum  # the signal that interrupted the run, if one did
        super().__init__(f"{kind}: {detail}")


class PagingError(CodatError):
    """Codat's pages cannot be walked safely; the company's read stops where it got to."""


class RepeatedPageError(PagingError):
    """Codat answered the same request with the same page twice: paging would never end."""


class PipelineBusy(CodatError):
    """Another run holds the pipeline."""


class DestinationUnusable(CodatError):
    """The destination cannot be written: its DuckDB file cannot be made or opened."""


class DestinationLocked(DestinationUnusable):
    """Another process holds the DuckDB file."""


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and every error behind it, each once.

    Behind it are its cause and context, and what dlt's wrappers keep as attributes
    (`inner_exc`, `exception`).
    """
    seen: set[int] = set()
    waiting: list[Any] = [exc]
    while waiting:
        error = waiting.pop(0)
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        waiting += [error.__cause__, error.__context__]
        waiting += [getattr(error, name, None) for name in ("inner_exc", "exception")]
