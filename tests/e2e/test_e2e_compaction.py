"""Bounded enclave memory on a real network: with tiny in-memory limits, a backup that was down
catches up from entries read back from the primary's ledger files, a node joining later starts
from a snapshot, and receipts past the in-memory window are read back from the ledger and verify."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import (
    check_receipt_with_ccf,
    committed_entries,
    log_tails,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

LOG_ENTRIES_IN_MEMORY = 20
RECEIPTS_IN_MEMORY = 20
SNAPSHOT_TX_COUNT = 50
WRITES = 200


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def small_memory(i: int, config: dict[str, Any]) -> None:
        config["memory"] = {
            "raft_log_entries": LOG_ENTRIES_IN_MEMORY,
            "receipt_transactions": RECEIPTS_IN_MEMORY,
        }
        config["snapshots"] = {"tx_count": SNAPSHOT_TX_COUNT}

    sb = make_sandbox(tmp_path_factory.mktemp("e2e-compact") / "sb", 3, small_memory)
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


async def test_lagging_backup_and_late_joiner_catch_up_past_compaction(net: Sandbox) -> None:
    p = await primary_index(net)
    primary = net.nodes[p]
    lagging = next(n for n in net.nodes if n.index != p)
    lagging.kill()
    txids = [await write(net, primary, 500 + i, f"v{i}") for i in range(WRITES)]
    await wait_committed_on(net, primary, txids[-1].seqno)

    lagging.start()
    await asyncio.to_thread(lagging.wait_started)
    await wait_ready(net, lagging)
    await wait_committed_on(net, lagging, txids[-1].seqno)
    for i in range(0, WRITES, 7):
        assert await read(net, lagging, 500 + i) == f"v{i}", (i, log_tails(net))

    service_pem = net.service_cert_path.read_text()
    async with net.client(primary, user=0) as c:
        # The in-memory window is a cache, not a limit: an old receipt is read back.
        check_receipt_with_ccf(await c.receipt(txids[0]), service_pem)
        check_receipt_with_ccf(await c.receipt(txids[-1]), service_pem)
    snapshots = primary.directory / "workspace" / "snapshots"
    assert any(snapshots.iterdir()), "no snapshot was written"

    joiner = await net.add_node()
    await wait_ready(net, joiner)
    last = await write(net, primary, 1, "after the join")
    await wait_committed_on(net, joiner, last.seqno)
    for i in range(0, WRITES, 7):
        assert await read(net, joiner, 500 + i) == f"v{i}", (i, log_tails(net))
    # Its ledger files start after its snapshot: an older receipt is not there, and it says so.
    async with net.client(joiner, user=0) as c:
        old = await c.get("/node/receipt", params={"transaction_id": str(txids[0])})
        for _ in range(100):
            if old.status != 202:
                break
            await asyncio.sleep(0.05)
            old = await c.get("/node/receipt", params={"transaction_id": str(txids[0])})
        assert old.status == 404 and old.body["error"]["code"] == "ReceiptNotAvailable", old
        assert f"seqno {txids[0].seqno}" in old.body["error"]["message"], old
        assert "snapshot" in old.body["error"]["message"], old
    # The joiner's ledger starts at its snapshot; what it holds is the primary's, byte for byte.
    mine = committed_entries(joiner.directory / "workspace" / "ledger")
    theirs = committed_entries(primary.directory / "workspace" / "ledger")
    assert mine, "the joiner committed no ledger chunk"
    for seqno, raw in mine.items():
        assert theirs.get(seqno) == raw, f"seqno {seqno} differs"
