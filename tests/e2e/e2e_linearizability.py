"""A bounded linearizability checker for histories of single-register operations per key.

Wing & Gong's search with Lowe's memoisation (as in Knossos/Porcupine): try every operation
that may take effect next (no pending operation completed before it was invoked), apply it to
the register model, recurse, and remember the (set of done operations, register value) pairs
already explored. Keys are independent registers and linearizability is local, so each key's
sub-history is checked on its own.

An operation whose outcome the client does not know (an error or a timeout) is a "maybe": it
has no completion time, may take effect at any point after its invocation, or never.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# A bound on explored states per key, so a pathological history fails fast, not slowly.
STATES_MAX = 2_000_000
OPS_PER_KEY_MAX = 400


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on `key`: a write of `value`, or a read that returned `value`
    (None = the key was absent). `complete_s` None = outcome unknown (writes only)."""

    client: int
    key: int
    kind: Literal["write", "read"]
    value: str | None
    invoke_s: float
    complete_s: float | None

    def __post_init__(self) -> None:
        assert self.complete_s is None or self.complete_s >= self.invoke_s
        assert self.kind == "write" or self.complete_s is not None, (
            "a read either returned or is dropped"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    key: int | None = None
    explored_states: int = 0
    detail: str = ""


def check_registers(ops: Iterable[Op], initial: str | None = None) -> Verdict:
    """Linearizable per key against a register model starting at `initial`?"""
    by_key: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    explored = 0
    for key, key_ops in sorted(by_key.items()):
        ok, states = _check_one(key_ops, initial)
        explored += states
        if not ok:
            return Verdict(False, key, explored, _describe(key_ops))
    return Verdict(True, None, explored)


def _check_one(ops: list[Op], initial: str | None) -> tuple[bool, int]:
    assert len(ops) <= OPS_PER_KEY_MAX, f"{len(ops)} operations on one key is over the bound"
    ops = sorted(ops, key=lambda o: o.invoke_s)
    n = len(ops)
    inf = float("inf")
    completes = [inf if o.complete_s is None else o.complete_s for o in ops]
    required = 0
    for i, o in enumerate(ops):
        if o.complete_s is not None:
            required |= 1 << i
    seen: set[tuple[int, str | None]] = set()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * n + 100))

    def search(done: int, state: str | None) -> bool:
        if done & required == required:
            return True
        if (done, state) in seen:
            return False
        if len(seen) >= STATES_MAX:
            raise AssertionError(
                f"linearizability search over {STATES_MAX} states: history too hard"
            )
        seen.add((done, state))
        # The earliest completion among operations not yet linearized bounds which can go next.
        frontier = min(completes[i] for i in range(n) if not done >> i & 1)
        for i in range(n):
            if done >> i & 1:
                continue
            op = ops[i]
            if op.invoke_s > frontier:
                break  # sorted by invocation: no later operation can go next either
            if op.kind == "write":
                if search(done | 1 << i, op.value):
                    return True
            elif op.value == state and search(done | 1 << i, state):
                return True
        return False

    try:
        return search(0, initial), len(seen)
    finally:
        sys.setrecursionlimit(limit)


def _describe(ops: list[Op], last: int = 40) -> str:
    lines = []
    for o in sorted(ops, key=lambda o: o.invoke_s)[:last]:
        end = "?" if o.complete_s is None else f"{o.complete_s:.3f}"
        lines.append(f"  c{o.client} {o.kind:5} {o.value!s:24} [{o.invoke_s:.3f}, {end}]")
    return "\n".join(lines)
