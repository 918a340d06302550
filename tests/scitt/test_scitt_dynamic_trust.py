"""Receipts name the service by its address (node config `start.cose_signatures.issuer`,
which `charter sandbox --app scitt` sets), so pyscitt 0.10.1's `DynamicTrustStore` finds the
service's keys at https://<issuer>/.well-known/transparency-configuration, trusting the
service certificate through SSL_CERT_FILE as a user would; and a receipt whose issuer names
another service does not verify."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from scitt_testkit import (
    CONTENT_TYPE,
    Pyscitt,
    SigningIdentity,
    set_policy,
    sign,
    start_sandbox,
    url_of,
)
from test_scitt_pyscitt import submit

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


def receipt_claims(transparent: Path) -> dict[Any, Any]:
    """The CWT claims of the receipt embedded in a transparent statement."""
    outer = cbor2.loads(transparent.read_bytes())
    receipt = cbor2.loads(outer.value[1][394][0])
    claims: dict[Any, Any] = cbor2.loads(receipt.value[0])[15]
    return claims


def test_a_receipt_names_the_service_address_and_verifies_with_pyscitts_dynamic_trust_store(
    pyscitt: Pyscitt, scitt_sandbox: Sandbox, issuer_identity: SigningIdentity, tmp_path: Path
) -> None:
    signed = sign(pyscitt, issuer_identity, b'{"artifact": "dynamic"}', tmp_path / "d.cose")
    transparent = tmp_path / "transparent.cose"
    submit(pyscitt, scitt_sandbox, signed, transparent)

    # The sandbox configured the issuer to be the address the service is reached at.
    address = scitt_sandbox.nodes[0].rpc_address
    claims = receipt_claims(transparent)
    assert claims[1] == address
    assert claims[2] == "scitt.ccf.signature.v1"

    trust = {"SSL_CERT_FILE": str(scitt_sandbox.service_cert_path)}
    done = pyscitt.driver("verify-dynamic", str(signed), str(transparent), env=trust)
    assert done.stdout.strip().splitlines()[-1] == "verified"

    # Without the service certificate among its trust anchors, the client refuses the
    # service's TLS certificate and verifies nothing.
    untrusted = pyscitt.driver("verify-dynamic", str(signed), str(transparent), check=False)
    assert untrusted.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert "verified" not in untrusted.stdout


def test_the_transparency_configuration_and_parameters_describe_the_real_key(
    scitt_sandbox: Sandbox,
) -> None:
    async def fetch() -> tuple[Any, Any]:
        async with scitt_sandbox.client() as client:
            config = await client.get("/.well-known/transparency-configuration")
            parameters = await client.get("/parameters")
            return config, parameters

    config, parameters = asyncio.run(fetch())
    assert config.status == 200 and parameters.status == 200
    address = scitt_sandbox.nodes[0].rpc_address
    document = cbor2.loads(config.body)
    assert document == {"issuer": address, "jwks_uri": f"https://{address}/jwks"}
    cert = x509.load_der_x509_certificate(base64.b64decode(parameters.body["serviceCertificate"]))
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    expected = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
    assert parameters.body["signatureAlgorithm"] == expected[key.curve.name]


def test_a_receipt_whose_issuer_names_another_service_fails_dynamic_verification(
    pyscitt: Pyscitt,
    scitt_sandbox: Sandbox,
    issuer_identity: SigningIdentity,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    # A second service whose receipts claim to come from the first one's address.
    impostor_address = scitt_sandbox.nodes[0].rpc_address

    def claim_other_address(index: int, config: dict[str, Any]) -> None:
        config["start"]["cose_signatures"]["issuer"] = impostor_address

    other = start_sandbox(
        tmp_path_factory.mktemp("scitt-other") / "sandbox", 1, configure_node=claim_other_address
    )
    try:
        set_policy(
            other, acceptedIssuers=[issuer_identity.issuer], acceptedContentTypes=[CONTENT_TYPE]
        )
        signed = sign(pyscitt, issuer_identity, b'{"artifact": "elsewhere"}', tmp_path / "e.cose")
        transparent = tmp_path / "transparent.cose"
        submit(pyscitt, other, signed, transparent)
        assert receipt_claims(transparent)[1] == impostor_address

        # The named service answers (its certificate is trusted), but holds no key with the
        # receipt's kid: verification fails.
        trust = {"SSL_CERT_FILE": str(scitt_sandbox.service_cert_path)}
        done = pyscitt.driver(
            "verify-dynamic", str(signed), str(transparent), check=False, env=trust
        )
        assert done.returncode != 0
        assert "KeyError" in done.stderr
        assert "verified" not in done.stdout

        # The receipt itself is sound: against the service that really issued it (its
        # parameters as a static trust store) it verifies.
        store = tmp_path / "trust"
        store.mkdir()

        async def parameters() -> Any:
            async with other.client() as client:
                return (await client.get("/parameters")).body

        (store / "parameters.json").write_text(json.dumps(asyncio.run(parameters())))
        pyscitt.scitt("validate", str(transparent), "--service-trust-store", str(store))
        assert url_of(other) != f"https://{impostor_address}"
    finally:
        other.stop()
