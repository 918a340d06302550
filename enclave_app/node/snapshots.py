"""Snapshots: taking them (primary), completing them once their evidence commits, checking
every snapshot before it is installed or served, and installing one (restart, join).

Only bytes that passed `verify_snapshot` are ever held in `latest` (served on
GET /node/snapshot and to joiners).

Encoding the whole state is O(keys) (about 1.7 us a key), far too long to do on the loop
that orders transactions. The core does not encode itself: at the snapshot's signature it
hands an `encode` closure to its `SnapshotEncoder`, which must run it on the state exactly
as it is at that moment (the runtime forks a child, `enclave_app/snapshot_fork.py`; the
in-process tests and the simulator run it at once, `SyncSnapshotEncoder`). The result comes
back as an event (`encoded` / `encode_failed`), and `settle` completes it (`complete`): the
primary records its evidence at whatever seqno is next then, a backup keeps it as its
candidate. At most one encoding is in flight, and no snapshot falls due while it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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


class SnapshotEncoder(Protocol):
    """Runs a snapshot's `encode` on the state as it is when `start` is called, and reports
    the entry (or the failure) back to the node as an event, never from inside `start`
    unless through a function that only records it (see `SyncSnapshotEncoder`)."""

    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None: ...


class SyncSnapshotEncoder:
    """Encodes at once, in the caller's process: deterministic, for the in-process tests and
    the simulator. `deliver` must only record the result (`Snapshots.encoded`): the `settle`
    that asked for the snapshot then completes it in its next step."""

    def __init__(self, deliver: Callable[[int, bytes], None]) -> None:
        self._deliver = deliver

    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None:
        self._deliver(seqno, encode())


@dataclass(frozen=True, slots=True)
class Encoding:
    """A snapshot being encoded: at signature (seqno, view), the primary's own (`primary`)
    or a backup's candidate; `forced` if a trigger_snapshot asked for it."""

    seqno: int
    view: int
    primary: bool
    forced: bool


