"""The key-value benchmark runs, and its last line is the JSON summary the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kv_bench_script_runs_and_ends_with_its_json_figures() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_kv.py"), "--quick", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["transactions"] == 5_000 and summary["snapshot_keys"] == 10_000
    for figure in ("tx_us", "dict_tx_us", "snapshot_s", "restore_s"):
        assert summary[figure] > 0, figure
    assert summary["tx_vs_dict_ratio"] > 0 and summary["restore_vs_msgpack_ratio"] > 0
