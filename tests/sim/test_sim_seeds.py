"""The seeded whole-node simulator over many seeds (node_sim.py; docs/internals.md).

Each seed starts a service, joins nodes, then runs a few hundred steps of client writes,
governance, joins, retirements (learners included), kill -9 and restarts, snapshots, lossy
and partitioned networks, checking the safety properties after every step, and finally heals
everything and checks that the service commits again and every committed write reads back.
A failing seed raises SimulationFailure naming the seed and the command that replays it.
The suite sweeps the first seeds of each way (SEEDS, RELEASED_SEEDS); scripts/soak sweeps
the rest of the first 200 of both, and 5,000 longer runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from node_sim import Simulation
from sim_paths import HERE, seed_from_env, steps_from_env

SEEDS = 40  # in the suite (scripts/test); soak runs seeds SEEDS..SWEEP_SEEDS - 1 too
STEPS = 300
PER_CHUNK = 10  # seeds per test, so that pytest-xdist spreads them over the cores
SWEEP_SEEDS = 200
SOAK_SEEDS = 5_000
SOAK_STEPS = 1_000
SOAK_CHUNKS = 50


RELEASED_SEEDS = 20  # the first seeds again, with the hosts releasing backups' answers


def _run_chunk(
    first: int,
    count: int,
    steps: int,
    name: str,
    *,
    hosts_release_answers: bool = False,
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for seed in range(first, first + count):
        sim = Simulation(seed, test_name=name, hosts_release_answers=hosts_release_answers)
        sim.run(steps)
        seen.update(sim.stats)
    return seen


@pytest.mark.parametrize("chunk", range(SEEDS // PER_CHUNK))
def test_sim_safety_holds_and_service_recovers_for_every_seed(chunk: int) -> None:
    _sweep(chunk)


@pytest.mark.soak
@pytest.mark.parametrize("chunk", range(SEEDS // PER_CHUNK, SWEEP_SEEDS // PER_CHUNK))
def test_sim_safety_holds_and_service_recovers_for_more_seeds(chunk: int) -> None:
    _sweep(chunk)


def _sweep(chunk: int) -> None:
    seen = _run_chunk(chunk * PER_CHUNK, PER_CHUNK, STEPS, "test_sim_replay_one_seed")
    # The runs must do real work under real faults, not stall safely.
    for kind in ("writes_committed", "crashes", "restarts", "joins", "lost", "forwarded"):
        assert seen[kind] > 0, f"no {kind} in chunk {chunk}: {dict(seen)}"


@pytest.mark.parametrize("chunk", range(RELEASED_SEEDS // PER_CHUNK))
def test_sim_safety_holds_and_service_recovers_when_hosts_send_backups_answers(chunk: int) -> None:
    _released_sweep(chunk)


@pytest.mark.soak
@pytest.mark.parametrize("chunk", range(RELEASED_SEEDS // PER_CHUNK, SWEEP_SEEDS // PER_CHUNK))
def test_sim_safety_holds_and_service_recovers_when_hosts_send_answers_for_more_seeds(
    chunk: int,
) -> None:
    _released_sweep(chunk)


def _released_sweep(chunk: int) -> None:
    """What nodes do (`RaftConfig.ack_released_on_durable`): a backup's answer to new entries
    goes to its host with them, which sends it after the fsync and drops it on a truncation
    below it; the backup hands both to its host before it applies the entries
    (`NodeCore.hand_off`). The seeds' runs differ from the sweep above (the answers leave earlier), so
    the same seeds explore other interleavings; a crash loses the answers still held."""
    seen = _run_chunk(
        chunk * PER_CHUNK,
        PER_CHUNK,
        STEPS,
        "test_sim_replay_one_seed_with_released_answers",
        hosts_release_answers=True,
    )
    for kind in ("writes_committed", "crashes", "restarts", "lost", "hand_offs"):
        assert seen[kind] > 0, f"no {kind} in chunk {chunk}: {dict(seen)}"


@pytest.mark.soak
@pytest.mark.parametrize("chunk", range(SOAK_CHUNKS))
def test_sim_soak_many_long_seeds(chunk: int) -> None:
    per = SOAK_SEEDS // SOAK_CHUNKS
    _run_chunk(10_000 + chunk * per, per, SOAK_STEPS, "test_sim_replay_one_seed")


def test_sim_replay_one_seed() -> None:
    """Replays CHARTER_SIM_SEED (default 0) for CHARTER_SIM_STEPS steps (default 300)."""
    seed = seed_from_env() or 0
    Simulation(seed, test_name="test_sim_replay_one_seed").run(steps_from_env(STEPS))


def test_sim_replay_one_seed_with_released_answers() -> None:
    """`test_sim_replay_one_seed` with the hosts sending the backups' answers."""
    seed = seed_from_env() or 0
    sim = Simulation(
        seed, test_name="test_sim_replay_one_seed_with_released_answers", hosts_release_answers=True
    )
    sim.run(steps_from_env(STEPS))


def _ledgers_digest(seed: int, steps: int) -> str:
    """SHA-256 over every node's stored ledger, sealed state aside, after a whole run."""
    sim = Simulation(seed)
    digests: list[str] = []
    original_close = sim.close

    def keep_ledgers() -> None:
        for slot in sim.slots:
            digest = hashlib.sha256()
            for raw in slot.disk.entries:
                digest.update(hashlib.sha256(raw).digest())
            digests.append(f"{slot.name}:{slot.disk.base_seqno}:{digest.hexdigest()}")
        original_close()

    sim.close = keep_ledgers  # type: ignore[method-assign]
    sim.run(steps)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def test_same_seed_gives_byte_identical_ledgers() -> None:
    assert _ledgers_digest(3, 150) == _ledgers_digest(3, 150)
    assert _ledgers_digest(3, 150) != _ledgers_digest(4, 150), "the seed changes nothing"


def test_same_seed_gives_byte_identical_ledgers_in_another_process() -> None:
    """A printed seed replays elsewhere: a process with another string-hash seed (set and
    dict orders differ) writes the same ledgers."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "from test_sim_seeds import _ledgers_digest; print(_ledgers_digest(5, 150))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1 and _ledgers_digest(5, 150) in outputs
