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
candidate. Snapshots complete in the order of their seqnos, whatever order the encodings
come back in.

Every node snapshots at the same signatures (`Snapshots._is_due`), whether or not it is
still busy with the previous snapshot: a backup whose last encoding is slow to come back (its
child runs at the lowest priority, and a loaded machine may starve it for a while) must
still encode where the primary does, or it has nothing to match the primary's evidence
with. So a node may have several snapshots on the way at once, up to `IN_FLIGHT_MAX`.
"""

from __future__ import annotations

import dataclasses
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

# Snapshots one node may have on the way at once: being encoded (a forked child each),
# encoded and waiting for the primary's evidence (a backup's candidates), or waiting for
# their evidence to commit (an entry in memory each). A node with that many skips a due
# snapshot (logged `snapshot_skipped`), and so may miss one the others take: with encodings
# of tens of milliseconds and the default interval of 10,000 transactions, only a node
# starved for several intervals in a row gets there.
IN_FLIGHT_MAX = 3


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
    or a backup's candidate; `forced` if a trigger_snapshot asked for it; `gone` once the
    log was truncated below it (its result is then dropped)."""

    seqno: int
    view: int
    primary: bool
    forced: bool
    gone: bool = False


class Snapshots:
    """The snapshot side of one node."""

    def __init__(self, core: NodeCore, log: LocalLog) -> None:
        self.core = core
        self.log = log
        # Encodes the state at a snapshot's signature (the node sets the runtime's).
        self.encoder: SnapshotEncoder = SyncSnapshotEncoder(self.encoded)
        # The snapshots being encoded, by seqno; and the entries that came back, until
        # `settle` completes them (oldest first).
        self.encodings: dict[int, Encoding] = {}
        self.encoded_entries: dict[int, bytes] = {}
        # A backup's: the primary's evidence (digest, evidence seqno) by snapshot seqno, that
        # arrived while the candidate at that seqno was still being encoded.
        self.held_evidence: dict[int, tuple[str, int]] = {}
        self.last_seqno = 0
        # A signature at which a snapshot is due: (seqno, view), taken by the facade's loop.
        self.due: tuple[int, int] | None = None
        # (snapshot seqno, evidence seqno, snapshot entry), oldest first, until its
        # evidence commits.
        self.pending: list[tuple[int, int, bytes]] = []
        # The latest committed snapshot file (entry + receipt) and its file name.
        self.latest: bytes | None = None
        self.latest_name: str | None = None
        # A joiner's snapshot, kept until the ledger secrets arrive to open it.
        self.join_snapshot: Snapshot | None = None
        # (seqno, view) the replayed ledger follows: a snapshot's, or (0, 0); and the Raft
        # configuration in force there (the replay's later entries may change it).
        self.replay_base = (0, 0)
        self.replay_base_voters: frozenset[str] = frozenset()
        # A backup's snapshot entries at signatures, by seqno, until the primary's evidence
        # says whether it took one there.
        self.candidates: dict[int, bytes] = {}
        # Set by trigger_snapshot (governance): the next signature takes a snapshot.
        self.forced = False
        # The primary's encoding failed: its next signature tries again.
        self.retry = False

    # ------------------------------------------------------------------ the primary's side
    def after_signature(self, seqno: int, view: int) -> None:
        """A signature at `seqno`: mark a snapshot due if enough has happened since."""
        if self._is_due(seqno) and self._has_room(seqno):
            self.due = (seqno, view)

    def _is_due(self, seqno: int) -> bool:
        """Whether the signature at `seqno` takes a snapshot: the first signature of each
        `tx_count` interval of seqnos (or the next one after a trigger_snapshot, or after
        the primary's encoding failed).

        A rule of the ledger's signatures alone, so that every node applies it at the same
        seqnos: a backup encodes its candidate where the primary encodes, although neither
        knows when the other finishes, and whether or not its own previous snapshot is
        still on the way. (Counting `tx_count` from the last snapshot instead, a backup
        whose candidate still waited for the primary's evidence found the next signature
        due, encoded another and dropped the one waiting; skipping an interval while busy,
        a backup whose encoding came back late missed the primary's next snapshot.)
        Intervals are counted from the last snapshot the service recorded evidence of (in
        the store, the same on every node, restarted or not) and this node's own latest
        one, so none takes two in one interval."""
        interval = self.core.config.snapshots.tx_count
        previous = self.log.history.signature_before(seqno)
        last = max(
            self.last_seqno,
            self._recorded_seqno(),
            previous,
            *(s for s, e in self.encodings.items() if not e.gone),
            *self.candidates,
            *(p[0] for p in self.pending),
        )
        opens_interval = seqno // interval > last // interval
        return self.forced or self.retry or opens_interval

    def _in_flight(self) -> int:
        return len(self.encodings) + len(self.candidates) + len(self.pending)

    def _has_room(self, seqno: int) -> bool:
        """Whether this node can take on another snapshot (`IN_FLIGHT_MAX`, and none still
        encoding at this seqno from before a truncation); logged if not."""
        if self._in_flight() < IN_FLIGHT_MAX and seqno not in self.encodings:
            return True
        LOG.warning(
            "event=snapshot_skipped seqno=%d reason=busy encoding=%d candidates=%d pending=%d",
            seqno,
            len(self.encodings),
            len(self.candidates),
            len(self.pending),
        )
        return False

    def rolled_back(self, seqno: int) -> None:
        """The log was truncated to `seqno`: forget what was on the way for the entries that
        are gone (candidates, held evidence, snapshots whose evidence is gone); encodings
        still running for them are dropped when they come back."""
        for gone in [s for s in self.candidates if s > seqno]:
            del self.candidates[gone]
        for gone, (_, evidence_seqno) in list(self.held_evidence.items()):
            if evidence_seqno > seqno:
                del self.held_evidence[gone]
        self.pending = [p for p in self.pending if p[1] <= seqno]
        for at, encoding in self.encodings.items():
            if at > seqno:
                self.encodings[at] = dataclasses.replace(encoding, gone=True)

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
        # A backup's, from before this node became primary: no evidence will come for them.
        self.candidates.clear()
        self.held_evidence.clear()
        self._start(Encoding(seqno, view, primary=True, forced=self.forced))

    def _start(self, encoding: Encoding) -> None:
        assert encoding.seqno not in self.encodings, "one encoding per snapshot"
        self.encodings[encoding.seqno] = encoding
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
        if seqno not in self.encodings or seqno in self.encoded_entries:
            LOG.warning("event=snapshot_encoded_unexpected seqno=%d", seqno)
            return
        self.encoded_entries[seqno] = entry

    def encode_failed(self, seqno: int, reason: str) -> None:
        """The encoder could not encode `seqno`: nothing is recorded. The primary tries again
        at its next signature (a trigger_snapshot that asked for this one still holds); a
        backup at the next interval's first signature, as the primary's retry is not where
        a candidate could match it anyway."""
        encoding = self.encodings.get(seqno)
        if encoding is None or seqno in self.encoded_entries:
            LOG.warning("event=snapshot_encode_failed_unexpected seqno=%d", seqno)
            return
        LOG.error("event=snapshot_encode_failed seqno=%d reason=%s", seqno, reason)
        del self.encodings[seqno]
        self.forced = self.forced or encoding.forced
        if encoding.primary:
            self.retry = True
        elif (held := self.held_evidence.pop(seqno, None)) is not None:
            self._not_taken(seqno, "its encoding failed", held[1])

    def completable(self) -> bool:
        """Whether the oldest snapshot being encoded has come back (`complete` takes it):
        snapshots complete in the order of their seqnos."""
        return bool(self.encodings) and min(self.encodings) in self.encoded_entries

    def complete(self, replication: Replication) -> None:
        """The oldest encoded snapshot came back: the primary records its evidence now (at
        the next seqno, whatever it is: as in CCF, not necessarily the snapshot's seqno +
        1); a backup keeps it as its candidate, matched against the primary's evidence."""
        seqno = min(self.encodings)
        encoding = self.encodings.pop(seqno)
        entry = self.encoded_entries.pop(seqno)
        if encoding.gone:
            LOG.info("event=snapshot_dropped seqno=%d reason=rolled back", seqno)
            return
        if not encoding.primary:
            if replication.is_primary:
                LOG.info("event=snapshot_dropped seqno=%d reason=now primary", seqno)
                return
            held = self.held_evidence.pop(seqno, None)
            if held is None and seqno < self.last_seqno:
                # The primary's evidence of a later snapshot came first, and none of this
                # one: the primary took none here.
                LOG.info("event=snapshot_dropped seqno=%d reason=superseded", seqno)
                return
            self.candidates[seqno] = entry
            if held is not None:
                self._match_evidence(seqno, *held)
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
        self.pending.append((seqno, evidence_seqno, entry))
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
            if self._is_due(seqno) and self._has_room(seqno):
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
        encoding = self.encodings.get(version)
        if encoding is not None and not encoding.primary:
            self.held_evidence[version] = (digest, seqno)
            return
        self._match_evidence(version, digest, seqno)

    def _match_evidence(self, version: int, digest: str, evidence_seqno: int) -> None:
        """The primary's evidence of a snapshot at `version`: keep the own candidate if it is
        that snapshot, byte for byte (same digest). Candidates before it are dropped: the
        primary took none there (its evidence comes in the order of its snapshots)."""
        for older in [s for s in self.candidates if s < version]:
            del self.candidates[older]
            LOG.info("event=snapshot_dropped seqno=%d reason=superseded", older)
        entry = self.candidates.pop(version, None)
        if entry is None or snapshot_digest(entry) != digest:
            self._not_taken(version, "no matching local snapshot", evidence_seqno)
            return
        self.pending.append((version, evidence_seqno, entry))
        self.core.outbox.append(itf.WriteSnapshot(version, evidence_seqno, entry, False))
        LOG.info("event=snapshot_taken seqno=%d evidence=%d role=backup", version, evidence_seqno)

    @staticmethod
    def _not_taken(seqno: int, reason: str, evidence_seqno: int) -> None:
        LOG.warning(
            "event=snapshot_not_taken seqno=%d evidence=%d reason=%s", seqno, evidence_seqno, reason
        )

    def finish(self, receipt: ReceiptFn) -> None:
        """Once a snapshot's evidence and a signature after it are committed, its file is
        complete (oldest first)."""
        while self.pending and self._finish_oldest(receipt):
            pass

    def _finish_oldest(self, receipt: ReceiptFn) -> bool:
        """Complete the oldest pending snapshot if its evidence's receipt is committed;
        whether it left `pending` (completed, or abandoned)."""
        seqno, evidence_seqno, entry = self.pending[0]
        log = self.log
        if evidence_seqno > log.commit_seqno:
            return False
        try:
            material = log.history.receipt_material(evidence_seqno)
        except KeyError:
            # Its receipt material was compacted away before commit came (a backup that
            # applied a long catch-up in one go): this snapshot cannot be completed.
            LOG.warning("event=snapshot_abandoned seqno=%d evidence=%d", seqno, evidence_seqno)
            del self.pending[0]
            return True
        if material is None or material[1].seqno > log.commit_seqno:
            return False
        response = receipt(log.view_at(evidence_seqno) or 0, evidence_seqno)
        if response.status != 200:
            return False
        del self.pending[0]
        data = entry + encode_snapshot_receipt(json.loads(response.body))
        name = snapshot_file_name(seqno, evidence_seqno, True)
        if self.offer(data, name) is None:
            return True  # logged; the uncommitted file stays as it is, never served
        self.core.outbox.append(itf.WriteSnapshot(seqno, evidence_seqno, data, True))
        LOG.info("event=snapshot_committed seqno=%d", seqno)
        return True

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
