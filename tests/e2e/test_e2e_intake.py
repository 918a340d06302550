"""Request intake under stress, on real processes (issue 11): a restarted node serves no
connection before it can authenticate it; writes beyond the uncommitted limit get 503 with
Retry-After; overload after fake joins never loses a ledger write nor the node; and a node
that asked to join is never contacted before governance trusts it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e_support import (
    alive,
    log_tails,
    log_text,
    make_sandbox,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.enclave_app.platform import VirtualPlatform
from charter.identity import TxId
from charter.ledger import certs
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry
from charter.sandbox import Sandbox, free_port

pytestmark = pytest.mark.e2e

WRITE_PATH = "/app/log/public"
APP_TABLE = "public:records"
# The enclave's peak resident memory under the overload below (issue: ~500 MB before).
ENCLAVE_PEAK_RSS_MB_MAX = 300


def _user_ssl(net: Sandbox) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(net.service_cert_path))
    ctx.check_hostname = False
    cert, key = net.user_paths(0)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


# A process that accepts node-to-node connections on the given ports and reads whatever
# arrives: the addresses fake joiners name are the attacker's, and they answer.
_SINK = """
import asyncio, sys
async def sink(reader, writer):
    while await reader.read(1 << 20):
        pass
async def main():
    servers = [await asyncio.start_server(sink, "127.0.0.1", int(p)) for p in sys.argv[1:]]
    print("ready", flush=True)
    await asyncio.sleep(300)  # bounded, should the test die before it ends this
