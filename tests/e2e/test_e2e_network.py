"""A 3-node network of real processes with a fault-injecting relay between the nodes.

One network for the module. Every test leaves three live, caught-up nodes behind (a killed
node is restarted on its workspace), so the next test starts from a whole network. In file
order: the sandbox's readiness, forwarding, refused joins and node-to-node frames, partitions
and one-way link failures, a primary crash, a linearizability check across a primary crash, and
a crash of every node at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_linearizability import Op, check_registers
from e2e_support import (
    NOT_SERVING_AT_START,
    alive,
    ccf_validate,
    check_receipt_with_ccf,
    commit_seqno,
    committed_chunk_end,
    committed_entries,
    log_tails,
    log_text,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)
from relay import FaultyRelay

from charter.auditor import verify_receipt_bytes
from charter.errors import CharterError
from charter.identity import TxId
from charter.ledger import certs
from charter.sandbox import NodeProcess, Sandbox, SandboxError
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

# Sealed frame header (enclave_app/channels.py): u8 version, sender id, receiver id, u32 epoch,
# u64 sequence number.
SEQNO_OFFSET = 1 + 32 + 32 + 4


@pytest.fixture(scope="module")
def relay() -> Iterator[FaultyRelay]:
    r = FaultyRelay()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, relay: FaultyRelay) -> Iterator[Sandbox]:
    def through_relay(i: int, config: dict[str, Any]) -> None:
        config["published_node_to_node_address"] = relay.add_node(
            str(i), config["node_to_node_address"]
        )

    sb = make_sandbox(tmp_path_factory.mktemp("e2e-net") / "sb", 3, through_relay)
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


async def _restart(sb: Sandbox, node: NodeProcess) -> None:
    node.start()
    await asyncio.to_thread(node.wait_started)
    await wait_ready(sb, node)


async def _nodes_doc(sb: Sandbox, node: NodeProcess) -> list[dict[str, Any]]:
    async with sb.client(node) as c:
        return sorted(await c.nodes(), key=lambda n: str(n["node_id"]))


async def _converged(sb: Sandbox, timeout_s: float = 20.0) -> int:
    """A fresh write committed on every live node; returns its seqno."""
    p = await primary_index(sb)
    txid = await write(sb, sb.nodes[p], 1, "converge")
    for node in sb.nodes:
        if alive(node):
            await wait_committed_on(sb, node, txid.seqno, timeout_s)
    return txid.seqno


def test_sandbox_start_returns_once_every_node_serves(net: Sandbox) -> None:
    # What users of `charter sandbox` (and these tests) rely on: no node still joining.
    assert NOT_SERVING_AT_START[net.workspace] == [], log_tails(net)


async def test_write_through_a_backup_is_forwarded_and_read_back_there_at_once(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    backup = next(n for n in net.nodes if n.index != p)
    last: TxId | None = None
    async with net.client(backup, user=0) as c:
        for i in range(15):
            msg = f"forwarded {i}"
            r = c.check(await c.post("/app/log/private", json={"id": 7300 + i, "msg": msg}))
            assert r.txid is not None
            last = r.txid
            # Read your writes: the backup answered once it applied the write itself.
            got = c.check(await c.get("/app/log/private", params={"id": str(7300 + i)}))
            assert got.body == {"msg": msg}, (i, got)
    assert last is not None
    await wait_committed_on(net, net.nodes[p], last.seqno)
    assert await read(net, net.nodes[p], 7314) == "forwarded 14"


FLOOD_CLIENTS = 16
FLOOD_S = 2.0


async def test_write_flood_keeps_the_primary_and_commits_every_accepted_write(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    async with net.client(net.nodes[p]) as c:
        view = (await c.network())["current_view"]
        before = c.check(await c.get("/node/metrics")).body
    accepted: list[TxId] = []
    refused: list[int] = []
    deadline = time.monotonic() + FLOOD_S

    async def flood(k: int) -> None:
        i = 0
        async with net.client(net.nodes[p], user=0) as c:
            while time.monotonic() < deadline:
                r = await c.post(
                    "/app/log/private", json={"id": 20_000 + k * 10_000 + i, "msg": "f"}
                )
                i += 1
                if r.status == 200 and r.txid is not None:
                    accepted.append(r.txid)
                else:
                    # Overload may be refused (503 + Retry-After), never silently dropped.
                    assert r.status == 503 and "retry-after" in r.headers, r
                    refused.append(r.status)

    await asyncio.gather(*(flood(k) for k in range(FLOOD_CLIENTS)))
    assert len(accepted) > 100, (len(accepted), len(refused))
    last = max(accepted, key=lambda t: t.seqno)
    await wait_committed_on(net, net.nodes[p], last.seqno)
    async with net.client(net.nodes[p]) as c:
        assert (await c.network())["current_view"] == view, log_tails(net)
        for txid in accepted[:: max(1, len(accepted) // 50)]:
            assert await c.tx_status(txid) == "Committed", str(txid)
        after = c.check(await c.get("/node/metrics")).body
    assert await primary_index(net) == p
    # Replicated in batches that follow the signatures: a few messages per backup per
    # signature (the batch, an occasional heartbeat), not one per turn of writes.
    sent = after["peer_messages_sent"] - before["peer_messages_sent"]
    signatures = after["signatures"] - before["signatures"]
    backups = len(net.nodes) - 1
    assert signatures > 0 and sent <= 3 * backups * signatures, (sent, signatures)


# ---------------------------------------------------------------------------------------------
# Promise 9: refused joins and frames


async def test_join_with_unaccepted_measurement_or_forged_report_is_refused_and_logged(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    primary = net.nodes[p]
    before = await _nodes_doc(net, primary)
    key = certs.new_key()
    spki = certs.spki_der(key.public_key())
    async with net.client(primary) as c:
        measurement = (await c.get_json("/node/quotes/self"))["measurement"]

    def report(measurement: str, bound_to: bytes) -> str:
        doc = {
            "format": "Insecure_Virtual",
            "measurement": measurement,
            "report_data": hashlib.sha256(bound_to).hexdigest(),
        }
        return base64.b64encode(json.dumps(doc).encode()).decode()

    other_key = certs.new_key()
    cases = {
        "unaccepted measurement": report("ab" * 32, spki),
        "report bound to another key": report(measurement, certs.spki_der(other_key.public_key())),
        "not a report": base64.b64encode(b"\x00garbage").decode(),
    }
    for what, quote in cases.items():
        body = {
            "public_key": certs.public_key_pem(key.public_key()),
            "quote": quote,
            "rpc_address": "127.0.0.1:9",
            "node_to_node_address": "127.0.0.1:9",
        }
        async with net.client(primary) as c:
            r = await c.post("/node/join", json=body)
        assert r.status == 403, (what, r)
        assert r.body["error"]["code"] == "InvalidQuote", (what, r.body)
    refused = log_text(primary).count("event=join_refused")
    assert refused >= len(cases), log_tails(net)
    await _converged(net)
    assert await _nodes_doc(net, primary) == before
    node_id = certs.node_id(key.public_key())
    for node in net.nodes:
        assert node_id not in {n["node_id"] for n in await _nodes_doc(net, node)}


async def test_real_node_is_refused_once_its_measurement_is_no_longer_accepted(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    primary = net.nodes[p]
    before = await _nodes_doc(net, primary)
    async with net.client(primary) as c:
        measurement = (await c.get_json("/node/quotes/self"))["measurement"]
        await net.pass_proposal(
            c, [{"name": "remove_node_measurement", "args": {"measurement": measurement}}]
        )
    try:
        # The sandbox reports the enclave's own one-line reason for stopping.
        with pytest.raises(SandboxError, match=r"stopped: join refused.*InvalidQuote"):
            await net.add_node()
        joiner = net.nodes[-1]
        assert not alive(joiner)
        assert "join refused" in log_text(joiner), log_tails(net)
        assert "is not accepted" in log_text(primary), log_tails(net)
    finally:
        net.nodes.pop()
        net.node_count = len(net.nodes)
        async with net.client(primary) as c:
            await net.pass_proposal(
                c, [{"name": "add_node_measurement", "args": {"measurement": measurement}}]
            )
    await _converged(net)
    assert await _nodes_doc(net, primary) == before


async def test_replayed_or_tampered_node_frames_are_dropped_and_logged(
    net: Sandbox, relay: FaultyRelay
) -> None:
    p = await primary_index(net)
    backup = next(n for n in net.nodes if n.index != p)
    await _converged(net)
    captured = relay.captured_frames(str(p), str(backup.index))
    assert captured, "the relay saw no frames from the primary to a backup"
    frame = captured[-1]
    # A fresh sequence number (so the replay window lets it through to decryption) and a
    # flipped ciphertext byte: authentication must fail.
    tampered = bytearray(frame)
    tampered[SEQNO_OFFSET : SEQNO_OFFSET + 8] = (10**6).to_bytes(8, "little")
    tampered[-20] ^= 0x01
    wrong_receiver = bytearray(frame)
    wrong_receiver[40] ^= 0x01  # the receiver id in the header
    log_before = log_text(backup)
    hello = str(net.nodes[p].ports["node_to_node_address"]).encode()
    relay.inject(str(backup.index), [frame, bytes(tampered), bytes(wrong_receiver)], hello=hello)
    await asyncio.sleep(0.3)
    new_log = log_text(backup)[len(log_before) :]
    assert "replayed or too old frame" in new_log, log_tails(net)
    assert "frame fails authentication" in new_log, log_tails(net)
    assert "addressed to another node" in new_log, log_tails(net)
    # Nothing changed and the network carries on.
    seqno = await _converged(net)
    commits = {n.index: await commit_seqno(net, n) for n in net.nodes}
    assert min(commits.values()) >= seqno, commits


# ---------------------------------------------------------------------------------------------
# Promise 7: a partitioned minority primary


async def test_partitioned_minority_primary_stops_committing_and_rolls_back_after_healing(
    net: Sandbox, relay: FaultyRelay
) -> None:
    p = await primary_index(net)
    old = net.nodes[p]
    majority = [n for n in net.nodes if n.index != p]
    await _converged(net)
    relay.partition({str(p)}, {str(n.index) for n in majority})
    try:
        lost = await write(net, old, 7001, "written on the minority side")
        frozen_commit = await commit_seqno(net, old)
        assert frozen_commit < lost.seqno
        q = await primary_index(net, exclude=p)
        kept = await write(net, net.nodes[q], 7002, "written on the majority side")
        for node in majority:
            await wait_committed_on(net, node, kept.seqno)
        await asyncio.sleep(1.0)  # more than an election timeout on the minority side
        assert await commit_seqno(net, old) == frozen_commit, log_tails(net)
        async with net.client(old) as c:
            assert await c.tx_status(lost) != "Committed"
        for node in majority:
            assert await read(net, node, 7001) is None
    finally:
        relay.heal()
    await wait_committed_on(net, old, kept.seqno)
    async with net.client(old) as c:
        assert await c.tx_status(lost) == "Invalid", log_tails(net)
        assert await c.tx_status(kept) == "Committed"
    for node in net.nodes:
        assert await read(net, node, 7001) is None, f"node{node.index} kept a rolled-back write"
        assert await read(net, node, 7002) == "written on the majority side"
    assert "event=rollback" in log_text(old), log_tails(net)
    seqno = await _converged(net)
    commits = [await commit_seqno(net, n) for n in net.nodes]
    assert min(commits) >= seqno
    # The rollback reached the old primary's files too: its ledger is the others', byte for byte.
    common = 0
    for i in range(60):  # write until a committed chunk on every node covers the rolled-back seqno
        common = min(committed_chunk_end(n.directory / "workspace" / "ledger") for n in net.nodes)
        if common >= lost.seqno:
            break
        await write(net, net.nodes[i % 3], 7100 + i, "c" * 300)
        await _converged(net)
    assert common >= lost.seqno, (common, str(lost))
    _compare_ledgers(net, list(net.nodes), common)
    ccf_validate(old.directory / "workspace" / "ledger")


async def test_partitioned_backup_rejoins_without_deposing_the_primary(
    net: Sandbox, relay: FaultyRelay
) -> None:
    p = await primary_index(net)
    await _converged(net)
    async with net.client(net.nodes[p]) as c:
        view = (await c.network())["current_view"]
    backup = next(n for n in net.nodes if n.index != p)
    relay.partition({str(backup.index)}, {str(n.index) for n in net.nodes if n is not backup})
    try:
        kept = await write(net, net.nodes[p], 7201, "while a backup is away")
        await wait_committed_on(net, net.nodes[p], kept.seqno)
        await asyncio.sleep(1.5)  # several election timeouts on the isolated backup
    finally:
        relay.heal()
    await wait_committed_on(net, backup, kept.seqno)
    assert await read(net, backup, 7201) == "while a backup is away"
    # Pre-vote: the isolated node's failed elections do not force a new view on the others.
    assert await primary_index(net) == p, log_tails(net)
    async with net.client(net.nodes[p]) as c:
        assert (await c.network())["current_view"] == view, log_tails(net)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
async def test_one_way_link_failure_at_the_primary_moves_leadership_and_loses_nothing(
    net: Sandbox, relay: FaultyRelay, direction: str
) -> None:
    p = await primary_index(net)
    old = net.nodes[p]
    before = await write(net, old, 7400, f"before {direction}")
    await _converged(net)
    for other in net.nodes:
        if other is not old:
            if direction == "outbound":  # the primary is heard by nobody
                relay.block(str(p), str(other.index))
            else:  # the primary hears nobody
                relay.block(str(other.index), str(p))
    try:
        q = await primary_index(net, exclude=p)
        kept = await write(net, net.nodes[q], 7401, f"during {direction}")
        for node in net.nodes:
            if node is not old:
                await wait_committed_on(net, node, kept.seqno)
    finally:
        relay.heal()
    await wait_committed_on(net, old, kept.seqno)
    seqno = await _converged(net)
    for node in net.nodes:
        await wait_committed_on(net, node, seqno)
        assert await read(net, node, 7400) == f"before {direction}"
        assert await read(net, node, 7401) == f"during {direction}"
    async with net.client(old) as c:
        assert await c.tx_status(before) == "Committed"
        assert await c.tx_status(kept) == "Committed"


# ---------------------------------------------------------------------------------------------
# Promise 6: kill -9 of the primary


def _compare_ledgers(sb: Sandbox, nodes: list[NodeProcess], up_to: int) -> None:
    dirs = {n.index: n.directory / "workspace" / "ledger" for n in nodes}
    entries = {i: committed_entries(d, up_to) for i, d in dirs.items()}
    reference_index, reference = next(iter(entries.items()))
    assert max(reference) >= up_to, (sorted(reference)[-3:], up_to)
    for i, got in entries.items():
        for seqno in range(1, up_to + 1):
            assert got.get(seqno) == reference.get(seqno), (
                f"node{i} and node{reference_index} differ at seqno {seqno}\n{log_tails(sb)}"
            )


async def test_writes_committed_before_primary_kill_survive_and_ledgers_agree(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    victim = net.nodes[p]
    committed: dict[int, str] = {}
    last: TxId | None = None
    for i in range(30):
        node = net.nodes[i % 3]  # writes through backups are forwarded to the primary
        msg = f"before kill {i} " + "p" * 200
        last = await write(net, node, 6000 + i, msg)
        committed[6000 + i] = msg
    assert last is not None
    await wait_committed_on(net, victim, last.seqno)

    victim.kill()
    survivors = [n for n in net.nodes if n is not victim]
    q = await primary_index(net, exclude=p)
    after: TxId | None = None
    for i in range(10):
        after = await write(net, survivors[i % 2], 6100 + i, f"after kill {i}")
    assert after is not None and after.view > last.view
    for node in survivors:
        await wait_committed_on(net, node, after.seqno)
        for key, msg in committed.items():
            assert await read(net, node, key) == msg, f"node{node.index} lost {key}"
    assert q != p
    # Receipts of writes the dead primary signed, served by the survivors, still verify.
    service_pem = net.service_cert_path.read_text()
    for node in survivors:
        async with net.client(node, user=0) as c:
            check_receipt_with_ccf(await c.receipt(last), service_pem)
            check_receipt_with_ccf(await c.receipt(after), service_pem)
            cose = await c.cose_receipt(last)
        assert verify_receipt_bytes(cose, service_pem).txid == str(last)

    for node in survivors:
        result = ccf_validate(node.directory / "workspace" / "ledger")
        assert result["chunks"] >= 2, result
    common = min(committed_chunk_end(n.directory / "workspace" / "ledger") for n in survivors)
    assert common > 0
    _compare_ledgers(net, survivors, min(common, after.seqno))

    await _restart(net, victim)
    seqno = await _converged(net)
    for key in (6000, 6029, 6109):
        assert await read(net, victim, key) is not None
    ccf_validate(victim.directory / "workspace" / "ledger")
    common = min(committed_chunk_end(n.directory / "workspace" / "ledger") for n in net.nodes)
    _compare_ledgers(net, list(net.nodes), min(common, seqno))


# ---------------------------------------------------------------------------------------------
# Promise 10: linearizability across a primary crash

LIN_KEYS = (8001, 8002)
LIN_CLIENTS = 4
LIN_OPS_PER_CLIENT = 45
LIN_KILL_AFTER_OPS = 70
LIN_CONFIRM_TIMEOUT_S = 15.0
LIN_REQUEST_TIMEOUT_S = 8.0


class _Cluster:
    """What the clients of the linearizability test share: connections, the primary guess,
    and which write produced each (unique) value."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.clients: dict[int, CharterClient] = {}
        self.primary = 0
        self.txid_of: dict[str, TxId | None] = {}
        self.done_ops = 0

    async def client(self, index: int) -> CharterClient:
        c = self.clients.get(index)
        if c is None:
            node = self.sb.nodes[index]
            c = CharterClient(
                node.url,
                self.sb.service_cert_path,
                cert_path=self.sb.user_paths(0)[0],
                key_path=self.sb.user_paths(0)[1],
                request_timeout_s=LIN_REQUEST_TIMEOUT_S,
            )
            await c.__aenter__()
            self.clients[index] = c
        return c

    def live(self) -> list[int]:
        return [n.index for n in self.sb.nodes if alive(n)]

    async def rediscover(self) -> None:
        ids = {n.node_id: n.index for n in self.sb.nodes}
        for index in self.live():
            with contextlib.suppress(CharterError):
                primary = (await (await self.client(index)).network()).get("primary_id")
                if primary in ids and alive(self.sb.nodes[ids[primary]]):
                    self.primary = ids[primary]
                    return
        await asyncio.sleep(0.1)

    async def status(self, txid: TxId, prefer: int) -> str:
        """Committed / Invalid, or "unknown" after the confirmation timeout."""
        deadline = time.monotonic() + LIN_CONFIRM_TIMEOUT_S
        while time.monotonic() < deadline:
            for index in [prefer, *self.live()]:
                if not alive(self.sb.nodes[index]):
                    continue
                with contextlib.suppress(CharterError):
                    s = await (await self.client(index)).tx_status(txid)
                    if s in ("Committed", "Invalid"):
                        return s
                    break
            await asyncio.sleep(0.02)
        return "unknown"

    async def close(self) -> None:
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                await c.close()


