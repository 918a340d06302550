#!/usr/bin/env python3
"""How long a snapshot stalls a network's answers and commits, with a large state.

    .venv/bin/python scripts/bench_snapshot_stall.py [--keys 100000] [--rate 500]
        [--duration-s 15] [--snapshot-tx 3000] [--nodes 1] [--revs BASE REV [--pairs 1]]

Starts a sandbox of --nodes nodes (snapshots every --snapshot-tx writes), fills it with --keys
distinct private records (`POST /app/log/private`, --fill-clients connections), then writes
at --rate writes/s from a paced (open-loop) client for --duration-s (snapshots fall due
several times meanwhile) and reports the answer latency from when each write was due
(`charter.bench_commit.run_paced`): p50, p99, max, and the commit p99. A snapshot encoded on
the ordering loop shows as a max (and p99) of about the encoding time of the whole state.
The commit latencies are also split by when each write was due: within WINDOW_BEFORE_S
before to WINDOW_AFTER_S after a snapshot the primary started (its `snapshot_encoding` log
lines) or not (`commit_p99_ms_near_snapshot`, `commit_p99_ms_away`).

--revs BASE REV runs each revision in turn (exported with `git archive` as in
scripts/bench_compare.py: its nodes then run that revision's code), alternating the order
each pair, so a drift of the shared machine's load falls on both alike.

The last stdout line is one JSON object (per revision with --revs). Bounded throughout:
keys, rate, duration and connections have maximums; only 127.0.0.1 is used; the sandbox is
stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_START = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*event=snapshot_encoding .*role=primary", re.M
)
KEYS_MAX = 2_000_000
RATE_MAX = 5_000.0
DURATION_S_MAX = 120.0
CLIENTS_MAX = 64
PAIRS_MAX = 5
NODES_MAX = 5
# Around a snapshot's start: the writes due then are "near" it.
WINDOW_BEFORE_S = 0.2
WINDOW_AFTER_S = 0.5
# Fill ids start above the paced client's marker ids and below its own (1 << 32 and up).
FILL_ID_BASE = 1_000_000
RUN_TIMEOUT_S = 1800
FILL_RETRIES_MAX = 200


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_snapshot_stall.py", description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="distinct records first (100,000)")
    p.add_argument("--fill-clients", type=int, default=16, help="connections that fill (16)")
    p.add_argument("--rate", type=float, default=500.0, help="paced writes/s (500)")
    p.add_argument("--duration-s", type=float, default=15.0, help="paced phase (15 s)")
    p.add_argument("--clients", type=int, default=8, help="paced connections (8)")
    p.add_argument("--snapshot-tx", type=int, default=3_000, help="snapshots.tx_count (3,000)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the sandbox (1)")
    p.add_argument("--revs", nargs=2, metavar=("BASE", "REV"), help="compare two revisions")
    p.add_argument("--pairs", type=int, default=1, help="runs of each revision with --revs (1)")
    args = p.parse_args(argv)
    if not 0 <= args.keys <= KEYS_MAX:
        p.error(f"--keys must be in 0..{KEYS_MAX}")
    if not 0 < args.rate <= RATE_MAX:
        p.error(f"--rate must be in (0, {RATE_MAX:g}]")
    if not 0 < args.duration_s <= DURATION_S_MAX:
        p.error(f"--duration-s must be in (0, {DURATION_S_MAX:g}]")
    for name in ("clients", "fill_clients"):
        if not 1 <= getattr(args, name) <= CLIENTS_MAX:
            p.error(f"--{name.replace('_', '-')} must be in 1..{CLIENTS_MAX}")
    if not 1 <= args.snapshot_tx <= 10_000_000:
        p.error("--snapshot-tx must be in 1..10,000,000")
    if not 1 <= args.nodes <= NODES_MAX:
        p.error(f"--nodes must be in 1..{NODES_MAX}")
    if not 1 <= args.pairs <= PAIRS_MAX:
        p.error(f"--pairs must be in 1..{PAIRS_MAX}")
    return args


async def _fill(url: str, ssl_ctx: Any, keys: int, clients: int) -> float:
    """`keys` distinct private records from `clients` connections; returns the seconds taken."""
    from charter.bench_commit import _Connection

    next_key = [0]

    async def worker(conn: Any) -> None:
        while next_key[0] < keys:
            key = FILL_ID_BASE + next_key[0]
            next_key[0] += 1
            body = json.dumps({"id": key, "msg": f"record {key} " + "x" * 40}).encode()
            for _ in range(FILL_RETRIES_MAX):
                status, _ = await conn.post(body)
                if status != 503:
                    break
                await asyncio.sleep(0.05)  # backpressure: the same write again, a bit later
            if not 200 <= status < 300:
                raise RuntimeError(f"fill write answered {status}")

    conns = [await _Connection.open(url, ssl_ctx) for _ in range(clients)]
    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return time.monotonic() - started


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run against whatever `charter` this interpreter imports."""
    from charter import bench_commit
    from charter.bench import percentile_ms
    from charter.sandbox import Sandbox
    from charter.sdk import CharterClient, build_ssl_context

    def configure(index: int, config: dict[str, Any]) -> None:
        del index
        config["snapshots"] = {"tx_count": args.snapshot_tx}

    with tempfile.TemporaryDirectory(prefix="charter-snapstall-") as tmp:
        sandbox = Sandbox(Path(tmp) / "sb", nodes=args.nodes, configure_node=configure)
        try:
            await sandbox.start()
            primary_id = await sandbox.wait_for_primary()
            node = next(n for n in sandbox.nodes if n.node_id == primary_id)
            cert, key = sandbox.user_paths(0)
            ssl_ctx = build_ssl_context(sandbox.service_cert_path, cert, key)
            url = node.url + bench_commit.WRITE_PATH
            print(f"filling {args.keys:,} keys", file=sys.stderr, flush=True)
            fill_s = await _fill(url, ssl_ctx, args.keys, args.fill_clients)
            log_before = node.log_path.read_text(errors="replace").count("event=snapshot_taken")
            load_before = os.getloadavg()
            wall_minus_monotonic_s = time.time() - time.monotonic()
            print(f"paced {args.rate:g}/s for {args.duration_s:g} s", file=sys.stderr, flush=True)
            async with CharterClient(
                node.url, sandbox.service_cert_path, cert_path=cert, key_path=key
            ) as watcher:
                paced = await bench_commit.run_paced(
                    url,
                    ssl_ctx,
                    watcher,
                    rate_per_s=args.rate,
                    duration_s=args.duration_s,
                    clients=args.clients,
                )
            log_text = node.log_path.read_text(errors="replace")
            snapshots = log_text.count("event=snapshot_taken") - log_before
        finally:
            await asyncio.to_thread(sandbox.stop)
    answers = paced.answer_latencies_ms
    starts = snapshot_starts(log_text)
    near: list[float] = []
    away: list[float] = []
    # An older revision measured with --revs may not record when each write was due
    # (`commit_due_s`): its split is then empty (null figures).
    due_times = getattr(paced, "commit_due_s", ())
    for due_s, latency in zip(due_times, paced.commit_latencies_ms, strict=False):
        due = due_s + wall_minus_monotonic_s
        close = any(s - WINDOW_BEFORE_S <= due <= s + WINDOW_AFTER_S for s in starts)
        (near if close else away).append(latency)
    return {
        "keys": args.keys,
        "fill_writes_per_s": round(args.keys / fill_s, 1) if fill_s > 0 else None,
        "rate_per_s": args.rate,
        "achieved_per_s": round(paced.achieved_rate_per_s, 1),
        "snapshot_tx_count": args.snapshot_tx,
        "snapshots_during_paced": snapshots,
        "answer_p50_ms": paced.answer_ms(50),
        "answer_p99_ms": paced.answer_ms(99),
        "answer_max_ms": round(max(answers), 3) if answers else None,
        "commit_p99_ms": paced.commit_ms(99),
        "nodes": args.nodes,
        "writes_near_snapshot": len(near),
        "commit_p99_ms_near_snapshot": _round(percentile_ms(near, 99)),
        "commit_p99_ms_away": _round(percentile_ms(away, 99)),
        "errors": paced.errors,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def snapshot_starts(log_text: str) -> list[float]:
    """When the node started each snapshot it took as primary (epoch seconds), from its log
    lines' local times."""
    starts = []
    for match in SNAPSHOT_START.finditer(log_text):
        when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        starts.append(when.timestamp())  # naive: the log's local time
    return starts


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Each of --revs in turn, this script of the newer revision measuring both."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_compare import export_tree

    own = [a for i, a in enumerate(argv) if a != "--revs" and (i == 0 or argv[i - 1] != "--revs")]
    own = [a for a in own if a not in args.revs]
    own = _drop_option(own, "--pairs")
    runs: dict[str, list[dict[str, Any]]] = {rev: [] for rev in args.revs}
    with tempfile.TemporaryDirectory(prefix="charter-snapstall-cmp-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {}
        for i, rev in enumerate(args.revs):
            export_tree(rev, tmp / f"r{i}")
            trees[rev] = tmp / f"r{i}" / "tree"
        for pair in range(args.pairs):
            for rev in args.revs if pair % 2 == 0 else list(reversed(args.revs)):
                env = {**os.environ, "PYTHONPATH": str(trees[rev])}
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), *own],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=RUN_TIMEOUT_S,
                )
                lines = done.stdout.strip().splitlines()
                if done.returncode != 0 or not lines:
                    raise RuntimeError(f"{rev} failed ({done.returncode}): {done.stderr[-2000:]}")
                result = json.loads(lines[-1])
                runs[rev].append(result)
                print(f"{rev} run {pair}: {json.dumps(result)}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"revs": args.revs, "pairs": args.pairs}
    for rev, results in runs.items():
        entry: dict[str, Any] = {"runs": results}
        for figure in (
            "answer_p50_ms",
            "answer_p99_ms",
            "answer_max_ms",
            "commit_p99_ms",
            "commit_p99_ms_near_snapshot",
            "commit_p99_ms_away",
        ):
            values = [r[figure] for r in results if r.get(figure) is not None]
            entry[figure] = round(statistics.median(values), 3) if values else None
        summary[rev] = entry
    return summary


def _drop_option(argv: list[str], name: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def main(argv: list[str]) -> int:
    args = _args(argv)
    if args.revs:
        result = compare(args, argv)
    else:
        from charter.enclave_app.loop import run_loop

        result = run_loop(measure(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
