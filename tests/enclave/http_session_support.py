"""A transport that records what a `_Session` does with it, and a parser for what it wrote:
the session's protocol logic tested on a real event loop without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from charter.enclave_app.app import HttpResponse
from charter.enclave_app.http_server import Handler, PlainRequest, SessionLimits, _Session


class FakeTransport:
    """The calls a session makes on uvloop's TLS transport, recorded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: _Session | None = None
        self.written = bytearray()
        self.written_after_close = 0
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        if self.closed:
            self.written_after_close += len(data)  # a real transport drops these too
            return
        self.written += data

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_answers(raw: bytes, *, heads: int = 0) -> list[Answer]:
    """Every answer in `raw`, which must be complete, well-formed HTTP/1.1 answers with a
    Content-Length (the server never sends chunked ones); the first `heads` final answers
    are to HEAD requests, whose bodies are not sent."""
    answers: list[Answer] = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an incomplete answer head: {head[:200]!r}"
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status_text, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        status = int(status_text)
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(": ")
            assert colon and name and "\r" not in value and "\n" not in value, line
            headers[name.lower()] = value
        if status < 200:
            answers.append(Answer(status, headers, b""))
            continue
        length = int(headers.get("content-length", "0"))
        if heads:
            heads -= 1
            length = 0
        assert len(rest) >= length, f"a truncated body: {length} bytes announced"
        answers.append(Answer(status, headers, rest[:length]))
        rest = rest[length:]
    return answers


async def settle(loop: asyncio.AbstractEventLoop, turns: int = 20) -> None:
    """Let callbacks and handler tasks run (nothing here waits on a clock)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def limits(*, idle_s: float = 30.0, header_s: float = 30.0, read_s: float = 30.0) -> SessionLimits:
    return SessionLimits(10, 20, idle_s, header_s, read_s)


def ok_handler(body: bytes = b"ok") -> Callable[[PlainRequest], Awaitable[HttpResponse]]:
    async def handle(request: PlainRequest) -> HttpResponse:
        return HttpResponse(200, body, {"X-Path": request.path}, "text/plain")

    return handle


def open_session(
    handler: Handler,
    session_limits: SessionLimits | None = None,
) -> tuple[_Session, FakeTransport, list[_Session]]:
    """A session with its transport made; the list gets the session when it is lost."""
    loop = asyncio.get_running_loop()
    lost: list[_Session] = []
    session = _Session(handler, session_limits or limits(), loop, lambda s: None, lost.append)
    transport = FakeTransport(loop)
    transport.protocol = session
    session.connection_made(transport)  # type: ignore[arg-type]
    return session, transport, lost
