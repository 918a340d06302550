"""The client interface against hostile and slow clients, on real node processes over real TLS:
unparseable requests get the JSON error shape and leave no request byte in any log; slow
headers, HTTP/0.9 lines, never-ending chunked bodies and idle sessions are cut off at their
configured timeouts; sessions past the soft cap get 503 and past the hard cap are closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import log_tails, make_sandbox, start_sandbox

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_MS = 1000
READ_TIMEOUT_MS = 1500
IDLE_TIMEOUT_MS = 2000
# Generous bounds on when a cut-off session must be gone (timeouts plus 1 s of lingering
# plus slack for a loaded 2-core machine); a session that stays open would hang far longer.
CLOSED_WITHIN_S = 10.0
TRICKLE_INTERVAL_S = 0.25


def _sandbox(
    tmp_path_factory: pytest.TempPathFactory, name: str, limits: dict[str, int]
) -> Sandbox:
    workspace = tmp_path_factory.mktemp(name) / "sb"
    return start_sandbox(
        make_sandbox(workspace, 1, lambda i, config: config.update(rpc_interface=limits))
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = _sandbox(
        tmp_path_factory,
        "e2e-http-timeouts",
        {
            "request_header_timeout_ms": HEADER_TIMEOUT_MS,
            "request_read_timeout_ms": READ_TIMEOUT_MS,
            "idle_connection_timeout_ms": IDLE_TIMEOUT_MS,
        },
    )
    try:
        yield sb
    finally:
        sb.stop()


def _tls(sb: Sandbox) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(sb.service_cert_path))
    ctx.check_hostname = False  # the node cert is endorsed by the service cert we pin
    return ctx


async def _connect(sb: Sandbox) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = sb.nodes[0].rpc_address.rpartition(":")
    return await asyncio.open_connection(host, int(port), ssl=_tls(sb))


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def _read_to_close(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the node sends until it closes the session (fails if it does not)."""
    chunks = []
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                chunk = await reader.read(65536)
            except (ConnectionError, ssl.SSLError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _json_error(raw: bytes, status: int) -> dict[str, Any]:
    got, headers, body = _parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    error: dict[str, Any] = doc["error"]
    return error


async def _send_and_read(sb: Sandbox, data: bytes) -> bytes:
    reader, writer = await _connect(sb)
    try:
        writer.write(data)
        await writer.drain()
        return await _read_to_close(reader, CLOSED_WITHIN_S)
    finally:
        _close(writer)


def _logs(sb: Sandbox) -> bytes:
    directory = sb.nodes[0].directory
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*.log")))


async def test_unparseable_requests_get_json_errors_and_no_request_byte_reaches_a_log(
    net: Sandbox,
) -> None:
    marks = [f"m{secrets.token_hex(8)}" for _ in range(5)]
    bad_requests = [
        # A request line aiohttp cannot parse, query string included.
        f"GET /node/state?token={marks[0]} HTTX/1.1\r\nHost: a\r\n\r\n",
        # A header name with a space; its value is a secret.
        f"GET /node/state HTTP/1.1\r\nHost: a\r\nBad Name: {marks[1]}\r\n\r\n",
        # A header value with a control byte.
        f"GET /node/state HTTP/1.1\r\nHost: a\r\nX-Secret: {marks[2]}\x01\r\n\r\n",
        # A chunked body whose chunk size line is not hex: its contents are the secret.
        "POST /app/log/private HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{marks[3]}\r\nxx\r\n0\r\n\r\n",
        # A Content-Length that is not a number.
        f"POST /app/log/private HTTP/1.1\r\nHost: a\r\nContent-Length: {marks[4]}\r\n\r\n",
    ]
    for request, mark in zip(bad_requests, marks, strict=True):
        raw = await _send_and_read(net, request.encode())
        error = _json_error(raw, 400)
        assert error["code"] == "InvalidInput"
        assert mark.encode() not in raw, raw
    await asyncio.sleep(0.5)  # let the enclave's log frames reach the host's files
    logs = _logs(net)
    assert b"event=http_request_refused" in logs, log_tails(net)  # the search sees the lines
    leaked = [mark for mark in marks if mark.encode() in logs]
    assert not leaked, f"request bytes {leaked} reached a log line\n{log_tails(net)}"


async def test_a_client_trickling_header_bytes_is_cut_off_at_the_header_timeout(
    net: Sandbox,
) -> None:
    reader, writer = await _connect(net)
    started = time.monotonic()
    closed = False
    try:
        writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n")
        while time.monotonic() - started < CLOSED_WITHIN_S:
            writer.write(b"X")  # a header that never ends, one byte at a time
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.drain()
            if reader.at_eof() or writer.is_closing():
                closed = True  # the node closed (or reset) the session: what is promised
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRICKLE_INTERVAL_S):
                    data = await reader.read(65536)
                    if not data:
                        closed = True
                        break
                    raw = data + await _read_to_close(reader, CLOSED_WITHIN_S)
                    assert _json_error(raw, 408)["code"] == "RequestTimeout"
                    closed = True
                    break
    finally:
        _close(writer)
    assert closed, "the session stayed open while its headers trickled in"


