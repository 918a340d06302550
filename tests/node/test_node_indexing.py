"""The node feeds the app's indexes (in-process, driven as `enclave_app.main` drives it): at
commit on a running node, and while it replays its own ledger after a restart."""

from __future__ import annotations

from pathlib import Path

from charter.enclave_app import interface as itf
from charter.enclave_app.indexing import SeqnosByKeyIndex
from charter.enclave_app.kv import STR, U64
from charter.enclave_app.node import Node
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.samples.logging import PRIVATE_BY_ID, PRIVATE_RECORDS
from charter.enclave_app.startup import initial_members, load_app
from charter.ledger import certs


def _config(tmp: Path) -> itf.NodeConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    cert = tmp / "member0_cert.pem"
    cert.write_text(certs.cert_pem(certs.identity_cert(certs.new_key(), "member0")))
    return itf.NodeConfig.model_validate(
        {"workspace": str(tmp), "start": {"mode": "start", "members": [{"cert": str(cert)}]}}
    )


def _drain(node: Node, entries: dict[int, bytes]) -> bytes:
    """Act as the host: keep ledger writes, report them durable; the last sealed blob."""
    sealed = b""
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.WriteEntries):
                entries.update(frame.entries)
                node.durable(frame.entries[-1][0])
            elif isinstance(frame, itf.StoreSealed):
                sealed = frame.blob
    return sealed


def _index(node: Node) -> SeqnosByKeyIndex:
    index = node.index(PRIVATE_BY_ID.name)
    assert isinstance(index, SeqnosByKeyIndex)
    return index


def test_a_restarted_node_indexes_what_it_had_committed_while_it_replays(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    node = Node(config, VirtualPlatform(tmp_path), load_app(config.app))
    node.start_new_network(initial_members(config), None)
    entries: dict[int, bytes] = {}
    _drain(node, entries)
    replication = node.replication
    assert replication is not None
    written: list[int] = []
    for n in range(1_000):
        tx = node.store.begin()
        tx.view(PRIVATE_RECORDS, U64, STR).put(n % 4, f"m{n}")
        _, seqno = replication.commit_tx(tx)
        if n % 4 == 1:
            written.append(seqno)
        if n % 50 == 49:
            _drain(node, entries)
    _drain(node, entries)
    node.seal_progress()
    sealed = _drain(node, entries)
    committed = node.commit_seqno
    assert _index(node).get_write_txs_in_range(1, 1, committed) == written

    restarted = Node(config, VirtualPlatform(tmp_path), load_app(config.app))
    restarted.resume(sealed)
    index = _index(restarted)
    for seqno in sorted(entries):
        restarted.replay(entries[seqno])
    # Before Raft runs again: what the sealed state says was committed is indexed, and
    # nothing waits pending for it.
    assert index.indexed_to == committed
    assert len(restarted.core.indexer._pending) == 0
    assert index.get_write_txs_in_range(1, 1, committed) == written
    restarted.resumed()
    _drain(restarted, entries)
    assert index.get_write_txs_in_range(1, 1, committed) == written
