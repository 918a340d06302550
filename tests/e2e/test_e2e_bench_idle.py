"""The idle-cost benchmark runs a real network, and its last line is the JSON summary the
docs quote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RunBench = Callable[..., dict[str, Any]]  # the suite-wide `run_bench` fixture (tests/conftest.py)


def test_idle_bench_measures_every_process_of_a_node_and_ends_with_its_json_figures(
    run_bench: RunBench,
) -> None:
    summary = run_bench("bench_idle.py", "--nodes", "1", "--seconds", "2", "--ticks", "10")
    row = summary["tick_10"]
    # A node ticked 100 times a second uses some CPU (tens of ms a second, in clock ticks
    # of 10 ms) in its host and its enclave, and so do the two bare processes of the
    # baseline; the frontend may idle below the clock's grain.
    assert row["host_ms_per_s"] > 0 and row["enclave_ms_per_s"] > 0, row
    assert row["baseline_ms_per_s"] > 0 and row["node_vs_baseline_ratio"] > 0, row
    assert row["frontend_ms_per_s"] >= 0, row
    assert row["network_start_s"] > 0, row
    assert 0 < summary["python_start_s"] < summary["host_import_s"], summary
    assert summary["python_start_s"] < summary["enclave_import_s"], summary
