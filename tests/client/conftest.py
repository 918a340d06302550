"""Fixtures for client tests: real keys and certificates, and a real TLS server on loopback.

The scripted server is a plain aiohttp HTTPS server whose handlers each test writes; it
stands in for the parts of a node a test does not exercise, so that the SDK's own promises
(pinning, retries, error mapping, envelopes) can be checked without a whole network.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from client.keygen import KeygenResult, generate_identity
from ledger import certs


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
