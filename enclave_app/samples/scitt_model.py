"""What the SCITT sample checks and sends, without I/O: statement verification, the
registration policy, operations and error bodies in scitt-ccf-ledger 0.13's shapes.

A signed statement (draft-ietf-scitt-architecture, as pyscitt 0.10.1 writes it) is a tagged
COSE_Sign1 whose protected header holds `alg` (1), `content type` (3), `x5chain` (33) and
`CWT_Claims` (15) with `iss` (1) a `did:x509` identifier, and optionally `sub` (2, the feed).
`verify_statement` runs the checks in the real service's order: size, then the envelope and its
signature (InvalidInput), then the governance policy (PolicyFailed); every refusal is a
`ScittError` whose code and message go back as RFC 9290 concise problem details in CBOR
(`{-1: code, -2: message}`), which pyscitt turns into `ServiceError(code, message)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from charter.enclave_app.samples.didx509 import CHAIN_CERTS_MAX, DidX509Error, resolve
from charter.governance.scitt_config import STATEMENT_BYTES_MAX, ScittConfiguration
from charter.ledger import cose
from charter.ledger.errors import DecodeError

CT_COSE = "application/cose"
CT_CBOR = "application/cbor"
CT_PROBLEM = "application/concise-problem-details+cbor"
PROBLEM_TITLE = -1
PROBLEM_DETAIL = -2

HEADER_CONTENT_TYPE = 3
HEADER_X5CHAIN = 33
# draft-ietf-scitt-architecture: the array of receipts in a transparent statement's
# unprotected header.
HEADER_RECEIPTS = 394
CERT_BYTES_MAX = 16 * 1024

# COSE algorithm ids -> JOSE names (the names the configuration's acceptedAlgorithms use).
ALGORITHMS = {
    -7: "ES256",
    -35: "ES384",
    -36: "ES512",
    -37: "PS256",
    -38: "PS384",
    -39: "PS512",
    -8: "EdDSA",
}
_HASH_FOR: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}


class ScittError(Exception):
    """A refusal with scitt-ccf-ledger's error code (InvalidInput, PayloadTooLarge,
    PolicyFailed, NotFound, TransactionNotCached, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def problem_details(code: str, message: str) -> bytes:
    return cbor2.dumps({PROBLEM_TITLE: code, PROBLEM_DETAIL: message})


def operation_body(operation_id: str, status: str, entry_id: str | None = None) -> bytes:
    """scitt-ccf-ledger's operation document (CBOR map with these key names)."""
    doc: dict[str, Any] = {"OperationId": operation_id, "Status": status}
    if entry_id is not None:
        doc["EntryId"] = entry_id
    return cbor2.dumps(doc)


@dataclass(frozen=True, slots=True)
class Registration:
    """A statement that passed every check: the bytes to store (unprotected header
    emptied, so only signed bytes remain) and the claims digest to bind in the ledger."""

    statement: bytes
    claims_digest: bytes
    issuer: str
    content_type: str


def _invalid(message: str) -> ScittError:
    return ScittError(400, "InvalidInput", message)


def _policy_failed(message: str) -> ScittError:
    return ScittError(400, "PolicyFailed", f"Policy was not met: {message}")


def _chain(value: Any) -> list[x509.Certificate]:
    items = [value] if isinstance(value, bytes) else value
    if not isinstance(items, list) or not 1 <= len(items) <= CHAIN_CERTS_MAX:
        raise _invalid(f"x5chain must hold 1 to {CHAIN_CERTS_MAX} certificates")
    chain = []
    for der in items:
        if not isinstance(der, bytes) or len(der) > CERT_BYTES_MAX:
            raise _invalid("x5chain must hold DER certificates")
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise _invalid("x5chain holds a certificate that does not parse") from None
    return chain


def _verify_signature(msg: cose.Sign1, algorithm: str, key: Any) -> None:
    assert msg.payload is not None
    tbs = cbor2.dumps(["Signature1", msg.protected_bytes, b"", msg.payload])
    try:
        if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(msg.signature, tbs)
            return
        hash_cls = _HASH_FOR.get(algorithm)
        if algorithm.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            assert hash_cls is not None
            half = (key.curve.key_size + 7) // 8
            if len(msg.signature) != 2 * half:
                raise InvalidSignature
            r = int.from_bytes(msg.signature[:half], "big")
            s = int.from_bytes(msg.signature[half:], "big")
            key.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hash_cls()))
            return
        if algorithm.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
            assert hash_cls is not None
            pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls.digest_size)
            key.verify(msg.signature, tbs, pss, hash_cls())
            return
    except InvalidSignature:
        raise _invalid("Signature verification failed") from None
    raise _invalid(f"The signing key does not fit algorithm {algorithm}")


