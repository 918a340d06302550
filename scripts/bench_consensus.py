#!/usr/bin/env python3
"""Benchmark the consensus core: an in-process 3-node cluster on the test network with zero
delay, committing small entries proposed in batches (every batch ends with a signature).

Prints a human summary, then as its last line one JSON object with at least `entries_per_s`
(committed entries per second of wall time, cluster and harness included; also
`entries_per_s_cpu`, per second of this process's CPU time, which other load on a shared
machine does not distort) and
`us_per_entry` (time spent inside the Raft objects of all three nodes, per entry: the cost
of the core on its own).

    .venv/bin/python scripts/bench_consensus.py [--entries 300000] [--batch 1000] [--codec]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "consensus"))

from consensus_cluster import Cluster  # noqa: E402

from charter.consensus import Message, RaftConfig, Role, decode_message, encode_message  # noqa: E402

logger = logging.getLogger("bench_consensus")


class CoreClock:
    """Accumulates the CPU time spent inside Raft methods (CPU time, so that other processes
    on a shared machine do not inflate it)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - t0

        return timed


def run(entries: int, batch: int, entry_bytes: int, codec: bool) -> dict[str, Any]:
    config = RaftConfig(
        election_timeout_min_ms=1000,
        election_timeout_max_ms=2000,
        heartbeat_interval_ms=100,
        max_batch_entries=batch,
        max_batch_bytes=4 << 20,
        max_inflight_bytes=16 << 20,
    )
    cluster = Cluster(["a", "b", "c"], config=config)
    primary = cluster.elect("a")
    assert primary.role is Role.PRIMARY
    clocks = {node: CoreClock() for node in cluster.nodes}
    for node, raft in cluster.nodes.items():
        for name in ("step", "ready", "has_ready", "durable"):
            setattr(raft, name, clocks[node].wrap(getattr(raft, name)))
    clock = clocks["a"]
    if codec:
        # Every message crosses the wire format, as it would between enclaves.
        wire_bytes = [0]

        def through_codec(msg: Message) -> Message:
            frame = encode_message(msg)
            wire_bytes[0] += len(frame)
            return decode_message(frame)

        cluster.wire = through_codec
    payload = bytes(entry_bytes)
    propose = primary.propose
    start_index = primary.last_index
    batches = max(1, entries // batch)
    gc.collect()
    gc.disable()  # the collector's pauses are not the core's cost
    try:
        t_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(batches):
            t0 = time.process_time()
            for _ in range(batch - 1):
                propose(payload, signature=False)
            propose(b"signature", signature=True)
            clock.seconds += time.process_time() - t0
            cluster.process("a")
            cluster.deliver()
        elapsed_s = time.perf_counter() - t_start
        cpu_s = time.process_time() - cpu_start
    finally:
        gc.enable()
    committed = primary.commit_index - start_index
    assert committed == batches * batch, (committed, batches * batch)
    for node in ("b", "c"):
        assert cluster.nodes[node].last_index == primary.last_index
    return {
        "entries": committed,
        "batch": batch,
        "entry_bytes": entry_bytes,
        "codec": codec,
        "elapsed_s": round(elapsed_s, 3),
        "cpu_s": round(cpu_s, 3),
        "entries_per_s": round(committed / elapsed_s),
        "entries_per_s_cpu": round(committed / cpu_s),
        "us_per_entry": round(sum(c.seconds for c in clocks.values()) / committed * 1e6, 3),
        "us_per_entry_primary": round(clocks["a"].seconds / committed * 1e6, 3),
        "us_per_entry_backup": round(clocks["b"].seconds / committed * 1e6, 3),
        "us_per_entry_with_harness": round(cpu_s / committed * 1e6, 3),
        "messages": cluster.delivered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--entry-bytes", type=int, default=32)
    parser.add_argument("--codec", action="store_true", help="encode/decode every message")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    args = parser.parse_args()
    logging.getLogger("consensus").setLevel(logging.WARNING)
    results = [
        run(args.entries, args.batch, args.entry_bytes, args.codec) for _ in range(args.repeat)
    ]
    best = max(results, key=lambda r: r["entries_per_s"])
    print(
        f"3-node cluster, {best['entries']} entries of {args.entry_bytes} B in batches of "
        f"{args.batch}{' through the msgpack codec' if args.codec else ''}:"
    )
    print(
        f"  committed {best['entries_per_s']:,} entries/s of wall time, "
        f"{best['entries_per_s_cpu']:,} per CPU second (best of {args.repeat}); "
        f"core {best['us_per_entry']} us/entry over all three nodes "
        f"(primary {best['us_per_entry_primary']}, each backup {best['us_per_entry_backup']}), "
        f"{best['us_per_entry_with_harness']} us/entry with the test harness"
    )
    print(json.dumps(best))


if __name__ == "__main__":
    main()
