"""The replicated log of one node: commit, signatures, apply, rollback, on-commit.

`LocalLog` is what the node's own ledger has made of the KV store and the Merkle history
(it exists from the start: a restart replays into it before Raft runs). `Replication` adds
Raft and the keys once both exist, so nothing in it asks whether they do.

Nothing here calls back into itself: a signature or a snapshot that falls due is marked
(`signature_due`, and the facade's `snapshot_due`) and performed by the facade's loop once
the current step has finished (`Node.settle`), as etcd's Ready/Advance does for I/O.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from charter.consensus import LogEntry, Message, Raft, Role
from charter.consensus.errors import ConsensusError
from charter.enclave_app import interface as itf
from charter.enclave_app.identity import Identity
from charter.enclave_app.kv import Store, Tx
from charter.enclave_app.node import commit_trace
from charter.enclave_app.node.core import (
    CONFIGURATION_TABLE,
    SIGNATURES_TABLE,
    NodeCore,
    configuration_if_changed,
)
from charter.governance import tables as gt
from charter.ledger.chunks import ChunkPolicy
from charter.ledger.entry import (
    ZERO_DIGEST,
    WriteSet,
    decode_entry,
    entry_leaf,
)
from charter.ledger.errors import DecodeError, VerificationError
from charter.ledger.signatures import (
    COSE_SIGNATURES_CONFIG_TABLE,
    CoseSignaturesConfig,
    parse_cose_signatures_config,
)

LOG = logging.getLogger(__name__)

# Ticks come from the untrusted host clock: a jump never advances Raft by more than this.
MAX_TICK_ELAPSED_MS = 1_000
# How often the committed seqno is sealed (a rollback by the host can erase at most this).
COMMIT_SEAL_INTERVAL_MS = 1_000
# A node whose turns serve at most this many writes, on average, is not queueing them
# (`Replication.end_turn`): its signatures follow `signatures.light_load_delay_ms` apart.
# Under a closed-loop flood a turn finds ~20 waiting; a paced client at half that rate
# delivers ~5 per turn (measured, docs/performance.md "Signatures under light load").
LIGHT_LOAD_WRITES_PER_TURN = 8.0
# The average's weight for the newest turn (an exponential moving average over ~8 turns).
TURN_AVERAGE_WEIGHT = 1 / 8
ENTRY_REQUEST_ID_BASE = 1 << 48
ENTRY_REQUEST_MAX = 1_000
# Outstanding host reads for lagging peers (each answers one Raft entry request).
ENTRY_REQUESTS_PENDING_MAX = 1_024


class LocalLog:
    """KV store, Merkle history, views and chunk marks of the entries this node holds."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.store = core.store
        self.history = core.history
        self.chunks = ChunkPolicy(core.config.ledger_chunk_bytes)
        # (seqno, bytes in the open chunk after it) for the uncommitted suffix, so a
        # rollback restores the chunk policy to where it stood.
        self.chunk_marks: deque[tuple[int, int]] = deque()
        # (view, first seqno of that view) for every view in the log, ascending.
        self.views: list[tuple[int, int]] = []
        self.applied_seqno = 0
        self.commit_seqno = 0
        # Told of each replicated entry once applied (seqno, view, public write set): a
        # backup takes the snapshots the primary records evidence of (node/snapshots.py).
        self.on_replicated: Callable[[int, int, WriteSet], None] | None = None
        # Told of each truncation (the seqno kept): what was on the way for later seqnos
        # (snapshots) belongs to entries that are gone.
        self.on_rollback: Callable[[int], None] | None = None

    def appended(self, view: int, seqno: int, size: int, flags: int) -> None:
        self.applied_seqno = seqno
        self.note_view(view, seqno)
        self.record_chunk(seqno, size, flags)

    def record_chunk(self, seqno: int, size: int, flags: int) -> None:
        self.chunks.record(size, flags)
        self.chunk_marks.append((seqno, self.chunks.bytes_in_chunk))

    def note_view(self, view: int, seqno: int) -> None:
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

    def view_history(self) -> list[int]:
        """CCF's view history: index = view, value = first seqno of that view."""
        history: list[int] = []
        for view, first in self.views:
            while len(history) < view:
                history.append(first)
            history.append(first)
        return history

    def restart_at(self, seqno: int, view_history: Sequence[int]) -> None:
        """Start the log after a snapshot at `seqno` with CCF's `view_history`."""
        self.views = []
        for view, first in enumerate(view_history):
            if not first or first > seqno:
                continue
            if self.views and self.views[-1][1] == first:
                # Views without entries repeat the next view's first seqno: the highest
                # view of a run of equal seqnos is the one that holds them.
                self.views[-1] = (view, first)
            elif not self.views or self.views[-1][1] < first:
                self.views.append((view, first))
        self.applied_seqno = self.commit_seqno = seqno
        self.core.indexer.restart_at(seqno)

    def replay(self, raw: bytes, identity: Identity) -> LogEntry:
        """One entry of the node's own ledger, read back from the untrusted host: decode,
        decrypt and check it against the history (signed roots must match)."""
        seqno = self.applied_seqno + 1  # the host returns the own ledger in order
        try:
            decoded = decode_entry(raw)
            entry = decoded[0]
            seqno = entry.seqno
            secret = identity.secret_for(seqno)
            record, private = self.history.append_decrypted(raw, secret=secret, decoded=decoded)
            write_set = dict(entry.public)
            write_set.update(private)
        except (DecodeError, VerificationError) as e:
            # Say which entry: the host names the file that holds it (host/storage.py).
            raise type(e)(f"ledger entry seqno {seqno}: {e}") from e
        self.store.apply(write_set, seqno)
        self.appended(entry.view, seqno, len(raw), entry.flags)
        if seqno <= identity.committed_seqno:
            # Sealed as committed before the restart: indexed now, so that a long replay
            # does not hold every write pending until Raft commits again.
            self.core.indexer.committed(seqno)
        return LogEntry(
            seqno, entry.view, raw, record.is_signature, configuration_if_changed(write_set)
        )

    def apply(self, entry: LogEntry, identity: Identity) -> None:
        """A replicated entry: check its position, decrypt, apply."""
        decoded, end = decode_entry(entry.data)
        if decoded.seqno != entry.index or decoded.view != entry.term:
            raise ConsensusError("replicated entry does not match its log position")
        secret = identity.secret_for(entry.index)
        # Decoded once, and decrypted once: the history checks the same decoding and the
        # same GCM tag (about 4 and 5 us of a backup's CPU per write).
        _, private = self.history.append_decrypted(
            entry.data, secret=secret, decoded=(decoded, end)
        )
        write_set = dict(decoded.public)
        write_set.update(private)
        self.store.apply(write_set, entry.index)
        self.appended(entry.term, entry.index, len(entry.data), decoded.flags)
        if self.on_replicated is not None:
            self.on_replicated(entry.index, entry.term, decoded.public)

    def rollback(self, seqno: int) -> None:
        LOG.warning("event=rollback from=%d to=%d", self.applied_seqno, seqno)
        self.core.metrics["rollbacks"] += 1
        self.store.rollback(seqno)
        self.history.truncate(seqno)
        self.applied_seqno = seqno
        while self.views and self.views[-1][1] > seqno:
            self.views.pop()
        while self.chunk_marks and self.chunk_marks[-1][0] > seqno:
            self.chunk_marks.pop()
        self.chunks.reset(self.chunk_marks[-1][1] if self.chunk_marks else 0)
        if self.on_rollback is not None:
            self.on_rollback(seqno)

    def assert_consistent(self) -> None:
        """The KV store, the Merkle history and the applied seqno count the same entries."""
        assert self.store.version == self.applied_seqno == self.history.last_seqno, (
            f"store {self.store.version}, history {self.history.last_seqno}, "
            f"applied {self.applied_seqno}"
        )


