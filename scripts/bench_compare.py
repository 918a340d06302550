#!/usr/bin/env python3
"""Before/after of changes, in one run: scripts/bench.py on several commits, alternated.

    .venv/bin/python scripts/bench_compare.py BASE_REV REV [REV ...] [--pairs 2] [-- BENCH ARGS]

Each revision's packages are exported (`git archive`) into a temporary tree laid out as the
installed `charter` namespace, and scripts/bench.py (of NEW_REV, so both are measured the
same way) runs with that tree first on PYTHONPATH: the nodes it starts, and the benchmark
itself, then import that revision's code. Each round runs every revision once, in forward
then reverse order (A B C, C B A, ...), so that a drift of the shared machine's load falls
on all alike; each run measures its own ceiling around its node phase, so every figure is
also a ratio to a ceiling of the same minutes.

Default bench arguments: `--nodes 1 --duration-s 8 --latency-duration-s 0 --receipts 0`.
The last stdout line is one JSON object: per revision the median of each figure over its
runs, and its `enclave_us_per_write` and `ceiling_ratio` over the base's (< 1: it saves
enclave CPU; > 1: it gets closer to the ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Folder in the repository -> where it lives in the installed namespace (pyproject.toml).
PACKAGES = {
    "client": "charter",
    "ledger": "charter/ledger",
    "consensus": "charter/consensus",
    "governance": "charter/governance",
    "enclave_app": "charter/enclave_app",
    "host": "charter/host",
}
DEFAULT_BENCH_ARGS = ["--nodes", "1", "--duration-s", "8", "--latency-duration-s", "0"]
DEFAULT_BENCH_ARGS += ["--receipts", "0"]
FIGURES = (
    "committed_tx_per_s",
    "ceiling_req_per_s",
    "ceiling_ratio",
    "enclave_us_per_write",
    "host_us_per_write",
    "loadgen_us_per_write",
    "ceiling_server_us_per_req",
    "cpu_ceiling_ratio",
    "backups_us_per_write",
    "p50_commit_ms_at_half_load",
    "p99_commit_ms_at_half_load",
)
PAIRS_MAX = 10
REVS_MAX = 8
RUN_TIMEOUT_S = 900


def export_tree(rev: str, directory: Path) -> Path:
    """`rev`'s packages as an importable `charter` namespace in `directory`."""
    checkout = directory / "checkout"
    checkout.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "x", "-C", str(checkout)], input=archive, check=True)
    tree = directory / "tree"
    for source, target in PACKAGES.items():
        shutil.copytree(checkout / source, tree / target)
    return checkout


def run_bench(script: Path, tree: Path, bench_args: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(script), *bench_args, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        argv, bench_args = argv[:split], argv[split + 1 :]
    else:
        bench_args = list(DEFAULT_BENCH_ARGS)
    p = argparse.ArgumentParser(prog="bench_compare.py", description=__doc__.split("\n")[0])
    p.add_argument("revs", nargs="+", help="the base revision, then the ones to compare")
    p.add_argument("--pairs", type=int, default=2, help="runs of each revision (2)")
    args = p.parse_args(argv)
    if not 1 <= args.pairs <= PAIRS_MAX:
        p.error(f"--pairs must be in 1..{PAIRS_MAX}")
    if not 2 <= len(args.revs) <= REVS_MAX:
        p.error(f"give 2..{REVS_MAX} revisions")
    labels = [f"r{i}" for i in range(len(args.revs))]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="charter-bench-compare-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {}
        for label, rev in zip(labels, args.revs, strict=True):
            export_tree(rev, tmp / label)
            trees[label] = tmp / label / "tree"
        script = tmp / labels[-1] / "checkout" / "scripts" / "bench.py"
        for i in range(args.pairs):
            for label in labels if i % 2 == 0 else reversed(labels):
                result = run_bench(script, trees[label], bench_args, tmp / f"{label}-{i}.json")
                result["load_average"] = [round(x, 2) for x in os.getloadavg()]
                runs[label].append(result)
                rev = args.revs[labels.index(label)]
                figures = {k: result.get(k) for k in FIGURES}
                print(f"{rev} run {i}: {json.dumps(figures)} load {result['load_average']}",
                      file=sys.stderr, flush=True)  # fmt: skip
    summary: dict[str, Any] = {"revs": args.revs, "pairs": args.pairs, "bench_args": bench_args}
    for label, rev in zip(labels, args.revs, strict=True):
        results = runs[label]
        entry: dict[str, Any] = {"runs": [{k: r.get(k) for k in FIGURES} for r in results]}
        entry["load_average"] = [r["load_average"] for r in results]
        for k in FIGURES:
            entry[k] = median([r[k] for r in results if r.get(k) is not None])
        summary[rev] = entry
    for rev in args.revs[1:]:
        for k in ("enclave_us_per_write", "ceiling_ratio"):
            b, n = summary[args.revs[0]][k], summary[rev][k]
            summary[rev][f"{k}_over_base"] = round(n / b, 3) if b and n else None
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
