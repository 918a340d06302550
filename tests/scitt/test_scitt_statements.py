"""Registration checks without a node: two signed statements from scitt-ccf-ledger's own test
payloads (RSA-PSS, did:x509 issuers with an EKU policy) and their refusals."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography import x509
from scitt_testkit import DATA

from charter.enclave_app.samples.didx509 import DidX509Error, resolve
from charter.enclave_app.samples.scitt_model import ScittError, verify_statement
from charter.governance.actions import parse_action
from charter.governance.errors import GovernanceError
from charter.governance.scitt_config import ScittConfiguration
from charter.ledger import cose

PAYLOADS = ["cts-hashv-cwtclaims-b64url.cose", "manifest.spdx.json.sha384.digest.cose"]
ISSUER = (
    "did:x509:0:sha256:HnwZ4lezuxq_GVcl_Sk7YWW170qAD0DZBLXilXet0jg::eku:1.3.6.1.4.1.311.10.3.13"
)


def policy(**fields: object) -> ScittConfiguration:
    return ScittConfiguration.model_validate({"policy": {"acceptedIssuers": [ISSUER], **fields}})


@pytest.mark.parametrize("name", PAYLOADS)
def test_microsofts_own_test_statements_register_and_store_only_signed_bytes(name: str) -> None:
    body = (DATA / name).read_bytes()
    registration = verify_statement(body, policy())
    assert registration.issuer == ISSUER
    stored = cose.decode_sign1(registration.statement, allowed_tags=cose.TIME_TAGS)
    original = cose.decode_sign1(body, allowed_tags=cose.TIME_TAGS)
    assert stored.unprotected == {}
    assert (stored.protected_bytes, stored.payload, stored.signature) == (
        original.protected_bytes,
        original.payload,
        original.signature,
    )
    assert registration.claims_digest == hashlib.sha256(registration.statement).digest()


def test_refusals_carry_scitt_ccf_ledgers_error_codes() -> None:
    body = (DATA / PAYLOADS[0]).read_bytes()
    cases = {
        "no configuration": (None, "PolicyFailed"),
        "unknown issuer": (
            ScittConfiguration.model_validate({"policy": {"acceptedIssuers": ["did:x509:other"]}}),
            "PolicyFailed",
        ),
        "content type": (policy(acceptedContentTypes=["application/json"]), "PolicyFailed"),
        "algorithm": (policy(acceptedAlgorithms=["ES256"]), "PolicyFailed"),
        "size": (policy(maxStatementBytes=1024), "PayloadTooLarge"),
    }
    for what, (config, code) in cases.items():
        with pytest.raises(ScittError) as refused:
            verify_statement(body, config)
        assert (refused.value.code, refused.value.status) == (code, 400), what

    outer = cbor2.loads(body)
    signature = bytearray(outer.value[3])
    signature[-1] ^= 0x01
    outer.value[3] = bytes(signature)
    with pytest.raises(ScittError, match="Signature verification failed") as bad:
        verify_statement(cbor2.dumps(outer), policy())
    assert bad.value.code == "InvalidInput"

    for garbage in (b"", b"\xd2\x84", b"\x80", cbor2.dumps(cbor2.CBORTag(30, [1, 2]))):
        with pytest.raises(ScittError) as invalid:
            verify_statement(garbage, policy())
        assert invalid.value.code == "InvalidInput"


def test_did_x509_resolution_checks_fingerprint_chain_and_policy() -> None:
    msg = cose.decode_sign1((DATA / PAYLOADS[0]).read_bytes(), allowed_tags=cose.TIME_TAGS)
    chain = [x509.load_der_x509_certificate(der) for der in msg.protected[33]]
    assert resolve(ISSUER, chain) is chain[0]
    wrong_fingerprint = ISSUER.replace("HnwZ4", "AAAAA")
    wrong_eku = ISSUER.replace("10.3.13", "10.3.14")
    for did, reason in (
        (wrong_fingerprint, "fingerprint"),
        (wrong_eku, "extended key usage"),
        ("did:x509:0:sha256:HnwZ4lezuxq_GVcl_Sk7YWW170qAD0DZBLXilXet0jg", "at least one policy"),
        ("did:web:example.com", "not a did:x509"),
        (ISSUER.replace("::eku:", "::fulcio-issuer:"), "unsupported did:x509 policy"),
    ):
        with pytest.raises(DidX509Error, match=reason):
            resolve(did, chain)
    with pytest.raises(DidX509Error, match="not issued by"):
        resolve(ISSUER, [chain[0], *chain[2:]] if len(chain) > 2 else [chain[0], chain[0]])
    with pytest.raises(DidX509Error, match="at least one CA"):
        resolve(ISSUER, chain[:1])


def test_the_policy_action_validates_its_schema() -> None:
    parsed = parse_action(
        "set_scitt_configuration",
        {"configuration": {"policy": {"acceptedIssuers": [ISSUER], "maxStatementBytes": 4096}}},
    )
    assert parsed.name == "set_scitt_configuration"
    for bad in (
        {"configuration": {"policy": {"maxStatementBytes": 2 * 1024 * 1024}}},
        {"configuration": {"policy": {"acceptedAlgorithms": ["HS256"]}}},
        {"configuration": {"policy": {"policyScript": "return true"}}},
        {"configuration": {}, "extra": 1},
    ):
        with pytest.raises(GovernanceError) as refused:
            parse_action("set_scitt_configuration", bad)
        assert refused.value.code == "InvalidActionArgs"
