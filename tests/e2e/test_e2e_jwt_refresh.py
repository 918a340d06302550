"""JWT issuers end to end: a real identity provider (an aiohttp HTTPS server on 127.0.0.1,
with its own CA) publishes its keys; governance registers it with `auto_refresh`; the primary
fetches the keys over verified TLS and commits them, so tokens work on every node; when the
issuer rotates its key, the next refresh retires the old one everywhere."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from e2e_support import make_sandbox, primary_index, start_sandbox
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from charter.ledger import certs
from charter.sandbox import Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

AUDIENCE = "charter-e2e"
REFRESH_INTERVAL_S = 1
PICKUP_TIMEOUT_S = 30.0


class IdentityProvider:
    """An OpenID provider's key endpoints over real TLS, keys swappable at will."""

    def __init__(self, directory: Path) -> None:
        ca_key = certs.new_key()
        self.ca_cert = certs.self_signed_cert(ca_key, "Test IdP CA", ca=True)
        server_key = certs.new_key()
        server_cert = certs.endorse_public_key(
            server_key.public_key(), "idp", ca_key, self.ca_cert, san_ips=("127.0.0.1",)
        )
        (directory / "idp_cert.pem").write_text(certs.cert_pem(server_cert))
        (directory / "idp_key.pem").write_text(certs.key_pem(server_key))
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(directory / "idp_cert.pem", directory / "idp_key.pem")
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_fetches = 0
        self.runner: web.AppRunner | None = None
        self.issuer = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/keys"})

    async def _keys(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(self.jwks)

    def publish(self, *keys: tuple[str, Any]) -> None:
        published = []
        for kid, private_key in keys:
            algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
            published.append(
                {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}
            )
        self.jwks = {"keys": published}

    def token(self, kid: str, private_key: Any, subject: str = "alice") -> str:
        now = int(time.time())
        alg = "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "nbf": now - 5,
            "exp": now + 600,
        }
        return jwt.encode(claims, private_key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def configure(_: int, config: dict[str, Any]) -> None:
        config["jwt"] = {"key_refresh_interval_s": REFRESH_INTERVAL_S}

    workspace = tmp_path_factory.mktemp("e2e-jwt") / "sb"
    sb = start_sandbox(make_sandbox(workspace, nodes=2, configure_node=configure))
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture()
async def idp(tmp_path: Path) -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider(tmp_path)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


async def _whoami(sb: Sandbox, node: int, token: str) -> Any:
    """How the node sees the token's bearer: /app/multi_auth's answer (any policy, so a
    token it refuses is served as the anonymous caller)."""
    async with CharterClient(sb.nodes[node].url, sb.service_cert_path, bearer_token=token) as c:
        return c.check(await c.get("/app/multi_auth")).body


async def _refusal(sb: Sandbox, node: int, token: str) -> str | None:
    """The error code of a jwt-only endpoint for the token (None if it was admitted)."""
    async with CharterClient(sb.nodes[node].url, sb.service_cert_path, bearer_token=token) as c:
        response = await c.get("/app/log/private/jwt", params={"id": "0"})
    return str(response.body["error"]["code"]) if response.status == 401 else None


async def _until(sb: Sandbox, token: str, admitted: bool, code: str | None = None) -> None:
    """Until every node admits the token (as a JWT caller) or refuses it with `code`."""
    deadline = time.monotonic() + PICKUP_TIMEOUT_S
    while True:
        seen = [await _refusal(sb, i, token) for i in range(len(sb.nodes))]
        if all(s == (None if admitted else code) for s in seen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {PICKUP_TIMEOUT_S}s the nodes answer {seen}")
        await asyncio.sleep(0.2)


async def test_auto_refresh_picks_up_the_issuers_key_rotation_on_every_node(
    net: Sandbox, idp: IdentityProvider
) -> None:
    first_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second_key = ec.generate_private_key(ec.SECP256R1())
    idp.publish(("first", first_key))
    first_token = idp.token("first", first_key)
    assert await _refusal(net, 0, first_token) == "TokenKeyUnknown"

    async with net.client() as c:
        await net.pass_proposal(
            c,
            [
                {
                    "name": "set_ca_cert_bundle",
                    "args": {"name": "idp_ca", "cert_bundle": certs.cert_pem(idp.ca_cert)},
                },
                {
                    "name": "set_jwt_issuer",
                    "args": {
                        "issuer": idp.issuer,
                        "auto_refresh": True,
                        "ca_cert_bundle_name": "idp_ca",
                        "audience": AUDIENCE,
                    },
                },
            ],
        )
    # The primary fetched the keys and committed them: the token works on every node.
    await _until(net, first_token, admitted=True)
    for node in range(len(net.nodes)):
        seen = await _whoami(net, node, first_token)
        assert (seen["policy"], seen["id"], seen["issuer"]) == ("jwt", "alice", idp.issuer)

    # The issuer rotates its key: the old kid's tokens stop working once the refresh
    # commits, the new one's start, on every node.
    idp.publish(("second", second_key))
    second_token = idp.token("second", second_key, subject="bob")
    await _until(net, second_token, admitted=True)
    await _until(net, first_token, admitted=False, code="TokenKeyUnknown")

    # A write with the new token through the backup: forwarded to the primary with its
    # Authorization header, authenticated there again, committed.
    backup = 1 - await primary_index(net)
    async with CharterClient(
        net.nodes[backup].url, net.service_cert_path, bearer_token=second_token
    ) as c:
        written = c.check(
            await c.post("/app/log/private/jwt", json={"id": 4242, "msg": "from the IdP"})
        )
        assert written.txid is not None
        read = c.check(await c.get("/app/log/private/jwt", params={"id": "4242"}))
    assert read.body == {"msg": "from the IdP"}

    # The command line reaches the same endpoints: as a bearer, and as a user who signs.
    charter = str(Path(sys.executable).parent / "charter")
    cli = [charter, "call", "--network", str(net.network_path)]
    as_bearer = subprocess.run(
        [*cli, "GET", "/app/log/private/jwt", "--query", "id=4242", "--bearer", second_token],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert as_bearer.returncode == 0, as_bearer.stderr
    assert json.loads(as_bearer.stdout) == {"msg": "from the IdP"}
    record = json.dumps({"id": 4243, "msg": "signed by user 0"})
    signed = [*cli, "POST", "/app/log/private/cose", "--sign", "--user", "0", "--body", record]
    first = subprocess.run(signed, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0 and json.loads(first.stdout) is True, first.stderr
    expired = subprocess.run(
        [*cli, "GET", "/app/log/private/jwt", "--query", "id=4242", "--bearer", first_token],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert expired.returncode != 0 and "TokenKeyUnknown" in expired.stderr, expired.stderr


async def test_an_issuer_whose_tls_the_bundle_does_not_vouch_for_gets_no_keys(
    net: Sandbox, idp: IdentityProvider
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    idp.publish(("untrusted", key))
    stranger_ca = certs.self_signed_cert(certs.new_key(), "Another CA", ca=True)
    async with net.client() as c:
        await net.pass_proposal(
            c,
            [
                {
                    "name": "set_ca_cert_bundle",
                    "args": {"name": "other_ca", "cert_bundle": certs.cert_pem(stranger_ca)},
                },
                {
                    "name": "set_jwt_issuer",
                    "args": {
                        "issuer": idp.issuer,
                        "auto_refresh": True,
                        "ca_cert_bundle_name": "other_ca",
                        "audience": AUDIENCE,
                    },
                },
            ],
        )
    # Several refresh intervals pass; the TLS handshake fails every time, nothing is fetched.
    await asyncio.sleep(REFRESH_INTERVAL_S * 4)
    assert idp.jwks_fetches == 0
    assert await _refusal(net, 0, idp.token("untrusted", key)) == "TokenKeyUnknown"
