"""`frontends: 0`: the enclave's ordering process serves TLS and HTTP itself (no frontend
process). Real processes, real TLS on 127.0.0.1. Most answers are given at once by
`Runtime.dispatch_now` and written without a task; a write sent to a backup (forwarded to the
primary) and the console's files are awaited. Pipelined requests are answered in order."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import (
    check_receipt_with_ccf,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    write,
)
from test_e2e_frontends import frontend_pids, metrics

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

ANSWER_WITHIN_S = 20.0
PIPELINED = 500


def _no_frontends(index: int, config: dict[str, Any]) -> None:
    del index
    config["frontends"] = 0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-fe0") / "sb", 2, _no_frontends))
    try:
        yield sb
    finally:
        sb.stop()


async def test_the_enclave_serves_alone_writes_commit_with_receipts_and_backups_forward(
    net: Sandbox,
) -> None:
    for node in net.nodes:
        values = await metrics(net, node)
        assert not [name for name in values if name.startswith("frontend")]
        assert frontend_pids(node) == []
    primary_at = await primary_index(net)
    primary, backup = net.nodes[primary_at], net.nodes[1 - primary_at]
    txid = await write(net, primary, 1, "answered at once")
    forwarded = await write(net, backup, 2, "forwarded, awaited")
    await wait_committed_on(net, primary, max(txid.seqno, forwarded.seqno))
    assert await read(net, backup, 1) == "answered at once"
    assert await read(net, primary, 2) == "forwarded, awaited"
    async with net.client(primary, user=0) as c:
        receipt = await c.receipt(txid)
        console = await c.get("/console/")
    assert len(check_receipt_with_ccf(receipt, net.service_cert_path.read_text())) == 32
    assert console.status == 200  # served by a coroutine: the awaited path


async def test_pipelined_writes_are_answered_in_order_in_one_session(net: Sandbox) -> None:
    primary = net.nodes[await primary_index(net)]
    cert, key = net.user_paths(0)
    ctx = ssl.create_default_context(cafile=str(net.service_cert_path))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False
    host, port = primary.url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        requests = []
        for i in range(PIPELINED):
            body = json.dumps({"id": 1000 + i, "msg": f"pipelined {i}"}).encode()
            requests.append(
                b"POST /app/log/private HTTP/1.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        writer.write(b"".join(requests))
        await writer.drain()
        seqnos = []
        for _ in range(PIPELINED):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN_S)
            lines = head.decode("latin-1").split("\r\n")
            assert lines[0].split()[1] == "200", head
            fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            await reader.readexactly(int(fields["content-length"]))
            seqnos.append(int(fields["x-ms-ccf-transaction-id"].split(".")[1]))
        assert seqnos == sorted(seqnos) and len(set(seqnos)) == PIPELINED
    finally:
        writer.close()
    assert await read(net, primary, 1000 + PIPELINED - 1) == f"pipelined {PIPELINED - 1}"
