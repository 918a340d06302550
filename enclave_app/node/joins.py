"""Joining a network, both sides.

The primary's side (`join_request`): check the joiner's attestation, record it Pending, and
once governance trusts it hand it what it needs (service key, ledger secrets and the latest
snapshot, sealed to its key). The joiner's side: what it asks with (`request_body`) and how
it opens a trusted answer (`open_answer`); the facade then starts its Raft and state.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric import ec

from charter.consensus import LogEntry, Raft, StartState
from charter.enclave_app import interface as itf
from charter.enclave_app.attestation import join_policy, verify_evidence
from charter.enclave_app.channels import open_sealed, seal_to
from charter.enclave_app.errors import HttpError
from charter.enclave_app.kv import Tx
from charter.enclave_app.node import certificates
from charter.enclave_app.node.core import NodeCore
from charter.enclave_app.node.peers import Peers
from charter.enclave_app.node.replication import Replication
from charter.enclave_app.node.snapshots import Snapshots
from charter.enclave_app.platform import Evidence, PlatformError
from charter.governance import tables as gt
from charter.governance.effects import Effects
from charter.ledger import certs
from charter.ledger.errors import LedgerError
from charter.ledger.snapshot import VerifiedSnapshot, snapshot_file_name

LOG = logging.getLogger(__name__)

# Nodes that asked to join and await governance (each is replicated to as a learner).
MAX_PENDING_NODES = 8
# A trusted joiner's sealed answer: keys, ledger secrets and the latest snapshot.
JOIN_SECRETS_BYTES_MAX = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PeerRecord:
    node_id: str
    public_key_pem: str
    address: str


@dataclass(frozen=True, slots=True)
class TrustedAnswer:
    """What a trusted joiner was given, opened with its own key."""

    service_cert_pem: str
    endorsed_cert_pem: str
    service_key_pem: str
    ledger_secrets: list[tuple[int, bytes]]
    peers: list[PeerRecord]
    snapshot: bytes | None
    snapshot_name: str


def join_request(
    core: NodeCore,
    tx: Tx,
    request: Mapping[str, Any],
    latest_snapshot: tuple[bytes, str | None] | None,
    *,
    trust_committed: Callable[[str], bool] = lambda _: True,
) -> dict[str, Any]:
    """Primary side of a join: check the report, record the node Pending, or hand a
    trusted node what it needs (service key and ledger secrets, sealed to its key)."""
    try:
        public_key = certs.load_public_key(request["public_key"])
        evidence = Evidence.from_quote_info(
            request["quote_format"], request["quote"], request["endorsements"]
        )
    except Exception:
        raise HttpError("public_key or quote is malformed", code="InvalidInput") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise HttpError("node keys are ECDSA keys", code="InvalidInput")
    node_id = certs.node_id(public_key)
    try:
        verified = verify_evidence(
            evidence, public_key_der=certs.spki_der(public_key), policy=join_policy(tx)
        )
    except (PlatformError, LedgerError) as exc:  # snp.SnpError is a LedgerError
        LOG.warning("event=join_refused node=%s reason=%s", node_id[:16], exc)
        raise HttpError(str(exc), code="InvalidQuote") from None
    info = gt.node_info(tx, node_id)
    if info is None and _pending_nodes(tx) >= MAX_PENDING_NODES:
        # Joining is unauthenticated until governance decides: bound what it costs.
        raise HttpError("Too many nodes await a decision", code="TooManyPendingNodes")
    rpc_interface: dict[str, Any] = {
        "bind_address": request["rpc_address"],
        "published_address": request["rpc_address"],
        "protocol": "tcp",
    }
    if request.get("subject_alt_names") is not None:
        # Absent from a request of an older node: its published address's name is used.
        rpc_interface["subject_alt_names"] = request["subject_alt_names"]
    try:
        certificates.recorded_sans({"rpc_interfaces": {"primary_rpc_interface": rpc_interface}})
    except ValueError as exc:
        raise HttpError(f"subject_alt_names: {exc}", code="InvalidInput") from None
    if info is None:
        joiner = {
            **core.node_info("Pending"),
            "public_key": request["public_key"],
            "quote_info": evidence.quote_info(),
            "code_digest": verified.measurement,
            "node_to_node_interface": {
                "bind_address": request["node_to_node_address"],
                "published_address": request["node_to_node_address"],
                "protocol": "tcp",
            },
            "rpc_interfaces": {"primary_rpc_interface": rpc_interface},
        }
        gt.put_json(tx, gt.NODES_INFO, gt.id_key(node_id), joiner)
        LOG.info("event=join_pending node=%s", node_id[:16])
        return _pending_answer(node_id)
    status = info.get("status")
    if status == "Pending" or (status == "Trusted" and not trust_committed(node_id)):
        # The secrets go only to a node whose trust has committed: a view change can still
        # roll back a trust that has not, and the node would hold them all the same.
        return _pending_answer(node_id)
    if status != "Trusted":
        raise HttpError(f"node {node_id} is {status}", code="NodeRetired")
    identity = core.identity
    assert identity.service_key is not None
    endorsed = tx.get(gt.NODES_ENDORSED_CERTIFICATES, gt.id_key(node_id))
    secrets: dict[str, Any] = {
        "service_key": certs.key_pem(identity.service_key),
        "ledger_secrets": [[s, k] for s, k in identity.ledger_secrets],
    }
    if request.get("want_snapshot") and latest_snapshot is not None:
        # Only for the holder of the trusted node's key: the snapshot holds the public
        # maps in clear, which are no one else's to read. It verified when it was set.
        secrets["snapshot"], secrets["snapshot_name"] = latest_snapshot
    return {
        "node_id": node_id,
        "node_status": "Trusted",
        "peers": _trusted_peers(tx),
        "network_info": {
            "service_cert": identity.service_cert_pem,
            "endorsed_cert": endorsed.decode() if endorsed else "",
            "secrets": base64.b64encode(
                seal_to(
                    public_key,
                    msgpack.packb(secrets, use_bin_type=True),
                    ephemeral=core.entropy.new_ec_key(),
                )
            ).decode(),
        },
    }


def _pending_answer(node_id: str) -> dict[str, Any]:
    """A node governance has not trusted learns its own status and nothing else."""
    return {"node_id": node_id, "node_status": "Pending"}


def _pending_nodes(tx: Tx) -> int:
    return sum(
        1
        for _, value in tx.items(gt.NODES_INFO)
        if gt.load_json(value, what=gt.NODES_INFO).get("status") == "Pending"
    )


def _trusted_peers(tx: Tx) -> list[dict[str, str]]:
    peers = []
    for key, value in tx.items(gt.NODES_INFO):
        info = gt.load_json(value, what=gt.NODES_INFO)
        if isinstance(info, dict) and info.get("status") == "Trusted":
            peers.append(
                {
                    "node_id": gt.key_to_id(key),
                    "public_key": str(info.get("public_key", "")),
                    "address": str(
                        info.get("node_to_node_interface", {}).get("published_address", "")
                    ),
                }
            )
    return peers


# ---------------------------------------------------------------------- the joiner's side
def request_body(core: NodeCore, *, want_snapshot: bool) -> dict[str, Any]:
    identity = core.identity
    quote_info = core.platform.evidence(identity.public_key_der).quote_info()
    return {
        "want_snapshot": want_snapshot,
        "public_key": certs.public_key_pem(identity.node_key.public_key()),
        "quote": quote_info["quote"],
        "quote_format": quote_info["format"],
        "endorsements": quote_info["endorsements"],
        "rpc_address": core.rpc_published(),
        "node_to_node_address": core.n2n_published(),
        # The names its operator wants its certificate to carry (checked by the primary).
        "subject_alt_names": core.config.rpc_subject_alt_names(),
    }


def open_answer(core: NodeCore, doc: Mapping[str, Any]) -> TrustedAnswer | None:
    """The primary's answer: None while this node is not trusted; else what it was given,
    unsealed with this node's key."""
    if doc.get("node_status") != "Trusted":
        return None
    identity = core.identity
    info = doc["network_info"]
    secrets = msgpack.unpackb(
        open_sealed(
            identity.node_key,
            base64.b64decode(info["secrets"]),
            max_bytes=JOIN_SECRETS_BYTES_MAX,
        ),
        raw=False,
    )
    peers = [
        PeerRecord(str(p["node_id"]), str(p["public_key"]), str(p["address"]))
        for p in doc.get("peers", [])
        if p.get("node_id") != identity.node_id
    ]
    snapshot = secrets.get("snapshot")
    return TrustedAnswer(
        service_cert_pem=str(info["service_cert"]),
        endorsed_cert_pem=str(info["endorsed_cert"]),
        service_key_pem=secrets["service_key"],
        ledger_secrets=[(int(s), bytes(k)) for s, k in secrets["ledger_secrets"]],
        peers=peers,
        snapshot=bytes(snapshot) if snapshot else None,
        snapshot_name=f"{secrets.get('snapshot_name') or 'snapshot'} (from the join answer)",
    )


