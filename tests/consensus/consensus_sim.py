"""A deterministic cluster simulator for consensus/: simulated time, network, disks; one seed.

Each node is a `Raft` plus a model of what the enclave runtime and host do with its Ready:
hard state is written synchronously, entries go to a volatile buffer that becomes durable at
random fsyncs (a crash loses the rest), and the primary proposes entries and signatures.
A restart may come back without some durable entries after the last signature (the runtime
keeps only its signed prefix; a torn tail is cut off), although the node reported them.
The network delays, drops, duplicates and reorders messages and can be partitioned.

Safety is checked after every step (Election Safety, Log Matching, Leader Completeness,
State Machine Safety, Leader Append-Only, commit only at signatures, commit never moves back,
no committed entry ever changes or disappears); after the faults heal, a primary must be
elected and commit must advance within a bounded simulated time.
"""

from __future__ import annotations

import heapq
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from charter.consensus import (
    ConsensusError,
    LogEntry,
    Message,
    Raft,
    RaftConfig,
    Ready,
    Role,
    StartState,
    decode_message,
    encode_message,
)

TICK_MS = 10
LIVENESS_BOUND_MS = 5_000
SIM_CONFIG = RaftConfig(
    election_timeout_min_ms=150,
    election_timeout_max_ms=300,
    heartbeat_interval_ms=50,
    max_batch_entries=16,
    max_batch_bytes=512,
    max_inflight_bytes=2048,
    max_inflight_messages=4,
)


def replay_command(seed: int, steps: int) -> str:
    return (
        f"CHARTER_SIM_SEED={seed} CHARTER_SIM_STEPS={steps} "
        ".venv/bin/pytest tests/consensus/test_consensus_sim.py -k test_sim_replay_one_seed"
    )


class SafetyViolation(AssertionError):
    pass


@dataclass
class Faults:
    """Fault rates for one run, drawn from the seed."""

    loss: float
    duplicate: float
    max_delay_ms: int
    crash: float
    restart: float
    partition: float
    heal: float
    membership: float
    # Chance per step that a node's host flushes its writes (low = long windows of
    # acknowledged but not durable entries, which a crash then loses).
    fsync: float = 0.4
    # Chance that a restart comes back without some of the durable entries after the last
    # signature (the runtime keeps only its signed prefix; a torn tail is cut off).
    tail_loss: float = 0.0


@dataclass
class SimNode:
    node_id: str
    start: StartState
    raft: Raft
    staged: list[LogEntry] = field(default_factory=list)  # the host's file, incl. unflushed
    durable: list[LogEntry] = field(default_factory=list)  # what survives a crash
    term: int = 0
    voted_for: str | None = None
    # The commit index the host persisted with its last fsync: never above what that fsync
    # made durable, so a restart never calls an unflushed (maybe stale) entry committed.
    known_commit: int = 0
    alive: bool = True
    last_commit: int = 0
    was_primary_in: int = -1
    last_role: Role = Role.BACKUP

    @property
    def base(self) -> int:
        return self.start.last_index


