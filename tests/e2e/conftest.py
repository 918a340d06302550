"""End-to-end fixtures: every node process runs from one frozen copy of the code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import snapshot_code


@pytest.fixture(scope="session", autouse=True)
def node_code(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with snapshot_code(tmp_path_factory.mktemp("e2e-code")) as code:
        yield code
