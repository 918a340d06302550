"""COSE_Sign1 (RFC 9052, CBOR tag 18) signing, decoding and verification.

Used for the service's root signatures (`public:ccf.internal.cose_signatures`), COSE
receipts and governance request envelopes, in the byte formats of CCF (FORMATS §3, §5.2,
§6). Encoding is done directly with cbor2 rather than pycose: it is several times faster
and lets us control the protected-header bytes exactly (they are what gets signed).

Only ECDSA is supported, with the algorithm fixed by the key's curve: ES256 (P-256),
ES384 (P-384), ES512 (P-521). Signatures are raw r‖s as COSE requires, not DER.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from charter.ledger.errors import DecodeError, VerificationError

logger = logging.getLogger(__name__)

COSE_SIGN1_TAG = 18

# Header labels (RFC 9052 §3.1; draft-ietf-cose-merkle-tree-proofs; RFC 9597 for CWT claims).
HEADER_ALG = 1
HEADER_KID = 4
HEADER_CWT_CLAIMS = 15
HEADER_VDS = 395
HEADER_VDP = 396
CWT_ISS = 1
CWT_SUB = 2
CWT_IAT = 6
VDS_CCF_LEDGER_SHA256 = 2
VDP_INCLUSION_PROOF = -1
HEADER_CCF_V1 = "ccf.v1"
CCF_V1_TXID = "txid"

# Governance envelope headers (FORMATS §6).
GOV_MSG_TYPE = "ccf.gov.msg.type"
GOV_MSG_CREATED_AT = "ccf.gov.msg.created_at"
GOV_MSG_PROPOSAL_ID = "ccf.gov.msg.proposal_id"
GOV_MSG_TYPES_WITH_PROPOSAL_ID = frozenset({"ballot", "withdrawal"})
GOV_MSG_TYPES = frozenset(
    {"proposal", "ack", "state_digest", "recovery_share", "encrypted_recovery_share"}
    | GOV_MSG_TYPES_WITH_PROPOSAL_ID
)

ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36

# Large enough for a governance proposal carrying an application bundle; callers that
# know their messages are small (signatures, receipts) pass a tighter bound.
DEFAULT_MAX_SIGN1_BYTES = 8 * 1024 * 1024

_SIGNATURE1_CONTEXT = "Signature1"

# alg -> (curve name, hash, coordinate size in bytes)
_ALGS: dict[int, tuple[str, type[hashes.HashAlgorithm], int]] = {
    ALG_ES256: ("secp256r1", hashes.SHA256, 32),
    ALG_ES384: ("secp384r1", hashes.SHA384, 48),
    ALG_ES512: ("secp521r1", hashes.SHA512, 66),
}
_ALG_BY_CURVE = {curve: alg for alg, (curve, _, _) in _ALGS.items()}

HeaderLabel = int | str
HeaderMap = dict[HeaderLabel, Any]


@dataclass(frozen=True, slots=True)
class Sign1:
    """A decoded COSE_Sign1. `protected_bytes` are the exact signed header bytes."""

    protected: HeaderMap
    protected_bytes: bytes
    unprotected: HeaderMap
    payload: bytes | None
    signature: bytes
    raw: bytes

    @property
    def alg(self) -> int | None:
        value = self.protected.get(HEADER_ALG)
        return value if isinstance(value, int) else None

    @property
    def kid(self) -> bytes | None:
        value = self.protected.get(HEADER_KID)
        return value if isinstance(value, bytes) else None


def alg_for_curve(curve: ec.EllipticCurve) -> int:
    """The COSE algorithm CCF uses for an ECDSA key on `curve`."""
    try:
        return _ALG_BY_CURVE[curve.name]
    except KeyError:
        raise ValueError(f"unsupported curve {curve.name}") from None


def kid_for_public_key(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """CCF's kid for the service key: ASCII hex of SHA-256 of the SPKI DER, as bytes."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest().encode("ascii")


# id(private key) -> (that key, its kid): `kid_for_signing_key`'s memory (a few keys at most).
_SIGNING_KIDS: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
_SIGNING_KIDS_MAX = 8


