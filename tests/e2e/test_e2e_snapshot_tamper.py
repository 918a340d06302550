"""A flipped byte in a snapshot file on disk is noticed on real processes (issue 11, item 9):
a node whose ledger is whole refuses the file, naming it, replays its ledger instead and never
serves the changed bytes; a node that joined from a snapshot (its ledger starts after it)
refuses to start on the changed file, naming it, and starts again once the file is restored,
also when it stopped before any entry after that snapshot reached its ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    alive,
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

from charter.ledger.chunks import LedgerReader
from charter.ledger.snapshot import decode_snapshot, parse_snapshot_file_name, verify_snapshot
from charter.sandbox import NodeProcess, Sandbox, SandboxError

pytestmark = pytest.mark.e2e

SNAPSHOT_TX_COUNT = 10
WRITES = 30
SNAPSHOT_WAIT_S = 30.0


def _configure(i: int, config: dict[str, Any]) -> None:
    config["snapshots"] = {"tx_count": SNAPSHOT_TX_COUNT}
    config["enabled_operator_features"] = ["SnapshotRead"]


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(
        make_sandbox(tmp_path_factory.mktemp("e2e-snaptamper") / "sb", 1, _configure)
    )
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, FaultyRelay]]:
    """One node whose node-to-node traffic (and that of nodes added later) goes through a
    relay the test can cut."""
    relay = FaultyRelay()

    def configure(i: int, config: dict[str, Any]) -> None:
        _configure(i, config)
        config["published_node_to_node_address"] = relay.add_node(
            str(i), config["node_to_node_address"]
        )

    try:
        sb = start_sandbox(
            make_sandbox(tmp_path_factory.mktemp("e2e-snaptamper-relay") / "sb", 1, configure)
        )
        try:
            yield sb, relay
        finally:
            sb.stop()
    finally:
        relay.close()


def _snapshots_dir(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "snapshots"


def _latest_committed(node: NodeProcess) -> Path | None:
    found = [p for p in _snapshots_dir(node).iterdir() if p.name.endswith(".committed")]
    return max(found, key=lambda p: (parse_snapshot_file_name(p.name) or (0,))[0], default=None)


async def _wait_committed_snapshot(node: NodeProcess) -> None:
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while _latest_committed(node) is None:
        assert time.monotonic() < deadline, f"no committed snapshot in {_snapshots_dir(node)}"
        await asyncio.sleep(0.1)


def _stop_and_pick_snapshot(node: NodeProcess) -> Path:
    """Stop the node, then the file it will read on restart: the latest committed one (the
    primary may commit another snapshot until it stops)."""
    node.stop()
    path = _latest_committed(node)
    assert path is not None
    return path


def _flip(path: Path, offset: Callable[[bytes], int]) -> bytes:
    """Flip one bit of the file at `offset(data)`; returns the original bytes."""
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[offset(original)] ^= 0x01
    path.write_bytes(bytes(tampered))
    return original


async def _write_until_snapshot(net: Sandbox, node: NodeProcess) -> list[Any]:
    txids = [await write(net, node, 700 + i, f"value {i}") for i in range(WRITES)]
    await wait_committed_on(net, node, txids[-1].seqno)
    return txids


async def test_a_whole_ledger_node_refuses_a_changed_snapshot_replays_and_serves_nothing_changed(
    net: Sandbox,
) -> None:
    node = net.nodes[0]
    await _write_until_snapshot(net, node)
    await _wait_committed_snapshot(node)
    path = _stop_and_pick_snapshot(node)
    # A bit in the middle of the receipt (the evidence's proof or signature).
    _flip(path, lambda d: (len(decode_snapshot(d).entry) + len(d)) // 2)
    tampered = path.read_bytes()

    node.start()
    await asyncio.to_thread(node.wait_started)
    await wait_ready(net, node)
    text = log_text(node)
    assert f"event=snapshot_refused file={path.name}" in text, log_tails(net)
    # The ledger was replayed instead: everything written before is there.
    for i in range(0, WRITES, 5):
        assert await read(net, node, 700 + i) == f"value {i}", log_tails(net)

    service_pem = net.service_cert_path.read_text()
    async with net.client(node) as c:
        response = await c.get("/node/snapshot")
    if response.status == 200:
        # A snapshot taken since the restart: it verifies, and it is not the changed file.
        assert response.body != tampered
        verify_snapshot(response.body, service_pem)
    else:
        assert response.status == 404, response


async def test_a_node_joined_from_a_changed_snapshot_refuses_to_start_naming_the_file(
    net: Sandbox,
) -> None:
    primary = net.nodes[0]
    await _write_until_snapshot(net, primary)
    await _wait_committed_snapshot(primary)
    joiner = await net.add_node()
    await wait_ready(net, joiner)
    await _wait_committed_snapshot(joiner)  # its ledger starts after this snapshot
    path = _stop_and_pick_snapshot(joiner)
    # A bit inside the snapshot entry's public tables (the service's state in clear).
    original = _flip(path, lambda d: len(decode_snapshot(d).entry) // 2)

    joiner.start()
    with pytest.raises(SandboxError) as refused:
        await asyncio.to_thread(joiner.wait_started)
    # The reason this start gave (not some earlier line of the log) names the file.
    reason = joiner.fatal_reason()
    assert reason is not None and reason.startswith("start failed"), (reason, str(refused.value))
    assert f"snapshot {path.name}:" in reason, (reason, log_text(joiner)[-4000:])

    # With the file as the service signed it, the node starts and catches up.
    path.write_bytes(original)
    joiner.start()
    await asyncio.to_thread(joiner.wait_started)
    await wait_ready(net, joiner)
    # The primary lost its quorum while the node was down: wait for an election.
    leader = net.nodes[await primary_index(net)]
    after = await write(net, leader, 1, "after the restart")
    await wait_committed_on(net, joiner, after.seqno)
    assert await read(net, joiner, 1) == "after the restart", log_tails(net)
    assert await read(net, joiner, 700) == "value 0", log_tails(net)


async def test_a_node_stopped_before_any_entry_after_its_join_snapshot_restarts_from_it(
    relayed: tuple[Sandbox, FaultyRelay],
) -> None:
    """Its ledger directory is empty (it keeps files only after the snapshot), yet it had
    committed the snapshot's seqno: the snapshot is its start, not a ledger rolled back."""
    net, relay = relayed
    primary = net.nodes[0]
    await _write_until_snapshot(net, primary)
    await _wait_committed_snapshot(primary)
    # The join answer (HTTPS) carries the snapshot; nothing the primary replicates after it
    # reaches the joiner while this link is cut.
    relay.block("0", "1")
    joiner = await net.add_node()
    await wait_ready(net, joiner)
    await _wait_committed_snapshot(joiner)
    path = _stop_and_pick_snapshot(joiner)
    ledger_dir = joiner.directory / "workspace" / "ledger"
    assert LedgerReader(str(ledger_dir)).chunks == [], list(ledger_dir.iterdir())

    # A changed snapshot is still refused, naming the file: there is no ledger to replay.
    original = _flip(path, lambda d: len(decode_snapshot(d).entry) // 2)
    joiner.start()
    with pytest.raises(SandboxError) as refused:
        await asyncio.to_thread(joiner.wait_started)
    reason = joiner.fatal_reason()
    assert reason is not None and f"snapshot {path.name}:" in reason, str(refused.value)

    path.write_bytes(original)
    joiner.start()
    await asyncio.to_thread(joiner.wait_started)
    await wait_ready(net, joiner)
    assert alive(joiner)
    relay.heal()
    after = await write(net, primary, 2, "after the join snapshot")
    await wait_committed_on(net, joiner, after.seqno)
    assert await read(net, joiner, 2) == "after the join snapshot", log_tails(net)
    assert await read(net, joiner, 700) == "value 0", log_tails(net)
