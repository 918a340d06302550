"""The vocabulary of the service's own state: its table names, status values and node record.

One module for every name under `public:ccf.gov.` and `public:ccf.internal.` that Charter reads
or writes (CCF's names, FORMATS §1.7 and §4, plus Charter's own under `...charter.`), the
8-byte key of single-value tables, and the status values those tables hold, as `StrEnum`s
whose values are CCF's strings (so JSON is unchanged: `NodeStatus.TRUSTED == "Trusted"`).
It lives in `ledger` because auditors read these tables too; governance, the enclave, the
host and the client all import it from here.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Final

# The key of single-value tables (service info, constitution, signatures, ...).
SINGLETON_KEY: Final = bytes(8)

# Every map only the service itself writes (governance, signatures, configuration).
SERVICE_TABLE_PREFIX: Final = "public:ccf."
GOV_TABLE_PREFIX: Final = "public:ccf.gov."
INTERNAL_TABLE_PREFIX: Final = "public:ccf.internal."

# -- governance tables (CCF's) ---------------------------------------------------------------
MEMBERS_CERTS: Final = "public:ccf.gov.members.certs"
MEMBERS_INFO: Final = "public:ccf.gov.members.info"
MEMBERS_ENCRYPTION_PUBLIC_KEYS: Final = "public:ccf.gov.members.encryption_public_keys"
MEMBERS_ACKS: Final = "public:ccf.gov.members.acks"
USERS_CERTS: Final = "public:ccf.gov.users.certs"
USERS_INFO: Final = "public:ccf.gov.users.info"
NODES_INFO: Final = "public:ccf.gov.nodes.info"
NODES_ENDORSED_CERTIFICATES: Final = "public:ccf.gov.nodes.endorsed_certificates"
# The code allowed to join, per platform (key: the measurement as hex text, value: JSON
# "AllowedToJoin"). SNP also governs host data (key: hex, value: JSON string of the security
# policy it digests, or "") and a minimum TCB per CPU model (key: CPUID hex, value: JSON object
# with the levels and the `hexstring` they were given as).
NODES_VIRTUAL_MEASUREMENTS: Final = "public:ccf.gov.nodes.virtual.measurements"
NODES_SNP_MEASUREMENTS: Final = "public:ccf.gov.nodes.snp.measurements"
NODES_SNP_HOST_DATA: Final = "public:ccf.gov.nodes.snp.host_data"
NODES_SNP_TCB_VERSIONS: Final = "public:ccf.gov.nodes.snp.tcb_versions"
SERVICE_INFO: Final = "public:ccf.gov.service.info"
SERVICE_CONFIG: Final = "public:ccf.gov.service.config"
# After a recovery: the PEM certificate of the service it recovered (CCF's table).
PREVIOUS_SERVICE_IDENTITY: Final = "public:ccf.gov.service.previous_service_identity"
CONSTITUTION: Final = "public:ccf.gov.constitution"
PROPOSALS: Final = "public:ccf.gov.proposals"
PROPOSALS_INFO: Final = "public:ccf.gov.proposals_info"
COSE_RECENT_PROPOSALS: Final = "public:ccf.gov.cose_recent_proposals"
HISTORY: Final = "public:ccf.gov.history"
COSE_HISTORY: Final = "public:ccf.gov.cose_history"
# The SCITT sample's configuration (the name scitt-ccf-ledger gives it).
# JWT issuers, their keys (CCF's tables) and the CA bundles their TLS is checked against.
JWT_ISSUERS: Final = "public:ccf.gov.jwt.issuers"
JWT_PUBLIC_SIGNING_KEYS: Final = "public:ccf.gov.jwt.public_signing_keys_metadata"
CA_CERT_BUNDLES: Final = "public:ccf.gov.tls.ca_cert_bundles"
SCITT_CONFIGURATION: Final = "public:ccf.gov.scitt.configuration"

# -- governance tables (Charter's own; CCF has no equivalent) ------------------------------
# Replay protection for signed requests other than proposals.
RECENT_REQUESTS: Final = "public:ccf.gov.charter.recent_requests"
# Ids of removed members, so a removed member's request gets a specific error.
RETIRED_MEMBERS: Final = "public:ccf.gov.charter.retired_members"
# What trigger_snapshot / trigger_ledger_chunk asked (key b"snapshot" or b"ledger_chunk",
# value JSON {"proposal_id"}): every node watches it, so backups snapshot where the primary does.
FILE_TRIGGERS: Final = "public:ccf.gov.charter.file_triggers"

# -- internal tables -------------------------------------------------------------------------
SIGNATURES: Final = "public:ccf.internal.signatures"
COSE_SIGNATURES: Final = "public:ccf.internal.cose_signatures"
TREE: Final = "public:ccf.internal.tree"
SNAPSHOT_EVIDENCE: Final = "public:ccf.internal.snapshot_evidence"
# Charter's replicated record of the node config's `start.cose_signatures`.
COSE_SIGNATURES_CONFIG: Final = "public:ccf.internal.charter.cose_signatures_config"
# After a recovery: the new service key's COSE endorsement of the previous service's key
# (CCF's `CoseEndorsement` JSON: endorsement, endorsing_key, endorsement_epoch_begin/_end,
# previous_version).
PREVIOUS_SERVICE_IDENTITY_ENDORSEMENT: Final = (
    "public:ccf.internal.previous_service_identity_endorsement"
)
# Charter's record of every recovery's X.509 endorsement of the previous service key (the
# certificate JSON receipts carry in `service_endorsements`), keyed by the first seqno of
# the service that issued it (u64 LE): JSON {"endorsement": PEM, "epoch_end": seqno}.
SERVICE_ENDORSEMENTS: Final = "public:ccf.internal.charter.service_endorsements"
# The Raft voters, as a ledger table (CCF keeps the equivalent in its internal maps).
CONFIGURATION: Final = "public:ccf.internal.configuration"

# -- recovery shares and ledger secrets (CCF's names, src/service/tables/shares.h, secrets.h) --
# Singleton: the latest ledger secret wrapped under the wrapping key, and the wrapping key's
# k-of-n shares, each RSA-OAEP-256 encrypted to one active recovery member's key.
RECOVERY_SHARES: Final = "public:ccf.internal.recovery_shares"
# Member id -> a share a member submitted during recovery, encrypted (AES-GCM) by the node.
ENCRYPTED_SUBMITTED_SHARES: Final = "public:ccf.internal.encrypted_submitted_shares"
# Singleton, written on rekey: node id -> the new ledger secret sealed to that node's key.
ENCRYPTED_LEDGER_SECRETS: Final = "public:ccf.internal.encrypted_ledger_secrets"
# Singleton, written on rekey: the previous ledger secret encrypted under the new one.
HISTORICAL_ENCRYPTED_LEDGER_SECRET: Final = "public:ccf.internal.historical_encrypted_ledger_secret"
# Charter's own: start seqno (u64 LE) -> that ledger secret encrypted under its successor,
# so the current state alone holds the whole chain (CCF walks the ledger's history for it).
LEDGER_SECRET_CHAIN: Final = "public:ccf.internal.charter.ledger_secret_chain"

# The value of an allowed measurement in the nodes' measurement tables.
ALLOWED_TO_JOIN: Final = "AllowedToJoin"


class NodeStatus(enum.StrEnum):
    """`status` of a `public:ccf.gov.nodes.info` record (CCF's NodeStatus)."""

    PENDING = "Pending"
    TRUSTED = "Trusted"
    RETIRED = "Retired"


class MemberStatus(enum.StrEnum):
    """`status` of a `public:ccf.gov.members.info` record (CCF's MemberStatus)."""

    ACCEPTED = "Accepted"
    ACTIVE = "Active"


class ServiceStatus(enum.StrEnum):
    """`status` of the `public:ccf.gov.service.info` record (CCF's ServiceStatus)."""

    OPENING = "Opening"
    OPEN = "Open"
    WAITING_FOR_RECOVERY_SHARES = "WaitingForRecoveryShares"
    RECOVERING = "Recovering"


# A node record is a governance document: a megabyte bounds what a hostile ledger can make
# us parse.
NODE_RECORD_BYTES_MAX: Final = 1024 * 1024


class NodeRecordError(ValueError):
    """Stored bytes that are not a node record (not JSON, not an object, no known status)."""

    code = "InvalidNodeRecord"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The fields of a `public:ccf.gov.nodes.info` value that Charter acts on, typed.

    The parser is tolerant: fields it does not know, and optional ones of the wrong type, are
    kept in `raw` (and ignored here) rather than refused, since CCF and later Charter
    versions add fields; only `status` must be a known `NodeStatus`. `raw` is the whole JSON
    object, to write back unchanged apart from what a caller sets.
    """

    status: NodeStatus
    public_key: str | None = None
    cert: str | None = None
    rpc_interfaces: dict[str, Any] = field(default_factory=dict)
    node_to_node_address: str | None = None
    retired_committed: bool = False
    ledger_secret_seqno: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json_object(cls, info: dict[str, Any]) -> NodeRecord:
        status = info.get("status")
        try:
            node_status = NodeStatus(str(status))
            if not isinstance(status, str):
                raise ValueError(status)
        except ValueError:
            raise NodeRecordError(f"node record has an unknown status {status!r}") from None
        n2n = info.get("node_to_node_interface")
        address = n2n.get("published_address") if isinstance(n2n, dict) else None
        rpc = info.get("rpc_interfaces")
        seqno = info.get("ledger_secret_seqno")
        return cls(
            status=node_status,
            public_key=_str_or_none(info.get("public_key")),
            cert=_str_or_none(info.get("cert")),
            rpc_interfaces=rpc if isinstance(rpc, dict) else {},
            node_to_node_address=_str_or_none(address),
            retired_committed=info.get("retired_committed") is True,
            ledger_secret_seqno=seqno if type(seqno) is int and seqno >= 0 else 0,
            raw=info,
        )

    def with_status(self, status: NodeStatus) -> dict[str, Any]:
        """The stored JSON object with `status` replaced (every other field kept)."""
        return {**self.raw, "status": status.value}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def load_node_record(data: bytes) -> NodeRecord:
    """Parse a stored `public:ccf.gov.nodes.info` value; raises `NodeRecordError` only."""
    if len(data) > NODE_RECORD_BYTES_MAX:
        raise NodeRecordError(f"node record of {len(data)} bytes exceeds {NODE_RECORD_BYTES_MAX}")
    try:
        info = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise NodeRecordError(f"node record is not JSON: {e}") from None
    if not isinstance(info, dict):
        raise NodeRecordError("node record is not a JSON object")
    return NodeRecord.from_json_object(info)