def kid_for_signing_key(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """`kid_for_public_key` of a signing key's public half, derived once per key object: the
    service signs every signature transaction with one key, and the derivation (a DER
    encoding and a SHA-256) cost as much as a tenth of the signing. The entry holds the key
    itself, so its id cannot be reused by another key while it is remembered."""
    cached = _SIGNING_KIDS.get(id(private_key))
    if cached is not None and cached[0] is private_key:
        return cached[1]
    kid = kid_for_public_key(private_key.public_key())
    if len(_SIGNING_KIDS) >= _SIGNING_KIDS_MAX:
        _SIGNING_KIDS.clear()
    _SIGNING_KIDS[id(private_key)] = (private_key, kid)
    return kid


def kid_for_cert(cert: x509.Certificate) -> bytes:
    """CCF's kid for a member: ASCII hex of SHA-256 of the certificate DER (the member id)."""
    return cert.fingerprint(hashes.SHA256()).hex().encode("ascii")


def sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    """The bytes actually signed: Sig_structure for COSE_Sign1 with empty external_aad."""
    return cbor2.dumps([_SIGNATURE1_CONTEXT, protected_bytes, b"", payload])


def encode_protected(alg: int, protected: HeaderMap) -> bytes:
    """Protected header bytes: alg first, then the caller's headers in their order.

    This is the order `ccf.cose.create_cose_sign1` emits, so the bytes match CCF's.
    """
    if HEADER_ALG in protected and protected[HEADER_ALG] != alg:
        raise ValueError("protected alg does not match the signing key's curve")
    header: HeaderMap = {HEADER_ALG: alg}
    for label, value in protected.items():
        if label != HEADER_ALG:
            header[label] = value
    return cbor2.dumps(header)


def sign1(
    private_key: ec.EllipticCurvePrivateKey,
    protected: HeaderMap,
    payload: bytes | None,
    *,
    detached: bool = False,
    unprotected: HeaderMap | None = None,
    deterministic: bool = False,
) -> bytes:
    """Sign `payload` into a tagged COSE_Sign1; with `detached` the payload is sent as nil.
    `deterministic` uses RFC 6979 nonces (the seeded simulator's byte-identical runs)."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise TypeError("COSE signing needs an ECDSA private key")
    if payload is None:
        raise ValueError("payload is required (pass detached=True to leave it out)")
    alg = alg_for_curve(private_key.curve)
    _, hash_cls, size_bytes = _ALGS[alg]
    protected_bytes = encode_protected(alg, protected)
    der = private_key.sign(
        sig_structure(protected_bytes, payload),
        ec.ECDSA(hash_cls(), deterministic_signing=deterministic),
    )
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(size_bytes, "big") + s.to_bytes(size_bytes, "big")
    message = [protected_bytes, dict(unprotected or {}), None if detached else payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, message))


def with_unprotected(data: bytes, unprotected: HeaderMap) -> bytes:
    """Re-encode a COSE_Sign1 with its unprotected header replaced (signature unchanged)."""
    msg = decode_sign1(data)
    return cbor2.dumps(
        cbor2.CBORTag(
            COSE_SIGN1_TAG, [msg.protected_bytes, dict(unprotected), msg.payload, msg.signature]
        )
    )


# Bounds for the pre-scan below: our formats nest at most ~6 deep and hold a few dozen
# items (payloads are single byte strings), so these only ever stop hostile input.
MAX_CBOR_DEPTH = 16
MAX_CBOR_ITEMS = 10_000


def check_plain_cbor(
    data: bytes,
    *,
    top_tag: int | None = None,
    what: str = "CBOR",
    allowed_tags: frozenset[int] = frozenset(),
) -> None:
    """Check that `data` is exactly one well-formed, definite-length CBOR item without tags
    (except `top_tag` on the outermost item, and `allowed_tags` anywhere), within depth and
    item-count bounds.

    Why: cbor2 decodes semantic tags eagerly, and some are CPU bombs on hostile input
    (tag 30 rationals and tag 4 decimal fractions over bignums run a gcd/exponentiation
    that takes seconds for a few hundred KiB). None of our formats uses them, so they are
    refused here before cbor2 sees the bytes.
    """
    end = len(data)
    pos = 0
    pending = [1]  # items still expected in each open container; [1] = the top item
    items = 0
    top = True
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        items += 1
        if items > MAX_CBOR_ITEMS:
            raise DecodeError(f"too many CBOR items in {what}", offset=pos, field=what)
        if pos >= end:
            raise DecodeError(f"truncated {what}", offset=pos, field=what)
        initial = data[pos]
        major, info = initial >> 5, initial & 0x1F
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > end:
                raise DecodeError(f"truncated {what}", offset=pos, field=what)
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            # 28-30 are reserved; 31 is an indefinite length or a break: not in our formats
            raise DecodeError(f"unsupported CBOR encoding in {what}", offset=pos - 1, field=what)
        if major in (2, 3):
            if arg > end - pos:
                raise DecodeError(f"truncated {what}", offset=pos, field=what)
            pos += arg
        elif major in (4, 5):
            count = arg * (2 if major == 5 else 1)
            if count > end - pos:  # every item takes at least one byte
                raise DecodeError(f"truncated {what}", offset=pos, field=what)
            if len(pending) >= MAX_CBOR_DEPTH:
                raise DecodeError(f"{what} nests too deeply", offset=pos, field=what)
            pending.append(count)
        elif major == 6:
            if not (top and top_tag is not None and arg == top_tag) and arg not in allowed_tags:
                raise DecodeError(f"unexpected CBOR tag {arg} in {what}", offset=pos, field=what)
            pending[-1] += 1  # the tagged item follows
        top = False
    if pos != end:
        raise DecodeError(f"trailing bytes after {what}", offset=pos, field=what)


def cbor_decode_exact(
    data: bytes,
    *,
    what: str,
    top_tag: int | None = None,
    allowed_tags: frozenset[int] = frozenset(),
) -> Any:
    """Decode one plain CBOR item that must span all of `data`; raises DecodeError only.

    cbor2 raises a variety of exceptions on hostile input, so after the pre-scan anything
    it raises is still caught here and turned into DecodeError.
    """
    check_plain_cbor(data, top_tag=top_tag, what=what, allowed_tags=allowed_tags)
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:
        raise DecodeError(f"invalid CBOR in {what}: {type(exc).__name__}", field=what) from None
    if fp.tell() != len(data):
        raise DecodeError(f"trailing bytes after {what}", offset=fp.tell(), field=what)
    return value


def _check_header_map(value: Any, what: str) -> HeaderMap:
    if not isinstance(value, dict):
        raise DecodeError(f"{what} header is not a map", field=what)
    for label in value:
        # bool is an int subclass but never a valid label
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise DecodeError(f"{what} header label is not an int or text", field=what)
    if HEADER_ALG in value and (
        isinstance(value[HEADER_ALG], bool) or not isinstance(value[HEADER_ALG], int | str)
    ):
        raise DecodeError("alg is not an int or text", field=what)
    if HEADER_KID in value and not isinstance(value[HEADER_KID], bytes):
        raise DecodeError("kid is not a byte string", field=what)
    return value


# Semantic tags that are cheap to decode: 0 (date-time text) and 1 (epoch time), which
# signed statements carry in CWT claims. `decode_sign1(..., allowed_tags=TIME_TAGS)`.
TIME_TAGS = frozenset({0, 1})


def decode_sign1(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_SIGN1_BYTES,
    allowed_tags: frozenset[int] = frozenset(),
) -> Sign1:
    """Decode a COSE_Sign1 (tagged 18 or untagged); raises DecodeError only.
    `allowed_tags` are semantic tags accepted inside it (none by default)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("COSE_Sign1 must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(f"COSE_Sign1 of {len(data)} bytes exceeds limit {max_bytes}")
    item = cbor_decode_exact(
        data, what="COSE_Sign1", top_tag=COSE_SIGN1_TAG, allowed_tags=allowed_tags
    )
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise DecodeError(f"unexpected CBOR tag {item.tag}", field="tag")
        item = item.value
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("COSE_Sign1 is not an array of 4 items")
    protected_bytes, unprotected, payload, signature = item
    if not isinstance(protected_bytes, bytes):
        raise DecodeError("protected header is not a byte string", field="protected")
    if protected_bytes:
        protected = _check_header_map(
            cbor_decode_exact(protected_bytes, what="protected", allowed_tags=allowed_tags),
            "protected",
        )
    else:
        protected = {}
    unprotected = _check_header_map(unprotected, "unprotected")
    if payload is not None and not isinstance(payload, bytes):
        raise DecodeError("payload is neither a byte string nor nil", field="payload")
    if not isinstance(signature, bytes):
        raise DecodeError("signature is not a byte string", field="signature")
    return Sign1(
        protected=protected,
        protected_bytes=protected_bytes,
        unprotected=unprotected,
        payload=payload,
        signature=signature,
        raw=data,
    )


def _public_key_of(key: Any) -> ec.EllipticCurvePublicKey:
    if isinstance(key, x509.Certificate | ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("verification key is not an ECDSA public key")
    return key


def verify_sign1(
    sign1_msg: Sign1,
    public_key: ec.EllipticCurvePublicKey | x509.Certificate,
    detached_payload: bytes | None = None,
) -> None:
    """Check the signature of a decoded COSE_Sign1; raises VerificationError."""
    key = _public_key_of(public_key)
    alg = sign1_msg.protected.get(HEADER_ALG)
    if isinstance(alg, bool) or not isinstance(alg, int) or alg not in _ALGS:
        raise VerificationError("missing or unsupported alg in protected header", field="alg")
    curve_name, hash_cls, size_bytes = _ALGS[alg]
    if key.curve.name != curve_name:
        raise VerificationError(f"alg {alg} does not match a {key.curve.name} key", field="alg")
    payload = sign1_msg.payload
    if detached_payload is not None:
        if payload is not None and payload != detached_payload:
            raise VerificationError("embedded payload differs from detached payload")
        payload = detached_payload
    if payload is None:
        raise VerificationError("detached payload required", field="payload")
    signature = sign1_msg.signature
    if len(signature) != 2 * size_bytes:
        raise VerificationError("signature has the wrong length for its alg", field="signature")
    r = int.from_bytes(signature[:size_bytes], "big")
    s = int.from_bytes(signature[size_bytes:], "big")
    if r == 0 or s == 0:
        raise VerificationError("signature is invalid", field="signature")
    try:
        key.verify(
            encode_dss_signature(r, s),
            sig_structure(sign1_msg.protected_bytes, payload),
            ec.ECDSA(hash_cls()),
        )
    except InvalidSignature:
        raise VerificationError("signature is invalid", field="signature") from None
