#!/usr/bin/env python3
"""Indexing benchmark: what feeding an index costs the write path, and how fast a lookup is.

Run from the repository root:  .venv/bin/python scripts/bench_index.py [--quick]

Two in-process nodes (the enclave's `Node`, driven as the runtime drives it, no sockets):
one serves an app with no index, one an app with `SeqnosByKey("records")`. Each round
commits the same writes on both, alternately (so load from other processes on a shared
machine falls on both alike): `Replication.commit_tx` per write, then `settle` and the host's
durability reports in batches of 100, as the runtime does once per loop turn. Commit advances
at every signature, and with it the indexer. The figure is the best round of each, in CPU
time of the process (so writes/s are per CPU-second of the enclave's work).

Lookups: `get_write_txs_in_range` for one of 10 ids over one page of buckets held in memory
(the median of many), and over 10,000 seqnos.

Prints a readable table, then as its LAST line one JSON object with every figure:
`writes_per_s_without_index`, `writes_per_s_with_index`, `index_feed_cost_pct`,
`index_feed_us_per_write` (the indexer alone: hooks and feeding, measured on a bare `Store`
against the same writes without it), `commit_path_us_per_write` (the node without index),
`index_lookup_us` (one page, 2 buckets of 1,024 seqnos), `index_lookup_10k_seqnos_us`.
With the default `indexing.buckets_in_memory` (64), a full run (140,000 writes on each node)
also seals buckets for the host, so that cost is in the figure; the frames to the host are
dropped here (the host's disk write is not on the enclave's path).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from charter.enclave_app import interface as itf  # noqa: E402
from charter.enclave_app.app import App  # noqa: E402
from charter.enclave_app.indexing import Indexer, SeqnosByKey, SeqnosByKeyIndex  # noqa: E402
from charter.enclave_app.kv import U64, Store  # noqa: E402
from charter.enclave_app.node import Node  # noqa: E402
from charter.enclave_app.platform import VirtualPlatform  # noqa: E402
from charter.enclave_app.startup import initial_members  # noqa: E402
from charter.ledger import certs  # noqa: E402

IDS = 10
BATCH = 100


def make_node(directory: Path, app: App) -> Node:
    directory.mkdir(parents=True)
    cert = directory / "member0_cert.pem"
    cert.write_text(certs.cert_pem(certs.identity_cert(certs.new_key(), "member0")))
    config = itf.NodeConfig.model_validate(
        {"workspace": str(directory), "start": {"mode": "start", "members": [{"cert": str(cert)}]}}
    )
    node = Node(config, VirtualPlatform(directory), app)
    node.start_new_network(initial_members(config), None)
    drain(node)
    return node


def drain(node: Node) -> None:
    """What the host does: take the frames, report every ledger write durable."""
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.WriteEntries):
                node.durable(frame.entries[-1][0])


def write_round(node: Node, writes: int, start: int) -> float:
    replication = node.replication
    assert replication is not None
    store = node.store
    # CPU time of this process: other processes on a shared machine do not count.
    began = time.process_time()
    for n in range(start, start + writes):
        tx = store.begin()
        tx.view("records", U64, U64).put(n % IDS, n)
        replication.commit_tx(tx)
        if n % BATCH == BATCH - 1:
            drain(node)
    drain(node)
    return time.process_time() - began


def feed_us_per_write(writes: int, repeats: int) -> float:
    """The indexer's own cost per write, isolated: the same write sets applied to a bare
    `Store` and to one feeding an `Indexer` (hooks, pending list, feed at each commit of
    `BATCH`); the best difference, in microseconds per write."""
    strategy = SeqnosByKey("records", key_codec=U64, seqnos_per_bucket=1024)
    write_sets = [{"records": {U64.encode(n % IDS): b"v"}} for n in range(writes)]

    def run(indexed: bool) -> float:
        store = Store()
        indexer = Indexer(
            [strategy] if indexed else [],
            store=store,
            buckets_in_memory=64,
            key=lambda: bytes(32),
            send=lambda frame: None,
        )
        gc.collect()
        began = time.process_time()
        for seqno, write_set in enumerate(write_sets, start=1):
            store.apply(write_set, seqno)  # type: ignore[arg-type]
            if seqno % BATCH == 0:
                store.compact(seqno)  # as the node does at commit
                indexer.committed(seqno)
        return time.process_time() - began

    best_without = best_with = float("inf")
    for _ in range(repeats):
        best_without = min(best_without, run(False))
        best_with = min(best_with, run(True))
    return (best_with - best_without) / writes * 1e6


def lookup_us(index: SeqnosByKeyIndex, from_seqno: int, to_seqno: int, repeats: int) -> float:
    times = []
    for n in range(repeats):
        began = time.perf_counter_ns()
        index.get_write_txs_in_range(n % IDS, from_seqno, to_seqno)
        times.append(time.perf_counter_ns() - began)
    return statistics.median(times) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    args = parser.parse_args()
    rounds, writes = (3, 5_000) if args.quick else (7, 20_000)

    plain = App("bench-plain")
    indexed = App("bench-indexed")
    strategy = indexed.install_index(SeqnosByKey("records", key_codec=U64, seqnos_per_bucket=1024))
    with tempfile.TemporaryDirectory() as tmp:
        without = make_node(Path(tmp) / "plain", plain)
        with_index = make_node(Path(tmp) / "indexed", indexed)
        best_without = best_with = float("inf")
        for r in range(rounds):
            best_without = min(best_without, write_round(without, writes, r * writes))
            best_with = min(best_with, write_round(with_index, writes, r * writes))
        index = with_index.index(strategy.name)
        assert isinstance(index, SeqnosByKeyIndex)
        last = index.indexed_to
        assert last >= rounds * writes, (last, rounds * writes)
        page_from = (last // 1024 - 2) * 1024
        # A sanity check of the answer: ascending seqnos, about one in IDS of the page.
        found = index.get_write_txs_in_range(3, page_from, page_from + 2047)
        assert len(found) > 2048 // IDS // 2, len(found)
        assert all(b > a for a, b in itertools.pairwise(found))
        one_page = lookup_us(index, page_from, page_from + 2047, 2_000)
        wide_from = last - 9_999
        wide = lookup_us(index, wide_from, last, 200) if index.page_end(wide_from) >= last else None
    feed_us = feed_us_per_write(writes * 2, rounds)

    results: dict[str, Any] = {
        "writes": writes,
        "rounds": rounds,
        "writes_per_s_without_index": round(writes / best_without),
        "writes_per_s_with_index": round(writes / best_with),
        "index_feed_cost_pct": round(100 * (best_with / best_without - 1), 1),
        "index_feed_us_per_write": round(feed_us, 2),
        "commit_path_us_per_write": round(best_without / writes * 1e6, 1),
        "index_lookup_us": round(one_page, 1),
        "index_lookup_10k_seqnos_us": None if wide is None else round(wide, 1),
        "buckets_in_memory": index.buckets_in_memory,
    }
    for name, value in results.items():
        print(f"  {name:<30} {value}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
