"""The enclave's node: a facade over its parts, with the API the runtime uses.

`Node` does no I/O. The runtime loop (`charter.enclave_app.main`) feeds it inputs (a
request, a tick, a durability report, a peer message), then calls `settle()` — Raft's
Ready/Advance, signatures and snapshots that fell due — and sends the frames left in
`outbox` to the host. Every write transaction runs to completion inside one call, in order,
so handlers see a serial history and nothing ever conflicts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from charter.consensus import LogEntry, Raft, StartState
from charter.enclave_app import interface as itf
from charter.enclave_app.app import App, Caller, HttpResponse
from charter.enclave_app.auth import AuthFailure
from charter.enclave_app.channels import Channels
from charter.enclave_app.entropy import SYSTEM_ENTROPY, Entropy
from charter.enclave_app.errors import HttpError
from charter.enclave_app.frontend import AuthError, Forwarded, Frontend, unavailable
from charter.enclave_app.identity import Identity
from charter.enclave_app.indexing import LiveIndex
from charter.enclave_app.interface.logs import REPEATS_LIMITED
from charter.enclave_app.kv import Store, Tx
from charter.enclave_app.node import certificates, messages, shares
from charter.enclave_app.node.core import NodeCore, NodeNotReady, write_genesis
from charter.enclave_app.node.historical import HistoricalCache
from charter.enclave_app.node.joins import (
    Joiner,
    apply_effects,
    join_request,
    open_answer,
    request_body,
)
from charter.enclave_app.node.lifecycle import IllegalTransition, NodeState
from charter.enclave_app.node.peers import Peers
from charter.enclave_app.node.receipts import Receipts
from charter.enclave_app.node.recovery import Recovery, RecoveryError
from charter.enclave_app.node.rekey import LedgerSecrets
from charter.enclave_app.node.replication import (
    LocalLog,
    Replication,
    cose_signatures_config,
    log_entry_from_raw,
)
from charter.enclave_app.node.restart import restart_raft
from charter.enclave_app.node.retirement import Retirement
from charter.enclave_app.node.snapshots import SnapshotEncoder, Snapshots
from charter.enclave_app.platform import Platform
from charter.enclave_app.runtime_view import RuntimeView
from charter.enclave_app.tls import ServerTls
from charter.governance import tables as gt
from charter.governance.effects import Effects
from charter.ledger import certs
from charter.ledger.entry import WriteSet
from charter.ledger.history import History
from charter.ledger.signatures import (
    CoseSignaturesConfig,
)

LOG = logging.getLogger(__name__)

# One `settle` acts on at most this many Ready / signature / snapshot steps; each step
# makes the next one smaller, so more means a loop that feeds itself (a bug).
SETTLE_STEPS_MAX = 64
# How often a primary looks again for Retired nodes it has not told yet.
RETIRED_RECHECK_MS = 10_000
# The states in which a node serves clients (a recovering one serves governance).
SERVING_STATES = (
    NodeState.PART_OF_NETWORK,
    NodeState.PART_OF_PUBLIC_NETWORK,
    NodeState.READING_PRIVATE_LEDGER,
)


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
        entropy: Entropy = SYSTEM_ENTROPY,
        snapshot_encoder: SnapshotEncoder | None = None,
    ) -> None:
        core = self.core = NodeCore(config, platform, clock_s, entropy)
        self.log = LocalLog(core)
        self.snapshots = Snapshots(core, self.log)
        if snapshot_encoder is not None:
            # Off the node's loop (the runtime's fork); its results come back through
            # `snapshot_encoded` / `snapshot_encode_failed`. Else encoded at once, in order.
            self.snapshots.encoder = snapshot_encoder
        self.log.on_replicated = self._on_replicated
        self.log.on_rollback = self.snapshots.rolled_back
        self.historical = HistoricalCache(
            history=lambda: self.log.history,
            identity=core.maybe_identity,
            commit_seqno=lambda: self.log.commit_seqno,
            send=lambda frame: core.outbox.append(frame),
            soft_limit_bytes=config.historical_cache_soft_limit,
            signing_service_cert=self.signing_service_cert,
        )
        self.receipts = Receipts(core, self.log, self.historical)
        self._joiner = Joiner(core, self.snapshots, self._start_replication)
        # Both exist once the node has an identity (peers) and runs Raft (replication).
        self.peers: Peers | None = None
        self.replication: Replication | None = None
        self.retirement = Retirement(core)
        # Rekey and recovery shares; installs new ledger secrets from the replicated record.
        self.secrets = LedgerSecrets(core, seal=lambda: core.seal(self.raft))
        # Exists while this node recovers an old service's ledger (start mode `recover`).
        self.recovery: Recovery | None = None
        self._retired_checked_ms = 0
        # Entries of the own ledger read back by a restart, until Raft restarts on them.
        self._replayed: list[LogEntry] = []
        # Called with (forward id, response) when a forwarded request's answer arrives.
        self.on_forward_response: Callable[[int, HttpResponse], None] = lambda *_: None
        # What the host has yet to take from this enclave, in bytes (the runtime sets it).
        self.host_backlog_bytes: Callable[[], int] = lambda: core.outbox_write_bytes
        self.routes = App("charter", prefix="", api_path=None)
        for extra in extra_apps:
            self.routes.include(extra)
        self.routes.include(app)
        core.indexer = core.new_indexer(self.routes.index_strategies)
        self.runtime_view = RuntimeView(self)
        self.frontend = Frontend(
            self,
            core.store,
            self.routes,
            self.runtime_view,
            max_uncommitted_tx_count=config.consensus.max_uncommitted_tx_count,
            clock_s=clock_s,
            metrics=core.metrics,
        )
        core.store.add_hook(gt.USERS_CERTS, lambda *_: self._refresh_client_cas())
        core.store.add_hook(gt.MEMBERS_CERTS, lambda *_: self._refresh_client_cas())
        core.store.add_hook(gt.NODES_INFO, lambda *_: self._refresh_peers())
        core.store.add_hook(gt.SERVICE_INFO, lambda *_: self._refresh_certificates())
        core.store.add_hook(gt.NODES_ENDORSED_CERTIFICATES, lambda *_: self._refresh_certificates())

    # ------------------------------------------------------------------ what others read
    @property
    def config(self) -> itf.NodeConfig:
        return self.core.config

    @property
    def platform(self) -> Platform:
        return self.core.platform

    @property
    def metrics(self) -> dict[str, int]:
        return self.core.metrics

    @property
    def store(self) -> Store:
        return self.core.store

    @property
    def history(self) -> History:
        return self.core.history

    @property
    def tls(self) -> ServerTls:
        return self.core.tls

    @property
    def identity(self) -> Identity | None:
        return self.core.maybe_identity()

    @property
    def raft(self) -> Raft | None:
        return self.replication.raft if self.replication is not None else None

    @property
    def channels(self) -> Channels | None:
        return self.peers.channels if self.peers is not None else None

    @property
    def peer_addresses(self) -> dict[str, str]:
        return self.peers.addresses if self.peers is not None else {}

    @property
    def deferred(self) -> list[LogEntry]:
        return self.replication.deferred if self.replication is not None else []

    @property
    def outbox(self) -> list[itf.Frame]:
        return self.core.outbox

    @outbox.setter
    def outbox(self, frames: list[itf.Frame]) -> None:
        self.core.outbox = frames

    @property
    def outbox_write_bytes(self) -> int:
        return self.core.outbox_write_bytes

    @outbox_write_bytes.setter
    def outbox_write_bytes(self, size: int) -> None:
        self.core.outbox_write_bytes = size

    @property
    def state(self) -> str:
        return self.core.lifecycle.state.value

    @property
    def retired(self) -> bool:
        return self.retirement.retired

    @property
    def applied_seqno(self) -> int:
        return self.log.applied_seqno

    @property
    def commit_seqno(self) -> int:
        return self.log.commit_seqno

    @property
    def latest_snapshot(self) -> bytes | None:
        return self.snapshots.latest

    @property
    def latest_snapshot_name(self) -> str | None:
        return self.snapshots.latest_name

    @property
    def node_id(self) -> str:
        return self.core.identity.node_id

    @property
    def ready(self) -> bool:
        return self.replication is not None

    @property
    def is_primary(self) -> bool:
        return self.replication is not None and self.replication.is_primary

    @property
    def uncommitted_tx_count(self) -> int:
        return self.log.applied_seqno - self.log.commit_seqno

    @property
    def serving(self) -> bool:
        """Can client connections be served: the node is part of the network and its TLS
        context asks for the client certificates of every registered user and member."""
        return (
            self.core.lifecycle.is_(*SERVING_STATES)
            and self.replication is not None
            and self.core.tls.ready
        )

    def service_status(self) -> str | None:
        return self.frontend.service_status

    def now_s(self) -> int:
        return self.core.now_s()

    def view_at(self, seqno: int) -> int | None:
        return self.log.view_at(seqno)

    def merkle_root(self) -> bytes:
        return self.core.history.tree.root()

    def tx_status(self, view: int, seqno: int) -> str:
        return self.receipts.tx_status(view, seqno)

    def signing_service_cert(self, seqno: int) -> str | None:
        """After recoveries: a certificate of the key of the earlier service that signed at
        `seqno` (the endorsement of that key by the recovery that followed it), or None when
        the current service signed it."""
        endorsements = self.receipts.endorsements_for(seqno)
        return endorsements[0] if endorsements else None

    def service_endorsements(self, seqno: int) -> list[str]:
        """After recoveries: the endorsements chaining the signer of `seqno` to this service."""
        return self.receipts.endorsements_for(seqno)

    def receipt(self, view: int, seqno: int, *, cose: bool = False) -> HttpResponse:
        return self.receipts.receipt(view, seqno, cose=cose)

    def _rep(self) -> Replication:
        if self.replication is None:
            raise NodeNotReady("the node does not run Raft yet")
        return self.replication

    def _peers(self) -> Peers:
        if self.peers is None:
            raise NodeNotReady("the node has no identity yet")
        return self.peers

    # ------------------------------------------------------------------ identity and Raft
    def _set_identity(self, identity: Identity) -> None:
        identity.epoch += 1
        self.core.set_identity(identity)
        self.peers = Peers(self.core, Channels(identity.node_key, epoch=identity.epoch))
        if identity.node_cert_pem:
            self.core.tls.set_identity(identity.node_cert_pem, certs.key_pem(identity.node_key))

    def _start_replication(self, raft: Raft) -> Replication:
        assert self.replication is None, "one Raft per node life"
        self.replication = Replication(self.core, self.log, raft, self._peers().send_raft)
        return self.replication

    # ------------------------------------------------------------------ start
    def start_new_network(self, members: list[dict[str, Any]], constitution: Any) -> None:
        """Genesis: create the service identity and the first ledger transactions."""
        core = self.core
        core.lifecycle.expect(NodeState.UNINITIALIZED, action="start_new_network")
        identity = certificates.new_service_identity(core, 1)
        self._set_identity(identity)
        raft = core.new_raft(StartState(configuration=frozenset({identity.node_id})))
        raft.campaign()
        replication = self._start_replication(raft)
        self.settle()
        assert replication.is_primary, "a one-node configuration elects itself"
        tx = core.store.begin()
        write_genesis(core, tx, members, constitution, f"{raft.view}.{raft.last_index + 1}")
        replication.commit_tx(tx)
        replication.signature_due = True
        self.settle()
        core.lifecycle.advance(NodeState.PART_OF_NETWORK)
        core.seal(raft)
        LOG.info("event=network_started node_id=%s", identity.node_id)

    def seal_progress(self) -> None:
        """Seal how far this node's own ledger is committed (committed and durable here)."""
        if self.replication is not None:
            self.replication.seal_progress()

    # ------------------------------------------------------------------ restart
    def resume(self, sealed: bytes) -> None:
        """Restart under the same identity: unseal, then `replay` the ledger, then `resumed`."""
        core = self.core
        core.lifecycle.expect(NodeState.UNINITIALIZED, action="resume")
        self._set_identity(Identity.from_bytes(core.platform.unseal(sealed)))
        # The new channel epoch must be durable before any frame uses it (nonce reuse).
        core.seal(None)
        core.lifecycle.advance(NodeState.READING_OWN_LEDGER)
        self._replayed = []

    def replay(self, raw: bytes) -> None:
        """One entry of the node's own ledger, read back from the untrusted host."""
        self.core.lifecycle.expect(NodeState.READING_OWN_LEDGER, action="replay")
        self._replayed.append(self.log.replay(raw, self.core.identity))

    def resume_from_snapshot(self, data: bytes, name: str = "snapshot") -> int:
        """Restart of a node whose ledger starts after a snapshot: install it first, once it
        has verified against the service cert (raises the LedgerError naming `name` if not)."""
        self.core.lifecycle.expect(NodeState.READING_OWN_LEDGER, action="resume_from_snapshot")
        return self.snapshots.resume_from(data, name)

    def offer_snapshot_from_disk(self, data: bytes, name: str) -> bool:
        """A restarted node whose ledger is whole may still serve its latest snapshot file,
        once it has checked it (the host could have changed it)."""
        return self.snapshots.offer(data, name) is not None

    def resumed(self) -> None:
        """All of the own ledger is replayed: restart Raft on it and carry on."""
        core, log = self.core, self.log
        core.lifecycle.expect(NodeState.READING_OWN_LEDGER, action="resumed")
        entries, self._replayed = self._replayed, []
        snapshots = self.snapshots
        raft = restart_raft(core, log, snapshots.replay_base, snapshots.replay_base_voters, entries)
        self._start_replication(raft).resume_commit()
        core.lifecycle.advance(NodeState.PART_OF_NETWORK)
        self.settle()
        self._refresh_client_cas()
        self._refresh_certificates()
        self._refresh_peers()
        LOG.info("event=resumed node_id=%s seqno=%d", self.node_id, log.applied_seqno)

    # ------------------------------------------------------------------ recovery
    def start_recovery(self, previous_service_cert_pem: str) -> None:
        """Recover an old service: `replay_public` its ledger, then `public_ledger_replayed`
        (see `node/recovery.py`)."""
        core = self.core
        core.lifecycle.expect(NodeState.UNINITIALIZED, action="start_recovery")
        self.recovery = Recovery(core, self.log, previous_service_cert_pem)
        core.lifecycle.advance(NodeState.READING_PUBLIC_LEDGER)

    def replay_public(self, raw: bytes) -> None:
        """One entry of the old ledger, read back from the untrusted host."""
        assert self.recovery is not None, "start_recovery first"
        self.recovery.replay_public(raw)

    def public_ledger_replayed(self) -> None:
        """The old ledger is replayed (up to its last valid signature): start the new
        service on it, as its only node, with the recovery transaction."""
        core, recovery = self.core, self.recovery
        assert recovery is not None, "start_recovery first"
        core.lifecycle.expect(NodeState.READING_PUBLIC_LEDGER, action="public_ledger_replayed")
        keep = recovery.finish_public()
        identity = recovery.new_identity()
        self._set_identity(identity)
        view = recovery.last_view
        raft = core.new_raft(
            StartState(
                configuration=frozenset({identity.node_id}),
                last_index=keep,
                last_term=view,
                commit_index=keep,
                term=view,
            )
        )
        raft.campaign()
        replication = self._start_replication(raft)
        self.settle()
        assert replication.is_primary, "a one-node configuration elects itself"
        tx = core.store.begin()
        recovery.write_recovery_tx(tx, f"{raft.view}.{raft.last_index + 1}")
        replication.commit_tx(tx)
        replication.signature_due = True
        self.settle()
        core.lifecycle.advance(NodeState.PART_OF_PUBLIC_NETWORK)
        core.seal(raft)
        self._refresh_client_cas()
        self._refresh_certificates()
        self._refresh_peers()
        LOG.info("event=recovery_started node_id=%s recovered_seqno=%d", identity.node_id, keep)

    def _finish_recovery(self, replication: Replication) -> None:
        """The private state is checked (`Recovery.start_private_replay`): put it back and
        open the service, in a transaction of its own."""
        recovery = self.recovery
        assert recovery is not None
        recovery.finish_private_replay()
        tx = self.core.store.begin()
        self._link_recovered_secrets(tx)
        recovery.open_service(tx)
        replication.commit_tx(tx)
        replication.signature_due = True
        self.core.lifecycle.advance(NodeState.PART_OF_NETWORK)
        self.core.seal(replication.raft)
        self.recovery = None
        self._refresh_client_cas()
        LOG.info("event=recovery_complete node_id=%s", self.node_id)

    def _link_recovered_secrets(self, tx: Tx) -> None:
        """In the transaction that opens a recovered service: the old service's latest
        secret goes into the chain under this node's fresh one, the members' submitted
        shares are cleared (as CCF), and shares are issued for the fresh secret, so that
        the next recovery walks the whole chain back to seqno 1."""
        core = self.core
        secrets = core.identity.ledger_secrets
        assert len(secrets) >= 2, "the old secrets and the fresh one"
        (previous_start, previous), (start, fresh) = secrets[-2], secrets[-1]
        shares.wrap_previous_secret(
            tx,
            previous_start=previous_start,
            previous=previous,
            next_start=start,
            successor=fresh,
            iv=core.entropy.token_bytes(shares.GCM_IV_BYTES),
        )
        shares.clear_submitted_shares(tx)
        if not self.secrets.refresh_shares(tx):
            LOG.warning("event=recovered_service_without_shares")

    # ------------------------------------------------------------------ joining
    def join_request(self, tx: Tx, request: Mapping[str, Any]) -> dict[str, Any]:
        """Primary side of a join (`joins.join_request`)."""
        if self.recovery is not None:
            # A joiner would need the old ledger secrets, which the shares have not
            # revealed yet: it retries, and joins once the recovered service is open.
            raise HttpError(
                "The service is recovering: nodes join once it is open", code="ServiceNotReady"
            )
        snapshots = self.snapshots
        latest = (snapshots.latest, snapshots.latest_name) if snapshots.latest else None
        peers = self.peers
        return join_request(
            self.core,
            tx,
            request,
            latest,
            trust_committed=lambda node_id: (
                peers is not None and peers.trust_committed(node_id, self.commit_seqno)
            ),
        )

    def start_joining(self) -> None:
        """Joiner side: a fresh identity, sealed at once so a restart keeps it."""
        core = self.core
        core.lifecycle.expect(NodeState.UNINITIALIZED, action="start_joining")
        self._set_identity(Identity(node_key=core.entropy.new_ec_key()))
        core.lifecycle.advance(NodeState.PENDING)
        core.seal(None)

    def resume_joining(self) -> None:
        """A joiner restarted before it was trusted joins again under its sealed identity.
        It acknowledged the entries in its ledger as a learner, so it must not forget them:
        `replay_as_learner` puts them back in its log (its state waits for the secrets),
        then `resumed_joining` restarts Raft on them."""
        lifecycle = self.core.lifecycle
        lifecycle.expect(NodeState.READING_OWN_LEDGER, NodeState.PENDING, action="resume_joining")
        if not lifecycle.is_(NodeState.PENDING):
            lifecycle.advance(NodeState.PENDING)
        self._replayed = []

    def replay_as_learner(self, raw: bytes) -> None:
        self.core.lifecycle.expect(NodeState.PENDING, action="replay_as_learner")
        self._replayed.append(log_entry_from_raw(raw))

    def resume_pending_snapshot(
        self, data: bytes, name: str = "snapshot", service_cert_pem: str | None = None
    ) -> int:
        """A pending joiner whose ledger starts after the snapshot it was given: checked
        against the service cert it joins (its own once sealed, else `service_cert_pem`)."""
        self.core.lifecycle.expect(NodeState.PENDING, action="resume_pending_snapshot")
        verified = self.snapshots.verify(data, name, service_cert_pem)
        return self.snapshots.install_public(verified, data, name).seqno

    def resumed_joining(self) -> None:
        """Restart Raft on what `replay_as_learner` put back (if anything)."""
        self.core.lifecycle.expect(NodeState.PENDING, action="resumed_joining")
        entries, self._replayed = self._replayed, []
        self._joiner.resumed(entries)

    def join_request_body(self) -> dict[str, Any]:
        want = self.replication is None and self._joiner.local_snapshot is None
        return request_body(self.core, want_snapshot=want)

    def use_local_join_snapshot(self, data: bytes, name: str, service_cert_pem: str) -> int:
        """A fresh joiner found a committed snapshot in its snapshots directory (the operator
        copied it from any trusted node): it starts from it once trusted, if it verifies
        against the pinned service certificate now; raises the LedgerError naming the file
        if not (a forged digest, a changed byte). Returns the snapshot's seqno."""
        verified = self.snapshots.verify(data, name, service_cert_pem)
        self._joiner.local_snapshot = (data, name)
        LOG.info("event=join_snapshot_found file=%s seqno=%d", name, verified.snapshot.seqno)
        return verified.snapshot.seqno

    def on_join_response(self, doc: Mapping[str, Any]) -> bool:
        """Act on the primary's answer; True once this node is part of the network.

        Until governance trusts this node the answer holds its status only; then it holds
        the peers, and the service key, ledger secrets and (if asked) the latest snapshot
        sealed to this node's key."""
        core = self.core
        core.lifecycle.expect(NodeState.PENDING, action="on_join_response")
        answer = open_answer(core, doc)
        if answer is None:
            return False
        replication = self._joiner.adopt(answer, self._peers(), self.replication)
        core.lifecycle.advance(NodeState.PART_OF_NETWORK)
        core.seal(replication.raft)
        self._refresh_client_cas()
        self._refresh_peers()
        LOG.info("event=joined node_id=%s applied=%d", self.node_id, self.log.applied_seqno)
        return True

    # ------------------------------------------------------------------ writes
    def commit_tx(self, tx: Tx, claims_digest: bytes | None = None) -> tuple[int, int]:
        """Append a write transaction (primary only); returns its (view, seqno)."""
        return self._rep().commit_tx(tx, claims_digest)

    commit = commit_tx

    def emit_signature(self) -> None:
        """Sign the Merkle root now (and take a snapshot if one falls due)."""
        self._rep().signature_due = True
        self.settle()

    def cose_signatures_config(self) -> CoseSignaturesConfig:
        return cose_signatures_config(self.core.store)

    def apply_effects(self, tx: Tx, effects: Effects) -> None:
        """Carry out what an accepted proposal asks beyond its own KV writes, in its tx."""
        apply_effects(self.core, tx, effects)
        self.secrets.apply_effects(tx, effects)
        self._file_triggers(effects.trigger_snapshot, effects.trigger_ledger_chunk)

    # ------------------------------------------------------------------ recovery shares
    def share_storage_key(self) -> bytes | None:
        """The key submitted recovery shares are stored under: the latest ledger secret."""
        identity = self.core.maybe_identity()
        return identity.ledger_secrets[-1][1] if identity and identity.ledger_secrets else None

    def on_recovery_shares_complete(self, secrets: list[tuple[int, bytes]]) -> None:
        """Members submitted enough shares: `secrets` are the old service's ledger secrets,
        recovered from seqno 1. This node's own fresh secret (from the seqno the recovered
        service starts at) is appended, and the recovery part checks the private ledger
        with them; `settle` then puts it back and opens the service.

        Refused with an HttpError, in the submitting transaction, which the caller then
        drops: nothing changes. The k-1 shares submitted before stay (and the k-th is not
        stored). CCF clears them instead, so that members start over, because it cannot
        tell which share was wrong; here every share was checked against its digest when
        it was submitted, so a refusal at this point is about the ledger copy (the secrets
        do not decrypt it), and submitting the same shares again would not help either."""
        recovery = self.recovery
        identity = self.core.maybe_identity()
        if recovery is None or identity is None:
            raise HttpError("The service is not recovering", code="ServiceNotRecovering")
        fresh = identity.ledger_secrets[-1]
        assert fresh[0] == (recovery.recovery_target_seqno or 0) + 1, "the node's own secret"
        try:
            recovery.start_private_replay([*secrets, fresh])
        except (RecoveryError, IllegalTransition) as exc:
            LOG.warning("event=private_replay_refused reason=%s", type(exc).__name__)
            raise HttpError(str(exc), code="RecoveryLedgerMismatch") from None

    def _file_triggers(self, snapshot: bool, ledger_chunk: bool) -> None:
        """trigger_snapshot / trigger_ledger_chunk: the next signature takes a snapshot /
        ends the chunk (on a backup: so that it snapshots where the primary does, and a
        backup that becomes primary before that signature still honours them)."""
        if snapshot:
            self.snapshots.forced = True
            LOG.info("event=snapshot_triggered")
        if ledger_chunk:
            self.log.chunks.forced = True
            LOG.info("event=ledger_chunk_triggered")

    def _on_replicated(self, seqno: int, view: int, public: WriteSet) -> None:
        triggers = public.get(gt.FILE_TRIGGERS, {})
        self._file_triggers(b"snapshot" in triggers, b"ledger_chunk" in triggers)
        self.snapshots.on_replicated(seqno, view, public)

    # ------------------------------------------------------------------ Ready and Advance
    def end_turn(self) -> None:
        """The runtime's event-loop turn is over: note how many writes it served (the
        signature rule under light load, `Replication.end_turn`), then settle."""
        if self.replication is not None:
            self.replication.end_turn()
        self.settle()

    def settle(self) -> None:
        """Act on everything that fell due: Raft's Ready (persist, send, apply, commit), a
        signature, a snapshot. Each is marked where it falls due and done here, after the
        step that caused it, so no part ever calls back into itself."""
        replication = self.replication
        if replication is None:
            return
        peers = self._peers()  # exists once replication does
        for _ in range(SETTLE_STEPS_MAX):
            recovery = self.recovery
            if recovery is not None and recovery.private_replay_due and replication.is_primary:
                self._finish_recovery(replication)
            elif self.snapshots.due is not None:
                self.snapshots.take_due(replication)
            elif self.snapshots.completable():
                self.snapshots.complete(replication)
                # A backup's candidate whose evidence committed while it was encoding: its
                # file completes now, not at a later commit that may never come.
                self.snapshots.finish(self.receipts.receipt)
            elif replication.raft.has_ready():
                self._act_on_ready(replication)
            elif replication.is_primary and (untold := self.retirement.untold_released(peers)):
                self.retirement.record_retired_committed(replication, peers, untold)
            elif replication.signature_due:
                if replication.is_primary:
                    view, seqno = replication.emit_signature()
                    if self.core.lifecycle.is_(NodeState.PART_OF_NETWORK):
                        # Not while recovering: the private state is not back yet.
                        self.snapshots.after_signature(seqno, view)
                else:
                    replication.signature_due = False  # a backup signs nothing
            else:
                return
        raise AssertionError(f"settle did not settle in {SETTLE_STEPS_MAX} steps")

    def _act_on_ready(self, replication: Replication) -> None:
        outcome = replication.process_ready()
        self.core.metrics["ready_turns"] += 1
        peers = self._peers()
        peers.released.update(outcome.released)
        if outcome.committed is not None:
            self.snapshots.finish(self.receipts.receipt)
            self.retirement.after_commit(outcome.committed, replication, peers)
        if outcome.became_primary and self.core.lifecycle.is_(NodeState.PART_OF_NETWORK):
            # A new primary signs at once, so what it inherited can commit, and
            # replicates to the nodes still waiting to be trusted.
            self._refresh_peers()
            replication.signature_due = True
        elif outcome.became_retired:
            self.retirement.become_retired()

    # ------------------------------------------------------------------ host events
    def tick(self, now_ms: int) -> None:
        self.historical.tick(now_ms)
        replication = self.replication
        if replication is None:
            return
        replication.tick(now_ms)
        if replication.is_primary and self.core.lifecycle.is_(*SERVING_STATES):
            replication.maybe_reconfigure(self._peers().trusted_nodes())
            if now_ms - self._retired_checked_ms >= RETIRED_RECHECK_MS:
                # Retired nodes not yet told, that Raft gave up on while they were silent
                # (down, or cut off): try them again now and then.
                self._retired_checked_ms = now_ms
                self._refresh_peers()
        self.settle()

    def snapshot_encoded(self, seqno: int, entry: bytes) -> None:
        """The snapshot encoder's entry of the state at signature `seqno`: the primary
        records its evidence, a backup keeps it as its candidate."""
        self.snapshots.encoded(seqno, entry)
        self.settle()

    def snapshot_encode_failed(self, seqno: int, reason: str) -> None:
        """The snapshot encoder failed at `seqno` (logged): the next due signature tries again."""
        self.snapshots.encode_failed(seqno, reason)
        self.settle()

    def next_deadline_ms(self) -> int | None:
        """When (on `tick`'s clock, the host's) something falls due between the host's
        ticks: a signature (`Replication.signature_deadline_ms`). None when nothing does.
        The runtime calls `deadline_reached` then."""
        replication = self.replication
        return None if replication is None else replication.signature_deadline_ms()

    def deadline_reached(self, now_ms: int) -> None:
        """The runtime's deadline timer ran out at `now_ms` (host clock, extrapolated)."""
        replication = self.replication
        if replication is not None:
            replication.deadline_reached(now_ms)
            self.settle()

    def durable(self, seqno: int, view: int = 0) -> None:
        if self.replication is None:
            return
        self.replication.raft.durable(seqno, view or None)
        if self.replication.trace is not None:
            self.replication.trace.durable(self.replication.raft.durable_index)
        self.settle()

    def on_entries_read(self, frame: itf.EntriesRead) -> None:
        """Entries the host read back for a historical query or a lagging peer."""
        if self.historical.owns(frame.request_id):
            self.historical.on_entries_read(frame)
            return
        if self.replication is None:
            return
        self.replication.on_entries_read(frame)
        self.settle()

    def on_index_blob(self, frame: itf.IndexBlobFetched) -> None:
        """An index bucket the host sends back (checked by the indexer before use)."""
        self.core.indexer.on_blob_fetched(frame)

    def index(self, name: str) -> LiveIndex:
        """This node's live index built from the app's strategy `name` (KeyError if none)."""
        return self.core.indexer.indexes[name]

    def receive_from_peer(self, payload: bytes) -> None:
        """A sealed frame relayed by the host: open, check, dispatch; bad frames are dropped.

        Only decoding and checking are guarded: an error while acting on a well-formed
        message is a bug in this enclave and must stop it rather than be swallowed.
        """
        peers = self.peers
        if peers is None:
            return
        opened = peers.open(payload)
        if opened is None:
            return
        sender, message = opened
        status = peers.status(sender)
        if isinstance(message, messages.RaftFrame):
            replication = self.replication
            if replication is None:
                return
            # The Raft sender must be the channel's peer, and trusted by governance (or by
            # the configuration, for a joiner that knows no governance state yet). A retired
            # node was trusted: it still hands over and learns that its removal committed.
            if message.message.sender != sender or (
                status not in ("Trusted", "Retired")
                and not peers.trusted_by_configuration(sender, replication.raft)
            ):
                self.core.metrics["peer_messages_dropped"] += 1
                LOG.warning(
                    "event=raft_message_refused peer=%s status=%s",
                    sender[:16],
                    status,
                    extra=REPEATS_LIMITED,
                )
                return
            if status == "Retired":
                # Still running, so still untold (e.g. down while its removal committed and
                # restarted since): tell it, whatever was recorded.
                peers.released.discard(sender)
                replication.raft.track_removed(sender, self.core.store.version)
            replication.raft.step(message.message)
            if replication.trace is not None and replication.is_primary:
                replication.trace.acked(sender, replication.raft.peer_match_index(sender))
            self.settle()
        elif isinstance(message, messages.ForwardRequest):
            if status != "Trusted":
                LOG.warning("event=forward_refused peer=%s status=%s", sender[:16], status)
                return
            # Settled with the turn's other writes (see `handle`).
            self._serve_forwarded(peers, sender, message)
        else:
            response = HttpResponse(
                message.status, message.body, dict(message.headers), message.content_type
            )
            self.on_forward_response(message.forward_id, response)

    def _serve_forwarded(self, peers: Peers, sender: str, request: messages.ForwardRequest) -> None:
        """Run a write a trusted backup forwarded with its caller's identity; answer it."""
        response = self.frontend.handle(
            request.method,
            request.path,
            request.query,
            dict(request.headers),
            request.body,
            request.caller_der or None,
            forwarded=True,
        )
        assert isinstance(response, HttpResponse), "a forwarded request is never re-forwarded"
        peers.answer(sender, request.forward_id, response)
        if self.replication is not None:
            # The backup answers its client once it applied the write: send it now.
            self.replication.raft.release_held()

    # ------------------------------------------------------------------ requests
    def _refresh_client_cas(self) -> None:
        if self.core.lifecycle.is_(NodeState.READING_OWN_LEDGER, NodeState.READING_PUBLIC_LEDGER):
            return  # `resumed` (`public_ledger_replayed`) loads them once, from the whole ledger
        tx = self.core.store.begin()
        pems = [v.decode() for _, v in tx.items(gt.USERS_CERTS)]
        pems += [v.decode() for _, v in tx.items(gt.MEMBERS_CERTS)]
        self.core.tls.set_client_cas(pems)

    def _refresh_certificates(self) -> None:
        if self.core.lifecycle.is_(NodeState.READING_OWN_LEDGER) or self.peers is None:
            return  # `resumed` takes them up once, from the whole ledger
        certificates.adopt(self.core)

    def _refresh_peers(self) -> None:
        if self.peers is not None:
            self.peers.refresh(self.raft)

    def authenticate(self, policies: tuple[str, ...], tx: Tx, peer_der: bytes | None) -> Caller:
        """The caller under certificate policies (the console's), or raise `AuthError`."""
        try:
            return self.frontend.authenticate(policies, tx, peer_der).caller
        except AuthFailure:
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
        """Serve one HTTP request (`frontend.Frontend.handle`). A write is proposed to Raft
        but not yet persisted or sent: the runtime calls `settle()` once per event-loop
        turn, so a burst of writes goes out as one write frame and one AppendEntries."""
        return self.frontend.handle(method, path, query, headers, body, peer_der, source=source)

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
        primary = self.raft.leader_id if self.raft is not None else None
        if primary is None or primary not in self.peer_addresses:
            return unavailable("No primary is known; retry shortly", code="NoPrimary")
        return self._peers().forward(primary, method, path, query, headers, body, peer_der)
