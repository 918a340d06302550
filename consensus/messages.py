"""Raft messages between nodes: small frozen classes. CCF's "view" is the Raft term.

Every message names its sender; the node-to-node channel authenticates peers, and the runtime
must drop a message whose `sender` is not the channel's peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from charter.consensus.types import LogEntry


@dataclass(frozen=True, slots=True)
class PreVote:
    """ "Would you vote for me in `term`?" — sent without raising the sender's own term, so a
    node cut off from the others cannot disrupt them by inflating terms."""

    term: int
    sender: str
    last_index: int
    last_term: int


@dataclass(frozen=True, slots=True)
class PreVoteResponse:
    term: int
    sender: str
    granted: bool


@dataclass(frozen=True, slots=True)
class RequestVote:
    term: int
    sender: str
    last_index: int
    last_term: int
    # Set when a retiring primary handed over with TimeoutNow: voters ignore their lease.
    forced: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    sender: str
    granted: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Entries prev_index+1 .. prev_index+len(entries); empty entries make a heartbeat."""

    term: int
    sender: str
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """On success `last_index` is the highest index known to match the primary's log and
    `durable_index` the highest such index the host has made durable (what counts toward
    commit). On failure `reject_index` is the rejected prev_index and (`hint_index`,
    `hint_term`) let the primary skip back a whole term at once. `commit_index` is the
    sender's commit index when it answered: it counts toward no commit; the primary
    reports it (`/node/consensus`), learns from it that a removed peer heard of its
    removal, and probes a rejecting peer no lower than it."""

    term: int
    sender: str
    success: bool
    last_index: int
    durable_index: int
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0
    commit_index: int = 0

    @property
    def from_retired(self) -> bool:
        """A retired node's answer (`Raft.step`): a rejection without a hint but with a
        commit index (at least its removal's). A live node's rejection of a mismatch hints
        at index 1 or later; its rejection of a stale view has neither hint nor commit
        index."""
        return not self.success and self.hint_index == 0 and self.commit_index > 0


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """A retiring primary asks its chosen successor to campaign at once."""

    term: int
    sender: str


Message = (
    PreVote
    | PreVoteResponse
    | RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | TimeoutNow
)
