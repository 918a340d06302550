"""Namespace tests: nodes on their own network stacks. They reuse the e2e suite's helpers
(networks, checks, the linearizability checker) and run nodes from one frozen code copy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import snapshot_code
from netlab import unavailable_reason


@pytest.fixture(scope="session")
def netns_ready() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture(scope="session", autouse=True)
def node_code(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with snapshot_code(tmp_path_factory.mktemp("netns-code")) as code:
        yield code
