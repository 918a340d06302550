"""The audit's admission check (`charter ledger audit --check-attestation`).

Governance admits a node by recording it in `public:ccf.gov.nodes.info` with the evidence it
presented (CCF's `quote_info`), after checking that evidence against the join policy of the
moment: the measurement tables of its platform, and on SEV-SNP the host data and minimum TCB
tables. An auditor who does not trust the nodes replays that decision: as the audit goes, this
module keeps the join policy the ledger builds, checks each node's evidence against it at the
transaction that first records the node, and requires every node that signs the ledger to have
been admitted so. The evidence must bind the node's own key: a node id is the SHA-256 of its
public key, which is what a report binds.

It needs the ledger from seqno 1 (the policy and every admission in order), so it does not run
on an audit that starts from a checkpoint or a snapshot.
"""

from __future__ import annotations

import json
from typing import Any

from charter.ledger import quote, snp
from charter.ledger import service_state as ss
from charter.ledger.errors import AuditError, LedgerError

NODES_INFO = ss.NODES_INFO
VIRTUAL_MEASUREMENTS = ss.NODES_VIRTUAL_MEASUREMENTS
SNP_MEASUREMENTS = ss.NODES_SNP_MEASUREMENTS
SNP_HOST_DATA = ss.NODES_SNP_HOST_DATA
SNP_TCB_VERSIONS = ss.NODES_SNP_TCB_VERSIONS
POLICY_TABLES = (VIRTUAL_MEASUREMENTS, SNP_MEASUREMENTS, SNP_HOST_DATA, SNP_TCB_VERSIONS)
ALLOWED_TO_JOIN = f'"{ss.ALLOWED_TO_JOIN}"'.encode()
VALUE_BYTES_MAX = 64 * 1024
NODE_INFO_BYTES_MAX = 1024 * 1024

WriteSet = dict[str, dict[bytes, bytes | None]]


class AdmissionCheck:
    """The join policy as of the transaction being audited, and the nodes it admitted."""

    def __init__(self) -> None:
        self.policy: dict[str, dict[bytes, bytes]] = {name: {} for name in POLICY_TABLES}
        self.admitted: set[str] = set()
        self.seen: set[str] = set()

    def absorb(self, tables: WriteSet, seqno: int) -> None:
        """One transaction's governance writes: policy changes first (a genesis transaction
        admits its own node's code in the same write set), then new nodes' evidence."""
        for name in POLICY_TABLES:
            for key, value in tables.get(name, {}).items():
                if value is None:
                    self.policy[name].pop(key, None)
                elif len(value) > VALUE_BYTES_MAX:
                    raise AuditError(
                        f"{name}[{key[:64]!r}] is over {VALUE_BYTES_MAX} bytes", seqno=seqno
                    )
                else:
                    self.policy[name][key] = value
        for key, value in tables.get(NODES_INFO, {}).items():
            node_id = key.decode(errors="replace")
            if value is None or node_id in self.seen:
                continue
            self.seen.add(node_id)
            self._admit(node_id, value, seqno)

    def require_admitted(self, node_id: str, seqno: int) -> None:
        if node_id not in self.admitted:
            raise AuditError(
                f"signing node {node_id} was never admitted with evidence the join policy accepted",
                seqno=seqno,
            )

    def _admit(self, node_id: str, value: bytes, seqno: int) -> None:
        what = f"node {node_id} joined with evidence that fails"
        if len(value) > NODE_INFO_BYTES_MAX:
            raise AuditError(
                f"nodes.info[{node_id}] is over {NODE_INFO_BYTES_MAX} bytes", seqno=seqno
            )
        try:
            info = json.loads(value)
            quote_info = info["quote_info"]
            evidence = quote.Evidence.from_quote_info(
                str(quote_info["format"]), str(quote_info["quote"]), str(quote_info["endorsements"])
            )
            key_digest = bytes.fromhex(node_id)
        except (ValueError, KeyError, TypeError, LedgerError):
            raise AuditError(
                f"{what}: nodes.info holds no readable quote_info", seqno=seqno
            ) from None
        if len(key_digest) != 32:
            raise AuditError(f"{what}: a node id is a 32-byte key digest", seqno=seqno)
        try:
            quote.verify_evidence(
                evidence,
                report_data=key_digest,
                virtual_measurements=self._allowed(VIRTUAL_MEASUREMENTS),
                snp_policy=self._snp_policy(),
            )
        except LedgerError as exc:  # quote.QuoteError and snp.SnpError name the failed check
            raise AuditError(f"{what} the join policy of the time: {exc}", seqno=seqno) from None
        self.admitted.add(node_id)

    def _allowed(self, table: str) -> set[str]:
        return {
            key.decode(errors="replace")
            for key, value in self.policy[table].items()
            if value == ALLOWED_TO_JOIN
        }

    def _snp_policy(self) -> snp.Policy:
        minimum: dict[str, str] = {}
        for key, value in self.policy[SNP_TCB_VERSIONS].items():
            with_hex = _json_object(value)
            if isinstance(with_hex.get("hexstring"), str):
                minimum[key.decode(errors="replace")] = with_hex["hexstring"]
        return snp.Policy(
            measurements=frozenset(self._allowed(SNP_MEASUREMENTS)),
            host_data=frozenset(k.decode(errors="replace") for k in self.policy[SNP_HOST_DATA]),
            minimum_tcb=minimum,
        )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
