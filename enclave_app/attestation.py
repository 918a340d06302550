"""Evidence a node presents to be admitted, and its verification, whatever the platform.

A node's evidence is its platform's report binding the SHA-256 of its public key, plus the
certificates that report chains to (SEV-SNP: the VCEK and AMD's chain; `virtual`: none). The
primary checks a joiner's evidence against the join policy governance set for that format:
`public:ccf.gov.nodes.virtual.measurements` for virtual reports, the `nodes.snp.*` tables for
SNP ones. Verification is pure: it uses only the evidence and the policy, never the platform
the verifying node itself runs on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from charter.governance import tables as gt
from charter.governance.tx import KvTx
from charter.ledger import quote, snp
from charter.ledger.quote import SNP_FORMAT, Evidence, VirtualReport


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    """What governance admits, per evidence format."""

    virtual_measurements: Collection[str]
    snp: snp.Policy


Attested = quote.QuoteCheck


def verify_evidence(evidence: Evidence, *, public_key_der: bytes, policy: JoinPolicy) -> Attested:
    """Check evidence binds this public key and names code the policy admits.

    Raises `quote.QuoteError` (virtual) or `snp.SnpError` (SEV-SNP), each naming what failed.
    """
    return quote.verify_evidence(
        evidence,
        public_key_der=public_key_der,
        virtual_measurements=policy.virtual_measurements,
        snp_policy=policy.snp,
    )


def admit_own_code(tx: KvTx, evidence: Evidence) -> None:
    """Genesis: the first node's own code (and, on SNP, its host data) may join, as CCF does."""
    if evidence.format == SNP_FORMAT:
        report = snp.parse_report(evidence.quote)
        gt.put_json(
            tx, gt.NODES_SNP_MEASUREMENTS, report.measurement.hex().encode(), gt.ALLOWED_TO_JOIN
        )
        gt.put_json(tx, gt.NODES_SNP_HOST_DATA, report.host_data.hex().encode(), "")
        return
    measurement = VirtualReport.from_bytes(evidence.quote).measurement
    gt.put_json(tx, gt.NODES_VIRTUAL_MEASUREMENTS, measurement.encode(), gt.ALLOWED_TO_JOIN)
