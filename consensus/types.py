"""Values shared by the Raft core, its messages and its caller: entries, roles, config.

Imports no other consensus module but `errors`, so `messages` can import it without a cycle;
the `Ready` result, which holds messages, is in `ready.py`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from charter.consensus.errors import ConsensusError

# The largest entry data consensus accepts (on propose and when decoding a message); the
# enclave checks it against the ledger's own entry limit (`enclave_app/interface/limits.py`).
MAX_ENTRY_BYTES = 16 << 20


class Role(enum.Enum):
    """A node's role. CCF calls the leader "Primary" and followers "Backup"."""

    PRIMARY = "Primary"
    BACKUP = "Backup"
    PRE_CANDIDATE = "PreCandidate"
    CANDIDATE = "Candidate"
    # Its removal from the configuration is committed: it neither votes nor campaigns again.
    RETIRED = "Retired"


class LogEntry(NamedTuple):
    """One log entry (a ledger transaction). `index` is CCF's seqno, `term` its view.

    `data` is opaque to consensus. `configuration`, when set, is the set of voter node ids
    that takes effect as soon as this entry is appended.

    A NamedTuple rather than a frozen dataclass: one is made per proposed entry, and a frozen
    dataclass's __init__ (object.__setattr__ per field) costs three times as much.
    """

    index: int  # type: ignore[assignment]  # the seqno; shadows tuple.index on purpose
    term: int
    data: bytes
    signature: bool = False
    configuration: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables. Times are in milliseconds of whatever clock the caller ticks with."""

    election_timeout_min_ms: int = 1000
    election_timeout_max_ms: int = 2000
    heartbeat_interval_ms: int = 100
    pre_vote: bool = True
    check_quorum: bool = True
    # One AppendEntries carries at most this many entries and (beyond its first entry) bytes.
    max_batch_entries: int = 1000
    max_batch_bytes: int = 1 << 20
    # Bound on unacknowledged entry bytes and messages in flight to one peer (pipelining).
    max_inflight_bytes: int = 4 << 20
    max_inflight_messages: int = 64
    # Bound on the size of one entry's data, enforced on propose and when decoding.
    max_entry_bytes: int = MAX_ENTRY_BYTES
    # The primary holds entries proposed without `signature` until a signature or a
    # configuration change is proposed, `max_batch_entries` or `max_batch_bytes` of them
    # wait, a heartbeat falls due, or `release_held()` is called. Only signatures commit,
    # so no commit waits longer for it; peers get one AppendEntries per signature instead
    # of one per `ready()`.
    hold_until_signature: bool = False
    # A backup answers a batch that brought it new entries once they are durable (its
    # `durable()` report), not also on receipt: the primary counts only durable copies, so
    # the receipt answer told it nothing it waits for.
    ack_when_durable: bool = False
    # With `ack_when_durable`: that answer is made at once, and handed to the caller in
    # `Ready.durable_messages` with the index it waits for; the caller sends it once its
    # storage made that index durable, and drops it if the stored log is truncated below
    # that index first. (A node's host does this right after its fsync: the answer skips
    # the round trip through the backup's `durable()`.)
    ack_released_on_durable: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.election_timeout_min_ms < self.election_timeout_max_ms:
            raise ConsensusError("election timeout range must be 0 < min < max", code="BadConfig")
        if not 0 < self.heartbeat_interval_ms < self.election_timeout_min_ms:
            raise ConsensusError(
                "heartbeat must be shorter than election timeout", code="BadConfig"
            )
        if self.max_batch_entries < 1 or self.max_batch_bytes < 1:
            raise ConsensusError("batch bounds must be positive", code="BadConfig")
        if self.max_inflight_bytes < 1 or self.max_inflight_messages < 1:
            raise ConsensusError("in-flight bounds must be positive", code="BadConfig")
        if self.ack_released_on_durable and not self.ack_when_durable:
            raise ConsensusError("ack_released_on_durable needs ack_when_durable", code="BadConfig")


@dataclass(frozen=True, slots=True)
class StartState:
    """Where a node starts.

    `last_index`/`last_term` are the point the node's log starts after: (0, 0) for a fresh
    network, the snapshot's (seqno, view) for a snapshot start, and the snapshot (or 0, 0)
    that durable entries passed to `Raft.restore` follow. `configuration` is the voter set in
    force at that point. `commit_index` is what the node knows to be committed (at least
    `last_index` for a snapshot). `term`/`voted_for` are the durable hard state, if any.
    """

    configuration: frozenset[str]
    last_index: int = 0
    last_term: int = 0
    commit_index: int = 0
    term: int = 0
    voted_for: str | None = None

    def __post_init__(self) -> None:
        if self.last_index < 0 or self.last_term < 0 or self.term < 0:
            raise ConsensusError("negative index or term", code="BadStartState")
        if (self.last_index == 0) != (self.last_term == 0):
            raise ConsensusError(
                "last_index and last_term must both be 0 or both set", code="BadStartState"
            )
        if self.commit_index < self.last_index:
            raise ConsensusError(
                "a start point is committed: commit_index >= last_index", code="BadStartState"
            )


# CCF's names for a node's part in an election (`leadership_state` of /node/consensus).
LEADERSHIP_STATES = {
    Role.PRIMARY: "Leader",
    Role.BACKUP: "Follower",
    Role.PRE_CANDIDATE: "PreVoteCandidate",
    Role.CANDIDATE: "Candidate",
}


@dataclass(frozen=True, slots=True)
class Ack:
    """What a primary last heard from one peer (CCF's `ConsensusDetails::Ack`).

    `seqno` is the peer's match index: the highest seqno it holds, matching the primary's log,
    made durable by its host. `last_received_ms` is how long ago, on the clock the core is
    ticked with, the peer last answered (counted from when this primary started tracking it
    if it never has). `commit_seqno` (Charter's addition) is the commit seqno that answer
    reported; `needs_snapshot` (Charter's too) says the peer is behind this primary's start
    point (it started from a snapshot after the peer's last matching entry): no ledger here
    can bring it up, and an operator should replace it.
    """

    seqno: int
    last_received_ms: int
    commit_seqno: int
    needs_snapshot: bool = False


@dataclass(frozen=True, slots=True)
class ConsensusDetails:
    """One node's view of consensus, in the shape of CCF's `ConsensusDetails`.

    `acks` is filled on the primary only (every peer it replicates to, learners included).
    `membership_state` is "Active" (a voter), "Learner" (not yet a voter), or "Retired".
    Charter's additions: the node's own `commit_seqno`, `last_seqno` and `durable_seqno`, and
    on a node following a primary, `primary_last_received_ms` (how long ago it last heard
    an AppendEntries from that primary).
    """

    node_id: str
    current_view: int
    primary_id: str | None
    leadership_state: str | None
    membership_state: str
    configuration: frozenset[str]
    configuration_seqno: int
    learners: frozenset[str]
    acks: dict[str, Ack]
    commit_seqno: int
    last_seqno: int
    durable_seqno: int
    primary_last_received_ms: int | None
    ticking: bool


@dataclass(frozen=True, slots=True)
class HardState:
    """What the caller must make durable before sending the messages of the same Ready."""

    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class EntryRequest:
    """The primary needs entries [from_index, to_index] (compacted from memory) for `peer`;
    answer with `Raft.provide_entries`."""

    peer: str
    from_index: int
    to_index: int
