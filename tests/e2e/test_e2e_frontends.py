"""`frontends: 2`: two nodes whose enclaves serve TLS and HTTP from two frontend processes each
(real processes, real TLS on 127.0.0.1, nothing mocked). Writes, reads, receipts, a write
forwarded by a backup, client-certificate auth (including a user registered while the node
runs: the frontends get the new CA bundle), a frontend killed with -9 and restarted, no
process left once the node stops or its enclave is killed, and session caps that hold per
node, not per frontend."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    check_receipt_with_ccf,
    log_tails,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    write,
)

from charter.auditor import verify_receipt_bytes
from charter.errors import ConnectionFailed, Unauthorized
from charter.keygen import generate_identity
from charter.sandbox import NodeProcess, Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

FRONTENDS = 2
WAIT_S = 20.0


def _frontends(index: int, config: dict[str, Any]) -> None:
    del index
    config["frontends"] = FRONTENDS


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-fe") / "sb", 2, _frontends))
    try:
        yield sb
    finally:
        sb.stop()


def frontend_pids(node: NodeProcess) -> list[int]:
    """The enclave's children running `charter.enclave_app.frontend_process`."""
    enclave = int(node.ports["enclave_pid"])
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == enclave and b"charter.enclave_app.frontend_process" in cmdline:
            pids.append(int(entry))
    return sorted(pids)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def metrics(sb: Sandbox, node: NodeProcess) -> dict[str, Any]:
    async with sb.client(node) as c:
        r = c.check(await c.get("/node/metrics"))
    assert isinstance(r.body, dict)
    return r.body


async def until(check: Any, what: str, sb: Sandbox) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {WAIT_S}s\n{log_tails(sb)}")


async def test_each_node_serves_through_its_frontend_processes(net: Sandbox) -> None:
    for node in net.nodes:
        values = await metrics(net, node)
        assert values["frontends"] == FRONTENDS
        assert len(frontend_pids(node)) == FRONTENDS
        for i in range(FRONTENDS):
            assert values[f"frontend_{i}_restarts"] == 0


async def test_writes_and_reads_through_frontends_commit_with_verifiable_receipts(
    net: Sandbox,
) -> None:
    primary = net.nodes[await primary_index(net)]
    service_pem = net.service_cert_path.read_text()
    txids = [await write(net, primary, 100 + i, f"through a frontend {i}") for i in range(8)]
    txids.append(await write(net, primary, 200, "public one", public=True))
    await wait_committed_on(net, primary, txids[-1].seqno)
    assert await read(net, primary, 103) == "through a frontend 3"
    assert await read(net, primary, 200, public=True) == "public one"
    async with net.client(primary, user=0) as c:
        receipt = await c.receipt(txids[0])
        cose = await c.cose_receipt(txids[-1])
    assert len(check_receipt_with_ccf(receipt, service_pem)) == 32
    assert verify_receipt_bytes(cose, service_pem).txid == str(txids[-1])


async def test_write_sent_to_a_backup_is_forwarded_and_readable_there(net: Sandbox) -> None:
    backup = net.nodes[1 - await primary_index(net)]
    txid = await write(net, backup, 300, "via the backup's frontend")
    await wait_committed_on(net, backup, txid.seqno)
    assert await read(net, backup, 300) == "via the backup's frontend"


async def test_users_are_authenticated_by_client_certificate_in_frontends(
    net: Sandbox, tmp_path: Path
) -> None:
    primary = net.nodes[await primary_index(net)]
    async with net.client(primary) as anonymous:
        r = await anonymous.post("/app/log/private", json={"id": 400, "msg": "anonymous"})
        assert r.status == 401, r
    stranger = generate_identity("stranger", tmp_path)

    def client(identity: Any) -> CharterClient:
        return CharterClient(
            primary.url,
            net.service_cert_path,
            cert_path=identity.cert_path,
            key_path=identity.key_path,
        )

    async with client(stranger) as c:
        with pytest.raises((ConnectionFailed, Unauthorized)):
            c.check(await c.post("/app/log/private", json={"id": 401, "msg": "stranger"}))
    # Registered while the node runs: the frontends are sent the new CA bundle.
    user = generate_identity("user9", tmp_path)
    async with net.client(primary) as c:
        p = await net.pass_proposal(
            c, [{"name": "set_user", "args": {"cert": user.cert_path.read_text()}}]
        )
    assert p.txid is not None
    await wait_committed_on(net, primary, p.txid.seqno)
    for attempt in range(2 * FRONTENDS):  # new sessions go to each frontend in turn
        async with client(user) as c:
            r = c.check(await c.post("/app/log/private", json={"id": 402 + attempt, "msg": "u9"}))
            assert r.txid is not None
    assert await read(net, primary, 401) is None