class Simulation:
    def __init__(self, seed: int, *, encode: bool | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        r = self.rng
        self.now_ms = 0
        self.step_no = 0
        self.total_steps = 0
        self.faults = Faults(
            loss=r.choice([0.0, 0.01, 0.05, 0.1]),
            duplicate=r.choice([0.0, 0.01, 0.05]),
            max_delay_ms=r.choice([5, 20, 60, 120]),
            crash=r.choice([0.0, 0.002, 0.005]),
            restart=0.03,
            partition=r.choice([0.0, 0.004, 0.01]),
            heal=0.02,
            membership=r.choice([0.0, 0.004, 0.01]),
            fsync=r.choice([0.05, 0.2, 0.5]),
            tail_loss=r.choice([0.0, 0.5, 1.0]),
        )
        self.encode = (seed % 4 == 0) if encode is None else encode
        self.nodes: dict[str, SimNode] = {}
        self.next_node_number = 0
        self.group: dict[str, int] = {}  # partition: nodes talk only within a group
        self.queue: list[tuple[int, int, str, str, Message | bytes]] = []
        self.msg_seq = 0
        # Safety bookkeeping.
        self.committed: list[tuple[int, bytes]] = [(0, b"")]  # index -> (term, data)
        self.primaries: dict[int, str] = {}
        self.seen: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self.pending_joins: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.proposals = 0
        self.healed_at_ms: int | None = None
        self.commit_at_heal = 0
        self.primary_after_heal_ms: int | None = None
        self.commit_after_heal_ms: int | None = None
        # A fifth of the runs start the way a real network does: one node, sole voter, that
        # others join one at a time; the rest start with 3-5 voters that know each other.
        self.bootstrap = r.random() < 0.2
        count = 1 if self.bootstrap else r.randint(3, 5)
        voters = frozenset(f"n{i}" for i in range(count))
        for _ in range(count):
            self._add_node(StartState(configuration=voters))
        if self.bootstrap:
            self.faults.membership = max(self.faults.membership, 0.01)
            self.nodes["n0"].raft.campaign()
            self.process(self.nodes["n0"])

    # -- node lifecycle ----------------------------------------------------------------------
    def _new_id(self) -> str:
        node_id = f"n{self.next_node_number}"
        self.next_node_number += 1
        return node_id

    def _add_node(self, start: StartState) -> SimNode:
        node_id = self._new_id()
        raft = Raft(node_id, config=SIM_CONFIG, start=start, rng_seed=self.rng.getrandbits(32))
        node = SimNode(node_id, start, raft, known_commit=start.commit_index)
        node.last_commit = start.commit_index
        self.nodes[node_id] = node
        self.group[node_id] = 0
        return node

    def crash(self, node: SimNode) -> None:
        self.stats["crashes"] += 1
        node.alive = False
        node.staged = list(node.durable)  # unflushed writes are lost

    def restart(self, node: SimNode) -> None:
        if node.durable and self.rng.random() < self.faults.tail_loss:
            self._lose_unsigned_tail(node)
        s = node.start
        last = node.base + len(node.durable)
        commit = max(s.commit_index, min(node.known_commit, last))
        start = StartState(
            configuration=s.configuration,
            last_index=s.last_index,
            last_term=s.last_term,
            commit_index=commit,
            term=node.term,
            voted_for=node.voted_for,
        )
        node.raft = Raft.restore(
            node.node_id,
            config=SIM_CONFIG,
            start=start,
            entries=node.durable,
            rng_seed=self.rng.getrandbits(32),
        )
        node.staged = list(node.durable)
        node.alive = True
        node.last_commit = commit
        node.was_primary_in = -1
        for i in range(node.base + 1, commit + 1):
            self._check_committed_entry(node, i)
        for learner in self.pending_joins:
            node.raft.add_learner(learner)

    def _lose_unsigned_tail(self, node: SimNode) -> None:
        """The restart keeps only part of the durable entries after the last signature: the
        runtime drops the whole unsigned tail (it keeps only what a signed root vouches for),
        a torn or short write loses some of it. The node had reported those entries durable."""
        signed = [k for k, e in enumerate(node.durable) if e.signature]
        keep_min = signed[-1] + 1 if signed else 0
        keep = self.rng.randint(keep_min, len(node.durable))
        if keep < len(node.durable):
            self.stats["lost_unsigned_tails"] += 1
            del node.durable[keep:]

    # -- safety ------------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        raise SafetyViolation(
            f"seed {self.seed} step {self.step_no} t={self.now_ms}ms: {what}\n"
            f"replay: {replay_command(self.seed, self.total_steps)}"
        )

    def _check_committed_entry(self, node: SimNode, index: int) -> None:
        if index <= node.base:
            return
        e = node.raft.entry(index)
        if index < len(self.committed):
            if self.committed[index] != (e.term, e.data):
                self.fail(f"{node.node_id} committed {index} differently (State Machine Safety)")
        elif index == len(self.committed):
            self.committed.append((e.term, e.data))
        else:
            self.fail(f"{node.node_id} committed {index} past the known committed prefix")

    def _check_ready(self, node: SimNode, r: Ready) -> None:
        raft = node.raft
        if r.role is Role.PRIMARY:
            holder = self.primaries.setdefault(r.view, node.node_id)
            if holder != node.node_id:
                self.fail(f"two primaries in view {r.view}: {holder} and {node.node_id}")
            if node.was_primary_in != r.view:
                node.was_primary_in = r.view
                # Leader Completeness: a new primary holds every committed entry.
                for i in range(max(node.base, 1), len(self.committed)):
                    t = raft.term_at(i)
                    if i > node.base and t != self.committed[i][0]:
                        self.fail(f"primary {node.node_id} view {r.view} lacks committed {i}")
        if r.truncate_to is not None:
            if node.was_primary_in == r.view and r.role is Role.PRIMARY:
                self.fail(f"primary {node.node_id} truncated its log (Leader Append-Only)")
            if r.truncate_to < node.last_commit:
                self.fail(f"{node.node_id} truncated below its commit index")
            first = r.truncate_to + 1
            k = first - node.base - 1
            if first < len(self.committed) and 0 <= k < len(node.staged):
                e = node.staged[k]
                if (e.term, e.data) == self.committed[first]:
                    self.fail(f"{node.node_id} truncated committed entry {first}")
        for e in r.entries:
            prev = raft.term_at(e.index - 1) if e.index - 1 >= node.base else None
            got = self.seen.setdefault((e.index, e.term), (e.data, prev))
            if got[0] != e.data or (got[1] is not None and prev is not None and got[1] != prev):
                self.fail(f"two different entries at ({e.index}, {e.term}) (Log Matching)")
        if r.commit_index is not None:
            c = r.commit_index
            if c < node.last_commit:
                self.fail(f"{node.node_id} commit moved back {node.last_commit} -> {c}")
            if c > node.base and not raft.entry(c).signature:
                self.fail(f"{node.node_id} committed at {c}, not a signature entry")
            for i in range(node.last_commit + 1, c + 1):
                self._check_committed_entry(node, i)
            node.last_commit = c

    # -- the runtime's side of Ready ---------------------------------------------------------
    def process(self, node: SimNode) -> None:
        raft = node.raft
        if not raft.has_ready():
            return
        r = raft.ready()
        self._check_ready(node, r)
        if r.hard_state is not None:
            node.term, node.voted_for = r.hard_state.term, r.hard_state.voted_for
        if r.truncate_to is not None:
            self.stats["truncations"] += 1
            del node.staged[max(0, r.truncate_to - node.base) :]
        if r.entries:
            assert r.entries[0].index == node.base + len(node.staged) + 1, "Ready gap"
            node.staged.extend(r.entries)
        assert node.base + len(node.staged) == raft.last_index, "storage diverged from log"
        for to, msg in r.messages:
            self._send(node.node_id, to, msg)
        if r.role_changed and r.role is Role.PRIMARY and self.rng.random() < 0.5:
            # The runtime opens a view with a signature entry: only an entry of the view can
            # commit. Half the time it is late (the next random proposals bring one), which
            # widens the window where older views' entries are replicated but uncommitted.
            self._propose(node, signature=True)
        if r.role is Role.RETIRED and node.node_id in self.nodes:
            self._retire(node)
        node.last_role = r.role

    def _retire(self, node: SimNode) -> None:
        retired_primary = node.last_role is Role.PRIMARY
        self.stats["retired_primaries" if retired_primary else "retired_backups"] += 1
        del self.nodes[node.node_id]
        self.group.pop(node.node_id, None)

    def _propose(self, node: SimNode, *, signature: bool) -> None:
        self.proposals += 1
        node.raft.propose(f"{self.seed}:{self.proposals}".encode(), signature=signature)

    def _send(self, src: str, to: str, msg: Message) -> None:
        f = self.faults
        if self.rng.random() < f.loss:
            self.stats["lost"] += 1
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        self.stats["duplicates"] += copies - 1
        payload: Message | bytes = encode_message(msg) if self.encode else msg
        for _ in range(copies):
            at = self.now_ms + self.rng.randint(0, f.max_delay_ms)
            self.msg_seq += 1
            heapq.heappush(self.queue, (at, self.msg_seq, src, to, payload))

    def _deliver_due(self) -> None:
        while self.queue and self.queue[0][0] <= self.now_ms:
            _, _, src, to, payload = heapq.heappop(self.queue)
            node = self.nodes.get(to)
            if node is None or not node.alive or self.group.get(src) != self.group[to]:
                continue
            msg = decode_message(payload) if isinstance(payload, bytes) else payload
            node.raft.step(msg)
            self.process(node)

    # -- random events -----------------------------------------------------------------------
    def primary(self) -> SimNode | None:
        best: SimNode | None = None
        for node in self.nodes.values():
            if (
                node.alive
                and node.raft.role is Role.PRIMARY
                and not node.raft.handing_over  # a retiring primary proposes nothing more
                and (best is None or node.raft.view > best.raft.view)
            ):
                best = node
        return best

    def _membership(self, primary: SimNode) -> None:
        raft = primary.raft
        voters = raft.configuration
        live = len(self.nodes)
        if (len(voters) < 3 or self.rng.random() < 0.5) and live < 7:
            self._join(primary)
        elif len(voters) > 3:
            victim = self.rng.choice(sorted(voters))
            try:
                raft.propose(b"remove", signature=True, configuration=voters - {victim})
            except ConsensusError:
                return
            self.process(primary)

    def _join(self, primary: SimNode) -> None:
        raft = primary.raft
        if self.rng.random() < 0.5 or raft.commit_index == 0:
            start = StartState(configuration=frozenset())
        else:
            # Start from a snapshot at the primary's commit index.
            c = raft.commit_index
            t = raft.term_at(c)
            if t is None:
                return
            start = StartState(
                configuration=raft.log.configuration_at(c),
                last_index=c,
                last_term=t,
                commit_index=c,
            )
        node = self._add_node(start)
        self.stats["joins_from_snapshot" if start.last_index else "joins"] += 1
        self.group[node.node_id] = self.group[primary.node_id]
        self.pending_joins.add(node.node_id)
        for other in self.nodes.values():
            if other.alive:
                other.raft.add_learner(node.node_id)

    def _promote_caught_up(self, primary: SimNode) -> None:
        raft = primary.raft
        for j in sorted(self.pending_joins):
            if j not in self.nodes or j in raft.configuration:
                self.pending_joins.discard(j)
            elif raft.is_caught_up(j):
                try:
                    raft.propose(b"join", signature=True, configuration=raft.configuration | {j})
                except ConsensusError:
                    return
                self.pending_joins.discard(j)
                self.process(primary)
                return

    def _chaos(self) -> None:
        r, f = self.rng, self.faults
        alive = [n for n in self.nodes.values() if n.alive]
        if alive and r.random() < f.crash:
            if r.random() < 0.3:
                # A power cut: a majority goes down at once, losing everything unflushed.
                for node in r.sample(alive, len(alive) // 2 + 1):
                    self.crash(node)
            else:
                self.crash(r.choice(alive))
        for node in self.nodes.values():
            if not node.alive and r.random() < f.restart:
                self.restart(node)
        if r.random() < f.partition:
            self.stats["partitions"] += 1
            ids = sorted(self.nodes)
            for node_id in ids:
                self.group[node_id] = r.randint(0, 1)
        elif r.random() < f.heal:
            for node_id in self.group:
                self.group[node_id] = 0
        primary = self.primary()
        if primary is not None and r.random() < f.membership:
            self._membership(primary)

    def heal(self) -> None:
        """End the chaos: restart everyone, rejoin partitions, make the network reliable."""
        for node in self.nodes.values():
            if not node.alive:
                self.restart(node)
        for node_id in self.group:
            self.group[node_id] = 0
        self.faults = Faults(0.0, 0.0, 20, 0.0, 0.0, 0.0, 0.0, 0.0, fsync=0.5)
        self.healed_at_ms = self.now_ms
        self.commit_at_heal = len(self.committed) - 1

    # -- the loop ----------------------------------------------------------------------------
    def step(self, *, chaos: bool) -> None:
        self.step_no += 1
        self.now_ms += TICK_MS
        r = self.rng
        if chaos:
            self._chaos()
        self._deliver_due()
        for node in list(self.nodes.values()):
            if node.alive:
                node.raft.tick(TICK_MS)
                self.process(node)
        for node in list(self.nodes.values()):
            if node.alive and node.staged and r.random() < self.faults.fsync:
                last = node.staged[-1]
                node.durable = list(node.staged)
                node.known_commit = max(node.known_commit, min(node.last_commit, last.index))
                node.raft.durable(last.index, last.term)
                self.process(node)
        primary = self.primary()
        if primary is not None:
            if r.random() < 0.5:
                for _ in range(r.randint(1, 3)):
                    self._propose(primary, signature=r.random() < 0.3)
                self.process(primary)
            if self.pending_joins:
                self._promote_caught_up(primary)
        if self.healed_at_ms is not None:
            self._check_liveness(primary)

    def _check_liveness(self, primary: SimNode | None) -> None:
        assert self.healed_at_ms is not None
        if primary is not None and self.primary_after_heal_ms is None:
            self.primary_after_heal_ms = self.now_ms
        if self.commit_after_heal_ms is None and len(self.committed) - 1 > self.commit_at_heal:
            self.commit_after_heal_ms = self.now_ms
        if self.now_ms - self.healed_at_ms > LIVENESS_BOUND_MS and (
            self.primary_after_heal_ms is None or self.commit_after_heal_ms is None
        ):
            self.fail(
                f"no progress {LIVENESS_BOUND_MS} ms after healing "
                f"(primary at {self.primary_after_heal_ms}, commit at {self.commit_after_heal_ms})"
            )

    def run(self, steps: int) -> None:
        self.total_steps = steps
        heal_step = steps - (LIVENESS_BOUND_MS // TICK_MS + 50)
        assert heal_step > 0, "too few steps for the liveness phase"
        try:
            for i in range(steps):
                if i == heal_step:
                    self.heal()
                self.step(chaos=i < heal_step)
        except SafetyViolation:
            raise
        except Exception as exc:
            raise SafetyViolation(
                f"seed {self.seed} step {self.step_no}: {type(exc).__name__}: {exc}\n"
                f"replay: {replay_command(self.seed, self.total_steps)}"
            ) from exc
        if self.commit_after_heal_ms is None or self.primary_after_heal_ms is None:
            self.fail("no primary or no commit after healing")


def seed_from_env() -> int | None:
    value = os.environ.get("CHARTER_SIM_SEED")
    return int(value) if value else None
