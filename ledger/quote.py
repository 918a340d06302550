"""A node's attestation evidence (CCF's `quote_info`) and its offline verification.

Evidence is a format name, a quote and the quote's endorsements. Two formats exist:
- `Insecure_Virtual` (CCF's name): a JSON report any operator can write, naming the code
  measurement and the data it binds. It proves nothing about hardware; verifying it checks
  only that it is well formed, binds the expected key and names accepted code.
- `AMD_SEV_SNP_v1`: an SEV-SNP attestation report, endorsed by the chip's VCEK and AMD's
  chain (PEM, VCEK first), verified in full by `charter.ledger.snp`.

Pure (bytes in, a `QuoteCheck` out), so the enclave admitting a joiner, the `charter quote
verify` command and auditors run the same checks. A node's evidence binds the SHA-256 of its
DER public key, which is also its node id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass

from charter.ledger import snp
from charter.ledger.errors import VerificationError

VIRTUAL_FORMAT = "Insecure_Virtual"
SNP_FORMAT = "AMD_SEV_SNP_v1"
VIRTUAL_REPORT_MAX_BYTES = 16 * 1024
QUOTE_MAX_BYTES = 16 * 1024
ENDORSEMENTS_MAX_BYTES = 32 * 1024
_FIELD_MAX_CHARS = 256
_PEM_END = b"-----END CERTIFICATE-----"


class QuoteError(VerificationError):
    """Evidence that is malformed or fails a check; `check` names which one."""

    code = "InvalidAttestation"

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        super().__init__(f"{check}: {message}")


@dataclass(frozen=True, slots=True)
class VirtualReport:
    """A `virtual` platform report: which code runs, and the data it vouches for (a key hash)."""

    format: str
    measurement: str
    report_data: str

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": self.format,
                "measurement": self.measurement,
                "report_data": self.report_data,
                "warning": "virtual platform: this report is not backed by hardware",
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> VirtualReport:
        if len(raw) > VIRTUAL_REPORT_MAX_BYTES:
            raise QuoteError(
                "report_format", f"report is {len(raw)} bytes, over {VIRTUAL_REPORT_MAX_BYTES}"
            )
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QuoteError("report_format", f"report is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise QuoteError("report_format", "report is not a JSON object")
        fields = {}
        for name in ("format", "measurement", "report_data"):
            value = doc.get(name)
            if not isinstance(value, str) or len(value) > _FIELD_MAX_CHARS:
                raise QuoteError(
                    "report_format", f"report field {name!r} missing or not a short string"
                )
            fields[name] = value
        return cls(**fields)


def verify_virtual_report(
    raw: bytes, *, public_key_der: bytes, accepted_measurements: Collection[str]
) -> VirtualReport:
    """A virtual report: right format, bound to this public key, naming accepted code."""
    return _check_virtual(raw, hashlib.sha256(public_key_der).digest(), accepted_measurements)


def _check_virtual(raw: bytes, key_digest: bytes, accepted: Collection[str]) -> VirtualReport:
    report = VirtualReport.from_bytes(raw)
    if report.format != VIRTUAL_FORMAT:
        raise QuoteError("report_format", f"unsupported report format {report.format!r}")
    if report.report_data != key_digest.hex():
        raise QuoteError("report_data", "report is not bound to the node's public key")
    if report.measurement not in accepted:
        raise QuoteError("measurement", f"measurement {report.measurement[:16]}… is not accepted")
    return report


def snp_endorsements(pem: bytes) -> snp.Endorsements:
    """Split evidence endorsements (PEM: the VCEK, then AMD's ASK and ARK) and parse them."""
    if len(pem) > ENDORSEMENTS_MAX_BYTES:
        raise snp.SnpError("endorsements", f"over {ENDORSEMENTS_MAX_BYTES} bytes")
    cut = pem.find(_PEM_END)
    if cut < 0:
        raise snp.SnpError("endorsements", "no VCEK certificate in the endorsements")
    vcek, chain = pem[: cut + len(_PEM_END)], pem[cut + len(_PEM_END) :].strip()
    return snp.Endorsements.from_bytes(vcek, chain)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A platform's report and its endorsements, as CCF's `quote_info` carries them."""

    format: str
    quote: bytes
    endorsements: bytes = b""

    def quote_info(self) -> dict[str, str]:
        """CCF's `quote_info` record (nodes.info): format, and quote/endorsements in base64."""
        return {
            "format": self.format,
            "quote": base64.b64encode(self.quote).decode(),
            "endorsements": base64.b64encode(self.endorsements).decode(),
        }

    @classmethod
    def from_quote_info(cls, format: str, quote_b64: str, endorsements_b64: str) -> Evidence:
        try:
            quote = base64.b64decode(quote_b64, validate=True)
            endorsements = base64.b64decode(endorsements_b64, validate=True)
        except (binascii.Error, ValueError):
            raise QuoteError("encoding", "quote or endorsements are not base64") from None
        if len(quote) > QUOTE_MAX_BYTES or len(endorsements) > ENDORSEMENTS_MAX_BYTES:
            raise QuoteError("size", "quote or endorsements are too large")
        return cls(format=format, quote=quote, endorsements=endorsements)


@dataclass(frozen=True, slots=True)
class QuoteCheck:
    """What verified evidence says about the node that presented it."""

    format: str
    measurement: str
    host_data: str = ""
    snp: snp.VerifiedReport | None = None


def verify_evidence(
    evidence: Evidence,
    *,
    public_key_der: bytes | None = None,
    report_data: bytes | None = None,
    virtual_measurements: Collection[str],
    snp_policy: snp.Policy,
) -> QuoteCheck:
    """Check evidence binds a node's key and names code the policy admits.

    The binding is given either as the node's DER public key, or as the 32-byte SHA-256 of it
    (`report_data`; a node id is that digest in hex). Raises `QuoteError` or `snp.SnpError`,
    each naming the check that failed.
    """
    if (public_key_der is None) == (report_data is None):
        raise ValueError("give the node's public key or its SHA-256, not both")
    digest = hashlib.sha256(public_key_der).digest() if public_key_der is not None else report_data
    assert digest is not None
    if evidence.format == VIRTUAL_FORMAT:
        report = _check_virtual(evidence.quote, digest, virtual_measurements)
        return QuoteCheck(format=VIRTUAL_FORMAT, measurement=report.measurement)
    if evidence.format == SNP_FORMAT:
        verified = snp.verify_report(
            evidence.quote,
            snp_endorsements(evidence.endorsements),
            report_data=digest,
            policy=snp_policy,
        )
        return QuoteCheck(
            format=SNP_FORMAT,
            measurement=verified.measurement,
            host_data=verified.host_data,
            snp=verified,
        )
    raise QuoteError("report_format", f"unsupported evidence format {evidence.format[:64]!r}")
