"""Snapshots: taking them (primary), completing them once their evidence commits, checking
every snapshot before it is installed or served, and installing one (restart, join).

Only bytes that passed `verify_snapshot` are ever held in `latest` (served on
GET /node/snapshot and to joiners).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable

from charter.consensus.errors import ConsensusError
from charter.enclave_app import interface as itf
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.node.core import (
    SIGNATURES_TABLE,
    SNAPSHOT_EVIDENCE_TABLE,
    TREE_TABLE,
    NodeCore,
)
from charter.enclave_app.node.replication import LocalLog, Replication
from charter.governance import tables as gt
from charter.ledger.entry import WriteSet
from charter.ledger.errors import LedgerError, VerificationError
from charter.ledger.merkle import MerkleTree
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

ReceiptFn = Callable[[int, int], HttpResponse]


class Snapshots:
    """The snapshot side of one node."""

    def __init__(self, core: NodeCore, log: LocalLog) -> None:
        self.core = core
        self.log = log
        self.last_seqno = 0
        # A signature at which a snapshot is due: (seqno, view), taken by the facade's loop.
        self.due: tuple[int, int] | None = None
        # (snapshot seqno, evidence seqno, snapshot entry) until its evidence commits.
        self.pending: tuple[int, int, bytes] | None = None
        # The latest committed snapshot file (entry + receipt) and its file name.
        self.latest: bytes | None = None
        self.latest_name: str | None = None
        # A joiner's snapshot, kept until the ledger secrets arrive to open it.
        self.join_snapshot: Snapshot | None = None
        # (seqno, view) the replayed ledger follows: a snapshot's, or (0, 0).
        self.replay_base = (0, 0)
        # A backup's snapshot entry at a signature, until the primary's evidence says
        # whether it took one there: (seqno, snapshot entry).
        self.candidate: tuple[int, bytes] | None = None
        # Set by trigger_snapshot (governance): the next signature takes a snapshot.
        self.forced = False

    # ------------------------------------------------------------------ the primary's side
    def after_signature(self, seqno: int, view: int) -> None:
        """A signature at `seqno`: mark a snapshot due if enough has happened since."""
        if self._is_due(seqno):
            self.due = (seqno, view)

    def _is_due(self, seqno: int) -> bool:
        """Counted from the last snapshot the service recorded evidence of (in the store, so
        the same on every node, restarted or not), so backups snapshot where the primary does."""
        interval = self.core.config.snapshots.tx_count
        last = max(self.last_seqno, self._recorded_seqno())
        return (self.forced or seqno - last >= interval) and self.pending is None

    def _recorded_seqno(self) -> int:
        value = self.log.store.begin().get(SNAPSHOT_EVIDENCE_TABLE, gt.SINGLETON_KEY)
        if value is None:
            return 0
        try:
            return int(json.loads(value)["version"])
        except (ValueError, KeyError, TypeError):
            return 0

    def take_due(self, replication: Replication) -> None:
        """Snapshot the state at the due signature and record its evidence."""
        assert self.due is not None
        seqno, view = self.due
        self.due = None
        log = self.log
        if log.store.version != seqno:
            # Something was written after the signature before the loop came here: the
            # next signature will be the snapshot's point instead.
            LOG.info("event=snapshot_skipped seqno=%d version=%d", seqno, log.store.version)
            return
        entry = self._encode(seqno, view)
        self.last_seqno = seqno
        self.forced = False
        self.candidate = None  # a backup's, from before this node became primary
        tx = log.store.begin()
        gt.put_json(
            tx,
            SNAPSHOT_EVIDENCE_TABLE,
            gt.SINGLETON_KEY,
            {"hash": snapshot_digest(entry), "version": seqno},
        )
        # As in CCF, the evidence's claims digest is the snapshot's digest: its receipt then
        # vouches for the snapshot's bytes (`verify_snapshot`).
        _, evidence_seqno = replication.commit_tx(tx, claims_digest=hashlib.sha256(entry).digest())
        self.pending = (seqno, evidence_seqno, entry)
        self.core.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, entry, False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d", seqno, evidence_seqno)

    def _encode(self, seqno: int, view: int) -> bytes:
        """The snapshot entry of the state at `seqno` (the store's version). Deterministic:
        every node that applied the same entries encodes the same bytes, so a backup's
        snapshot matches the digest in the primary's evidence."""
        log = self.log
        assert log.store.version == seqno
        public, private = log.store.snapshot()
        return encode_snapshot(
            seqno=seqno,
            view=view,
            hash_at_snapshot=log.history.tree.leaf(seqno),
            view_history=log.view_history(),
            public_tables=public,
            private_tables=private,
            secret=self.core.identity.secret_for(seqno),
        )

    # ------------------------------------------------------------------ a backup's side
    def on_replicated(self, seqno: int, view: int, public: WriteSet) -> None:
        """A replicated entry was applied. At a signature where the primary would take a
        snapshot, encode one; when the primary's evidence arrives, keep it if its digest is
        the evidence's (then it completes as the primary's does, in `finish`), so any
        trusted node, not only the primary, holds the latest snapshot."""
        if SIGNATURES_TABLE in public:
            if self._is_due(seqno):
                self.candidate = (seqno, self._encode(seqno, view))
            return
        value = public.get(SNAPSHOT_EVIDENCE_TABLE, {}).get(gt.SINGLETON_KEY)
        if value is None:
            return
        candidate, self.candidate = self.candidate, None
        try:
            record = json.loads(value)
            version, digest = int(record["version"]), str(record["hash"])
        except (ValueError, KeyError, TypeError):
            LOG.error("event=snapshot_evidence_unreadable seqno=%d", seqno)
            return
        self.last_seqno = version
        self.forced = False
        if candidate is None or candidate[0] != version or snapshot_digest(candidate[1]) != digest:
            LOG.warning(
                "event=snapshot_not_taken seqno=%d evidence=%d reason=no matching local snapshot",
                version,
                seqno,
            )
            return
        self.pending = (version, seqno, candidate[1])
        self.core.outbox.append(itf.WriteSnapshot(version, seqno, candidate[1], False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d role=backup", version, seqno)

    def finish(self, receipt: ReceiptFn) -> None:
        """Once the evidence and a signature after it are committed, the file is complete."""
        if self.pending is None:
            return
        seqno, evidence_seqno, entry = self.pending
        log = self.log
        if evidence_seqno > log.commit_seqno:
            return
        try:
            material = log.history.receipt_material(evidence_seqno)
        except KeyError:
            # Its receipt material was compacted away before commit came (a backup that
            # applied a long catch-up in one go): this snapshot cannot be completed.
            LOG.warning("event=snapshot_abandoned seqno=%d evidence=%d", seqno, evidence_seqno)
            self.pending = None
            return
        if material is None or material[1].seqno > log.commit_seqno:
            return
        response = receipt(log.view_at(evidence_seqno) or 0, evidence_seqno)
        if response.status != 200:
            return
        self.pending = None
        data = entry + encode_snapshot_receipt(json.loads(response.body))
        name = snapshot_file_name(seqno, evidence_seqno, True)
        if self.offer(data, name) is None:
            return  # logged; the uncommitted file stays as it is, never served
        self.core.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, data, True))
        LOG.info("event=snapshot_committed seqno=%d", seqno)

    # ------------------------------------------------------------------ checking
    def verify(
        self, data: bytes, name: str, service_cert_pem: str | None = None
    ) -> VerifiedSnapshot:
        """`verify_snapshot` against the service cert (this node's unless given)."""
        identity = self.core.maybe_identity()
        cert = service_cert_pem or (identity.service_cert_pem if identity else None)
        if not cert:
            raise VerificationError(f"snapshot {name}: no service certificate to check it against")
        return verify_snapshot(data, cert, name=name)

    def offer(self, data: bytes, name: str) -> VerifiedSnapshot | None:
        """Serve `data` as the latest snapshot if it verifies; else log why, and keep what
        was served before. Nothing unverified is ever served (GET /node/snapshot, joins)."""
        try:
            verified = self.verify(data, name)
        except LedgerError as exc:
            LOG.error("event=snapshot_refused file=%s reason=%s", name, exc)
            return None
        self.latest, self.latest_name = data, name
        return verified

    # ------------------------------------------------------------------ installing
    def install(self, snapshot: Snapshot, private: bytes) -> None:
        """Take a snapshot's point as the start of this node's state, tree and views."""
        log = self.log
        log.store.restore(snapshot.public_tables, private, snapshot.seqno)
        tree_bytes = log.store.begin().get(TREE_TABLE, gt.SINGLETON_KEY)
        if tree_bytes is None:
            raise ConsensusError("snapshot holds no Merkle tree")
        tree = MerkleTree.deserialise(tree_bytes)
        if tree.size != snapshot.seqno:
            raise ConsensusError("snapshot tree does not end at the snapshot")
        tree.append(snapshot.hash_at_snapshot)
        log.history.tree = tree
        log.restart_at(snapshot.seqno, snapshot.view_history)
        self.last_seqno = snapshot.seqno
        self.replay_base = (snapshot.seqno, snapshot.view)

    def install_public(self, verified: VerifiedSnapshot, data: bytes, name: str) -> Snapshot:
        """A joiner's snapshot: its public state now, its private state once trusted."""
        snapshot = verified.snapshot
        self.install(snapshot, b"")
        self.join_snapshot = snapshot
        self.latest, self.latest_name = data, name
        return snapshot

    def open_join_snapshot(self) -> None:
        """The joiner holds the ledger secrets: restore its snapshot's private state too."""
        if self.join_snapshot is None:
            return
        snapshot, self.join_snapshot = self.join_snapshot, None
        private = snapshot.decrypt_private(self.core.identity.secret_for(snapshot.seqno))
        self.log.store.restore(snapshot.public_tables, private, snapshot.seqno)

    def resume_from(self, data: bytes, name: str) -> int:
        """Restart of a node whose ledger starts after a snapshot: install it first, once it
        has verified against the service cert (raises the LedgerError naming `name` if not)."""
        verified = self.verify(data, name)
        snapshot = verified.snapshot
        private = snapshot.decrypt_private(self.core.identity.secret_for(snapshot.seqno))
        self.install(snapshot, private)
        self.latest, self.latest_name = data, name
        return snapshot.seqno
