"""Growing and shrinking a live network by governance while a client keeps writing.

1 → 3 → 2 nodes retiring a backup, and 1 → 5 → 3 retiring whichever node is primary each time.
Promise: no write that was confirmed committed is ever lost, and receipts issued before and
after the membership changes verify against the (unchanged) service certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_support import (
    alive,
    check_receipt_with_ccf,
    log_tails,
    make_sandbox,
    primary_index,
    read,
    serving_now,
    start_sandbox,
    wait_committed_on,
)

from charter.errors import CharterError
from charter.identity import TxId
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

RETIRE_TIMEOUT_S = 15.0


@dataclass
class Writer:
    """Writes unique keys continuously through whichever node answers; confirms commits."""

    sb: Sandbox
    written: dict[int, tuple[str, TxId]] = field(default_factory=dict)
    confirmed: set[int] = field(default_factory=set)
    errors: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    retired: set[int] = field(default_factory=set)
    confirmers: set[asyncio.Task[None]] = field(default_factory=set)

    def targets(self) -> list[NodeProcess]:
        # A node being added is in sb.nodes before its host reports its ports.
        return [
            n
            for n in self.sb.nodes
            if alive(n) and n.index not in self.retired and n.ports.get("rpc_address")
        ]

    async def run(self) -> None:
        key = 100_000
        while not self.stop.is_set():
            live = self.targets()
            node = live[key % len(live)]
            msg = f"w{key}"
            try:
                async with self.sb.client(node, user=0) as c:
                    r = await c.post("/app/log/private", json={"id": key, "msg": msg})
                if r.status == 200 and r.txid is not None:
                    self.written[key] = (msg, r.txid)
                    task = asyncio.get_running_loop().create_task(self._confirm(key, r.txid))
                    self.confirmers.add(task)
                    task.add_done_callback(self.confirmers.discard)
                else:
                    self.errors += 1
            except CharterError:
                self.errors += 1
                await asyncio.sleep(0.05)
            key += 1
            await asyncio.sleep(0.01)

    async def _confirm(self, key: int, txid: TxId) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for node in self.targets():
                with contextlib.suppress(CharterError):
                    async with self.sb.client(node) as c:
                        status = await c.tx_status(txid)
                    if status == "Committed":
                        self.confirmed.add(key)
                        return
                    if status == "Invalid":
                        return
                    break
            await asyncio.sleep(0.05)


async def _retire(sb: Sandbox, node: NodeProcess, remaining: list[NodeProcess]) -> None:
    """Remove `node` by governance; wait until the others list it Retired."""
    await sb.retire_node(node)
    deadline = time.monotonic() + RETIRE_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        with contextlib.suppress(CharterError):
            async with sb.client(remaining[0]) as c:
                nodes = {n["node_id"]: n["status"] for n in await c.nodes()}
            status = nodes.get(node.node_id)
            if status == "Retired":
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"node{node.index} is {status}, not Retired\n{log_tails(sb)}")


async def _wait_stopped(sb: Sandbox, nodes: list[NodeProcess]) -> None:
    deadline = time.monotonic() + RETIRE_TIMEOUT_S
    while time.monotonic() < deadline and any(alive(n) for n in nodes):
        await asyncio.sleep(0.1)
    running = [n.index for n in nodes if alive(n)]
    assert not running, f"retired nodes {running} are still running\n{log_tails(sb)}"


async def _grow_and_shrink(
    workspace: Path, grow_to: int, shrink_to: int, *, retire_primary: bool
) -> None:
    sb = await asyncio.to_thread(start_sandbox, make_sandbox(workspace, nodes=1))
    writer = Writer(sb)
    task = None
    try:
        service_pem = sb.service_cert_path.read_text()
        task = asyncio.get_running_loop().create_task(writer.run())
        while len(writer.confirmed) < 5:
            await asyncio.sleep(0.05)
        early_key = min(writer.confirmed)

        for _ in range(grow_to - 1):
            node = await sb.add_node()
            # add_node returns once the new node serves as part of the network.
            assert await serving_now(sb, node), log_tails(sb)
        async with sb.client(sb.nodes[0]) as c:
            trusted = [n for n in await c.nodes() if n["status"] == "Trusted"]
        assert len(trusted) == grow_to, trusted

        to_retire = []
        for _ in range(grow_to - shrink_to):
            p = await primary_index(sb)
            live = [n for n in sb.nodes if alive(n)]
            node = sb.nodes[p] if retire_primary else [n for n in live if n.index != p][-1]
            to_retire.append(node)
            writer.retired.add(node.index)
            await _retire(sb, node, writer.targets())
            await primary_index(sb, exclude=node.index)
        remaining = writer.targets()
        assert len(remaining) == shrink_to

        before_stop = len(writer.confirmed)
        deadline = time.monotonic() + 20
        while len(writer.confirmed) < before_stop + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        writer.stop.set()
        await task
        task = None
        await asyncio.sleep(1.0)  # let the last confirmations land

        assert len(writer.confirmed) > before_stop, "no write committed after the shrink"
        assert len(writer.confirmed) >= 0.8 * len(writer.written), (
            len(writer.confirmed),
            len(writer.written),
            writer.errors,
        )
        last_key = max(writer.confirmed)
        last_seqno = writer.written[last_key][1].seqno
        for node in remaining:
            await wait_committed_on(sb, node, last_seqno)
            async with sb.client(node, user=0) as c:
                for key in sorted(writer.confirmed):
                    _, txid = writer.written[key]
                    assert await c.tx_status(txid) == "Committed", (key, str(txid))
            for key in sorted(writer.confirmed)[:: max(1, len(writer.confirmed) // 25)]:
                assert await read(sb, node, key) == writer.written[key][0], (node.index, key)
        async with sb.client(remaining[0], user=0) as c:
            for key in (early_key, last_key):
                receipt = await c.receipt(writer.written[key][1])
                check_receipt_with_ccf(receipt, service_pem)
        async with sb.client(remaining[0]) as c:
            statuses = {n["node_id"]: n["status"] for n in await c.nodes()}
        for node in to_retire:
            assert statuses.get(node.node_id) == "Retired", statuses
        # Last, as it is the one promise here about the removed nodes themselves.
        await _wait_stopped(sb, to_retire)
    finally:
        writer.stop.set()
        for confirmer in list(writer.confirmers):
            confirmer.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        sb.stop()


async def test_network_grows_to_three_and_shrinks_to_two_retiring_a_backup_without_loss(
    tmp_path: Path,
) -> None:
    await _grow_and_shrink(tmp_path / "sb", grow_to=3, shrink_to=2, retire_primary=False)


async def test_network_grows_to_five_and_shrinks_to_three_retiring_the_primary_without_loss(
    tmp_path: Path,
) -> None:
    await _grow_and_shrink(tmp_path / "sb", grow_to=5, shrink_to=3, retire_primary=True)