def apply_effects(core: NodeCore, tx: Tx, effects: Effects) -> None:
    """Carry out what an accepted proposal asks beyond its own KV writes, in its tx: a
    renewed service certificate, then the certificates of the nodes it (re-)endorses."""
    issuer = core.identity.service_cert
    if effects.renew_service_certificate is not None:
        issuer = certificates.renew_service(core, tx, effects.renew_service_certificate)
    for endorsement in effects.endorse_nodes:
        certificates.endorse_node(core, tx, endorsement, issuer)
    # `rekey` and `refresh_recovery_shares` are the node's `LedgerSecrets` (rekey.py).


class Joiner:
    """The joiner's side once it has an identity: restarting Raft on what it had received
    as a learner, and adopting the primary's trusted answer."""

    def __init__(
        self,
        core: NodeCore,
        snapshots: Snapshots,
        start_replication: Callable[[Raft], Replication],
    ) -> None:
        self.core = core
        self.snapshots = snapshots
        self._start_replication = start_replication
        # A committed snapshot the operator put in this joiner's snapshots directory (taken
        # from any trusted node), already checked against the pinned service certificate:
        # used instead of asking the join answer for one.
        self.local_snapshot: tuple[bytes, str] | None = None

    def resumed(self, entries: list[LogEntry]) -> None:
        """A joiner restarted before it was trusted: Raft on the entries it acknowledged."""
        core = self.core
        identity = core.identity
        base_seqno, base_view = self.snapshots.replay_base
        if not entries and not base_seqno:
            # Nothing was replicated to it (a node is not contacted before it is trusted):
            # it starts like a new joiner, from the snapshot it will be given.
            LOG.info("event=rejoining node_id=%s entries=0", identity.node_id)
            return
        raft = core.new_raft(
            StartState(
                configuration=self.snapshots.replay_base_voters,
                last_index=base_seqno,
                last_term=base_view,
                commit_index=base_seqno,
                term=max(identity.term, base_view),
                voted_for=identity.voted_for,
            ),
            entries,
        )
        self._start_replication(raft).deferred = list(entries)
        LOG.info("event=rejoining node_id=%s entries=%d", identity.node_id, len(entries))

    def adopt(
        self, answer: TrustedAnswer, peers: Peers, replication: Replication | None
    ) -> Replication:
        """Take what a trusted answer holds: peers, snapshot (if it verifies and Raft has
        not started yet), keys and secrets; then open what waited for the secrets."""
        core = self.core
        for peer in answer.peers:
            peers.know(peer.node_id, peer.public_key_pem, peer.address)
        offered = answer.snapshot, answer.snapshot_name
        if self.local_snapshot is not None:
            offered = self.local_snapshot
        if replication is None and offered[0] is not None:
            try:
                verified = self.snapshots.verify(offered[0], offered[1], answer.service_cert_pem)
            except LedgerError as exc:
                # The ledger is never compacted away: without the snapshot this node
                # catches up from the primary's entries, from seqno 1.
                LOG.error(
                    "event=snapshot_refused file=%s reason=%s fallback=ledger",
                    offered[1],
                    exc,
                )
            else:
                replication = self._start_from_snapshot(verified, offered[0])
        if replication is None:
            replication = self._start_replication(
                core.new_raft(StartState(configuration=frozenset()))
            )
        identity = core.identity
        identity.service_key = certs.load_key(answer.service_key_pem)
        identity.service_cert_pem = answer.service_cert_pem
        identity.ledger_secrets = answer.ledger_secrets
        identity.node_cert_pem = answer.endorsed_cert_pem
        core.tls.set_identity(identity.node_cert_pem, certs.key_pem(identity.node_key))
        self.snapshots.open_join_snapshot()
        replication.take_deferred()
        return replication

    def _start_from_snapshot(self, verified: VerifiedSnapshot, data: bytes) -> Replication:
        """Start the log after the snapshot; private state opens once trusted."""
        snapshot = verified.snapshot
        # Keep it beside the ledger, so a restart of this node can start from it too (and
        # serve it: it verified).
        name = snapshot_file_name(snapshot.seqno, verified.evidence_seqno, True)
        self.snapshots.install_public(verified, data, name)
        self.core.outbox.append(
            itf.WriteSnapshot(snapshot.seqno, verified.evidence_seqno, data, True)
        )
        replication = self._start_replication(
            self.core.new_raft(
                StartState(
                    configuration=self.core.voters(),
                    last_index=snapshot.seqno,
                    last_term=snapshot.view,
                    commit_index=snapshot.seqno,
                )
            )
        )
        LOG.info("event=joining_from_snapshot seqno=%d", snapshot.seqno)
        return replication
