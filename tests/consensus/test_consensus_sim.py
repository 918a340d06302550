"""The seeded cluster simulator: seeds x 2,000 steps of faults, safety checked each step.

The suite runs the first 100 seeds; scripts/soak runs seeds 100-499 too (and longer runs).
A failing seed prints the one command that replays it (CHARTER_SIM_SEED / CHARTER_SIM_STEPS).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import pytest
from consensus_sim import Simulation, seed_from_env

SEEDS = 100  # in the suite (scripts/test)
SOAK_SEEDS = 500  # seeds SEEDS.. SOAK_SEEDS - 1 run with scripts/soak
STEPS = 2_000
PER_CHUNK = 25  # seeds per test, so that pytest-xdist spreads them over the cores


@pytest.fixture(autouse=True)
def _quiet_consensus_logs() -> None:
    # Elections and truncations are logged at INFO/WARNING; thousands per run are noise here.
    logging.getLogger("consensus").setLevel(logging.ERROR)


@pytest.mark.parametrize("chunk", range(SEEDS // PER_CHUNK))
def test_sim_safety_and_liveness_hold_under_faults(chunk: int) -> None:
    _run_seeds(chunk * PER_CHUNK)


@pytest.mark.soak
@pytest.mark.parametrize("chunk", range(SEEDS // PER_CHUNK, SOAK_SEEDS // PER_CHUNK))
def test_sim_safety_and_liveness_hold_under_faults_for_more_seeds(chunk: int) -> None:
    _run_seeds(chunk * PER_CHUNK)


def _run_seeds(first: int) -> None:
    per = PER_CHUNK
    chunk = first // per
    commits = 0
    seen: Counter[str] = Counter()
    for seed in range(first, first + per):
        sim = Simulation(seed)
        sim.run(STEPS)  # raises SafetyViolation naming the seed and the replay command
        commits += len(sim.committed) - 1
        seen.update(sim.stats)
    # The runs must do real work, not stall safely: entries get committed under faults...
    assert commits > per * 100
    # ...and every kind of fault and membership change must actually have happened.
    for kind in (
        "crashes",
        "lost_unsigned_tails",
        "truncations",
        "partitions",
        "lost",
        "duplicates",
        "joins",
        "joins_from_snapshot",
        "retired_backups",
        "retired_primaries",
    ):
        assert seen[kind] > 0, f"no {kind} in seeds of chunk {chunk}: {dict(seen)}"


def test_sim_replay_one_seed() -> None:
    """Replays CHARTER_SIM_SEED (default 0) for CHARTER_SIM_STEPS steps (default 2,000)."""
    seed = seed_from_env() or 0
    steps = int(os.environ.get("CHARTER_SIM_STEPS", STEPS))
    sim = Simulation(seed)
    sim.run(steps)
    assert sim.commit_after_heal_ms is not None


def test_sim_is_deterministic_for_a_seed() -> None:
    a, b = Simulation(7), Simulation(7)
    a.run(800)
    b.run(800)
    assert a.committed == b.committed
    assert a.msg_seq == b.msg_seq
    assert sorted(a.primaries.items()) == sorted(b.primaries.items())


@pytest.mark.soak
def test_sim_soak_more_seeds_and_longer_runs_stay_safe() -> None:
    """Seeds beyond the CI range, three times longer (scripts/soak runs soak tests)."""
    first = int(os.environ.get("CHARTER_SIM_SOAK_FIRST", 10_000))
    count = int(os.environ.get("CHARTER_SIM_SOAK_SEEDS", 200))
    committed = 0
    for seed in range(first, first + count):
        sim = Simulation(seed)
        sim.run(3 * STEPS)
        committed += len(sim.committed) - 1
    assert committed > count * 300
