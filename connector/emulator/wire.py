"""What travels over the wire: requests, answers, and Codat's error messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
ERROR_TEXTS = {
    "400": "Error processing request - not valid.",
    "401": "Unauthorized",
    "402": "Your account's plan does not cover this request.",
    "403": "You are using an outdated API key or a key not associated with that resource.",
    "404": "No data available for this request.",
    "409": "The data set has not been requested.",
    "429": "You have made too many requests in a given amount of time; please retry later.",
    "500": "There is a problem with our server. Please try again later.",
    "503": "The Codat API is temporarily offline for maintenance. Please try again later.",
}


@dataclass
class Request:
    """An HTTP request, its path split into decoded segments."""

    method: str
    path: str  # as sent, without the query string
    segments: list[str]
    params: dict[str, str]
    raw_params: dict[str, str]  # still URL-encoded, for Codat's query length limit
    headers: Mapping[str, str]
    body: bytes = b""
    client_ip: str = LOOPBACK  # the peer's address, which the per-IP rate limit counts


@dataclass
class Response:
    """An HTTP answer."""

    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    records: int = 0  # the records of a page it carries (for the per-record latency)


class CodatError(Exception):
    """An answer in Codat's `ErrorMessage` shape."""

    def __init__(self, status: int, error: str, service: str = "PublicApi") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.service = service

    def response(self) -> Response:
        """The error as Codat sends it, with a fresh `correlationId`."""
        return error_response(self.status, self.error, self.service)


def error_response(
    status: int, error: str, service: str = "PublicApi", headers: dict[str, str] | None = None
) -> Response:
    """An `ErrorMessage` answer."""
    body = {
        "statusCode": status,
        "service": service,
        "error": error,
        "correlationId": uuid.uuid4().hex,
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
    }
    return Response(status, json.dumps(body).encode(), headers=dict(headers or {}))


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer."""
    return Response(status, json.dumps(body, ensure_ascii=False).encode())
