"""CharterClient against a real TLS server: pinning, typed errors, commit and receipt polling."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from pathlib import Path

import pytest
from aiohttp import web
from client_helpers import Pki, StartServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from charter.errors import (
    CommitTimeout,
    ConnectionFailed,
    Forbidden,
    IdentityError,
    InvalidInput,
    NotFound,
    ProtocolError,
    ReceiptInvalid,
    ServiceUnavailable,
    TransactionInvalid,
)
from charter.identity import TxId
from charter.sandbox import Sandbox
from charter.sdk import CharterClient


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def test_client_trusts_a_node_cert_issued_by_the_pinned_service_cert(
    pki: Pki, tls_server: StartServer
) -> None:
    async def state(_: web.Request) -> web.Response:
        return _json({"node_id": "ab" * 32, "state": "PartOfNetwork", "last_signed_seqno": 7})

    url = await tls_server({"/node/state": state})
    async with CharterClient(url, pki.service_cert) as c:
        assert (await c.node_state())["last_signed_seqno"] == 7


async def test_node_cert_from_another_service_is_refused(pki: Pki, tls_server: StartServer) -> None:
    async def state(_: web.Request) -> web.Response:
        return _json({"state": "PartOfNetwork"})

    url = await tls_server({"/node/state": state}, rogue=True)
    async with CharterClient(url, pki.service_cert) as c:
        with pytest.raises(ConnectionFailed, match="TLS"):
            await c.node_state()


async def test_unreachable_service_raises_connection_failed(pki: Pki, closed_port_url: str) -> None:
    async with CharterClient(closed_port_url, pki.service_cert) as c:
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await c.network()


async def test_service_error_becomes_typed_exception_with_service_code(
    pki: Pki, tls_server: StartServer
) -> None:
    async def handler(request: web.Request) -> web.Response:
        status = int(request.query["status"])
        return _json({"error": {"code": f"Code{status}", "message": "nope"}}, status=status)

    url = await tls_server({"/app/x": handler})
    async with CharterClient(url, pki.service_cert) as c:
        for status, cls in ((400, InvalidInput), (403, Forbidden), (404, NotFound)):
            with pytest.raises(cls) as info:
                await c.get_json("/app/x", params={"status": str(status)})
            assert (info.value.status, info.value.code) == (status, f"Code{status}")
            assert info.value.message == "nope"
        with pytest.raises(ServiceUnavailable):
            await c.get_json("/app/x", params={"status": "503"})


async def test_raw_get_returns_status_headers_body_and_txid(
    pki: Pki, tls_server: StartServer
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return _json({"ok": True}, status=201, headers={"x-ms-ccf-transaction-id": "3.42"})

    url = await tls_server({"/app/log": handler})
    async with CharterClient(url, pki.service_cert) as c:
        status, headers, body = await c.post("/app/log", json={"msg": "hi"})
        assert (status, body) == (201, {"ok": True})
        assert headers["x-ms-ccf-transaction-id"] == "3.42"
        assert (await c.post("/app/log", json={})).txid == TxId(3, 42)


async def test_wait_for_commit_polls_until_committed(pki: Pki, tls_server: StartServer) -> None:
    polls: list[str] = []

    async def tx(request: web.Request) -> web.Response:
        polls.append(request.query["transaction_id"])
        status = "Committed" if len(polls) >= 3 else "Pending"
        return _json({"transaction_id": "2.9", "status": status})

    url = await tls_server({"/node/tx": tx})
    async with CharterClient(url, pki.service_cert) as c:
        assert await c.wait_for_commit("2.9", timeout_s=5) == TxId(2, 9)
    assert polls == ["2.9"] * 3


async def test_invalid_transaction_is_reported_not_waited_for(
    pki: Pki, tls_server: StartServer
) -> None:
    async def tx(_: web.Request) -> web.Response:
        return _json({"transaction_id": "2.9", "status": "Invalid"})

    url = await tls_server({"/node/tx": tx})
    async with CharterClient(url, pki.service_cert) as c:
        with pytest.raises(TransactionInvalid):
            await c.wait_for_commit(TxId(2, 9), timeout_s=5)


async def test_pending_transaction_times_out(pki: Pki, tls_server: StartServer) -> None:
    async def tx(_: web.Request) -> web.Response:
        return _json({"transaction_id": "2.9", "status": "Pending"})

    url = await tls_server({"/node/tx": tx})
    async with CharterClient(url, pki.service_cert) as c:
        with pytest.raises(CommitTimeout):
            await c.wait_for_commit("2.9", timeout_s=0.2)


async def test_receipt_is_retried_while_service_answers_202(
    pki: Pki, tls_server: StartServer
) -> None:
    calls = 0

    async def receipt(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.Response(status=202, headers={"Retry-After": "0"})
        return _json({"node_id": "n", "proof": []})

    url = await tls_server({"/node/receipt": receipt})
    async with CharterClient(url, pki.service_cert) as c:
        assert (await c.receipt("2.5", timeout_s=5, verify=False))["node_id"] == "n"
    assert calls == 3


async def test_user_client_cert_is_presented_in_tls(pki: Pki, tls_server: StartServer) -> None:
    async def whoami(request: web.Request) -> web.Response:
        sslobj = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        der = sslobj.getpeercert(binary_form=True)
        return _json({"id": hashlib.sha256(der).hexdigest() if der else None})

    url = await tls_server({"/app/whoami": whoami}, client_ca=pki.user.cert_path)
    async with CharterClient(
        url, pki.service_cert, cert_path=pki.user.cert_path, key_path=pki.user.key_path
    ) as c:
        assert (await c.get_json("/app/whoami"))["id"] == pki.user.id
    async with CharterClient(url, pki.service_cert) as anonymous:
        assert (await anonymous.get_json("/app/whoami"))["id"] is None


async def test_client_cert_without_matching_key_is_refused_before_connecting(pki: Pki) -> None:
    with pytest.raises(IdentityError, match="cannot be used"):
        async with CharterClient(
            "https://127.0.0.1:1",
            pki.service_cert,
            cert_path=pki.user.cert_path,
            key_path=pki.member.key_path,
        ):
            pass


async def test_plain_http_url_is_refused(pki: Pki) -> None:
    with pytest.raises(IdentityError, match="https"):
        CharterClient("http://127.0.0.1:8000", pki.service_cert)


async def test_paged_lists_follow_next_link(pki: Pki, tls_server: StartServer) -> None:
    async def members(request: web.Request) -> web.Response:
        if request.query.get("page") == "2":
            return _json({"value": [{"memberId": "b"}]})
        return _json({"value": [{"memberId": "a"}], "nextLink": "/gov/service/members?page=2"})

    url = await tls_server({"/gov/service/members": members})
    async with CharterClient(url, pki.service_cert) as c:
        assert [m["memberId"] for m in await c.members()] == ["a", "b"]


def test_service_cert_pinning_context_has_one_trust_anchor(pki: Pki) -> None:
    from charter.sdk import build_ssl_context

    ctx = build_ssl_context(pki.service_cert)
    anchors = ctx.get_ca_certs(binary_form=True)
    service = x509.load_pem_x509_certificate(pki.service_cert.read_bytes())
    assert len(anchors) == 1
    assert anchors[0] == service.public_bytes(serialization.Encoding.DER)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


async def test_oversized_responses_are_refused(pki: Pki, tls_server: StartServer) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if request.query.get("chunked"):
            # No Content-Length: the limit must hold while streaming too.
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(10):
                await resp.write(b"x" * 1000)
            await resp.write_eof()
            return resp
        return web.Response(body=b"x" * 10_000)

    url = await tls_server({"/app/big": big})
    async with CharterClient(url, pki.service_cert, response_bytes_max=4096) as c:
        with pytest.raises(ProtocolError, match="limit"):
            await c.get("/app/big")
        with pytest.raises(ProtocolError, match="size limit"):
            await c.get("/app/big", params={"chunked": "1"})


async def test_body_labelled_json_that_is_not_json_is_a_protocol_error(
    pki: Pki, tls_server: StartServer
) -> None:
    async def liar(_: web.Request) -> web.Response:
        return web.Response(body=b"{oops", content_type="application/json")

    url = await tls_server({"/node/state": liar})
    async with CharterClient(url, pki.service_cert) as c:
        with pytest.raises(ProtocolError, match="not JSON"):
            await c.node_state()


async def test_receipt_wait_gives_up_at_the_deadline(pki: Pki, tls_server: StartServer) -> None:
    async def never(_: web.Request) -> web.Response:
        return web.Response(status=202, headers={"Retry-After": "60"})

    url = await tls_server({"/node/receipt": never})
    async with CharterClient(url, pki.service_cert) as c:
        started = time.monotonic()
        with pytest.raises(CommitTimeout):
            await c.receipt("2.5", timeout_s=0.3)
        # Retry-After is honoured but capped by the caller's deadline.
        assert time.monotonic() - started < 2


async def test_commit_and_receipt_polling_ride_out_service_unavailable(
    pki: Pki, tls_server: StartServer
) -> None:
    calls = {"tx": 0, "receipt": 0}
    busy = {"error": {"code": "ServiceUnavailable", "message": "no primary"}}

    async def tx(_: web.Request) -> web.Response:
        calls["tx"] += 1
        if calls["tx"] < 3:
            return _json(busy, status=503)
        return _json({"transaction_id": "3.4", "status": "Committed"})

    async def receipt(_: web.Request) -> web.Response:
        calls["receipt"] += 1
        if calls["receipt"] < 3:
            return _json(busy, status=503, headers={"Retry-After": "0"})
        return _json({"node_id": "n"})

    url = await tls_server({"/node/tx": tx, "/node/receipt": receipt})
    async with CharterClient(url, pki.service_cert) as c:
        assert await c.wait_for_commit("3.4", timeout_s=5) == TxId(3, 4)
        assert (await c.receipt("3.4", timeout_s=5, verify=False))["node_id"] == "n"
    assert calls == {"tx": 3, "receipt": 3}


def _receipt_signed_by_pki_node(pki: Pki, write_set_digest: bytes) -> dict[str, object]:
    """A receipt whose one-leaf tree root is signed by the test node the service endorsed."""
    from charter.ledger import certs
    from charter.ledger.receipt import build_json_receipt, leaf_digest
    from charter.ledger.signatures import sign_root

    node_key = certs.load_key(pki.node_key.read_text())
    evidence = "ce:2.5:" + "11" * 32
    root = leaf_digest(write_set_digest, evidence, bytes(32))
    return build_json_receipt(
        node_cert_pem=pki.node_cert.read_text(),
        node_id=certs.node_id(node_key.public_key()),
        signature=sign_root(node_key, root),
        proof=[],
        write_set_digest=write_set_digest,
        commit_evidence=evidence,
        claims_digest=bytes(32),
    )


async def test_receipt_is_verified_against_the_pinned_service_cert_by_default(
    pki: Pki, tls_server: StartServer
) -> None:
    good = _receipt_signed_by_pki_node(pki, b"\x01" * 32)
    # The same receipt claiming another write set: its signature no longer covers the root.
    forged = {**good, "leaf_components": {**good["leaf_components"], "write_set_digest": "02" * 32}}  # type: ignore[dict-item]
    answers = {"2.5": good, "2.6": forged}

    async def receipt(request: web.Request) -> web.Response:
        return _json(answers[request.query["transaction_id"]])

    url = await tls_server({"/node/receipt": receipt})
    async with CharterClient(url, pki.service_cert) as c:
        assert (await c.receipt("2.5"))["node_id"] == good["node_id"]
        with pytest.raises(ReceiptInvalid, match="does not verify"):
            await c.receipt("2.6")
        # The explicit opt-out returns it unchecked.
        assert (await c.receipt("2.6", verify=False))["leaf_components"] == forged[
            "leaf_components"
        ]


def test_a_sandbox_gives_every_node_its_own_ports(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sb", nodes=8)
    sandbox.prepare()
    ports = []
    for node in sandbox.nodes:
        config = json.loads(node.config_path.read_text())
        ports += [
            int(config[f].rpartition(":")[2]) for f in ("rpc_address", "node_to_node_address")
        ]
    assert len(ports) == 16 and len(set(ports)) == 16
    # A node added later avoids the ports of the nodes already configured.
    later = Sandbox(tmp_path / "sb", nodes=8)
    later.prepare()
    extra = json.loads(later._node(8).config_path.read_text())
    assert int(extra["rpc_address"].rpartition(":")[2]) not in ports
