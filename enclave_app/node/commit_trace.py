"""Where a commit's time goes: timestamps of one signature at a time, logged when asked.

A write commits at the first signature after it, once that signature is durable on a
majority. This follows each signature (up to FOLLOWED_MAX at once) through the chain: the primary emits it, its host
reports it durable; each backup receives it, its host reports it durable, the primary hears
the backup's acknowledgement; the primary commits it. Every step is logged as one line,
`event=commit_trace step=STEP seqno=N t_ms=T` (plus `peer=` for acknowledgements), with
T the wall clock in milliseconds, shared by the processes of one machine, so the lines of
all the nodes' logs merge into one timeline (`scripts/commit_trace.py` does that).

Off by default, and then it costs nothing per write: the node holds no `CommitTrace` and
the replication code tests one attribute per Ready, per durable report and per peer message.
Turned on by `CHARTER_COMMIT_TRACE=1` in the enclave's environment (a developer's switch, as
`CHARTER_CAPTURE_CONTROL_FRAMES` is for the host); the lines go to the node's log at INFO.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from charter.consensus import LogEntry

LOG = logging.getLogger(__name__)
ENV = "CHARTER_COMMIT_TRACE"
# Signatures followed at once; older ones are dropped (a bound, not a filter: at most a few
# are between emission and commit).
FOLLOWED_MAX = 32


def from_environment() -> CommitTrace | None:
    """A trace when the environment asks for one, else None."""
    return CommitTrace() if os.environ.get(ENV) == "1" else None


class CommitTrace:
    """The signatures being followed (the latest few) and which of their steps are left."""

    def __init__(self) -> None:
        # seqno -> steps still to log ("durable", "committed", "acked:<peer>" once logged)
        self._open: dict[int, set[str]] = {}

    def _log(self, step: str, seqno: int, peer: str | None = None) -> None:
        t_ms = time.time() * 1000
        if peer is None:
            LOG.info("event=commit_trace step=%s seqno=%d t_ms=%.2f", step, seqno, t_ms)
        else:
            LOG.info(
                "event=commit_trace step=%s seqno=%d t_ms=%.2f peer=%s",
                step,
                seqno,
                t_ms,
                peer[:16],
            )

    def _follow(self, seqno: int) -> None:
        self._open[seqno] = set()
        while len(self._open) > FOLLOWED_MAX:
            del self._open[next(iter(self._open))]

    def emitted(self, seqno: int) -> None:
        """The primary appended a signature."""
        self._follow(seqno)
        self._log("emitted", seqno)

    def received(self, entries: Iterable[LogEntry]) -> None:
        """A backup took these entries from the primary (its Ready)."""
        for entry in entries:
            if entry.signature:
                self._follow(entry.index)
                self._log("received", entry.index)

    def _reached(self, step: str, index: int, peer: str | None = None) -> None:
        key = step if peer is None else f"{step}:{peer}"
        for seqno, done in self._open.items():
            if seqno <= index and key not in done:
                done.add(key)
                self._log(step, seqno, peer)

    def durable(self, durable_index: int) -> None:
        """This node's host reported entries up to `durable_index` durable."""
        self._reached("durable", durable_index)

    def acked(self, peer: str, match_index: int) -> None:
        """The primary heard from `peer`, which now holds entries up to `match_index`."""
        self._reached("acked", match_index, peer)

    def committed(self, commit_index: int) -> None:
        self._reached("committed", commit_index)
        for seqno in [s for s in self._open if s <= commit_index]:
            del self._open[seqno]