async def _lin_client(cluster: _Cluster, me: int, rng: random.Random, history: list[Op]) -> None:
    for n in range(LIN_OPS_PER_CLIENT):
        key = rng.choice(LIN_KEYS)
        if rng.random() < 0.5:
            value = f"c{me}-{n}"
            cluster.txid_of[value] = None
            target = rng.choice(cluster.live())  # any node: backups forward to the primary
            start = time.monotonic()
            try:
                c = await cluster.client(target)
                r = await c.post("/app/log/private", json={"id": key, "msg": value})
                if r.status != 200 or r.txid is None:
                    raise CharterError(f"write answered {r.status}")
                cluster.txid_of[value] = r.txid
                outcome = await cluster.status(r.txid, target)
            except CharterError:
                outcome = "unknown"
                await cluster.rediscover()
            if outcome == "Committed":
                history.append(Op(me, key, "write", value, start, time.monotonic()))
            elif outcome == "unknown":
                history.append(Op(me, key, "write", value, start, None))
            # Invalid: rolled back, so it never took effect and is left out.
        else:
            target = cluster.primary
            start = time.monotonic()
            try:
                c = await cluster.client(target)
                r = await c.get("/app/log/private", params={"id": str(key)})
                if r.status not in (200, 404):
                    raise CharterError(f"read answered {r.status}")
                seen = r.body["msg"] if r.status == 200 else None
            except CharterError:
                await cluster.rediscover()
                continue  # a failed read has no effect: nothing to record
            # A read counts once what it saw is known to be committed (the client checks the
            # writer's transaction, as CCF advises); a read of a rolled-back write is dropped.
            if seen is not None:
                txid = cluster.txid_of.get(seen)
                deadline = time.monotonic() + LIN_CONFIRM_TIMEOUT_S
                while txid is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    txid = cluster.txid_of.get(seen)
                if txid is None or await cluster.status(txid, target) != "Committed":
                    continue
            history.append(Op(me, key, "read", seen, start, time.monotonic()))
        cluster.done_ops += 1