def cose_signatures_config(store: Store) -> CoseSignaturesConfig:
    """The CWT issuer and subject of the service's COSE signatures: what the service
    recorded at its start (`start.cose_signatures`), else CCF's defaults."""
    value = store.begin().get(COSE_SIGNATURES_CONFIG_TABLE, gt.SINGLETON_KEY)
    if value is None:
        return CoseSignaturesConfig()
    try:
        return parse_cose_signatures_config(value)
    except DecodeError as exc:
        # Written by the primary that started the service; unreadable means a bug, and
        # signing must go on (commit depends on it), so sign with the defaults.
        LOG.error("event=cose_signatures_config_unreadable error=%s", exc)
        return CoseSignaturesConfig()


def log_entry_from_raw(raw: bytes) -> LogEntry:
    """A Raft log entry for raw ledger bytes (its state is not applied here)."""
    decoded, _ = decode_entry(raw)
    public = dict(decoded.public)
    return LogEntry(
        decoded.seqno,
        decoded.view,
        raw,
        SIGNATURES_TABLE in public,
        configuration_if_changed(public),
    )


@dataclass(slots=True)
class ReadyOutcome:
    """What acting on one Ready changed that the facade must follow up."""

    committed: int | None = None
    became_primary: bool = False
    became_retired: bool = False
    # Removed nodes this primary is done telling (see `Raft.track_removed`).
    released: tuple[str, ...] = ()


