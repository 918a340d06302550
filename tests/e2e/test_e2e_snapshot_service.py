"""Snapshots and chunks as an operator sees them (issue 15), on real processes: the
trigger_snapshot and trigger_ledger_chunk proposals, backups that take and serve the same
snapshots as the primary, the download endpoints (403 unless enabled on the interface, the
exact file bytes when enabled), a joiner that starts from a backup's snapshot, and a joiner
that refuses a snapshot whose digest was forged."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    log_tails,
    log_text,
    make_sandbox,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.ledger.chunks import parse_chunk_name
from charter.ledger.snapshot import decode_snapshot, parse_snapshot_file_name, verify_snapshot
from charter.sandbox import NodeProcess, Sandbox, SandboxError

pytestmark = pytest.mark.e2e

WAIT_S = 30.0
FEATURES = ["SnapshotRead", "LedgerChunkRead"]


def _configure(features_on: Callable[[int], bool]) -> Callable[[int, dict[str, Any]], None]:
    def configure(i: int, config: dict[str, Any]) -> None:
        # Large chunks and a far snapshot interval: only the proposals cut or snapshot.
        config["ledger_chunk_bytes"] = 5_000_000
        config["snapshots"] = {"tx_count": 100_000}
        if features_on(i):
            config["rpc_interface"]["enabled_operator_features"] = FEATURES
        else:
            # Nodes that join later read what came before them from node 0's ledger (as an
            # operator would from an archive), never writing there.
            sandbox = Path(config["workspace"]).parent.parent
            config["ledger_read_only_dirs"] = [str(sandbox / "node0" / "workspace" / "ledger")]
            # They join through the backup, fetching its snapshot (CCF's fetch_recent_snapshot).
            backup = json.loads((sandbox / "node1" / "node.json").read_text())
            config["start"]["join"]["target"] = backup["rpc_address"]
            config["start"]["join"]["fetch_recent_snapshot"] = True

    return configure


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # Nodes 0 and 1 serve downloads; nodes added later (joiners) do not.
    sb = make_sandbox(
        tmp_path_factory.mktemp("e2e-snapservice") / "sb", 2, _configure(lambda i: i < 2)
    )
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


def _ledger_dir(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "ledger"


def _snapshots_dir(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "snapshots"


def _committed_chunks(node: NodeProcess) -> list[str]:
    names = [p.name for p in _ledger_dir(node).iterdir() if p.name.endswith(".committed")]
    return sorted(names, key=lambda n: parse_chunk_name(n).first)


def _committed_snapshots(node: NodeProcess) -> list[str]:
    names = [p.name for p in _snapshots_dir(node).iterdir() if p.name.endswith(".committed")]
    return sorted(names, key=lambda n: (parse_snapshot_file_name(n) or (0,))[0])


async def _until(what: str, check: Callable[[], bool], sb: Sandbox) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {WAIT_S}s\n{log_tails(sb)}"
        await asyncio.sleep(0.1)


async def _propose(sb: Sandbox, action: str) -> None:
    async with sb.client() as c:
        await sb.pass_proposal(c, [{"name": action, "args": {}}])


async def _triggered_snapshot(sb: Sandbox) -> str:
    """Writes, then trigger_snapshot; the name of the snapshot both nodes committed."""
    txids = [await write(sb, sb.nodes[0], 500 + i, f"before {i}") for i in range(20)]
    for node in sb.nodes:
        await wait_committed_on(sb, node, txids[-1].seqno)
    await _propose(sb, "trigger_snapshot")
    await _until(
        "a committed snapshot on every node",
        lambda: all(_committed_snapshots(n) for n in sb.nodes),
        sb,
    )
    name = _committed_snapshots(sb.nodes[0])[-1]
    await _until(
        "the same snapshot on the backup", lambda: name in _committed_snapshots(sb.nodes[1]), sb
    )
    return name


async def test_trigger_ledger_chunk_and_trigger_snapshot_cut_a_chunk_and_snapshot_on_every_node(
    net: Sandbox,
) -> None:
    primary, backup = net.nodes
    txid = await write(net, primary, 1, "one")
    await wait_committed_on(net, backup, txid.seqno)
    # 5 MB chunks: nothing is complete yet, and no snapshot is due for 100,000 seqnos.
    assert _committed_chunks(primary) == [] and _committed_snapshots(primary) == []

    await _propose(net, "trigger_ledger_chunk")
    after = await write(net, primary, 2, "two")  # the boundary's signature commits with it
    await _until(
        "a committed chunk on every node", lambda: all(_committed_chunks(n) for n in net.nodes), net
    )
    first = _committed_chunks(primary)[0]
    assert first in _committed_chunks(backup)  # the flag is in the entry: same seqno everywhere
    boundary = parse_chunk_name(first).last
    assert boundary is not None and boundary <= after.seqno + 1, (first, after)
    assert "event=ledger_chunk_triggered" in log_text(primary)

    name = await _triggered_snapshot(net)
    service_pem = net.service_cert_path.read_text()
    on_primary = (_snapshots_dir(primary) / name).read_bytes()
    on_backup = (_snapshots_dir(backup) / name).read_bytes()
    # The backup took its own snapshot, and it is the primary's, byte for byte in its entry.
    assert decode_snapshot(on_backup).entry == decode_snapshot(on_primary).entry
    verify_snapshot(on_backup, service_pem, name=name)
    assert "role=backup" in log_text(backup)


async def test_download_endpoints_serve_exact_file_bytes_and_are_403_where_not_enabled(
    net: Sandbox,
) -> None:
    backup = net.nodes[1]
    await _propose(net, "trigger_ledger_chunk")
    name = await _triggered_snapshot(net)
    chunk = _committed_chunks(backup)[0]
    last = parse_chunk_name(chunk).last
    assert last is not None

    async with net.client(backup) as c:
        latest = await c.get("/node/snapshot")
        assert latest.status == 200, latest
        assert latest.headers["x-ms-ccf-snapshot-name"] == name
        assert latest.body == (_snapshots_dir(backup) / name).read_bytes()
        named = await c.get(f"/node/snapshot/{name}")
        assert named.status == 200 and named.body == latest.body
        # `since`: redirected (308) to the chunk holding that seqno on this node.
        found = await c.get("/node/ledger-chunk", params={"since": str(last)})
        assert found.status == 200, found
        assert found.headers["x-ms-ccf-ledger-chunk-name"] == chunk
        assert found.body == (_ledger_dir(backup) / chunk).read_bytes()
        direct = await c.get(f"/node/ledger-chunk/{chunk}")
        assert direct.status == 200 and direct.body == found.body
        for path, params in [
            ("/node/ledger-chunk", {"since": "999999"}),
            (f"/node/ledger-chunk/{chunk.removesuffix('.committed')}", None),
            ("/node/snapshot/snapshot_1_2.committed", None),
            ("/node/snapshot", {"since": "999999"}),
        ]:
            missing = await c.get(path, params=params)
            assert missing.status == 404, (path, missing)
        bad = await c.get("/node/ledger-chunk")
        assert bad.status == 400 and bad.body["error"]["code"] == "InvalidQueryParameterValue"

    # It joins through the backup and fetches the backup's snapshot; its interface enables
    # no operator feature.
    joiner = await net.add_node()
    await wait_ready(net, joiner)
    seqno = (parse_snapshot_file_name(name) or (0,))[0]
    text = log_text(joiner)
    assert f"event=join_snapshot_found file={name} seqno={seqno}" in text, text[-3000:]
    assert f"event=joining_from_snapshot seqno={seqno}" in text
    async with net.client(joiner) as c:
        for path in (
            "/node/snapshot",
            f"/node/snapshot/{name}",
            "/node/ledger-chunk?since=1",
            f"/node/ledger-chunk/{chunk}",
        ):
            refused = await c.get(path)
            assert refused.status == 403, (path, refused)
            assert refused.body["error"]["code"] == "OperatorFeatureNotEnabled"


def _prepare_joiner(sb: Sandbox, snapshot: Path, content: bytes) -> NodeProcess:
    """A new node whose snapshots directory holds `content` under the snapshot's name."""
    node = sb._node(len(sb.nodes))
    sb.nodes.append(node)
    sb.node_count = len(sb.nodes)
    target = _snapshots_dir(node)
    target.mkdir(parents=True, exist_ok=True)
    (target / snapshot.name).write_bytes(content)
    return node


