"""A seeded whole-node simulator: N in-process `Node`s, simulated hosts, a simulated network.

One `random.Random(seed)` decides everything that is not the nodes' own randomness (each
node draws from a `SeededEntropy` named after the seed, the node and its incarnation), and
one simulated clock (`now_ms`) is what every node's `tick` and `clock_s` read. So a seed is a
whole run: the same seed gives byte-identical ledgers, and a failing one replays exactly.

The nodes are driven only through what the runtime (`enclave_app/main.py`) calls: start,
join, resume and replay, `tick`, `durable`, `receive_from_peer`, `on_entries_read`,
`handle`, `seal_progress`, and the frames left in `outbox`. The host side is
`node_sim_host.SimStorage`; the network here loses, delays, duplicates and reorders frames,
and cuts links (partitions, one-way). Clients write through `handle` on any node (backups
forward), members govern with COSE-signed requests, operators join, retire, kill -9 and
restart nodes. After every step `check()` asserts the safety properties (see `check`).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from node_sim_host import SimDisk, SimStorage

from charter.consensus import Role
from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.entropy import SeededEntropy
from charter.enclave_app.indexing import SeqnosByKeyIndex
from charter.enclave_app.node import TXID_HEADER, Forwarded, Node
from charter.enclave_app.platform import VirtualPlatform, code_measurement
from charter.enclave_app.samples.logging import PRIVATE_BY_ID, PRIVATE_RECORDS
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.ledger import certs, cose
from charter.ledger.entry import decode_entry, decrypt_private

APP_MODULE = "charter.enclave_app.samples.logging"
# The simulated clock starts here (2023-11-14): far from the wall clock on purpose, so that a
# wall-clock read left in the enclave's path shows up as an expired certificate or a stale
# COSE request rather than passing unnoticed.
EPOCH_S = 1_700_000_000
TICK_MS = 10
JOIN_POLL_MS = 500
FORWARD_TIMEOUT_MS = 5_000
RETIRED_LINGER_MS = 2_000
NODES_MAX = 6
GOV_TASKS_MAX = 4
PENDING_WRITES_MAX = 200
COSE_CONTENT_TYPE = "application/cose"
GOV_API = "api-version=2024-07-01"


class SimulationFailure(AssertionError):
    """A checked property broke: the message names the seed and how to replay it."""


@cache
def _measurement() -> str:
    return code_measurement(app_module=APP_MODULE)


@cache
def _app() -> Any:
    return load_app(APP_MODULE)


# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A member's or user's key and certificate, from the seed, issued at the sim epoch."""

    key: Any
    cert_pem: str

    @classmethod
    def make(cls, entropy: SeededEntropy, name: str) -> Identity:
        key = entropy.new_ec_key()
        cert = certs.identity_cert(key, name, issuance=entropy.issuance(EPOCH_S))
        return cls(key, certs.cert_pem(cert))

    @property
    def id(self) -> str:
        return certs.cert_id(self.cert_pem)

    @property
    def der(self) -> bytes:
        return certs.load_cert(self.cert_pem).public_bytes(Encoding.DER)

    def sign(
        self, msg_type: str, payload: bytes, *, created_at: int, proposal_id: str | None = None
    ) -> bytes:
        """A governance request (headers in `ccf_cose_sign1`'s order), deterministic."""
        protected: dict[Any, Any] = {cose.HEADER_KID: self.id.encode(), cose.GOV_MSG_TYPE: msg_type}
        if proposal_id is not None:
            protected[cose.GOV_MSG_PROPOSAL_ID] = proposal_id
        protected[cose.GOV_MSG_CREATED_AT] = created_at
        return cose.sign1(self.key, protected, payload, deterministic=True)


@dataclass
class Write:
    """A client write the service answered 200 with a transaction id."""

    key: int
    msg: str
    view: int
    seqno: int
    committed: bool = False


@dataclass
class Slot:
    """One node: its host (disk and storage worker) and its current incarnation."""

    index: int
    name: str
    workspace: Path
    config: itf.NodeConfig
    disk: SimDisk
    storage: SimStorage
    node: Node | None = None
    incarnation: int = 0
    # Why this node will never run again ("retired", "refused: ...").
    gone: str | None = None
    retired_at_ms: int | None = None
    joined: bool = False  # part of the network at least once (a trusted node)
    node_id: str | None = None
    forwards: dict[int, tuple[int, Callable[[HttpResponse], None]]] = field(default_factory=dict)
    next_join_poll_ms: int = 0
    join_pending: bool = False  # a join call is waiting for a forwarded answer
    commit_seen: int = 0
    retired_seen: bool = False

    @property
    def address(self) -> str:
        return self.config.node_to_node_address

    @property
    def source(self) -> str:
        return self.address.rpartition(":")[0]


@dataclass
class GovTask:
    """A proposal carried through: create, ballot, until it is Accepted and committed."""

    actions: list[dict[str, Any]]
    what: str
    proposal_id: str | None = None
    txid: tuple[int, int] | None = None
    stage: str = "propose"  # propose -> vote -> commit -> done
    busy: bool = False
    next_try_ms: int = 0
    on_done: Callable[[], None] | None = None


