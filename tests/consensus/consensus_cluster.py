"""A hand-driven in-process cluster for unit and scenario tests and the benchmark.

Unlike the randomized simulator, nothing here happens unless the test says so: messages wait
in one FIFO queue until `deliver()`, time moves only with `tick()`, and entries become durable
at once (`auto_durable`) or when the test calls `make_durable()`. Each node's "disk" is a list
of entries plus its hard state, so `crash()`/`restart()` behave like a real restart.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from charter.consensus import EntryRequest, LogEntry, Message, Raft, RaftConfig, Role, StartState

FAST = RaftConfig(
    election_timeout_min_ms=100,
    election_timeout_max_ms=200,
    heartbeat_interval_ms=20,
)


@dataclass
class Disk:
    start: StartState
    entries: list[LogEntry] = field(default_factory=list)  # written (maybe not yet durable)
    durable_count: int = 0
    term: int = 0
    voted_for: str | None = None
    commit: int = 0
    durable_commit: int = 0
    commits: list[int] = field(default_factory=list)  # every commit index reported, in order


class Cluster:
    def __init__(
        self,
        voters: list[str],
        *,
        config: RaftConfig = FAST,
        auto_durable: bool = True,
        seed: int = 0,
        start: StartState | None = None,
    ) -> None:
        self.config = config
        self.auto_durable = auto_durable
        self.seed = seed
        self.nodes: dict[str, Raft] = {}
        self.disks: dict[str, Disk] = {}
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.cut: set[str] = set()  # isolated nodes: their messages are dropped
        self.down: set[str] = set()
        self.delivered = 0
        self.served_requests: list[EntryRequest] = []
        # Optional transformation of every message sent (e.g. through the wire codec).
        self.wire: Callable[[Message], Message] | None = None
        st = start if start is not None else StartState(configuration=frozenset(voters))
        for node_id in voters:
            self.add(node_id, st)

    def add(self, node_id: str, start: StartState) -> Raft:
        raft = Raft(
            node_id,
            config=self.config,
            start=start,
            rng_seed=zlib.crc32(f"{self.seed}:{node_id}".encode()),
        )
        self.nodes[node_id] = raft
        self.disks[node_id] = Disk(start, commit=start.commit_index)
        return raft

    # -- the runtime's side ------------------------------------------------------------------
    def process(self, node_id: str) -> None:
        raft, disk = self.nodes[node_id], self.disks[node_id]
        while raft.has_ready():
            r = raft.ready()
            if r.hard_state is not None:
                disk.term, disk.voted_for = r.hard_state.term, r.hard_state.voted_for
            if r.truncate_to is not None:
                keep = r.truncate_to - disk.start.last_index
                del disk.entries[keep:]
                disk.durable_count = min(disk.durable_count, keep)
            disk.entries.extend(r.entries)
            if r.commit_index is not None:
                disk.commit = r.commit_index
                disk.commits.append(r.commit_index)
            for to, msg in r.messages:
                if node_id not in self.cut and to not in self.cut:
                    self.queue.append((node_id, to, msg if self.wire is None else self.wire(msg)))
            for req in r.entry_requests:
                # The runtime reads compacted entries back from its ledger files.
                base = disk.start.last_index
                stored = disk.entries[req.from_index - base - 1 : req.to_index - base]
                self.served_requests.append(req)
                raft.provide_entries(req.peer, stored)
            if self.auto_durable and disk.durable_count < len(disk.entries):
                self.make_durable(node_id)

    def make_durable(self, node_id: str, upto: int | None = None) -> None:
        disk = self.disks[node_id]
        count = len(disk.entries) if upto is None else upto - disk.start.last_index
        disk.durable_count = max(disk.durable_count, count)
        # The commit index is persisted with the flush, never above what it made durable.
        disk.durable_commit = max(
            disk.durable_commit, min(disk.commit, disk.start.last_index + disk.durable_count)
        )
        if count > 0:
            last = disk.entries[count - 1]
            self.nodes[node_id].durable(last.index, last.term)
            self.process(node_id)

    def deliver(self, limit: int = 100_000) -> int:
        """Deliver queued messages (and what they cause) until quiet; returns how many."""
        n = 0
        while self.queue and n < limit:
            src, to, msg = self.queue.popleft()
            n += 1
            if to in self.down or to not in self.nodes or src in self.cut or to in self.cut:
                continue
            self.nodes[to].step(msg)
            self.process(to)
        self.delivered += n
        return n

    def drop_messages(self) -> None:
        self.queue.clear()

    def tick(self, node_id: str, elapsed_ms: int) -> None:
        if node_id in self.down:
            return
        self.nodes[node_id].tick(elapsed_ms)
        self.process(node_id)

    def tick_all(self, elapsed_ms: int) -> None:
        for node_id in list(self.nodes):
            self.tick(node_id, elapsed_ms)

    def run_for(self, ms: int, step_ms: int = 10) -> None:
        """Advance everyone's clock in steps, delivering everything in between."""
        for _ in range(ms // step_ms):
            self.tick_all(step_ms)
            self.deliver()

    # -- conveniences ------------------------------------------------------------------------
    def campaign(self, node_id: str) -> None:
        self.nodes[node_id].campaign()
        self.process(node_id)
        self.deliver()

    def elect(self, node_id: str) -> Raft:
        """Make `node_id` primary and commit a signature entry of its view."""
        self.campaign(node_id)
        raft = self.nodes[node_id]
        assert raft.role is Role.PRIMARY, raft.role
        self.propose(node_id, b"sig", signature=True)
        return raft

    def propose(self, node_id: str, data: bytes, *, signature: bool = False) -> tuple[int, int]:
        out = self.nodes[node_id].propose(data, signature=signature)
        self.process(node_id)
        self.deliver()
        return out

    def primary(self) -> str | None:
        live = [
            (r.view, n)
            for n, r in self.nodes.items()
            if r.role is Role.PRIMARY and n not in self.down
        ]
        return max(live)[1] if live else None

    def isolate(self, node_id: str) -> None:
        self.cut.add(node_id)

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, node_id: str) -> None:
        """Stop the node; its disk keeps only what was durable."""
        self.down.add(node_id)
        disk = self.disks[node_id]
        del disk.entries[disk.durable_count :]

    def restart(self, node_id: str, *, drop_unsigned_tail: bool = False) -> Raft:
        """Restart on what the disk holds. `drop_unsigned_tail` models a runtime that keeps
        only its signed prefix on restart (or a disk that lost a torn tail): the durable
        entries after the last signature are gone, although the node reported them."""
        disk = self.disks[node_id]
        s = disk.start
        if drop_unsigned_tail:
            signed = [k for k, e in enumerate(disk.entries) if e.signature]
            keep = signed[-1] + 1 if signed else 0
            del disk.entries[keep:]
            disk.durable_count = min(disk.durable_count, keep)
        last = s.last_index + len(disk.entries)
        start = StartState(
            configuration=s.configuration,
            last_index=s.last_index,
            last_term=s.last_term,
            commit_index=max(s.commit_index, min(disk.durable_commit, last)),
            term=disk.term,
            voted_for=disk.voted_for,
        )
        raft = Raft.restore(
            node_id,
            config=self.config,
            start=start,
            entries=list(disk.entries),
            rng_seed=zlib.crc32(f"{self.seed}:{node_id}:restart".encode()),
        )
        self.nodes[node_id] = raft
        self.down.discard(node_id)
        return raft

    def log_of(self, node_id: str) -> list[tuple[int, int, bytes]]:
        """(index, term, data) of every entry on the node's disk."""
        return [(e.index, e.term, e.data) for e in self.disks[node_id].entries]
