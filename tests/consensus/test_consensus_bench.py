"""The benchmark script runs, and its last line is the JSON summary the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_script_commits_every_entry_and_ends_with_its_json_figures() -> None:
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
    assert summary["us_per_entry"] > 0 and summary["entries_per_s_cpu"] > 0
