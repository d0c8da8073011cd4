"""The emulator's HTTP/1.1 server: reads requests, hands them to an `Emulator`, writes its answers."""

from __future__ import annotations

import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

from connector.emulator.emulator import Emulator
from connector.emulator.faults import deliver
from connector.emulator.wire import LOOPBACK, Request, Response


def parse_request(method: str, target: str, headers: Any, body: bytes, client_ip: str = LOOPBACK) -> Request:
    """Split a request target into decoded path segments and query parameters.

    As an RFC 3986 server does, the raw path loses its dot segments first and each segment is
    percent-decoded after: a raw `..` climbs a level, `%2E%2E` is the id `..`.
    """
    path, _, query = target.partition("?")
    raw_pairs = parse_qsl(query, keep_blank_values=True)
    raw_params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        raw_params.setdefault(unquote(name), value)
    return Request(
        method=method,
        path=path,
        segments=[unquote(s) for s in raw_segments(path)],
        params=dict(reversed(raw_pairs)) if raw_pairs else {},
        raw_params=raw_params,
        headers=headers,
        body=body,
        client_ip=client_ip,
    )


def raw_segments(path: str) -> list[str]:
    """The segments of a raw path, still percent-encoded, with `.` and `..` removed (RFC 3986 5.2.4).

    Leading and trailing slashes are dropped: `/companies/` is `/companies`.
    """
    stripped = path.strip("/")
    segments: list[str] = []
    for segment in stripped.split("/") if stripped else []:
        if segment == "..":
            del segments[-1:]
        elif segment != ".":
            segments.append(segment)
    return segments


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CodatEmulator/1.0"
    # Headers and body go out in two writes: with Nagle on, keep-alive clients wait ~40 ms for each.
    disable_nagle_algorithm = True
    emulator: Emulator

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: the request log is kept in memory instead."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = parse_request(self.command, self.path, self.headers, body, self.client_address[0])
        response, fault = self.emulator.handle(request)
        deliver(response, fault, self)

    def send_answer(self, response: Response, cut: int | None = None) -> None:
        """Write the answer; with `cut`, only that many body bytes, then close the connection."""
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body if cut is None else response.body[:cut])
        self.wfile.flush()

    def reset_connection(self) -> None:
        """Drop the connection with a TCP reset (`SO_LINGER` 0), sending nothing."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that drop connections are part of the job, not errors to print."""


class EmulatorServer:
    """Runs an `Emulator` on a loopback port in a background thread."""

    def __init__(self, emulator: Emulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator or Emulator()
        handler = type("Handler", (_Handler,), {"emulator": self.emulator})
        self._httpd = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use in place of `https://api.codat.io`."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.emulator.mutator.stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread (the command line's way)."""
        self._httpd.serve_forever()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
