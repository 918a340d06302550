"""The enclave's HTTP/1.1 server: an `asyncio.Protocol` over the TLS transport, hardened
against hostile and slow clients.

The host accepts TCP and hands each socket over (`HttpServer.serve`); uvloop's TLS transport
feeds a `_Session`, which frames requests with `http_parse.RequestReader` (httptools, with
the bounds listed there), awaits the handler for one request at a time and writes each
answer in one `transport.write`. What it promises:
- No request byte reaches a log line: errors are logged by status (and exception type for
  a failing handler) only.
- Every error is the JSON error shape (`{"error": {"code", "message"}}`) with a fixed
  message, never one that echoes the input; each error answer ends the session: 400 for a
  malformed request, 431 for a request line or headers past their bounds, 413 for a body
  past `REQUEST_BODY_BYTES_MAX` (refused before it is all read), 505 for anything but
  HTTP/1.0 and HTTP/1.1 (an HTTP/0.9 request line), 408 for a request that did not arrive
  in time, 500 for a handler that failed.
- Time limits: the TLS handshake and each request's line and headers (from its first byte)
  within `request_header_timeout_ms`, its body within `request_read_timeout_ms`, and an idle
  session closed after `idle_connection_timeout_ms`. A client sending a byte every few
  seconds, an HTTP/0.9 line that never completes, or a chunk that never ends, cannot hold a
  session open beyond them. No deadline runs while the node is handling a request.
- Keep-alive: HTTP/1.1 sessions stay open unless `Connection: close`; HTTP/1.0 ones only
  with `Connection: keep-alive`, answered with `Connection: keep-alive`. Pipelined requests
  are answered in order, one at a time; `Expect: 100-continue` is answered `100 Continue`
  when the server is ready to read that body; chunked bodies are read; a HEAD request (and
  a 204 or 304 answer) gets the headers only.
- Back-pressure: while the transport's write buffer is over its high-water mark, or a
  complete request waits behind the one being handled, the session reads nothing more and
  starts no handler: a client that does not read its answers cannot make the node buffer
  them without bound.
- Session caps per interface, as CCF's: past `max_open_sessions_soft` a new session is
  answered `503` and closed; past `max_open_sessions_hard` it is closed before any TLS.
  `open_sessions` counts each session once, however it ends (handshake failure, reset,
  timeout, error).
- `shutdown(timeout)`: no new session; idle sessions are closed, handlers in flight finish
  (and their sessions close) within the timeout, then whatever remains is aborted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, cast

from charter.enclave_app.app import HttpResponse
from charter.enclave_app.http_parse import BODY, HEAD, IDLE, ParsedRequest, RequestReader
from charter.enclave_app.interface.logs import REPEATS_LIMITED
from charter.governance.errors import http_status

LOG = logging.getLogger("enclave.http")

# After an error answer, the session's further input is read and discarded for at most this
# long before it is closed: closing a socket with unread input resets it, and the client
# could lose the answer.
_LINGER_S: Final = 1.0
# An answer body at least this large is written after its head rather than copied onto it.
_COPY_BODY_BYTES_MAX: Final = 64 * 1024

# The session layer is handed a status (by the parser, a deadline or a failed handler), not
# a code: the code it answers for each, whose row in STATUS_BY_CODE must be that same status.
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

_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


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


def json_error(status: int) -> HttpResponse:
    """The session layer's error answer for `status`, as an `HttpResponse`."""
    status = error_status(status)
    return HttpResponse(status, error_body(status), {}, "application/json")