async def test_concurrent_reads_and_writes_stay_linearizable_across_a_primary_kill(
    net: Sandbox,
) -> None:
    p = await primary_index(net)
    victim = net.nodes[p]
    cluster = _Cluster(net)
    cluster.primary = p
    history: list[Op] = []
    rng = random.Random(2024)
    killed_at: float | None = None

    async def killer() -> None:
        nonlocal killed_at
        while cluster.done_ops < LIN_KILL_AFTER_OPS:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(victim.kill)
        killed_at = time.monotonic()

    try:
        await asyncio.gather(
            killer(),
            *(
                _lin_client(cluster, me, random.Random(rng.random()), history)
                for me in range(LIN_CLIENTS)
            ),
        )
    finally:
        await cluster.close()
    assert killed_at is not None
    writes_after_kill = [o for o in history if o.kind == "write" and o.invoke_s > killed_at]
    assert any(o.complete_s is not None for o in writes_after_kill), (
        "no write committed after the kill"
    )
    reads = [o for o in history if o.kind == "read"]
    assert len(reads) >= 40 and len(history) >= 120, (len(reads), len(history))
    verdict = check_registers(history)
    maybes = sum(1 for o in history if o.complete_s is None)
    print(
        f"history: {len(history)} ops, {len(reads)} reads, {maybes} maybe, {verdict.explored_states} states"
    )
    assert verdict.ok, f"not linearizable on key {verdict.key}:\n{verdict.detail}\n{log_tails(net)}"

    await _restart(net, victim)
    await _converged(net)


