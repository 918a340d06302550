"""The in-memory Raft log: entries held as objects, plus small indexes over them.

Indexes kept alongside the entries, so that no hot path walks the log one entry at a time:
term starts (for term lookups below the compaction point and the fast back-off hint),
signature indices (commit happens only there), configuration history (a configuration is in
force from the moment it is appended, and reverts on truncation), and cumulative byte sizes
(to cut batches and bound bytes in flight).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter

from charter.consensus.errors import ConsensusError
from charter.consensus.types import LogEntry

_data = attrgetter("data")


class RaftLog:
    """Entries base_index+1 .. last_index. Entries at or below `first_index - 1` were
    compacted (or precede the snapshot the node started from)."""

    __slots__ = (
        "_base_index",
        "_base_term",
        "_config_indices",
        "_configs",
        "_cum_bytes",
        "_entries",
        "_sig_indices",
        "_snapshot_index",
        "_term_start_indices",
        "_term_start_terms",
    )

    def __init__(self, base_index: int, base_term: int, configuration: frozenset[str]) -> None:
        assert base_index >= 0 and base_term >= 0
        self._base_index = base_index
        self._base_term = base_term
        # Lowest index whose term we know: the start point. Compaction keeps term starts.
        self._snapshot_index = base_index
        self._entries: list[LogEntry] = []
        self._cum_bytes: list[int] = [0]
        self._term_start_indices: list[int] = [base_index]
        self._term_start_terms: list[int] = [base_term]
        self._sig_indices: list[int] = [base_index] if base_index else []
        self._config_indices: list[int] = [base_index]
        self._configs: list[frozenset[str]] = [configuration]

    # -- reading -----------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._base_term

    @property
    def first_index(self) -> int:
        """Lowest index still held in memory."""
        return self._base_index + 1

    @property
    def start_index(self) -> int:
        """The snapshot point the log starts after: no term is known below it."""
        return self._snapshot_index

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if unknown (beyond the end or before start)."""
        if index > self._base_index:
            offset = index - self._base_index - 1
            return self._entries[offset].term if offset < len(self._entries) else None
        if index == self._base_index:
            return self._base_term
        if index == 0:
            # Before every log, whatever it starts after: a peer with an empty log is sent
            # entries from seqno 1 anchored here (a recovered service's primary starts its
            # log after the old ledger, and a joiner without a snapshot needs all of it).
            return 0
        if index < self._snapshot_index:
            return None
        # Term starts record the first index of each term, with the start point first.
        k = bisect.bisect_right(self._term_start_indices, index) - 1
        return self._term_start_terms[k]

    def entry(self, index: int) -> LogEntry:
        assert self._base_index < index <= self.last_index, index
        return self._entries[index - self._base_index - 1]

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries lo..hi inclusive (must be held in memory)."""
        assert self._base_index < lo and hi <= self.last_index, (lo, hi)
        b = self._base_index + 1
        return self._entries[lo - b : hi - b + 1]

    def batch_end(self, lo: int, max_entries: int, max_bytes: int) -> int:
        """Highest index hi such that lo..hi fits the bounds (always at least lo itself)."""
        assert self._base_index < lo <= self.last_index
        b = self._base_index + 1
        hi = min(self.last_index, lo + max_entries - 1)
        limit = self._cum_bytes[lo - b] + max_bytes
        if self._cum_bytes[hi - b + 1] > limit:
            k = bisect.bisect_right(self._cum_bytes, limit, lo - b + 1, hi - b + 2) - 1
            hi = max(lo, k - 1 + b)
        return hi

    def bytes_between(self, lo: int, hi: int) -> int:
        """Total data bytes of entries lo..hi held in memory."""
        b = self._base_index + 1
        return self._cum_bytes[hi - b + 1] - self._cum_bytes[lo - b]

    def first_index_of_term_at(self, index: int) -> int:
        """First index of the run of entries with the same term as `index` (fast back-off)."""
        k = bisect.bisect_right(self._term_start_indices, index) - 1
        return max(self._term_start_indices[k], self._snapshot_index + 1)

    def last_index_of_term(self, term: int) -> int | None:
        """Highest index whose entry has `term`, or None if the log holds no such term."""
        k = bisect.bisect_left(self._term_start_terms, term)
        if k == len(self._term_start_terms) or self._term_start_terms[k] != term:
            return None
        if k + 1 < len(self._term_start_indices):
            return self._term_start_indices[k + 1] - 1
        return self.last_index

    def last_signature_at_or_below(self, index: int) -> int:
        """Highest signature index <= index (the start point counts), or 0."""
        k = bisect.bisect_right(self._sig_indices, index)
        return self._sig_indices[k - 1] if k else 0

    @property
    def configuration(self) -> frozenset[str]:
        return self._configs[-1]

    @property
    def configuration_index(self) -> int:
        return self._config_indices[-1]

    def configuration_at(self, index: int) -> frozenset[str]:
        k = bisect.bisect_right(self._config_indices, index) - 1
        return self._configs[max(k, 0)]

    def was_voter_before_latest(self, node_id: str) -> bool:
        """Did a configuration before the latest include `node_id`? (A learner that was never
        a voter is joining, not retiring.)"""
        return any(node_id in c for c in self._configs[:-1])

    def configurations_after(self, index: int) -> list[tuple[int, frozenset[str]]]:
        k = bisect.bisect_right(self._config_indices, index)
        return list(zip(self._config_indices[k:], self._configs[k:], strict=True))

    # -- writing -----------------------------------------------------------------------------
    def append(self, entry: LogEntry) -> None:
        self.extend((entry,))

    def append_new(
        self, term: int, data: bytes, signature: bool, configuration: frozenset[str] | None
    ) -> LogEntry:
        """Create and append the next entry (the primary's hot path: one call per entry)."""
        entries = self._entries
        index = self._base_index + len(entries) + 1
        if term != self._term_start_terms[-1]:
            if term < self._term_start_terms[-1]:
                raise ConsensusError("view goes backwards along the log", code="LogOrder")
            self._term_start_indices.append(index)
            self._term_start_terms.append(term)
        entry = LogEntry(index, term, data, signature, configuration)
        entries.append(entry)
        cum = self._cum_bytes
        cum.append(cum[-1] + len(data))
        if signature:
            self._sig_indices.append(index)
        if configuration is not None:
            self._config_indices.append(index)
            self._configs.append(configuration)
        return entry

    def extend(self, entries: Sequence[LogEntry]) -> None:
        """Append entries that follow on from the last one, in bulk (a backup's hot path)."""
        if not entries:
            return
        if entries[0].index != self.last_index + 1:
            raise ConsensusError("entries do not follow on from the log", code="LogOrder")
        starts, terms = self._term_start_indices, self._term_start_terms
        if entries[0].term == entries[-1].term == terms[-1]:
            pass  # the common case: one view throughout, no new term start
        else:
            prev = terms[-1]
            for e in entries:
                if e.term != prev:
                    if e.term < prev:
                        raise ConsensusError("view goes backwards along the log", code="LogOrder")
                    starts.append(e.index)
                    terms.append(e.term)
                    prev = e.term
        self._entries.extend(entries)
        cum = self._cum_bytes
        cum.extend(accumulate(map(len, map(_data, entries)), initial=cum[-1]))
        del cum[-len(entries) - 1]  # accumulate repeated the starting total
        self._sig_indices.extend([e.index for e in entries if e.signature])
        configs = [e for e in entries if e.configuration is not None]
        for e in configs:
            assert e.configuration is not None
            self._config_indices.append(e.index)
            self._configs.append(e.configuration)

    def truncate(self, index: int) -> None:
        """Drop every entry above `index` (which must be held or be the base point)."""
        assert self._base_index <= index <= self.last_index, (index, self._base_index)
        keep = index - self._base_index
        del self._entries[keep:]
        del self._cum_bytes[keep + 1 :]
        while self._term_start_indices[-1] > index:
            self._term_start_indices.pop()
            self._term_start_terms.pop()
        while self._sig_indices and self._sig_indices[-1] > index:
            self._sig_indices.pop()
        while self._config_indices[-1] > index:
            self._config_indices.pop()
            self._configs.pop()

    def compact(self, index: int) -> None:
        """Forget entries up to `index` from memory (the caller keeps them on disk)."""
        assert self._base_index <= index <= self.last_index
        drop = index - self._base_index
        self._base_term = self.term_at(index) or 0
        del self._entries[:drop]
        del self._cum_bytes[:drop]
        self._base_index = index
