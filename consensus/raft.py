"""Raft as a state machine without I/O: inputs are method calls, outputs come from `ready()`.

CCF calls terms "views" and log indices "seqnos". Departures from textbook Raft, all from
CCF or etcd:
- commit advances only to entries flagged as signatures, and counts, for each voter
  including the primary, only the entries its host reported durable (`durable()`);
- pre-vote and check-quorum (a primary that has not heard from a majority within an election
  timeout steps down; a node that hears from a primary ignores vote requests for that long);
- a configuration (voter set) is in force as soon as its entry is appended; it changes one
  node at a time, only once the previous change and an entry of the current view are
  committed; a node whose removal is committed retires (a retiring primary first hands over
  with TimeoutNow).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from charter.consensus import confchange, quorum
from charter.consensus.election import RaftState
from charter.consensus.errors import ConsensusError, NotPrimaryError
from charter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from charter.consensus.progress import Progress
from charter.consensus.ready import Ready
from charter.consensus.types import (
    EntryRequest,
    HardState,
    LogEntry,
    RaftConfig,
    Role,
    StartState,
)

logger = logging.getLogger(__name__)

# A removed peer that has not answered for this many (longest) election timeouts since its
# removal committed is taken as gone: heartbeats to it stop.
REMOVED_PEER_SILENT_TIMEOUTS = 10
# A peer found behind this log's start point is asked again, from the start point, this
# often: it may have been rebuilt from a later snapshot since, or the ledger read that came
# back empty may have failed.
BEHIND_START_RETRY_MS = 10_000


class Raft(RaftState):
    """One node's Raft. Not thread safe: the runtime calls it from one task."""

    @classmethod
    def restore(
        cls,
        node_id: str,
        *,
        config: RaftConfig | None = None,
        start: StartState,
        entries: Sequence[LogEntry],
        rng_seed: int = 0,
    ) -> Raft:
        """Restart on a durable log: `entries` follow `start.last_index` and are durable."""
        raft = cls(node_id, config=config, start=start, rng_seed=rng_seed)
        prev_index, prev_term = start.last_index, start.last_term
        for e in entries:
            if e.index != prev_index + 1 or e.term < prev_term:
                raise ConsensusError(f"restored entry {e.index} out of order", code="BadRestore")
            prev_index, prev_term = e.index, e.term
        raft._log.extend(list(entries))
        raft._durable_index = raft._log.last_index
        if raft._term < raft._log.last_term:
            raft._term, raft._voted_for = raft._log.last_term, None
        if raft._commit_index > raft._log.last_index:
            raise ConsensusError("commit index beyond the restored log", code="BadRestore")
        raft._check_retired()
        return raft

    # -- read-only state (more in RaftState) ---------------------------------------------------
    @property
    def handing_over(self) -> bool:
        """A primary whose removal committed, waiting for a voter to hold its whole log:
        it still replicates, but proposes nothing."""
        return self._handover_since_ms is not None

    @property
    def held_count(self) -> int:
        """Entries `hold_until_signature` holds back from the peers (primary only)."""
        if self._role is not Role.PRIMARY:
            return 0
        return self._log.last_index - self._release_index

    def is_caught_up(self, node_id: str) -> bool:
        """On the primary: has `node_id` durably replicated everything committed so far?"""
        pr = self._progress.get(node_id)
        return (
            self._role is Role.PRIMARY and pr is not None and pr.match_index >= self._commit_index
        )

    def peer_match_index(self, node_id: str) -> int:
        pr = self._progress.get(node_id)
        return pr.match_index if pr is not None else 0

    # -- inputs ------------------------------------------------------------------------------
    def tick(self, elapsed_ms: int | None = None) -> None:
        """Advance time. Without an argument, one heartbeat interval passes."""
        if elapsed_ms is None:
            elapsed_ms = self._cfg.heartbeat_interval_ms
        assert elapsed_ms >= 0
        self._now_ms += elapsed_ms
        self._ticked = True
        if self._role is Role.RETIRED:
            return
        self._election_elapsed_ms += elapsed_ms
        if self._role is Role.PRIMARY:
            self._tick_primary(elapsed_ms)
        elif self._election_elapsed_ms >= self._timeout_ms:
            self._reset_election_timer()
            if self._can_campaign():
                self._campaign(pre_vote=self._cfg.pre_vote)

    def campaign(self) -> None:
        """Start an election now (bootstrap of a fresh network, tests)."""
        if self._role is not Role.PRIMARY and self._can_campaign():
            self._campaign(pre_vote=self._cfg.pre_vote)

    def propose(
        self, data: bytes, *, signature: bool, configuration: frozenset[str] | None = None
    ) -> tuple[int, int]:
        """Append an entry on the primary; returns its (view, seqno)."""
        if self._role is not Role.PRIMARY:
            raise NotPrimaryError(f"{self.id} is not primary (primary: {self._leader_id})")
        if self._handover_since_ms is not None:
            raise NotPrimaryError(f"{self.id} is retiring and hands its primaryship over")
        if len(data) > self._cfg.max_entry_bytes:
            raise ConsensusError("entry too large", code="EntryTooLarge")
        if configuration is not None:
            self.check_configuration_change(configuration)
        entry = self._log.append_new(self._term, data, signature, configuration)
        self._unstable.append(entry)
        cfg = self._cfg
        if cfg.hold_until_signature and not signature and configuration is None:
            # Commit (so compaction) never passes a released signature: the held entries
            # are all in memory.
            first_held = self._release_index + 1
            if (
                entry.index - self._release_index < cfg.max_batch_entries
                and self._log.bytes_between(first_held, entry.index) < cfg.max_batch_bytes
            ):
                return self._term, entry.index
        self._release_index = entry.index
        self._unsent = True
        if configuration is not None:
            self._on_primary_configuration(entry.index, configuration)
        return self._term, entry.index

    def release_held(self) -> None:
        """Send the entries `hold_until_signature` holds with the next `ready()` (a write
        whose effect a backup waits to see, a hand-over)."""
        last = self._log.last_index
        if self._role is Role.PRIMARY and self._release_index < last:
            self._release_index = last
            self._unsent = True

    def durable(self, seqno: int, view: int | None = None) -> None:
        """The host made every entry up to `seqno` durable. Pass the entry's `view` when a
        report may refer to writes made before a truncation: a mismatch is then ignored."""
        if self._role is Role.RETIRED or seqno <= self._durable_index:
            return
        seqno = min(seqno, self._log.last_index)
        if view is not None and self._log.term_at(seqno) != view:
            return
        self._durable_index = seqno
        if self._role is Role.PRIMARY:
            self._maybe_commit()
        elif self._leader_id is not None and self._leader_id != self.id:
            self._report_durable()

    def add_learner(self, node_id: str) -> None:
        """Replicate to `node_id` without counting it (a joining node catching up)."""
        if node_id == self.id:
            return
        self._learners.add(node_id)
        if self._role is Role.PRIMARY and node_id not in self._progress:
            self._progress[node_id] = Progress(self._log.last_index + 1, self._now_ms)

    def remove_learner(self, node_id: str, removed_at: int | None = None) -> None:
        """Stop treating `node_id` as a learner: it became a voter, or (with `removed_at`, the
        index of the entry that removed it) it was removed before it ever counted. A removed
        learner is replicated to, like a removed voter, until it says it committed that
        entry (so it can retire) or stays silent long after; without `removed_at` it is
        dropped at once."""
        self._learners.discard(node_id)
        pr = self._progress.get(node_id)
        if pr is None or node_id in self._log.configuration or pr.removal_index is not None:
            return
        if removed_at is None or self._role is not Role.PRIMARY:
            del self._progress[node_id]
        else:
            pr.removal_index = removed_at

    def track_removed(self, node_id: str, removed_at: int) -> None:
        """Primary: `node_id` left the service (governance says so) but may not know it yet:
        replicate to it, without counting it, until it says it committed `removed_at` (then
        it is in `Ready.released`) or stays silent long after (then it is dropped; the caller
        may track it again later). This is how a primary
        elected after a removal tells a removed node that the one that removed it did not."""
        if (
            self._role is not Role.PRIMARY
            or node_id == self.id
            or node_id in self._log.configuration
            or node_id in self._learners
        ):
            return
        pr = self._progress.get(node_id)
        if pr is None:
            pr = self._progress[node_id] = Progress(self._log.last_index + 1, self._now_ms)
        if pr.removal_index is None:
            pr.removal_index = removed_at

    def retire(self) -> None:
        """Retire a node that never became a voter, once the runtime saw its removal commit
        (a voter retires by itself when the configuration without it commits)."""
        if self.id in self._log.configuration:
            raise ConsensusError(f"{self.id} is a voter: it retires by configuration")
        if self._role is Role.RETIRED or self._log.configuration_index > self._commit_index:
            # Not yet: a configuration without it is still in flight (it was a voter after
            # all, e.g. before a snapshot it restarted from); a later call retires it.
            return
        if self._role is Role.PRIMARY:
            self._hand_over()
        logger.info("retired learner node=%s view=%d", self.id, self._term)
        self._set_role(Role.RETIRED)
        self._leader_id = None
        self._progress.clear()

    def compact(self, index: int) -> None:
        """Forget entries up to `index` (at most the commit index) from memory."""
        index = min(index, self._commit_index, self._durable_index)
        if index > self._log.first_index - 1:
            self._log.compact(index)

    def provide_entries(self, peer: str, entries: Sequence[LogEntry]) -> None:
        """Answer an EntryRequest with entries read back from the ledger."""
        pr = self._progress.get(peer)
        if self._role is not Role.PRIMARY or pr is None or not pr.awaiting_entries:
            return
        if not entries:
            if pr.next_index <= self._log.start_index:
                # Before this log's start point (this node started from a snapshot after
                # them): no ledger here holds them, and only a snapshot could bring the peer
                # up. It stays waiting; say so, and report it (`details`). The heartbeat asks
                # it again now and then (`BEHIND_START_RETRY_MS`).
                pr.behind_start_ms = self._now_ms
                if pr.behind_start:
                    return
                pr.behind_start = True
                logger.warning(
                    "peer behind the start point node=%s peer=%s next=%d start=%d",
                    self.id,
                    peer,
                    pr.next_index,
                    self._log.start_index,
                )
                return
            # The read failed (the entries should be in the ledger): read again at the next
            # heartbeat. Before, the peer stayed waiting for entries and was sent nothing
            # again, ever.
            pr.awaiting_entries = False
            pr.become_probe(max(pr.next_index, pr.acked_index + 1))
            pr.paused = True
            return
        for k, e in enumerate(entries):
            known = self._log.term_at(e.index)
            if (known is not None and known != e.term) or e.index != entries[0].index + k:
                raise ConsensusError("provided entries do not match the log", code="BadEntries")
        batch = list(entries)
        prev = batch[0].index - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            # Below our start point: the first provided entry serves as the anchor.
            first = batch.pop(0)
            prev, prev_term = first.index, first.term
        pr.awaiting_entries = False
        pr.probing, pr.paused = True, True
        self._send(
            peer,
            AppendEntries(self._term, self.id, prev, prev_term, tuple(batch), self._commit_index),
        )

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if m.sender == self.id:
            return
        if self._role is Role.RETIRED:
            if isinstance(m, AppendEntries):
                # A primary that does not know this node retired (elected since, or it gave
                # up on it while it was down) learns it from the commit index: enough for it
                # to stop. Nothing else is answered or changed.
                self._send(
                    m.sender,
                    AppendEntriesResponse(
                        m.term, self.id, False, 0, 0, m.prev_index, 0, 0, self._commit_index
                    ),
                )
            return
        if m.term > self._term:
            forced = isinstance(m, RequestVote) and m.forced
            if isinstance(m, PreVote | RequestVote) and self._in_lease() and not forced:
                return
            if isinstance(m, PreVote) or (isinstance(m, PreVoteResponse) and m.granted):
                pass  # pre-votes never change anyone's term
            else:
                leader = m.sender if isinstance(m, AppendEntries) else None
                self._become_follower(m.term, leader)
        elif m.term < self._term:
            if isinstance(m, AppendEntries):
                # Tell a stale primary about the newer view so that it steps down.
                self._send(m.sender, AppendEntriesResponse(self._term, self.id, False, 0, 0))
            elif isinstance(m, PreVote):
                self._send(m.sender, PreVoteResponse(self._term, self.id, False))
            return
        if isinstance(m, AppendEntries):
            self._on_append(m)
        elif isinstance(m, AppendEntriesResponse):
            if self._role is Role.PRIMARY:
                self._on_append_response(m)
        elif isinstance(m, RequestVote):
            self._on_request_vote(m)
        elif isinstance(m, PreVote):
            self._on_pre_vote(m)
        elif isinstance(m, RequestVoteResponse):
            if self._role is Role.CANDIDATE and m.term == self._term:
                self._on_vote(m.sender, m.granted)
        elif isinstance(m, PreVoteResponse):
            if self._role is Role.PRE_CANDIDATE and m.term == self._term + 1:
                self._on_vote(m.sender, m.granted)
        elif isinstance(m, TimeoutNow) and self._role is Role.BACKUP and self._can_campaign():
            logger.info("handover node=%s view=%d", self.id, self._term)
            self._campaign(pre_vote=False, forced=True)

    def has_ready(self) -> bool:
        """Would `ready()` return any output? (Cheap; for the runtime's loop.)"""
        return bool(
            self._msgs
            or self._unstable
            or self._truncate_to is not None
            or self._commit_changed
            or self._hard_dirty
            or self._role_changed
            or self._entry_requests
            or self._released
            or self._durable_msgs
            or (
                self._role is Role.PRIMARY
                and (self._unsent or self._commit_sent < self._commit_index)
            )
        )

    def ready(self) -> Ready:
        """Collect every output since the last call."""
        if self._role is Role.PRIMARY:
            if self._unsent:
                # Proposals since the last call go out together: this is where batching happens.
                self._unsent = False
                for peer, pr in self._progress.items():
                    self._send_entries(peer, pr)
            if self._commit_sent < self._commit_index:
                self._send_commit()
        hard = HardState(self._term, self._voted_for) if self._hard_dirty else None
        r = Ready(
            messages=self._msgs,
            entries=self._unstable,
            truncate_to=self._truncate_to,
            commit_index=self._commit_index if self._commit_changed else None,
            hard_state=hard,
            role=self._role,
            role_changed=self._role_changed,
            leader_id=self._leader_id,
            view=self._term,
            entry_requests=self._entry_requests,
            released=self._released,
            durable_messages=self._durable_msgs,
        )
        self._msgs, self._unstable, self._entry_requests, self._released = [], [], [], []
        self._durable_msgs = []
        self._truncate_to = None
        self._commit_changed = self._hard_dirty = self._role_changed = False
        return r

    # -- primary ---------------------------------------------------------------------------
    def _become_primary(self) -> None:
        assert self._role is Role.CANDIDATE
        self._set_role(Role.PRIMARY)
        self._leader_id = self.id
        self._votes.clear()
        self._election_elapsed_ms = 0
        self._heartbeat_elapsed_ms = 0
        nxt = self._log.last_index + 1
        # What earlier views left in the log goes out at once.
        self._release_index = self._log.last_index
        self._progress = {}
        for peer in sorted(self._log.configuration | self._learners):
            if peer != self.id:
                self._progress[peer] = Progress(nxt, self._now_ms)
        self._commit_sent = self._commit_index
        logger.info("primary node=%s view=%d last=%d", self.id, self._term, nxt - 1)
        self._heartbeat()  # claim the view at once rather than one interval later
        # The runtime now appends a signature entry in this view: only that can commit.

    def _tick_primary(self, elapsed_ms: int) -> None:
        self._heartbeat_elapsed_ms += elapsed_ms
        if self._handover_since_ms is not None:
            self._continue_hand_over()
            if self._role is not Role.PRIMARY:
                return
        if (
            self._cfg.check_quorum
            and self._election_elapsed_ms >= self._cfg.election_timeout_min_ms
        ):
            self._election_elapsed_ms = 0
            active = [self.id, *(p for p, pr in self._progress.items() if pr.recent_active)]
            for pr in self._progress.values():
                pr.recent_active = False
            if not quorum.has_quorum(self._log.configuration, active):
                logger.warning("check-quorum lost node=%s view=%d", self.id, self._term)
                self._become_follower(self._term, None)
                return
        if self._heartbeat_elapsed_ms >= self._cfg.heartbeat_interval_ms:
            self._heartbeat_elapsed_ms = 0
            self.release_held()  # held entries wait at most one heartbeat interval
            for peer, pr in list(self._progress.items()):
                if pr.removal_index is not None:
                    self._done_with_removed(peer, pr)
            self._heartbeat()

    def _heartbeat(self) -> None:
        for peer, pr in self._progress.items():
            if pr.awaiting_entries:
                if pr.behind_start and self._now_ms - pr.behind_start_ms >= BEHIND_START_RETRY_MS:
                    # Probe it at this log's start point: a peer that holds it by now (it
                    # was rebuilt from a later snapshot) answers with success; one that
                    # still does not leads back here.
                    pr.awaiting_entries = False
                    pr.behind_start_ms = self._now_ms
                    pr.become_probe(max(self._log.start_index + 1, pr.acked_index + 1))
                    self._send_entries(peer, pr, empty_ok=True)
                continue
            if pr.probing:
                pr.paused = False
                self._send_entries(peer, pr, empty_ok=True)
                continue
            if pr.inflight and pr.acked_index == pr.acked_at_heartbeat:
                # Nothing acknowledged for a whole interval: assume loss and resend.
                pr.become_probe(pr.acked_index + 1)
                self._send_entries(peer, pr, empty_ok=True)
            else:
                self._send_heartbeat(peer, pr)
            pr.acked_at_heartbeat = pr.acked_index

    def _send_heartbeat(self, peer: str, pr: Progress) -> None:
        prev = pr.acked_index
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            return
        self._send(
            peer, AppendEntries(self._term, self.id, prev, prev_term, (), self._commit_index)
        )

    def _send_commit(self) -> None:
        """Tell idle peers that commit advanced (busy peers learn it from the next batch)."""
        self._commit_sent = self._commit_index
        if self._cfg.hold_until_signature and self._release_index < self._log.last_index:
            return  # entries wait for their signature: the batch with them tells everyone
        busy = {to for to, m in self._msgs if isinstance(m, AppendEntries)}
        for peer, pr in self._progress.items():
            if peer not in busy and not pr.probing and not pr.awaiting_entries:
                self._send_heartbeat(peer, pr)

    # -- replication, primary side -----------------------------------------------------------
    def _send_entries(self, peer: str, pr: Progress, *, empty_ok: bool = False) -> None:
        log, cfg = self._log, self._cfg
        last = log.last_index
        if cfg.hold_until_signature:
            last = min(last, self._release_index)
        for _ in range(cfg.max_inflight_messages):
            if pr.awaiting_entries or (pr.probing and pr.paused):
                return
            lo = pr.next_index
            if lo > last and not (pr.probing and empty_ok):
                return
            if not pr.probing and (
                len(pr.inflight) >= cfg.max_inflight_messages
                or pr.inflight_bytes >= cfg.max_inflight_bytes
            ):
                return
            prev_term = log.term_at(lo - 1)
            if lo <= last and (lo < log.first_index or prev_term is None):
                hi = min(log.first_index - 1, lo + cfg.max_batch_entries - 1)
                pr.awaiting_entries = True
                # With the entry before `lo` too when its term is not in memory: it anchors
                # the batch (`provide_entries`), which then still starts at `lo`. Anchored
                # on `lo` itself, a peer whose log ends at `lo - 1` could never accept it.
                first = lo - 1 if lo > 1 and prev_term is None else lo
                self._entry_requests.append(EntryRequest(peer, first, max(lo, hi)))
                return
            assert prev_term is not None
            if lo <= last:
                hi = log.batch_end(lo, cfg.max_batch_entries, cfg.max_batch_bytes)
                entries = tuple(log.slice(lo, hi))
            else:
                hi, entries = lo - 1, ()
            msg = AppendEntries(self._term, self.id, lo - 1, prev_term, entries, self._commit_index)
            self._msgs.append((peer, msg))
            if pr.probing:
                pr.paused = True
                return
            pr.next_index = hi + 1
            size = log.bytes_between(lo, hi)
            pr.inflight.append((hi, size))
            pr.inflight_bytes += size

    def _on_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self._progress.get(m.sender)
        if pr is None:
            return
        pr.recent_active = True
        pr.heard_at_ms = self._now_ms
        pr.peer_commit_index = max(pr.peer_commit_index, m.commit_index)
        if pr.removal_index is not None and (
            pr.peer_commit_index >= pr.removal_index or m.from_retired
        ):
            # It committed its removal, or says it retired: a primary that tracks it since
            # (elected after the removal) counts from its own log's end, which a retired
            # node, whose commit index stopped at its removal, never reaches.
            self._done_with_removed(m.sender, pr, said_retired=m.from_retired)
            return
        last = self._log.last_index
        if m.success:
            pr.behind_start = False
            acked = min(m.last_index, last)
            pr.on_ack(acked)
            durable = min(m.durable_index, last)
            if durable > pr.match_index:
                pr.match_index = durable
                self._maybe_commit()
                if self._role is Role.PRIMARY and self._handover_since_ms is not None:
                    self._continue_hand_over()
                if self._role is not Role.PRIMARY:
                    return
            if pr.probing and m.last_index >= pr.next_index - 1:
                pr.become_replicate()
            if pr.removal_index is not None and self._done_with_removed(m.sender, pr):
                return
            self._send_entries(m.sender, pr)
            return
        # Rejected: skip back a whole term and probe from there.
        if pr.probing and m.reject_index != pr.next_index - 1:
            return  # the answer to an earlier probe
        if m.reject_index <= pr.match_index:
            # The peer no longer holds an entry it reported durable: it restarted without the
            # unsigned tail of its ledger, or lost a torn one. (Or this is an old answer: then
            # its next success reports the durable index again.) Believe it: ignoring it would
            # probe the same index forever. Safe because only signatures commit and the lost
            # tail follows the peer's last signature, so no commit counted on it is undone.
            logger.warning(
                "peer went back node=%s peer=%s durable=%d rejected=%d",
                self.id,
                m.sender,
                pr.match_index,
                m.reject_index,
            )
            # Count nothing the answer does not vouch for; its next success says how far.
            pr.match_index = max(0, min(m.reject_index, m.hint_index) - 1)
        if m.reject_index <= pr.acked_index:
            # The peer lost entries it had acknowledged but not made durable (it crashed), or
            # this is an old answer: trust only what it made durable.
            pr.acked_index = pr.match_index
        nxt = m.hint_index
        if m.hint_term:
            mine = self._log.last_index_of_term(m.hint_term)
            if mine is not None:
                nxt = mine + 1
        nxt = max(pr.acked_index + 1, min(nxt, m.reject_index))
        # Nor below the peer's commit index: its committed prefix is in this log (Leader
        # Completeness), and a peer rejects only past it. Without this, a hint of a view
        # this log no longer holds in memory (it started from a later snapshot) sends the
        # probe back to the view's first entry, which may be before any ledger here.
        nxt = max(nxt, min(m.commit_index + 1, m.reject_index))
        pr.become_probe(nxt)
        self._send_entries(m.sender, pr, empty_ok=True)

    def _done_with_removed(self, peer: str, pr: Progress, *, said_retired: bool = False) -> bool:
        """Stop replicating to a removed peer once it said it committed its removal (so it
        retired), or once it stayed silent for long after the removal committed (it stopped,
        or is cut off). Holding its removal entry is not enough: it commits, and so retires,
        only at a signature after that entry, and only once a primary says that signature is
        committed; a last heartbeat sent without them (or lost) would leave it running as a
        backup of a configuration that no longer has it, never told."""
        assert pr.removal_index is not None
        told = said_retired or pr.peer_commit_index >= pr.removal_index
        silent_ms = self._now_ms - pr.heard_at_ms
        gone = (
            self._commit_index >= pr.removal_index
            and silent_ms >= REMOVED_PEER_SILENT_TIMEOUTS * self._cfg.election_timeout_max_ms
        )
        if not (told or gone):
            return False
        logger.info(
            "done with removed peer node=%s peer=%s retired=%s silent_ms=%d",
            self.id,
            peer,
            told,
            silent_ms,
        )
        del self._progress[peer]
        if told:
            self._released.append(peer)
        return True

    def _maybe_commit(self) -> None:
        held = {peer: pr.match_index for peer, pr in self._progress.items()}
        held[self.id] = self._durable_index
        quorum_index = quorum.committed_index(self._log.configuration, held)
        sig = self._log.last_signature_at_or_below(quorum_index)
        # Raft's rule: only an entry of the current view is committed by counting replicas.
        if sig > self._commit_index and self._log.term_at(sig) == self._term:
            self._advance_commit(sig)

    def _advance_commit(self, index: int) -> None:
        assert index >= self._commit_index, "commit index never moves back"
        assert index <= self._log.last_index
        if index == self._commit_index:
            return
        self._commit_index = index
        self._commit_changed = True
        self._check_retired()

    def _check_retired(self) -> None:
        log = self._log
        if self.id in log.configuration or log.configuration_index > self._commit_index:
            return
        if not log.was_voter_before_latest(self.id):
            return
        if self._role is Role.RETIRED:
            return
        if self._role is Role.PRIMARY:
            if self._handover_since_ms is None:
                logger.info("handing over node=%s view=%d", self.id, self._term)
                self._handover_since_ms = self._now_ms
                self.release_held()  # a successor must hold the whole log
            self._continue_hand_over()
            return
        self._retire_now()

    def _become_follower(self, term: int, leader: str | None) -> None:
        # A primary deposed while handing over retires as a backup: its removal committed.
        handing_over = self._handover_since_ms is not None
        self._handover_since_ms = None
        super()._become_follower(term, leader)
        if handing_over:
            self._check_retired()

    def _retire_now(self) -> None:
        logger.info("retired node=%s view=%d", self.id, self._term)
        self._handover_since_ms = None
        self._set_role(Role.RETIRED)
        self._leader_id = None
        self._progress.clear()

    def _continue_hand_over(self) -> None:
        """A primary whose removal committed proposes nothing more and waits until a voter
        durably holds its whole log, so that no entry it accepted (a write it answered) is
        lost with it; then it asks that voter to campaign at once and retires. Past one
        election timeout it hands over to the most up-to-date voter anyway."""
        assert self._handover_since_ms is not None
        best = self._best_successor()
        waited_ms = self._now_ms - self._handover_since_ms
        if best is None:
            if waited_ms >= self._cfg.election_timeout_min_ms:
                self._retire_now()  # no voter to hand over to: it elects itself
            return
        match, peer = best
        if match < self._log.last_index and waited_ms < self._cfg.election_timeout_min_ms:
            return
        if match < self._log.last_index:
            logger.warning(
                "hand-over timed out node=%s to=%s match=%d last=%d",
                self.id,
                peer,
                match,
                self._log.last_index,
            )
        self._send(peer, TimeoutNow(self._term, self.id))
        self._retire_now()

    def _best_successor(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for peer, pr in self._progress.items():
            if peer in self._log.configuration and (best is None or pr.match_index > best[0]):
                best = (pr.match_index, peer)
        return best

    def _hand_over(self) -> None:
        """A retiring primary asks the most up-to-date voter to campaign."""
        best = self._best_successor()
        if best is not None:
            self._send(best[1], TimeoutNow(self._term, self.id))

    def check_configuration_change(self, new: frozenset[str]) -> None:
        """Raise `ConfigurationError` unless this node, as primary now, may propose `new` as
        the next voter set (`confchange.check_configuration_change`); `propose` asks the same."""
        confchange.check_configuration_change(
            current=self._log.configuration,
            new=new,
            configuration_index=self._log.configuration_index,
            commit_index=self._commit_index,
            commit_term=self._log.term_at(self._commit_index),
            term=self._term,
            proposer=self.id,
            is_caught_up=self.is_caught_up,
        )

    def _on_primary_configuration(self, index: int, new: frozenset[str]) -> None:
        for node in sorted(new):
            if node != self.id and node not in self._progress:
                self._progress[node] = Progress(self._log.last_index + 1, self._now_ms)
        for node, pr in self._progress.items():
            pr.removal_index = index if node not in new and node not in self._learners else None
        self._maybe_commit()

    # -- replication, follower side ----------------------------------------------------------
    def _on_append(self, m: AppendEntries) -> None:
        if self._role is not Role.BACKUP or self._leader_id != m.sender:
            self._become_follower(m.term, m.sender)
        self._election_elapsed_ms = 0
        self._primary_heard = (m.sender, self._now_ms)
        log = self._log
        prev, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if entries and (
            entries[0].index != prev + 1
            or entries[-1].index != prev + len(entries)
            or entries[0].term < prev_term
            or entries[-1].term > m.term
        ):
            raise ConsensusError("malformed AppendEntries", code="MalformedMessage")
        if prev < self._commit_index:
            # Our committed prefix is in every later primary's log (Leader Completeness), so
            # it matches: skip what it covers and check nothing below it.
            entries = entries[min(self._commit_index - prev, len(entries)) :]
            prev = self._commit_index
        else:
            local_term = log.term_at(prev)
            if local_term != prev_term:
                self._reject(m, prev, local_term)
                return
        start = 0
        last = log.last_index
        while start < len(entries) and entries[start].index <= last:
            e = entries[start]
            if log.term_at(e.index) != e.term:
                self._truncate(e.index - 1)
                break
            start += 1
        appended = start < len(entries)
        if appended:
            new = entries[start:]
            log.extend(new)
            self._unstable.extend(new)
        verified = prev + len(entries)
        if verified > self._verified_index:
            self._verified_index = verified
        if m.leader_commit > self._commit_index:
            # Everything up to _verified_index matches this primary's log (same view).
            target = min(m.leader_commit, self._verified_index)
            if target < m.leader_commit:
                target = log.last_signature_at_or_below(target)
            if target > self._commit_index:
                self._advance_commit(target)
        durable = min(self._durable_index, self._verified_index)
        if appended and self._cfg.ack_when_durable and durable < verified:
            if self._cfg.ack_released_on_durable:
                # The answer `durable()` would give, made now and sent by the caller once
                # `verified` is durable: it no longer waits for that report.
                self._durable_reported = max(self._durable_reported, verified)
                self._hold_ack(
                    m.sender,
                    AppendEntriesResponse(
                        self._term,
                        self.id,
                        True,
                        verified,
                        verified,
                        commit_index=self._commit_index,
                    ),
                )
            return  # else `durable()` answers, with the durable index the primary counts
        self._durable_reported = max(self._durable_reported, durable)
        self._send_ack(
            m.sender,
            AppendEntriesResponse(
                self._term, self.id, True, verified, durable, commit_index=self._commit_index
            ),
        )

    def _hold_ack(self, to: str, ack: AppendEntriesResponse) -> None:
        """Queue an answer to send once `ack.durable_index` is durable; it replaces the one
        queued before it in this Ready when that says no more to the same primary."""
        held = self._durable_msgs
        if held and _says_no_less(held[-1][0], held[-1][1], to, ack):
            held[-1] = (to, ack, ack.durable_index)
            return
        held.append((to, ack, ack.durable_index))

    def _send_ack(self, to: str, ack: AppendEntriesResponse) -> None:
        """Queue a successful answer; it replaces the previous message queued in this Ready
        when that is a successful answer to the same primary in the same view that says no
        more (indices never higher). Several batches received in one turn, and the durable
        report that follows them, then cost the primary one answer instead of one each."""
        assert ack.success
        msgs = self._msgs
        if msgs and _says_no_less(msgs[-1][0], msgs[-1][1], to, ack):
            msgs[-1] = (to, ack)
            return
        self._send(to, ack)

    def _reject(self, m: AppendEntries, prev: int, local_term: int | None) -> None:
        log = self._log
        if local_term is None and prev > log.last_index:
            hint_index, hint_term = log.last_index + 1, 0
        elif local_term is None:
            hint_index, hint_term = self._commit_index + 1, 0
        else:
            hint_term = local_term
            hint_index = log.first_index_of_term_at(prev)
        self._send(
            m.sender,
            AppendEntriesResponse(
                self._term,
                self.id,
                False,
                0,
                0,
                m.prev_index,
                max(1, hint_index),
                hint_term,
                self._commit_index,
            ),
        )

    def _truncate(self, index: int) -> None:
        assert index >= self._commit_index, "never truncate committed entries"
        assert self._role is not Role.PRIMARY, "a primary never overwrites its log"
        logger.info("truncate node=%s to=%d last=%d", self.id, index, self._log.last_index)
        self._log.truncate(index)
        self._verified_index = min(self._verified_index, index)
        if self._truncate_to is None or index < self._truncate_to:
            self._truncate_to = index
        while self._unstable and self._unstable[-1].index > index:
            self._unstable.pop()
        # Answers for entries this truncation dropped, not handed out yet, must never go.
        self._durable_msgs = [h for h in self._durable_msgs if h[2] <= index]
        self._durable_index = min(self._durable_index, index)
        self._durable_reported = min(self._durable_reported, index)

    def _report_durable(self) -> None:
        assert self._leader_id is not None
        durable = min(self._durable_index, self._verified_index)
        if durable > self._durable_reported:
            self._durable_reported = durable
            self._send_ack(
                self._leader_id,
                AppendEntriesResponse(
                    self._term,
                    self.id,
                    True,
                    self._verified_index,
                    durable,
                    commit_index=self._commit_index,
                ),
            )

    # -- votes -------------------------------------------------------------------------------


def _says_no_less(last_to: str, last: Message, to: str, ack: AppendEntriesResponse) -> bool:
    """`ack` says all the queued `last` said: a successful answer to the same primary in
    the same view, with indices no lower (so it may take `last`'s place)."""
    return (
        last_to == to
        and type(last) is AppendEntriesResponse
        and last.success
        and last.term == ack.term
        and last.last_index <= ack.last_index
        and last.durable_index <= ack.durable_index
    )
