"""Every backup keeps the snapshots the primary takes, on real processes where each snapshot
is encoded by a forked child: the primary's evidence then lands some signatures after the
snapshot, and a backup must still hold its own candidate when it arrives (until 2eeeb19 the
next signature made a backup encode another snapshot and drop the one waiting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import log_tails, log_text, running_sandbox, wait_committed_on

from charter.identity import TxId
from charter.ledger.snapshot import parse_snapshot_file_name
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

SNAPSHOT_TX = 200  # longer than a snapshot takes to commit: the primary skips none
SIGNATURE_TX = 5  # several signatures fall between a snapshot and its evidence
WRITES = 2_400
WAIT_S = 30.0


def _configure(index: int, config: dict[str, Any]) -> None:
    del index
    config["snapshots"] = {"tx_count": SNAPSHOT_TX}
    config["signatures"] = {**config["signatures"], "tx_count": SIGNATURE_TX}


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("e2e-snapbackups") / "sb", 3, _configure) as sb:
        yield sb


def _committed_snapshot_seqnos(node: NodeProcess) -> set[int]:
    names = (p.name for p in (node.directory / "workspace" / "snapshots").iterdir())
    parsed = (parse_snapshot_file_name(n) for n in names)
    return {p[0] for p in parsed if p is not None and p[2]}


async def test_every_backup_keeps_each_snapshot_the_primary_takes(net: Sandbox) -> None:
    primary_id = await net.wait_for_primary()
    primary = next(n for n in net.nodes if n.node_id == primary_id)
    backups = [n for n in net.nodes if n is not primary]
    txids: list[TxId] = []
    async with net.client(primary, user=0) as c:
        for batch in range(WRITES // 20):
            answers = await asyncio.gather(
                *(
                    c.post("/app/log/private", json={"id": 20 * batch + i, "msg": "m"})
                    for i in range(20)
                )
            )
            txids += [t for a in answers if (t := c.check(a).txid) is not None]
    assert len(txids) == WRITES
    last = max(t.seqno for t in txids)
    for node in net.nodes:
        await wait_committed_on(net, node, last)

    taken = _committed_snapshot_seqnos(primary)
    assert len(taken) >= 3, f"the primary committed {sorted(taken)}\n{log_tails(net)}"
    deadline = time.monotonic() + WAIT_S
    while not all(_committed_snapshot_seqnos(b) >= taken for b in backups):
        assert time.monotonic() < deadline, (
            f"primary {sorted(taken)}, backups "
            f"{[sorted(_committed_snapshot_seqnos(b)) for b in backups]}\n{log_tails(net)}"
        )
        await asyncio.sleep(0.1)
    for backup in backups:
        text = log_text(backup)
        assert "event=snapshot_not_taken" not in text, text[-3000:]
        # One encoding per snapshot: a backup forks only for snapshots it then keeps.
        assert text.count("event=snapshot_encoding") <= len(_committed_snapshot_seqnos(backup)) + 1
