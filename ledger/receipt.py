"""Transaction receipts, JSON (FORMATS §5.1) and COSE (§5.2), and their offline checks.

A receipt proves that a transaction's leaf is in the Merkle tree whose root a node signed
(JSON: the node's ECDSA signature, plus the node cert's endorsement by the service) or the
service signed (COSE: the signature transaction's COSE_Sign1 with the proof attached).

Verification cost is dominated by one ECDSA verify of the root signature: certificate
parsing and the node-cert endorsement chain are cached per distinct (node cert,
endorsements, service cert), so a stream of receipts from the same node pays for the chain
once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import cose
from charter.ledger.certs import issued_by, load_cert
from charter.ledger.errors import DecodeError, VerificationError
from charter.ledger.signatures import decode_b64, verify_root

logger = logging.getLogger(__name__)

DIGEST_SIZE_BYTES = 32
ZERO_DIGEST = bytes(DIGEST_SIZE_BYTES)
# A tree over 2^64 leaves has paths of at most 64 steps.
MAX_PROOF_STEPS = 64
# One endorsement per past disaster recovery; anything near this bound is hostile.
MAX_SERVICE_ENDORSEMENTS = 16
# "ce:<view>.<seqno>:<64 hex>" is < 110 characters; allow other opaque forms, bounded.
MAX_COMMIT_EVIDENCE_CHARS = 1024
MAX_CERT_PEM_CHARS = 16 * 1024
MAX_JSON_RECEIPT_BYTES = 256 * 1024
MAX_COSE_RECEIPT_BYTES = 64 * 1024
MAX_INCLUSION_PROOFS = 16
MAX_DER_SIGNATURE_BYTES = 160
_CACHE_ENTRIES = 256

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class LeafComponents:
    """What a transaction's Merkle leaf is made of. `claims_digest` None = legacy leaf."""

    write_set_digest: bytes
    commit_evidence: str
    claims_digest: bytes | None

    def leaf(self) -> bytes:
        return leaf_digest(self.write_set_digest, self.commit_evidence, self.claims_digest)


@dataclass(frozen=True, slots=True)
class JsonReceipt:
    """A validated JSON receipt. For a signature transaction `leaf` is the signed root."""

    cert_pem: str
    node_id: str
    signature: bytes
    is_signature_transaction: bool
    leaf_components: LeafComponents | None
    leaf: bytes
    proof: tuple[tuple[bool, bytes], ...]
    service_endorsements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CoseInclusionProof:
    leaf_components: LeafComponents
    proof: tuple[tuple[bool, bytes], ...]


def leaf_digest(
    write_set_digest: bytes, commit_evidence: str, claims_digest: bytes | None
) -> bytes:
    """H(wsd ‖ H(commit_evidence) ‖ claims_digest); without claims (pre-2.0): H(wsd ‖ H(ce))."""
    assert len(write_set_digest) == DIGEST_SIZE_BYTES, "write set digest is 32 bytes"
    evidence_digest = hashlib.sha256(commit_evidence.encode("utf-8")).digest()
    if claims_digest is None:
        return hashlib.sha256(write_set_digest + evidence_digest).digest()
    assert len(claims_digest) == DIGEST_SIZE_BYTES, "claims digest is 32 bytes"
    return hashlib.sha256(write_set_digest + evidence_digest + claims_digest).digest()


def fold_proof(leaf: bytes, proof: Sequence[tuple[bool, bytes]]) -> bytes:
    """Root from a leaf and a leaf-to-root path; `True` = the sibling is on the left."""
    acc = leaf
    for sibling_is_left, sibling in proof:
        acc = hashlib.sha256(sibling + acc if sibling_is_left else acc + sibling).digest()
    return acc


# ---------------------------------------------------------------------------------------------
# JSON receipts