asyncio.run(main())
"""


async def _fake_join(net: Sandbox, index: int, n2n_port: int, *, want_snapshot: bool = True) -> Any:
    """A join request anyone could send: a fresh key, a virtual report of the same code."""
    key = certs.new_key()
    report = VirtualPlatform(net.workspace).report(certs.spki_der(key.public_key()))
    async with net.client(net.nodes[0]) as c:
        return await c.post(
            "/node/join",
            json={
                "public_key": certs.public_key_pem(key.public_key()),
                "quote": base64.b64encode(report.to_bytes()).decode(),
                "rpc_address": f"127.0.0.1:{40000 + index}",
                "node_to_node_address": f"127.0.0.1:{n2n_port}",
                "want_snapshot": want_snapshot,
            },
        )


def _enclave_peak_rss_mb(net: Sandbox) -> float:
    pid = net.nodes[0].ports["enclave_pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _app_writes_in_ledger(ledger_dir: Path, up_to: int) -> int:
    count = 0
    for _, raw in LedgerReader(str(ledger_dir)).entries(1, up_to):
        entry, _ = decode_entry(bytes(raw))
        if APP_TABLE in entry.public:
            count += 1
    return count


@pytest.fixture
def net(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Sandbox]:
    """One node; a test may set config fields with `@pytest.mark.parametrize("net", [{…}],
    indirect=True)` (objects are merged into the defaults)."""
    extra: dict[str, Any] = getattr(request, "param", {})

    def configure(index: int, config: dict[str, Any]) -> None:
        for name, value in extra.items():
            base = config.get(name)
            config[name] = {**base, **value} if isinstance(base, dict) else value

    sb = start_sandbox(
        make_sandbox(
            tmp_path_factory.mktemp("e2e-intake") / "sb", nodes=1, configure_node=configure
        )
    )
    try:
        yield sb
    finally:
        sb.stop()


# ------------------------------------------------------------------------------------------
async def test_connections_reaching_a_restarting_node_are_served_as_their_users(
    net: Sandbox,
) -> None:
    """Clients that reuse one connection, connecting while the node resumes, must be
    authenticated on it once it serves: never a 401 for a registered user."""
    txid = await write(net, net.nodes[0], 1, "before the restart", public=True)
    node = net.nodes[0]
    await wait_committed_on(net, node, txid.seqno)
    node.stop()
    ctx = _user_ssl(net)
    url = f"https://{node.rpc_address}{WRITE_PATH}?id=1"
    first_ok: list[float] = []

    async def client(delay_s: float) -> tuple[float, list[int]]:
        """One keep-alive connection, opened after `delay_s`; every status it got."""
        await asyncio.sleep(delay_s)
        statuses: list[int] = []
        connected_at = 0.0
        deadline = time.monotonic() + 20
        connector = aiohttp.TCPConnector(ssl=ctx, limit=1)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=15)
        ) as session:
            while time.monotonic() < deadline and (not statuses or statuses[-1] != 200):
                try:
                    async with session.get(url) as response:
                        await response.read()
                        statuses.append(response.status)
                        connected_at = connected_at or time.monotonic()
                        if response.status == 200 and not first_ok:
                            first_ok.append(time.monotonic())
                except (aiohttp.ClientError, TimeoutError):
                    pass  # not listening yet, or closed before serving: a new connection
                await asyncio.sleep(0.05)
        return connected_at, statuses

    node.start()
    started_at = time.monotonic()
    results = await asyncio.gather(*(client(0.05 * i) for i in range(40)))
    await wait_ready(net, node)
    assert first_ok, f"no client was ever served: {results[:3]}\n{log_tails(net)}"
    early = [s for at, s in results if s and at - started_at < first_ok[0] - started_at + 0.05]
    assert early, "no connection was opened while the node resumed: the test proved nothing"
    for _, statuses in results:
        assert statuses and statuses[-1] == 200 and 401 not in statuses, (
            f"a connection opened during the restart was refused: {statuses}\n{log_tails(net)}"
        )


# Signatures (the only commit points) come at most every 300 ms, so writes pile up
# uncommitted well beyond a limit of 20.
@pytest.mark.parametrize(
    "net",
    [
        {
            "consensus": {"max_uncommitted_tx_count": 20},
            # Signatures 300 ms apart at any load, so writes pile up uncommitted.
            "signatures": {"tx_count": 1000, "delay_ms": 300, "light_load_delay_ms": 0},
        }
    ],
    indirect=True,
)
async def test_writes_beyond_max_uncommitted_tx_count_get_503_and_every_200_commits(
    net: Sandbox,
) -> None:
    accepted: list[TxId] = []
    refused: list[tuple[int, str | None, Any]] = []

    async def writer(n: int) -> None:
        async with net.client(net.nodes[0], user=0) as c:
            for i in range(10):
                r = await c.post(WRITE_PATH, json={"id": n * 100 + i, "msg": "w"})
                if r.status == 200:
                    assert r.txid is not None
                    accepted.append(r.txid)
                else:
                    refused.append((r.status, r.headers.get("Retry-After"), r.body))

    await asyncio.gather(*(writer(n) for n in range(8)))
    assert refused, "80 writes inside 300 ms never met the limit of 20"
    for status, retry_after, body in refused:
        assert status == 503 and retry_after == "1", (status, retry_after, body)
        assert body["error"]["code"] == "TooManyPendingTransactions", body
    assert accepted
    async with net.client(net.nodes[0]) as c:
        for txid in accepted:
            await c.wait_for_commit(txid, timeout_s=20)


async def test_overload_after_fake_joins_keeps_the_node_and_every_accepted_write(
    net: Sandbox,
) -> None:
    """Eight join requests from nodes that do not exist, then 500 concurrent keep-alive
    writers: the node stays up, no ledger write is dropped on its way to the host, every
    write answered 200 is committed, and the enclave's memory stays bounded."""
    ports = [free_port() for _ in range(8)]
    sink = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SINK, *map(str, ports), stdout=subprocess.PIPE
    )
    assert sink.stdout is not None
    await sink.stdout.readline()
    for i, port in enumerate(ports):
        response = await _fake_join(net, i, port)
        assert response.status == 200, response
    node = net.nodes[0]
    body = net.workspace / "body.json"
    body.write_text('{"id": 1, "msg": "' + "x" * 200 + '"}')
    pem = net.workspace / "user0.pem"
    cert, key = net.user_paths(0)
    pem.write_text(cert.read_text() + key.read_text())
    tracked: list[TxId] = []
    ab_ok = 0
    if shutil.which("ab"):
        proc = await asyncio.create_subprocess_exec(
            "ab", "-q", "-k", "-c", "500", "-n", "20000", "-s", "30",
            "-E", str(pem), "-p", str(body), "-T", "application/json",
            f"https://{node.rpc_address}{WRITE_PATH}",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

        async def tracked_writer() -> None:
            """Writes whose ids we keep, alongside ab's (which reports only counts)."""
            async with net.client(node, user=0) as c:
                while proc.returncode is None:
                    with contextlib.suppress(Exception):
                        r = await c.post(WRITE_PATH, json={"id": 2, "msg": "tracked"})
                        if r.status == 200 and r.txid is not None:
                            tracked.append(r.txid)
                    await asyncio.sleep(0.01)

        writer = asyncio.ensure_future(tracked_writer())
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
        await writer
        report = out.decode(errors="replace")
        complete = int(report.split("Complete requests:")[1].split()[0])
        non_2xx = 0
        if "Non-2xx responses:" in report:
            non_2xx = int(report.split("Non-2xx responses:")[1].split()[0])
        ab_ok = complete - non_2xx
    else:  # the same shape of load from Python, smaller: 2 cores are shared

        async def writer_task(n: int) -> None:
            async with net.client(node, user=0) as c:
                for _ in range(20):
                    with contextlib.suppress(Exception):
                        r = await c.post(WRITE_PATH, json={"id": n, "msg": "x" * 200})
                        if r.status == 200 and r.txid is not None:
                            tracked.append(r.txid)

        await asyncio.gather(*(writer_task(n) for n in range(200)))
    sink.kill()
    await sink.wait()
    assert alive(node), f"the node stopped under load\n{log_tails(net)}"
    text = log_text(node)
    for sign in ("outgoing buffer full", "does not follow", "event=fatal", "frame_failed"):
        assert sign not in text, f"{sign!r} in the node's log\n{log_tails(net)}"
    peak_mb = _enclave_peak_rss_mb(net)
    assert peak_mb < ENCLAVE_PEAK_RSS_MB_MAX, f"enclave peak RSS {peak_mb:.0f} MB"
    assert tracked, "no write was accepted at all"
    async with net.client(node) as c:
        for txid in tracked:
            await c.wait_for_commit(txid, timeout_s=60)
        commit = (await c.commit()).seqno
    # Every write ab saw answered 200 is a transaction in the committed ledger (read once
    # the host has stopped renaming its files).
    node.stop()
    in_ledger = _app_writes_in_ledger(net.workspace / "node0/workspace/ledger", commit)
    assert in_ledger >= ab_ok + len(tracked), (in_ledger, ab_ok, len(tracked))
