"""A Raft node's state and its elections: roles, views, timers, pre-vote and votes.

`Raft` (raft.py) builds replication, commit and membership on top of this class; the split
keeps each module to one idea. Nothing here does I/O: outgoing messages are queued in
`_msgs` and handed out by `Raft.ready()`.
"""

from __future__ import annotations

import logging
import random

from charter.consensus import quorum
from charter.consensus.errors import ConsensusError
from charter.consensus.log import RaftLog
from charter.consensus.messages import (
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
)
from charter.consensus.progress import Progress
from charter.consensus.types import (
    LEADERSHIP_STATES,
    Ack,
    ConsensusDetails,
    EntryRequest,
    LogEntry,
    RaftConfig,
    Role,
    StartState,
)

logger = logging.getLogger(__name__)


class RaftState:
    """State shared by every role, and the election half of Raft."""

    def __init__(
        self,
        node_id: str,
        *,
        config: RaftConfig | None = None,
        start: StartState | None = None,
        state: StartState | None = None,
        rng_seed: int = 0,
    ) -> None:
        st = start if start is not None else state
        if st is None:
            raise ConsensusError("a StartState is required", code="BadStartState")
        if not node_id:
            raise ConsensusError("empty node id", code="BadStartState")
        self.id = node_id
        self._cfg = config if config is not None else RaftConfig()
        self._rng = random.Random(rng_seed)
        self._log = RaftLog(st.last_index, st.last_term, st.configuration)
        self._term = max(st.term, st.last_term)
        self._voted_for: str | None = st.voted_for if st.term == self._term else None
        self._commit_index = st.commit_index
        self._durable_index = st.last_index
        self._role = Role.BACKUP
        self._leader_id: str | None = None
        self._learners: set[str] = set()
        self._election_elapsed_ms = 0
        self._heartbeat_elapsed_ms = 0
        self._timeout_ms = 0
        # The core's own clock: the sum of every tick's elapsed_ms (never a wall clock).
        self._now_ms = 0
        # Set while a primary whose removal committed waits for a voter to hold its whole log.
        self._handover_since_ms: int | None = None
        self._ticked = False
        # (primary, _now_ms) of the last AppendEntries received, for details().
        self._primary_heard: tuple[str, int] | None = None
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        # Highest index known to match the current primary's log (follower side).
        self._verified_index = 0
        self._durable_reported = 0
        self._commit_sent = 0
        # Pending outputs, handed over by ready().
        self._msgs: list[tuple[str, Message]] = []
        self._unstable: list[LogEntry] = []
        self._truncate_to: int | None = None
        self._commit_changed = False
        self._hard_dirty = False
        self._role_changed = False
        self._entry_requests: list[EntryRequest] = []
        self._released: list[str] = []
        self._durable_msgs: list[tuple[str, Message, int]] = []
        self._unsent = False  # entries proposed since the last broadcast
        # With `hold_until_signature`: entries above this index are not sent yet.
        self._release_index = 0
        self._reset_election_timer()

    # -- read-only state ---------------------------------------------------------------------
    @property
    def view(self) -> int:
        return self._term

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> str | None:
        return self._leader_id

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def last_term(self) -> int:
        return self._log.last_term

    @property
    def commit_index(self) -> int:
        return self._commit_index

    @property
    def durable_index(self) -> int:
        return self._durable_index

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def configuration(self) -> frozenset[str]:
        """Voters in force (the latest configuration appended, committed or not)."""
        return self._log.configuration

    @property
    def learners(self) -> frozenset[str]:
        return frozenset(self._learners - self._log.configuration)

    @property
    def log(self) -> RaftLog:
        return self._log

    def term_at(self, index: int) -> int | None:
        return self._log.term_at(index)

    def entry(self, index: int) -> LogEntry:
        return self._log.entry(index)

    @property
    def now_ms(self) -> int:
        """Time on the core's clock: every tick's `elapsed_ms` added up."""
        return self._now_ms

    def details(self) -> ConsensusDetails:
        """What this node knows of consensus, for operators (`GET /node/consensus`)."""
        now = self._now_ms
        acks = {}
        if self._role is Role.PRIMARY:
            for peer, pr in sorted(self._progress.items()):
                assert pr.heard_at_ms <= now
                acks[peer] = Ack(
                    pr.match_index, now - pr.heard_at_ms, pr.peer_commit_index, pr.behind_start
                )
        heard_ms = None
        leader = self._leader_id
        if leader is not None and leader != self.id and self._primary_heard is not None:
            heard_from, heard_at = self._primary_heard
            if heard_from == leader:
                heard_ms = now - heard_at
        configuration = self._log.configuration
        if self._role is Role.RETIRED:
            membership = "Retired"
        elif self.id in configuration:
            membership = "Active"
        else:
            membership = "Learner"
        return ConsensusDetails(
            node_id=self.id,
            current_view=self._term,
            primary_id=leader,
            leadership_state=LEADERSHIP_STATES.get(self._role),
            membership_state=membership,
            configuration=configuration,
            configuration_seqno=self._log.configuration_index,
            learners=frozenset(self._learners - configuration),
            acks=acks,
            commit_seqno=self._commit_index,
            last_seqno=self._log.last_index,
            durable_seqno=self._durable_index,
            primary_last_received_ms=heard_ms,
            ticking=self._ticked,
        )

    # -- roles and elections -----------------------------------------------------------------
    def _set_role(self, role: Role) -> None:
        if role is not self._role:
            logger.info(
                "role node=%s view=%d %s->%s", self.id, self._term, self._role.value, role.value
            )
            self._role = role
            self._role_changed = True

    def _reset_election_timer(self) -> None:
        self._election_elapsed_ms = 0
        lo, hi = self._cfg.election_timeout_min_ms, self._cfg.election_timeout_max_ms
        self._timeout_ms = self._rng.randrange(lo, hi)

    def _in_lease(self) -> bool:
        return (
            self._cfg.check_quorum
            and self._leader_id is not None
            and self._election_elapsed_ms < self._cfg.election_timeout_min_ms
        )

    def _can_campaign(self) -> bool:
        """A voter campaigns; so does a node its latest configuration leaves out while that
        configuration is not known committed: until it is, that node may be the only one
        whose log can win (Raft dissertation, section 4.2.2). It counts only the new
        configuration's votes, and retires once that configuration commits."""
        if self._role is Role.RETIRED:
            return False
        log = self._log
        return self.id in log.configuration or (
            log.configuration_index > self._commit_index and log.was_voter_before_latest(self.id)
        )

    def _become_follower(self, term: int, leader: str | None) -> None:
        assert term >= self._term
        if term > self._term:
            self._term, self._voted_for = term, None
            self._hard_dirty = True
            self._verified_index = 0
            self._durable_reported = 0
        self._leader_id = leader
        self._progress.clear()
        self._votes.clear()
        self._set_role(Role.BACKUP)
        self._reset_election_timer()

    def _campaign(self, *, pre_vote: bool, forced: bool = False) -> None:
        self._votes = {self.id: True}
        self._leader_id = None
        self._progress.clear()
        self._reset_election_timer()
        last_index, last_term = self._log.last_index, self._log.last_term
        if pre_vote:
            self._set_role(Role.PRE_CANDIDATE)
            msg: Message = PreVote(self._term + 1, self.id, last_index, last_term)
        else:
            self._term += 1
            self._voted_for = self.id
            self._hard_dirty = True
            self._verified_index = 0
            self._set_role(Role.CANDIDATE)
            msg = RequestVote(self._term, self.id, last_index, last_term, forced)
        for voter in sorted(self._log.configuration):
            if voter != self.id:
                self._send(voter, msg)
        self._tally()

    def _on_vote(self, voter: str, granted: bool) -> None:
        if voter in self._log.configuration and voter not in self._votes:
            self._votes[voter] = granted
            self._tally()

    def _tally(self) -> None:
        result = quorum.vote_result(self._log.configuration, self._votes)
        if result is True:
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_primary()
        elif result is False:
            self._become_follower(self._term, None)

    def _log_up_to_date(self, last_term: int, last_index: int) -> bool:
        return (last_term, last_index) >= (self._log.last_term, self._log.last_index)

    def _on_request_vote(self, m: RequestVote) -> None:
        can_vote = self._voted_for == m.sender or (
            self._voted_for is None and self._leader_id is None
        )
        granted = can_vote and self._log_up_to_date(m.last_term, m.last_index)
        if granted:
            self._voted_for = m.sender
            self._hard_dirty = True
            self._election_elapsed_ms = 0
        self._send(m.sender, RequestVoteResponse(self._term, self.id, granted))

    def _on_pre_vote(self, m: PreVote) -> None:
        granted = m.term > self._term and self._log_up_to_date(m.last_term, m.last_index)
        self._send(m.sender, PreVoteResponse(m.term if granted else self._term, self.id, granted))

    def _send(self, to: str, msg: Message) -> None:
        self._msgs.append((to, msg))

    def _become_primary(self) -> None:
        raise NotImplementedError  # Raft implements it: it sets up replication
