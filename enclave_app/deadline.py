"""One event-loop timer for the node's next deadline, on the host's clock.

The node's core reads no clock: it learns the time from `tick(now_ms)`, which the host
sends every `tick_ms` (its wall clock, untrusted, in milliseconds). Something due between
two ticks, such as a signature `signatures.delay_ms` after the last one, would wait for the
next host tick that gets through to the enclave; on a loaded machine those come late. The
runtime asks the node for its next deadline after every turn (`Node.next_deadline_ms`) and
arms this timer for it; when it fires, the node is told (`Node.deadline_reached`) the host
clock extrapolated by the loop's own monotonic clock from the last host tick. The host keeps
the clock: a host tick resets the extrapolation, nothing fires before the first one, and
Raft's timers still move only with the host's ticks.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# The loop's timers are of millisecond grain (uvloop): one may run this much before its time,
# and is then taken as on time rather than armed again for a millisecond.
TIMER_SLACK_MS = 2


class DeadlineTimer:
    """At most one armed loop timer; `fire(now_ms)` is called when it runs out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[int], None]) -> None:
        self._loop = loop
        self._fire = fire
        # host clock (ms, from the latest host tick) minus the loop's clock when it arrived
        self._offset_ms: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline_ms: int | None = None

    @property
    def deadline_ms(self) -> int | None:
        """The deadline the timer is armed for (None when disarmed)."""
        return self._deadline_ms

    def host_tick(self, now_ms: int) -> None:
        """The host's clock read `now_ms` at its latest tick."""
        self._offset_ms = now_ms - self._loop.time() * 1000

    def now_ms(self) -> int | None:
        """The host clock extrapolated to now (None before the first host tick). Rounded
        up, so a timer the loop runs a hair early still finds its deadline reached."""
        if self._offset_ms is None:
            return None
        return math.ceil(self._loop.time() * 1000 + self._offset_ms)

    def arm(self, deadline_ms: int | None) -> None:
        """Fire at `deadline_ms` (host clock), replacing any earlier arming; None disarms.
        Arming the deadline already armed changes nothing, so calling this every turn costs
        a comparison."""
        if deadline_ms == self._deadline_ms:
            return
        self.cancel()
        if deadline_ms is None or self._offset_ms is None:
            return
        self._deadline_ms = deadline_ms
        when_s = (deadline_ms - self._offset_ms) / 1000
        self._handle = self._loop.call_at(when_s, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._deadline_ms = None

    def _run(self) -> None:
        deadline_ms = self._deadline_ms
        self._handle = None
        self._deadline_ms = None
        now_ms = self.now_ms()
        assert now_ms is not None and deadline_ms is not None, "armed only after a host tick"
        if now_ms < deadline_ms - TIMER_SLACK_MS:
            # A host tick that came in late since the arming moved the extrapolation back:
            # wait until the host clock, as now known, reaches the deadline (a signature's
            # time is never ahead of that clock).
            self.arm(deadline_ms)
            return
        self._fire(max(now_ms, deadline_ms))