async def test_an_http09_line_that_never_completes_is_closed_at_the_header_timeout(
    net: Sandbox,
) -> None:
    raw = await _send_and_read(net, b"GET /node/state")  # HTTP/0.9 style, no line end
    assert _json_error(raw, 408)["code"] == "RequestTimeout"
    # A complete HTTP/0.9 request line is refused at once, in the JSON shape.
    raw = await _send_and_read(net, b"GET /node/state\r\n\r\n")
    assert _json_error(raw, 505)["code"] == "UnsupportedHttpVersion"


async def test_a_chunked_body_that_never_ends_is_cut_off_at_the_read_timeout(
    net: Sandbox,
) -> None:
    reader, writer = await _connect(net)
    started = time.monotonic()
    got = b""
    try:
        writer.write(
            b"POST /app/log/private HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nfffff\r\n"
        )
        while time.monotonic() - started < CLOSED_WITHIN_S:
            writer.write(b"a")  # a chunk of a million bytes, sent a byte at a time
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRICKLE_INTERVAL_S):
                    got = await reader.read(65536)
            if got or reader.at_eof():
                break
        got += await _read_to_close(reader, CLOSED_WITHIN_S)
    finally:
        _close(writer)
    assert _json_error(got, 408)["code"] == "RequestTimeout"


async def test_an_idle_session_is_closed_at_the_idle_timeout(net: Sandbox) -> None:
    reader, writer = await _connect(net)
    try:
        # A served request first: the session stays open (keep-alive), then goes idle.
        writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
        assert head.startswith(b"HTTP/1.1 200"), head
        rest = await _read_to_close(reader, CLOSED_WITHIN_S)  # the JSON body, then the close
        assert json.loads(rest)["state"]
    finally:
        _close(writer)
    reader, writer = await _connect(net)
    try:
        assert await _read_to_close(reader, CLOSED_WITHIN_S) == b""  # never sent anything
    finally:
        _close(writer)


async def test_keep_alive_sessions_serve_http10_and_pipelined_requests_in_order(
    net: Sandbox,
) -> None:
    reader, writer = await _connect(net)
    try:
        # ab -k: HTTP/1.0 with Connection: keep-alive, answered in kind, session kept.
        for _ in range(2):
            writer.write(b"GET /node/state HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
            status, headers, _ = _parse(head)
            assert status == 200 and headers["connection"].lower() == "keep-alive", head
            body = await reader.readexactly(int(headers["content-length"]))
            assert json.loads(body)["state"]
        # Three requests in one write: three answers, in the order asked.
        writer.write(
            b"GET /node/state HTTP/1.1\r\n\r\n"
            b"GET /node/no-such-path HTTP/1.1\r\n\r\n"
            b"GET /node/state HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        raw = await _read_to_close(reader, CLOSED_WITHIN_S)
        statuses = []
        while raw:
            head, _, raw = raw.partition(b"\r\n\r\n")
            status, headers, _ = _parse(head + b"\r\n\r\n")
            length = int(headers["content-length"])
            statuses.append(status)
            raw = raw[length:]
        assert statuses == [200, 404, 200]
    finally:
        _close(writer)


async def test_oversized_heads_and_bodies_are_refused_before_they_are_read(net: Sandbox) -> None:
    raw = await _send_and_read(
        net, b"GET /node/state HTTP/1.1\r\nX-Big: " + b"v" * 20_000 + b"\r\n\r\n"
    )
    assert _json_error(raw, 431)["code"] == "RequestHeaderTooLarge"
    # A body announced past REQUEST_BODY_BYTES_MAX: refused on its head alone.
    raw = await _send_and_read(
        net,
        b"POST /app/log/private HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n",
    )
    assert _json_error(raw, 413)["code"] == "RequestTooLarge"


SOFT = 4
HARD = 6


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = _sandbox(
        tmp_path_factory,
        "e2e-http-caps",
        {"max_open_sessions_soft": SOFT, "max_open_sessions_hard": HARD},
    )
    try:
        yield sb
    finally:
        sb.stop()


async def _served(sb: Sandbox) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A session that was served one request and is kept open."""
    reader, writer = await _connect(sb)
    writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(_parse(head)[1]["content-length"])
    await asyncio.wait_for(reader.readexactly(length), CLOSED_WITHIN_S)
    return reader, writer


async def test_sessions_past_the_soft_cap_get_503_and_past_the_hard_cap_are_closed(
    capped: Sandbox,
) -> None:
    await asyncio.sleep(0.5)  # sessions of the start-up checks have closed
    served = [await _served(capped) for _ in range(SOFT)]
    waiting = [await _connect(capped) for _ in range(HARD - SOFT)]
    try:
        # At the hard cap: a new session is closed before its TLS handshake ends.
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.wait_for(_connect(capped), CLOSED_WITHIN_S)
            writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            if not await _read_to_close(reader, CLOSED_WITHIN_S):
                raise ConnectionResetError("closed without an answer")
        # Past the soft cap: a session is answered 503 with Retry-After, and closed.
        for reader, writer in waiting:
            writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            raw = await _read_to_close(reader, CLOSED_WITHIN_S)
            assert _json_error(raw, 503)["code"] == "SessionLimitReached"
            assert _parse(raw)[1]["retry-after"] == "1"
        # Sessions that close free their places.
        for _, writer in served:
            writer.close()
        await asyncio.sleep(0.5)
        again = await _served(capped)
        _close(again[1])
    finally:
        for _, writer in served + waiting:
            _close(writer)
