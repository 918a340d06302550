"""The key-value benchmark runs, and its last line is the JSON summary the docs quote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RunBench = Callable[..., dict[str, Any]]  # the suite-wide `run_bench` fixture (tests/conftest.py)


def test_kv_bench_script_runs_and_ends_with_its_json_figures(run_bench: RunBench) -> None:
    summary = run_bench("bench_kv.py", "--quick", "--rounds", "1")
    assert summary["transactions"] == 5_000 and summary["snapshot_keys"] == 10_000
    for figure in ("tx_us", "dict_tx_us", "snapshot_s", "restore_s"):
        assert summary[figure] > 0, figure
    assert summary["tx_vs_dict_ratio"] > 0 and summary["restore_vs_msgpack_ratio"] > 0
