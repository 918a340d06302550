"""`HttpServer` over real TLS on 127.0.0.1, on uvloop as in the enclave: sockets accepted here
are handed to `serve` as the host hands them over; clients are real TLS clients. What only
real sockets show: session accounting however a session ends, graceful shutdown, and
back-pressure from a client that does not read."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from http_session_support import parse_answers

from charter.enclave_app.app import HttpResponse
from charter.enclave_app.http_server import HttpServer, PlainRequest, SessionLimits
from charter.enclave_app.tls import server_context

WITHIN_S = 10.0


def _identity(name: str) -> tuple[str, str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(_LOCALHOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem,
        cert.public_bytes(serialization.Encoding.DER),
    )


_LOCALHOST = ipaddress.ip_address("127.0.0.1")
SERVER = _identity("node")
CLIENT = _identity("user")


class Harness:
    """An HttpServer fed by a listening socket on 127.0.0.1, and TLS clients for it."""

    def __init__(
        self, handler: Callable[[PlainRequest], Awaitable[HttpResponse]], limits: SessionLimits
    ) -> None:
        self.server = HttpServer(handler, limits, loop=asyncio.get_running_loop())
        self.context = server_context(SERVER[0], SERVER[1], CLIENT[0])
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.served: list[socket.socket] = []
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            self.served.append(sock)
            self.server.serve(sock, self.context)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=SERVER[0])
        ctx.load_cert_chain(*_pem_files(CLIENT))
        return ctx

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.client_context(), server_hostname="127.0.0.1"
        )

    async def sessions_drop_to(self, count: int) -> None:
        async with asyncio.timeout(WITHIN_S):
            while self.server.open_sessions != count:
                await asyncio.sleep(0.02)

    def close(self) -> None:
        self._accepting.cancel()
        self.listener.close()


def _pem_files(identity: tuple[str, str, bytes]) -> tuple[str, str]:
    """The identity as files (what `load_cert_chain` takes), for this test run."""
    directory = Path(_PEM_DIRECTORY.name)
    cert, key = directory / "client.pem", directory / "client.key"
    cert.write_text(identity[0])
    key.write_text(identity[1])
    return str(cert), str(key)


_PEM_DIRECTORY = tempfile.TemporaryDirectory(prefix="charter-http-tls-")


def _on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(asyncio.wait_for(test(), 60))
        finally:
            loop.close()

    run.__name__ = test.__name__
    return run


def _limits(**changes: float) -> SessionLimits:
    values: dict[str, Any] = {
        "max_open_sessions_soft": 50,
        "max_open_sessions_hard": 60,
        "idle_timeout_s": 30.0,
        "header_timeout_s": 30.0,
        "read_timeout_s": 30.0,
    }
    values.update(changes)
    return SessionLimits(**values)


async def _echo(request: PlainRequest) -> HttpResponse:
    return HttpResponse(200, request.body or request.path.encode(), {}, "text/plain")


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    async with asyncio.timeout(WITHIN_S):
        while True:
            try:
                chunk = await reader.read(65536)
            except (ConnectionError, ssl.SSLError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@_on_uvloop
async def test_the_handler_is_given_the_client_certificate_and_address() -> None:
    seen: list[PlainRequest] = []

    async def handler(request: PlainRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(200, b"ok", {}, None)

    harness = Harness(handler, _limits())
    try:
        reader, writer = await harness.connect()
        writer.write(b"GET /x?y=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        [answer] = parse_answers(await _read_to_close(reader))
        writer.close()
        assert answer.body == b"ok"
        [request] = seen
        assert request.peer_der == CLIENT[2] and request.source == "127.0.0.1"
        assert (request.path, request.query_string) == ("/x", "y=1")
        # Answers leave at once, no Nagle delay behind the client's delayed ACK (uvloop's
        # transport sets TCP_NODELAY, as aiohttp's server did).
        [sock] = harness.served
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        harness.close()


@_on_uvloop
async def test_open_sessions_counts_each_session_once_however_it_ends() -> None:
    harness = Harness(_echo, _limits(idle_timeout_s=0.5, header_timeout_s=0.5))
    try:
        # A client speaking plaintext: its TLS handshake fails.
        plain = socket.create_connection(("127.0.0.1", harness.port))
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
        # A client that never starts its handshake: cut at the handshake timeout.
        silent = socket.create_connection(("127.0.0.1", harness.port))
        # A client that resets its session in the middle of a request.
        _reader, reset = await harness.connect()
        reset.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        await reset.drain()
        # A client whose request is refused (the error answer ends the session).
        refused_reader, refused = await harness.connect()
        refused.write(b"GET / HTTX/1.1\r\n\r\n")
        # A client served, then left idle until the idle timeout.
        idle_reader, idle = await harness.connect()
        idle.write(b"GET /idle HTTP/1.1\r\n\r\n")
        # A client served, which closes its session itself.
        closing_reader, closing = await harness.connect()
        closing.write(b"GET /bye HTTP/1.1\r\n\r\n")
        await closing_reader.readuntil(b"/bye")
        assert harness.server.open_sessions >= 4
        closing.close()
        # SO_LINGER 0: the client's kernel answers the close with a reset (RST).
        linger = struct.pack("ii", 1, 0)
        reset.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, linger
        )
        reset.transport.abort()
        assert b"400" in await _read_to_close(refused_reader)
        assert (await _read_to_close(idle_reader)).endswith(b"/idle")
        await harness.sessions_drop_to(0)
        await asyncio.sleep(0.3)  # nothing is released twice afterwards
        assert harness.server.open_sessions == 0
        for sock in (plain, silent):
            sock.close()
        for writer in (refused, idle):
            writer.close()
    finally:
        harness.close()


@_on_uvloop
async def test_shutdown_lets_a_handler_in_flight_finish_and_takes_no_new_session() -> None:
    started = asyncio.Event()

    async def slow(request: PlainRequest) -> HttpResponse:
        started.set()
        await asyncio.sleep(0.5)
        return HttpResponse(200, b"finished", {}, None)

    harness = Harness(slow, _limits())
    try:
        idle_reader, idle_writer = await harness.connect()
        reader, writer = await harness.connect()
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await started.wait()
        shutdown = asyncio.get_running_loop().create_task(harness.server.shutdown(5.0))
        await asyncio.sleep(0.05)
        # An idle session is closed at once; a new one is not served.
        assert await _read_to_close(idle_reader) == b""
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            late_reader, _late_writer = await asyncio.wait_for(harness.connect(), 2)
            assert await _read_to_close(late_reader) == b""
        # The request in flight is answered, then its session closes.
        [answer] = parse_answers(await _read_to_close(reader))
        assert answer.body == b"finished" and answer.headers["connection"] == "close"
        await asyncio.wait_for(shutdown, WITHIN_S)
        assert harness.server.open_sessions == 0
        for w in (idle_writer, writer):
            w.close()
    finally:
        harness.close()


@_on_uvloop
async def test_shutdown_aborts_a_handler_that_outlives_its_timeout() -> None:
    async def stuck(request: PlainRequest) -> HttpResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    harness = Harness(stuck, _limits())
    try:
        reader, writer = await harness.connect()
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(harness.server.shutdown(0.3), WITHIN_S)
        assert await _read_to_close(reader) == b""
        await harness.sessions_drop_to(0)
        writer.close()
    finally:
        harness.close()


@_on_uvloop
async def test_a_client_that_does_not_read_its_answers_stops_being_served() -> None:
    body = b"z" * (256 * 1024)
    handled = 0

    async def big(request: PlainRequest) -> HttpResponse:
        nonlocal handled
        handled += 1
        return HttpResponse(200, body, {}, None)

    requests = 400  # 100 MiB of answers: far more than socket buffers hold
    harness = Harness(big, _limits())
    try:
        reader, writer = await harness.connect()
        writer.write(b"GET / HTTP/1.1\r\n\r\n" * requests)
        await writer.drain()
        await asyncio.sleep(1.0)
        stalled_at = handled
        await asyncio.sleep(0.5)
        # The node stopped handling (and buffering) answers nobody reads.
        assert handled == stalled_at < requests
        received = 0
        async with asyncio.timeout(60):
            while received < requests * len(body):
                chunk = await reader.read(1 << 20)
                assert chunk
                received += chunk.count(b"z")
        assert handled == requests
        writer.close()
    finally:
        harness.close()


@_on_uvloop
async def test_a_body_sent_after_100_continue_like_curl_is_answered() -> None:
    harness = Harness(_echo, _limits())
    try:
        reader, writer = await harness.connect()
        body = bytes(range(256)) * 8
        writer.write(
            b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body + b"GET /after HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = parse_answers(await _read_to_close(reader))
        assert [a.body for a in answers] == [body, b"/after"]
        writer.close()
    finally:
        harness.close()
