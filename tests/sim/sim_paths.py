"""Where this directory's tests find what they share (the `shared_data.py` of other test
directories): `tests/` is not an import root, each test directory is its own, so the
simulator's modules carry names no other directory uses (`node_sim*`)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The replay command printed on a failure runs from the worktree (scripts/test is there).
REPLAY_DIR = REPO


def seed_from_env() -> int | None:
    """CHARTER_SIM_SEED, when a failing seed is replayed alone."""
    value = os.environ.get("CHARTER_SIM_SEED")
    return None if value in (None, "") else int(value)


def steps_from_env(default: int) -> int:
    return int(os.environ.get("CHARTER_SIM_STEPS", default))
