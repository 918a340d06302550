"""The host's disk: ledger chunks, snapshots and the sealed blob, for the enclave's frames.

Everything here is blocking file I/O; `host.main` calls it from one storage task (in a thread
for the slow parts) so operations stay in the order the enclave sent them. Nothing read from
disk is trusted by the enclave, which checks entries against its Merkle tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from charter.enclave_app.interface import (
    READ_REPLY_BYTES_MAX,
    REPLY_ENTRY_OVERHEAD_BYTES,
    SNAPSHOT_READ_BYTES_MAX,
    CommitUpTo,
    Durable,
    EntriesRead,
    Frame,
    OperatorFileRead,
    ReadEntries,
    ReadLatestSnapshot,
    ReadOperatorFile,
    SendWhenDurable,
    SnapshotRead,
    StoreSealed,
    Truncate,
    WriteEntries,
    WriteSnapshot,
    parse_snapshot_name,
    snapshot_file_name,
)
from charter.host.ledger_files import (
    ChunkSources,
    CleanupReport,
    FilesCleanup,
    committed_snapshots,
    read_chunk_entries,
)
from charter.ledger.chunks import (
    LedgerReader,
    LedgerWriter,
    parse_chunk_name,
    write_all_at,
    write_failure,
)
from charter.ledger.entry import HEADER_SIZE, read_header
from charter.ledger.errors import LedgerError, LedgerWriteError

_log = logging.getLogger(__name__)
# The host's side of the commit trace (enclave_app/node/commit_trace.py): one line per fsync
# with the seqno it made durable and when, so the time to the enclave hearing it shows.
COMMIT_TRACE_ENV = "CHARTER_COMMIT_TRACE"
T = TypeVar("T")

SEALED_BYTES_MAX = 16 * 1024 * 1024
SEALED_FILE_NAME = "sealed.bin"
# Entry header (8) + GCM tag (16) + IV seqno (8): the IV's u32 view follows.
_IV_VIEW_OFFSET = 8 + 16 + 8
STORAGE_QUEUE_FRAMES_MAX = 1024
# Node messages held for their seqno to be durable (one per frame of entries a backup
# received); past this the oldest is dropped and logged, as a lost message would be.
HELD_NODE_MESSAGES_MAX = 1024
# How the enclave names a ledger entry it refused (enclave_app/node.py `replay`).
_ENTRY_SEQNO = re.compile(r"ledger entry seqno (\d{1,19})\b")
STORAGE_FRAMES = (
    WriteEntries,
    SendWhenDurable,
    Truncate,
    CommitUpTo,
    ReadEntries,
    WriteSnapshot,
    ReadLatestSnapshot,
    StoreSealed,
    ReadOperatorFile,
)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entry_view(raw: bytes) -> int:
    """The view in a ledger entry's GCM IV (0 if the entry is too short to hold one)."""
    if len(raw) < _IV_VIEW_OFFSET + 4:
        return 0
    return int.from_bytes(raw[_IV_VIEW_OFFSET : _IV_VIEW_OFFSET + 4], "little") & 0x7FFFFFFF


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename over `path`, fsync the directory: all or nothing after a crash."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all_at(fd, data, 0, path=str(tmp), what="writing")
        try:
            os.fsync(fd)
        except OSError as e:
            raise write_failure(e, path=str(tmp), what="syncing", needed_bytes=0) from e
    except LedgerWriteError:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()  # free what the partial copy took
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


TMP_SUFFIX = ".tmp"


def remove_leftovers(directory: Path, is_leftover: Callable[[str], bool], what: str) -> list[str]:
    """Delete the regular files of `directory` whose names `is_leftover` picks (logged as
    `what`); returns their names."""
    removed = []
    for entry in os.listdir(directory):
        if not is_leftover(entry):
            continue
        path = directory / entry
        if not path.is_file() or path.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(entry)
            _log.warning("removed %s path=%s", what, path)
    return removed


def unfinished_write_of(names: Callable[[str], bool]) -> Callable[[str], bool]:
    """Picks what a `write_atomically` killed before its rename left: `<name>.tmp` for a
    `name` that `names` holds (never read, never renamed into place: only disk taken)."""
    return lambda entry: entry.endswith(TMP_SUFFIX) and names(entry[: -len(TMP_SUFFIX)])