def raw_error_response(status: int, reason: str | None = None) -> bytes:
    """A complete HTTP/1.1 error response that closes the session."""
    status = error_status(status)
    body = error_body(status)
    head = (
        f"HTTP/1.1 {status} {reason or _REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


def response_head(
    status: int,
    headers: Mapping[str, str],
    content_type: str | None,
    content_length: int | None,
    connection: str | None,
) -> bytes:
    """The status line and headers of an answer; ValueError if a name or value would break
    a line (the handler's headers are not trusted to be free of CR and LF)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    lines.append("\r\n")
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) or "\r" in head.replace("\r\n", ""):
        raise ValueError("a header name or value holds a line break")
    return head.encode()


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """A request once TLS and HTTP are done with it: what the server's handler is given."""

    method: str
    path: str  # as sent, percent-encoded
    query_string: str  # as sent, without "?"
    headers: Mapping[str, str]  # case-insensitive lookups
    body: bytes
    peer_der: bytes | None  # the client's TLS certificate, DER
    source: str | None  # the client's address, for rate limits and logs


# What an `HttpServer` serves with: a request in plain values, its answer, given at once, as a
# future (no task is made for it), or as any other awaitable.
Handler = Callable[[PlainRequest], HttpResponse | Awaitable[HttpResponse]]


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


def _nothing() -> None:
    return None


# What a session's deadline is for (`_Session._waiting`): nothing (a handler is running, or
# the session is ending), the next request, a request's head, a request's body.
_NONE: Final = -1


class _Session(asyncio.Protocol):
    """One client session: requests in, the handler's answers out, in order."""

    def __init__(
        self,
        handler: Handler,
        limits: SessionLimits,
        loop: asyncio.AbstractEventLoop,
        on_made: Callable[[_Session], None],
        on_lost: Callable[[_Session], None],
    ) -> None:
        self._handler = handler
        self._on_made = on_made
        self._limits = limits
        self._loop = loop
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._reader = RequestReader()
        self._peer_der: bytes | None = None
        self._source: str | None = None
        self.busy = False  # a handler is running (its answer not yet written)
        self._ending = False  # no more requests: an error answer, a close, a shutdown
        self._reading_paused = False
        self._writing_paused = False
        # One timer per session, moved by assigning `_deadline` (no timer per request).
        self._waiting = _NONE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closes_at: float | None = None  # once the session is ending
        # The handler's task, or the future of its answer, while busy.
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[HttpResponse] | None = None

    def cut_off_at(self) -> float | None:
        """The loop time by which the session ends if its client sends nothing more; None
        only while a handler runs (its answer decides what comes next)."""
        if self._closes_at is not None:
            return self._closes_at
        if self._waiting == _NONE:
            assert self.busy or self._ending
            return None
        return self._deadline

    # ------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._peer_der = ssl_object.getpeercert(binary_form=True)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._source = str(peer[0])
        self._on_made(self)
        self._wait(IDLE, self._loop.time())

    def data_received(self, data: bytes) -> None:
        if self._ending:
            return  # lingering after an error answer: discarded
        reader = self._reader
        reader.feed(data)
        if reader.events:
            self._next()
        if not self.busy and not self._ending:
            self._await_input()
        elif reader.events and not self._reading_paused and self._transport is not None:
            # A complete request waits behind the one being handled: read no more.
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        # The client will send nothing more: answer what is being handled, then close.
        if not self.busy:
            return None  # the transport closes itself
        self._ending = True
        self._waiting = _NONE
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_reading()
        self._next()
        if not self.busy and not self._ending:
            self._await_input()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._ending = True
        self._waiting = _NONE
        if self._closes_at is None:
            self._closes_at = self._loop.time()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_lost, self._on_lost = self._on_lost, _nothing_session
        on_lost(self)

    # ------------------------------------------------------------ requests
    def _next(self) -> None:
        """Start the handler of each complete request the session may start: an answer the
        handler gives at once is written here, and the next request started (a loop, not a
        recursion, however many requests a client pipelined)."""
        reader = self._reader
        while not (self.busy or self._ending or self._writing_paused or not reader.events):
            event = reader.events.popleft()
            if isinstance(event, int):
                self._refuse(event)
                return
            self.busy = True
            self._waiting = _NONE  # the node's time, not the client's
            plain = PlainRequest(
                event.method,
                event.path,
                event.query_string,
                event.headers,
                event.body,
                self._peer_der,
                self._source,
            )
            try:
                result = self._handler(plain)
            except Exception as exc:
                self._handler_failed(exc)
                return
            if isinstance(result, HttpResponse):
                if not self._answered(event, result):
                    return
            elif isinstance(result, asyncio.Future):
                # No task for a request whose answer comes from elsewhere (a frontend's
                # link): the future's callback writes it.
                self._pending = result
                result.add_done_callback(functools.partial(self._future_done, event))
                return
            else:
                # Referenced here until it ends: the loop holds tasks only weakly.
                self._task = self._loop.create_task(self._serve(event, result))
                return

    async def _serve(self, request: ParsedRequest, result: Awaitable[HttpResponse]) -> None:
        try:
            response = await result
        except Exception as exc:
            self._task = None
            self._handler_failed(exc)
            return
        self._task = None
        if self._answered(request, response):
            self._go_on()

    def _future_done(self, request: ParsedRequest, future: asyncio.Future[HttpResponse]) -> None:
        self._pending = None
        if future.cancelled():  # an abort: the transport is gone with it
            self.busy = False
            return
        exc = future.exception()
        if exc is not None:
            self._handler_failed(exc)
            return
        if self._answered(request, future.result()):
            self._go_on()

    def _go_on(self) -> None:
        """After an answer written out of turn: the next request, else wait for one."""
        self._next()
        if not self.busy and not self._ending:
            self._await_input()

    def _handler_failed(self, exc: BaseException) -> None:
        # The exception's text may quote request bytes: its type only.
        LOG.error("event=http_server_error error=%s", type(exc).__name__, extra=REPEATS_LIMITED)
        self.busy = False
        self._refuse(500)

    def _answered(self, request: ParsedRequest, result: HttpResponse) -> bool:
        """Write the handler's answer; True if the session goes on to its next request."""
        try:
            head, body = self._render(request, result)
        except Exception as exc:
            self._handler_failed(exc)
            return False
        self.busy = False
        transport = self._transport
        if transport is None:
            return False  # the client went away while its request was handled
        self._write_answer(transport, head, body)
        if not request.keep_alive or self._ending:
            self._end()
            return False
        self._resume_reading()
        return True

    @staticmethod
    def _write_answer(transport: asyncio.Transport, head: bytes, body: bytes) -> None:
        # Its own frame in profiles: TLS encryption and the send, most of an answer's cost.
        if len(body) < _COPY_BODY_BYTES_MAX:
            transport.write(head + body)  # one TLS record and one send for most answers
        else:
            transport.write(head)
            transport.write(body)

    def _render(self, request: ParsedRequest, result: HttpResponse) -> tuple[bytes, bytes]:
        """The answer's head, and the body to send after it (none for HEAD, 204, 304)."""
        status: int = result.status
        body: bytes = result.body
        without_body = status in (204, 304) or status < 200
        if not request.keep_alive or self._ending:  # the client's choice, or a shutdown
            connection: str | None = "close"
        elif request.http_10:
            connection = "keep-alive"
        else:
            connection = None
        head = response_head(
            status,
            result.headers,
            result.content_type,
            None if without_body else len(body),
            connection,
        )
        if without_body or request.method == "HEAD":
            return head, b""
        return head, body

    def _refuse(self, status: int) -> None:
        """Answer the error `status` and end the session."""
        transport = self._transport
        if transport is None or self._ending:
            return
        self._ending = True
        self._waiting = _NONE
        LOG.info("event=http_request_refused status=%d", status, extra=REPEATS_LIMITED)
        transport.write(raw_error_response(status))
        # Read and drop what the client still sends, briefly, so that closing does not
        # reset a session whose answer is still on its way.
        self._writing_paused = False
        self._resume_reading()
        self._closes_at = self._loop.time() + _LINGER_S
        self._loop.call_at(self._closes_at, transport.close)

    def _end(self) -> None:
        self._ending = True
        self._waiting = _NONE
        self._closes_at = self._loop.time()
        if self._transport is not None:
            self._transport.close()

    def shut_down(self) -> None:
        """Close now if idle, else once the answer being prepared is written."""
        self._ending = True
        if not self.busy:
            self._end()

    def abort(self) -> None:
        """End the session now (a shutdown's time is up): its handler too, if one runs."""
        if self._task is not None:
            self._task.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._transport is not None:
            self._transport.abort()

    def _resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._writing_paused
            and not self._reader.events
            and self._transport is not None
        ):
            self._reading_paused = False
            self._transport.resume_reading()

    # ------------------------------------------------------------ deadlines
    def _await_input(self) -> None:
        """Set the deadline of what the session now waits for (no handler is running)."""
        reader = self._reader
        if reader.continue_wanted and not reader.events and self._transport is not None:
            reader.continue_wanted = False
            self._transport.write(_CONTINUE)
        phase = reader.phase
        if phase != self._waiting:
            self._wait(phase, self._loop.time())

    def _wait(self, phase: int, now: float) -> None:
        limits = self._limits
        if phase == IDLE:
            timeout_s = limits.idle_timeout_s
        elif phase == HEAD:
            timeout_s = limits.header_timeout_s
        else:
            assert phase == BODY
            timeout_s = limits.read_timeout_s
        self._waiting = phase
        self._deadline = deadline = now + timeout_s
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._deadline_passed)
            self._timer_at = deadline

    def _deadline_passed(self) -> None:
        self._timer = None
        if self._waiting == _NONE or self._transport is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._deadline_passed)
            self._timer_at = self._deadline
            return
        if self._waiting == IDLE:
            self._end()
        elif self._waiting == HEAD:
            LOG.info("event=http_header_timeout", extra=REPEATS_LIMITED)
            self._refuse(408)
        else:
            LOG.info("event=http_body_timeout", extra=REPEATS_LIMITED)
            self._refuse(408)