# ------------------------------------------------------------------------------------------
class SimSnapshotEncoder:
    """The runtime's fork encoder as the simulator has it: the entry is encoded at once (a
    forked child sees the state as it is at the fork) and comes back, or fails (one in ten),
    a drawn time later, as an event; a crash of the node loses it."""

    def __init__(self, sim: Simulation, slot: Slot) -> None:
        self.sim = sim
        self.slot = slot
        self.incarnation = slot.incarnation

    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None:
        sim = self.sim
        entry: bytes | None = encode()
        delay_ms = sim.encode_rng.randint(1, sim.encode_ms_max)
        if sim.encode_rng.random() < 0.1:
            entry = None
        sim.schedule(sim.now_ms + delay_ms, "snapshot", (self.slot, self.incarnation, seqno, entry))


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        test_name: str = "test_sim_replay_one_seed",
        nodes: int = 3,
        workdir: Path | None = None,
        hosts_release_answers: bool = False,
    ) -> None:
        self.seed = seed
        # Whether backups hand their answers to new entries to their hosts, which send them
        # after the fsync (`RaftConfig.ack_released_on_durable`, what nodes do). Off by
        # default here so that the seeds kept for their runs keep them: the answers' timing
        # changes every run. test_sim_seeds.py sweeps seeds with it on as well. With it on,
        # a backup also hands its host the entries and its answer before it applies them
        # (`NodeCore.hand_off`, as the runtime does), not at the end of the turn.
        self.hosts_release_answers = hosts_release_answers
        self.test_name = test_name
        self.rng = random.Random(seed)
        self.entropy = SeededEntropy(f"sim:{seed}:identities")
        self.now_ms = 0
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"charter-sim-{seed}-"))
        self.initial_nodes = nodes
        self.slots: list[Slot] = []
        self.events: list[tuple[int, int, str, Any]] = []
        self._event_seq = 0
        self.member = Identity.make(self.entropy, "member0")
        self.user = Identity.make(self.entropy, "user0")
        self.service_cert_pem = ""
        # Network faults, redrawn now and then.
        self.loss = 0.0
        self.duplicate = 0.0
        self.delay_ms_max = 5
        self.cut: set[tuple[int, int]] = set()  # (from, to) slot indexes that cannot talk
        self.gov: list[GovTask] = []
        self.last_gov_error = b""
        self.writes: list[Write] = []
        self.next_key = 0
        # What the checks hold on to across steps.
        self.committed_log: dict[int, bytes] = {}
        self.primaries: dict[int, str] = {}
        self.stats: dict[str, int] = {}
        # A varied configuration per seed: small snapshot intervals and Raft logs, so that
        # snapshots, joins from snapshots and catching up from the host's ledger all happen.
        self.snapshot_tx = self.rng.choice((10, 20, 40, 10_000))
        self.sig_tx = self.rng.choice((3, 5, 10, 100))
        self.raft_log_entries = self.rng.choice((10, 20, 1000))
        self.fsync_ms_max = self.rng.choice((0, 5, 30))
        # How snapshots are encoded: at once (0), or as the runtime's forked child does,
        # coming back (or failing) a drawn time later while the node goes on. Drawn from a
        # generator of its own, so that the other draws of a seed stay what they were.
        self.encode_rng = random.Random(f"{seed}:snapshot-encoding")
        self.encode_ms_max = self.encode_rng.choice((0, 0, 40, 400))
        # Quiet while it runs (thousands of nodes' logs); `run` puts the levels back, so
        # tests that read logs after it in the same process see them.
        self._log_levels = {
            name: logging.getLogger(name).level for name in ("charter", "consensus")
        }

    # -------------------------------------------------------------------- plumbing
    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def clock_s(self) -> float:
        return EPOCH_S + self.now_ms / 1000

    def schedule(self, at_ms: int, kind: str, payload: Any) -> None:
        self._event_seq += 1
        heapq.heappush(self.events, (at_ms, self._event_seq, kind, payload))

    def describe(self) -> str:
        """One line per node: what a failure report needs to start from."""
        lines = []
        for s in self.slots:
            node = s.node
            state = "down" if node is None else node.state
            raft = node.raft if node is not None else None
            lines.append(
                f"  {s.name} {state} gone={s.gone} joined={s.joined} "
                f"inc={s.incarnation} disk={s.disk.base_seqno}+{len(s.disk.entries)} "
                f"durable={s.disk.durable_count} snaps={sorted(s.disk.snapshots)} "
                + (
                    f"applied={node.applied_seqno} commit={node.commit_seqno} "
                    f"role={raft.role.value if raft else None} view={raft.view if raft else None} "
                    f"voters={sorted(v[:4] for v in raft.configuration) if raft else None}"
                    if node is not None
                    else ""
                )
                + f" id={(s.node_id or '')[:4]}"
            )
        return "\n".join(lines)

    def fail(self, what: str) -> SimulationFailure:
        return SimulationFailure(
            f"seed {self.seed} failed at {self.now_ms} ms: {what}\n{self.describe()}\n"
            f"replay: CHARTER_SIM_SEED={self.seed} ./scripts/test tests/sim -k {self.test_name}"
            " -n0"
        )

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -------------------------------------------------------------------- nodes
    def _config(self, index: int, mode: str) -> itf.NodeConfig:
        workspace = self.workdir / f"n{index}"
        workspace.mkdir(parents=True, exist_ok=True)
        member_cert = workspace / "member0_cert.pem"
        member_cert.write_text(self.member.cert_pem)
        start: dict[str, Any] = {"mode": mode, "members": [{"cert": str(member_cert)}]}
        if mode == "join":
            cert = workspace / "service_cert.pem"
            cert.write_text(self.service_cert_pem)
            start["join"] = {"target": "127.0.0.1:8000", "service_cert": str(cert)}
        return itf.NodeConfig.model_validate(
            {
                "workspace": str(workspace),
                "rpc_address": f"127.0.1.{index + 1}:8000",
                "node_to_node_address": f"127.0.2.{index + 1}:9000",
                "app": APP_MODULE,
                "start": start,
                # The light-load rule off: signatures by count and delay alone keep the
                # regression seeds' runs (tests/node tests the rule).
                "signatures": {"tx_count": self.sig_tx, "delay_ms": 50, "light_load_delay_ms": 0},
                "snapshots": {"tx_count": self.snapshot_tx},
                "memory": {"raft_log_entries": self.raft_log_entries, "receipt_transactions": 1000},
                "consensus": {"election_timeout_ms": (300, 600), "heartbeat_ms": 60},
            }
        )

    def _new_node(self, slot: Slot) -> Node:
        slot.incarnation += 1
        tag = f"sim:{self.seed}:{slot.name}:{slot.incarnation}"
        platform = VirtualPlatform(
            slot.workspace, _measurement(), entropy=SeededEntropy(tag + ":platform")
        )
        encoder = SimSnapshotEncoder(self, slot) if self.encode_ms_max else None
        node = Node(
            slot.config,
            platform,
            _app(),
            clock_s=self.clock_s,
            entropy=SeededEntropy(tag),
            snapshot_encoder=encoder,
        )
        node.routes.include(node_endpoints.build(node))
        include_governance(node)
        if not self.hosts_release_answers:
            core, node_config = node.core, type(node.core).raft_config
            core.raft_config = lambda: dataclasses.replace(  # type: ignore[method-assign]
                node_config(core), ack_released_on_durable=False
            )
        else:
            node.core.hand_off = lambda: self.hand_off(slot)

        def answered(forward_id: int, response: HttpResponse) -> None:
            pending = slot.forwards.pop(forward_id, None)
            if pending is not None:
                pending[1](response)

        node.on_forward_response = answered
        slot.node = node
        slot.commit_seen = 0
        slot.retired_seen = False
        return node

    def _slot(self, mode: str) -> Slot:
        index = len(self.slots)
        config = self._config(index, mode)
        disk = SimDisk()
        slot = Slot(
            index,
            f"n{index}",
            Path(config.workspace),
            config,
            disk,
            SimStorage(disk, self.rng, fsync_ms_max=self.fsync_ms_max),
        )
        self.slots.append(slot)
        return slot

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.node is not None]

    def serving(self) -> list[Slot]:
        return [s for s in self.live() if s.node is not None and s.node.state == "PartOfNetwork"]

    def primary(self) -> Slot | None:
        found = [s for s in self.serving() if s.node is not None and s.node.is_primary]
        if not found:
            return None
        return max(found, key=lambda s: s.node.raft.view if s.node and s.node.raft else 0)

    # -------------------------------------------------------------------- host side
    def flush(self, slot: Slot) -> None:
        """What `Runtime.flush` and the host do with the node's frames, in order."""
        node = slot.node
        if node is None:
            return
        node.end_turn()  # Ready/Advance once per turn, as the runtime does
        self.send_outbox(slot)
        if node.retired and slot.retired_at_ms is None:
            slot.retired_at_ms = self.now_ms

    def hand_off(self, slot: Slot) -> None:
        """A backup's `NodeCore.hand_off`: what it holds goes to the host before it applies
        the entries it received, which are among it."""
        node = slot.node
        assert node is not None
        written = [s for f in node.outbox if isinstance(f, itf.WriteEntries) for s, _ in f.entries]
        if not written or max(written) <= node.applied_seqno:
            raise self.fail(f"{slot.name} handed off no entries left to apply")
        self.count("hand_offs")
        self.send_outbox(slot)

    def send_outbox(self, slot: Slot) -> None:
        """What `Runtime.send_outbox` and the host do with the frames the node holds."""
        node = slot.node
        if node is None:
            return
        for _ in range(100):  # bounded: acting on frames can make more (durable at once)
            if not node.outbox:
                break
            frames, node.outbox = node.outbox, []
            node.outbox_write_bytes = 0
            sends: list[itf.SendToNode] = []
            for frame in frames:
                if isinstance(frame, itf.SendToNode):
                    sends.append(frame)
                else:
                    slot.storage.submit(frame)
            # Frames to different peers travel on different links: their relative order
            # means nothing, so take them in peer order (hash order must not steer a seed).
            for frame in sorted(sends, key=lambda f: f.node_id):
                self.send(slot, frame)
            self.run_storage(slot)

    def run_storage(self, slot: Slot) -> None:
        for reply in slot.storage.run(self.now_ms):
            self.schedule(
                self.now_ms + self.rng.randrange(2), "host", (slot, slot.incarnation, reply)
            )
        # Answers the host sends once durable (a backup's acknowledgements), in peer order.
        for frame in sorted(slot.storage.take_released(), key=lambda f: f.node_id):
            self.send(slot, frame)

    def send(self, slot: Slot, frame: itf.SendToNode) -> None:
        target = next((s for s in self.slots if s.address == frame.address), None)
        if target is None:
            self.count("unroutable")
            return
        if (slot.index, target.index) in self.cut or self.rng.random() < self.loss:
            self.count("lost")
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.count("duplicates", copies - 1)
        for _ in range(copies):
            at = self.now_ms + self.rng.randrange(self.delay_ms_max + 1)
            self.schedule(at, "net", (target, frame.payload, slot.index))

    def deliver(self, kind: str, payload: Any) -> None:
        if kind == "net":
            target, data, sender = payload
            node = target.node
            if node is None or (sender, target.index) in self.cut:
                return
            node.receive_from_peer(data)
            self.flush(target)
        elif kind == "host":
            slot, incarnation, frame = payload
            node = slot.node
            if node is None or incarnation != slot.incarnation:
                return  # answered to an enclave that died meanwhile
            if isinstance(frame, itf.Durable):
                node.durable(frame.seqno, frame.view)
            elif isinstance(frame, itf.EntriesRead):
                node.on_entries_read(frame)
            self.flush(slot)
        elif kind == "snapshot":
            slot, incarnation, seqno, entry = payload
            node = slot.node
            if node is None or incarnation != slot.incarnation:
                return  # the child died with its enclave
            encoding = node.snapshots.encodings.get(seqno)
            raft = node.raft
            # A primary's snapshot that comes back once another view began is dropped: no
            # evidence, no file (another primary's snapshots are the service's now).
            stale = (
                entry is not None
                and encoding is not None
                and encoding.primary
                and (not node.is_primary or raft is None or raft.view != encoding.view)
            )
            # One whose signature a truncation took away is dropped too (`Encoding.gone`).
            gone = entry is not None and encoding is not None and encoding.gone
            files_before = set(slot.disk.snapshots)
            if entry is None:
                node.snapshot_encode_failed(seqno, "simulated child failure")
                self.count("snapshot_encodings_failed")
            else:
                node.snapshot_encoded(seqno, entry)
                self.count("snapshot_encodings_deferred")
            self.flush(slot)
            if stale or gone:
                self.count("snapshot_results_dropped" if stale else "snapshot_results_rolled_back")
                made = [
                    name
                    for name in set(slot.disk.snapshots) - files_before
                    if name.startswith(f"snapshot_{seqno}_")
                ]
                if made:
                    raise self.fail(f"{slot.name}: a dropped snapshot result wrote {made}")

    # -------------------------------------------------------------------- requests
    def request(
        self,
        slot: Slot,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        query: str = "",
        cose_body: bool = False,
        peer_der: bytes | None = None,
        on_answer: Callable[[HttpResponse], None],
    ) -> None:
        """An HTTP request served by `slot`'s node; a forwarded one answers later."""
        node = slot.node
        assert node is not None
        headers = {"content-type": COSE_CONTENT_TYPE if cose_body else "application/json"}
        result = node.handle(method, path, query, headers, body, peer_der, source=slot.source)
        self.flush(slot)
        if isinstance(result, Forwarded):
            slot.forwards[result.forward_id] = (self.now_ms + FORWARD_TIMEOUT_MS, on_answer)
            self.count("forwarded")
        else:
            on_answer(result)

    def expire_forwards(self) -> None:
        for slot in self.slots:
            for forward_id, (deadline, on_answer) in list(slot.forwards.items()):
                if slot.node is None or self.now_ms >= deadline:
                    del slot.forwards[forward_id]
                    on_answer(HttpResponse(503, b"{}", {}, "application/json"))

    def tx_status(self, slot: Slot, view: int, seqno: int) -> str:
        """GET /node/tx on `slot` (read-only: always answered at once)."""
        out: list[str] = []

        def got(response: HttpResponse) -> None:
            out.append(json.loads(response.body)["status"] if response.status == 200 else "")

        self.request(slot, "GET", "/node/tx", query=f"transaction_id={view}.{seqno}", on_answer=got)
        return out[0]

    # -------------------------------------------------------------------- clients
    def client_write(self) -> None:
        candidates = self.serving()
        if not candidates or len([w for w in self.writes if not w.committed]) > PENDING_WRITES_MAX:
            return
        slot = self.rng.choice(candidates)
        key, self.next_key = self.next_key, self.next_key + 1
        msg = f"m{self.seed}.{key}"
        body = json.dumps({"id": key, "msg": msg}).encode()

        def answered(response: HttpResponse) -> None:
            txid = response.headers.get(TXID_HEADER)
            if response.status == 200 and txid:
                view, seqno = (int(x) for x in txid.split("."))
                self.writes.append(Write(key, msg, view, seqno))
                self.count("writes_answered")
            else:
                self.count("writes_refused")

        self.request(
            slot, "POST", "/app/log/private", body, peer_der=self.user.der, on_answer=answered
        )

    def poll_writes(self) -> None:
        """Ask a node whether answered writes committed: what a client is told is recorded."""
        serving = self.serving()
        if not serving:
            return
        slot = self.rng.choice(serving)
        for write in self.writes:
            if write.committed:
                continue
            status = self.tx_status(slot, write.view, write.seqno)
            if status == "Committed":
                write.committed = True
                self.count("writes_committed")
            elif status == "Invalid":
                write.committed = False
                write.seqno = -write.seqno  # rolled back: never told committed
        self.writes = [w for w in self.writes if w.seqno > 0]

    # -------------------------------------------------------------------- governance
    def propose(
        self, what: str, actions: list[dict[str, Any]], on_done: Callable[[], None] | None = None
    ) -> None:
        self.gov.append(GovTask(actions, what, on_done=on_done))

    def gov_request(
        self,
        path: str,
        msg_type: str,
        payload: bytes,
        on_answer: Callable[[HttpResponse], None],
        *,
        proposal_id: str | None = None,
    ) -> bool:
        target = self.primary() or (self.rng.choice(self.serving()) if self.serving() else None)
        if target is None:
            return False
        body = self.member.sign(
            msg_type, payload, created_at=int(self.clock_s()), proposal_id=proposal_id
        )
        self.request(target, "POST", path, body, query=GOV_API, cose_body=True, on_answer=on_answer)
        return True

    def drive_governance(self) -> None:
        for task in list(self.gov[:GOV_TASKS_MAX]):
            if task.busy or self.now_ms < task.next_try_ms:
                continue
            task.next_try_ms = self.now_ms + 200
            if task.stage == "commit":
                self._check_gov_commit(task)
                continue

            def answered(response: HttpResponse, task: GovTask = task) -> None:
                task.busy = False
                if response.status != 200:
                    self.count(f"gov_refused_{response.status}")
                    self.last_gov_error = response.body[:300]
                    if task.stage == "vote" and response.status == 404:
                        task.stage = "propose"  # the proposal itself was rolled back
                    return
                doc = json.loads(response.body)
                txid = response.headers[TXID_HEADER]
                task.proposal_id = doc["proposalId"]
                if doc["proposalState"] == "Accepted":
                    view, seqno = (int(x) for x in txid.split("."))
                    task.txid = (view, seqno)
                    task.stage = "commit"
                elif doc["proposalState"] == "Open":
                    task.stage = "vote"
                else:
                    task.stage = "propose"  # Rejected/Failed: try again

            if task.stage == "propose":
                payload = json.dumps({"actions": task.actions}).encode()
                task.busy = True  # the answer may come at once (and clear it) or later
                if not self.gov_request(
                    "/gov/members/proposals:create", "proposal", payload, answered
                ):
                    task.busy = False
            elif task.stage == "vote":
                assert task.proposal_id is not None
                path = f"/gov/members/proposals/{task.proposal_id}/ballots/{self.member.id}:submit"
                ballot = json.dumps({"ballot": "approve"}).encode()
                task.busy = True
                if not self.gov_request(
                    path, "ballot", ballot, answered, proposal_id=task.proposal_id
                ):
                    task.busy = False

    def _check_gov_commit(self, task: GovTask) -> None:
        serving = self.serving()
        if not serving or task.txid is None:
            return
        status = self.tx_status(self.rng.choice(serving), *task.txid)
        if status == "Committed":
            task.stage = "done"
            self.gov.remove(task)
            self.count("proposals_committed")
            if task.on_done is not None:
                task.on_done()
        elif status == "Invalid":
            task.stage = "propose"

    def ack_member(self) -> None:
        """Activate the member: :update, then :ack its state digest (as `charter ack`)."""
        base = f"/gov/members/state-digests/{self.member.id}"
        digest: list[str] = []

        def updated(response: HttpResponse) -> None:
            if response.status == 200:
                digest.append(json.loads(response.body)["stateDigest"])

        self.gov_request(f"{base}:update", "state_digest", b"", updated)
        self.settle(100)
        assert digest, self.fail("state digest update failed")
        acked: list[int] = []
        payload = json.dumps({"stateDigest": digest[0]}).encode()
        self.gov_request(f"{base}:ack", "ack", payload, lambda r: acked.append(r.status))
        self.settle(100)
        if acked not in ([200], [204]):
            raise self.fail(f"member ack refused: {acked}")

    # -------------------------------------------------------------------- operators
    def start_network(self) -> None:
        slot = self._slot("start")
        node = self._new_node(slot)

        node.start_new_network(initial_members(slot.config), None)
        slot.joined = True
        slot.node_id = node.node_id
        assert node.identity is not None
        self.service_cert_pem = node.identity.service_cert_pem
        self.flush(slot)
        self.settle(100)
        self.ack_member()
        self.propose(
            "open",
            [
                {"name": "set_user", "args": {"cert": self.user.cert_pem}},
                {"name": "transition_service_to_open", "args": {}},
            ],
        )
        self.settle_until(
            lambda: not self.gov, 5_000, f"the service did not open: {self.last_gov_error!r}"
        )

    def add_node(self, *, retire_while_learner: bool = False) -> Slot:
        slot = self._slot("join")
        node = self._new_node(slot)
        node.start_joining()
        slot.node_id = node.node_id
        self.flush(slot)
        slot.next_join_poll_ms = self.now_ms
        self.count("joins_started")
        if retire_while_learner:
            slot.gone = None
            self.count("learner_retirements")
        return slot

    def trust(self, slot: Slot, *, then_remove: bool) -> None:
        node_id = slot.node_id
        assert node_id is not None

        def trusted() -> None:
            if then_remove:
                # At once, so it is still a learner (not yet a voter) when it is removed.
                slot.removal_asked_view = max(self.primaries, default=0)  # type: ignore[attr-defined]
                self.propose(
                    "remove learner", [{"name": "remove_node", "args": {"node_id": node_id}}]
                )

        self.propose(
            "trust", [{"name": "transition_node_to_trusted", "args": {"node_id": node_id}}], trusted
        )

    def poll_joins(self) -> None:
        for slot in self.slots:
            node = slot.node
            if node is None or slot.joined or slot.join_pending or node.state != "Pending":
                continue
            if self.now_ms < slot.next_join_poll_ms:
                continue
            slot.next_join_poll_ms = self.now_ms + JOIN_POLL_MS
            targets = self.serving()
            if not targets:
                continue
            target = self.rng.choice(targets)
            body = json.dumps(node.join_request_body()).encode()
            slot.join_pending = True

            def answered(response: HttpResponse, slot: Slot = slot, node: Node = node) -> None:
                slot.join_pending = False
                if slot.node is not node:
                    return  # the joiner was killed meanwhile
                if response.status in (401, 403):
                    slot.gone = f"join refused: {response.body[:200]!r}"
                    slot.node = None
                    return
                if response.status != 200:
                    return
                doc = json.loads(response.body)
                if doc.get("node_status") == "Pending" and not getattr(slot, "trust_asked", False):
                    slot.trust_asked = True  # type: ignore[attr-defined]
                    self.trust(slot, then_remove=getattr(slot, "remove_early", False))
                if node.on_join_response(doc):
                    slot.joined = True
                    self.count("joins")
                    if node.snapshots.join_snapshot is None and node.snapshots.last_seqno:
                        self.count("joins_from_snapshot")
                self.flush(slot)

            self.request(target, "POST", "/node/join", body, on_answer=answered)

    def crash(self, slot: Slot) -> None:
        if slot.node is None:
            return
        slot.node = None
        slot.storage.crash()
        slot.join_pending = False
        if getattr(slot, "retire_asked", False) or getattr(slot, "remove_early", False):
            # Down while its removal commits: once the primary has given up on it (silent
            # for REMOVED_PEER_SILENT_TIMEOUTS), nothing tells it (a known gap; see docs).
            slot.crashed_while_removed = True  # type: ignore[attr-defined]
        self.count("crashes")
        self.expire_forwards()  # its clients' forwarded requests die with it

    def restart(self, slot: Slot) -> None:
        """What `Runtime.start` does with sealed state: resume, replay the own ledger (from
        a snapshot if it starts after one), then carry on, or join again if not trusted."""
        assert slot.node is None and slot.gone is None
        self.count("torn_bytes_cut", slot.storage.recover())
        sealed = slot.disk.sealed
        if sealed is None:
            return  # killed before its identity was sealed: nothing to restart from
        node = self._new_node(slot)
        node.resume(sealed)
        learner = node.identity is not None and not node.identity.ledger_secrets
        if not learner and slot.disk.last_seqno == 0 and slot.config.start.join is not None:
            # As `Runtime.start`: nothing of the service on its disk, so it joins again.
            learner = slot.disk.latest_committed_snapshot() is None
        if learner:
            node.resume_joining()
        self._replay_own_ledger(slot, node, learner=learner)
        if learner:
            node.resumed_joining()
            slot.next_join_poll_ms = self.now_ms
            slot.joined = False
        else:
            node.resumed()
        self.flush(slot)
        self.count("restarts")

    def _replay_own_ledger(self, slot: Slot, node: Node, *, learner: bool) -> None:
        disk = slot.disk
        last = disk.last_seqno
        holds_first = disk.entry(1) is not None
        snapshot = disk.latest_committed_snapshot()
        next_seqno = 1
        from_snapshot = not holds_first and (last > 0 or not learner)
        if from_snapshot and snapshot is None and last > 0:
            raise self.fail(f"{slot.name}: the ledger starts after seqno 1 but no snapshot exists")
        if from_snapshot and snapshot is not None:
            name, data = snapshot
            if learner:
                installed = node.resume_pending_snapshot(data, name, self.service_cert_pem)
            else:
                installed = node.resume_from_snapshot(data, name)
            next_seqno = installed + 1
            self.count("restarts_from_snapshot")
        elif snapshot is not None and not learner:
            node.offer_snapshot_from_disk(snapshot[1], snapshot[0])
        replay = node.replay_as_learner if learner else node.replay
        for seqno in range(next_seqno, last + 1):
            raw = disk.entry(seqno)
            if raw is None:
                raise self.fail(f"{slot.name}: host holds no entry {seqno} of {last}")
            replay(raw)

    def retire(self, slot: Slot) -> None:
        if slot.node_id is not None:
            self.propose("retire", [{"name": "remove_node", "args": {"node_id": slot.node_id}}])
            slot.retire_asked = True  # type: ignore[attr-defined]
            slot.removal_asked_view = max(self.primaries, default=0)  # type: ignore[attr-defined]
            self.count("retirements_asked")

    # -------------------------------------------------------------------- time
    def step(self) -> None:
        """Advance one tick: events due, the hosts' ticks, clients, governance, joins."""
        self.now_ms += TICK_MS
        while self.events and self.events[0][0] <= self.now_ms:
            _, _, kind, payload = heapq.heappop(self.events)
            self.deliver(kind, payload)
        for slot in self.slots:
            if slot.node is None:
                continue
            self.run_storage(slot)
            slot.node.tick(self.now_ms)
            self.flush(slot)
            if (
                slot.retired_at_ms is not None
                and self.now_ms - slot.retired_at_ms >= RETIRED_LINGER_MS
            ):
                # The runtime stops a retired node after a short linger; it never comes back.
                slot.node.seal_progress()
                self.flush(slot)
                slot.node = None
                slot.gone = "retired"
                self.count("retired_stopped")
        self.expire_forwards()
        self.drive_governance()
        self.poll_joins()

    def settle(self, ms: int) -> None:
        for _ in range(ms // TICK_MS):
            self.step()
            self.check()

    def settle_until(self, done: Callable[[], bool], ms_max: int, what: str) -> None:
        for _ in range(ms_max // TICK_MS):
            if done():
                return
            self.step()
            self.check()
        if not done():
            raise self.fail(what)

    # -------------------------------------------------------------------- faults
    def random_action(self) -> None:
        r = self.rng.random()
        if r < 0.35:
            self.client_write()
        elif r < 0.40:
            self.poll_writes()
        elif r < 0.42:
            live = self.live()
            if len(live) > 1:
                self.crash(self.rng.choice(live))
        elif r < 0.45:
            down = [s for s in self.slots if s.node is None and s.gone is None]
            if down:
                self.restart(self.rng.choice(down))
        elif r < 0.47:
            self.partition()
        elif r < 0.49:
            self.cut.clear()
            self.count("heals")
        elif r < 0.50:
            self.loss = self.rng.choice((0.0, 0.0, 0.05, 0.2))
            self.duplicate = self.rng.choice((0.0, 0.05, 0.2))
            self.delay_ms_max = self.rng.choice((1, 5, 30, 120))
        elif r < 0.51:
            if len(self.slots) < NODES_MAX:
                slot = self.add_node()
                slot.remove_early = self.rng.random() < 0.3  # type: ignore[attr-defined]
        elif r < 0.515:
            members = [
                s for s in self.serving() if s.joined and not getattr(s, "retire_asked", False)
            ]
            if len(members) > 2:
                self.retire(self.rng.choice(members))

    def partition(self) -> None:
        indexes = [s.index for s in self.slots]
        if len(indexes) < 2:
            return
        if self.rng.random() < 0.3:
            a, b = self.rng.sample(indexes, 2)
            self.cut.add((a, b))  # one way only
            self.count("one_way_cuts")
            return
        side = set(self.rng.sample(indexes, self.rng.randrange(1, len(indexes))))
        self.cut = {(a, b) for a in indexes for b in indexes if (a in side) != (b in side)}
        self.count("partitions")

    # -------------------------------------------------------------------- checks
    def check(self) -> None:
        """The properties that must hold after every step.

        - Committed ledger prefixes are byte-identical on every node (each committed seqno
          is compared with the first bytes any node committed there), and what a client was
          told committed is there, at its view.
        - At most one primary per view, ever.
        - A node's commit seqno never moves back (per incarnation); a retired node stays
          retired; a node part of the network has store, history and Raft at one seqno.
        """
        for slot in self.slots:
            node = slot.node
            if node is None:
                continue
            if node.commit_seqno < slot.commit_seen:
                raise self.fail(
                    f"{slot.name}: commit moved back {slot.commit_seen} -> {node.commit_seqno}"
                )
            slot.commit_seen = node.commit_seqno
            if slot.retired_seen and not node.retired:
                raise self.fail(f"{slot.name}: retired, then not retired")
            slot.retired_seen = node.retired
            raft = node.raft
            if raft is not None and raft.role is Role.PRIMARY:
                holder = self.primaries.setdefault(raft.view, node.node_id)
                if holder != node.node_id:
                    raise self.fail(
                        f"two primaries in view {raft.view}: {holder[:8]} and {node.node_id[:8]}"
                    )
            if node.state == "PartOfNetwork" and raft is not None and not node.deferred:
                counters = (
                    node.store.version,
                    node.history.last_seqno,
                    node.applied_seqno,
                    raft.last_index,
                )
                if len(set(counters)) != 1:
                    raise self.fail(
                        f"{slot.name}: store.version, history, applied and raft.last_index "
                        f"disagree: {counters}"
                    )
                if not node.commit_seqno <= node.applied_seqno:
                    raise self.fail(f"{slot.name}: committed beyond applied")
            # Committed entries, as this node's host holds them.
            for seqno in range(max(1, slot.disk.base_seqno + 1), node.commit_seqno + 1):
                raw = slot.disk.entry(seqno)
                if raw is None:
                    break
                first = self.committed_log.setdefault(seqno, raw)
                if first != raw:
                    raise self.fail(f"{slot.name}: committed entry {seqno} differs between nodes")
        for write in self.writes:
            if not write.committed:
                continue
            raw = self.committed_log.get(write.seqno)
            if raw is not None and decode_entry(raw)[0].view != write.view:
                raise self.fail(
                    f"write {write.key} told committed at {write.view}.{write.seqno}, but the "
                    f"committed entry there is of view {decode_entry(raw)[0].view}"
                )

    def check_indexes(self) -> None:
        """Every node's index of the logging sample's private records holds exactly the
        committed writes of each id over the seqnos it covers: no rolled-back write, none
        twice, none missing (whatever rollbacks, restarts and snapshot joins happened)."""
        self.check()  # brings committed_log up to every node's commit
        log = self.committed_log
        # The oracle is the run of committed seqnos some node's disk held, from the lowest.
        known_from = min(log, default=1)
        known_to = known_from - 1
        while known_to + 1 in log:
            known_to += 1
        written: dict[bytes, list[int]] = {}
        for slot in self.slots:
            node = slot.node
            if node is None or node.state != "PartOfNetwork" or node.identity is None:
                continue
            index = node.index(PRIVATE_BY_ID.name)
            assert isinstance(index, SeqnosByKeyIndex)
            # A restarted node indexes, as it replays, what it had sealed as committed,
            # before its Raft (which restarts at commit 0) hears of commit again.
            committed = max(node.commit_seqno, node.identity.committed_seqno)
            if index.indexed_to > committed:
                raise self.fail(f"{slot.name}: index at {index.indexed_to} past commit")
            if not written:
                for seqno in range(known_from, known_to + 1):
                    entry, _ = decode_entry(log[seqno])
                    if not entry.private_ciphertext:
                        continue
                    private = decrypt_private(entry, node.identity.secret_for(seqno))
                    for key in private.get(PRIVATE_RECORDS, {}):
                        written.setdefault(key, []).append(seqno)
            first, last = max(index.covers_from, known_from), min(index.indexed_to, known_to)
            for key, seqnos in written.items():
                expected = [s for s in seqnos if first <= s <= last]
                got: list[int] = []
                start = first
                while start <= last:
                    end = min(last, index.page_end(start))
                    got += index.get_write_txs_in_range(int.from_bytes(key, "little"), start, end)
                    start = end + 1
                if got != expected:
                    raise self.fail(
                        f"{slot.name}: index of id {int.from_bytes(key, 'little')} over "
                        f"{first}..{last} is {got}, the committed ledger says {expected}"
                    )
            self.count("indexes_checked")

    # -------------------------------------------------------------------- a whole run
    def run(self, steps: int) -> None:
        for name in self._log_levels:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            self.start_network()
            for _ in range(self.initial_nodes - 1):
                self.add_node()
            self.settle_until(
                lambda: all(s.joined for s in self.slots), 15_000, "initial joins did not finish"
            )
            for _ in range(steps):
                self.random_action()
                self.step()
                self.check()
            self.heal_and_converge()
        finally:
            self.close()
            for name, level in self._log_levels.items():
                logging.getLogger(name).setLevel(level)

    def heal_and_converge(self) -> None:
        """Faults stop, every node that may run runs: the service must commit again, every
        write a client was told committed must read back, and removed nodes must retire."""
        self.cut.clear()
        self.loss = self.duplicate = 0.0
        self.delay_ms_max = 5
        for slot in self.slots:
            if slot.node is None and slot.gone is None:
                self.restart(slot)
        self.settle_until(
            lambda: not self.gov, 20_000, f"governance stuck: {[t.what for t in self.gov]}"
        )
        marker: list[int] = []

        def write_committed() -> bool:
            self.poll_writes()
            return all(w.committed for w in self.writes) and bool(self.primary())

        self.settle_until(write_committed, 20_000, "answered writes did not commit after healing")
        del marker
        self.settle(1_000)
        primary = self.primary()
        assert primary is not None and primary.node is not None
        for write in self.writes:
            out: list[HttpResponse] = []
            self.request(
                primary,
                "GET",
                "/app/log/private",
                query=f"id={write.key}",
                peer_der=self.user.der,
                on_answer=out.append,
            )
            if out[0].status != 200 or json.loads(out[0].body)["msg"] != write.msg:
                raise self.fail(
                    f"committed write {write.key} reads back {out[0].status} {out[0].body!r}"
                )
        self.check_indexes()
        for slot in self.slots:
            asked_view = getattr(slot, "removal_asked_view", None)
            if asked_view is None or slot.gone is not None or slot.node is None:
                continue
            if getattr(slot, "crashed_while_removed", False) and not slot.node.retired:
                # Down while its removal committed, long enough that the primary gave up on
                # it: a removed voter is told once it speaks (it campaigns); a removed
                # learner waits silently to be told and is no longer contacted.
                self.count("removed_not_told")
                continue
            self.settle_until(
                lambda slot=slot: slot.node is None or slot.node.retired,
                10_000,
                f"{slot.name} was removed but never retired",
            )