# ---------------------------------------------------------------------------------------------
# All nodes crash at once (a power cut) and restart on their workspaces


async def test_whole_network_crash_restarts_as_the_same_service_with_committed_writes(
    net: Sandbox,
) -> None:
    async with net.client(net.nodes[0]) as c:
        service_cert = (await c.network())["service_certificate"]
    node_ids = [n.node_id for n in net.nodes]
    confirmed: dict[int, str] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        node = net.nodes[w % 3]
        i = 0
        async with net.client(node, user=0) as c:
            while not stop.is_set():
                key, msg = 9000 + w * 1000 + i, f"power cut {w}.{i}"
                i += 1
                try:
                    r = await c.post("/app/log/private", json={"id": key, "msg": msg})
                    if r.status == 200 and r.txid is not None:
                        await c.wait_for_commit(r.txid, timeout_s=5)
                        confirmed[key] = msg
                except CharterError:
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(writer(w)) for w in range(3)]
    while len(confirmed) < 60:
        await asyncio.sleep(0.05)
    for node in net.nodes:
        node.kill()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    for node in net.nodes:
        node.start()
    for node in net.nodes:
        await asyncio.to_thread(node.wait_started)
        await wait_ready(net, node)
    assert [n.node_id for n in net.nodes] == node_ids
    seqno = await _converged(net)
    for node in net.nodes:
        await wait_committed_on(net, node, seqno)
        async with net.client(node) as c:
            assert (await c.network())["service_certificate"] == service_cert
        for key, msg in confirmed.items():
            assert await read(net, node, key) == msg, f"node{node.index} lost {key}"
