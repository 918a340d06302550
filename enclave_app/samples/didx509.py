"""Resolution of `did:x509` issuers against the certificate chain a statement carries.

`did:x509` (https://github.com/microsoft/did-x509, draft-birkholz-did-x509) names an issuer
by the fingerprint of a CA certificate plus policies on the leaf certificate, e.g.

    did:x509:0:sha256:<base64url(SHA-256 of a CA cert's DER)>::subject:CN:Example%20Signer
    did:x509:0:sha256:<...>::eku:1.3.6.1.5.5.7.3.3

It resolves from the `x5chain` of the signed statement alone, with no network access, which
is why it is the one DID method the SCITT sample accepts (as scitt-ccf-ledger 0.13 does).
`resolve(did, chain)` checks that the chain links (each certificate signed by the next), that
the fingerprint matches one of its CA certificates (any but the leaf), and that every policy
holds for the leaf; it returns the leaf certificate, whose key must have signed the statement.
Certificate validity dates are not checked (as scitt-ccf-ledger resolves with time checks
off: a statement outlives its signing certificate).
"""

from __future__ import annotations

import base64
import itertools
import urllib.parse
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID, NameOID

DID_BYTES_MAX = 2048
CHAIN_CERTS_MAX = 8
POLICIES_MAX = 8

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_SUBJECT_KEYS = {
    "CN": NameOID.COMMON_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
}
_SAN_TYPES: dict[str, type[x509.RFC822Name | x509.DNSName | x509.UniformResourceIdentifier]] = {
    "email": x509.RFC822Name,
    "dns": x509.DNSName,
    "uri": x509.UniformResourceIdentifier,
}


class DidX509Error(ValueError):
    """The DID is malformed, or the chain does not resolve it; the message says which check."""


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise DidX509Error("the CA fingerprint is not base64url") from None


def _check_chain(chain: Sequence[x509.Certificate]) -> None:
    if len(chain) < 2:
        raise DidX509Error("a did:x509 chain holds a leaf and at least one CA certificate")
    if len(chain) > CHAIN_CERTS_MAX:
        raise DidX509Error(f"the chain holds more than {CHAIN_CERTS_MAX} certificates")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise DidX509Error(
                f"certificate {child.subject.rfc4514_string()!r} is not issued by the next one"
            ) from None


def _subject_policy(leaf: x509.Certificate, parts: list[str]) -> None:
    if not parts or len(parts) % 2:
        raise DidX509Error("a subject policy is key:value pairs")
    for key, value in zip(parts[::2], parts[1::2], strict=True):
        oid = _SUBJECT_KEYS.get(key)
        if oid is None:
            raise DidX509Error(f"unsupported subject key {key[:16]!r}")
        wanted = urllib.parse.unquote(value)
        found = [a.value for a in leaf.subject.get_attributes_for_oid(oid)]
        if wanted not in found:
            raise DidX509Error(f"the leaf's subject {key} is not {wanted[:64]!r}")


def _san_policy(leaf: x509.Certificate, parts: list[str]) -> None:
    if len(parts) != 2 or parts[0] not in _SAN_TYPES:
        raise DidX509Error("a san policy is san:<email|dns|uri>:<value>")
    wanted = urllib.parse.unquote(parts[1])
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        raise DidX509Error("the leaf has no subject alternative name") from None
    assert isinstance(san.value, x509.SubjectAlternativeName)
    if wanted not in san.value.get_values_for_type(_SAN_TYPES[parts[0]]):
        raise DidX509Error(f"the leaf has no {parts[0]} name {wanted[:64]!r}")


def _eku_policy(leaf: x509.Certificate, parts: list[str]) -> None:
    if len(parts) != 1 or not parts[0].replace(".", "").isdigit():
        raise DidX509Error("an eku policy is eku:<OID>")
    try:
        eku = leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE)
    except x509.ExtensionNotFound:
        raise DidX509Error("the leaf has no extended key usage") from None
    assert isinstance(eku.value, x509.ExtendedKeyUsage)
    if parts[0] not in {oid.dotted_string for oid in eku.value}:
        raise DidX509Error(f"the leaf's extended key usage lacks {parts[0]}")


_POLICIES = {"subject": _subject_policy, "san": _san_policy, "eku": _eku_policy}


def resolve(did: str, chain: Sequence[x509.Certificate]) -> x509.Certificate:
    """Check `did` against `chain` (leaf first); returns the leaf. Raises DidX509Error."""
    if len(did) > DID_BYTES_MAX:
        raise DidX509Error(f"the DID exceeds {DID_BYTES_MAX} characters")
    head, *policies = did.split("::")
    fields = head.split(":")
    if len(fields) != 5 or fields[:2] != ["did", "x509"]:
        raise DidX509Error("not a did:x509 identifier")
    if fields[2] != "0":
        raise DidX509Error(f"unsupported did:x509 version {fields[2][:8]!r}")
    hash_cls = _HASHES.get(fields[3])
    if hash_cls is None:
        raise DidX509Error(f"unsupported fingerprint hash {fields[3][:16]!r}")
    if not policies:
        raise DidX509Error("a did:x509 identifier names at least one policy")
    if len(policies) > POLICIES_MAX:
        raise DidX509Error(f"more than {POLICIES_MAX} policies")
    fingerprint = _b64url_decode(fields[4])
    _check_chain(chain)
    if not any(ca.fingerprint(hash_cls()) == fingerprint for ca in chain[1:]):
        raise DidX509Error("no CA certificate in the chain has the DID's fingerprint")
    leaf = chain[0]
    for policy in policies:
        name, *parts = policy.split(":")
        check = _POLICIES.get(name)
        if check is None:
            raise DidX509Error(f"unsupported did:x509 policy {name[:16]!r}")
        check(leaf, parts)
    return leaf
