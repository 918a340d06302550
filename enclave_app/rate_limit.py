"""Per-source token buckets, for requests anyone may send (joins) and that cost the service.

Bounded: at most `sources_max` sources are tracked; when full, the source idle the longest
is forgotten (it starts again with a full bucket, which is the generous direction).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """`allow(source, now_s)`: True and one token taken, or False when the bucket is empty."""

    def __init__(self, *, rate_per_s: float, burst: int, sources_max: int = 4096) -> None:
        assert rate_per_s > 0 and burst >= 1 and sources_max >= 1
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.sources_max = sources_max
        # source -> (tokens, time of the last update in s), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now_s: float) -> bool:
        tokens, last_s = self._buckets.pop(source, (float(self.burst), now_s))
        # A clock that steps back refills nothing (and takes nothing away).
        tokens = min(float(self.burst), tokens + max(0.0, now_s - last_s) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, max(now_s, last_s))
        while len(self._buckets) > self.sources_max:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
