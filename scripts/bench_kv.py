#!/usr/bin/env python3
"""Key-value store benchmark: what one transaction costs, and how fast a snapshot is taken
and restored.

Run from the repository root:  .venv/bin/python scripts/bench_kv.py [--quick]

Transactions: each is `begin`, one `get`, one `put` of a new key, `commit` at the next
version, as the node runs a write. Its baseline, measured alternately in the same run, is
the same get and set on a plain dict, with each key's version in a second dict: what the store adds over
Python's own mapping is the figure that carries over from one machine to another.

Snapshots: `snapshot()` and `restore()` of a store of 100,000 keys (10,000 with `--quick`);
their baseline is `msgpack.packb` / `unpackb` of the same keys and values as one map.

Every time is CPU time of this process, best of the rounds, so that other processes on a
shared machine distort it less. Prints a readable table, then as its LAST line one JSON
object: `tx_us`, `dict_tx_us`, `tx_vs_dict_ratio`, `snapshot_s`, `restore_s`,
`snapshot_vs_msgpack_ratio`, `restore_vs_msgpack_ratio`, `snapshot_keys`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from charter.enclave_app.kv import Store  # noqa: E402


def cpu_seconds(fn: Callable[[], object]) -> float:
    gc.collect()
    started = time.process_time()
    fn()
    return time.process_time() - started


def store_transactions(keys: list[bytes]) -> Callable[[], object]:
    def run() -> None:
        store = Store()
        for key in keys:
            tx = store.begin()
            tx.get("m", key)
            tx.put("m", key, b"value")
            store.commit(tx, store.version + 1)

    return run


def dict_transactions(keys: list[bytes]) -> Callable[[], object]:
    def run() -> None:
        table: dict[bytes, bytes] = {}
        versions: dict[bytes, int] = {}
        for version, key in enumerate(keys, 1):
            table.get(key)
            table[key] = b"value"
            versions[key] = version

    return run


def filled_store(count: int) -> Store:
    store = Store()
    writes: dict[bytes, bytes | None] = {
        i.to_bytes(8, "little"): b"value-%d" % i for i in range(count)
    }
    store.apply({"records": writes}, 1)
    return store


def run(transactions: int, snapshot_keys: int, rounds: int) -> dict[str, Any]:
    keys = [i.to_bytes(8, "little") for i in range(transactions)]
    tx_s = dict_s = float("inf")
    for _ in range(rounds):  # alternate, so that load from elsewhere falls on both sides
        tx_s = min(tx_s, cpu_seconds(store_transactions(keys)))
        dict_s = min(dict_s, cpu_seconds(dict_transactions(keys)))

    store = filled_store(snapshot_keys)
    plain = {i.to_bytes(8, "little"): b"value-%d" % i for i in range(snapshot_keys)}
    packed = msgpack.packb(plain)
    public, private = store.snapshot()
    snapshot_s = restore_s = pack_s = unpack_s = float("inf")
    for _ in range(rounds):
        snapshot_s = min(snapshot_s, cpu_seconds(store.snapshot))
        pack_s = min(pack_s, cpu_seconds(lambda: msgpack.packb(plain)))
        restore_s = min(restore_s, cpu_seconds(lambda: Store().restore(public, private, seqno=1)))
        unpack_s = min(unpack_s, cpu_seconds(lambda: msgpack.unpackb(packed)))
    restored = Store()
    restored.restore(public, private, seqno=1)
    last = (snapshot_keys - 1).to_bytes(8, "little")
    if restored.begin().get("records", last) != b"value-%d" % (snapshot_keys - 1):
        raise SystemExit("the restored store lacks the snapshot's last key")
    return {
        "transactions": transactions,
        "tx_us": round(tx_s / transactions * 1e6, 3),
        "dict_tx_us": round(dict_s / transactions * 1e6, 3),
        "tx_vs_dict_ratio": round(tx_s / dict_s, 2),
        "snapshot_keys": snapshot_keys,
        "snapshot_s": round(snapshot_s, 4),
        "restore_s": round(restore_s, 4),
        "snapshot_vs_msgpack_ratio": round(snapshot_s / pack_s, 2),
        "restore_vs_msgpack_ratio": round(restore_s / unpack_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, smaller sizes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    transactions = 5_000 if args.quick else 50_000
    snapshot_keys = 10_000 if args.quick else 100_000
    figures = run(transactions, snapshot_keys, args.rounds)
    print(f"{'transaction (begin, get, put, commit)':42} {figures['tx_us']:>9.2f} us")
    print(f"{'  the same on a plain dict':42} {figures['dict_tx_us']:>9.2f} us")
    print(f"{'  ratio':42} {figures['tx_vs_dict_ratio']:>9.2f} x")
    print(f"{f'snapshot of {snapshot_keys:,} keys':42} {figures['snapshot_s']:>9.4f} s")
    print(
        f"{'  vs msgpack.packb of the same map':42} {figures['snapshot_vs_msgpack_ratio']:>9.2f} x"
    )
    print(f"{f'restore of {snapshot_keys:,} keys':42} {figures['restore_s']:>9.4f} s")
    print(f"{'  vs msgpack.unpackb':42} {figures['restore_vs_msgpack_ratio']:>9.2f} x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
