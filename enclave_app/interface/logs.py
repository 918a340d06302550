"""How the node's processes bound the log lines that outsiders can cause.

A line per dropped frame, refused request or failed TLS handshake is what an operator wants
while it is rare, and a way to fill the node's disk when someone sends garbage as fast as
the network carries it. Such lines are logged with `extra=REPEATS_LIMITED`; `RepeatLimit`,
a filter on every handler of the host, the enclave and its frontends, lets through at most
`burst` lines of one kind (logger, level and message template) per `window_s`, counts the
rest, and appends `repeats_suppressed=N` to the first line of that kind let through once its
window has passed. A window that ends with lines held back is also reported by itself once
it ends (`event=log_lines_held count=N`, from the event loop of the process that held
them), so a flood that stopped is counted too. Dropped node-to-node frames are also
counted in `/node/metrics` (`peer_messages_dropped`); for the other kinds the log's counts
are the record. Lines logged without the mark are never held back: the limit is for what
the outside decides, not for the node's own record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Pass as `extra=` to a logging call whose rate an outsider decides.
REPEATS_LIMITED: dict[str, Any] = {"repeats_limited": True}

BURST = 20
WINDOW_S = 10.0
# Kinds are message templates in the code, so few; the bound is for safety only.
KINDS_MAX = 256


class RepeatLimit(logging.Filter):
    """At most `burst` marked records of one kind per `window_s` (see the module)."""

    def __init__(
        self,
        *,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        kinds_max: int = KINDS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        assert burst >= 1 and window_s > 0 and kinds_max >= 1
        self.burst = burst
        self.window_s = window_s
        self.kinds_max = kinds_max
        self.clock = clock
        # kind -> [window start, lines let through in it, lines suppressed in it]
        self._kinds: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self.suppressed = 0  # in all, for tests and a curious operator
        self._report_due = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "repeats_limited", False):
            return True
        # One record reaches each handler (the host logs to stderr and to a file): judge it
        # once.
        verdict: bool | None = getattr(record, "repeats_verdict", None)
        if verdict is None:
            verdict = self._judge(record)
            record.repeats_verdict = verdict
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        state = self._kinds.pop(kind, None)
        carried = 0
        if state is None or now - state[0] >= self.window_s:
            carried = 0 if state is None else int(state[2])
            state = [now, 0.0, 0.0]
        self._kinds[kind] = state
        while len(self._kinds) > self.kinds_max:
            self._kinds.popitem(last=False)
        if state[1] >= self.burst:
            state[2] += 1
            self.suppressed += 1
            self._report_later(self.window_s - (now - state[0]))
            return False
        state[1] += 1
        if carried:
            # The message is a %-template; the count joins it as text without a `%`, so
            # the arguments still fill the template.
            record.msg = f"{record.msg} repeats_suppressed={carried}"
        return True

    def _report_later(self, delay_s: float) -> None:
        """Report held lines once their window ends, from this thread's event loop (every
        marked line is logged from one); without a running loop, the next line of the kind
        carries the count as before."""
        if self._report_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._report_due = True
        loop.call_later(max(0.0, delay_s), self.report_held)

    def report_held(self) -> None:
        """Log, for each kind whose window has ended with lines held back, how many (then
        the next line of that kind carries no count); come back for the windows still open."""
        self._report_due = False
        now = self.clock()
        next_s: float | None = None
        for (name, level, msg), state in list(self._kinds.items()):
            if not state[2]:
                continue
            left_s = self.window_s - (now - state[0])
            if left_s > 0:
                next_s = left_s if next_s is None else min(next_s, left_s)
                continue
            held, state[2] = int(state[2]), 0
            # The template only (code, not what the outsider sent), cut short.
            logging.getLogger(name).log(
                level,
                "event=log_lines_held count=%d window_s=%g of=%r",
                held,
                self.window_s,
                msg[:120],
            )
        if next_s is not None:
            self._report_later(next_s)


def limit_repeats(root: logging.Logger | None = None) -> RepeatLimit:
    """Put one `RepeatLimit` on every handler of `root` (the root logger by default); a
    handler added later is not covered. Returns the filter."""
    limit = RepeatLimit()
    for handler in (root or logging.getLogger()).handlers:
        handler.addFilter(limit)
    return limit
