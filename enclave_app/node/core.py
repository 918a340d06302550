"""What every part of a node shares: config, platform, clock, KV store, history, outbox.

The parts (`replication`, `snapshots`, `joins`, `peers`, `receipts`) each keep their own
state and reach the shared one only through a `NodeCore`; none of them imports another
part, and the `Node` facade wires them together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from charter.consensus import LogEntry, Raft, RaftConfig, StartState
from charter.enclave_app import interface as itf
from charter.enclave_app.attestation import admit_own_code
from charter.enclave_app.entropy import Entropy
from charter.enclave_app.identity import Identity
from charter.enclave_app.indexing import Indexer, IndexStrategy
from charter.enclave_app.kv import Store, Tx
from charter.enclave_app.node.lifecycle import Lifecycle, NodeState
from charter.enclave_app.platform import Platform
from charter.enclave_app.tls import ServerTls
from charter.governance import tables as gt
from charter.ledger import certs
from charter.ledger import service_state as ss
from charter.ledger.history import History
from charter.ledger.signatures import (
    COSE_SIGNATURES_CONFIG_TABLE,
    CoseSignaturesConfig,
    cose_signatures_config_value,
)

LOG = logging.getLogger(__name__)

TXID_HEADER = "x-ms-ccf-transaction-id"
RETRY_AFTER_S = "1"
# Maps only the service itself writes (governance, signatures, configuration).
RESERVED_MAP_PREFIX = ss.SERVICE_TABLE_PREFIX
SIGNATURES_TABLE = ss.SIGNATURES
SNAPSHOT_EVIDENCE_TABLE = ss.SNAPSHOT_EVIDENCE
TREE_TABLE = ss.TREE
CONFIGURATION_TABLE = ss.CONFIGURATION


class NodeNotReady(Exception):
    """A part was used before the node held what it needs (identity, Raft): a bug."""


class NodeCore:
    """The state all parts of one node share."""

    def __init__(
        self,
        config: itf.NodeConfig,
        platform: Platform,
        clock_s: Callable[[], float],
        entropy: Entropy,
    ):
        self.config = config
        self.platform = platform
        self.clock_s = clock_s
        self.entropy = entropy
        self.store = Store()
        self.history = History(deterministic_signatures=entropy.deterministic)
        self.tls = ServerTls()
        self.lifecycle = Lifecycle()
        self._identity: Identity | None = None
        self.outbox: list[itf.Frame] = []
        # Ledger bytes in `outbox` (the runtime zeroes it when it flushes).
        self.outbox_write_bytes = 0
        # Hands the host what `outbox` holds now, ahead of the end of the turn: a backup
        # calls it before applying the entries it just wrote there (`Replication.
        # process_ready`). The runtime sets it; by default the frames wait for the turn.
        self.hand_off: Callable[[], None] = lambda: None
        self.last_tick_ms: int | None = None
        self.metrics: dict[str, int] = {
            "requests": 0,
            "writes": 0,
            "errors": 0,
            "signatures": 0,
            "light_load_signatures": 0,
            "rollbacks": 0,
            "ready_turns": 0,
            "peer_messages_sent": 0,
            "peer_messages_received": 0,
            "peer_messages_dropped": 0,
        }
        self.indexer = self.new_indexer(())

    def new_indexer(self, strategies: Sequence[IndexStrategy[Any]]) -> Indexer:
        """The app's indexes, fed at commit (`Replication._on_commit`); blob frames go out
        through `outbox`, the blob key comes from the node's entropy."""
        return Indexer(
            strategies,
            store=self.store,
            buckets_in_memory=self.config.indexing.buckets_in_memory,
            key=lambda: self.entropy.token_bytes(32),
            send=lambda frame: self.outbox.append(frame),
            metrics=self.metrics,
        )

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> Identity:
        if self._identity is None:
            raise NodeNotReady("the node has no identity yet")
        return self._identity

    @property
    def has_identity(self) -> bool:
        return self._identity is not None

    def maybe_identity(self) -> Identity | None:
        return self._identity

    def set_identity(self, identity: Identity) -> None:
        assert self._identity is None, "a node takes one identity for its life"
        self._identity = identity

    @property
    def state(self) -> NodeState:
        return self.lifecycle.state

    def now_s(self) -> int:
        return int(self.clock_s())

    # ------------------------------------------------------------------ sealing
    def seal(self, raft: Raft | None) -> None:
        identity = self.identity
        if raft is not None:
            identity.term = raft.term
            identity.voted_for = raft.voted_for
        self.outbox.append(itf.StoreSealed(self.platform.seal(identity.to_bytes())))

    # ------------------------------------------------------------------ consensus
    def raft_config(self) -> RaftConfig:
        low, high = self.config.consensus.election_timeout_ms
        return RaftConfig(
            election_timeout_min_ms=low,
            election_timeout_max_ms=max(high, low + 1),
            heartbeat_interval_ms=self.config.consensus.heartbeat_ms,
            # A backup's cost is mostly per AppendEntries (~1 ms each, both its processes,
            # against ~37 us per entry): one per signature, not one per turn.
            hold_until_signature=True,
            ack_when_durable=True,
            ack_released_on_durable=True,
        )

    def new_raft(self, start: StartState, entries: list[LogEntry] | None = None) -> Raft:
        """Raft for this node: fresh, or restored on `entries` of its own log."""
        seed = self.entropy.rng_seed()
        node_id = self.identity.node_id
        if entries is None:
            return Raft(node_id, config=self.raft_config(), start=start, rng_seed=seed)
        return Raft.restore(
            node_id, config=self.raft_config(), start=start, entries=entries, rng_seed=seed
        )

    def voters(self) -> frozenset[str]:
        """The Raft configuration recorded in the ledger (CONFIGURATION_TABLE)."""
        raw = self.store.begin().get(CONFIGURATION_TABLE, gt.SINGLETON_KEY)
        if raw is None:
            return frozenset()
        return frozenset(gt.load_json(raw, what=CONFIGURATION_TABLE)["voters"])

    # ------------------------------------------------------------------ addresses
    def n2n_published(self) -> str:
        return self.config.published_node_to_node_address or self.config.node_to_node_address

    def rpc_published(self) -> str:
        return self.config.published_rpc_address or self.config.rpc_address

    def node_info(self, status: str) -> dict[str, Any]:
        """This node's record for governance's nodes table."""
        identity = self.identity
        evidence = self.platform.evidence(identity.public_key_der)
        return {
            "status": status,
            "quote_info": evidence.quote_info(),
            "code_digest": self.platform.measurement,
            "public_key": certs.public_key_pem(identity.node_key.public_key()),
            "encryption_pub_key": "",
            "certificate_signing_request": "",
            "node_data": None,
            "ledger_secret_seqno": 0,
            "retired_committed": False,
            "node_to_node_interface": {
                "bind_address": self.config.node_to_node_address,
                "published_address": self.n2n_published(),
                "protocol": "tcp",
            },
            "rpc_interfaces": {
                "primary_rpc_interface": {
                    "bind_address": self.config.rpc_address,
                    "published_address": self.rpc_published(),
                    "protocol": "tcp",
                    # What this node's certificate is to name (the operator's config).
                    "subject_alt_names": self.config.rpc_subject_alt_names(),
                }
            },
        }


