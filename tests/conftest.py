"""Suite-wide: running a benchmark script, and how the run's work was shared out.

The collection keeps pytest's order (folders alphabetically). Ordering the folders of long
tests first was tried (2026-12-07) and made the suite slower, 866-895 s against 840-856 s:
both workers then ran end-to-end networks at the same time, oversubscribing the 2 cores in
bursts and leaving them idle while the networks waited, where the alphabetical order mostly
pairs a network on one worker with CPU-bound unit tests on the other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

RunBench = Callable[..., dict[str, Any]]


@pytest.fixture
def run_bench() -> RunBench:
    """Run `scripts/<name>` with arguments, as a user would, and return the JSON object of
    its last line (every benchmark script ends its output with one)."""

    def run(name: str, *args: str, timeout_s: float = 120) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
            cwd=REPO_ROOT,
        )
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return summary

    return run


class _WorkerTimes:
    """On the controller of an xdist run: each worker's busy seconds and when it finished
    its last test, printed at the end, so that a slow run shows whether the work grew or was
    shared out badly."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)
        worker = getattr(getattr(node, "gateway", None), "id", None)
        if worker is None:
            return
        self.busy[worker] = self.busy.get(worker, 0.0) + report.duration
        self.last[worker] = time.monotonic() - self.started

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.busy:
            return
        shares = ", ".join(
            f"{worker} busy {self.busy[worker]:.0f} s, done at {self.last[worker]:.0f} s"
            for worker in sorted(self.busy)
        )
        terminalreporter.write_line(f"workers: {shares}")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        config.pluginmanager.register(_WorkerTimes(), "charter-worker-times")
