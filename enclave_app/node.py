"""The enclave's node: one object that owns the KV store, the history, Raft and the keys.

`Node` does no I/O. The runtime loop (`charter.enclave_app.main`) feeds it events (a request, a
tick, a durability report, a peer message) and sends the frames it leaves in `outbox` to the
host. Every write transaction runs to completion inside one call, in order, so handlers see
a serial history and nothing ever conflicts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric import ec

from charter.consensus import (
    LogEntry,
    Raft,
    RaftConfig,
    Role,
    StartState,
    decode_message,
    encode_message,
)
from charter.consensus.errors import ConsensusError
from charter.enclave_app import auth
from charter.enclave_app import interface as itf
from charter.enclave_app.app import (
    App,
    Caller,
    HttpResponse,
    error_response,
)
from charter.enclave_app.attestation import (
    admit_own_code,
    check_own_code,
    join_policy,
    verify_evidence,
)
from charter.enclave_app.channels import ChannelError, Channels, open_sealed, seal_to
from charter.enclave_app.errors import HttpError
from charter.enclave_app.identity import Identity
from charter.enclave_app.kv import Store, Tx
from charter.enclave_app.platform import Evidence, Platform, PlatformError
from charter.enclave_app.rate_limit import RateLimiter
from charter.enclave_app.runtime_view import RuntimeView
from charter.enclave_app.tls import ServerTls
from charter.enclave_app.tx_status import TxStatus, evaluate_tx_status
from charter.governance import tables as gt
from charter.governance.effects import Effects
from charter.governance.errors import GovernanceError
from charter.ledger import certs, receipt
from charter.ledger.chunks import ChunkPolicy
from charter.ledger.entry import ZERO_DIGEST, decode_entry, decrypt_private, entry_leaf
from charter.ledger.errors import DecodeError, LedgerError, VerificationError
from charter.ledger.history import History
from charter.ledger.merkle import MerkleTree
from charter.ledger.signatures import (
    COSE_SIGNATURES_CONFIG_TABLE,
    CoseSignaturesConfig,
    cose_signatures_config_value,
    parse_cose_signatures_config,
)
from charter.ledger.snapshot import (
    Snapshot,
    VerifiedSnapshot,
    encode_snapshot,
    encode_snapshot_receipt,
    snapshot_digest,
    snapshot_file_name,
    verify_snapshot,
)

LOG = logging.getLogger(__name__)

TXID_HEADER = "x-ms-ccf-transaction-id"
# Ticks come from the untrusted host clock: a jump never advances Raft by more than this.
MAX_TICK_ELAPSED_MS = 1_000
RETRY_AFTER_S = "1"
# Writes are refused (503) while more than this many bytes of frames wait for the host.
HOST_BACKLOG_BYTES_MAX = 32 * 1024 * 1024
ENTRY_REQUEST_ID_BASE = 1 << 48
MAX_PENDING_FORWARDS = 10_000
# Nodes that asked to join and await governance (each is replicated to as a learner).
MAX_PENDING_NODES = 8
# Join requests per source address: a joiner polls every 0.5 s; several may share an address.
JOIN_PATH = "/node/join"
JOIN_RATE_PER_S = 4.0
JOIN_BURST = 8
# A trusted joiner's sealed answer: keys, ledger secrets and the latest snapshot.
JOIN_SECRETS_BYTES_MAX = 128 * 1024 * 1024
# How often the committed seqno is sealed (a rollback by the host can erase at most this).
COMMIT_SEAL_INTERVAL_MS = 1_000
# Maps only the service itself writes (governance, signatures, configuration).
RESERVED_MAP_PREFIX = "public:ccf."
ENTRY_REQUEST_MAX = 1_000
SIGNATURES_TABLE = "public:ccf.internal.signatures"
SNAPSHOT_EVIDENCE_TABLE = "public:ccf.internal.snapshot_evidence"
TREE_TABLE = "public:ccf.internal.tree"
# The Raft voters, as a ledger table (CCF keeps the equivalent in its internal maps).
CONFIGURATION_TABLE = "public:ccf.internal.configuration"


class Node:
    """The trusted half of a Charter node."""

    def __init__(
        self,
        config: itf.NodeConfig,
        platform: Platform,
        app: App,
        *,
        extra_apps: tuple[App, ...] = (),
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.platform = platform
        self.clock_s = clock_s
        self.store = Store()
        self.history = History()
        self.chunks = ChunkPolicy(config.ledger_chunk_bytes)
        # (seqno, bytes in the open chunk after it) for the uncommitted suffix, so a
        # rollback restores the chunk policy to where it stood.
        self._chunk_marks: deque[tuple[int, int]] = deque()
        self.identity: Identity | None = None
        self.raft: Raft | None = None
        self.channels: Channels | None = None
        # node id -> node-to-node address of every peer we may talk to
        self.peer_addresses: dict[str, str] = {}
        # Trusted nodes not (yet) in the Raft configuration: replicated to, not counted.
        self.learners: set[str] = set()
        self.join_limiter = RateLimiter(rate_per_s=JOIN_RATE_PER_S, burst=JOIN_BURST)
        # Entries a joining node received before it holds the ledger secrets.
        self.deferred: list[LogEntry] = []
        self.forwards = 0
        # Called with (forward id, response) when a forwarded request's answer arrives.
        self.on_forward_response: Callable[[int, HttpResponse], None] = lambda *_: None
        self.retired = False
        # The seqno at which governance marked this node Retired (it retires once that
        # commits, if it never became a voter; a voter retires by configuration).
        self.retired_at: int | None = None
        self._entry_requests: dict[int, str] = {}
        # forward id -> the primary it went to (only that node may answer it)
        self._forward_targets: dict[int, str] = {}
        self._entry_request_ids = 0
        self.runtime_view = RuntimeView(self)
        self.last_snapshot_seqno = 0
        # (snapshot seqno, evidence seqno, snapshot entry) until its evidence commits.
        self.pending_snapshot: tuple[int, int, bytes] | None = None
        # The latest committed snapshot file (entry + receipt) and its file name, served to
        # joining nodes and on GET /node/snapshot. Only `_offer_snapshot` sets them, and only
        # to bytes that passed `verify_snapshot`.
        self.latest_snapshot: bytes | None = None
        self.latest_snapshot_name: str | None = None
        # A joiner's snapshot, kept until the ledger secrets arrive to open it.
        self.join_snapshot: Snapshot | None = None
        # (seqno, view) the replayed ledger follows: a snapshot's, or (0, 0).
        self._replay_base = (0, 0)
        self._commit_sealed_ms = 0
        self.tls = ServerTls()
        self.outbox: list[itf.Frame] = []
        # Ledger bytes in `outbox` (the runtime zeroes it when it flushes).
        self.outbox_write_bytes = 0
        # What the host has yet to take from this enclave, in bytes (the runtime sets it).
        self.host_backlog_bytes: Callable[[], int] = lambda: self.outbox_write_bytes
        self.commit_seqno = 0
        self.applied_seqno = 0
        # (view, first seqno of that view) for every view in the log, ascending.
        self.views: list[tuple[int, int]] = []
        self.txs_since_signature = 0
        self.last_signature_ms = 0
        self.last_tick_ms: int | None = None
        self.state = "Uninitialized"
        self.started_at_s = clock_s()
        self.metrics: dict[str, int] = {
            "requests": 0,
            "writes": 0,
            "errors": 0,
            "signatures": 0,
            "rollbacks": 0,
        }
        self.routes = App("charter", prefix="", api_path=None)
        for extra in extra_apps:
            self.routes.include(extra)
        self.routes.include(app)
        self.store.add_hook(gt.USERS_CERTS, lambda *_: self._refresh_client_cas())
        self.store.add_hook(gt.MEMBERS_CERTS, lambda *_: self._refresh_client_cas())
        self.store.add_hook(gt.NODES_INFO, lambda *_: self._refresh_peers())

    # ------------------------------------------------------------------ properties
    @property
    def node_id(self) -> str:
        assert self.identity is not None
        return self.identity.node_id

    @property
    def is_primary(self) -> bool:
        return self.raft is not None and self.raft.role is Role.PRIMARY

    @property
    def serving(self) -> bool:
        """Can client connections be served: the node is part of the network and its TLS
        context asks for the client certificates of every registered user and member."""
        return self.state == "PartOfNetwork" and self.raft is not None and self.tls.ready

    def service_status(self) -> str | None:
        info = gt.service_info(self.store.begin())
        return None if info is None else str(info.get("status"))

    def now_s(self) -> int:
        return int(self.clock_s())

    # ------------------------------------------------------------------ start
    def raft_config(self) -> RaftConfig:
        low, high = self.config.consensus.election_timeout_ms
        return RaftConfig(
            election_timeout_min_ms=low,
            election_timeout_max_ms=max(high, low + 1),
            heartbeat_interval_ms=self.config.consensus.heartbeat_ms,
        )

    def start_new_network(self, members: list[dict[str, Any]], constitution: Any) -> None:
        """Genesis: create the service identity and the first ledger transactions."""
        from charter.governance import genesis

        node_key = certs.new_key()
        service_key = certs.new_key()
        service_cert = certs.service_cert(service_key)
        identity = Identity(
            node_key=node_key,
            service_key=service_key,
            service_cert_pem=certs.cert_pem(service_cert),
        )
        identity.add_ledger_secret(1)
        identity.node_cert_pem = self._endorse(identity, node_key.public_key())
        self._set_identity(identity)
        self.raft = Raft(
            identity.node_id,
            config=self.raft_config(),
            start=StartState(configuration=frozenset({identity.node_id})),
            rng_seed=int.from_bytes(os.urandom(8), "little"),
        )
        self.raft.campaign()
        self._drain_ready()
        assert self.is_primary, "a one-node configuration elects itself"
        tx = self.store.begin()
        genesis.bootstrap(
            tx,
            members=[genesis.InitialMember(**m) for m in members],
            service_cert_pem=identity.service_cert_pem,
            node_id=identity.node_id,
            node_info=self._node_info("Trusted"),
            node_endorsed_cert_pem=identity.node_cert_pem,
            constitution=constitution,
            service_config=genesis.ServiceConfig(**self.config.start.service_config),
            create_txid=f"{self.raft.view}.{self.raft.last_index + 1}",
        )
        gt.put_json(tx, CONFIGURATION_TABLE, gt.SINGLETON_KEY, {"voters": [identity.node_id]})
        configured = self.config.start.cose_signatures
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
        admit_own_code(tx, self.platform.evidence(identity.public_key_der))
        self.commit_tx(tx)
        self.emit_signature()
        self.state = "PartOfNetwork"
        self.seal()
        LOG.info("event=network_started node_id=%s", identity.node_id)

    def _set_identity(self, identity: Identity) -> None:
        identity.epoch += 1
        self.identity = identity
        self.channels = Channels(identity.node_key, epoch=identity.epoch)
        if identity.node_cert_pem:
            self.tls.set_identity(identity.node_cert_pem, certs.key_pem(identity.node_key))

    def _endorse(self, identity: Identity, public_key: Any, rpc_address: str | None = None) -> str:
        """A node certificate issued by the service key, naming the node's RPC host."""
        assert identity.service_key is not None
        host = (
            rpc_address or self.config.published_rpc_address or self.config.rpc_address
        ).rpartition(":")[0]
        san_ips = [host] if host.replace(".", "").isdigit() else []
        san_dns = ["localhost"] + ([] if san_ips else [host])
        return certs.cert_pem(
            certs.endorse(
                public_key,
                identity.service_key,
                identity.service_cert,
                san_ips=san_ips or ["127.0.0.1"],
                san_dns=san_dns,
            )
        )

    def _n2n_published(self) -> str:
        return self.config.published_node_to_node_address or self.config.node_to_node_address

    def _rpc_host(self) -> str:
        address = self.config.published_rpc_address or self.config.rpc_address
        return address.rpartition(":")[0]

    def _node_info(self, status: str) -> dict[str, Any]:
        assert self.identity is not None
        rpc = self.config.published_rpc_address or self.config.rpc_address
        evidence = self.platform.evidence(self.identity.public_key_der)
        return {
            "status": status,
            "quote_info": evidence.quote_info(),
            "code_digest": self.platform.measurement,
            "public_key": certs.public_key_pem(self.identity.node_key.public_key()),
            "encryption_pub_key": "",
            "certificate_signing_request": "",
            "node_data": None,
            "ledger_secret_seqno": 0,
            "retired_committed": False,
            "node_to_node_interface": {
                "bind_address": self.config.node_to_node_address,
                "published_address": self._n2n_published(),
                "protocol": "tcp",
            },
            "rpc_interfaces": {
                "primary_rpc_interface": {
                    "bind_address": self.config.rpc_address,
                    "published_address": rpc,
                    "protocol": "tcp",
                }
            },
        }

    def seal_progress(self) -> None:
        """Seal how far this node's own ledger is committed (committed and durable here),
        so a restart on a ledger the host cut short is refused."""
        if self.identity is None or self.raft is None:
            return
        held = min(self.commit_seqno, self.raft.durable_index)
        if held > self.identity.committed_seqno:
            self.identity.committed_seqno = held
            self.seal()

    def seal(self) -> None:
        assert self.identity is not None
        if self.raft is not None:
            self.identity.term = self.raft.term
            self.identity.voted_for = self.raft.voted_for
        self.outbox.append(itf.StoreSealed(self.platform.seal(self.identity.to_bytes())))

    # ------------------------------------------------------------------ restart
    def resume(self, sealed: bytes) -> None:
        """Restart under the same identity: unseal, then `replay` the ledger, then `resumed`."""
        self._set_identity(Identity.from_bytes(self.platform.unseal(sealed)))
        # The new channel epoch must be durable before any frame uses it (nonce reuse).
        self.seal()
        self.state = "ReadingOwnLedger"
        self._replayed: list[LogEntry] = []

    def replay(self, raw: bytes) -> None:
        """One entry of the node's own ledger, read back from the untrusted host: decode,
        decrypt and check it against the history (signed roots must match)."""
        assert self.identity is not None and self.raft is None
        seqno = self.applied_seqno + 1  # the host returns the own ledger in order
        try:
            entry, _ = decode_entry(raw)
            seqno = entry.seqno
            secret = self.identity.secret_for(seqno)
            record = self.history.append_raw(raw, secret=secret)
            write_set = dict(entry.public)
            if entry.private_ciphertext:
                write_set.update(decrypt_private(entry, secret))
        except (DecodeError, VerificationError) as e:
            # Say which entry: the host names the file that holds it (host/storage.py).
            raise type(e)(f"ledger entry seqno {seqno}: {e}") from e
        self.store.apply(write_set, seqno)
        self.applied_seqno = seqno
        self._note_view(entry.view, seqno)
        self._record_chunk(seqno, len(raw), entry.flags)
        self._replayed.append(
            LogEntry(
                seqno,
                entry.view,
                raw,
                record.is_signature,
                self._configuration_if_changed(write_set),
            )
        )

    def resumed(self) -> None:
        """All of the own ledger is replayed: restart Raft on it and carry on."""
        assert self.identity is not None
        entries = self._replayed
        self._replayed = []
        if self.applied_seqno < self.identity.committed_seqno:
            raise RollbackError(
                f"the host's ledger ends at seqno {self.applied_seqno} but this node had "
                f"committed seqno {self.identity.committed_seqno}: ledger files are missing or "
                "were rolled back; refusing to start"
            )
        # Only what was signed survives: an unsigned tail cannot have been committed
        # (Raft commits only at signatures), so drop it everywhere.
        last_sig = self.history.last_signature
        # Never below a snapshot this node started from: that point is committed.
        keep = max(last_sig.seqno if last_sig is not None else 0, self._replay_base[0])
        if keep < self.applied_seqno:
            self._rollback(keep)
            self.outbox.append(itf.Truncate(keep))
            entries = [e for e in entries if e.index <= keep]
        # Governance may have removed this code's measurement while the node ran (it ran on,
        # as in CCF); coming back with it is a new admission, refused as a join would be.
        check_own_code(self.store.begin(), self.platform.evidence(self.identity.public_key_der))
        configuration = self._voters()
        base_seqno, base_view = self._replay_base
        self.raft = Raft.restore(
            self.identity.node_id,
            config=self.raft_config(),
            start=StartState(
                configuration=configuration,
                last_index=base_seqno,
                last_term=base_view,
                commit_index=base_seqno,
                term=max(self.identity.term, base_view),
                voted_for=self.identity.voted_for,
            ),
            entries=entries,
            rng_seed=int.from_bytes(os.urandom(8), "little"),
        )
        if configuration == frozenset({self.identity.node_id}):
            self.raft.campaign()
        self.state = "PartOfNetwork"
        self._drain_ready()
        self._refresh_client_cas()
        self._refresh_peers()
        LOG.info("event=resumed node_id=%s seqno=%d", self.identity.node_id, self.applied_seqno)

    def _voters(self) -> frozenset[str]:
        """The Raft configuration recorded in the ledger (CONFIGURATION_TABLE)."""
        raw = self.store.begin().get(CONFIGURATION_TABLE, gt.SINGLETON_KEY)
        if raw is None:
            return frozenset()
        return frozenset(gt.load_json(raw, what=CONFIGURATION_TABLE)["voters"])

    def _trusted_nodes(self) -> frozenset[str]:
        trusted = set()
        for key, value in self.store.begin().items(gt.NODES_INFO):
            if gt.load_json(value, what=gt.NODES_INFO).get("status") == "Trusted":
                trusted.add(gt.key_to_id(key))
        return frozenset(trusted)

    @staticmethod
    def _configuration_if_changed(write_set: Mapping[str, Any]) -> frozenset[str] | None:
        raw = write_set.get(CONFIGURATION_TABLE, {}).get(gt.SINGLETON_KEY)
        if raw is None:
            return None
        return frozenset(gt.load_json(raw, what=CONFIGURATION_TABLE)["voters"])

    def _maybe_reconfigure(self) -> None:
        """Primary: move the Raft configuration one node towards the trusted nodes.

        Governance decides who is trusted; consensus decides when the change is safe (the
        previous change committed, an added node caught up). The change itself is a ledger
        transaction writing CONFIGURATION_TABLE, so every replica sees it at the same seqno.
        """
        assert self.raft is not None
        current = self.raft.configuration
        desired = self._trusted_nodes()
        if not desired or desired == current:
            return
        removed = sorted(current - desired)
        added = sorted(node for node in desired - current if self.raft.is_caught_up(node))
        if removed:
            new = current - {removed[0]}
        elif added:
            new = current | {added[0]}
        else:
            return
        try:
            # Consensus' own admission rules; nothing is changed if they refuse.
            self.raft._check_configuration_change(new)
        except ConsensusError:
            return
        tx = self.store.begin()
        gt.put_json(tx, CONFIGURATION_TABLE, gt.SINGLETON_KEY, {"voters": sorted(new)})
        self.commit_tx(tx)
        LOG.info("event=reconfigure voters=%d", len(new))

    # ------------------------------------------------------------------ transactions
    def commit_tx(self, tx: Tx, claims_digest: bytes | None = None) -> tuple[int, int]:
        """Append a write transaction (primary only); returns its (view, seqno)."""
        assert self.raft is not None and self.identity is not None
        view, seqno = self.raft.view, self.raft.last_index + 1
        write_set = tx.write_set()
        public = {name: w for name, w in write_set.items() if name.startswith("public:")}
        private = {name: w for name, w in write_set.items() if not name.startswith("public:")}
        record = self.history.add_transaction(
            seqno=seqno,
            view=view,
            public=public,
            private=private,
            secret=self.identity.secret_for(seqno),
            claims_digest=claims_digest or ZERO_DIGEST,
        )
        self.store.commit(tx, seqno)
        configuration = self._configuration_if_changed(write_set)
        if configuration == self.raft.configuration:
            configuration = None
        proposed = self.raft.propose(record.raw, signature=False, configuration=configuration)
        assert proposed == (view, seqno)
        self._appended(view, seqno, len(record.raw), 0)
        self.txs_since_signature += 1
        self.metrics["writes"] += 1
        if self.txs_since_signature >= self.config.signatures.tx_count:
            self.emit_signature()
        return view, seqno

    def cose_signatures_config(self) -> CoseSignaturesConfig:
        """The CWT issuer and subject of the service's COSE signatures: what the service
        recorded at its start (`start.cose_signatures`), else CCF's defaults."""
        value = self.store.begin().get(COSE_SIGNATURES_CONFIG_TABLE, gt.SINGLETON_KEY)
        if value is None:
            return CoseSignaturesConfig()
        try:
            return parse_cose_signatures_config(value)
        except DecodeError as exc:
            # Written by the primary that started the service; unreadable means a bug, and
            # signing must go on (commit depends on it), so sign with the defaults.
            LOG.error("event=cose_signatures_config_unreadable error=%s", exc)
            return CoseSignaturesConfig()

    def emit_signature(self) -> None:
        """Sign the Merkle root (node key, and the service key as COSE) in a transaction."""
        assert self.raft is not None and self.identity is not None
        assert self.identity.service_key is not None
        view, seqno = self.raft.view, self.raft.last_index + 1
        flags = self.chunks.flags_for_signature()
        cose_config = self.cose_signatures_config()
        record = self.history.add_signature(
            seqno=seqno,
            view=view,
            node_id=self.identity.node_id,
            node_key=self.identity.node_key,
            node_cert_pem=self.identity.node_cert_pem,
            service_key=self.identity.service_key,
            secret=self.identity.secret_for(seqno),
            iat=self.now_s(),
            flags=flags,
            issuer=cose_config.issuer,
            subject=cose_config.subject,
        )
        entry, _ = decode_entry(record.raw)
        self.store.apply(dict(entry.public), seqno)
        self.raft.propose(record.raw, signature=True)
        self._appended(view, seqno, len(record.raw), flags)
        self.txs_since_signature = 0
        self.last_signature_ms = self.last_tick_ms or 0
        self.metrics["signatures"] += 1
        if (
            seqno - self.last_snapshot_seqno >= self.config.snapshots.tx_count
            and self.pending_snapshot is None
        ):
            self._take_snapshot(seqno, view)

    # ------------------------------------------------------------------ snapshots
    def _take_snapshot(self, seqno: int, view: int) -> None:
        """Snapshot the state at the signature `seqno` (primary), and record its evidence."""
        assert self.identity is not None and self.store.version == seqno
        public, private = self.store.snapshot()
        entry = encode_snapshot(
            seqno=seqno,
            view=view,
            hash_at_snapshot=self.history.tree.leaf(seqno),
            view_history=self._view_history(),
            public_tables=public,
            private_tables=private,
            secret=self.identity.secret_for(seqno),
        )
        self.last_snapshot_seqno = seqno
        tx = self.store.begin()
        gt.put_json(
            tx,
            SNAPSHOT_EVIDENCE_TABLE,
            gt.SINGLETON_KEY,
            {"hash": snapshot_digest(entry), "version": seqno},
        )
        # As in CCF, the evidence's claims digest is the snapshot's digest: its receipt then
        # vouches for the snapshot's bytes (`verify_snapshot`).
        _, evidence_seqno = self.commit_tx(tx, claims_digest=hashlib.sha256(entry).digest())
        self.pending_snapshot = (seqno, evidence_seqno, entry)
        self.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, entry, False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d", seqno, evidence_seqno)

    def _view_history(self) -> list[int]:
        """CCF's view history: index = view, value = first seqno of that view."""
        history: list[int] = []
        for view, first in self.views:
            while len(history) < view:
                history.append(first)
            history.append(first)
        return history

    def _finish_snapshot(self) -> None:
        """Once the evidence and a signature after it are committed, the file is complete."""
        if self.pending_snapshot is None:
            return
        seqno, evidence_seqno, entry = self.pending_snapshot
        if evidence_seqno > self.commit_seqno:
            return
        material = self.history.receipt_material(evidence_seqno)
        if material is None or material[1].seqno > self.commit_seqno:
            return
        response = self.receipt(self.view_at(evidence_seqno) or 0, evidence_seqno)
        if response.status != 200:
            return
        self.pending_snapshot = None
        data = entry + encode_snapshot_receipt(json.loads(response.body))
        name = snapshot_file_name(seqno, evidence_seqno, True)
        if self._offer_snapshot(data, name) is None:
            return  # logged; the uncommitted file stays as it is, never served
        self.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, data, True))
        LOG.info("event=snapshot_committed seqno=%d", seqno)

    def _verify_snapshot(
        self, data: bytes, name: str, service_cert_pem: str | None = None
    ) -> VerifiedSnapshot:
        """`verify_snapshot` against the service cert (this node's unless given)."""
        cert = service_cert_pem or (self.identity.service_cert_pem if self.identity else None)
        if not cert:
            raise VerificationError(f"snapshot {name}: no service certificate to check it against")
        return verify_snapshot(data, cert, name=name)

    def _offer_snapshot(self, data: bytes, name: str) -> VerifiedSnapshot | None:
        """Serve `data` as the latest snapshot if it verifies; else log why, and keep what
        was served before. Nothing unverified is ever served (GET /node/snapshot, joins)."""
        try:
            verified = self._verify_snapshot(data, name)
        except LedgerError as exc:
            LOG.error("event=snapshot_refused file=%s reason=%s", name, exc)
            return None
        self.latest_snapshot, self.latest_snapshot_name = data, name
        return verified

    def offer_snapshot_from_disk(self, data: bytes, name: str) -> bool:
        """A restarted node whose ledger is whole may still serve its latest snapshot file,
        once it has checked it (the host could have changed it)."""
        return self._offer_snapshot(data, name) is not None

    def _install_snapshot(self, snapshot: Snapshot, private: bytes) -> None:
        """Take a snapshot's point as the start of this node's state, tree and views."""
        self.store.restore(snapshot.public_tables, private, snapshot.seqno)
        tree_bytes = self.store.begin().get(TREE_TABLE, gt.SINGLETON_KEY)
        if tree_bytes is None:
            raise ConsensusError("snapshot holds no Merkle tree")
        tree = MerkleTree.deserialise(tree_bytes)
        if tree.size != snapshot.seqno:
            raise ConsensusError("snapshot tree does not end at the snapshot")
        tree.append(snapshot.hash_at_snapshot)
        self.history.tree = tree
        self.views = []
        for view, first in enumerate(snapshot.view_history):
            if not first or first > snapshot.seqno:
                continue
            if self.views and self.views[-1][1] == first:
                # Views without entries repeat the next view's first seqno: the highest
                # view of a run of equal seqnos is the one that holds them.
                self.views[-1] = (view, first)
            elif not self.views or self.views[-1][1] < first:
                self.views.append((view, first))
        self.applied_seqno = self.commit_seqno = snapshot.seqno
        self.last_snapshot_seqno = snapshot.seqno
        self._replay_base = (snapshot.seqno, snapshot.view)

    def _start_from_snapshot(self, verified: VerifiedSnapshot, data: bytes) -> None:
        """A joiner: start its log after the snapshot; private state opens once trusted."""
        assert self.identity is not None
        snapshot = verified.snapshot
        self._install_snapshot(snapshot, b"")
        self.join_snapshot = snapshot
        # Keep it beside the ledger, so a restart of this node can start from it too (and
        # serve it: it verified).
        name = snapshot_file_name(snapshot.seqno, verified.evidence_seqno, True)
        self.latest_snapshot, self.latest_snapshot_name = data, name
        self.outbox.append(itf.WriteSnapshot(snapshot.seqno, verified.evidence_seqno, data, True))
        self.raft = Raft(
            self.identity.node_id,
            config=self.raft_config(),
            start=StartState(
                configuration=self._voters(),
                last_index=snapshot.seqno,
                last_term=snapshot.view,
                commit_index=snapshot.seqno,
            ),
            rng_seed=int.from_bytes(os.urandom(8), "little"),
        )
        LOG.info("event=joining_from_snapshot seqno=%d", snapshot.seqno)

    def resume_from_snapshot(self, data: bytes, name: str = "snapshot") -> int:
        """Restart of a node whose ledger starts after a snapshot: install it first, once it
        has verified against the service cert (raises the LedgerError naming `name` if not)."""
        assert self.identity is not None
        verified = self._verify_snapshot(data, name)
        snapshot = verified.snapshot
        private = snapshot.decrypt_private(self.identity.secret_for(snapshot.seqno))
        self._install_snapshot(snapshot, private)
        self.latest_snapshot, self.latest_snapshot_name = data, name
        return snapshot.seqno

    def _appended(self, view: int, seqno: int, size: int, flags: int) -> None:
        self.applied_seqno = seqno
        self._note_view(view, seqno)
        self._record_chunk(seqno, size, flags)

    def _record_chunk(self, seqno: int, size: int, flags: int) -> None:
        self.chunks.record(size, flags)
        self._chunk_marks.append((seqno, self.chunks.bytes_in_chunk))

    def _note_view(self, view: int, seqno: int) -> None:
        if not self.views or self.views[-1][0] != view:
            assert not self.views or self.views[-1][0] < view
            self.views.append((view, seqno))

    def view_at(self, seqno: int) -> int | None:
        if seqno < 1 or seqno > self.applied_seqno:
            return None
        found = None
        for view, first in self.views:
            if first > seqno:
                break
            found = view
        return found

    # ------------------------------------------------------------------ governance hooks
    def merkle_root(self) -> bytes:
        return self.history.tree.root()

    def apply_effects(self, tx: Tx, effects: Effects) -> None:
        """Carry out what an accepted proposal asks beyond its own KV writes, in its tx."""
        assert self.identity is not None
        for endorsement in effects.endorse_nodes:
            info = gt.node_info(tx, endorsement.node_id)
            if info is None or not info.get("public_key"):
                raise GovernanceError(
                    "InvalidNode", f"node {endorsement.node_id} has no public key", 400
                )
            public_key = certs.load_public_key(info["public_key"])
            tx.put(
                gt.NODES_ENDORSED_CERTIFICATES,
                gt.id_key(endorsement.node_id),
                self._endorse(
                    self.identity,
                    public_key,
                    info.get("rpc_interfaces", {})
                    .get("primary_rpc_interface", {})
                    .get("published_address"),
                ).encode(),
            )
        if effects.rekey:
            LOG.info("event=rekey_requested (recorded; rotation lands with recovery)")

    # ------------------------------------------------------------------ Raft plumbing
    def _drain_ready(self) -> None:
        """Act on everything Raft produced: rollback, apply, persist, send, commit."""
        assert self.raft is not None
        ready = self.raft.ready()
        if ready.hard_state is not None and self.identity is not None:
            self.seal()
        if ready.truncate_to is not None:
            if ready.truncate_to < self.applied_seqno:
                self._rollback(ready.truncate_to)
            # A joiner's entries wait unapplied in `deferred`: they go too, and the host's
            # ledger follows either way.
            self.deferred = [e for e in self.deferred if e.index <= ready.truncate_to]
            self.outbox.append(itf.Truncate(ready.truncate_to))
        if ready.entries:
            for entry in ready.entries:
                if self.identity is not None and not self.identity.ledger_secrets:
                    self.deferred.append(entry)  # a joiner without secrets yet
                elif entry.index > self.applied_seqno:
                    self._apply_replicated(entry)
            self.outbox.append(itf.WriteEntries([(e.index, e.data) for e in ready.entries]))
            self.outbox_write_bytes += sum(len(e.data) for e in ready.entries)
        for request in ready.entry_requests:
            # A lagging peer needs entries compacted out of memory: read them back from
            # the host (and check them as any host data) before they go out.
            self._entry_request_ids += 1
            request_id = ENTRY_REQUEST_ID_BASE + self._entry_request_ids
            self._entry_requests[request_id] = request.peer
            last = min(request.to_index, request.from_index + ENTRY_REQUEST_MAX - 1)
            self.outbox.append(itf.ReadEntries(request_id, request.from_index, last))
        for peer, message in ready.messages:
            self.send_to_peer(peer, message)
        if ready.commit_index is not None and ready.commit_index > self.commit_seqno:
            self._on_commit(ready.commit_index)
        if ready.role_changed:
            LOG.info(
                "event=role_changed role=%s view=%d leader=%s",
                ready.role.value,
                ready.view,
                ready.leader_id,
            )
            if ready.role is Role.PRIMARY and self.state == "PartOfNetwork":
                # A new primary signs at once, so what it inherited can commit, and
                # replicates to the nodes still waiting to be trusted.
                self._refresh_peers()
                self.emit_signature()
                self._drain_ready()
            elif ready.role is Role.RETIRED:
                self._become_retired()

    def _become_retired(self) -> None:
        if not self.retired:
            self.retired = True
            self.state = "Retired"
            LOG.info("event=retired node_id=%s", self.node_id)

    # ------------------------------------------------------------------ node-to-node
    def _refresh_peers(self) -> None:
        """Learn the identity key and address of the nodes governance trusts.

        Anyone can ask to join and name any address, so a node not yet trusted is never
        contacted (nor replicated to); once trusted it catches up as a learner before it
        joins the configuration. A Retired node that was trusted keeps its route: it must
        still learn that the configuration without it committed (and a retiring primary
        must hand over); Raft stops talking to it by itself once that is done.
        """
        if self.channels is None:
            return
        voters = self.raft.configuration if self.raft is not None else self._voters()
        trusted_learners: set[str] = set()
        for key, value in self.store.begin().items(gt.NODES_INFO):
            info = gt.load_json(value, what=gt.NODES_INFO)
            node_id = gt.key_to_id(key)
            if not isinstance(info, dict):
                continue
            status = info.get("status")
            if node_id == self.channels.own_id:
                if status != "Retired":
                    self.retired_at = None  # e.g. the entry that retired it was rolled back
                elif self.retired_at is None:
                    self.retired_at = self.store.version
                continue
            was_trusted = node_id in voters or node_id in self.peer_addresses
            if status != "Trusted" and not (status == "Retired" and was_trusted):
                continue
            self._know_peer(
                node_id,
                str(info.get("public_key", "")),
                str(info.get("node_to_node_interface", {}).get("published_address", "")),
            )
            if status == "Trusted" and node_id not in voters:
                trusted_learners.add(node_id)
        if self.raft is None:
            return
        for node_id in self.learners - trusted_learners:
            # Left before it became a voter: it is told until it commits that it left.
            removed_at = None if node_id in self.raft.configuration else self.store.version
            self.raft.remove_learner(node_id, removed_at)
        for node_id in trusted_learners - self.learners:
            self.raft.add_learner(node_id)
        self.learners = trusted_learners

    def _know_peer(self, node_id: str, public_key_pem: str, address: str) -> None:
        assert self.channels is not None
        public_key = certs.load_public_key(public_key_pem)
        if certs.node_id(public_key) != node_id:  # type: ignore[arg-type]
            LOG.warning("event=peer_key_mismatch node=%s", node_id[:16])
            return
        self.channels.know(public_key)  # type: ignore[arg-type]
        if address:
            self.peer_addresses[node_id] = address

    def _send_n2n(self, peer: str, message: list[Any]) -> None:
        address = self.peer_addresses.get(peer)
        if address is None or self.channels is None:
            LOG.debug("event=no_route_to_peer peer=%s", peer[:16])
            return
        try:
            payload = self.channels.seal(peer, msgpack.packb(message, use_bin_type=True))
        except ChannelError as exc:
            LOG.warning("event=n2n_seal_failed peer=%s reason=%s", peer[:16], exc)
            return
        self.outbox.append(itf.SendToNode(peer, address, payload))

    def send_to_peer(self, peer: str, message: Any) -> None:
        self._send_n2n(peer, ["raft", encode_message(message)])

    def receive_from_peer(self, payload: bytes) -> None:
        """A sealed frame relayed by the host: open, check, dispatch; bad frames are dropped.

        Only decoding and checking are guarded: an error while acting on a well-formed
        message is a bug in this enclave and must stop it rather than be swallowed.
        """
        if self.channels is None:
            return
        try:
            sender, plaintext = self.channels.open(payload)
            message = msgpack.unpackb(plaintext, raw=False, max_bin_len=len(plaintext))
            kind, fields = _n2n_message(message)
            raft_message = decode_message(fields[0]) if kind == "raft" else None
        except (
            ChannelError,
            ConsensusError,
            ValueError,
            TypeError,
            msgpack.UnpackException,
        ) as exc:
            self.channels.dropped += 1
            LOG.warning("event=n2n_frame_dropped reason=%s", str(exc)[:200])
            return
        status = self._peer_status(sender)
        if raft_message is not None:
            if self.raft is None:
                return
            # The Raft sender must be the channel's peer, and trusted by governance (or by
            # the configuration, for a joiner that knows no governance state yet). A retired
            # node was trusted: it still hands over and learns that its removal committed.
            if raft_message.sender != sender or (
                status not in ("Trusted", "Retired") and not self._trusted_by_configuration(sender)
            ):
                self.channels.dropped += 1
                LOG.warning("event=raft_message_refused peer=%s status=%s", sender[:16], status)
                return
            self.raft.step(raft_message)
            self._drain_ready()
        elif kind == "fwd":
            if status != "Trusted":
                LOG.warning("event=forward_refused peer=%s status=%s", sender[:16], status)
                return
            self._serve_forwarded(sender, fields)
        elif kind == "fwd_resp":
            forward_id, code, headers, content_type, body = fields
            if self._forward_targets.pop(forward_id, None) != sender:
                LOG.warning("event=forward_answer_refused peer=%s", sender[:16])
                return
            self.on_forward_response(
                forward_id, HttpResponse(code, body, dict(headers), content_type)
            )

    def _peer_status(self, node_id: str) -> str | None:
        info = gt.node_info(self.store.begin(), node_id)
        return None if info is None else str(info.get("status"))

    def _trusted_by_configuration(self, node_id: str) -> bool:
        """A voter of the Raft configuration this node knows (a joiner knows no governance
        state until it holds the ledger secrets, only the configuration)."""
        # A new joiner learns its peers from the trusted join answer, before it has replayed
        # the governance state that names them.
        return (self.raft is not None and node_id in self.raft.configuration) or (
            node_id in self.peer_addresses
            and (self.state == "Pending" or self._peer_status(node_id) is None)
        )

    def _serve_forwarded(self, sender: str, fields: list[Any]) -> None:
        """Run a write a trusted backup forwarded with its caller's identity; answer it."""
        forward_id, method, path, query, headers, body, peer_der = fields
        response = self._handle(
            method, path, query, dict(headers), body, peer_der or None, forwarded=True
        )
        assert isinstance(response, HttpResponse), "a forwarded request is never re-forwarded"
        self._send_n2n(
            sender,
            [
                "fwd_resp",
                forward_id,
                response.status,
                list(response.headers.items()),
                response.content_type,
                response.body,
            ],
        )

    def _apply_replicated(self, entry: LogEntry) -> None:
        assert self.identity is not None
        decoded, _ = decode_entry(entry.data)
        if decoded.seqno != entry.index or decoded.view != entry.term:
            raise ConsensusError("replicated entry does not match its log position")
        secret = self.identity.secret_for(entry.index)
        self.history.append_raw(entry.data, secret=secret)
        write_set = dict(decoded.public)
        if decoded.private_ciphertext:
            write_set.update(decrypt_private(decoded, secret))
        self.store.apply(write_set, entry.index)
        self._appended(entry.term, entry.index, len(entry.data), decoded.flags)

    def _rollback(self, seqno: int) -> None:
        LOG.warning("event=rollback from=%d to=%d", self.applied_seqno, seqno)
        self.metrics["rollbacks"] += 1
        self.store.rollback(seqno)
        self.history.truncate(seqno)
        self.applied_seqno = seqno
        while self.views and self.views[-1][1] > seqno:
            self.views.pop()
        while self._chunk_marks and self._chunk_marks[-1][0] > seqno:
            self._chunk_marks.pop()
        self.chunks.reset(self._chunk_marks[-1][1] if self._chunk_marks else 0)

    def on_entries_read(self, frame: itf.EntriesRead) -> None:
        """Entries the host read back for a lagging peer (see `_drain_ready`)."""
        peer = self._entry_requests.pop(frame.request_id, None)
        if peer is None or self.raft is None or not self.is_primary:
            return
        entries = []
        for offset, raw in enumerate(frame.entries):
            decoded, _ = decode_entry(raw)
            seqno = frame.first_seqno + offset
            if decoded.seqno != seqno or (
                self.history.tree.min_index <= seqno < self.history.tree.size
                and (entry_leaf(raw) != self.history.tree.leaf(seqno))
            ):
                LOG.warning("event=host_returned_bad_entry seqno=%d", seqno)
                return
            public = dict(decoded.public)
            entries.append(
                LogEntry(
                    seqno,
                    decoded.view,
                    raw,
                    SIGNATURES_TABLE in public,
                    self._configuration_if_changed(public),
                )
            )
        self.raft.provide_entries(peer, entries)
        self._drain_ready()

    def _on_commit(self, seqno: int) -> None:
        self.commit_seqno = seqno
        now_ms = self.last_tick_ms or 0
        if now_ms - self._commit_sealed_ms >= COMMIT_SEAL_INTERVAL_MS:
            self._commit_sealed_ms = now_ms
            self.seal_progress()
        self.store.compact(seqno)
        assert self.raft is not None
        retained = self.config.memory.raft_log_entries
        if seqno - self.raft.log.first_index > 2 * retained:
            # Bounded memory: older entries are read back from the ledger on demand.
            self.raft.compact(seqno - retained)
        receipts = self.config.memory.receipt_transactions
        if seqno - self.history.tree.min_index > 2 * receipts:
            self.history.compact(seqno - receipts)
        while len(self._chunk_marks) > 1 and self._chunk_marks[1][0] <= seqno:
            self._chunk_marks.popleft()
        self.outbox.append(itf.CommitUpTo(seqno))
        self._finish_snapshot()
        if (
            self.retired_at is not None
            and seqno >= self.retired_at
            and self.node_id not in self.raft.configuration
            and not self.retired
        ):
            # Removed while still a learner: no configuration change will retire it.
            self.raft.retire()
            self._become_retired()

    # ------------------------------------------------------------------ host events
    def tick(self, now_ms: int) -> None:
        if self.raft is None:
            return
        elapsed = 0 if self.last_tick_ms is None else now_ms - self.last_tick_ms
        self.last_tick_ms = now_ms
        self.raft.tick(max(0, min(elapsed, MAX_TICK_ELAPSED_MS)))
        if (
            self.is_primary
            and self.txs_since_signature > 0
            and now_ms - self.last_signature_ms >= self.config.signatures.delay_ms
        ):
            self.emit_signature()
        if self.is_primary and self.state == "PartOfNetwork":
            self._maybe_reconfigure()
        if now_ms - self._commit_sealed_ms >= COMMIT_SEAL_INTERVAL_MS:
            # Also when the service went idle right after its last commits.
            self._commit_sealed_ms = now_ms
            self.seal_progress()
        self._drain_ready()

    def durable(self, seqno: int, view: int = 0) -> None:
        if self.raft is None:
            return
        self.raft.durable(seqno, view or None)
        self._drain_ready()

    # ------------------------------------------------------------------ requests
    def _refresh_client_cas(self) -> None:
        if self.state == "ReadingOwnLedger":
            return  # `resumed` loads them once, from the whole ledger
        tx = self.store.begin()
        pems = [v.decode() for _, v in tx.items(gt.USERS_CERTS)]
        pems += [v.decode() for _, v in tx.items(gt.MEMBERS_CERTS)]
        self.tls.set_client_cas(pems)

    def authenticate(self, policies: tuple[Any, ...], tx: Tx, peer_der: bytes | None) -> Caller:
        """The caller under certificate policies (the console's), or raise `AuthError`."""
        try:
            return auth.authenticate(
                policies, tx, peer_der=peer_der, headers={}, body=b"", now_s=self.now_s()
            ).caller
        except auth.AuthFailure:
            raise AuthError() from None

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
        *,
        source: str | None = None,
    ) -> HttpResponse | Forwarded:
        """Serve one HTTP request, or hand back a `Forwarded` whose answer will come.
        `source` is the client's address (the IP of the TCP peer), for rate limits."""
        self.metrics["requests"] += 1
        if (
            path == JOIN_PATH
            and source is not None
            and not self.join_limiter.allow(source, self.clock_s())
        ):
            # Anyone may ask to join: bound what one source can make the service do.
            response: HttpResponse | Forwarded = HttpResponse(
                429,
                error_response(429, "TooManyRequests", "Too many join requests").body,
                {"Retry-After": RETRY_AFTER_S},
                "application/json",
            )
        else:
            response = self._handle(method, path, query, headers, body, peer_der)
        if isinstance(response, HttpResponse) and response.status >= 400:
            self.metrics["errors"] += 1
        return response

    def _handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
        *,
        forwarded: bool = False,
    ) -> HttpResponse | Forwarded:
        match = self.routes.match(method, path)
        if match is None:
            return self.routes.no_route_response(method, path)
        endpoint = match.endpoint
        if self.raft is None or self.identity is None:
            return _unavailable("ServiceNotReady", "The node is starting")
        if path.startswith("/app/") and endpoint.include_in_api and self.service_status() != "Open":
            return _unavailable("FrontendNotOpen", "The service is not open yet")
        tx = self.store.begin()
        try:
            authenticated = auth.authenticate(
                endpoint.auth, tx, peer_der=peer_der, headers=headers, body=body, now_s=self.now_s()
            )
        except auth.AuthFailure as failure:
            return error_response(failure.status, failure.code, failure.message)
        caller, payload, headers = authenticated.caller, authenticated.body, authenticated.headers
        if not endpoint.read_only:
            if not self.is_primary:
                if forwarded:
                    return _unavailable("NotPrimary", "The primary changed; retry")
                # The primary authenticates again: it gets the request as the caller sent it.
                return self.forward(method, path, query, headers, body, peer_der)
            limit = self.config.consensus.max_uncommitted_tx_count
            if limit and self.applied_seqno - self.commit_seqno >= limit:
                return _unavailable("TooManyPendingTransactions", "Retry later")
            if self.host_backlog_bytes() > HOST_BACKLOG_BYTES_MAX:
                # The host is not taking ledger writes as fast as they come: refuse more
                # rather than queue them without bound (frames with writes are never dropped).
                return _unavailable("HostBacklog", "The host is behind writing the ledger")
        outcome = self.routes.invoke(
            match,
            tx=tx,
            caller=caller,
            body=payload,
            query=query,
            headers=headers,
            runtime=self.runtime_view,
        )
        response = outcome.response
        if outcome.commit and not path.startswith(("/gov/", "/node/")):
            reserved = [m for m in tx.write_set() if m.startswith(RESERVED_MAP_PREFIX)]
            if reserved:
                LOG.error("event=app_wrote_reserved_map path=%s", endpoint.path)
                return error_response(
                    500, "InternalError", "Applications may not write the service's own maps"
                )
        if outcome.commit:
            # A signed request may not be played again (read-only ones change nothing).
            auth.record_signed(tx, authenticated, now_s=self.now_s())
        if outcome.commit:
            view, seqno = self.commit_tx(tx, outcome.claims_digest)
            self._drain_ready()
            response = HttpResponse(
                response.status,
                response.body,
                {**response.headers, TXID_HEADER: f"{view}.{seqno}"},
                response.content_type,
            )
        return response

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
    ) -> HttpResponse | Forwarded:
        """A write sent to a backup goes to the primary over the node-to-node channel."""
        primary = self.raft.leader_id if self.raft else None
        if primary is None or primary not in self.peer_addresses:
            return _unavailable("NoPrimary", "No primary is known; retry shortly")
        self.forwards += 1
        self._forward_targets[self.forwards] = primary
        while len(self._forward_targets) > MAX_PENDING_FORWARDS:  # answers that never came
            del self._forward_targets[next(iter(self._forward_targets))]
        self._send_n2n(
            primary,
            [
                "fwd",
                self.forwards,
                method,
                path,
                query,
                [(k, v) for k, v in headers.items() if k.lower() in _FORWARDED_HEADERS],
                body,
                peer_der or b"",
            ],
        )
        return Forwarded(self.forwards, primary)

    # ------------------------------------------------------------------ joining (both sides)
    def join_request(self, tx: Tx, request: Mapping[str, str]) -> dict[str, Any]:
        """Primary side of a join: check the report, record the node Pending, or hand a
        trusted node what it needs (service key and ledger secrets, sealed to its key)."""
        try:
            public_key = certs.load_public_key(request["public_key"])
            evidence = Evidence.from_quote_info(
                request["quote_format"], request["quote"], request["endorsements"]
            )
        except Exception:
            raise HttpError(400, "InvalidInput", "public_key or quote is malformed") from None
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise HttpError(400, "InvalidInput", "node keys are ECDSA keys")
        node_id = certs.node_id(public_key)
        try:
            verified = verify_evidence(
                evidence, public_key_der=certs.spki_der(public_key), policy=join_policy(tx)
            )
        except (PlatformError, LedgerError) as exc:  # snp.SnpError is a LedgerError
            LOG.warning("event=join_refused node=%s reason=%s", node_id[:16], exc)
            raise HttpError(403, "InvalidQuote", str(exc)) from None
        info = gt.node_info(tx, node_id)
        if info is None and self._pending_nodes(tx) >= MAX_PENDING_NODES:
            # Joining is unauthenticated until governance decides: bound what it costs.
            raise HttpError(503, "TooManyPendingNodes", "Too many nodes await a decision")
        if info is None:
            joiner = {
                **self._node_info("Pending"),
                "public_key": request["public_key"],
                "quote_info": evidence.quote_info(),
                "code_digest": verified.measurement,
                "node_to_node_interface": {
                    "bind_address": request["node_to_node_address"],
                    "published_address": request["node_to_node_address"],
                    "protocol": "tcp",
                },
                "rpc_interfaces": {
                    "primary_rpc_interface": {
                        "bind_address": request["rpc_address"],
                        "published_address": request["rpc_address"],
                        "protocol": "tcp",
                    }
                },
            }
            gt.put_json(tx, gt.NODES_INFO, gt.id_key(node_id), joiner)
            LOG.info("event=join_pending node=%s", node_id[:16])
            return self._pending_answer(node_id)
        status = info.get("status")
        if status == "Pending":
            return self._pending_answer(node_id)
        if status != "Trusted":
            raise HttpError(403, "NodeRetired", f"node {node_id} is {status}")
        assert self.identity is not None and self.identity.service_key is not None
        endorsed = tx.get(gt.NODES_ENDORSED_CERTIFICATES, gt.id_key(node_id))
        secrets: dict[str, Any] = {
            "service_key": certs.key_pem(self.identity.service_key),
            "ledger_secrets": [[s, k] for s, k in self.identity.ledger_secrets],
        }
        if request.get("want_snapshot") and self.latest_snapshot is not None:
            # Only for the holder of the trusted node's key: the snapshot holds the public
            # maps in clear, which are no one else's to read. It verified when it was set.
            secrets["snapshot"] = self.latest_snapshot
            secrets["snapshot_name"] = self.latest_snapshot_name
        return {
            "node_id": node_id,
            "node_status": "Trusted",
            "peers": self._peers(tx),
            "network_info": {
                "service_cert": self.identity.service_cert_pem,
                "endorsed_cert": endorsed.decode() if endorsed else "",
                "secrets": base64.b64encode(
                    seal_to(public_key, msgpack.packb(secrets, use_bin_type=True))
                ).decode(),
            },
        }

    @staticmethod
    def _pending_answer(node_id: str) -> dict[str, Any]:
        """A node governance has not trusted learns its own status and nothing else."""
        return {"node_id": node_id, "node_status": "Pending"}

    @staticmethod
    def _pending_nodes(tx: Tx) -> int:
        return sum(
            1
            for _, value in tx.items(gt.NODES_INFO)
            if gt.load_json(value, what=gt.NODES_INFO).get("status") == "Pending"
        )

    def _peers(self, tx: Tx) -> list[dict[str, str]]:
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

    def start_joining(self) -> None:
        """Joiner side: a fresh identity, sealed at once so a restart keeps it."""
        self._set_identity(Identity(node_key=certs.new_key()))
        self.state = "Pending"
        self.seal()

    def resume_joining(self) -> None:
        """A joiner restarted before it was trusted joins again under its sealed identity.
        It acknowledged the entries in its ledger as a learner, so it must not forget them:
        `replay_as_learner` puts them back in its log (its state waits for the secrets),
        then `resumed_joining` restarts Raft on them."""
        self.state = "Pending"
        self._replayed = []

    def replay_as_learner(self, raw: bytes) -> None:
        decoded, _ = decode_entry(raw)
        public = dict(decoded.public)
        self._replayed.append(
            LogEntry(
                decoded.seqno,
                decoded.view,
                raw,
                SIGNATURES_TABLE in public,
                self._configuration_if_changed(public),
            )
        )

    def resume_pending_snapshot(
        self, data: bytes, name: str = "snapshot", service_cert_pem: str | None = None
    ) -> int:
        """A pending joiner whose ledger starts after the snapshot it was given: checked
        against the service cert it joins (its own once sealed, else `service_cert_pem`)."""
        verified = self._verify_snapshot(data, name, service_cert_pem)
        snapshot = verified.snapshot
        self._install_snapshot(snapshot, b"")
        self.join_snapshot = snapshot
        self.latest_snapshot, self.latest_snapshot_name = data, name
        return snapshot.seqno

    def resumed_joining(self) -> None:
        assert self.identity is not None
        entries, self._replayed = self._replayed, []
        base_seqno, base_view = self._replay_base
        if not entries and not base_seqno:
            # Nothing was replicated to it (a node is not contacted before it is trusted):
            # it starts like a new joiner, from the snapshot it will be given.
            LOG.info("event=rejoining node_id=%s entries=0", self.identity.node_id)
            return
        self.raft = Raft.restore(
            self.identity.node_id,
            config=self.raft_config(),
            start=StartState(
                configuration=self._voters() if base_seqno else frozenset(),
                last_index=base_seqno,
                last_term=base_view,
                commit_index=base_seqno,
                term=max(self.identity.term, base_view),
                voted_for=self.identity.voted_for,
            ),
            entries=entries,
            rng_seed=int.from_bytes(os.urandom(8), "little"),
        )
        self.deferred = list(entries)
        LOG.info("event=rejoining node_id=%s entries=%d", self.identity.node_id, len(entries))

    def join_request_body(self) -> dict[str, Any]:
        assert self.identity is not None
        quote_info = self.platform.evidence(self.identity.public_key_der).quote_info()
        return {
            "want_snapshot": self.raft is None,
            "public_key": certs.public_key_pem(self.identity.node_key.public_key()),
            "quote": quote_info["quote"],
            "quote_format": quote_info["format"],
            "endorsements": quote_info["endorsements"],
            "rpc_address": self.config.published_rpc_address or self.config.rpc_address,
            "node_to_node_address": self._n2n_published(),
        }

    def on_join_response(self, doc: Mapping[str, Any]) -> bool:
        """Act on the primary's answer; True once this node is part of the network.

        Until governance trusts this node the answer holds its status only; then it holds
        the peers, and the service key, ledger secrets and (if asked) the latest snapshot
        sealed to this node's key."""
        assert self.identity is not None
        if doc.get("node_status") != "Trusted":
            return False
        info = doc["network_info"]
        secrets = msgpack.unpackb(
            open_sealed(
                self.identity.node_key,
                base64.b64decode(info["secrets"]),
                max_bytes=JOIN_SECRETS_BYTES_MAX,
            ),
            raw=False,
        )
        for peer in doc.get("peers", []):
            if peer.get("node_id") != self.identity.node_id:
                self._know_peer(str(peer["node_id"]), str(peer["public_key"]), str(peer["address"]))
        if self.raft is None and secrets.get("snapshot"):
            data = bytes(secrets["snapshot"])
            name = f"{secrets.get('snapshot_name') or 'snapshot'} (from the join answer)"
            try:
                verified = self._verify_snapshot(data, name, str(info["service_cert"]))
            except LedgerError as exc:
                # The ledger is never compacted away: without the snapshot this node
                # catches up from the primary's entries, from seqno 1.
                LOG.error("event=snapshot_refused file=%s reason=%s fallback=ledger", name, exc)
            else:
                self._start_from_snapshot(verified, data)
        if self.raft is None:
            self.raft = Raft(
                self.identity.node_id,
                config=self.raft_config(),
                start=StartState(configuration=frozenset()),
                rng_seed=int.from_bytes(os.urandom(8), "little"),
            )
        self.identity.service_key = certs.load_key(secrets["service_key"])
        self.identity.service_cert_pem = str(info["service_cert"])
        self.identity.ledger_secrets = [(int(s), bytes(k)) for s, k in secrets["ledger_secrets"]]
        self.identity.node_cert_pem = str(info["endorsed_cert"])
        self.tls.set_identity(self.identity.node_cert_pem, certs.key_pem(self.identity.node_key))
        if self.join_snapshot is not None:
            snapshot, self.join_snapshot = self.join_snapshot, None
            private = snapshot.decrypt_private(self.identity.secret_for(snapshot.seqno))
            self.store.restore(snapshot.public_tables, private, snapshot.seqno)
        deferred, self.deferred = self.deferred, []
        for entry in deferred:
            if entry.index > self.applied_seqno:
                self._apply_replicated(entry)
        self.state = "PartOfNetwork"
        self.seal()
        self._refresh_client_cas()
        self._refresh_peers()
        LOG.info("event=joined node_id=%s applied=%d", self.identity.node_id, self.applied_seqno)
        return True

    # ------------------------------------------------------------------ status and receipts
    def tx_status(self, view: int, seqno: int) -> str:
        """CCF's status of a transaction id, as this node knows it."""
        return evaluate_tx_status(
            view=view,
            seqno=seqno,
            local_view=self.view_at(seqno),
            committed_view=self.view_at(self.commit_seqno),
            committed_seqno=self.commit_seqno,
        )

    def receipt(self, view: int, seqno: int, *, cose: bool = False) -> HttpResponse:
        status = self.tx_status(view, seqno)
        if status == TxStatus.INVALID:
            return error_response(404, "TransactionInvalid", f"{view}.{seqno} is invalid")
        if status == TxStatus.UNKNOWN:
            return error_response(404, "TransactionNotFound", f"{view}.{seqno} is unknown")
        if seqno < self.history.tree.min_index:
            return error_response(
                404,
                "ReceiptNotAvailable",
                "receipts are served for the last "
                f"{self.config.memory.receipt_transactions} transactions only",
            )
        if not cose and status == TxStatus.COMMITTED and self.history.is_signature(seqno):
            # As CCF: a signature transaction's receipt is its own signature over the root it
            # records (`is_signature_transaction: true`, `leaf` = that root, no proof).
            own = self.history.signature_after(seqno - 1)
            assert own is not None and own.seqno == seqno, "a signature holds its own record"
            doc = receipt.build_signature_receipt(
                node_cert_pem=own.node_cert_pem or "",
                node_id=own.node_id,
                signature=own.signature,
                root=own.root,
            )
            return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
        material = self.history.receipt_material(seqno) if status == TxStatus.COMMITTED else None
        if material is None or material[1].seqno > self.commit_seqno:
            return HttpResponse(
                202,
                b'{"status":"Pending"}',
                {"Retry-After": RETRY_AFTER_S},
                "application/json",
            )
        proof, signature = material
        wsd, evidence, claims = self.history.leaf_components(seqno)
        assert evidence is not None, "the enclave holds the ledger secret"
        if cose:
            body = receipt.build_cose_receipt(
                signature.cose_sign1,
                write_set_digest=wsd,
                commit_evidence=evidence,
                claims_digest=claims,
                proof=proof,
            )
            return HttpResponse(200, body, {}, "application/cose")
        doc = receipt.build_json_receipt(
            node_cert_pem=signature.node_cert_pem or "",
            node_id=signature.node_id,
            signature=signature.signature,
            proof=proof,
            write_set_digest=wsd,
            commit_evidence=evidence,
            claims_digest=claims,
        )

        return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")