def build_json_receipt(
    *,
    node_cert_pem: str,
    node_id: str,
    signature: bytes,
    proof: Sequence[tuple[bool, bytes]],
    write_set_digest: bytes,
    commit_evidence: str,
    claims_digest: bytes,
    service_endorsements: Sequence[str] = (),
) -> dict[str, Any]:
    """A receipt in CCF's current JSON schema for an ordinary transaction."""
    assert len(write_set_digest) == DIGEST_SIZE_BYTES, "write set digest is 32 bytes"
    assert len(claims_digest) == DIGEST_SIZE_BYTES, "claims digest is 32 bytes"
    assert all(len(h) == DIGEST_SIZE_BYTES for _, h in proof), "proof hashes are 32 bytes"
    return {
        "cert": node_cert_pem,
        "is_signature_transaction": False,
        "leaf_components": {
            "claims_digest": claims_digest.hex(),
            "commit_evidence": commit_evidence,
            "write_set_digest": write_set_digest.hex(),
        },
        "node_id": node_id,
        "proof": [{"left" if is_left else "right": h.hex()} for is_left, h in proof],
        "service_endorsements": list(service_endorsements),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def build_signature_receipt(
    *,
    node_cert_pem: str,
    node_id: str,
    signature: bytes,
    root: bytes,
    service_endorsements: Sequence[str] = (),
) -> dict[str, Any]:
    """A receipt for a signature transaction: its signed root, directly signed, no proof.

    CCF 6 does not define a JSON form for these; this is the older documented shape (a
    `leaf` field holding the root), which `ccf.receipt.root(leaf, [])` also handles.
    """
    assert len(root) == DIGEST_SIZE_BYTES, "a Merkle root is 32 bytes"
    return {
        "cert": node_cert_pem,
        "is_signature_transaction": True,
        "leaf": root.hex(),
        "node_id": node_id,
        "proof": [],
        "service_endorsements": list(service_endorsements),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def _field(obj: Mapping[str, Any], name: str, kind: type, *, what: str = "receipt") -> Any:
    if name not in obj:
        raise DecodeError(f"{what} lacks {name}", field=name)
    value = obj[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DecodeError(f"{name} has the wrong type", field=name)
    return value


def _hex_digest(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise DecodeError(f"{name} must be 64 hex characters", field=name)
    return bytes.fromhex(value)


def _pem_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_CERT_PEM_CHARS:
        raise DecodeError(
            f"{name} must be a PEM string of at most {MAX_CERT_PEM_CHARS}", field=name
        )
    return value


def _parse_json_proof(value: Any) -> tuple[tuple[bool, bytes], ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_STEPS:
        raise DecodeError(f"proof must be a list of at most {MAX_PROOF_STEPS} steps", field="proof")
    steps = []
    for step in value:
        if not isinstance(step, dict) or len(step) != 1:
            raise DecodeError("proof step must be {'left': h} or {'right': h}", field="proof")
        ((side, digest),) = step.items()
        if side not in ("left", "right"):
            raise DecodeError("proof step must be {'left': h} or {'right': h}", field="proof")
        steps.append((side == "left", _hex_digest(digest, "proof")))
    return tuple(steps)


def parse_json_receipt(receipt: Mapping[str, Any] | bytes | str) -> JsonReceipt:
    """Validate a JSON receipt's shape (dict, or its JSON text); raises DecodeError only."""
    if isinstance(receipt, bytes | str):
        if len(receipt) > MAX_JSON_RECEIPT_BYTES:
            raise DecodeError("receipt exceeds size limit", field="receipt")
        try:
            receipt = json.loads(receipt)
        except (ValueError, RecursionError):
            raise DecodeError("receipt is not valid JSON", field="receipt") from None
    if not isinstance(receipt, Mapping):
        raise DecodeError("receipt is not a JSON object", field="receipt")
    cert_pem = _pem_text(_field(receipt, "cert", str), "cert")
    node_id = _field(receipt, "node_id", str)
    if len(node_id) > 256:
        raise DecodeError("node_id too long", field="node_id")
    sig_b64 = _field(receipt, "signature", str)
    signature = decode_b64(sig_b64, field="signature", max_bytes=MAX_DER_SIGNATURE_BYTES)
    endorsements = receipt.get("service_endorsements", [])  # optional in old receipts
    if not isinstance(endorsements, list) or len(endorsements) > MAX_SERVICE_ENDORSEMENTS:
        raise DecodeError("service_endorsements must be a short list", field="service_endorsements")
    endorsements_t = tuple(_pem_text(e, "service_endorsements") for e in endorsements)
    is_sig = receipt.get("is_signature_transaction", "leaf" in receipt)
    if not isinstance(is_sig, bool):
        raise DecodeError(
            "is_signature_transaction must be a bool", field="is_signature_transaction"
        )
    proof = _parse_json_proof(receipt.get("proof", []))
    components: LeafComponents | None = None
    if is_sig:
        if "leaf_components" in receipt:
            raise DecodeError("a signature receipt has no leaf_components", field="leaf_components")
        leaf = _hex_digest(receipt.get("leaf"), "leaf")
    else:
        if "leaf" in receipt:
            raise DecodeError("a transaction receipt has leaf_components, not leaf", field="leaf")
        lc = _field(receipt, "leaf_components", dict)
        evidence = _field(lc, "commit_evidence", str, what="leaf_components")
        if len(evidence) > MAX_COMMIT_EVIDENCE_CHARS:
            raise DecodeError("commit_evidence too long", field="commit_evidence")
        claims = lc.get("claims_digest")  # absent only in pre-2.0 receipts
        components = LeafComponents(
            write_set_digest=_hex_digest(lc.get("write_set_digest"), "write_set_digest"),
            commit_evidence=evidence,
            claims_digest=None if claims is None else _hex_digest(claims, "claims_digest"),
        )
        leaf = components.leaf()
    return JsonReceipt(
        cert_pem=cert_pem,
        node_id=node_id,
        signature=signature,
        is_signature_transaction=is_sig,
        leaf_components=components,
        leaf=leaf,
        proof=proof,
        service_endorsements=endorsements_t,
    )


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _cert(pem: str) -> x509.Certificate:
    cert = load_cert(pem)
    # cryptography parses a certificate's fields lazily: read now what the checks below use,
    # so that a malformed key or algorithm is a DecodeError here, not a ValueError later.
    try:
        cert.public_key()
        _ = cert.signature_hash_algorithm, cert.signature, cert.tbs_certificate_bytes
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"certificate unreadable: {exc}", field="cert") from None
    return cert


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _spki_id(pem: str) -> str:
    public_key = _cert(pem).public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _chain_is_endorsed(
    node_cert_pem: str, endorsements: tuple[str, ...], service_der: bytes
) -> bool:
    # Cached: a given node cert is checked against a given service cert once, then every
    # further receipt from that node costs only its root-signature verify.
    chain = [_cert(node_cert_pem), *(_cert(e) for e in endorsements)]
    service_cert = x509.load_der_x509_certificate(service_der)
    chain.append(service_cert)
    return all(issued_by(chain[i], chain[i + 1]) for i in range(len(chain) - 1))


def _service_cert(service_cert: x509.Certificate | str | bytes) -> x509.Certificate:
    if isinstance(service_cert, x509.Certificate):
        return service_cert
    if isinstance(service_cert, bytes):
        service_cert = service_cert.decode("ascii", "replace")
    return _cert(service_cert)


def verify_json_receipt(
    receipt: Mapping[str, Any] | bytes | str,
    service_cert_pem: x509.Certificate | str | bytes,
    *,
    claims_digest: bytes | None = None,
) -> bytes:
    """Check a JSON receipt against the service certificate; returns the signed root.

    Raises DecodeError for a malformed receipt and VerificationError naming the check
    that failed (claims digest, node id, root signature, endorsement chain). Certificate
    validity periods are not checked: receipts stay verifiable after node certs expire.
    """
    parsed = parse_json_receipt(receipt)
    if claims_digest is not None:
        components = parsed.leaf_components
        if components is None or components.claims_digest != claims_digest:
            raise VerificationError("claims digest does not match", field="claims_digest")
    service = _service_cert(service_cert_pem)
    try:
        node_cert = _cert(parsed.cert_pem)
        for endorsement in parsed.service_endorsements:
            _cert(endorsement)
    except DecodeError as exc:
        raise VerificationError(f"receipt certificate unreadable: {exc}", field="cert") from None
    if _spki_id(parsed.cert_pem) != parsed.node_id.lower():
        raise VerificationError("node_id is not the hash of the cert's public key", field="node_id")
    root = fold_proof(parsed.leaf, parsed.proof)
    try:
        verify_root(node_cert, root, parsed.signature)
    except VerificationError:
        raise VerificationError(
            "root signature does not verify with the receipt's cert", field="signature"
        ) from None
    service_der = service.public_bytes(serialization.Encoding.DER)
    if not _chain_is_endorsed(parsed.cert_pem, parsed.service_endorsements, service_der):
        raise VerificationError(
            "node cert is not endorsed by the service cert", field="service_endorsements"
        )
    return root


# ---------------------------------------------------------------------------------------------
# COSE receipts


def encode_inclusion_proof(
    components: LeafComponents, proof: Sequence[tuple[bool, bytes]]
) -> bytes:
    """CBOR {1: [wsd, commit_evidence, claims_digest], 2: [[is_left, hash], ...]}."""
    assert components.claims_digest is not None, "COSE receipts always carry a claims digest"
    return cbor2.dumps(
        {
            1: [components.write_set_digest, components.commit_evidence, components.claims_digest],
            2: [[bool(is_left), bytes(h)] for is_left, h in proof],
        }
    )


def build_cose_receipt(
    signature_cose: bytes,
    leaf: tuple[bytes, str, bytes] | None = None,
    proof: Sequence[tuple[bool, bytes]] | None = None,
    *,
    write_set_digest: bytes | None = None,
    commit_evidence: str | None = None,
    claims_digest: bytes | None = None,
) -> bytes:
    """The signature transaction's COSE_Sign1 with the inclusion proof as unprotected 396.

    The leaf may be given as the `leaf` triple (docs/internals.md) or by keywords.
    """
    if leaf is not None:
        if write_set_digest is not None or commit_evidence is not None or claims_digest is not None:
            raise TypeError("give the leaf either as a tuple or by keywords, not both")
        write_set_digest, commit_evidence, claims_digest = leaf
    if write_set_digest is None or commit_evidence is None or claims_digest is None:
        raise TypeError("write_set_digest, commit_evidence and claims_digest are required")
    if proof is None:
        raise TypeError("proof is required")
    assert len(write_set_digest) == DIGEST_SIZE_BYTES and len(claims_digest) == DIGEST_SIZE_BYTES
    assert len(proof) <= MAX_PROOF_STEPS, "proof longer than any tree"
    components = LeafComponents(write_set_digest, commit_evidence, claims_digest)
    signature = cose.decode_sign1(signature_cose, max_bytes=MAX_COSE_RECEIPT_BYTES)
    unprotected = {
        cose.HEADER_VDP: {cose.VDP_INCLUSION_PROOF: [encode_inclusion_proof(components, proof)]}
    }
    return cbor2.dumps(
        cbor2.CBORTag(
            cose.COSE_SIGN1_TAG,
            [signature.protected_bytes, unprotected, None, signature.signature],
        )
    )


def _digest_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE_BYTES:
        raise DecodeError(f"{name} must be a 32-byte string", field=name)
    return value


def decode_inclusion_proof(data: Any) -> CoseInclusionProof:
    """Validate one CCF inclusion proof (bstr of CBOR); raises DecodeError only."""
    if not isinstance(data, bytes):
        raise DecodeError("inclusion proof must be a byte string", field="proof")
    item = cose.cbor_decode_exact(data, what="inclusion proof")
    if not isinstance(item, dict):
        raise DecodeError("inclusion proof is not a map", field="proof")
    leaf = item.get(1)
    if not isinstance(leaf, list) or len(leaf) != 3:
        raise DecodeError("proof leaf must be [wsd, commit_evidence, claims]", field="leaf")
    wsd = _digest_bytes(leaf[0], "write_set_digest")
    evidence = leaf[1]
    if not isinstance(evidence, str) or len(evidence) > MAX_COMMIT_EVIDENCE_CHARS:
        raise DecodeError("commit_evidence must be a short text string", field="commit_evidence")
    claims = _digest_bytes(leaf[2], "claims_digest")
    path = item.get(2)
    if not isinstance(path, list) or len(path) > MAX_PROOF_STEPS:
        raise DecodeError(f"proof path must be a list of <= {MAX_PROOF_STEPS}", field="path")
    steps = []
    for step in path:
        if not isinstance(step, list) or len(step) != 2 or not isinstance(step[0], bool):
            raise DecodeError("proof step must be [bool, hash]", field="path")
        steps.append((step[0], _digest_bytes(step[1], "path")))
    return CoseInclusionProof(LeafComponents(wsd, evidence, claims), tuple(steps))


def decode_cose_receipt(receipt_bytes: bytes) -> tuple[cose.Sign1, list[CoseInclusionProof]]:
    """Decode a COSE receipt and its inclusion proofs; raises DecodeError only."""
    msg = cose.decode_sign1(receipt_bytes, max_bytes=MAX_COSE_RECEIPT_BYTES)
    vdp = msg.unprotected.get(cose.HEADER_VDP)
    if not isinstance(vdp, dict):
        raise DecodeError("receipt lacks its verifiable data proof (396)", field="vdp")
    proofs = vdp.get(cose.VDP_INCLUSION_PROOF)
    if not isinstance(proofs, list) or not 1 <= len(proofs) <= MAX_INCLUSION_PROOFS:
        raise DecodeError("receipt needs 1..16 inclusion proofs", field="inclusion_proofs")
    return msg, [decode_inclusion_proof(p) for p in proofs]


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _service_key_from_pem(pem: str) -> ec.EllipticCurvePublicKey:
    key = _cert(pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("service key is not ECDSA")
    return key


def _service_key(
    key: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
) -> ec.EllipticCurvePublicKey:
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if isinstance(key, str):
        try:
            return _service_key_from_pem(key)
        except DecodeError as exc:
            raise VerificationError(f"service certificate unreadable: {exc}") from None
    public_key = key.public_key() if isinstance(key, x509.Certificate) else key
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise VerificationError("service key is not ECDSA")
    return public_key


def verify_cose_receipt(
    receipt_bytes: bytes,
    service_cert_pem_or_key: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
    claims_digest: bytes,
) -> cose.HeaderMap:
    """Check a COSE receipt against the service identity; returns the protected header.

    Same checks as `ccf.cose.verify_receipt`: kid = the service key's, vds = CCF ledger,
    every inclusion proof folds to a root the service signed, and carries `claims_digest`.
    """
    key = _service_key(service_cert_pem_or_key)
    msg, proofs = decode_cose_receipt(receipt_bytes)
    if msg.kid != cose.kid_for_public_key(key):
        raise VerificationError("kid does not match the service key", field="kid")
    if msg.protected.get(cose.HEADER_VDS) != cose.VDS_CCF_LEDGER_SHA256:
        raise VerificationError("vds must be CCF_LEDGER_SHA256 (2)", field="vds")
    for proof in proofs:
        if proof.leaf_components.claims_digest != claims_digest:
            raise VerificationError("claims digest does not match", field="claims_digest")
        root = fold_proof(proof.leaf_components.leaf(), proof.proof)
        try:
            cose.verify_sign1(msg, key, detached_payload=root)
        except VerificationError:
            raise VerificationError(
                "service signature does not verify over the proof's root", field="signature"
            ) from None
    return msg.protected