async def test_a_joiner_starts_from_a_backups_snapshot_and_refuses_one_with_a_forged_digest(
    net: Sandbox,
) -> None:
    primary, backup = net.nodes
    await _propose(net, "trigger_ledger_chunk")  # node 0's first chunk is then committed
    name = await _triggered_snapshot(net)
    seqno = (parse_snapshot_file_name(name) or (0,))[0]
    # The operator downloads the latest snapshot from the backup (not the primary).
    async with net.client(backup) as c:
        downloaded = await c.get("/node/snapshot")
    assert downloaded.status == 200 and downloaded.headers["x-ms-ccf-snapshot-name"] == name
    source = _snapshots_dir(backup) / name

    # A copy whose entry differs in one byte of the public state: its digest is no longer
    # the one the signed evidence records.
    forged = bytearray(downloaded.body)
    forged[len(decode_snapshot(downloaded.body).entry) // 2] ^= 0x01
    refused = _prepare_joiner(net, source, bytes(forged))
    refused.start()
    with pytest.raises(SandboxError):
        await asyncio.to_thread(refused.wait_started)
    reason = refused.fatal_reason() or ""
    assert f"refusing the snapshot {name}" in reason, (reason, log_text(refused)[-3000:])
    assert "claims digest" in reason, reason
    net.nodes.remove(refused)
    net.node_count = len(net.nodes)
    shutil.rmtree(refused.directory)

    joiner = _prepare_joiner(net, source, downloaded.body)
    joiner.start()
    await asyncio.to_thread(joiner.wait_started)
    await net.trust_node(joiner.node_id)
    await net.wait_part_of_network(joiner)
    await wait_ready(net, joiner)
    text = log_text(joiner)
    assert f"event=join_snapshot_found file={name} seqno={seqno}" in text, text[-3000:]
    assert f"event=joining_from_snapshot seqno={seqno}" in text
    # Its ledger starts after the snapshot: what came before is in the snapshot's state.
    assert all(parse_chunk_name(p.name).first > seqno for p in _ledger_dir(joiner).iterdir())
    assert await read(net, joiner, 500) == "before 0", log_tails(net)
    # Entries from before the snapshot, which its own ledger never held, come from the
    # read-only directory (the explorer shows them; the tree it started from cannot prove
    # them, and says so).
    async with net.client(joiner, user=0) as c:
        old = await c.get("/node/ledger/entries", params={"from_seqno": "2", "count": "3"})
    assert old.status == 200, old
    assert [e["seqno"] for e in old.body["entries"]] == [2, 3, 4], old.body
    assert not any(e["leaf_checked"] for e in old.body["entries"])
    after = await write(net, primary, 600, "after the join")
    await wait_committed_on(net, joiner, after.seqno)
    assert await read(net, joiner, 600) == "after the join", log_tails(net)
