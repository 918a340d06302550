"""What a network spread over a WAN must still do, as steps a test (short) and the soak
(longer, more profiles) both run on a `WanNet`. Each step returns what it measured, so the
soak and the bench can report it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
import time
from dataclasses import dataclass, field

from cryptography import x509
from e2e_linearizability import Op, check_registers
from e2e_support import (
    alive,
    log_tails,
    primary_index,
    read,
    wait_committed_on,
    wait_ready,
    write,
)
from netlab import RPC_PORT
from wan_net import WanNet

from charter.errors import CharterError, TransactionInvalid
from charter.ledger.chunks import LedgerReader
from charter.sandbox import NodeProcess

# Bounds, not performance figures: a step that takes longer has failed.
ELECTION_SETTLE_BOUND_S = 30.0
CATCH_UP_BOUND_S = 120.0
COMMIT_WAIT_S = 30.0
STABLE_VIEW_S = 5.0


@dataclass(slots=True)
class Measured:
    """What one scenario saw, for reports (not asserted against as performance)."""

    election_s: float = 0.0
    catch_up_s: float = 0.0
    join_s: float = 0.0
    history_ops: int = 0
    notes: list[str] = field(default_factory=list)


def node_cert_ip_sans(net: WanNet, i: int) -> list[str]:
    """The IP SANs of the certificate node i presents on its RPC port."""
    ctx = ssl.create_default_context(cafile=str(net.sb.service_cert_path))
    host = net.lab.ip(i)
    with contextlib.closing(
        ctx.wrap_socket(socket.create_connection((host, RPC_PORT), 10), server_hostname=host)
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


async def current_view(net: WanNet, node: NodeProcess) -> int:
    async with net.sb.client(node) as c:
        return int((await c.network())["current_view"])


async def settle_election(net: WanNet, *, exclude: int | None = None) -> tuple[int, float]:
    """Until the live nodes agree on a primary, then that the view stays put for
    `STABLE_VIEW_S` (no election storm). Returns (primary index, seconds it took)."""
    started = time.monotonic()
    p = await primary_index(net.sb, ELECTION_SETTLE_BOUND_S, exclude=exclude)
    took = time.monotonic() - started
    view = await current_view(net, net.sb.nodes[p])
    await asyncio.sleep(STABLE_VIEW_S)
    assert await primary_index(net.sb, 5.0, exclude=exclude) == p, "the primary changed"
    assert await current_view(net, net.sb.nodes[p]) == view, (
        f"view moved from {view} while the network was quiet: elections keep starting\n"
        + log_tails(net.sb)
    )
    return p, took


async def forwarded_write_commits(net: WanNet, primary: int) -> None:
    """A write sent to a follower is forwarded to the primary, committed, and readable on
    every node."""
    sb = net.sb
    follower = next(n for n in sb.nodes if n.index != primary and alive(n))
    txid = await write(sb, follower, 7, "via a follower")
    for node in sb.nodes:
        if alive(node):
            await wait_committed_on(sb, node, txid.seqno)
            assert await read(sb, node, 7) == "via a follower"


async def linearizable_history(
    net: WanNet, primary: int, *, clients: int, ops_per_client: int, keys: int, seed: int
) -> int:
    """Clients write (to any node: followers forward) and read (on the primary) a few keys
    concurrently; the history must be linearizable per key. Returns the operation count."""
    sb = net.sb
    ops: list[Op] = []
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    async def one_client(me: int) -> None:
        rng = random.Random(seed * 1000 + me)
        for n in range(ops_per_client):
            key = 9000 + rng.randrange(keys)
            if rng.random() < 0.5:
                value = f"c{me}-{n}"
                node = sb.nodes[rng.randrange(len(sb.nodes))]
                invoked = now()
                try:
                    async with sb.client(node, user=0) as c:
                        r = c.check(
                            await c.post("/app/log/private", json={"id": key, "msg": value})
                        )
                        assert r.txid is not None
                        await c.wait_for_commit(r.txid, COMMIT_WAIT_S)
                    ops.append(Op(me, key, "write", value, invoked, now()))
                except TransactionInvalid:
                    pass  # rolled back: it never took effect
                except CharterError:
                    ops.append(Op(me, key, "write", value, invoked, None))
            else:
                invoked = now()
                with contextlib.suppress(CharterError):
                    value_read = await read(sb, sb.nodes[primary], key)
                    ops.append(Op(me, key, "read", value_read, invoked, now()))

    await asyncio.gather(*(one_client(me) for me in range(clients)))
    verdict = check_registers(ops)
    assert verdict.ok, f"not linearizable on key {verdict.key}:\n{verdict.detail}"
    assert sum(op.kind == "read" for op in ops) > 0 and sum(op.kind == "write" for op in ops) > 0
    return len(ops)


async def cut_off_node_catches_up(
    net: WanNet, primary: int, *, isolated_s: float, writes: int
) -> float:
    """A follower cut off from every peer (nftables) for `isolated_s` misses `writes`
    writes; healed, it holds them all. Returns seconds from the heal to caught up."""
    sb = net.sb
    victim = next(n for n in sb.nodes if n.index != primary)
    net.lab.isolate(victim.index)
    try:
        deadline = time.monotonic() + isolated_s
        last = None
        n = 0
        while n < writes or time.monotonic() < deadline:
            if n < writes:
                last = await write(sb, sb.nodes[primary], 20_000 + n, f"while cut off {n}")
                n += 1
            else:
                await asyncio.sleep(0.2)
        assert last is not None
        await wait_committed_on(sb, sb.nodes[primary], last.seqno)
        async with sb.client(victim) as c:
            behind = (await c.commit()).seqno
        assert behind < last.seqno, "the cut-off node kept up: the cut did not cut"
    finally:
        net.lab.heal()
    healed = time.monotonic()
    await wait_committed_on(sb, victim, last.seqno, CATCH_UP_BOUND_S)
    took = time.monotonic() - healed
    for i in range(0, writes, max(1, writes // 10)):
        assert await read(sb, victim, 20_000 + i) == f"while cut off {i}"
    return took


async def primary_loss_elects_another(net: WanNet, primary: int) -> tuple[int, float]:
    """The primary's machine loses the network (both ways): the others elect a new primary
    across the WAN and it settles; healed, the old primary follows it. Returns (new primary,
    seconds to elect)."""
    net.lab.isolate(primary)
    try:
        new, took = await settle_election(net, exclude=primary)
    finally:
        net.lab.heal()
    assert new != primary
    txid = await write(net.sb, net.sb.nodes[new], 31_000, "after the election")
    await wait_committed_on(net.sb, net.sb.nodes[primary], txid.seqno, CATCH_UP_BOUND_S)
    return new, took


async def snapshot_join_catches_up(net: WanNet, primary: int, writes: int) -> float:
    """After enough writes for a committed snapshot, a node on a spare machine joins across
    the WAN from that snapshot (its ledger starts there) and catches up. Returns seconds from
    start to caught up."""
    sb = net.sb
    last = None
    for n in range(writes):
        last = await write(sb, sb.nodes[primary], 40_000 + n, f"before the join {n}")
    assert last is not None
    await wait_committed_on(sb, sb.nodes[primary], last.seqno)
    snapshots = sb.nodes[primary].directory / "workspace" / "snapshots"
    deadline = time.monotonic() + COMMIT_WAIT_S
    while not any(p.name.endswith(".committed") for p in snapshots.iterdir()):
        assert time.monotonic() < deadline, "no committed snapshot was written"
        await asyncio.sleep(0.2)
    started = time.monotonic()
    joiner = await sb.add_node()
    await wait_ready(sb, joiner)
    await wait_committed_on(sb, joiner, last.seqno, CATCH_UP_BOUND_S)
    took = time.monotonic() - started
    assert await read(sb, joiner, 40_000 + writes - 1) == f"before the join {writes - 1}"
    # One write after the join, committed on the joiner: its ledger then holds entries past
    # the snapshot (reading it at once raced the first entries' arrival).
    after = await write(sb, sb.nodes[primary], 40_000 + writes, "after the join")
    await wait_committed_on(sb, joiner, after.seqno, CATCH_UP_BOUND_S)
    # Its ledger files (a chunk closes at a signature past the chunk size, so the joiner's
    # may all still be open): they must start after seqno 1, i.e. at the snapshot.
    mine = [
        seqno
        for seqno, _ in LedgerReader(str(joiner.directory / "workspace" / "ledger")).entries(1)
    ]
    assert mine, "the joiner wrote no ledger entry"
    assert min(mine) > 1, (
        "the joiner replicated the whole ledger instead of starting from a snapshot"
    )
    return took


def check_own_addresses(net: WanNet) -> None:
    """Every node serves on its own machine's address and its certificate names that IP."""
    for node in net.sb.nodes:
        assert node.rpc_address == net.lab.rpc_address(node.index), node.ports
        assert net.lab.ip(node.index) in node_cert_ip_sans(net, node.index)
        assert not ipaddress.ip_address(net.lab.ip(node.index)).is_loopback