class Snapshots:
    """The snapshot side of one node."""

    def __init__(self, core: NodeCore, log: LocalLog) -> None:
        self.core = core
        self.log = log
        # Encodes the state at a snapshot's signature (the node sets the runtime's).
        self.encoder: SnapshotEncoder = SyncSnapshotEncoder(self.encoded)
        # The snapshot being encoded (at most one), and its entry once it came back, until
        # `settle` completes it.
        self.encoding: Encoding | None = None
        self.encoded_entry: bytes | None = None
        # A backup's: the primary's evidence (snapshot seqno, digest, evidence seqno) that
        # arrived while the candidate at that seqno was still being encoded.
        self.held_evidence: tuple[int, str, int] | None = None
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
        # (seqno, view) the replayed ledger follows: a snapshot's, or (0, 0); and the Raft
        # configuration in force there (the replay's later entries may change it).
        self.replay_base = (0, 0)
        self.replay_base_voters: frozenset[str] = frozenset()
        # A backup's snapshot entry at a signature, until the primary's evidence says
        # whether it took one there: (seqno, snapshot entry).
        self.candidate: tuple[int, bytes] | None = None
        # Set by trigger_snapshot (governance): the next signature takes a snapshot.
        self.forced = False
        # The primary's encoding failed: its next signature tries again.
        self.retry = False

    # ------------------------------------------------------------------ the primary's side
    def after_signature(self, seqno: int, view: int) -> None:
        """A signature at `seqno`: mark a snapshot due if enough has happened since."""
        if self._is_due(seqno):
            self.due = (seqno, view)

    def _is_due(self, seqno: int, *, backup: bool = False) -> bool:
        """Whether the signature at `seqno` takes a snapshot: the first signature of each
        `tx_count` interval of seqnos (or the next one after a trigger_snapshot, or after
        the primary's encoding failed), while no snapshot is being encoded here.

        A rule of the ledger's signatures alone, so that every node applies it at the same
        seqnos: a backup encodes its candidate where the primary encodes, although neither
        knows when the other finishes. (Counting `tx_count` from the last snapshot instead,
        a backup whose candidate still waited for the primary's evidence found the next
        signature due, encoded another and dropped the one waiting.) Intervals are counted
        from the last snapshot the service recorded evidence of (in the store, the same on
        every node, restarted or not) and this node's own latest candidate, so none takes
        two in one interval. The primary takes one at a time, until its file is committed;
        a backup learns of that commit later, and encodes its next candidate all the same.
        A node busy at an interval's first signature skips that interval."""
        interval = self.core.config.snapshots.tx_count
        previous = self.log.history.signature_before(seqno)
        last = max(self.last_seqno, self._recorded_seqno(), previous)
        if self.candidate is not None:
            last = max(last, self.candidate[0])
        opens_interval = seqno // interval > last // interval
        return (
            (self.forced or self.retry or opens_interval)
            and (backup or self.pending is None)
            and self.encoding is None
        )

    def _recorded_seqno(self) -> int:
        value = self.log.store.begin().get(SNAPSHOT_EVIDENCE_TABLE, gt.SINGLETON_KEY)
        if value is None:
            return 0
        try:
            return int(json.loads(value)["version"])
        except (ValueError, KeyError, TypeError):
            return 0

    def take_due(self, replication: Replication) -> None:
        """Start encoding the state at the due signature (its evidence is recorded when the
        entry comes back, in `complete`)."""
        assert self.due is not None
        seqno, view = self.due
        self.due = None
        log = self.log
        if log.store.version != seqno:
            # Something was written after the signature before the loop came here: the
            # next signature will be the snapshot's point instead.
            LOG.info("event=snapshot_skipped seqno=%d version=%d", seqno, log.store.version)
            self.retry = True
            return
        self.candidate = None  # a backup's, from before this node became primary
        self._start(Encoding(seqno, view, primary=True, forced=self.forced))

    def _start(self, encoding: Encoding) -> None:
        assert self.encoding is None, "one snapshot encoding at a time"
        self.encoding = encoding
        self.forced = self.retry = False
        LOG.info(
            "event=snapshot_encoding seqno=%d role=%s",
            encoding.seqno,
            "primary" if encoding.primary else "backup",
        )
        self.encoder.start(
            encoding.seqno, encoding.view, self._encoder(encoding.seqno, encoding.view)
        )

    def _encoder(self, seqno: int, view: int) -> Callable[[], bytes]:
        """What encodes the snapshot entry of the state at `seqno` (the store's version now):
        everything but the tables is taken now; the tables when it runs, so it must run on
        the state as it is now (a fork of this process, or at once). Deterministic: every
        node that applied the same entries encodes the same bytes, so a backup's snapshot
        matches the digest in the primary's evidence."""
        log = self.log
        store = log.store
        assert store.version == seqno
        hash_at_snapshot = log.history.tree.leaf(seqno)
        view_history = log.view_history()
        secret = self.core.identity.secret_for(seqno)

        def encode() -> bytes:
            assert store.version == seqno, "encoded on the state of the snapshot's signature"
            public, private = store.snapshot()
            return encode_snapshot(
                seqno=seqno,
                view=view,
                hash_at_snapshot=hash_at_snapshot,
                view_history=view_history,
                public_tables=public,
                private_tables=private,
                secret=secret,
            )

        return encode

    # ------------------------------------------------------------------ encoding's events
    def encoded(self, seqno: int, entry: bytes) -> None:
        """The encoder's result for `seqno`: only recorded; `settle` completes it."""
        encoding = self.encoding
        if encoding is None or encoding.seqno != seqno or self.encoded_entry is not None:
            LOG.warning("event=snapshot_encoded_unexpected seqno=%d", seqno)
            return
        self.encoded_entry = entry

    def encode_failed(self, seqno: int, reason: str) -> None:
        """The encoder could not encode `seqno`: nothing is recorded. The primary tries again
        at its next signature (a trigger_snapshot that asked for this one still holds); a
        backup at the next interval's first signature, as the primary's retry is not where
        a candidate could match it anyway."""
        encoding = self.encoding
        if encoding is None or encoding.seqno != seqno or self.encoded_entry is not None:
            LOG.warning("event=snapshot_encode_failed_unexpected seqno=%d", seqno)
            return
        LOG.error("event=snapshot_encode_failed seqno=%d reason=%s", seqno, reason)
        self.encoding = None
        self.forced = self.forced or encoding.forced
        if encoding.primary:
            self.retry = True
        else:
            self.held_evidence = None

    def complete(self, replication: Replication) -> None:
        """An encoded snapshot came back: the primary records its evidence now (at the next
        seqno, whatever it is: as in CCF, not necessarily the snapshot's seqno + 1); a
        backup keeps it as its candidate, matched against the primary's evidence."""
        encoding, entry = self.encoding, self.encoded_entry
        assert encoding is not None and entry is not None
        self.encoding = self.encoded_entry = None
        seqno = encoding.seqno
        if not encoding.primary:
            self.candidate = (seqno, entry)
            held, self.held_evidence = self.held_evidence, None
            if held is not None:
                self._match_evidence(*held)
            return
        if not replication.is_primary or replication.raft.view != encoding.view:
            # Another primary now orders the service: its own snapshots are the service's.
            LOG.info("event=snapshot_dropped seqno=%d reason=no longer primary", seqno)
            return
        self.last_seqno = seqno
        digest = hashlib.sha256(entry).digest()
        tx = self.log.store.begin()
        gt.put_json(
            tx,
            SNAPSHOT_EVIDENCE_TABLE,
            gt.SINGLETON_KEY,
            {"hash": digest.hex(), "version": seqno},
        )
        # As in CCF, the evidence's claims digest is the snapshot's digest: its receipt then
        # vouches for the snapshot's bytes (`verify_snapshot`).
        _, evidence_seqno = replication.commit_tx(tx, claims_digest=digest)
        self.pending = (seqno, evidence_seqno, entry)
        self.core.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, entry, False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d", seqno, evidence_seqno)

    # ------------------------------------------------------------------ a backup's side
    def on_replicated(self, seqno: int, view: int, public: WriteSet) -> None:
        """A replicated entry was applied. At a signature where the primary would take a
        snapshot, encode one; when the primary's evidence arrives, keep it if its digest is
        the evidence's (then it completes as the primary's does, in `finish`), so any
        trusted node, not only the primary, holds the latest snapshot. Evidence that
        arrives while that candidate is still being encoded waits for it."""
        if SIGNATURES_TABLE in public:
            if self._is_due(seqno, backup=True):
                self.candidate = None
                self._start(Encoding(seqno, view, primary=False, forced=self.forced))
            return
        value = public.get(SNAPSHOT_EVIDENCE_TABLE, {}).get(gt.SINGLETON_KEY)
        if value is None:
            return
        try:
            record = json.loads(value)
            version, digest = int(record["version"]), str(record["hash"])
        except (ValueError, KeyError, TypeError):
            LOG.error("event=snapshot_evidence_unreadable seqno=%d", seqno)
            return
        self.last_seqno = version
        self.forced = False
        encoding = self.encoding
        if encoding is not None and not encoding.primary and encoding.seqno == version:
            self.held_evidence = (version, digest, seqno)
            return
        self._match_evidence(version, digest, seqno)

    def _match_evidence(self, version: int, digest: str, evidence_seqno: int) -> None:
        """The primary's evidence of a snapshot at `version`: keep the own candidate if it is
        that snapshot, byte for byte (same digest)."""
        candidate, self.candidate = self.candidate, None
        if candidate is None or candidate[0] != version or snapshot_digest(candidate[1]) != digest:
            LOG.warning(
                "event=snapshot_not_taken seqno=%d evidence=%d reason=no matching local snapshot",
                version,
                evidence_seqno,
            )
            return
        self.pending = (version, evidence_seqno, candidate[1])
        self.core.outbox.append(itf.WriteSnapshot(version, evidence_seqno, candidate[1], False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d role=backup", version, evidence_seqno)

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
        self.replay_base_voters = self.core.voters()

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
