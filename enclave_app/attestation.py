"""Evidence a node presents to be admitted, and its verification, whatever the platform.

A node's evidence is its platform's report binding the SHA-256 of its public key, plus the
certificates that report chains to (SEV-SNP: the VCEK and AMD's chain; `virtual`: none). The
primary checks a joiner's evidence against the join policy governance set for that format:
`public:ccf.gov.nodes.virtual.measurements` for virtual reports, the `nodes.snp.*` tables for
SNP ones. Verification is pure: it uses only the evidence and the policy, never the platform
the verifying node itself runs on.

A node restarting from sealed state checks its own code against the same tables
(`check_own_code`): a node whose measurement governance has removed stops instead of rejoining.
A node already running when its measurement is removed keeps running, as in CCF: retiring it
(`remove_node`) is the operators' and members' job.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from charter.governance import queries as gov_queries
from charter.governance import tables as gt
from charter.governance.tx import KvTx
from charter.ledger import quote, snp
from charter.ledger.quote import SNP_FORMAT, VIRTUAL_FORMAT, Evidence, VirtualReport


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    """What governance admits, per evidence format."""

    virtual_measurements: Collection[str]
    snp: snp.Policy


class UnapprovedCode(Exception):
    """This node's own code is not (any longer) admitted by governance: it must not rejoin."""

    code = "UnapprovedCode"


def join_policy(tx: KvTx) -> JoinPolicy:
    """The join policy governance has set, as of this transaction."""
    return JoinPolicy(
        virtual_measurements={k.decode() for k, _ in tx.items(gt.NODES_VIRTUAL_MEASUREMENTS)},
        snp=gov_queries.snp_join_policy(tx),
    )


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


def check_own_code(tx: KvTx, evidence: Evidence) -> None:
    """Restart: the code this node runs must still be code governance admits.

    The evidence is this node's own, straight from its platform, so only the governed tables
    are consulted (its signature chain is the firmware's word to itself): on `virtual` the
    measurement, on SEV-SNP the measurement and the host data. Raises `UnapprovedCode` with a
    one-line reason naming the value, the table and the way out.
    """
    if evidence.format == SNP_FORMAT:
        report = snp.parse_report(evidence.quote)
        policy = gov_queries.snp_join_policy(tx)
        measurement = report.measurement.hex()
        if measurement not in policy.measurements:
            raise UnapprovedCode(
                f"this node's SEV-SNP measurement {measurement} is not in "
                f"{gt.NODES_SNP_MEASUREMENTS}: governance no longer admits this code, so it "
                "will not rejoin (run approved code, or have members add_snp_measurement it)"
            )
        host_data = report.host_data.hex()
        if policy.host_data is not None and host_data not in policy.host_data:
            raise UnapprovedCode(
                f"this node's SEV-SNP host data {host_data} is not in "
                f"{gt.NODES_SNP_HOST_DATA}: governance no longer admits it, so it will not "
                "rejoin (use approved host data, or have members add_snp_host_data it)"
            )
        return
    if evidence.format != VIRTUAL_FORMAT:
        raise UnapprovedCode(f"this node's evidence format {evidence.format!r} is unsupported")
    measurement = VirtualReport.from_bytes(evidence.quote).measurement
    if tx.get(gt.NODES_VIRTUAL_MEASUREMENTS, measurement.encode()) is None:
        raise UnapprovedCode(
            f"this node's code measurement {measurement} is not in "
            f"{gt.NODES_VIRTUAL_MEASUREMENTS}: governance no longer admits this code, so it "
            "will not rejoin (run approved code, or have members add_virtual_measurement it)"
        )
