#!/usr/bin/env python3
"""What an idle node costs: CPU per second of each process of a sandbox network that serves
no request, for several `tick_ms` values; and what starting one costs.

Run from the repository root:  .venv/bin/python scripts/bench_idle.py [--ticks 10,50]
    [--nodes 3] [--seconds 10]

For each tick period it starts a sandbox network (`--nodes`, with that `tick_ms` on every
node), lets it settle for 2 s, then reads each process's CPU time (utime + stime from
/proc) over `--seconds`. The baseline, measured in the same run, is a bare Python process
whose asyncio loop sends one small frame over a socket pair at the same period, and a
second one that reads it: the floor of waking two Python processes that often on this
machine, so the ratio says what the node adds to its ticks.

Start: `network_start_s` is how long `Sandbox.start` took for that network (nodes started,
joined, trusted, the service opened). Before the networks, the wall time of importing the
host's and the enclave's main modules in a fresh interpreter (`host_import_s`,
`enclave_import_s`, best of 3), against a bare interpreter's start (`python_start_s`).

Prints a table, then as its LAST line one JSON object: the import figures, and for each
tick period `host_ms_per_s`, `enclave_ms_per_s`, `frontend_ms_per_s` (per node, mean over
nodes), `baseline_ms_per_s` (the two bare processes together), `node_vs_baseline_ratio`
(host + enclave over the baseline) and `network_start_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from charter.sandbox import Sandbox  # noqa: E402

SETTLE_S = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Two processes on the loop the node runs on (uvloop): the parent ticks the child over a
# socket pair every PERIOD seconds, as the host ticks the enclave; the child reads each frame.
_BASELINE = """
import asyncio, os, socket, sys
from charter.enclave_app.loop import run_loop
period = float(sys.argv[1])
parent, child = socket.socketpair()
async def read() -> None:
    reader, _ = await asyncio.open_connection(sock=child)
    while await reader.read(4096):
        pass
async def tick() -> None:
    _, writer = await asyncio.open_connection(sock=parent)
    while True:
        await asyncio.sleep(period)
        writer.write(b"tick-frame-of-about-thirty-bytes")
        await writer.drain()
if os.fork() == 0:
    parent.close()
    run_loop(read())
    os._exit(0)
child.close()
run_loop(tick())
"""


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(c) for c in children)
    return found


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            todo.extend(_children(current))
    return pids


def _role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    text = " ".join(part.decode(errors="replace") for part in cmdline)
    for role, marker in (
        ("frontend", "frontend_process"),
        ("enclave", "enclave_app.main"),
        ("host", "charter.host"),
    ):
        if marker in text:
            return role
    return "other"


def _sample(pids: list[int]) -> dict[int, int]:
    taken = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            taken[pid] = _cpu_ticks(pid)
    return taken


def _ms_per_s(before: dict[int, int], after: dict[int, int], seconds: float) -> dict[int, float]:
    return {
        pid: (after[pid] - before[pid]) * 1000 / CLOCK_TICKS / seconds
        for pid in after
        if pid in before
    }


def best_start_s(code: str, runs: int = 3) -> float:
    """Best wall time of a fresh interpreter running `code`."""
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.monotonic() - started)
    return round(best, 3)


async def measure_network(tick_ms: int, nodes: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as workspace:

        def configure(_: int, config: dict[str, Any]) -> None:
            config["tick_ms"] = tick_ms

        sandbox = Sandbox(Path(workspace) / "net", nodes=nodes, configure_node=configure)
        try:
            start_began = time.monotonic()
            await sandbox.start()
            start_s = time.monotonic() - start_began
            await asyncio.sleep(SETTLE_S)
            roots = [node.process.pid for node in sandbox.nodes if node.process is not None]
            pids = [pid for root in roots for pid in _tree(root)]
            roles = {pid: _role(pid) for pid in pids}
            before, started = _sample(pids), time.monotonic()
            await asyncio.sleep(seconds)
            used = _ms_per_s(before, _sample(pids), time.monotonic() - started)
        finally:
            sandbox.stop()
    totals: dict[str, float] = {"host": 0.0, "enclave": 0.0, "frontend": 0.0}
    for pid, ms in used.items():
        if roles[pid] in totals:
            totals[roles[pid]] += ms
    figures = {f"{role}_ms_per_s": round(ms / nodes, 2) for role, ms in totals.items()}
    return {**figures, "network_start_s": round(start_s, 2)}


def measure_baseline(tick_ms: int, seconds: float) -> float:
    process = subprocess.Popen([sys.executable, "-c", _BASELINE, str(tick_ms / 1000)])
    try:
        time.sleep(SETTLE_S / 2)
        pids = _tree(process.pid)
        before, started = _sample(pids), time.monotonic()
        time.sleep(seconds)
        used = _ms_per_s(before, _sample(pids), time.monotonic() - started)
    finally:
        for pid in reversed(_tree(process.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        process.wait()
    return round(sum(used.values()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", default="10,50", help="tick_ms values, comma-separated")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    ticks = [int(t) for t in args.ticks.split(",") if t.strip()]
    figures: dict[str, Any] = {
        "nodes": args.nodes,
        "seconds": args.seconds,
        "python_start_s": best_start_s("pass"),
        "host_import_s": best_start_s("import charter.host.main"),
        "enclave_import_s": best_start_s("import charter.enclave_app.main"),
    }
    print(
        f"fresh interpreter {figures['python_start_s']:.3f} s; importing the host's main "
        f"{figures['host_import_s']:.3f} s, the enclave's {figures['enclave_import_s']:.3f} s"
    )
    print(
        f"{'tick_ms':>8} {'host':>8} {'enclave':>8} {'frontend':>9} {'baseline':>9} "
        f"{'ratio':>6} {'start':>7}"
    )
    for tick_ms in ticks:
        network = asyncio.run(measure_network(tick_ms, args.nodes, args.seconds))
        baseline = measure_baseline(tick_ms, args.seconds)
        node = network["host_ms_per_s"] + network["enclave_ms_per_s"]
        row = {
            **network,
            "baseline_ms_per_s": baseline,
            "node_vs_baseline_ratio": round(node / baseline, 2) if baseline else None,
        }
        figures[f"tick_{tick_ms}"] = row
        print(
            f"{tick_ms:>8} {row['host_ms_per_s']:>8.1f} {row['enclave_ms_per_s']:>8.1f} "
            f"{row['frontend_ms_per_s']:>9.1f} {baseline:>9.1f} "
            f"{row['node_vs_baseline_ratio'] or 0:>6.2f} {row['network_start_s']:>6.2f}s"
        )
    print("(ms of CPU per second of each process, per node; baseline: two bare asyncio")
    print(" processes ticking each other over a socket pair at the same period)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
