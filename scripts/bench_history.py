#!/usr/bin/env python3
"""Historical queries benchmark: receipts of old transactions (cold and warm cache) and range
queries, next to the in-memory receipt rate, on one sandbox node.

    .venv/bin/python scripts/bench_history.py [--transactions 20000] [--receipts 300]
        [--range 10000] [--clients 8] [--writers 24] [--cache-limit-bytes N]
        [--chunk-bytes 5000000] [--workspace DIR] [--out FILE]

It starts a one-node sandbox whose in-memory receipt window is small
(`memory.receipt_transactions` = 1,000), writes --transactions private records with
--writers concurrent clients, then measures with --clients concurrent clients:

- in_memory_receipts_per_s: `/node/receipt` for random seqnos inside the in-memory window;
- historical_receipts_per_s.cold: `/node/receipt` for --receipts random old seqnos (outside
  the window, never read before): each is read back from the ledger files by the host,
  checked against the signature after it and cached; the client asks again 5 ms after a
  `202` (the node says `Retry-After: 1`; a real client waits that long, the benchmark
  measures the node);
- historical_receipts_per_s.warm: the same seqnos again, now cached;
- range_query_tx_per_s: seqnos per second through the logging sample's
  `/app/log/private/historical/range` over --range old seqnos never read before, for one id
  the fill wrote about every 97th transaction (the index names its writes; only those are
  read back), following `@nextLink` pages, asking again 5 ms after each `202`;
- index_lookup_us: the median time of one `/app/log/private/index` page (a random id of the
  fill, from where the node's index starts), over HTTP from one client: the index answers
  from its buckets without reading the ledger.

--chunk-bytes is the node's `ledger_chunk_bytes`: the host reads a whole chunk file to answer
a read, so cold rates depend on it.

The last line of stdout is one JSON object (also written to --out). Everything is bounded
(clients, counts, waits: 120 s per request) and only 127.0.0.1 is used; the node it starts is
stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from charter.identity import TxId
from charter.sandbox import Sandbox
from charter.sdk import CharterClient, Response

RECEIPTS_IN_MEMORY = 1_000
RETRY_S = 0.005
REQUEST_DEADLINE_S = 120.0
SEED = 15
FILL_IDS = 97  # the fill writes id i % FILL_IDS
RANGE_ID = 5
INDEX_LOOKUPS = 200


async def poll(c: CharterClient, path: str, params: dict[str, str]) -> Response:
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    while True:
        r = await c.get(path, params=params)
        if r.status != 202:
            if r.status != 200:
                raise RuntimeError(f"{path} {params} answered {r.status}: {r.body!r}")
            return r
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} {params} still 202 after {REQUEST_DEADLINE_S}s")
        await asyncio.sleep(RETRY_S)


async def fill(sb: Sandbox, transactions: int, writers: int) -> TxId:
    counter = iter(range(transactions))
    last: list[TxId] = []

    async def writer() -> None:
        async with sb.client(sb.nodes[0], user=0) as c:
            for i in counter:
                r = c.check(
                    await c.post("/app/log/private", json={"id": i % FILL_IDS, "msg": f"m{i}"})
                )
                assert r.txid is not None
                last.append(r.txid)

    await asyncio.gather(*(writer() for _ in range(writers)))
    top = max(last, key=lambda t: t.seqno)
    async with sb.client(sb.nodes[0]) as c:
        await c.wait_for_commit(top, timeout_s=REQUEST_DEADLINE_S)
    return top


async def receipts_per_s(sb: Sandbox, view: int, seqnos: list[int], clients: int) -> float:
    queue = list(seqnos)

    async def worker() -> None:
        async with sb.client(sb.nodes[0]) as c:
            while queue:
                seqno = queue.pop()
                await poll(c, "/node/receipt", {"transaction_id": f"{view}.{seqno}"})

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(seqnos) / (time.perf_counter() - start)


async def range_tx_per_s(sb: Sandbox, lo: int, hi: int) -> float:
    params = {"id": str(RANGE_ID), "from_seqno": str(lo), "to_seqno": str(hi)}
    path = "/app/log/private/historical/range"
    start = time.perf_counter()
    async with sb.client(sb.nodes[0], user=0) as c:
        while True:
            r = await poll(c, path, params)
            link = r.body.get("@nextLink")
            if not link:
                break
            path, _, query = link.partition("?")
            params = dict(part.split("=", 1) for part in query.split("&"))
    return (hi - lo + 1) / (time.perf_counter() - start)


async def index_lookup_us(sb: Sandbox, rng: random.Random) -> float:
    took = []
    async with sb.client(sb.nodes[0], user=0) as c:
        for _ in range(INDEX_LOOKUPS):
            params = {"id": str(rng.randrange(FILL_IDS))}
            start = time.perf_counter()
            await poll(c, "/app/log/private/index", params)
            took.append(time.perf_counter() - start)
    return statistics.median(took) * 1e6


async def run(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    def configure(i: int, config: dict[str, Any]) -> None:
        config["memory"] = {"raft_log_entries": 5_000, "receipt_transactions": RECEIPTS_IN_MEMORY}
        config["historical_cache_soft_limit"] = args.cache_limit_bytes

    sb = Sandbox(
        workspace / "sb",
        nodes=1,
        signature_delay_ms=20,
        ledger_chunk_bytes=args.chunk_bytes,
        configure_node=configure,
    )
    try:
        await sb.start()
        top = await fill(sb, args.transactions, args.writers)
        rng = random.Random(SEED)
        commit = top.seqno
        # Old: outside the in-memory window (it holds at most twice RECEIPTS_IN_MEMORY).
        old_end = commit - 2 * RECEIPTS_IN_MEMORY - 10
        range_lo = max(1, old_end - args.range)
        assert range_lo > 10, "more --transactions are needed for this --range"
        old = rng.sample(range(2, range_lo), min(args.receipts, range_lo - 2))
        recent = [rng.randrange(commit - RECEIPTS_IN_MEMORY + 1, commit) for _ in range(len(old))]
        in_memory = await receipts_per_s(sb, top.view, recent, args.clients)
        cold = await receipts_per_s(sb, top.view, old, args.clients)
        warm = await receipts_per_s(sb, top.view, old, args.clients)
        ranged = await range_tx_per_s(sb, range_lo, old_end)
        lookup = await index_lookup_us(sb, rng)
    finally:
        sb.stop()
    return {
        "transactions": commit,
        "clients": args.clients,
        "receipts_sampled": len(old),
        "range_seqnos": old_end - range_lo + 1,
        "historical_cache_soft_limit": args.cache_limit_bytes,
        "ledger_chunk_bytes": args.chunk_bytes,
        "in_memory_receipts_per_s": round(in_memory, 1),
        "historical_receipts_per_s": {"cold": round(cold, 1), "warm": round(warm, 1)},
        "range_query_tx_per_s": round(ranged, 1),
        "index_lookup_us": round(lookup, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--receipts", type=int, default=300)
    parser.add_argument("--range", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8, choices=range(1, 65))
    parser.add_argument("--writers", type=int, default=24, choices=range(1, 129))
    parser.add_argument("--cache-limit-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--chunk-bytes", type=int, default=5_000_000)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1_000 <= args.transactions <= 2_000_000:
        parser.error("--transactions is 1,000..2,000,000")
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        workspace = args.workspace or Path(tmp)
        result = asyncio.run(run(args, workspace))
    line = json.dumps(result, sort_keys=True)
    if args.out is not None:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
