"""The enclave's HTTP/1.1 server: aiohttp's, hardened against hostile and slow clients.

What aiohttp does not do by itself, and this module adds:
- No request byte reaches a log line. aiohttp logs a request it cannot parse with the
  parser's exception, whose message quotes the offending bytes (a request line with its
  query string, a header value, chunk contents), and a traceback; those bytes were
  protected by TLS. Here such errors are logged by exception type only.
- Every error is the JSON error shape (`{"error": {"code", "message"}}`) with a fixed
  message, never aiohttp's `text/plain` page that echoes the input.
- Time limits: the TLS handshake and each request's line and headers (from its first byte)
  within `request_header_timeout_ms`, its body within `request_read_timeout_ms`, and an idle
  session closed after `idle_connection_timeout_ms`. A client sending a byte every few
  seconds, an HTTP/0.9 line that never completes, or a chunk that never ends, cannot hold a
  session open beyond them.
- Session caps per interface, as CCF's: past `max_open_sessions_soft` a new session is
  answered `503` and closed; past `max_open_sessions_hard` it is closed before any TLS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import HttpVersion10, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from charter.enclave_app.app import HttpResponse
from charter.enclave_app.interface import REQUEST_BODY_BYTES_MAX
from charter.governance.errors import http_status

LOG = logging.getLogger("enclave.http")

# Bytes of a 503 session's input read before it is answered (anything is enough).
_OVERLOADED_READ_BYTES_MAX = 64 * 1024
# After an error answer, the rest of an unread body is discarded for at most this long.
_LINGER_S = 1.0

# The session layer is handed a status (by aiohttp's parser or a body read), not a code: the
# code it answers for each, whose row in STATUS_BY_CODE must be that same status.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("InvalidInput", "Malformed HTTP request"),
    408: ("RequestTimeout", "The request did not arrive in time"),
    413: ("RequestTooLarge", "Request is too large"),
    431: ("RequestHeaderTooLarge", "Request headers are too large"),
    500: ("InternalError", "Internal error"),
    503: ("SessionLimitReached", "Too many open sessions; retry later"),
    504: ("GatewayTimeout", "The request timed out"),
    505: ("UnsupportedHttpVersion", "Only HTTP/1.0 and HTTP/1.1 are served"),
}
assert all(http_status(code) == status for status, (code, _) in _ERRORS.items())


def error_body(status: int) -> bytes:
    # A status with no entry of its own is answered as its class's generic code (the caller
    # sends `error_status(status)`, so the code and the status on the wire agree).
    code, message = _ERRORS[error_status(status)]
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_status(status: int) -> int:
    """The status actually sent for `status`: itself, or 400/500 if the layer has no code for it."""
    if status in _ERRORS:
        return status
    return 400 if status < 500 else 500


def raw_error_response(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the session (written outside aiohttp)."""
    status = error_status(status)
    body = error_body(status)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """A request once TLS and HTTP are done with it: what the server's handler is given."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]  # case-insensitive lookups
    body: bytes
    peer_der: bytes | None  # the client's TLS certificate, DER
    source: str | None  # the client's address, for rate limits and logs


# What an `HttpServer` serves with: a request in plain values, its answer.
Handler = Callable[[PlainRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """`NodeConfig.rpc_interface`, in seconds."""

    max_open_sessions_soft: int
    max_open_sessions_hard: int
    idle_timeout_s: float
    header_timeout_s: float
    read_timeout_s: float

    def __post_init__(self) -> None:
        assert 1 <= self.max_open_sessions_soft <= self.max_open_sessions_hard
        assert min(self.idle_timeout_s, self.header_timeout_s, self.read_timeout_s) > 0

    @staticmethod
    def from_config(config: Any) -> SessionLimits:
        return SessionLimits(
            max_open_sessions_soft=config.max_open_sessions_soft,
            max_open_sessions_hard=config.max_open_sessions_hard,
            idle_timeout_s=config.idle_connection_timeout_ms / 1000,
            header_timeout_s=config.request_header_timeout_ms / 1000,
            read_timeout_s=config.request_read_timeout_ms / 1000,
        )


class BodyError(Exception):
    """The body could not be read: `status` is 408 (too slow) or 413 (too large)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def read_body(request: web.BaseRequest, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refused as soon as it passes `max_bytes` or takes over `timeout_s`."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyError(413)
    content = request.content
    if content.is_eof():
        # The usual small request: its whole body arrived with its headers and is buffered
        # (aiohttp stops reading past its high-water mark, so this is bounded). Nothing to
        # wait for, so no deadline timer to arm and cancel (~2% of a write's CPU).
        data = content.read_nowait(-1)
        if len(data) > max_bytes:
            raise BodyError(413)
        return data
    parts: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            # `read(n)` returns what is buffered now, not the whole body: read to the end.
            while chunk := await content.read(256 * 1024):
                received += len(chunk)
                if received > max_bytes:
                    raise BodyError(413)
                parts.append(chunk)
    except TimeoutError:
        raise BodyError(408) from None
    return b"".join(parts)


def json_error(status: int) -> web.Response:
    """An error answer that also ends the session (its input may not have been read)."""
    status = error_status(status)
    response = web.Response(status=status, body=error_body(status), content_type="application/json")
    response.force_close()
    return response


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with quiet errors and a header deadline."""

    def __init__(
        self,
        manager: HttpServer,
        *,
        on_lost: Callable[[], None],
        header_timeout_s: float,
        **kw: Any,
    ) -> None:
        super().__init__(manager, **kw)
        self._on_lost = on_lost
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            # Headers of a request (or a parse error) arrived: its deadline is met. Bytes of
            # a next request in the same read are left to the idle timeout.
            self._cancel_header_timer()
            if self._messages:
                self._last_payload = self._messages[-1][1]
        elif (
            data
            and self._header_timer is None
            and not self._force_close
            and (self._last_payload is None or self._last_payload.is_eof())
        ):
            # The first byte of a request line: its headers must follow in time.
            self._header_timer = self._loop.call_later(
                self._header_timeout_s, self._header_timed_out, self._request_count
            )

    def _header_timed_out(self, request_count: int) -> None:
        self._header_timer = None
        if self._force_close or self._request_count != request_count:
            return
        LOG.info("event=http_header_timeout")
        transport = self.transport
        if transport is not None and not self._messages and not self._request_in_progress:
            transport.write(raw_error_response(408, "Request Timeout"))
        self.force_close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        try:
            super().connection_lost(exc)
        finally:
            on_lost, self._on_lost = self._on_lost, _nothing
            on_lost()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Never log or echo `message` or `exc`'s text: both quote request bytes.
        if isinstance(exc, LineTooLong):
            status = 431
        elif isinstance(exc, BadHttpMessage):
            status = 400  # includes malformed chunked bodies, raised while reading
        LOG.info(
            "event=http_request_refused status=%d error=%s",
            status,
            type(exc).__name__ if exc is not None else "none",
        )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; closing the session")
        return json_error(status)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        error = kw.get("exc_info")
        name = type(error).__name__ if isinstance(error, BaseException) else "unknown"
        LOG.error("event=http_server_error error=%s", name)

    def log_debug(self, *args: Any, **kw: Any) -> None:
        return  # aiohttp's debug lines may quote request bytes


def _nothing() -> None:
    return None


class _Overloaded(asyncio.Protocol):
    """A session past the soft cap: answer its first bytes with 503 and close."""

    def __init__(self, on_lost: Callable[[], None], timeout_s: float) -> None:
        self._on_lost = on_lost
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(raw_error_response(503, "Service Unavailable"))
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        on_lost, self._on_lost = self._on_lost, _nothing
        on_lost()


class HttpServer(web.Server):
    """`web.Server` for sockets handed over by the host, with `SessionLimits` applied."""

    def __init__(
        self, handler: Handler, limits: SessionLimits, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        async def serve_request(request: web.BaseRequest) -> web.StreamResponse:
            # aiohttp serves an HTTP/0.9 request line as if it were a request: refuse it.
            if request.version < HttpVersion10:
                return json_error(505)
            try:
                body = await read_body(
                    request, max_bytes=REQUEST_BODY_BYTES_MAX, timeout_s=limits.read_timeout_s
                )
            except BodyError as exc:
                return json_error(exc.status)
            transport = request.transport
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            plain = PlainRequest(
                request.method,
                request.path,
                request.query_string,
                request.headers,
                body,
                peer_der,
                request.remote,
            )
            result = await handler(plain)
            headers = dict(result.headers)
            if result.content_type:
                headers["Content-Type"] = result.content_type
            return web.Response(status=result.status, body=result.body, headers=headers)

        # No access log: a line per request costs ~10% of a write, and names callers' paths.
        super().__init__(
            serve_request,
            loop=loop,
            access_log=None,
            keepalive_timeout=limits.idle_timeout_s,
            lingering_time=_LINGER_S,
        )
        self.limits = limits
        self.open_sessions = 0

    def _protocol(self, on_lost: Callable[[], None]) -> _GuardedHandler:
        return _GuardedHandler(
            self,
            on_lost=on_lost,
            header_timeout_s=self.limits.header_timeout_s,
            loop=self._loop,
            **self._kwargs,
        )

    def serve(self, sock: socket.socket, ssl_context: ssl.SSLContext) -> None:
        """Serve one accepted socket (TLS on it), or turn it away past the session caps."""
        limits = self.limits
        if self.open_sessions >= limits.max_open_sessions_hard:
            LOG.warning("event=session_refused open=%d cap=hard", self.open_sessions)
            sock.close()
            return
        self.open_sessions += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_sessions -= 1

        factory: Callable[[], asyncio.Protocol]
        if self.open_sessions > limits.max_open_sessions_soft:
            LOG.warning("event=session_overloaded open=%d cap=soft", self.open_sessions)
            factory = lambda: _Overloaded(release, limits.header_timeout_s)  # noqa: E731
        else:
            factory = lambda: self._protocol(release)  # noqa: E731
        sock.setblocking(False)
        loop = self._loop
        task = loop.create_task(
            loop.connect_accepted_socket(
                factory, sock, ssl=ssl_context, ssl_handshake_timeout=limits.header_timeout_s
            )
        )

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or task.exception() is not None:
                # The handshake failed or timed out: no protocol ever saw the session.
                if not task.cancelled():
                    LOG.info("event=tls_handshake_failed error=%s", type(task.exception()).__name__)
                release()

        task.add_done_callback(done)
