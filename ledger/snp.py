"""AMD SEV-SNP attestation reports (versions 2 and 3) and their offline verification.

A report is 1,184 bytes laid out as AMD's SEV-SNP ABI specification (document 56860, table
ATTESTATION_REPORT) says; the firmware signs its first 0x2A0 bytes with the chip's VCEK
(ECDSA P-384, SHA-384). The VCEK certificate is signed by AMD's signing key (ASK), itself
signed by AMD's root key (ARK) for the product line, both RSA-PSS with SHA-384. The ASK and
ARK of Milan, Genoa and Turin are pinned in this package (`amd_roots/`): whatever chain the
host hands over, only these keys are trusted.

`verify_report` runs every check and raises `SnpError` naming the one that failed; it is pure
(bytes and certificates in, a `VerifiedReport` out) so nodes, auditors and the command line
use the same code.
"""

from __future__ import annotations

import enum
import struct
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from charter.ledger.errors import VerificationError

REPORT_BYTES = 0x4A0
SIGNED_BYTES = 0x2A0
SIGNATURE_COMPONENT_BYTES = 72
ENDORSEMENT_MAX_BYTES = 16 * 1024
SUPPORTED_VERSIONS = (2, 3)
ECDSA_P384_SHA384 = 1

# Guest policy bits (ABI spec, table "GUEST_POLICY").
POLICY_RESERVED_MUST_BE_ONE = 1 << 17
POLICY_DEBUG = 1 << 19
# Bits 2-4 of the flags word at 0x48 name the key that signed the report: 0 is the VCEK.
SIGNING_KEY_SHIFT = 2
SIGNING_KEY_MASK = 0b111
SIGNING_KEY_VCEK = 0

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{AMD_OID}.2")
OID_HWID = x509.ObjectIdentifier(f"{AMD_OID}.4")
OID_TCB = {
    "bootloader": x509.ObjectIdentifier(f"{AMD_OID}.3.1"),
    "tee": x509.ObjectIdentifier(f"{AMD_OID}.3.2"),
    "snp": x509.ObjectIdentifier(f"{AMD_OID}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{AMD_OID}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{AMD_OID}.3.9"),
}
# AMD signs with RSA-PSS, SHA-384 and a salt as long as the digest.
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


class SnpError(VerificationError):
    """An SNP report, endorsement or policy check that failed; `check` names which one."""

    code = "InvalidSnpAttestation"

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        super().__init__(f"{check}: {message}")