_N2N_FIELDS: dict[str, tuple[type, ...]] = {
    "raft": (bytes,),
    # forward id, method, path, query, headers [[name, value]], body, caller cert DER
    "fwd": (int, str, str, str, list, bytes, bytes),
    # forward id, status, headers, content type (or None), body
    "fwd_resp": (int, int, list, (str, type(None)), bytes),  # type: ignore[dict-item]
}


def _n2n_message(message: Any) -> tuple[str, list[Any]]:
    """Check a node-to-node message's shape and field types (TypeError if wrong)."""
    if not isinstance(message, list) or not message or message[0] not in _N2N_FIELDS:
        raise TypeError("not a node-to-node message")
    kind, fields = message[0], message[1:]
    types = _N2N_FIELDS[kind]
    if len(fields) != len(types) or not all(
        isinstance(value, kind_) for value, kind_ in zip(fields, types, strict=True)
    ):
        raise TypeError(f"malformed {kind} message")
    if kind in ("fwd", "fwd_resp"):
        for pair in fields[4 if kind == "fwd" else 2]:
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            ):
                raise TypeError("malformed headers")
    return kind, fields


class RollbackError(Exception):
    """The host handed back less ledger than this node had committed."""


class AuthError(Exception):
    """The caller's credentials meet none of the endpoint's policies."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A request sent on to the primary; its answer arrives via `on_forward_response`."""

    forward_id: int
    primary: str


_FORWARDED_HEADERS = frozenset({"content-type", "accept", "authorization"})


def _unavailable(code: str, message: str) -> HttpResponse:
    response = error_response(503, code, message)
    return HttpResponse(503, response.body, {"Retry-After": RETRY_AFTER_S}, response.content_type)
