#!/usr/bin/env python3
"""Merge the commit traces of a network's nodes into one breakdown of where commits wait.

    CHARTER_COMMIT_TRACE=1 .venv/bin/python scripts/bench.py --nodes 3 --workspace DIR ...
    .venv/bin/python scripts/commit_trace.py DIR

With the host's lines (`step=host_durable`, one per fsync) also the time to the primary's
fsync and from it to the enclave hearing of it. Reads every `node.log` and `host.log` under DIR (the enclave's lines are in one of them,
one folder per node), takes the
`event=commit_trace` lines (enclave_app/node/commit_trace.py) and, for each signature the
primary emitted, the time from its emission to: the primary's own durable report, each
backup receiving it, that backup's durable report, the primary hearing the backup's
acknowledgement, and the commit. (A backup's host sends its acknowledgement right after its
fsync, so the primary may hear it before that backup's enclave hears of the fsync: then
`ack_return`, from the first backup's durable report to the first acknowledgement, is
negative.) `backup_host_fsynced` is from a backup receiving a signature to its host's
fsync that covers it. `--last-s S` keeps only the signatures emitted in the last S seconds
of the trace (a bench run's half-load phase is its last 5 s). Prints p50 / p90 / p99 / max
in milliseconds of each step and, as the last line, the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

LINE = re.compile(
    r"event=commit_trace step=(?P<step>\w+) seqno=(?P<seqno>\d+) t_ms=(?P<t>[\d.]+)"
    r"(?: peer=(?P<peer>\w+))?"
)
LOG_BYTES_MAX = 512 * 1024 * 1024  # a debugging aid reads what a bench run writes, no more


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def read(root: Path) -> dict[str, dict[tuple[str, int, str], float]]:
    """node log -> (step, seqno, peer) -> time (ms)."""
    nodes: dict[str, dict[tuple[str, int, str], float]] = {}
    for log in sorted([*root.rglob("node.log"), *root.rglob("host.log")]):
        if log.stat().st_size > LOG_BYTES_MAX:
            raise SystemExit(f"{log}: larger than {LOG_BYTES_MAX} bytes")
        steps: dict[tuple[str, int, str], float] = {}
        with log.open(errors="replace") as f:
            for line in f:
                m = LINE.search(line)
                if m is not None:
                    key = (m["step"], int(m["seqno"]), m["peer"] or "")
                    steps.setdefault(key, float(m["t"]))
        if steps:
            # node.log beside workspace/host.log: one node, one folder
            node = log.parent.parent if log.parent.name == "workspace" else log.parent
            nodes.setdefault(str(node), {}).update(steps)
    return nodes


def _first_covering(
    steps: dict[tuple[str, int, str], float], step: str, seqno: int
) -> float | None:
    """When a `step` line (one per fsync, by the host) first covered `seqno`."""
    times = [t for (s, n, _), t in steps.items() if s == step and n >= seqno]
    return min(times) if times else None


def breakdown(nodes: dict[str, dict[tuple[str, int, str], float]]) -> dict[str, list[float]]:
    primaries = [n for n, steps in nodes.items() if any(k[0] == "emitted" for k in steps)]
    out: dict[str, list[float]] = defaultdict(list)
    for primary in primaries:
        steps = nodes[primary]
        backups = [n for n in nodes if n != primary]
        # Signatures emitted before every backup was following (a joiner catching up
        # receives old ones late) say nothing about replication in the steady state.
        since_ms = (
            max(
                (min((t for k, t in nodes[b].items() if k[0] == "received"), default=0.0))
                for b in backups
            )
            if backups
            else 0.0
        )
        for (step, seqno, _), emitted in list(steps.items()):
            if step != "emitted" or emitted < since_ms:
                continue
            if ("durable", seqno, "") in steps:
                out["primary_durable"].append(steps[("durable", seqno, "")] - emitted)
            host_durable = _first_covering(steps, "host_durable", seqno)
            if host_durable is not None:
                out["primary_host_fsynced"].append(host_durable - emitted)
                if ("durable", seqno, "") in steps:
                    out["primary_durable_told"].append(steps[("durable", seqno, "")] - host_durable)
            if ("committed", seqno, "") in steps:
                out["committed"].append(steps[("committed", seqno, "")] - emitted)
            acks = sorted(t for (s, n, _), t in steps.items() if s == "acked" and n == seqno)
            if acks:
                out["first_ack"].append(acks[0] - emitted)
            for backup in backups:
                theirs = nodes[backup]
                received = theirs.get(("received", seqno, ""))
                durable = theirs.get(("durable", seqno, ""))
                if received is not None:
                    out["backup_received"].append(received - emitted)
                host_durable = _first_covering(theirs, "host_durable", seqno)
                if received is not None and host_durable is not None:
                    out["backup_host_fsynced"].append(host_durable - received)
                if received is not None and durable is not None:
                    out["backup_fsync"].append(durable - received)
                    out["backup_durable"].append(durable - emitted)
            if acks and out["backup_durable"]:
                firsts = [
                    nodes[b][("durable", seqno, "")]
                    for b in backups
                    if ("durable", seqno, "") in nodes[b]
                ]
                if firsts:
                    out["ack_return"].append(acks[0] - min(firsts))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="the bench's --workspace (or one network's)")
    p.add_argument(
        "--last-s", type=float, default=None, help="only signatures of the trace's last S s"
    )
    args = p.parse_args()
    nodes = read(args.root)
    if args.last_s is not None:
        end_ms = max((t for steps in nodes.values() for t in steps.values()), default=0.0)
        for steps in nodes.values():
            for key in [k for k, t in steps.items() if k[0] == "emitted"]:
                if steps[key] < end_ms - args.last_s * 1000:
                    del steps[key]
    out = breakdown(nodes)
    summary = {}
    for step, values in out.items():
        if not values:
            continue
        row = {
            "n": len(values),
            "p50": round(statistics.median(values), 2),
            "p90": round(_percentile(values, 0.9), 2),
            "p99": round(_percentile(values, 0.99), 2),
            "max": round(max(values), 2),
        }
        summary[step] = row
        print(f"{step:16} " + " ".join(f"{k}={v}" for k, v in row.items()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
