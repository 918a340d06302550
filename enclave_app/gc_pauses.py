"""The enclave's garbage collector: what start-up built is frozen out of it, and its pauses
are counted for `/node/metrics`.

A long-running enclave holds its start-up objects (modules, the app, routes, governance) for
good; left in the collector, every full collection walks them again, and a full collection
of the young heap right after start-up took up to 237 ms of wall time under load (see
docs/performance.md). `freeze_startup` moves them to the permanent generation once the node
runs. The pause counters show what the collector still costs: collections, their summed and
longest pause, per process (the collector is process-wide).
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcPauses:
    """Counts the collector's runs and pauses (installed once per process)."""

    def __init__(self) -> None:
        self.collections = 0
        self.pause_us_total = 0
        self.pause_us_max = 0
        self._started: int | None = None

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
            return
        if self._started is None:
            return
        pause_us = (time.perf_counter_ns() - self._started) // 1000
        self._started = None
        self.collections += 1
        self.pause_us_total += pause_us
        self.pause_us_max = max(self.pause_us_max, pause_us)

    def metrics(self) -> dict[str, int]:
        return {
            "gc_collections": self.collections,
            "gc_pause_us": self.pause_us_total,
            "gc_pause_max_us": self.pause_us_max,
            "gc_frozen_objects": gc.get_freeze_count(),
        }


PAUSES = GcPauses()


def install() -> GcPauses:
    """Start counting the collector's pauses in this process (idempotent)."""
    if PAUSES.on_gc not in gc.callbacks:
        gc.callbacks.append(PAUSES.on_gc)
    return PAUSES


def freeze_startup() -> int:
    """Collect start-up garbage once, then move every surviving object to the permanent
    generation, out of later collections' walks; returns how many objects were frozen.

    That one collection runs before the node serves anyone and is not counted: the pause
    counters are about the collector while the node serves (it alone took ~20 ms, which
    `gc_pause_max_us` would otherwise report forever)."""
    counting = PAUSES.on_gc in gc.callbacks
    if counting:
        gc.callbacks.remove(PAUSES.on_gc)
    try:
        gc.collect()
        gc.freeze()
    finally:
        if counting:
            gc.callbacks.append(PAUSES.on_gc)
    return gc.get_freeze_count()
