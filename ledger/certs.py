"""Keys and X.509 certificates for services, nodes, members and users (DESIGN §4).

Certificates follow the shape CCF issues and that `ccf.receipt.check_cert_chain` accepts
(FORMATS §5.1): the service cert is a self-signed CA; node certs are end-entity certs
endorsed by the service key, with SKI/AKI linking the two.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from charter.ledger.errors import DecodeError

logger = logging.getLogger(__name__)

DEFAULT_CURVE = ec.SECP384R1()
RSA_ENCRYPTION_KEY_BITS_MIN = 2048
# PEM certificates we accept from outside (governance args, receipts) are small; a bound
# keeps a hostile megabyte of base64 from reaching the ASN.1 parser.
MAX_CERT_PEM_BYTES = 64 * 1024
MAX_KEY_PEM_BYTES = 64 * 1024
# Backdating notBefore by a minute tolerates small clock differences between the issuer
# and whoever checks validity against "now".
_NOT_BEFORE_SLACK = datetime.timedelta(minutes=1)

CertLike = x509.Certificate | bytes | str


@dataclass(frozen=True, slots=True)
class Issuance:
    """How a certificate is issued when the caller decides rather than the system: its
    serial number, the time it is issued at (seconds since the epoch) and whether the ECDSA
    signature uses RFC 6979 nonces. The seeded simulator passes one so that two runs issue
    byte-identical certificates; `None` everywhere means a random serial, the wall clock
    and OpenSSL's random nonces."""

    serial: int
    now_s: float
    deterministic: bool = True

    def __post_init__(self) -> None:
        # RFC 5280: a positive serial of at most 20 octets.
        assert 0 < self.serial < 1 << 159, "a certificate serial is positive, under 2**159"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-384 key (the curve CCF uses for every identity)."""
    return ec.generate_private_key(DEFAULT_CURVE)


def new_rsa_encryption_key(bits: int = RSA_ENCRYPTION_KEY_BITS_MIN) -> rsa.RSAPrivateKey:
    """An RSA key pair for a member's recovery-share encryption (RSA-OAEP)."""
    if bits < RSA_ENCRYPTION_KEY_BITS_MIN:
        raise ValueError(f"RSA keys must have at least {RSA_ENCRYPTION_KEY_BITS_MIN} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """Unencrypted PKCS#8 PEM of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _as_bytes(data: bytes | str, limit: int, what: str) -> bytes:
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if len(raw) > limit:
        raise DecodeError(f"{what} of {len(raw)} bytes exceeds limit {limit}", field=what)
    return raw


def load_key(pem: bytes | str) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted ECDSA private key from PEM."""
    raw = _as_bytes(pem, MAX_KEY_PEM_BYTES, "key")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"invalid private key PEM: {exc}", field="key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DecodeError("private key is not ECDSA", field="key")
    return key


def load_public_key(pem: bytes | str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Load an ECDSA or RSA public key from SPKI PEM."""
    raw = _as_bytes(pem, MAX_KEY_PEM_BYTES, "public_key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"invalid public key PEM: {exc}", field="public_key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise DecodeError("public key is neither ECDSA nor RSA", field="public_key")
    return key


def load_cert(pem: bytes | str) -> x509.Certificate:
    """Load one PEM certificate; raises DecodeError on anything else."""
    raw = _as_bytes(pem, MAX_CERT_PEM_BYTES, "cert")
    try:
        return x509.load_pem_x509_certificate(raw)
    except (ValueError, TypeError, x509.InvalidVersion) as exc:  # InvalidVersion: not a ValueError
        raise DecodeError(f"invalid certificate PEM: {exc}", field="cert") from None


def cert_pem(cert: x509.Certificate) -> str:
    """PEM text of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# docs/internals.md name
pem = cert_pem


def as_cert(cert_or_pem: CertLike) -> x509.Certificate:
    """A certificate object from a certificate or its PEM."""
    if isinstance(cert_or_pem, x509.Certificate):
        return cert_or_pem
    return load_cert(cert_or_pem)


def cert_id(cert_or_pem: CertLike) -> str:
    """Member/user id: hex SHA-256 of the certificate DER (FORMATS §4.1)."""
    return as_cert(cert_or_pem).fingerprint(hashes.SHA256()).hex()


def spki_der(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `cert`'s TBS is signed by `issuer`'s EC key (what ccf.receipt.check_endorsement
    checks; names and dates are not)."""
    try:
        hash_alg = cert.signature_hash_algorithm
        issuer_key = issuer.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    if hash_alg is None or not isinstance(issuer_key, ec.EllipticCurvePublicKey):
        return False
    try:
        issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
    except (InvalidSignature, ValueError):
        return False
    return True


def node_id(public_key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """Node id: hex SHA-256 of the DER SubjectPublicKeyInfo (FORMATS §4.1)."""
    if isinstance(public_key, ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    # Match the signature hash to the curve size, as CCF does (P-384 -> ecdsa-with-SHA384).
    size = key.curve.key_size
    if size <= 256:
        return hashes.SHA256()
    if size <= 384:
        return hashes.SHA384()
    return hashes.SHA512()


def _validity(
    days: int,
    issuance: Issuance | None = None,
    valid_from: datetime.datetime | None = None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """(notBefore, notAfter): from `valid_from` when given (CCF's governance argument,
    taken as is), else from the issuance time backdated by a minute of slack."""
    if days <= 0:
        raise ValueError("certificate validity must be at least one day")
    if valid_from is not None:
        start = valid_from.astimezone(datetime.UTC).replace(microsecond=0)
        return start, start + datetime.timedelta(days=days)
    if issuance is None:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    else:
        now = datetime.datetime.fromtimestamp(int(issuance.now_s), datetime.UTC)
    return now - _NOT_BEFORE_SLACK, now + datetime.timedelta(days=days)


def _serial(issuance: Issuance | None) -> int:
    return x509.random_serial_number() if issuance is None else issuance.serial


def _sign(
    builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, issuance: Issuance | None
) -> x509.Certificate:
    deterministic = issuance is not None and issuance.deterministic
    return builder.sign(key, _hash_for(key), ecdsa_deterministic=True if deterministic else None)


def _san(san_ips: Iterable[str], san_dns: Iterable[str]) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ips]
    return x509.SubjectAlternativeName(names) if names else None


def self_signed_cert(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    ca: bool,
    days: int = 365,
    san_ips: Iterable[str] = (),
    san_dns: Iterable[str] = (),
    issuance: Issuance | None = None,
    valid_from: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed certificate.

    With `ca=True` it is a service identity: BasicConstraints CA:true (critical), KeyUsage
    keyCertSign+cRLSign, SKI and AKI. With `ca=False` it is a member/user identity usable as
    a TLS client certificate: CA:false, digitalSignature, EKU clientAuth.
    """
    not_before, not_after = _validity(days, issuance, valid_from)
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public_key)
        .serial_number(_serial(issuance))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if ca:
        usage = _key_usage(digital_signature=False, cert_sign=True)
    else:
        usage = _key_usage(digital_signature=True, cert_sign=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    builder = builder.add_extension(usage, critical=True)
    san = _san(san_ips, san_dns)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return _sign(builder, key, issuance)


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def service_cert(
    key: ec.EllipticCurvePrivateKey,
    common_name: str = "CCF Service",
    *,
    days: int = 365,
    issuance: Issuance | None = None,
    valid_from: datetime.datetime | None = None,
) -> x509.Certificate:
    """The service identity certificate (a self-signed CA)."""
    return self_signed_cert(
        key, common_name, ca=True, days=days, issuance=issuance, valid_from=valid_from
    )


def renew_service_cert(
    key: ec.EllipticCurvePrivateKey,
    previous: x509.Certificate,
    *,
    days: int,
    valid_from: datetime.datetime | None = None,
    issuance: Issuance | None = None,
) -> x509.Certificate:
    """The service certificate re-issued with the same key and subject, for a new validity
    period. Its SKI is the same (same key), so node certificates and receipts endorsed by
    the previous one verify against it, and the reverse."""
    if previous.public_key() != key.public_key():
        raise ValueError("the service key does not match the previous service certificate")
    common_name = previous.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(common_name[0].value) if common_name else "CCF Service"
    return service_cert(key, name, days=days, issuance=issuance, valid_from=valid_from)


def identity_cert(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    days: int = 365,
    issuance: Issuance | None = None,
) -> x509.Certificate:
    """A member or user identity certificate (self-signed, not a CA, TLS client usable)."""
    return self_signed_cert(key, common_name, ca=False, days=days, issuance=issuance)


# Same thing under the names callers look for.
member_cert = identity_cert
user_cert = identity_cert


def endorse_public_key(
    subject_public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    *,
    san_ips: Iterable[str] = (),
    san_dns: Iterable[str] = (),
    days: int = 365,
    issuance: Issuance | None = None,
    valid_from: datetime.datetime | None = None,
) -> x509.Certificate:
    """A node certificate for `subject_public_key`, issued by the service key.

    CA:false, KeyUsage digitalSignature, EKU serverAuth+clientAuth, SKI, AKI = the issuer's
    SKI, SAN IPs/DNS names: the shape `ccf.receipt.check_cert_chain` accepts.
    """
    if issuer_cert.public_key() != issuer_key.public_key():
        raise ValueError("issuer key does not match issuer certificate")
    not_before, not_after = _validity(days, issuance, valid_from)
    try:
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_cert.subject)
        .public_key(subject_public_key)
        .serial_number(_serial(issuance))
        .not_valid_before(max(not_before, issuer_cert.not_valid_before_utc))
        .not_valid_after(min(not_after, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False
        )
        .add_extension(aki, critical=False)
    )
    san = _san(san_ips, san_dns)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return _sign(builder, issuer_key, issuance)


def endorse(
    csr_or_public_key: x509.CertificateSigningRequest | ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    *,
    common_name: str = "CCF Node",
    san_ips: Iterable[str] = (),
    san_dns: Iterable[str] = (),
    days: int = 365,
    issuance: Issuance | None = None,
    valid_from: datetime.datetime | None = None,
) -> x509.Certificate:
    """docs/internals.md form of `endorse_public_key`, also taking a node's CSR.

    From a CSR only the public key is used (after checking the CSR's self-signature): the
    service decides names and SANs, never the node.
    """
    if isinstance(csr_or_public_key, x509.CertificateSigningRequest):
        if not csr_or_public_key.is_signature_valid:
            raise ValueError("CSR signature is invalid")
        public_key = csr_or_public_key.public_key()
    else:
        public_key = csr_or_public_key
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("node keys must be ECDSA")
    return endorse_public_key(
        public_key,
        common_name,
        issuer_key,
        issuer_cert,
        san_ips=san_ips,
        san_dns=san_dns,
        days=days,
        issuance=issuance,
        valid_from=valid_from,
    )


def endorse_previous_service_identity(
    previous_service_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    *,
    days: int = 365,
) -> x509.Certificate:
    """After a recovery: the previous service key, certified as a CA by the new service key.

    Receipts signed by nodes of the previous service carry this in `service_endorsements`
    so that they still verify against the new service cert (node → previous → current).
    """
    if issuer_cert.public_key() != issuer_key.public_key():
        raise ValueError("issuer key does not match issuer certificate")
    previous_key = previous_service_cert.public_key()
    if not isinstance(previous_key, ec.EllipticCurvePublicKey):
        raise ValueError("service keys must be ECDSA")
    not_before, not_after = _validity(days)
    issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        .subject_name(previous_service_cert.subject)
        .issuer_name(issuer_cert.subject)
        .public_key(previous_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(not_before, issuer_cert.not_valid_before_utc))
        .not_valid_after(min(not_after, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(previous_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
    )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def node_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "CCF Node") -> str:
    """PEM CSR a node publishes in `nodes.info.certificate_signing_request`."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .sign(key, _hash_for(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
