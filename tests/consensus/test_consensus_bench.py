"""The benchmark script runs, and its last line is the JSON summary the docs quote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RunBench = Callable[..., dict[str, Any]]  # the suite-wide `run_bench` fixture (tests/conftest.py)


def test_bench_script_commits_every_entry_and_ends_with_its_json_figures(
    run_bench: RunBench,
) -> None:
    summary = run_bench("bench_consensus.py", "--entries", "50000", "--repeat", "2")
    assert summary["entries"] == 50_000
    assert summary["us_per_entry"] > 0 and summary["entries_per_s_cpu"] > 0
