"""Suite-wide ordering: the folders whose tests take seconds each run first.

pytest-xdist's work stealing hands each worker a contiguous half of the collection and lets
an idle worker take the end of another's queue. Collected alphabetically, the simulator
sweeps and the README tour came last, so the run ended with one worker on a 20-50 s test
and the other idle. With the long tests first, what is left to share at the end is short.
The order is the same on every worker (xdist requires identical collections).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Slowest per test first (seconds to tens of seconds: real processes, simulator sweeps).
LONG_FIRST = ("netns", "e2e", "sim", "tour", "scitt", "console", "client", "consensus")


def _rank(item: pytest.Item) -> int:
    try:
        folder = Path(item.path).resolve().relative_to(HERE).parts[0]
    except ValueError:
        return len(LONG_FIRST)
    return LONG_FIRST.index(folder) if folder in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order within a folder is kept