def uncommitted_snapshot(entry: str) -> bool:
    """An uncommitted snapshot file. At start, one an earlier run left: only the run that
    wrote it could commit it (its evidence was pending in that run's memory), none is ever
    served or read, and each, as large as the state, would otherwise stay for good."""
    parsed = parse_snapshot_name(entry)
    return parsed is not None and not parsed[2]


def _read_limited(path: Path, limit_bytes: int) -> bytes | None:
    """File contents, or None (logged) when the file is larger than `limit_bytes`."""
    with path.open("rb") as f:
        data = f.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        _log.error("file too large file=%s limit_bytes=%d", path.name, limit_bytes)
        return None
    return data


class Storage:
    """Ledger writer + snapshot directory + sealed blob of one node's workspace."""

    def __init__(
        self,
        *,
        workspace: Path,
        ledger_dir: Path,
        snapshots_dir: Path,
        chunk_size_bytes: int,
        read_only_dirs: list[Path] | None = None,
        archive_dir: Path | None = None,
        max_snapshots: int | None = None,
    ) -> None:
        self.workspace = workspace
        self.ledger_dir = ledger_dir
        self.snapshots_dir = snapshots_dir
        for d in (workspace, ledger_dir, snapshots_dir):
            d.mkdir(parents=True, exist_ok=True)
        # A host killed mid-write leaves its temporary file (a snapshot, the sealed state):
        # each crash would otherwise keep one for good.
        is_snapshot = unfinished_write_of(lambda name: parse_snapshot_name(name) is not None)
        remove_leftovers(snapshots_dir, is_snapshot, "an unfinished write")
        is_sealed = unfinished_write_of(lambda name: name == SEALED_FILE_NAME)
        remove_leftovers(workspace, is_sealed, "an unfinished write")
        remove_leftovers(snapshots_dir, uncommitted_snapshot, "a snapshot left uncommitted")
        self._writer = LedgerWriter(str(ledger_dir), chunk_size_bytes=chunk_size_bytes)
        # Entries the ledger directory no longer (or never) held: read-only dirs, archive.
        elsewhere = list(read_only_dirs or [])
        if archive_dir is not None:
            elsewhere.append(archive_dir)
        self.sources = ChunkSources(elsewhere)
        self.cleanup = FilesCleanup(
            writer=self._writer,
            ledger_dir=ledger_dir,
            snapshots_dir=snapshots_dir,
            max_snapshots=max_snapshots,
            archive_dir=archive_dir,
        )
        self.last_entry_view = 0
        self._unflushed = False
        self.durable_seqno = self._writer.durable_seqno

    # -- ledger --------------------------------------------------------------------------

    @property
    def last_seqno(self) -> int:
        return self._writer.last_seqno

    @property
    def needs_flush(self) -> bool:
        return self._unflushed

    def write_entries(self, entries: list[tuple[int, bytes]]) -> bool:
        """Append entries (no fsync). False (logged) if they do not follow the ledger.

        Re-sending an entry the ledger already holds byte for byte is harmless and skipped;
        a different entry at a held seqno needs a `Truncate` first.
        """
        writer = self._writer
        held = 0  # a leading run of entries already written (sent again)
        for seqno, raw in entries:
            if 0 < seqno < writer.first_seqno and seqno <= writer.committed_seqno:
                # Committed here once, archived and removed by files_cleanup: nothing to
                # compare it with, and nothing to write.
                held += 1
            elif 0 < seqno <= writer.last_seqno and self._holds(seqno, raw):
                held += 1
            else:
                break
        new = entries[held:]
        if not new:
            return True
        last_before = writer.last_seqno
        refused: Exception | None = None
        try:
            writer.append_many(new)  # one pwrite for the entries of one chunk
        except (ValueError, AssertionError) as e:
            refused = e
        finally:  # a failed write (LedgerWriteError) too may follow entries it wrote
            # The entries are contiguous: those up to the writer's last seqno were taken.
            last = writer.last_seqno
            written = 0 if last == last_before else last - new[0][0] + 1
            if written:
                self.last_entry_view = entry_view(new[written - 1][1])
                self._unflushed = True
        if refused is not None:
            _log.error(
                "rejected ledger write seqno=%d last_seqno=%d reason=%r",
                new[written][0],
                writer.last_seqno,
                str(refused),
            )
            return False
        return True

    def _holds(self, seqno: int, raw: bytes) -> bool:
        try:
            return LedgerReader(str(self.ledger_dir)).get(seqno) == raw
        except (KeyError, LedgerError):
            return False

    def flush(self) -> int:
        """fsync what was appended (one group); returns the highest durable seqno."""
        self.durable_seqno = self._writer.flush()
        assert self.durable_seqno == self._writer.last_seqno
        self._unflushed = False
        return self.durable_seqno

    def truncate(self, seqno: int) -> bool:
        if seqno < self._writer.committed_seqno:
            _log.error(
                "refused truncation below commit seqno=%d committed_seqno=%d",
                seqno,
                self._writer.committed_seqno,
            )
            return False
        self._writer.truncate(seqno)
        self.last_entry_view = 0  # the view at the new end is not known without a read
        self.durable_seqno = min(self.durable_seqno, seqno)
        return True

    def commit(self, seqno: int) -> None:
        # Only durable entries can be committed on this node's disk.
        if seqno > self.durable_seqno:
            _log.warning(
                "commit beyond durable entries seqno=%d durable_seqno=%d",
                seqno,
                self.durable_seqno,
            )
            seqno = self.durable_seqno
        self._writer.commit(seqno)

    def read_entries(self, request_id: int, from_seqno: int, to_seqno: int) -> EntriesRead:
        """Entries from_seqno..to_seqno, cut short to fit one reply frame, or where no
        directory holds the next one (empty when none holds `from_seqno`).

        The ledger directory first (entries not yet fsynced are visible too: the writer uses
        pwrite); entries before its first are taken from committed chunks in the read-only
        ledger directories, then the archive. The enclave checks whatever it reads against
        its Merkle tree anyway.
        """
        entries: list[bytes] = []
        first = max(from_seqno, 1)
        if first > to_seqno:
            return EntriesRead(request_id=request_id, entries=entries, first_seqno=first)
        budget = [READ_REPLY_BYTES_MAX]
        try:
            reader = LedgerReader(str(self.ledger_dir))
        except LedgerError as e:
            _log.error("ledger directory unreadable reason=%s", e)
            return EntriesRead(request_id=request_id, entries=entries, first_seqno=first)
        if reader.chunks:
            local_first = reader.first_seqno
        elif self.last_seqno:
            local_first = self.last_seqno + 1
        else:
            # Nothing written here yet (a node that has just joined from a snapshot): all
            # of it can only come from the read-only directories or the archive.
            local_first = to_seqno + 1
        seqno = first
        while seqno < local_first and seqno <= to_seqno:
            taken = self._read_elsewhere(seqno, min(to_seqno, local_first - 1), entries, budget)
            if taken == 0:
                break
            seqno += taken
        end = min(to_seqno, self.last_seqno)
        if local_first <= seqno <= end:
            for _seqno, raw in reader.entries(seqno, end):
                if not self._take(raw, entries, budget):
                    break
        if not entries:
            _log.warning("ledger read returned nothing from_seqno=%d", first)
        return EntriesRead(request_id=request_id, entries=entries, first_seqno=first)

    @staticmethod
    def _take(raw: bytes, entries: list[bytes], budget: list[int]) -> bool:
        cost = len(raw) + REPLY_ENTRY_OVERHEAD_BYTES
        if cost > budget[0]:
            return False
        budget[0] -= cost
        entries.append(raw)
        return True

    def _read_elsewhere(self, seqno: int, end: int, entries: list[bytes], budget: list[int]) -> int:
        """Append entries seqno.. (up to `end`) of the one committed chunk elsewhere that holds
        `seqno`; returns how many were taken (0: none holds it, or it is unreadable)."""
        found = self.sources.find(seqno)
        if found is None:
            return 0
        path, chunk = found
        loaded = read_chunk_entries(path, chunk)
        if loaded is None:
            return 0
        data, positions = loaded
        taken = 0
        for index in range(seqno - chunk.first, len(positions)):
            if chunk.first + index > end:
                break
            start = positions[index]
            stop = start + HEADER_SIZE + read_header(data, start)[2]
            if not self._take(bytes(data[start:stop]), entries, budget):
                break
            taken += 1
        return taken

    def close(self) -> None:
        self._writer.close()

    def ledger_file_of(self, seqno: int) -> Path | None:
        """The chunk file that holds `seqno`, if any (to name it in error reports)."""
        try:
            chunks = LedgerReader(str(self.ledger_dir)).chunks
        except LedgerError:
            return None
        for chunk in chunks:
            if chunk.first <= seqno and (chunk.last is None or seqno <= chunk.last):
                return self.ledger_dir / chunk.filename
        return None

    def name_ledger_file(self, reason: str) -> str:
        """`reason` plus the chunk file of the ledger entry it names ("ledger entry seqno N")."""
        found = _ENTRY_SEQNO.search(reason)
        if found is None:
            return reason
        path = self.ledger_file_of(int(found.group(1)))
        return reason if path is None else f"{reason} [ledger file {path}]"

    # -- snapshots -----------------------------------------------------------------------

    def write_snapshot(self, seqno: int, evidence_seqno: int, data: bytes, committed: bool) -> None:
        pending = self.snapshots_dir / snapshot_file_name(seqno, evidence_seqno, False)
        final = self.snapshots_dir / snapshot_file_name(seqno, evidence_seqno, committed)
        if committed and not data:
            if not pending.exists():
                _log.error("no uncommitted snapshot to commit seqno=%d", seqno)
                return
            os.replace(pending, final)
            _fsync_dir(self.snapshots_dir)
        else:
            write_atomically(final, data)
            if committed and pending.exists():
                pending.unlink()
        _log.info(
            "snapshot stored seqno=%d evidence_seqno=%d committed=%s",
            seqno,
            evidence_seqno,
            committed,
        )

    def latest_committed_snapshot(self) -> tuple[str, bytes] | None:
        best: tuple[int, str] | None = None
        for name in os.listdir(self.snapshots_dir):
            parsed = parse_snapshot_name(name)
            if parsed is None or not parsed[2]:
                continue
            if best is None or parsed[0] > best[0]:
                best = (parsed[0], name)
        if best is None:
            return None
        data = _read_limited(self.snapshots_dir / best[1], SNAPSHOT_READ_BYTES_MAX)
        return None if data is None else (best[1], data)

    def read_latest_snapshot(self, request_id: int) -> SnapshotRead:
        found = self.latest_committed_snapshot()
        if found is None:
            return SnapshotRead(request_id=request_id, name=None, data=None)
        return SnapshotRead(request_id=request_id, name=found[0], data=found[1])

    # -- bounded disk and operator files ------------------------------------------------

    def run_cleanup(self) -> CleanupReport:
        return self.cleanup.run()

    def read_operator_file(self, request_id: int, kind: str, name: str, since: int) -> Frame:
        """A committed ledger chunk or snapshot: found by `since` (name only) or read by name."""
        if kind == "snapshot":
            path = self._find_snapshot(name, since)
        else:
            path = self._find_chunk(name, since)
        if path is None:
            return OperatorFileRead(request_id=request_id, name=None, data=None, size_bytes=0)
        try:
            size_bytes = path.stat().st_size
        except OSError:
            return OperatorFileRead(request_id=request_id, name=None, data=None, size_bytes=0)
        data = None
        if name and size_bytes <= SNAPSHOT_READ_BYTES_MAX:
            data = _read_limited(path, SNAPSHOT_READ_BYTES_MAX)
        return OperatorFileRead(
            request_id=request_id, name=path.name, data=data, size_bytes=size_bytes
        )

    def _find_snapshot(self, name: str, since: int) -> Path | None:
        if name:
            parsed = parse_snapshot_name(name)
            if parsed is None or not parsed[2] or "/" in name:
                return None
            path = self.snapshots_dir / name
            return path if path.is_file() else None
        for seqno, found in committed_snapshots(self.snapshots_dir):
            return self.snapshots_dir / found if seqno >= since else None
        return None

    def _find_chunk(self, name: str, since: int) -> Path | None:
        if name:
            try:
                chunk = parse_chunk_name(name)
            except LedgerError:
                return None
            if not chunk.committed or chunk.recovery or chunk.ignored or "/" in name:
                return None
            local = self.ledger_dir / name
            return local if local.is_file() else self.sources.find_name(name)
        for first, last in self._writer.committed_chunks():
            if first <= since <= last:
                return self.ledger_dir / f"ledger_{first}-{last}.committed"
        found = self.sources.find(since)
        return None if found is None else found[0]

    # -- sealed blob ---------------------------------------------------------------------

    def store_sealed(self, blob: bytes) -> None:
        if len(blob) > SEALED_BYTES_MAX:
            _log.error("sealed blob too large size_bytes=%d", len(blob))
            return
        write_atomically(self.workspace / SEALED_FILE_NAME, blob)

    def load_sealed(self) -> bytes | None:
        path = self.workspace / SEALED_FILE_NAME
        if not path.exists():
            return None
        return _read_limited(path, SEALED_BYTES_MAX)


