"""Helpers and fixtures for client tests: real keys and certificates, real TLS servers.

Kept in a uniquely named module (conftest.py only re-exports the fixtures): another test
area's conftest.py would otherwise shadow `from conftest import ...`.

The scripted server is a plain aiohttp HTTPS server whose handlers each test writes; it
stands in for the parts of a node a test does not exercise, so that the SDK's own promises
(pinning, retries, error mapping, envelopes) can be checked without a whole network.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from charter.enclave_app.kv import Store
from charter.governance import tables as t
from charter.governance.requests import verify_request
from charter.keygen import KeygenResult, generate_identity
from charter.ledger import certs
from charter.ledger.generate import GeneratedLedger
from charter.ledger.receipt import build_cose_receipt, build_json_receipt
from charter.member import COSE_CONTENT_TYPE


@dataclass(frozen=True)
class Pki:
    service_cert: Path
    node_cert: Path
    node_key: Path
    rogue_ca_cert: Path
    rogue_node_cert: Path
    rogue_node_key: Path
    member: KeygenResult
    user: KeygenResult
    rsa_key: Path


def _write_node(directory: Path, name: str, ca_key, ca_cert) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    key = certs.new_key()
    cert = certs.endorse(key.public_key(), ca_key, ca_cert, san_ips=["127.0.0.1"])
    cert_path = directory / f"{name}_cert.pem"
    key_path = directory / f"{name}_privk.pem"
    cert_path.write_text(certs.cert_pem(cert))
    key_path.write_text(certs.key_pem(key))
    return cert_path, key_path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    service_key = certs.new_key()
    service = certs.service_cert(service_key)
    (d / "service_cert.pem").write_text(certs.cert_pem(service))
    node_cert, node_key = _write_node(d, "node", service_key, service)
    rogue_key = certs.new_key()
    rogue = certs.service_cert(rogue_key, "Rogue Service")
    (d / "rogue_ca.pem").write_text(certs.cert_pem(rogue))
    rogue_cert, rogue_node_key = _write_node(d, "rogue_node", rogue_key, rogue)
    member = generate_identity("member0", d, encryption_key=True)
    user = generate_identity("user0", d)
    rsa_key = d / "rsa_privk.pem"
    rsa_key.write_text(certs.key_pem(certs.new_rsa_encryption_key()))
    return Pki(
        service_cert=d / "service_cert.pem",
        node_cert=node_cert,
        node_key=node_key,
        rogue_ca_cert=d / "rogue_ca.pem",
        rogue_node_cert=rogue_cert,
        rogue_node_key=rogue_node_key,
        member=member,
        user=user,
        rsa_key=rsa_key,
    )


# Answers a paced benchmark client cannot bound, with the reason it must give (both the
# Python one in charter.bench_commit and the native one in client/native/paced_load.c).
UNBOUNDED_ANSWERS = [
    (b"HTTP/1.1 200 OK\r\nx-ms-ccf-transaction-id: 2.3\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n", "exceed the limit"),
    (b"SMTP ready\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed mid-answer"),
    (b"", "connection closed"),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartServer = Callable[..., Awaitable[str]]


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[StartServer]:
    """`await tls_server({"/node/state": handler, ...}, rogue=False, client_ca=None) -> url`."""
    runners: list[web.AppRunner] = []

    async def start(
        routes: dict[str, Handler], *, rogue: bool = False, client_ca: Path | None = None
    ) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if rogue:
            ctx.load_cert_chain(pki.rogue_node_cert, pki.rogue_node_key)
        else:
            ctx.load_cert_chain(pki.node_cert, pki.node_key)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cafile=str(client_ca))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"https://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def closed_port_url() -> str:
    """An https URL on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"


class ThreadedServer:
    """The scripted TLS server on its own event loop in a thread, for synchronous callers
    (the CLI runs `asyncio.run` itself, which cannot nest inside a test's running loop)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def start(self, routes: dict[str, Handler]) -> str:
        async def go() -> str:
            app = web.Application()
            for path, handler in routes.items():
                app.router.add_route("*", path, handler)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.pki.node_cert, self.pki.node_key)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
            self.runners.append(runner)
            return f"https://127.0.0.1:{runner.addresses[0][1]}"

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=10)

    def close(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def threaded_server(pki: Pki) -> Iterator[ThreadedServer]:
    server = ThreadedServer(pki)
    yield server
    server.close()


def member_tx(pki: Pki, status: str = "Active") -> Any:
    """A KV transaction in which member0 is registered, as governance stores it."""
    tx = Store().begin()
    key = t.id_key(pki.member.id)
    tx.put(t.MEMBERS_CERTS, key, pki.member.cert_path.read_bytes())
    t.put_json(tx, t.MEMBERS_INFO, key, {"status": status})
    return tx


class GovRecorder:
    """Records the member requests a scripted /gov endpoint received, verified by governance."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.seen: list[tuple[str, str, dict[str, Any] | None]] = []

    def handler(self, msg_type: str, answer: Any, status: int = 200) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            assert request.query["api-version"] == "2024-07-01"
            assert request.content_type == COSE_CONTENT_TYPE
            body = await request.read()
            pid = request.match_info.get("pid")
            req = verify_request(
                member_tx(self.pki), body, msg_type=msg_type, now_s=int(time.time()),
                path_proposal_id=pid, path_member_id=request.match_info.get("mid"),
            )  # fmt: skip
            payload = json.loads(req.payload) if req.payload else None
            self.seen.append((msg_type, request.path, payload))
            if status == 204:
                return web.Response(status=204)
            return web.json_response(
                answer, status=status, headers={"x-ms-ccf-transaction-id": "2.30"}
            )

        return handle


def app_seqno(g: GeneratedLedger) -> int:
    # An ordinary transaction covered by a later signature.
    return next(s for s in range(g.open_seqno + 1, g.last_seqno) if not g.history.is_signature(s))


def receipts_for(g: GeneratedLedger, seqno: int) -> tuple[dict[str, object], bytes]:
    material = g.history.receipt_material(seqno)
    assert material is not None
    proof, sig = material
    wsd, evidence, claims = g.history.leaf_components(seqno)
    assert evidence is not None and sig.node_cert_pem is not None
    json_receipt = build_json_receipt(
        node_cert_pem=sig.node_cert_pem,
        node_id=sig.node_id,
        signature=sig.signature,
        proof=proof,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
    )
    cose_receipt = build_cose_receipt(sig.cose_sign1, (wsd, evidence, claims), proof)
    return json_receipt, cose_receipt