BURST = 900  # new sessions at once: more than a link queues fds by default (256)


async def test_a_burst_of_new_sessions_is_served_not_dropped_while_frontends_handshake(
    net: Sandbox,
) -> None:
    # The ordering process passes each new socket over a link; while a frontend is busy with
    # a burst of TLS handshakes those fds queue. They used to be closed past 256 queued
    # (`ab -c 900` saw most handshakes cut); the node's hard session cap is the bound now.
    async def one() -> bytes:
        reader, writer = await _connect(net)
        try:
            return await _ask(reader, writer)
        finally:
            writer.close()

    heads = await asyncio.gather(*(one() for _ in range(BURST)), return_exceptions=True)
    failures = [h for h in heads if not isinstance(h, bytes)]
    assert not failures, f"{len(failures)} of {BURST} sessions failed: {failures[:3]}"
    assert all(h.startswith(b"HTTP/1.1 200") for h in heads if isinstance(h, bytes))


async def test_frontend_killed_with_sigkill_is_restarted_and_the_node_keeps_serving(
    net: Sandbox,
) -> None:
    primary = net.nodes[await primary_index(net)]
    before = frontend_pids(primary)
    assert len(before) == FRONTENDS
    os.kill(before[0], signal.SIGKILL)

    async def restarted() -> bool:
        # A session the node accepts in the moment between the kill and the ordering process
        # seeing the frontend gone goes down with it (as a session of a crashed process
        # does): the client sees its connection reset and asks again.
        try:
            values = await metrics(net, primary)
        except ConnectionFailed:
            return False
        restarts = sum(values[f"frontend_{i}_restarts"] for i in range(FRONTENDS))
        pids = frontend_pids(primary)
        return restarts == 1 and len(pids) == FRONTENDS and before[0] not in pids

    await until(restarted, "the killed frontend was not restarted", net)
    for i in range(2 * FRONTENDS):  # new sessions, spread over both frontends
        await write(net, primary, 500 + i, f"after the kill {i}")
    assert (
        await read(net, primary, 500 + 2 * FRONTENDS - 1) == f"after the kill {2 * FRONTENDS - 1}"
    )


async def test_no_frontend_outlives_its_enclave_or_its_node(net: Sandbox) -> None:
    index = await primary_index(net)
    primary, backup = net.nodes[index], net.nodes[1 - index]
    # kill -9 of the enclave: its frontends see the link close and exit.
    orphans = frontend_pids(backup)
    assert len(orphans) == FRONTENDS
    os.kill(int(backup.ports["enclave_pid"]), signal.SIGKILL)
    await until(gone(orphans), "frontends outlived their killed enclave", net)
    # A node stopped by its operator stops its frontends.
    pids = frontend_pids(primary)
    assert len(pids) == FRONTENDS
    await asyncio.to_thread(primary.stop)
    await until(gone(pids), "frontends outlived their stopped node", net)


def gone(pids: list[int]) -> Any:
    async def check() -> bool:
        return not any(running(pid) for pid in pids)

    return check


# Session caps with two frontends: per node, as with one process.
SOFT, HARD = 2, 3
CLOSED_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def configure(index: int, config: dict[str, Any]) -> None:
        _frontends(index, config)
        config["rpc_interface"]["max_open_sessions_soft"] = SOFT
        config["rpc_interface"]["max_open_sessions_hard"] = HARD

    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-fe-caps") / "sb", 1, configure))
    try:
        yield sb
    finally:
        sb.stop()


async def _connect(sb: Sandbox) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(sb.service_cert_path))
    ctx.check_hostname = False
    host, _, port = sb.nodes[0].rpc_address.rpartition(":")
    return await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx), CLOSED_WITHIN_S
    )


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on a kept-open session: the status line and headers of its answer."""
    writer.write(b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), CLOSED_WITHIN_S)
    return head


async def test_session_caps_hold_per_node_across_frontends(capped: Sandbox) -> None:
    await asyncio.sleep(0.5)  # sessions of the start-up checks have closed and been reported
    sessions = []
    try:
        for _ in range(SOFT):  # one on each frontend: both under the node's soft cap
            reader, writer = await _connect(capped)
            sessions.append((reader, writer))
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        over_soft = await _connect(capped)  # past the node's soft cap
        sessions.append(over_soft)
        # At the node's hard cap: closed before TLS by the ordering process.
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await _connect(capped)
            sessions.append((reader, writer))
            await _ask(reader, writer)
        assert (await _ask(*over_soft)).startswith(b"HTTP/1.1 503")
    finally:
        for _, writer in sessions:
            with contextlib.suppress(Exception):
                writer.close()
    await asyncio.sleep(1.0)  # closed sessions are reported free
    reader, writer = await _connect(capped)
    try:
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
