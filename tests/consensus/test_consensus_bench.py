"""The benchmark script runs, and its last line is the JSON summary the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_script_commits_over_200k_entries_per_cpu_second_and_ends_with_json() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_consensus.py"),
            "--entries",
            "50000",
            "--repeat",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["entries"] == 50_000
    assert summary["us_per_entry"] > 0
    # CPU time, not wall time: other work on a shared CI machine must not fail this.
    assert summary["entries_per_s_cpu"] >= 200_000