class StorageWorker:
    """Runs the enclave's storage frames in order and group-commits ledger writes.

    Writes that queue up while one fsync runs are appended and then share the next fsync,
    after which the worker replies `Durable(highest durable seqno)`. Slow calls run in a
    thread so that ticks, accepts and relaying continue meanwhile; one worker task means
    the writer is never used from two threads at once.
    """

    def __init__(
        self,
        storage: Storage,
        reply: Callable[[Frame], None],
        on_failure: Callable[[str], None],
        send_to_node: Callable[[str, bytes], None],
        *,
        cleanup_interval_ms: int = 1000,
    ) -> None:
        self.storage = storage
        # `SendWhenDurable` frames waiting for the ledger to be durable up to their seqno,
        # in arrival order (at most HELD_NODE_MESSAGES_MAX).
        self._send_to_node = send_to_node
        self._held: list[SendWhenDurable] = []
        self._cleanup_interval_s = cleanup_interval_ms / 1000
        self._cleanup_due = True  # after a commit or a committed snapshot
        self._cleanup_last = float("-inf")
        self._reply = reply
        self._on_failure = on_failure
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(STORAGE_QUEUE_FRAMES_MAX)
        self._in_flight: asyncio.Future[Any] | None = None
        self.fsync_count = 0
        self._trace = os.environ.get(COMMIT_TRACE_ENV) == "1"
        # Frame type → handler: one row per frame in STORAGE_FRAMES (checked below).
        self._handlers: dict[type[Frame], Callable[[Any], Awaitable[None]]] = {
            WriteEntries: self._write_entries,
            SendWhenDurable: self._send_when_durable,
            Truncate: self._truncate,
            CommitUpTo: self._commit_up_to,
            ReadEntries: self._read_entries,
            WriteSnapshot: self._write_snapshot,
            ReadLatestSnapshot: self._read_latest_snapshot,
            StoreSealed: self._store_sealed,
            ReadOperatorFile: self._read_operator_file,
        }
        assert set(self._handlers) == set(STORAGE_FRAMES)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking storage call in a thread. Shielded: cancelling `run()` never leaves
        a call running behind `wait_idle()`'s back while the writer is closed."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._in_flight = fut
        result: T = await asyncio.shield(fut)
        return result

    async def wait_idle(self) -> None:
        """Wait for a thread call still running (after `run()` was cancelled)."""
        if self._in_flight is not None and not self._in_flight.done():
            await asyncio.wait([self._in_flight])

    async def submit(self, frame: Frame) -> None:
        assert type(frame) in self._handlers, type(frame).__name__
        await self._queue.put(frame)

    async def run(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                await self._handle(frame)
                while not self._queue.empty():
                    await self._handle(self._queue.get_nowait())
                if self.storage.needs_flush:
                    await self._flush()
                self._release_held()  # also those whose entries were durable already
                await self._maybe_clean_up()
        except LedgerWriteError as e:
            # A full disk (or a failing one): stop the node, saying where and how much. What
            # was not flushed was never reported durable; a restart on the files resumes.
            _log.error("storage write failed path=%s reason=%r", e.path, str(e))
            self._on_failure(str(e))

    async def _maybe_clean_up(self) -> None:
        """Run `files_cleanup` after commits, at most once per interval (between frames, so
        never while the writer is in use)."""
        if not self._cleanup_due or not self.storage.cleanup.enabled:
            return
        now = asyncio.get_running_loop().time()
        if now - self._cleanup_last < self._cleanup_interval_s:
            return
        self._cleanup_due = False
        self._cleanup_last = now
        try:
            await self._call(self.storage.run_cleanup)
        except OSError as e:
            _log.error("files cleanup failed reason=%s", e)

    async def _flush(self) -> None:
        durable = await self._call(self.storage.flush)
        self.fsync_count += 1
        if self._trace:
            _log.info(
                "event=commit_trace step=host_durable seqno=%d t_ms=%.2f",
                durable,
                time.time() * 1000,
            )
        view = self.storage.last_entry_view if durable == self.storage.last_seqno else 0
        self._reply(Durable(seqno=durable, view=view))
        self._release_held()

    async def _handle(self, frame: Frame) -> None:
        await self._handlers[type(frame)](frame)

    async def _write_entries(self, frame: WriteEntries) -> None:
        if not self.storage.write_entries(frame.entries):
            self._on_failure("enclave sent a ledger write that does not follow the ledger")

    async def _send_when_durable(self, frame: SendWhenDurable) -> None:
        self._held.append(frame)
        if len(self._held) > HELD_NODE_MESSAGES_MAX:
            dropped = self._held.pop(0)
            _log.warning("held node message dropped seqno=%d (too many held)", dropped.seqno)

    def _release_held(self) -> None:
        """Send the held frames whose seqno the ledger holds durably now."""
        if not self._held:
            return
        durable = self.storage.durable_seqno
        keep = []
        for frame in self._held:
            if frame.seqno <= durable:
                self._send_to_node(frame.address, frame.payload)
            else:
                keep.append(frame)
        self._held = keep

    async def _truncate(self, frame: Truncate) -> None:
        # What was held for entries this drops must never be sent: it speaks for them.
        self._held = [h for h in self._held if h.seqno <= frame.seqno]
        await self._call(self.storage.truncate, frame.seqno)

    async def _commit_up_to(self, frame: CommitUpTo) -> None:
        if self.storage.needs_flush:
            await self._flush()
        await self._call(self.storage.commit, frame.seqno)
        self._cleanup_due = True

    async def _read(self, fallback: Frame, fn: Callable[..., Frame], *args: Any) -> None:
        """Reply with what a read found; a read that fails (a file or directory the operator
        removed or replaced meanwhile) is answered as found nothing, and logged: it must
        not stop the worker, which also writes the ledger."""
        try:
            reply = await self._call(fn, *args)
        except OSError as e:
            _log.error(
                "storage read failed frame=%s reason=%s", type(fallback).__name__, e.strerror
            )
            reply = fallback
        self._reply(reply)

    async def _read_entries(self, frame: ReadEntries) -> None:
        s = self.storage
        await self._read(
            EntriesRead(request_id=frame.request_id, entries=[], first_seqno=frame.from_seqno),
            s.read_entries,
            frame.request_id,
            frame.from_seqno,
            frame.to_seqno,
        )

    async def _write_snapshot(self, frame: WriteSnapshot) -> None:
        s = self.storage
        await self._call(
            s.write_snapshot, frame.seqno, frame.evidence_seqno, frame.data, frame.committed
        )
        self._cleanup_due = self._cleanup_due or frame.committed

    async def _read_latest_snapshot(self, frame: ReadLatestSnapshot) -> None:
        await self._read(
            SnapshotRead(request_id=frame.request_id, name=None, data=None),
            self.storage.read_latest_snapshot,
            frame.request_id,
        )

    async def _store_sealed(self, frame: StoreSealed) -> None:
        await self._call(self.storage.store_sealed, frame.blob)

    async def _read_operator_file(self, frame: ReadOperatorFile) -> None:
        s = self.storage
        await self._read(
            OperatorFileRead(request_id=frame.request_id, name=None, data=None, size_bytes=0),
            s.read_operator_file,
            frame.request_id,
            frame.kind,
            frame.name,
            frame.since,
        )
