"""Reading untrusted HTTP input for the collector: bounded in size, in time and in connections.

- Headers: aiohttp (≥ 3.14.4) arms its keep-alive timer when a connection opens and again after
  each response, and closes the connection if no complete request has arrived by then; bytes
  trickling in do not re-arm it. So `keepalive_timeout` is a deadline for the request line and
  headers from the connection's start (and the idle time between requests). Before 3.14.4 a
  connection that never completed its first request stayed open forever (aiohttp #13681).
- Body: aiohttp has no body deadline; `read_body` reads within one (408 past it).
- Connections: aiohttp has no cap; `ConnectionCap` is the protocol factory given to
  `loop.create_server`, handing each connection to aiohttp until the cap is reached, and past it
  answering 503 itself and closing.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web


class HTTPProblem(Exception):
    """An error answer: `{code, message}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.close = close  # the connection is in an unknown state (a body half read): close it


def problem(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers,
                             dumps=lambda d: orjson.dumps(d).decode())


def basic_user(header: str | None) -> str | None:
    """The user name of `Authorization: Basic base64(user:password)`; None when there is none."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:  # ValueError: not base64, not ASCII (a \xff byte arrives as a lone surrogate), not UTF-8
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:
        raise HTTPProblem(401, "unauthorized", "the Authorization header is not valid Basic credentials") from None
    return decoded.partition(":")[0] or None


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The raw body, refused past `limit` bytes before it is all read, and past `timeout` seconds
    (a client trickling a byte at a time holds a connection and a buffer)."""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPProblem(413, "too_large", f"the body is {request.content_length} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise HTTPProblem(413, "too_large", f"the body is over the {limit}-byte limit", close=True)
    except TimeoutError:
        raise HTTPProblem(408, "timeout", f"the body did not arrive within {timeout:g} s", close=True) from None
    return bytes(body)


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding: gzip, never producing more than `limit` bytes (gzip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise HTTPProblem(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported (gzip is)")
    out = bytearray()
    data = body
    try:
        while data:  # concatenated gzip members are one valid stream
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise HTTPProblem(413, "too_large", f"the decompressed body is over the {limit}-byte limit")
            if not inflater.eof:
                raise HTTPProblem(400, "invalid_encoding", "the gzip stream is truncated")
            data = inflater.unused_data
    except zlib.error as exc:
        raise HTTPProblem(400, "invalid_encoding", f"the body is not valid gzip: {exc}") from None
    return bytes(out)


# --- the connection cap --------------------------------------------------------------------

_BUSY_BODY = orjson.dumps({"code": "busy", "message": "too many connections; retry later"})
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
#: how long a refused connection may stay open for the client to read the 503
REFUSED_LINGER = 1.0


class _Refused(asyncio.Protocol):
    """Answers 503 at once, half-closes, and drops the connection when the client closes its side
    or after REFUSED_LINGER. Closing outright with the client's request unread would reset the
    connection (RST) and the client might never read the answer."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(BUSY_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same whatever it is

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ConnectionCap:
    """The protocol factory for `loop.create_server`: aiohttp's handler while fewer than `limit`
    connections are open, past that a `_Refused` 503.

    aiohttp registers a connection in `server.connections` in `connection_made`, which asyncio's
    selector loop calls in the iteration after the factory; one accept round can create many
    connections before that. So connections handed out in this iteration count too
    (`_unregistered`), forgotten in the next, where their `connection_made` runs first. Nothing is
    counted by hand for the life of a connection, so nothing can leak and refuse clients forever.
    """

    def __init__(self, server: web.Server, limit: int, refused: Callable[[], None]) -> None:
        self.server = server
        self.limit = limit
        self.refused = refused
        self._unregistered = 0

    def _forget(self) -> None:
        self._unregistered = 0

    @property
    def open(self) -> int:
        return len(self.server.connections) + self._unregistered

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.limit:
            self.refused()
            return _Refused()
        if self._unregistered == 0:
            asyncio.get_running_loop().call_soon(self._forget)
        self._unregistered += 1
        return self.server()
