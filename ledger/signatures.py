"""Signature transactions: the node's root signature, the service's COSE root signature,
and the three `public:ccf.internal.*` tables they are written to (FORMATS §2.4, §3).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from charter.ledger import cose
from charter.ledger import service_state as ss
from charter.ledger.certs import load_cert
from charter.ledger.errors import DecodeError, VerificationError

logger = logging.getLogger(__name__)

SIGNATURES_TABLE = ss.SIGNATURES
COSE_SIGNATURES_TABLE = ss.COSE_SIGNATURES
TREE_TABLE = ss.TREE
# Charter's own record of the service's `cose_signatures` setting (CCF keeps it in node
# memory and hands it to joiners; Charter replicates it so joiners, snapshots and restarts
# all sign with the issuer and subject the service started with).
COSE_SIGNATURES_CONFIG_TABLE = ss.COSE_SIGNATURES_CONFIG
# Single-value tables (ServiceValue) use the u64 0 as their only key.
SINGLETON_KEY = ss.SINGLETON_KEY

ROOT_SIZE_BYTES = 32
# A DER ECDSA signature is at most ~139 bytes (P-521); leave room but stay bounded.
MAX_DER_SIGNATURE_BYTES = 160
# The JSON value holds a PEM cert (~1 KiB) plus a few short fields.
MAX_SIGNATURE_VALUE_BYTES = 64 * 1024
MAX_COSE_SIGNATURE_BYTES = 16 * 1024
MAX_SEQNO = 2**63 - 1
HASHED_NONCE_ZERO = "0" * 64

# CCF's defaults (COSESignaturesConfig): empty strings when the operator sets nothing.
DEFAULT_COSE_ISSUER = ""
DEFAULT_COSE_SUBJECT = ""
# A DNS name is at most 253 characters; ":65535" adds 6; an IPv6 literal in brackets fits.
COSE_ISSUER_CHARS_MAX = 253 + 6
COSE_SUBJECT_CHARS_MAX = 256
MAX_COSE_SIGNATURES_CONFIG_BYTES = 4096

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_TXID = re.compile(r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})")

_PREHASHED_SHA256 = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_PREHASHED_SHA256_DETERMINISTIC = ec.ECDSA(
    utils.Prehashed(hashes.SHA256()), deterministic_signing=True
)


@dataclass(frozen=True, slots=True)
class NodeSignature:
    """The validated content of a `public:ccf.internal.signatures` value."""

    node_id: str
    root: bytes
    sig: bytes
    seqno: int
    view: int
    cert_pem: str | None
    commit_seqno: int = 0
    commit_view: int = 0
    hashed_nonce: str = HASHED_NONCE_ZERO


@dataclass(frozen=True, slots=True)
class CoseSignaturesConfig:
    """The CWT issuer and subject the service writes into its COSE root signatures."""

    issuer: str = DEFAULT_COSE_ISSUER
    subject: str = DEFAULT_COSE_SUBJECT


def check_cose_issuer(value: str) -> str:
    """An issuer is a host name or host:port, what `https://<issuer>/` can reach: a DNS
    name, an IPv4 address, or a bracketed IPv6 address, with an optional port 1..65535.
    Raises ValueError otherwise."""
    if not isinstance(value, str) or not 0 < len(value) <= COSE_ISSUER_CHARS_MAX:
        raise ValueError(f"issuer must be 1..{COSE_ISSUER_CHARS_MAX} characters")
    if "/" in value or "@" in value:
        raise ValueError(f"issuer {value!r}: give a host or host:port, not a URL")
    host, port = value, None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ValueError(f"issuer {value!r}: unterminated IPv6 literal")
        host, rest = value[1:close], value[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"issuer {value!r}: expected ':port' after the IPv6 literal")
            port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"issuer {value!r}: not an IPv6 address") from None
    else:
        if value.count(":") == 1:
            host, port = value.split(":")
        elif ":" in value:
            raise ValueError(f"issuer {value!r}: write an IPv6 address in brackets, [addr]:port")
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"issuer {value!r}: not a host name or host:port")
    if port is not None and (not _PORT.fullmatch(port) or int(port) > 65535):
        raise ValueError(f"issuer {value!r}: the port must be 1..65535")
    return value


def check_cose_subject(value: str) -> str:
    """A subject is 1..256 printable characters (no control characters). ValueError else."""
    if not isinstance(value, str) or not 0 < len(value) <= COSE_SUBJECT_CHARS_MAX:
        raise ValueError(f"subject must be 1..{COSE_SUBJECT_CHARS_MAX} characters")
    if not value.isprintable():
        raise ValueError("subject must not hold control characters")
    return value


def cose_signatures_config_value(config: CoseSignaturesConfig) -> bytes:
    """The JSON value of COSE_SIGNATURES_CONFIG_TABLE (CCF's field names)."""
    return _json_bytes({"issuer": config.issuer, "subject": config.subject})


def parse_cose_signatures_config(value: bytes) -> CoseSignaturesConfig:
    """Parse and check a COSE_SIGNATURES_CONFIG_TABLE value; raises DecodeError."""
    obj = _load_json(value, MAX_COSE_SIGNATURES_CONFIG_BYTES, "cose_signatures_config")
    if not isinstance(obj, dict) or set(obj) != {"issuer", "subject"}:
        raise DecodeError(
            "cose_signatures_config must be an object with issuer and subject",
            field="cose_signatures_config",
        )
    try:
        return CoseSignaturesConfig(
            check_cose_issuer(obj["issuer"]), check_cose_subject(obj["subject"])
        )
    except ValueError as exc:
        raise DecodeError(str(exc), field="cose_signatures_config") from None


def sign_root(
    private_key: ec.EllipticCurvePrivateKey, root: bytes, *, deterministic: bool = False
) -> bytes:
    """ECDSA over the 32-byte Merkle root used directly as a SHA-256 digest; DER-encoded.

    `deterministic` signs with RFC 6979 nonces (same key and root, same bytes): the seeded
    simulator needs byte-identical ledgers; production keeps OpenSSL's random nonces."""
    assert len(root) == ROOT_SIZE_BYTES, "a Merkle root is 32 bytes"
    if deterministic:
        return private_key.sign(root, _PREHASHED_SHA256_DETERMINISTIC)
    return private_key.sign(root, _PREHASHED_SHA256)


def _public_key(key: Any) -> ec.EllipticCurvePublicKey:
    if isinstance(key, str | bytes):
        key = load_cert(key)
    if isinstance(key, x509.Certificate | ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("root signatures need an ECDSA key")
    return key


def verify_root(
    public_key_or_cert: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
    root: bytes,
    sig: bytes,
) -> None:
    """Check a node's root signature; raises VerificationError."""
    key = _public_key(public_key_or_cert)
    if len(root) != ROOT_SIZE_BYTES:
        raise VerificationError("root must be 32 bytes", field="root")
    if len(sig) > MAX_DER_SIGNATURE_BYTES:
        raise VerificationError("signature too long", field="sig")
    try:
        key.verify(sig, root, _PREHASHED_SHA256)
    except (InvalidSignature, ValueError):
        raise VerificationError("root signature is invalid", field="sig") from None


def cose_root_signature(
    service_key: ec.EllipticCurvePrivateKey,
    root: bytes,
    *,
    txid: str,
    iat: int,
    issuer: str = DEFAULT_COSE_ISSUER,
    subject: str = DEFAULT_COSE_SUBJECT,
    deterministic: bool = False,
) -> bytes:
    """The service's COSE_Sign1 over the root, detached payload (FORMATS §3).

    Header order (alg, kid, vds, CWT claims {iat, iss, sub}, ccf.v1 {txid}) follows what
    CCF writes, so the protected bytes have the same layout as a real CCF ledger's.
    """
    assert len(root) == ROOT_SIZE_BYTES, "a Merkle root is 32 bytes"
    if not _TXID.fullmatch(txid):
        raise ValueError(f"txid must be 'view.seqno', got {txid!r}")
    protected: cose.HeaderMap = {
        cose.HEADER_KID: cose.kid_for_signing_key(service_key),
        cose.HEADER_VDS: cose.VDS_CCF_LEDGER_SHA256,
        cose.HEADER_CWT_CLAIMS: {cose.CWT_IAT: iat, cose.CWT_ISS: issuer, cose.CWT_SUB: subject},
        cose.HEADER_CCF_V1: {cose.CCF_V1_TXID: txid},
    }
    return cose.sign1(service_key, protected, root, detached=True, deterministic=deterministic)


def verify_cose_root_signature(
    cose_sign1: bytes,
    service_key_or_cert: ec.EllipticCurvePublicKey | x509.Certificate | str | bytes,
    root: bytes,
) -> cose.HeaderMap:
    """Check the service's COSE root signature over `root`; returns the protected header."""
    key = _public_key(service_key_or_cert)
    msg = cose.decode_sign1(cose_sign1, max_bytes=MAX_COSE_SIGNATURE_BYTES)
    if msg.kid != cose.kid_for_public_key(key):
        raise VerificationError("kid does not match the service key", field="kid")
    if msg.protected.get(cose.HEADER_VDS) != cose.VDS_CCF_LEDGER_SHA256:
        raise VerificationError("vds must be CCF_LEDGER_SHA256", field="vds")
    cose.verify_sign1(msg, key, detached_payload=root)
    return msg.protected


def _json_bytes(value: object) -> bytes:
    # CCF's nlohmann JSON: compact separators, keys sorted.
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("ascii")


def signature_value(
    *,
    node_id: str,
    node_cert_pem: str | None,
    root: bytes,
    sig: bytes,
    seqno: int,
    view: int,
) -> bytes:
    """The JSON value of `public:ccf.internal.signatures` (PrimarySignature)."""
    assert len(root) == ROOT_SIZE_BYTES, "a Merkle root is 32 bytes"
    assert 0 < seqno <= MAX_SEQNO and 0 <= view <= MAX_SEQNO, "txid out of range"
    value: dict[str, object] = {
        "commit_seqno": 0,
        "commit_view": 0,
        "hashed_nonce": HASHED_NONCE_ZERO,
        "node": node_id,
        "root": root.hex(),
        "seqno": seqno,
        "sig": base64.b64encode(sig).decode("ascii"),
        "view": view,
    }
    if node_cert_pem is not None:
        value["cert"] = node_cert_pem
    return _json_bytes(value)


def signature_tables(
    *,
    node_id: str,
    node_cert_pem: str | None,
    root: bytes,
    sig: bytes,
    seqno: int,
    view: int,
    cose_sign1: bytes,
    tree_bytes: bytes,
) -> dict[str, dict[bytes, bytes]]:
    """The three single-value writes of a signature transaction, by table name."""
    return {
        SIGNATURES_TABLE: {
            SINGLETON_KEY: signature_value(
                node_id=node_id,
                node_cert_pem=node_cert_pem,
                root=root,
                sig=sig,
                seqno=seqno,
                view=view,
            )
        },
        # A JSON string holding base64 of the COSE_Sign1 (CCF's serialisation of a byte vector).
        COSE_SIGNATURES_TABLE: {
            SINGLETON_KEY: _json_bytes(base64.b64encode(cose_sign1).decode("ascii"))
        },
        TREE_TABLE: {SINGLETON_KEY: bytes(tree_bytes)},
    }


def _load_json(value: bytes, limit: int, what: str) -> Any:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError(f"{what} must be bytes", field=what)
    if len(value) > limit:
        raise DecodeError(f"{what} of {len(value)} bytes exceeds limit {limit}", field=what)
    try:
        return json.loads(bytes(value))
    except (ValueError, RecursionError):
        raise DecodeError(f"{what} is not valid JSON", field=what) from None


def _int_field(obj: dict[str, Any], name: str, *, required: bool) -> int:
    value = obj.get(name, None if required else 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQNO:
        raise DecodeError(f"{name} must be an integer in [0, 2^63)", field=name)
    return value


def _str_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string", field=name)
    return value


def decode_b64(text: str, *, field: str, max_bytes: int) -> bytes:
    """Strict standard base64 with a size bound; DecodeError otherwise."""
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise DecodeError(f"{field} is too long", field=field)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise DecodeError(f"{field} is not valid base64", field=field) from None


def parse_signature(value: bytes) -> NodeSignature:
    """Parse and validate a `public:ccf.internal.signatures` value; raises DecodeError."""
    obj = _load_json(value, MAX_SIGNATURE_VALUE_BYTES, "signature")
    if not isinstance(obj, dict):
        raise DecodeError("signature value is not a JSON object", field="signature")
    node = _str_field(obj, "node")
    if not _HEX64.fullmatch(node):
        raise DecodeError("node must be 64 lowercase hex characters", field="node")
    root_hex = _str_field(obj, "root")
    if not _HEX64.fullmatch(root_hex):
        raise DecodeError("root must be 64 lowercase hex characters", field="root")
    sig = decode_b64(_str_field(obj, "sig"), field="sig", max_bytes=MAX_DER_SIGNATURE_BYTES)
    if not sig:
        raise DecodeError("sig is empty", field="sig")
    cert = obj.get("cert")
    if cert is not None and not isinstance(cert, str):
        raise DecodeError("cert must be a PEM string", field="cert")
    hashed_nonce = obj.get("hashed_nonce", HASHED_NONCE_ZERO)
    if not isinstance(hashed_nonce, str) or not _HEX64.fullmatch(hashed_nonce):
        raise DecodeError("hashed_nonce must be 64 hex characters", field="hashed_nonce")
    return NodeSignature(
        node_id=node,
        root=bytes.fromhex(root_hex),
        sig=sig,
        seqno=_int_field(obj, "seqno", required=True),
        view=_int_field(obj, "view", required=True),
        cert_pem=cert,
        commit_seqno=_int_field(obj, "commit_seqno", required=False),
        commit_view=_int_field(obj, "commit_view", required=False),
        hashed_nonce=hashed_nonce,
    )


def parse_cose_signature(value: bytes) -> bytes:
    """The COSE_Sign1 bytes held by a `public:ccf.internal.cose_signatures` value."""
    text = _load_json(value, MAX_COSE_SIGNATURE_BYTES * 2, "cose_signature")
    if not isinstance(text, str):
        raise DecodeError("cose_signatures value is not a JSON string", field="cose_signature")
    return decode_b64(text, field="cose_signature", max_bytes=MAX_COSE_SIGNATURE_BYTES)