def _nothing_session(session: _Session) -> None:
    return None


class _Overloaded(asyncio.Protocol):
    """A session past the soft cap: answer its first bytes with 503 and close."""

    def __init__(self, on_lost: Callable[[], None], timeout_s: float) -> None:
        self._on_lost = on_lost
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(raw_error_response(503))
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        on_lost, self._on_lost = self._on_lost, _nothing
        on_lost()


class HttpServer:
    """Serves sockets handed over by the host, with `SessionLimits` applied."""

    def __init__(
        self, handler: Handler, limits: SessionLimits, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.open_sessions = 0
        self._loop = loop
        self._sessions: set[_Session] = set()
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._drained: asyncio.Future[None] | None = None

    def serve(self, sock: socket.socket, ssl_context: ssl.SSLContext) -> None:
        """Serve one accepted socket (TLS on it), or turn it away past the session caps."""
        limits = self.limits
        if not self._accepting:
            sock.close()
            return
        if self.open_sessions >= limits.max_open_sessions_hard:
            LOG.warning(
                "event=session_refused open=%d cap=hard", self.open_sessions, extra=REPEATS_LIMITED
            )
            sock.close()
            return
        self.open_sessions += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_sessions -= 1

        def session_lost(session: _Session) -> None:
            self._sessions.discard(session)
            release()
            if not self._sessions and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

        def new_session() -> _Session:
            # Counted in `_sessions` once TLS is up (a failed handshake never calls back).
            return _Session(self.handler, limits, self._loop, self._sessions.add, session_lost)

        factory: Callable[[], asyncio.Protocol]
        if self.open_sessions > limits.max_open_sessions_soft:
            LOG.warning(
                "event=session_overloaded open=%d cap=soft",
                self.open_sessions,
                extra=REPEATS_LIMITED,
            )
            factory = lambda: _Overloaded(release, limits.header_timeout_s)  # noqa: E731
        else:
            factory = new_session
        sock.setblocking(False)
        loop = self._loop
        task = loop.create_task(
            loop.connect_accepted_socket(
                factory, sock, ssl=ssl_context, ssl_handshake_timeout=limits.header_timeout_s
            )
        )
        self._handshakes.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._handshakes.discard(task)
            if task.cancelled() or task.exception() is not None:
                # The handshake failed or timed out: no protocol ever saw the session.
                if not task.cancelled():
                    LOG.info(
                        "event=tls_handshake_failed error=%s",
                        type(task.exception()).__name__,
                        extra=REPEATS_LIMITED,
                    )
                release()

        task.add_done_callback(done)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let handlers in flight finish for up to `timeout` seconds."""
        self._accepting = False
        for task in list(self._handshakes):
            task.cancel()
        for session in list(self._sessions):
            session.shut_down()
        if self._sessions:
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except TimeoutError:
                LOG.warning("event=http_shutdown_timeout sessions=%d", len(self._sessions))
        for session in list(self._sessions):
            session.abort()
