"""What a primary knows about each peer it replicates to (etcd's `tracker/`)."""

from __future__ import annotations

from collections import deque


class Progress:
    """Replication state of one peer.

    Two modes: *probing* (one AppendEntries at a time, waiting for the answer, used after a
    mismatch or when a primary starts) and *replicating* (batches pipelined optimistically,
    bounded by messages and bytes in flight). `acked_index` is the highest index the peer
    confirmed matches our log (used for flow control); `match_index` is the highest such
    index the peer's host has also made durable (the only thing that counts toward commit).
    `heard_at_ms` is when (on the core's tick-driven clock) the peer last answered, or when
    tracking began if it never has; `peer_commit_index` is the commit index its latest
    answer reported. Both are reported (`Raft.details()`); for a removed peer they also
    tell when to stop replicating to it (it committed its removal, or fell silent).
    `behind_start` says the peer needs entries before this log's start point, which no
    ledger of this node holds: only a snapshot could bring it up (reported too; the peer
    is asked again from the start point now and then, `BEHIND_START_RETRY_MS`).
    """

    __slots__ = (
        "acked_at_heartbeat",
        "acked_index",
        "awaiting_entries",
        "behind_start",
        "behind_start_ms",
        "heard_at_ms",
        "inflight",
        "inflight_bytes",
        "match_index",
        "next_index",
        "paused",
        "peer_commit_index",
        "probing",
        "recent_active",
        "removal_index",
    )

    def __init__(self, next_index: int, now_ms: int = 0) -> None:
        assert next_index >= 1
        assert now_ms >= 0
        self.next_index = next_index
        self.heard_at_ms = now_ms
        self.peer_commit_index = 0
        self.acked_index = 0
        self.match_index = 0
        self.probing = True
        self.paused = False
        # (last index, data bytes) of each AppendEntries sent and not yet acknowledged.
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.recent_active = False
        self.awaiting_entries = False
        self.behind_start = False
        self.behind_start_ms = 0  # when it was last found so
        self.acked_at_heartbeat = -1
        # Set when a configuration entry removes this peer: we keep replicating to it only so
        # that it learns its removal is committed, and never count it.
        self.removal_index: int | None = None

    def become_probe(self, next_index: int) -> None:
        assert next_index > self.acked_index, (next_index, self.acked_index)
        self.probing = True
        self.paused = False
        self.next_index = next_index
        self.inflight.clear()
        self.inflight_bytes = 0

    def become_replicate(self) -> None:
        self.probing = False
        self.paused = False
        self.next_index = self.acked_index + 1
        self.inflight.clear()
        self.inflight_bytes = 0

    def on_ack(self, last_index: int) -> None:
        """The peer matched up to `last_index`: release what it acknowledged."""
        if last_index > self.acked_index:
            self.acked_index = last_index
        while self.inflight and self.inflight[0][0] <= last_index:
            self.inflight_bytes -= self.inflight.popleft()[1]
        if self.next_index <= self.acked_index:
            self.next_index = self.acked_index + 1
