"""Microsoft's SCITT client, pyscitt 0.10.1, unmodified and in its own environment, against
a Charter sandbox serving the SCITT app: sign, submit, wait, fetch, verify; and refusals."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import cbor2
import pytest
from ccf import cose as ccf_cose
from cryptography import x509
from scitt_testkit import (
    STATEMENT_BYTES_LIMIT,
    Pyscitt,
    SigningIdentity,
    make_identity,
    sign,
    url_of,
)

from charter.auditor import verify_receipt_bytes
from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

REGISTERED = re.compile(r"Registered \S+ as transaction (\d+\.\d+)")


def submit(client: Pyscitt, sandbox: Sandbox, signed: Path, out: Path) -> str:
    """`scitt submit` (POST /entries, poll /operations, GET /entries/{id}/statement)."""
    done = client.scitt(
        "submit", str(signed),
        "--url", url_of(sandbox),
        "--cacert", str(sandbox.service_cert_path),
        "--transparent-statement", str(out),
    )  # fmt: skip
    found = REGISTERED.search(done.stdout)
    assert found, done.stdout
    return found.group(1)


def refused(client: Pyscitt, sandbox: Sandbox, signed: Path) -> str:
    """`scitt submit` of a statement the service must refuse: the client's error output."""
    done = client.scitt(
        "submit", str(signed), "--url", url_of(sandbox),
        "--cacert", str(sandbox.service_cert_path), "--skip-confirmation",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert "Submitted" not in done.stdout
    return done.stderr


def test_pyscitt_registers_a_statement_and_verifies_its_transparent_statement(
    pyscitt: Pyscitt, scitt_sandbox: Sandbox, issuer_identity: SigningIdentity, tmp_path: Path
) -> None:
    signed = sign(
        pyscitt, issuer_identity, b'{"artifact": "charter", "version": 1}', tmp_path / "s.cose"
    )
    txid = submit(pyscitt, scitt_sandbox, signed, tmp_path / "submitted.cose")

    pyscitt.driver(
        "fetch", url_of(scitt_sandbox), str(scitt_sandbox.service_cert_path), txid, str(tmp_path)
    )
    # The client's own validator, against the parameters document it fetched.
    done = pyscitt.scitt(
        "validate", str(tmp_path / "transparent.cose"),
        "--service-trust-store", str(tmp_path / "trust"),
    )  # fmt: skip
    assert "is transparent" in done.stdout
    assert (
        pyscitt.driver(
            "verify", str(signed), str(tmp_path / "transparent.cose"), str(tmp_path / "trust")
        ).stdout.strip()
        == "verified"
    )
    # What `scitt submit` saved is what `Client.get_transparent_statement` fetched later.
    assert (tmp_path / "submitted.cose").read_bytes() == (
        tmp_path / "transparent.cose"
    ).read_bytes()

    # The receipt is the node's ordinary COSE receipt for the registration transaction:
    # ccf.cose and Charter's auditor verify it for SHA-256 of the signed statement.
    receipt = (tmp_path / "receipt.cose").read_bytes()
    service_pem = scitt_sandbox.service_cert_path.read_text()
    digest = hashlib.sha256(signed.read_bytes()).digest()
    service_key = x509.load_pem_x509_certificate(service_pem.encode()).public_key()
    ccf_cose.verify_receipt(receipt, service_key, digest)
    check = verify_receipt_bytes(receipt, service_pem, claims_digest=digest)
    assert check.kind == "cose"

    async def node_receipt() -> bytes:
        async with scitt_sandbox.client() as client:
            return await client.cose_receipt(txid)

    assert asyncio.run(node_receipt()) == receipt
    # The transparent statement embeds that receipt in header 394.
    transparent = cbor2.loads((tmp_path / "transparent.cose").read_bytes())
    assert transparent.value[1] == {394: [receipt]}
    assert transparent.value[0] == cbor2.loads(signed.read_bytes()).value[0]


def test_a_tampered_receipt_fails_the_clients_verification(
    pyscitt: Pyscitt, scitt_sandbox: Sandbox, issuer_identity: SigningIdentity, tmp_path: Path
) -> None:
    signed = sign(pyscitt, issuer_identity, b'{"artifact": "tamper"}', tmp_path / "t.cose")
    txid = submit(pyscitt, scitt_sandbox, signed, tmp_path / "transparent.cose")
    pyscitt.driver(
        "fetch", url_of(scitt_sandbox), str(scitt_sandbox.service_cert_path), txid, str(tmp_path)
    )
    outer = cbor2.loads((tmp_path / "transparent.cose").read_bytes())
    receipt = cbor2.loads(outer.value[1][394][0])
    signature = bytearray(receipt.value[3])
    signature[5] ^= 0x01
    receipt.value[3] = bytes(signature)
    outer.value[1][394][0] = cbor2.dumps(receipt)
    tampered = tmp_path / "tampered.cose"
    tampered.write_bytes(cbor2.dumps(outer))

    done = pyscitt.scitt(
        "validate", str(tampered), "--service-trust-store", str(tmp_path / "trust"), check=False
    )
    assert done.returncode != 0
    assert "is transparent" not in done.stdout
    # The untampered one still validates with the same trust store.
    pyscitt.scitt(
        "validate", str(tmp_path / "transparent.cose"),
        "--service-trust-store", str(tmp_path / "trust"),
    )  # fmt: skip


def registrations(sandbox: Sandbox) -> int:
    async def go() -> int:
        async with sandbox.client() as client:
            response = await client.get("/entries/txIds")
            assert response.status == 200, response.body
            return len(response.body["transactionIds"])

    return asyncio.run(go())


def test_statements_breaking_policy_are_refused_with_the_errors_the_client_expects(
    pyscitt: Pyscitt, scitt_sandbox: Sandbox, issuer_identity: SigningIdentity, tmp_path: Path
) -> None:
    before = registrations(scitt_sandbox)
    stranger = make_identity(pyscitt, tmp_path / "stranger")
    unknown_issuer = sign(pyscitt, stranger, b'{"from": "a stranger"}', tmp_path / "u.cose")
    assert "PolicyFailed" in refused(pyscitt, scitt_sandbox, unknown_issuer)

    wrong_type = sign(
        pyscitt, issuer_identity, b"plain text", tmp_path / "w.cose", content_type="text/plain"
    )
    assert "PolicyFailed" in refused(pyscitt, scitt_sandbox, wrong_type)

    too_large = sign(
        pyscitt, issuer_identity, b'"' + b"x" * STATEMENT_BYTES_LIMIT + b'"', tmp_path / "l.cose"
    )
    assert "PayloadTooLarge" in refused(pyscitt, scitt_sandbox, too_large)

    good = cbor2.loads(
        sign(pyscitt, issuer_identity, b'{"ok": 1}', tmp_path / "g.cose").read_bytes()
    )
    bad_signature = bytearray(good.value[3])
    bad_signature[0] ^= 0x01
    good.value[3] = bytes(bad_signature)
    forged = tmp_path / "forged.cose"
    forged.write_bytes(cbor2.dumps(good))
    assert "InvalidInput" in refused(pyscitt, scitt_sandbox, forged)

    # Nothing refused reached the ledger: the count of registrations did not move.
    assert registrations(scitt_sandbox) == before
