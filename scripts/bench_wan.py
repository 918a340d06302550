"""What distance costs: throughput and commit latency of a 3-node network whose nodes each run
on their own network namespace behind a WAN profile (tests/netns/netlab.py's `PROFILES`).

    python scripts/bench_wan.py --wan wan [--writes 400] [--concurrency 8]

Needs root (it creates namespaces, a bridge and nftables rules, and removes them on exit).
Prints a line per measurement and ends with one JSON line: {"profile", "description",
"writes", "concurrency", "throughput_tx_s", "commit_latency_ms": {"p50", "p95", "max"},
"election_s", "election_timeout_ms", "heartbeat_ms"}. `scripts/bench.py --wan PROFILE` calls
`main`. Figures are machine-dependent: compare profiles on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "netns"), str(ROOT / "tests" / "e2e")]

from e2e_support import primary_index  # noqa: E402
from netlab import PROFILES, unavailable_reason  # noqa: E402
from wan_net import (  # noqa: E402
    DEFAULT_ELECTION_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_MS,
    WanNet,
    wan_network,
)

LATENCY_SAMPLES = 40
COMMIT_POLL_S = 0.005
COMMIT_BOUND_S = 60.0


async def _commit_latency_ms(net: WanNet, primary: int) -> list[float]:
    """One write at a time: from sending it to the primary reporting it committed."""
    sb = net.sb
    node = sb.nodes[primary]
    samples = []
    async with sb.client(node, user=0) as c, sb.client(node) as watcher:
        for n in range(LATENCY_SAMPLES):
            started = time.monotonic()
            r = c.check(await c.post("/app/log/private", json={"id": n, "msg": f"latency {n}"}))
            assert r.txid is not None
            while (await watcher.commit()).seqno < r.txid.seqno:
                assert time.monotonic() - started < COMMIT_BOUND_S, "a write did not commit"
                await asyncio.sleep(COMMIT_POLL_S)
            samples.append((time.monotonic() - started) * 1000.0)
    return samples


async def _throughput(net: WanNet, primary: int, writes: int, concurrency: int) -> float:
    """Committed writes per second, `concurrency` clients writing to the primary."""
    sb = net.sb
    node = sb.nodes[primary]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(writes):
        queue.put_nowait(n)
    last_seqno = 0

    async def writer() -> None:
        nonlocal last_seqno
        async with sb.client(node, user=0) as c:
            while not queue.empty():
                n = queue.get_nowait()
                r = c.check(await c.post("/app/log/private", json={"id": 1000 + n, "msg": "x"}))
                assert r.txid is not None
                last_seqno = max(last_seqno, r.txid.seqno)

    started = time.monotonic()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    async with sb.client(node) as c:
        while (await c.commit()).seqno < last_seqno:
            assert time.monotonic() - started < COMMIT_BOUND_S * 5, "writes did not commit"
            await asyncio.sleep(COMMIT_POLL_S)
    return writes / (time.monotonic() - started)


async def _election_s(net: WanNet, primary: int) -> float:
    """The primary's machine drops off the network: seconds until the others agree on a new
    primary (the election timeout, plus the votes' round trips)."""
    net.lab.isolate(primary)
    try:
        started = time.monotonic()
        await primary_index(net.sb, 60.0, exclude=primary)
        return time.monotonic() - started
    finally:
        net.lab.heal()


def run(profile_name: str, writes: int, concurrency: int) -> dict[str, object]:
    profile = PROFILES[profile_name]
    with (
        tempfile.TemporaryDirectory(prefix="charter-bench-wan-") as tmp,
        wan_network(Path(tmp) / "net", 3, profile) as net,
    ):

        async def measure() -> dict[str, object]:
            primary = await primary_index(net.sb)
            latency = await _commit_latency_ms(net, primary)
            print(f"commit latency p50 {statistics.median(latency):.1f} ms", flush=True)
            tps = await _throughput(net, primary, writes, concurrency)
            print(f"throughput {tps:.1f} tx/s", flush=True)
            election = await _election_s(net, primary)
            print(f"election after losing the primary {election:.2f} s", flush=True)
            cuts = statistics.quantiles(latency, n=20)
            return {
                "profile": profile.name,
                "description": profile.describe(),
                "writes": writes,
                "concurrency": concurrency,
                "throughput_tx_s": round(tps, 1),
                "commit_latency_ms": {
                    "p50": round(statistics.median(latency), 1),
                    "p95": round(cuts[18], 1),
                    "max": round(max(latency), 1),
                },
                "election_s": round(election, 2),
                "election_timeout_ms": list(DEFAULT_ELECTION_TIMEOUT_MS),
                "heartbeat_ms": DEFAULT_HEARTBEAT_MS,
            }

        return asyncio.run(measure())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wan", required=True, choices=sorted(PROFILES), help="WAN profile")
    parser.add_argument("--writes", type=int, default=400, help="writes for the throughput run")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent writing clients")
    args = parser.parse_args(argv)
    if not 1 <= args.writes <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--writes must be 1..100000 and --concurrency 1..256")
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_wan: cannot build the namespaced network: {reason}", file=sys.stderr)
        return 2
    print(f"profile {PROFILES[args.wan].describe()}", flush=True)
    result = run(args.wan, args.writes, args.concurrency)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
