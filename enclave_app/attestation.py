"""Evidence a node presents to be admitted, and its verification, whatever the platform.

A node's evidence is its platform's report binding the SHA-256 of its public key, plus the
certificates that report chains to (SEV-SNP: the VCEK and AMD's chain; `virtual`: none). The
primary checks a joiner's evidence against the join policy governance set for that format:
`public:ccf.gov.nodes.virtual.measurements` for virtual reports, the `nodes.snp.*` tables for
SNP ones. Verification is pure: it uses only the evidence and the policy, never the platform
the verifying node itself runs on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from charter.enclave_app.platform import (
    VIRTUAL_FORMAT,
    Evidence,
    PlatformError,
    Report,
    VirtualPlatform,
)
from charter.enclave_app.snp_platform import SNP_FORMAT, verify_snp_evidence
from charter.governance import tables as gt
from charter.governance.tx import KvTx
from charter.ledger import snp


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    """What governance admits, per evidence format."""

    virtual_measurements: Collection[str]
    snp: snp.Policy


@dataclass(frozen=True, slots=True)
class Attested:
    """What verified evidence says about the node that presented it."""

    format: str
    measurement: str
    host_data: str = ""


def verify_evidence(evidence: Evidence, *, public_key_der: bytes, policy: JoinPolicy) -> Attested:
    """Check evidence binds this public key and names code the policy admits.

    Raises `PlatformError` (virtual) or `snp.SnpError` (SEV-SNP), each naming what failed.
    """
    if evidence.format == VIRTUAL_FORMAT:
        report = VirtualPlatform.verify_report(
            evidence.quote,
            public_key_der=public_key_der,
            accepted_measurements=set(policy.virtual_measurements),
        )
        return Attested(format=report.format, measurement=report.measurement)
    if evidence.format == SNP_FORMAT:
        verified = verify_snp_evidence(
            evidence, report_data=hashlib.sha256(public_key_der).digest(), policy=policy.snp
        )
        return Attested(
            format=SNP_FORMAT, measurement=verified.measurement, host_data=verified.host_data
        )
    raise PlatformError(f"unsupported evidence format {evidence.format!r}")


def admit_own_code(tx: KvTx, evidence: Evidence) -> None:
    """Genesis: the first node's own code (and, on SNP, its host data) may join, as CCF does."""
    if evidence.format == SNP_FORMAT:
        report = snp.parse_report(evidence.quote)
        gt.put_json(
            tx, gt.NODES_SNP_MEASUREMENTS, report.measurement.hex().encode(), gt.ALLOWED_TO_JOIN
        )
        gt.put_json(tx, gt.NODES_SNP_HOST_DATA, report.host_data.hex().encode(), "")
        return
    measurement = Report.from_bytes(evidence.quote).measurement
    gt.put_json(tx, gt.NODES_VIRTUAL_MEASUREMENTS, measurement.encode(), gt.ALLOWED_TO_JOIN)
