"""The simulated host of one node: its ledger storage, sealed state and snapshot files.

It does for an in-process `Node` what `host/storage.py` and `enclave_app/main.py` do for a
real one, under the simulator's clock: ledger frames are taken in order by one storage
worker that group-commits (a flush takes a drawn fsync delay, then `Durable` is reported),
`CommitUpTo` flushes first, `ReadEntries` is answered from the stored ledger (flushed or
not, as the real writer's pwrite makes visible), sealed state and snapshot files are
written atomically. A crash keeps what was flushed, and of what was not: whole entries the
page cache happened to write back, then possibly a torn piece of the next one, which the
restart cuts off as `LedgerWriter` does on reopen.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from charter.enclave_app import interface as itf
from charter.ledger.entry import HEADER_SIZE, decode_entry, read_header
from charter.ledger.snapshot import parse_snapshot_file_name, snapshot_file_name

# Bounds (TIGER_STYLE): a simulated disk never holds more than this many entries.
LEDGER_ENTRIES_MAX = 100_000
READ_REPLY_ENTRIES_MAX = 1_000


@dataclass(slots=True)
class Flush:
    done_at_ms: int
    count: int  # entries held when the flush started: those become durable


@dataclass
class SimDisk:
    """What survives a crash: the ledger bytes, sealed state and snapshot files."""

    # The ledger as the writer lays it out: one byte string per entry (concatenated on a
    # real disk; the torn tail is the only place where that matters).
    entries: list[bytes] = field(default_factory=list)
    base_seqno: int = 0  # a node started from a snapshot keeps entries after it only
    durable_count: int = 0
    committed_seqno: int = 0
    torn_tail: bytes = b""
    sealed: bytes | None = None
    snapshots: dict[str, bytes] = field(default_factory=dict)

    @property
    def last_seqno(self) -> int:
        return self.base_seqno + len(self.entries)

    def entry(self, seqno: int) -> bytes | None:
        index = seqno - self.base_seqno - 1
        return self.entries[index] if 0 <= index < len(self.entries) else None

    def latest_committed_snapshot(self) -> tuple[str, bytes] | None:
        best: tuple[int, str] | None = None
        for name in self.snapshots:
            parsed = parse_snapshot_file_name(name)
            if parsed is not None and parsed[2] and (best is None or parsed[0] > best[0]):
                best = (parsed[0], name)
        return None if best is None else (best[1], self.snapshots[best[1]])


class StorageFault(AssertionError):
    """The enclave asked the host for something a real host refuses (a bug in the node)."""


class SimStorage:
    """The storage worker: frames in order, flushes group-committed after a drawn delay."""

    def __init__(self, disk: SimDisk, rng: random.Random, *, fsync_ms_max: int) -> None:
        self.disk = disk
        self.rng = rng
        self.fsync_ms_max = fsync_ms_max
        self.queue: deque[itf.Frame] = deque()
        self.flush: Flush | None = None
        self.replies: list[itf.Frame] = []
        # SendWhenDurable frames waiting for their seqno to be durable, and those now due
        # (the simulation sends them on as SendToNode).
        self.held: list[itf.SendWhenDurable] = []
        self.released: list[itf.SendToNode] = []
        self.last_entry_view = 0
        self.fsyncs = 0

    @property
    def unflushed(self) -> bool:
        return len(self.disk.entries) > self.disk.durable_count

    def submit(self, frame: itf.Frame) -> None:
        self.queue.append(frame)

    def run(self, now_ms: int) -> list[itf.Frame]:
        """Do what the worker gets done by `now_ms`; returns the frames for the enclave."""
        disk = self.disk
        for _ in range(10_000):  # bounded: every pass takes a frame or finishes a flush
            if self.flush is not None:
                if now_ms < self.flush.done_at_ms:
                    break
                disk.durable_count = min(self.flush.count, len(disk.entries))
                durable = disk.base_seqno + disk.durable_count
                view = self.last_entry_view if durable == disk.last_seqno else 0
                self.replies.append(itf.Durable(durable, view))
                self.flush = None
                self.fsyncs += 1
                self._release(durable)
                continue
            if self.queue:
                frame = self.queue[0]
                if isinstance(frame, itf.CommitUpTo) and self.unflushed:
                    self._start_flush(now_ms)
                    continue
                self.queue.popleft()
                self._handle(frame)
                continue
            if self.unflushed:
                self._start_flush(now_ms)
                continue
            self._release(disk.base_seqno + disk.durable_count)
            break
        else:
            raise AssertionError("storage worker did not settle")
        replies, self.replies = self.replies, []
        return replies

    def take_released(self) -> list[itf.SendToNode]:
        released, self.released = self.released, []
        return released

    def _release(self, durable: int) -> None:
        due = [h for h in self.held if h.seqno <= durable]
        if due:
            self.held = [h for h in self.held if h.seqno > durable]
            self.released.extend(itf.SendToNode(h.node_id, h.address, h.payload) for h in due)

    def _start_flush(self, now_ms: int) -> None:
        delay = self.rng.choice((0, 0, 1, self.rng.randrange(self.fsync_ms_max + 1)))
        self.flush = Flush(now_ms + delay, len(self.disk.entries))

    def _handle(self, frame: itf.Frame) -> None:
        disk = self.disk
        if isinstance(frame, itf.WriteEntries):
            for seqno, raw in frame.entries:
                if not disk.entries and disk.base_seqno == 0 and disk.last_seqno == 0:
                    disk.base_seqno = seqno - 1  # a ledger that starts after a snapshot
                held = disk.entry(seqno)
                if held is not None:
                    if held != raw:
                        raise StorageFault(f"a different entry at held seqno {seqno}")
                    continue
                if seqno != disk.last_seqno + 1:
                    raise StorageFault(f"write of seqno {seqno} after {disk.last_seqno}")
                if len(disk.entries) >= LEDGER_ENTRIES_MAX:
                    raise StorageFault("simulated disk is full")
                disk.entries.append(raw)
                self.last_entry_view = decode_entry(raw)[0].view
        elif isinstance(frame, itf.SendWhenDurable):
            self.held.append(frame)
        elif isinstance(frame, itf.Truncate):
            self.held = [h for h in self.held if h.seqno <= frame.seqno]
            if frame.seqno < disk.committed_seqno:
                raise StorageFault(
                    f"truncation to {frame.seqno} below the committed {disk.committed_seqno}"
                )
            keep = max(0, frame.seqno - disk.base_seqno)
            del disk.entries[keep:]
            disk.durable_count = min(disk.durable_count, keep)
            self.last_entry_view = 0
        elif isinstance(frame, itf.CommitUpTo):
            disk.committed_seqno = max(
                disk.committed_seqno, min(frame.seqno, disk.base_seqno + disk.durable_count)
            )
        elif isinstance(frame, itf.ReadEntries):
            first = max(frame.from_seqno, 1)
            entries = []
            for seqno in range(first, min(frame.to_seqno, disk.last_seqno) + 1):
                raw = disk.entry(seqno)
                if raw is None or len(entries) >= READ_REPLY_ENTRIES_MAX:
                    break
                entries.append(raw)
            self.replies.append(itf.EntriesRead(frame.request_id, entries, first))
        elif isinstance(frame, itf.WriteSnapshot):
            pending = snapshot_file_name(frame.seqno, frame.evidence_seqno, False)
            final = snapshot_file_name(frame.seqno, frame.evidence_seqno, frame.committed)
            if frame.committed and not frame.data:
                if pending in disk.snapshots:
                    disk.snapshots[final] = disk.snapshots.pop(pending)
            else:
                disk.snapshots[final] = frame.data
                if frame.committed:
                    disk.snapshots.pop(pending, None)
        elif isinstance(frame, itf.StoreSealed):
            disk.sealed = frame.blob
        else:
            raise StorageFault(f"not a storage frame: {type(frame).__name__}")

    def crash(self) -> None:
        """kill -9: flushed entries stay; of the rest, a prefix may have reached the disk,
        and the entry after it may be torn (cut off again on restart)."""
        disk = self.disk
        unflushed = len(disk.entries) - disk.durable_count
        written_back = self.rng.randrange(unflushed + 1) if unflushed else 0
        kept = disk.durable_count + written_back
        disk.torn_tail = b""
        if kept < len(disk.entries) and self.rng.random() < 0.5:
            raw = disk.entries[kept]
            disk.torn_tail = raw[: self.rng.randrange(1, len(raw))]
        del disk.entries[kept:]
        disk.durable_count = len(disk.entries)
        self.queue.clear()
        self.flush = None

    def recover(self) -> int:
        """Reopen after a crash: a torn last entry is found and cut off (as LedgerWriter
        does); returns how many torn bytes were dropped."""
        disk = self.disk
        torn = disk.torn_tail
        disk.torn_tail = b""
        if len(torn) >= HEADER_SIZE:
            # The header says how long the entry should be: fewer bytes follow, so it is cut.
            _, _, size = read_header(torn)
            assert HEADER_SIZE + size > len(torn), "a torn entry is shorter than it says"
        return len(torn)