def configuration_if_changed(write_set: Mapping[str, Any]) -> frozenset[str] | None:
    """The Raft configuration an entry's write set records, if it records one."""
    raw = write_set.get(CONFIGURATION_TABLE, {}).get(gt.SINGLETON_KEY)
    if raw is None:
        return None
    return frozenset(gt.load_json(raw, what=CONFIGURATION_TABLE)["voters"])


def write_genesis(
    core: NodeCore, tx: Tx, members: list[dict[str, Any]], constitution: Any, create_txid: str
) -> None:
    """The service's first transaction: members, this node Trusted, the configuration."""
    from charter.governance import genesis

    identity = core.identity
    genesis.bootstrap(
        tx,
        members=[genesis.InitialMember(**m) for m in members],
        service_cert_pem=identity.service_cert_pem,
        node_id=identity.node_id,
        node_info=core.node_info("Trusted"),
        node_endorsed_cert_pem=identity.node_cert_pem,
        constitution=constitution,
        service_config=genesis.ServiceConfig(**core.config.start.service_config),
        create_txid=create_txid,
    )
    gt.put_json(tx, CONFIGURATION_TABLE, gt.SINGLETON_KEY, {"voters": [identity.node_id]})
    configured = core.config.start.cose_signatures
    if configured is not None:
        # Replicated, so every node that ever signs for this service (joiners, nodes
        # started from a snapshot, restarts) uses the issuer the service started with.
        tx.put(
            COSE_SIGNATURES_CONFIG_TABLE,
            gt.SINGLETON_KEY,
            cose_signatures_config_value(
                CoseSignaturesConfig(configured.issuer, configured.subject)
            ),
        )
    # The first node's own code is the first one allowed to join.
    admit_own_code(tx, core.platform.evidence(identity.public_key_der))
