"""The linearizability checker itself, on hand-made histories whose verdict is known."""

from __future__ import annotations

import random

import pytest
from e2e_linearizability import Op, check_registers

pytestmark = pytest.mark.e2e


def w(c: int, v: str, start: float, end: float | None, key: int = 1) -> Op:
    return Op(c, key, "write", v, start, end)


def r(c: int, v: str | None, start: float, end: float, key: int = 1) -> Op:
    return Op(c, key, "read", v, start, end)


def test_sequential_history_is_linearizable() -> None:
    assert check_registers([r(0, None, 0, 1), w(0, "a", 2, 3), r(1, "a", 4, 5)]).ok


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    base = [w(0, "a", 0, 1), w(0, "b", 2, 6)]
    assert check_registers([*base, r(1, "a", 3, 4)]).ok
    assert check_registers([*base, r(1, "b", 3, 4)]).ok


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    verdict = check_registers([w(0, "a", 0, 1), w(0, "b", 2, 3), r(1, "a", 4, 5)])
    assert not verdict.ok and verdict.key == 1
    assert "read" in verdict.detail


def test_reads_going_back_in_time_are_not_linearizable() -> None:
    # Both writes are concurrent with both reads, but once "b" was seen "a" cannot come back.
    ops = [w(0, "a", 0, 10), w(1, "b", 0, 10), r(2, "b", 1, 2), r(2, "a", 3, 4), r(2, "b", 5, 6)]
    assert not check_registers(ops).ok


def test_maybe_write_may_take_effect_late_or_never() -> None:
    assert check_registers([w(0, "a", 0, None), r(1, None, 1, 2), r(1, "a", 30, 31)]).ok
    assert check_registers([w(0, "a", 0, None), r(1, None, 1, 2), r(1, None, 30, 31)]).ok
    # ... but not before it was invoked.
    assert not check_registers([r(1, "a", 0, 1), w(0, "a", 2, None)]).ok


def test_keys_are_independent_registers() -> None:
    ops = [
        w(0, "a", 0, 1, key=1),
        w(0, "x", 0, 1, key=2),
        r(1, "a", 2, 3, key=1),
        r(1, None, 2, 3, key=3),
    ]
    assert check_registers(ops).ok
    assert not check_registers([*ops, r(1, "a", 4, 5, key=2)]).ok


def test_many_concurrent_clients_are_checked_within_budget() -> None:
    # A real sequential execution, timestamps then blurred by overlap: always linearizable.
    rng = random.Random(7)
    ops, state, clock = [], None, 0.0
    for i in range(150):
        start = clock + rng.random()
        end = start + rng.random() * 3
        if rng.random() < 0.5:
            state = f"v{i}"
            ops.append(Op(i % 5, 1, "write", state, start, end if rng.random() > 0.05 else None))
        else:
            ops.append(Op(i % 5, 1, "read", state, start, end))
        clock = start
    verdict = check_registers(ops)
    assert verdict.ok, verdict.detail
