"""Shared fixtures for ledger tests: generated ledgers (made once per session) and copies."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger.generate import GeneratedLedger, generate_ledger

CCF_LEDGERS = SHARED_CCF_LEDGERS


@pytest.fixture(scope="session")
def big_ledger(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLedger:
    """A 10,000-transaction committed ledger over ten chunks (read-only: copy to tamper)."""
    directory = tmp_path_factory.mktemp("big-ledger")
    return generate_ledger(
        str(directory), transactions=10_000, signature_interval=100, chunk_size_bytes=300_000
    )


@pytest.fixture(scope="session")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLedger:
    """A 400-transaction ledger over several chunks (read-only: copy to tamper)."""
    directory = tmp_path_factory.mktemp("small-ledger")
    return generate_ledger(
        str(directory), transactions=400, signature_interval=20, chunk_size_bytes=30_000, seed=1
    )


@pytest.fixture
def copy_ledger(tmp_path: Path) -> Callable[[str | Path], Path]:
    """Makes writable copies of ledger directories (the real CCF ledgers are read-only)."""
    counter = iter(range(1_000_000))

    def copy(source: str | Path) -> Path:
        target = tmp_path / f"ledger-copy-{next(counter)}"
        shutil.copytree(source, target)
        for path in target.iterdir():
            path.chmod(0o644)
        return target

    return copy