def verify_statement(body: bytes, config: ScittConfiguration | None) -> Registration:
    """Check a submitted signed statement against its signature, its issuer's chain and the
    governance policy (see the module docstring). Raises ScittError."""
    limit = config.policy.maxStatementBytes if config is not None else STATEMENT_BYTES_MAX
    if len(body) > limit:
        raise ScittError(
            400, "PayloadTooLarge", f"Entry size {len(body)} exceeds maximum allowed size {limit}"
        )
    try:
        msg = cose.decode_sign1(body, max_bytes=STATEMENT_BYTES_MAX, allowed_tags=cose.TIME_TAGS)
    except DecodeError as exc:
        raise _invalid(f"Signed statement is not a COSE_Sign1: {exc}") from None
    if msg.payload is None:
        raise _invalid("Signed statement has a detached payload")
    alg = msg.protected.get(cose.HEADER_ALG)
    algorithm = ALGORITHMS.get(alg) if isinstance(alg, int) and not isinstance(alg, bool) else None
    if algorithm is None:
        raise _invalid("Missing or unsupported algorithm in protected header")
    claims = msg.protected.get(cose.HEADER_CWT_CLAIMS)
    issuer = claims.get(cose.CWT_ISS) if isinstance(claims, dict) else None
    if not isinstance(issuer, str):
        raise _invalid(
            "Signed statement protected header must contain CWT_Claims with at least an issuer"
        )
    if not issuer.startswith("did:x509"):
        raise _invalid("CWT_Claims issuer must be a did:x509")
    if HEADER_X5CHAIN not in msg.protected:
        raise _invalid("Signed statement protected header must contain an x5chain")
    chain = _chain(msg.protected[HEADER_X5CHAIN])
    _verify_signature(msg, algorithm, chain[0].public_key())
    try:
        resolve(issuer, chain)
    except DidX509Error as exc:
        raise _invalid(f"The issuer does not resolve against x5chain: {exc}") from None
    content_type = msg.protected.get(HEADER_CONTENT_TYPE)
    if not isinstance(content_type, str):
        raise _invalid("Signed statement protected header must contain a text content type")

    if config is None:
        raise _policy_failed(
            "no SCITT configuration is set (governance action set_scitt_configuration)"
        )
    policy = config.policy
    if policy.acceptedAlgorithms is not None and algorithm not in policy.acceptedAlgorithms:
        raise _policy_failed(f"algorithm {algorithm} is not accepted")
    if issuer not in policy.acceptedIssuers:
        raise _policy_failed(f"issuer {issuer[:200]} is not accepted")
    accepted_types = policy.acceptedContentTypes
    if accepted_types is not None and content_type.lower() not in {
        t.lower() for t in accepted_types
    }:
        raise _policy_failed(f"content type {content_type[:100]!r} is not accepted")

    statement = cbor2.dumps(
        cbor2.CBORTag(cose.COSE_SIGN1_TAG, [msg.protected_bytes, {}, msg.payload, msg.signature])
    )
    return Registration(
        statement=statement,
        claims_digest=hashlib.sha256(statement).digest(),
        issuer=issuer,
        content_type=content_type,
    )


def transparent_statement(statement: bytes, receipt: bytes) -> bytes:
    """The stored statement with its receipt in unprotected header 394 (an array of
    receipts, each a bstr), as scitt-ccf-ledger serves /entries/{id}/statement."""
    msg = cose.decode_sign1(statement, max_bytes=STATEMENT_BYTES_MAX, allowed_tags=cose.TIME_TAGS)
    return cbor2.dumps(
        cbor2.CBORTag(
            cose.COSE_SIGN1_TAG,
            [msg.protected_bytes, {HEADER_RECEIPTS: [receipt]}, msg.payload, msg.signature],
        )
    )