class Replication:
    """Raft plus the log it drives, for a node that holds an identity."""

    def __init__(
        self,
        core: NodeCore,
        log: LocalLog,
        raft: Raft,
        send: Callable[[str, Message, int | None], None],
    ) -> None:
        self.core = core
        self._send = send
        self.log = log
        self.raft = raft
        self.identity = core.identity
        # Entries a joining node received before it holds the ledger secrets.
        self.deferred: list[LogEntry] = []
        self.txs_since_signature = 0
        self.last_signature_ms = 0
        self.signature_due = False
        # Writes served since the last end of a turn, and their average per turn that
        # served any (`end_turn`): how many writes a turn finds waiting.
        self.writes_this_turn = 0
        self.writes_per_turn = 0.0  # a node starts idle
        # The due signature was made due early by the light-load delay (not count, not delay).
        self._due_early = False
        # When the deadline timer found the due signature due (its time, for the next one).
        self._due_at_ms: int | None = None
        self._commit_sealed_ms = 0
        # host read id -> the peer whose entry request it answers
        self._entry_requests: dict[int, str] = {}
        self._entry_request_ids = 0
        # Timestamps of each signature's way to commit, when asked for (node/commit_trace.py).
        self.trace = commit_trace.from_environment()

    @property
    def is_primary(self) -> bool:
        """Primary and taking proposals (not a retiring primary handing over)."""
        return self.raft.role is Role.PRIMARY and not self.raft.handing_over

    @property
    def holds_secrets(self) -> bool:
        return bool(self.identity.ledger_secrets)

    def assert_consistent(self) -> None:
        """store.version == history.last_seqno == applied_seqno, and Raft's log ends there
        too unless entries wait (unapplied) for the ledger secrets."""
        self.log.assert_consistent()
        if self.holds_secrets and not self.deferred:
            assert self.raft.last_index == self.log.applied_seqno, (
                f"raft {self.raft.last_index}, applied {self.log.applied_seqno}"
            )

    # ------------------------------------------------------------------ the primary's writes
    def commit_tx(self, tx: Tx, claims_digest: bytes | None = None) -> tuple[int, int]:
        """Append a write transaction (primary only); returns its (view, seqno). A signature
        that falls due is only marked (`signature_due`)."""
        raft, log = self.raft, self.log
        view, seqno = raft.view, raft.last_index + 1
        write_set = tx.write_set()
        public = {name: w for name, w in write_set.items() if name.startswith("public:")}
        private = {name: w for name, w in write_set.items() if not name.startswith("public:")}
        record = log.history.add_transaction(
            seqno=seqno,
            view=view,
            public=public,
            private=private,
            secret=self.identity.secret_for(seqno),
            claims_digest=claims_digest or ZERO_DIGEST,
        )
        log.store.commit(tx, seqno)
        configuration = configuration_if_changed(write_set)
        if configuration == raft.configuration:
            configuration = None
        proposed = raft.propose(record.raw, signature=False, configuration=configuration)
        assert proposed == (view, seqno)
        log.appended(view, seqno, len(record.raw), 0)
        self.txs_since_signature += 1
        self.writes_this_turn += 1
        self.core.metrics["writes"] += 1
        if self.txs_since_signature >= self.core.config.signatures.tx_count:
            self.signature_due = True
        self.assert_consistent()
        return view, seqno

    def emit_signature(self) -> tuple[int, int]:
        """Sign the Merkle root (node key, and the service key as COSE) in a transaction;
        returns its (view, seqno)."""
        identity, raft, log = self.identity, self.raft, self.log
        assert identity.service_key is not None
        view, seqno = raft.view, raft.last_index + 1
        flags = log.chunks.flags_for_signature()
        cose_config = cose_signatures_config(log.store)
        record = log.history.add_signature(
            seqno=seqno,
            view=view,
            node_id=identity.node_id,
            node_key=identity.node_key,
            node_cert_pem=identity.node_cert_pem,
            service_key=identity.service_key,
            secret=identity.secret_for(seqno),
            iat=self.core.now_s(),
            flags=flags,
            issuer=cose_config.issuer,
            subject=cose_config.subject,
        )
        entry, _ = decode_entry(record.raw)
        log.store.apply(dict(entry.public), seqno)
        raft.propose(record.raw, signature=True)
        log.appended(view, seqno, len(record.raw), flags)
        self.txs_since_signature = 0
        self.signature_due = False
        due_at_ms, self._due_at_ms = self._due_at_ms, None
        self.last_signature_ms = due_at_ms if due_at_ms is not None else self.core.last_tick_ms or 0
        self.core.metrics["signatures"] += 1
        early, self._due_early = self._due_early, False
        if early:
            self.core.metrics["light_load_signatures"] += 1
        if self.trace is not None:
            self.trace.emitted(seqno)
        self.assert_consistent()
        return view, seqno

    def maybe_reconfigure(self, trusted: frozenset[str]) -> None:
        """Primary: move the Raft configuration one node towards the `trusted` nodes.

        Governance decides who is trusted; consensus decides when the change is safe (the
        previous change committed, an added node caught up). The change itself is a ledger
        transaction writing CONFIGURATION_TABLE, so every replica sees it at the same seqno.
        """
        raft = self.raft
        current = raft.configuration
        if not trusted or trusted == current:
            return
        removed = sorted(current - trusted)
        added = sorted(node for node in trusted - current if raft.is_caught_up(node))
        # Removals first; but a removal consensus refuses (the last voter leaving while
        # its successors are learners) must not hold up the additions that make it possible.
        candidates = [current - {removed[0]}] if removed else []
        candidates += [current | {added[0]}] if added else []
        for new in candidates:
            try:
                # Consensus' own admission rules; nothing is changed if they refuse.
                raft.check_configuration_change(new)
                break
            except ConsensusError:
                continue
        else:
            return
        tx = self.log.store.begin()
        gt.put_json(tx, CONFIGURATION_TABLE, gt.SINGLETON_KEY, {"voters": sorted(new)})
        self.commit_tx(tx)
        LOG.info("event=reconfigure voters=%d", len(new))

    # ------------------------------------------------------------------ Raft's Ready
    def process_ready(self) -> ReadyOutcome:
        """Act on what Raft produced: rollback, apply, persist, read back for peers. The
        messages to send and what the facade must follow up are returned."""
        core, log, raft = self.core, self.log, self.raft
        ready = raft.ready()
        outcome = ReadyOutcome()
        if ready.hard_state is not None:
            core.seal(raft)
        if ready.truncate_to is not None:
            if ready.truncate_to < log.applied_seqno:
                log.rollback(ready.truncate_to)
            # A joiner's entries wait unapplied in `deferred`: they go too, and the host's
            # ledger follows either way.
            self.deferred = [e for e in self.deferred if e.index <= ready.truncate_to]
            core.outbox.append(itf.Truncate(ready.truncate_to))
        if ready.entries:
            if self.trace is not None and raft.role is not Role.PRIMARY:
                self.trace.received(ready.entries)
            core.outbox.append(itf.WriteEntries([(e.index, e.data) for e in ready.entries]))
            core.outbox_write_bytes += sum(len(e.data) for e in ready.entries)
        for request in ready.entry_requests:
            # A lagging peer needs entries compacted out of memory: read them back from
            # the host (and check them as any host data) before they go out.
            self._entry_request_ids += 1
            request_id = ENTRY_REQUEST_ID_BASE + self._entry_request_ids
            self._entry_requests[request_id] = request.peer
            while len(self._entry_requests) > ENTRY_REQUESTS_PENDING_MAX:  # never answered
                del self._entry_requests[next(iter(self._entry_requests))]
            last = min(request.to_index, request.from_index + ENTRY_REQUEST_MAX - 1)
            core.outbox.append(itf.ReadEntries(request_id, request.from_index, last))
        for peer, message in ready.messages:
            self._send(peer, message, None)
        for peer, message, index in ready.durable_messages:
            # After this Ready's WriteEntries and Truncate: the host sends it once its
            # ledger is durable up to `index` (a backup's answer skips a round trip here).
            self._send(peer, message, index)
        if ready.entries:
            self._apply_received(ready.entries)
        outcome.released = tuple(ready.released)
        if ready.commit_index is not None and ready.commit_index > log.commit_seqno:
            self._on_commit(ready.commit_index)
            outcome.committed = ready.commit_index
        if ready.role_changed:
            LOG.info(
                "event=role_changed role=%s view=%d leader=%s",
                ready.role.value,
                ready.view,
                ready.leader_id,
            )
            outcome.became_primary = ready.role is Role.PRIMARY
            outcome.became_retired = ready.role is Role.RETIRED
        self.assert_consistent()
        return outcome

    def _apply_received(self, entries: Sequence[LogEntry]) -> None:
        """Apply the entries of a Ready (a backup's; a primary applied its own when it
        proposed them). The host has them first, with the answers it sends once they are
        durable: it writes and syncs them on another core while this one decrypts and
        applies (a batch of 30 takes a backup ~6 ms on a slow 2-core machine), and the
        answer no longer waits for the apply: it says the entries are durable here, which
        they are. An entry that fails to apply stops the enclave (an error acting on a
        well-formed message, `Node.receive_from_peer`)."""
        log = self.log
        if not self.holds_secrets:
            self.deferred.extend(entries)  # a joiner without secrets yet
            return
        if entries[-1].index <= log.applied_seqno:
            return
        self.core.hand_off()
        for entry in entries:
            if entry.index > log.applied_seqno:
                log.apply(entry, self.identity)

    def resume_commit(self) -> None:
        """A restarted node's Raft starts knowing what the node had committed (sealed,
        `restart_raft`): act on it as on any commit (the host's chunks, the indexes, the
        memory bounds)."""
        if self.raft.commit_index > self.log.commit_seqno:
            self._on_commit(self.raft.commit_index)

    def _on_commit(self, seqno: int) -> None:
        log, raft = self.log, self.raft
        log.commit_seqno = seqno
        if self.trace is not None:
            self.trace.committed(seqno)
        now_ms = self.core.last_tick_ms or 0
        if now_ms - self._commit_sealed_ms >= COMMIT_SEAL_INTERVAL_MS:
            self._commit_sealed_ms = now_ms
            self.seal_progress()
        log.store.compact(seqno)
        retained = self.core.config.memory.raft_log_entries
        if seqno - raft.log.first_index > 2 * retained:
            # Bounded memory: older entries are read back from the ledger on demand.
            raft.compact(seqno - retained)
        receipts = self.core.config.memory.receipt_transactions
        if seqno - log.history.tree.min_index > 2 * receipts:
            log.history.compact(seqno - receipts)
        while len(log.chunk_marks) > 1 and log.chunk_marks[1][0] <= seqno:
            log.chunk_marks.popleft()
        self.core.indexer.committed(seqno)  # the app's indexes take committed entries only
        self.core.outbox.append(itf.CommitUpTo(seqno))

    def seal_progress(self) -> None:
        """Seal how far this node's own ledger is committed (committed and durable here),
        so a restart on a ledger the host cut short is refused."""
        held = min(self.log.commit_seqno, self.raft.durable_index)
        if held > self.identity.committed_seqno:
            self.identity.committed_seqno = held
            self.core.seal(self.raft)

    def signature_deadline_ms(self) -> int | None:
        """When `signatures.delay_ms` makes the next signature due, on the clock `tick` is
        given (None while no write waits for a signature, or on a backup).

        The runtime arms one timer for it and ticks when it fires, so a signature goes out
        at its due time, not at the host's next `Tick` after it. The core reads no clock:
        it learns the time only from `tick`, so a simulator still drives it by values.
        """
        if self.txs_since_signature == 0 or self.signature_due or not self.is_primary:
            return None
        return self.last_signature_ms + self.signature_delay_ms()

    @property
    def light_load(self) -> bool:
        """Turns serve few writes each: the node is not queueing them."""
        return self.writes_per_turn <= LIGHT_LOAD_WRITES_PER_TURN

    def last_signature_seqno(self) -> int:
        """The seqno of the last signature in this node's log (0: none held)."""
        last = self.log.history.last_signature
        return 0 if last is None else last.seqno

    def signature_delay_ms(self) -> int:
        """How long after the last signature the next falls due while writes wait: under
        light load `light_load_delay_ms`, once the last signature has committed (one in
        flight at a time, as Nagle's rule keeps one small segment unacknowledged: the
        replicas' round trip paces the signatures, so a slower network gets fewer; two or
        more in flight measured slower on 2 cores, docs/performance.md "The backup hands
        its host the entries first")."""
        signatures = self.core.config.signatures
        if (
            self.light_load
            and signatures.light_load_delay_ms
            and self.log.commit_seqno >= self.last_signature_seqno()
        ):
            return min(signatures.delay_ms, signatures.light_load_delay_ms)
        return signatures.delay_ms

    def end_turn(self) -> None:
        """The runtime ends a turn of its event loop (everything that was ready to read has
        been served). The writes the turn served are how many were waiting: a few while
        the node keeps up, tens under a flood, as writes queue behind each other."""
        served = self.writes_this_turn
        if served:
            self.writes_this_turn = 0
            self.writes_per_turn += (served - self.writes_per_turn) * TURN_AVERAGE_WEIGHT

    def deadline_reached(self, now_ms: int) -> None:
        """The runtime's timer for `signature_deadline_ms` ran out at `now_ms` (the host
        clock as the enclave extrapolates it): mark the signature due if it is. Only the
        signature's time is taken from it; Raft's timers move with the host's ticks alone,
        so an enclave that runs on while its host is stalled never times Raft out."""
        deadline_ms = self.signature_deadline_ms()
        if deadline_ms is not None and now_ms >= deadline_ms:
            self._mark_due_by_time(now_ms)
            self._due_at_ms = now_ms

    def _mark_due_by_time(self, now_ms: int) -> None:
        """The time rule made a signature due; noted as early if only the light-load
        delay made it so (the `light_load_signatures` counter)."""
        self.signature_due = True
        self._due_early = now_ms - self.last_signature_ms < self.core.config.signatures.delay_ms

    # ------------------------------------------------------------------ host events
    def tick(self, now_ms: int) -> None:
        core = self.core
        elapsed = 0 if core.last_tick_ms is None else now_ms - core.last_tick_ms
        core.last_tick_ms = now_ms
        self.raft.tick(max(0, min(elapsed, MAX_TICK_ELAPSED_MS)))
        if (
            self.is_primary
            and self.txs_since_signature > 0
            and now_ms - self.last_signature_ms >= self.signature_delay_ms()
        ):
            self._mark_due_by_time(now_ms)
        if now_ms - self._commit_sealed_ms >= COMMIT_SEAL_INTERVAL_MS:
            # Also when the service went idle right after its last commits.
            self._commit_sealed_ms = now_ms
            self.seal_progress()

    def on_entries_read(self, frame: itf.EntriesRead) -> None:
        """Entries the host read back for a lagging peer (see `process_ready`)."""
        peer = self._entry_requests.pop(frame.request_id, None)
        if peer is None or self.raft.role is not Role.PRIMARY:
            return
        tree = self.log.history.tree
        entries = []
        for offset, raw in enumerate(frame.entries):
            entry = log_entry_from_raw(raw)
            seqno = frame.first_seqno + offset
            if entry.index != seqno or (
                tree.min_index <= seqno < tree.size and entry_leaf(raw) != tree.leaf(seqno)
            ):
                LOG.warning("event=host_returned_bad_entry seqno=%d", seqno)
                return
            entries.append(entry)
        self.raft.provide_entries(peer, entries)

    def take_deferred(self) -> None:
        """A joiner now holds the secrets: apply what it received before."""
        deferred, self.deferred = self.deferred, []
        for entry in deferred:
            if entry.index > self.log.applied_seqno:
                self.log.apply(entry, self.identity)