class Product(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def default_cpuid_hex(self) -> str:
        """CPUID (leaf 1, EAX) of the product's first stepping, for reports that carry none."""
        return {"Milan": "00a00f11", "Genoa": "00a10f11", "Turin": "00b00f21"}[self.value]


def product_of_cpuid(cpuid_hex: str) -> Product:
    """The product line of a CPUID leaf-1 EAX value (family 19h: Milan or Genoa; 1Ah: Turin)."""
    try:
        eax = int(cpuid_hex, 16)
    except ValueError:
        raise SnpError("cpuid", f"{cpuid_hex!r} is not hexadecimal") from None
    base_family = (eax >> 8) & 0xF
    family = base_family + ((eax >> 20) & 0xFF if base_family == 0xF else 0)
    model = ((eax >> 16) & 0xF) << 4 | (eax >> 4) & 0xF
    if family == 0x19 and model < 0x10:
        return Product.MILAN
    if family == 0x19 and 0x10 <= model < 0x20:
        return Product.GENOA
    if family == 0x1A:
        return Product.TURIN
    raise SnpError(
        "cpuid", f"CPUID {cpuid_hex} (family {family:#x}, model {model:#x}) is no SNP product"
    )


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """The security patch levels of a platform's firmware components."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0

    @classmethod
    def from_u64(cls, value: int, product: Product) -> TcbVersion:
        raw = value.to_bytes(8, "little")
        if product is Product.TURIN:
            # Turin: fmc, bootloader, tee, snp, three reserved bytes, microcode.
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        # Milan and Genoa: bootloader, tee, four reserved bytes, snp, microcode.
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    @classmethod
    def from_hex(cls, text: str, product: Product) -> TcbVersion:
        """CCF's `tcb_version` hex: the 64-bit value written most significant byte first."""
        if len(text) != 16:
            raise SnpError("tcb_version", f"expected 16 hex digits, got {len(text)}")
        try:
            value = int(text, 16)
        except ValueError:
            raise SnpError("tcb_version", "not hexadecimal") from None
        return cls.from_u64(value, product)

    def at_least(self, minimum: TcbVersion) -> bool:
        return all(
            getattr(self, name) >= getattr(minimum, name)
            for name in ("bootloader", "tee", "snp", "microcode", "fmc")
        )


@dataclass(frozen=True, slots=True)
class Report:
    """The fields of an attestation report a verifier uses, and the bytes that were signed."""

    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    reported_tcb_raw: int
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    signed: bytes
    signature_r: int
    signature_s: int

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    def cpuid_hex(self, product: Product) -> str:
        """The CPUID leaf-1 EAX value of the chip (version 3 reports carry it), as 8 hex."""
        if self.cpuid is None:
            return product.default_cpuid_hex
        return cpuid_hex(*self.cpuid)


def cpuid_hex(family: int, model: int, stepping: int) -> str:
    """CPUID leaf-1 EAX (8 hex digits) of a CPU family, model and stepping (as /proc/cpuinfo
    and version 3 reports give them)."""
    if not (0 <= family <= 0xFF + 0xF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise SnpError("cpuid", f"family {family}, model {model}, stepping {stepping} out of range")
    base_family = min(family, 0xF)
    eax = (
        stepping
        | (model & 0xF) << 4
        | base_family << 8
        | (model >> 4) << 16
        | (family - base_family) << 20
    )
    return f"{eax:08x}"


def parse_report(raw: bytes) -> Report:
    """Decode a report's fields; checks its size, version and signature algorithm."""
    if len(raw) != REPORT_BYTES:
        raise SnpError("report_format", f"a report is {REPORT_BYTES} bytes, got {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise SnpError("report_format", f"report version {version} is not supported")
    vmpl, signature_algo = struct.unpack_from("<II", raw, 0x30)
    if signature_algo != ECDSA_P384_SHA384:
        raise SnpError("report_format", f"signature algorithm {signature_algo} is not supported")
    (flags,) = struct.unpack_from("<I", raw, 0x48)
    (reported_tcb,) = struct.unpack_from("<Q", raw, 0x180)
    cpuid = (raw[0x188], raw[0x189], raw[0x18A]) if version >= 3 else None
    signature = raw[SIGNED_BYTES : SIGNED_BYTES + 2 * SIGNATURE_COMPONENT_BYTES]
    return Report(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        vmpl=vmpl,
        signature_algo=signature_algo,
        signing_key=(flags >> SIGNING_KEY_SHIFT) & SIGNING_KEY_MASK,
        report_data=bytes(raw[0x50:0x90]),
        measurement=bytes(raw[0x90:0xC0]),
        host_data=bytes(raw[0xC0:0xE0]),
        reported_tcb_raw=reported_tcb,
        cpuid=cpuid,
        chip_id=bytes(raw[0x1A0:0x1E0]),
        signed=bytes(raw[:SIGNED_BYTES]),
        signature_r=int.from_bytes(signature[:SIGNATURE_COMPONENT_BYTES], "little"),
        signature_s=int.from_bytes(signature[SIGNATURE_COMPONENT_BYTES:], "little"),
    )


@dataclass(frozen=True, slots=True)
class Endorsements:
    """The certificates a host supplies with a report: the VCEK, and optionally ASK and ARK."""

    vcek: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_bytes(cls, vcek: bytes, chain_pem: bytes = b"") -> Endorsements:
        """The VCEK in DER or PEM, and the ASK/ARK chain in PEM (as AMD's service serves it)."""
        if len(vcek) > ENDORSEMENT_MAX_BYTES or len(chain_pem) > ENDORSEMENT_MAX_BYTES:
            raise SnpError("endorsements", f"over {ENDORSEMENT_MAX_BYTES} bytes")
        with warnings.catch_warnings():
            # Some VCEKs AMD issued have a serial number RFC 5280 disallows (not positive).
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificate, chain = _load_endorsements(vcek, chain_pem)
        return cls(vcek=certificate, chain=chain)


def _load_endorsements(
    vcek: bytes, chain_pem: bytes
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    try:
        certificate = (
            x509.load_pem_x509_certificate(vcek)
            if vcek.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(vcek)
        )
        chain = tuple(x509.load_pem_x509_certificates(chain_pem)) if chain_pem else ()
        for parsed in (certificate, *chain):
            # cryptography parses names and extensions lazily: parse them here, once, so a
            # malformed field is refused as such rather than surfacing mid-verification.
            _ = (parsed.issuer, parsed.subject, parsed.extensions, parsed.public_key())
    except (
        ValueError,
        KeyError,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        UnsupportedAlgorithm,
    ):
        raise SnpError("endorsements", "not a certificate") from None
    return certificate, chain


@dataclass(frozen=True, slots=True)
class Policy:
    """What a verifier accepts: governed measurements, host data and minimum TCB per CPU.

    `measurements` and `host_data` are hex strings; `minimum_tcb` maps a CPUID hex (CCF's
    key for `set_snp_minimum_tcb_version_hex`) to a `tcb_version` hex. `None` for host data
    accepts any (a service that has not governed it yet).
    """

    measurements: Collection[str]
    host_data: Collection[str] | None = None
    minimum_tcb: Mapping[str, str] | None = None
    require_vmpl0: bool = True


@dataclass(frozen=True, slots=True)
class VerifiedReport:
    product: Product
    measurement: str
    host_data: str
    reported_tcb: TcbVersion
    cpuid_hex: str
    chip_id: bytes
    report: Report


@dataclass(frozen=True, slots=True)
class Roots:
    """The two AMD certificates a VCEK chains to."""

    ask: x509.Certificate
    ark: x509.Certificate


@cache
def pinned_roots(product: Product) -> Roots:
    """AMD's ASK and ARK for a product line, from the package; checked ARK → ASK once."""
    folder = resources.files("charter.ledger").joinpath("amd_roots")
    name = product.value.lower()
    ark = x509.load_pem_x509_certificate(folder.joinpath(f"{name}-ark.pem").read_bytes())
    ask = x509.load_pem_x509_certificate(folder.joinpath(f"{name}-ask.pem").read_bytes())
    _check_rsa_pss(ark, ark, "ark")
    _check_rsa_pss(ask, ark, "ask")
    return Roots(ask=ask, ark=ark)


def _unsigned_fields_are_canonical(certificate: x509.Certificate) -> bool:
    """The parts of a certificate outside its signature hold nothing that could vary.

    RFC 5280: the outer signatureAlgorithm must equal the signed copy inside the TBS (it is
    compared byte for byte rather than trusted: a flipped PSS parameter would otherwise
    pass), and the signature BIT STRING has no unused bits.
    """
    der = certificate.public_bytes(serialization.Encoding.DER)
    tbs = certificate.tbs_certificate_bytes
    start = der.find(tbs)
    if start < 0:
        return False
    outer = der[start + len(tbs) :]
    if len(outer) < 2 or outer[0] != 0x30 or outer[1] & 0x80:
        return False  # an AlgorithmIdentifier is a short SEQUENCE
    algorithm = outer[: 2 + outer[1]]
    signature = outer[len(algorithm) :]
    if len(signature) < 3 or signature[0] != 0x03:
        return False
    header = 2 + (signature[1] & 0x7F if signature[1] & 0x80 else 0)
    return algorithm in tbs and signature[header : header + 1] == b"\0"


def _check_rsa_pss(certificate: x509.Certificate, issuer: x509.Certificate, check: str) -> None:
    if not _unsigned_fields_are_canonical(certificate):
        raise SnpError(check, "outer signature algorithm differs from the signed one")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnpError(check, "issuer key is not RSA")
    if certificate.issuer != issuer.subject:
        raise SnpError(check, f"issued by {certificate.issuer.rfc4514_string()}, not its issuer")
    try:
        key.verify(
            certificate.signature, certificate.tbs_certificate_bytes, AMD_PSS, hashes.SHA384()
        )
    except InvalidSignature:
        raise SnpError(check, "certificate signature does not verify") from None


def _product_of(vcek: x509.Certificate) -> Product:
    names = vcek.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    issuer = str(names[0].value) if names else ""
    for product in Product:
        if issuer == f"SEV-{product.value}":
            return product
    raise SnpError("vcek_issuer", f"issuer {issuer!r} is not an AMD product line we pin")


def _extension_bytes(vcek: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        extension = vcek.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # extensions are parsed lazily: a malformed one surfaces here
        raise SnpError("vcek", "malformed certificate extensions") from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise SnpError("vcek", f"extension {oid.dotted_string} is not AMD's raw encoding")
    return value.value


def _der_small_int(encoded: bytes, name: str) -> int:
    # An SPL extension holds a DER INTEGER (tag 2) of one or two bytes.
    if len(encoded) < 3 or encoded[0] != 0x02 or encoded[1] != len(encoded) - 2:
        raise SnpError("vcek_tcb", f"{name} extension is not a DER integer")
    return int.from_bytes(encoded[2:], "big", signed=True)


def vcek_tcb(vcek: x509.Certificate, product: Product) -> TcbVersion:
    """The TCB the VCEK was issued for, from its AMD extensions."""
    levels: dict[str, int] = {}
    for name, oid in OID_TCB.items():
        encoded = _extension_bytes(vcek, oid)
        if encoded is None:
            if name == "fmc" and product is not Product.TURIN:
                continue
            raise SnpError("vcek_tcb", f"VCEK has no {name} extension")
        levels[name] = _der_small_int(encoded, name)
    return TcbVersion(**levels)


def _vcek_hwid(vcek: x509.Certificate) -> bytes:
    encoded = _extension_bytes(vcek, OID_HWID)
    if encoded is None:
        raise SnpError("chip_id", "VCEK has no hardware id extension")
    # AMD writes the chip id raw (no DER wrapper): 64 bytes on Milan and Genoa, 8 on Turin.
    if len(encoded) not in (8, 64):
        raise SnpError("chip_id", f"hardware id extension is {len(encoded)} bytes")
    return encoded


def verify_endorsements(
    endorsements: Endorsements,
    *,
    now: datetime | None = None,
    trusted_roots: Callable[[Product], Roots] = pinned_roots,
) -> tuple[Product, x509.Certificate]:
    """The VCEK chains to the pinned ASK and ARK of its product line and is within validity.

    `trusted_roots` is AMD's pinned certificates; tests of the policy checks pass their own.
    """
    vcek = endorsements.vcek
    product = _product_of(vcek)
    roots = trusted_roots(product)
    for supplied in endorsements.chain:
        if supplied.subject == roots.ask.subject and supplied != roots.ask:
            raise SnpError("ask", "supplied ASK is not AMD's pinned ASK")
        if supplied.subject == roots.ark.subject and supplied != roots.ark:
            raise SnpError("ark", "supplied ARK is not AMD's pinned ARK")
    _check_rsa_pss(vcek, roots.ask, "vcek")
    moment = now or datetime.now(UTC)
    if not vcek.not_valid_before_utc <= moment <= vcek.not_valid_after_utc:
        raise SnpError("vcek", f"VCEK is not valid at {moment.isoformat()}")
    return product, vcek


def verify_signature(
    raw: bytes,
    endorsements: Endorsements,
    *,
    now: datetime | None = None,
    trusted_roots: Callable[[Product], Roots] = pinned_roots,
) -> tuple[Report, Product, TcbVersion]:
    """The report is signed by the VCEK of its chip at its reported TCB, and that VCEK chains
    to AMD's pinned roots: the endorsements are the right ones for this report.

    The first half of `verify_report` (no policy): what a node checks of endorsements it was
    handed for its own report before presenting them.
    """
    report = parse_report(raw)
    if report.signing_key != SIGNING_KEY_VCEK:
        raise SnpError("signing_key", f"signed by key type {report.signing_key}, not a VCEK")
    product, vcek = verify_endorsements(endorsements, now=now, trusted_roots=trusted_roots)
    # The VCEK must be the one for this chip at this TCB: checked before the signature so a
    # VCEK of another chip or TCB is named as such rather than as a bad signature.
    reported = TcbVersion.from_u64(report.reported_tcb_raw, product)
    certified = vcek_tcb(vcek, product)
    if reported != certified:
        raise SnpError("reported_tcb", f"report says {reported}, its VCEK is for {certified}")
    hwid = _vcek_hwid(vcek)
    if report.chip_id[: len(hwid)] != hwid:
        raise SnpError("chip_id", "report's chip id is not the VCEK's hardware id")
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SnpError("vcek", "VCEK key is not ECDSA P-384")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SnpError("report_signature", "report signature does not verify") from None
    return report, product, reported


def verify_report(
    raw: bytes,
    endorsements: Endorsements,
    *,
    report_data: bytes,
    policy: Policy,
    now: datetime | None = None,
    trusted_roots: Callable[[Product], Roots] = pinned_roots,
) -> VerifiedReport:
    """Every check an SNP verifier makes, in order; the first failure raises `SnpError`.

    `report_data` is what the report must bind (a node: the SHA-256 of its public key),
    padded with zeros to the report's 64 bytes.
    """
    if len(report_data) > 64:
        raise SnpError("report_data", "expected report data is over 64 bytes")
    report, product, reported = verify_signature(
        raw, endorsements, now=now, trusted_roots=trusted_roots
    )

    if report.debug_allowed:
        raise SnpError("policy", "guest policy allows debugging")
    if not report.policy & POLICY_RESERVED_MUST_BE_ONE:
        raise SnpError("policy", "reserved policy bit 17 is not set")
    if policy.require_vmpl0 and report.vmpl != 0:
        raise SnpError("vmpl", f"report is from VMPL {report.vmpl}, not 0")

    if report.report_data != report_data.ljust(64, b"\0"):
        raise SnpError("report_data", "report does not bind the expected data")
    measurement = report.measurement.hex()
    if measurement not in policy.measurements:
        raise SnpError("measurement", f"measurement {measurement} is not accepted")
    host_data = report.host_data.hex()
    if policy.host_data is not None and host_data not in policy.host_data:
        raise SnpError("host_data", f"host data {host_data} is not accepted")
    cpuid = report.cpuid_hex(product)
    minimum_hex = (policy.minimum_tcb or {}).get(cpuid)
    if minimum_hex is not None:
        minimum = TcbVersion.from_hex(minimum_hex, product)
        if not reported.at_least(minimum):
            raise SnpError("minimum_tcb", f"TCB {reported} is below the minimum {minimum}")
    return VerifiedReport(
        product=product,
        measurement=measurement,
        host_data=host_data,
        reported_tcb=reported,
        cpuid_hex=cpuid,
        chip_id=report.chip_id,
        report=report,
    )
