"""Ledger chunk files on disk, byte-compatible with CCF (FORMATS §1.1-1.2).

A chunk file is ``u64 table_offset | entry* | u32 position*``. While a chunk is being
appended to it is named ``ledger_<first>`` and its table_offset is 0; it is *completed* (offset
table written, then the header, then renamed ``ledger_<first>-<last>``) right after an entry
whose header carries FLAG_FORCE_CHUNK_AFTER, and *committed* by renaming it
``ledger_<first>-<last>.committed``. Chunk boundaries therefore follow from entry flags alone,
which the enclave sets identically on every node (see `ChunkPolicy`).

The writer is the host's side: `append` only writes, `flush` fsyncs (group commit) and
reports the highest durable seqno. The reader is the auditor's side: it validates names,
contiguity, offset tables and entry counts, and raises only DecodeError / AuditError.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import mmap
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from charter.ledger.entry import (
    ENTRY_SIZE_BYTES_MAX,
    ENTRY_VERSION,
    FLAG_FORCE_CHUNK_AFTER,
    FLAG_FORCE_CHUNK_BEFORE,
    HEADER_SIZE,
)
from charter.ledger.errors import AuditError, DecodeError, LedgerWriteError

logger = logging.getLogger(__name__)

# What chunk parsing accepts: file bytes, or a read-only map of the file.
ChunkBytes = bytes | bytearray | memoryview | mmap.mmap

CHUNK_HEADER_SIZE = 8
COMMITTED_SUFFIX = ".committed"
RECOVERY_SUFFIX = ".recovery"
IGNORED_SUFFIX = ".ignored"
# Positions in the offset table are u32, so a complete chunk cannot exceed 4 GiB.
CHUNK_FILE_BYTES_MAX = 2**32 - 1
DEFAULT_CHUNK_SIZE_BYTES = 5_000_000

_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<BBHI")
_IV_SEQNO_OFFSET = HEADER_SIZE + 16  # the IV's u64 seqno follows the 16-byte GCM tag
_NAME = re.compile(
    r"^ledger_(?P<first>[0-9]{1,19})(?:-(?P<last>[0-9]{1,19}))?"
    r"(?P<committed>\.committed)?(?P<recovery>\.recovery)?(?P<ignored>\.ignored)?$"
)


@dataclass(frozen=True, slots=True)
class ChunkName:
    """A parsed chunk file name."""

    filename: str
    first: int
    last: int | None
    committed: bool
    recovery: bool
    ignored: bool

    @property
    def complete(self) -> bool:
        return self.last is not None


def parse_chunk_name(filename: str) -> ChunkName:
    """Parse ``ledger_<a>[-<b>][.committed][.recovery][.ignored]``; anything else is a DecodeError."""
    match = _NAME.match(filename)
    if match is None:
        raise DecodeError(f"not a ledger chunk name: {filename!r}", field="filename")
    first = int(match["first"])
    last = int(match["last"]) if match["last"] is not None else None
    if first < 1 or (last is not None and last < first):
        raise DecodeError(f"bad seqno range in chunk name {filename!r}", field="filename")
    committed = match["committed"] is not None
    if committed and last is None:
        raise DecodeError(f"committed chunk without an end seqno: {filename!r}", field="filename")
    return ChunkName(
        filename=filename,
        first=first,
        last=last,
        committed=committed,
        recovery=match["recovery"] is not None,
        ignored=match["ignored"] is not None,
    )


def chunk_positions(
    data: ChunkBytes, name: str = "", *, walk: bool = True
) -> tuple[list[int], int]:
    """Entry positions of one chunk file's bytes and the end of the entry region.

    Uses the offset table when the header points at one (checking it against the entry
    headers), and walks entry headers from offset 8 otherwise. With `walk=False` a table's
    positions are returned unchecked beyond the first one: the caller (the auditor, which
    reads every header anyway) must check that each entry ends where the next one starts
    and the last one at the returned end.
    """
    size = len(data)
    if size < CHUNK_HEADER_SIZE:
        raise DecodeError(f"chunk {name} shorter than its header", offset=0, field="table_offset")
    if size > CHUNK_FILE_BYTES_MAX:
        raise DecodeError(f"chunk {name} exceeds 4 GiB", offset=0, field="file_size")
    (table_offset,) = _U64.unpack_from(data, 0)
    end = size
    if table_offset:
        if table_offset < CHUNK_HEADER_SIZE or table_offset > size:
            raise DecodeError(
                f"chunk {name}: table offset {table_offset} outside file of {size} bytes",
                offset=0,
                field="table_offset",
            )
        if (size - table_offset) % 4:
            raise DecodeError(
                f"chunk {name}: offset table length not a multiple of 4",
                offset=table_offset,
                field="offset_table",
            )
        end = table_offset
        count = (size - table_offset) // 4
        table = list(struct.unpack_from(f"<{count}I", data, table_offset))
        if not walk:
            first_ok = table[0] == CHUNK_HEADER_SIZE if table else end == CHUNK_HEADER_SIZE
            if not first_ok:
                raise DecodeError(
                    f"chunk {name}: offset table does not start at the first entry",
                    offset=table_offset,
                    field="offset_table",
                )
            return table, end
    positions = walk_entries(data, CHUNK_HEADER_SIZE, end, name=name)
    if table_offset and table != positions:
        raise DecodeError(
            f"chunk {name}: offset table does not match the entries",
            offset=table_offset,
            field="offset_table",
        )
    return positions, end


def parse_chunk(data: ChunkBytes, chunk: ChunkName, *, walk: bool = True) -> list[int]:
    """Entry positions of a chunk file's bytes, checked against the range in its name.

    `walk=False`: see `chunk_positions`; the caller checks the entries' bounds.
    """
    positions, _end = chunk_positions(data, chunk.filename, walk=walk)
    if chunk.last is not None and chunk.last - chunk.first + 1 != len(positions):
        expected = chunk.last - chunk.first + 1
        raise AuditError(
            f"chunk {chunk.filename} holds {len(positions)} entries, its name says {expected}",
            seqno=chunk.first + min(len(positions), expected),
        )
    return positions


def walk_entries(data: ChunkBytes, start: int, end: int, *, name: str = "") -> list[int]:
    """Positions of back-to-back entries filling data[start:end] exactly."""
    positions: list[int] = []
    pos = start
    unpack = _HEADER.unpack_from
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise DecodeError(f"chunk {name}: truncated entry header", offset=pos, field="header")
        version, _flags, lo, hi = unpack(data, pos)
        entry_size = lo | (hi << 16)
        if version != ENTRY_VERSION:
            raise DecodeError(
                f"chunk {name}: unsupported entry version {version}", offset=pos, field="version"
            )
        if entry_size > ENTRY_SIZE_BYTES_MAX or entry_size > end - pos - HEADER_SIZE:
            raise DecodeError(
                f"chunk {name}: entry size {entry_size} exceeds chunk", offset=pos + 2, field="size"
            )
        positions.append(pos)
        pos += HEADER_SIZE + entry_size
    return positions


class ChunkPolicy:
    """Decides which signature entry closes a chunk, from the entries themselves.

    The enclave feeds it every entry it appends (`record`) and asks `flags_for_signature`
    when it builds a signature: the first signature once the chunk holds at least
    `chunk_size_bytes` gets FLAG_FORCE_CHUNK_AFTER. Because the inputs are the ledger's own
    bytes, every node cuts chunks at the same seqnos (as CCF does).
    """

    def __init__(self, chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES) -> None:
        assert chunk_size_bytes > 0
        self.chunk_size_bytes = chunk_size_bytes
        self.bytes_in_chunk = 0
        # The next signature ends the chunk whatever its size (`trigger_ledger_chunk`).
        self.forced = False

    def flags_for_signature(self, entry_size_bytes: int = 0) -> int:
        if self.forced or self.bytes_in_chunk + entry_size_bytes >= self.chunk_size_bytes:
            return FLAG_FORCE_CHUNK_AFTER
        return 0

    def record(self, entry_size_bytes: int, flags: int) -> None:
        """Account for one appended entry (of `entry_size_bytes` bytes incl. header)."""
        if flags & FLAG_FORCE_CHUNK_AFTER:
            self.bytes_in_chunk = 0
            self.forced = False
        else:
            self.bytes_in_chunk += entry_size_bytes

    def reset(self, bytes_in_chunk: int = 0) -> None:
        """Resynchronise after a rollback or restart (bytes since the last chunk boundary)."""
        assert bytes_in_chunk >= 0
        self.bytes_in_chunk = bytes_in_chunk


@dataclass(slots=True)
class _OpenChunk:
    """The chunk being appended to: file descriptor, first seqno, entry positions."""

    first: int
    fd: int
    positions: list[int]
    size_bytes: int


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(directory: str) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `directory`."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def write_failure(exc: OSError, *, path: str, what: str, needed_bytes: int) -> LedgerWriteError:
    """A typed error for a failed file write that says what failed, where, and why."""
    free = free_bytes(os.path.dirname(path) or ".")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on device"
    else:
        reason = exc.strerror or str(exc)
    detail = f" needed {needed_bytes} more bytes" if needed_bytes else " failed"
    free_text = "" if free is None else f" ({free} bytes free)"
    return LedgerWriteError(
        f"{reason}: {what} {path}{detail}{free_text}",
        path=path,
        errno=exc.errno,
        needed_bytes=needed_bytes,
        free_bytes=free,
    )


def write_all_at(fd: int, data: bytes, offset: int, *, path: str, what: str) -> None:
    """pwrite all of `data` at `offset`; a write the disk cannot take raises LedgerWriteError
    (a short write is retried for the rest, which then fails with the real errno)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            written = os.pwrite(fd, view[done:], offset + done)
        except OSError as e:
            raise write_failure(e, path=path, what=what, needed_bytes=len(view) - done) from e
        if written == 0:
            raise write_failure(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                path=path,
                what=what,
                needed_bytes=len(view) - done,
            )
        done += written


class LedgerWriter:
    """Appends raw entries to chunk files in `directory`; reopening resumes the directory.

    `chunk_size_bytes` is kept for callers that build a matching `ChunkPolicy`; the writer
    itself cuts chunks only where entry flags say so. An empty directory may start at any
    seqno (a node that joined from a snapshot); after that, seqnos are contiguous.
    """

    def __init__(self, directory: str, *, chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES) -> None:
        self.directory = directory
        self.chunk_size_bytes = chunk_size_bytes
        os.makedirs(directory, exist_ok=True)
        # Complete chunks, in order: (first, last, committed). Only names are kept in memory.
        self._complete: list[tuple[int, int, bool]] = []
        self._open: _OpenChunk | None = None
        self._dirty_fds: list[int] = []  # completed chunks not yet fsynced (closed after)
        self._dir_dirty = False
        self._open_dirty = False  # the open chunk changed since its last fsync
        self.last_seqno = 0
        self.committed_seqno = 0
        self.durable_seqno = 0
        self.recovered_torn_bytes = 0
        self._resume()

    # -- naming ----------------------------------------------------------------------------

    def _path(self, first: int, last: int | None = None, committed: bool = False) -> str:
        name = f"ledger_{first}" if last is None else f"ledger_{first}-{last}"
        return os.path.join(self.directory, name + (COMMITTED_SUFFIX if committed else ""))

    # -- resume ----------------------------------------------------------------------------

    def _resume(self) -> None:
        names: list[ChunkName] = []
        for filename in os.listdir(self.directory):
            if not filename.startswith("ledger_"):
                continue
            parsed = parse_chunk_name(filename)
            if parsed.recovery or parsed.ignored:
                continue
            names.append(parsed)
        names.sort(key=lambda c: c.first)
        expected = names[0].first if names else 1
        for i, chunk in enumerate(names):
            if chunk.first != expected:
                raise AuditError("chunk files are not contiguous", seqno=expected)
            if chunk.last is None:
                if i != len(names) - 1:
                    raise AuditError("in-progress chunk is not the last one", seqno=chunk.first)
                self._resume_open(chunk)
            else:
                self._complete.append((chunk.first, chunk.last, chunk.committed))
                if chunk.committed:
                    self.committed_seqno = chunk.last
                self.last_seqno = chunk.last
                expected = chunk.last + 1
        self.durable_seqno = self.last_seqno
        if self.last_seqno:
            logger.info(
                "resumed ledger directory=%s last_seqno=%d committed_seqno=%d",
                self.directory,
                self.last_seqno,
                self.committed_seqno,
            )

    def _resume_open(self, chunk: ChunkName) -> None:
        path = os.path.join(self.directory, chunk.filename)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) >= CHUNK_HEADER_SIZE and _U64.unpack_from(data, 0)[0]:
            # Crashed between writing the offset table and renaming: finish the completion.
            try:
                complete_positions, _end = chunk_positions(data, chunk.filename)
            except DecodeError:
                # The header reached the disk but not all of the table: reopen the chunk
                # as in-progress; the walk below cuts the partial table off.
                logger.warning("discarding partial offset table file=%s", chunk.filename)
                data = bytes(CHUNK_HEADER_SIZE) + data[CHUNK_HEADER_SIZE:]
                with open(path, "r+b") as f:
                    f.write(bytes(CHUNK_HEADER_SIZE))
            else:
                last = chunk.first + len(complete_positions) - 1
                os.rename(path, self._path(chunk.first, last))
                self._complete.append((chunk.first, last, False))
                self.last_seqno = last
                return
        # Keep every whole entry; a crash may have left a torn last entry (or a partly
        # written offset table), which CCF also discards on restart.
        positions: list[int] = []
        pos = CHUNK_HEADER_SIZE
        size = len(data)
        while size - pos >= HEADER_SIZE:
            version, _flags, lo, hi = _HEADER.unpack_from(data, pos)
            entry_size = lo | (hi << 16)
            if version != ENTRY_VERSION or entry_size > size - pos - HEADER_SIZE:
                break
            positions.append(pos)
            pos += HEADER_SIZE + entry_size
        fd = os.open(path, os.O_RDWR)
        if size < CHUNK_HEADER_SIZE:
            os.pwrite(fd, bytes(CHUNK_HEADER_SIZE), 0)
            pos = CHUNK_HEADER_SIZE
        if pos < size:
            self.recovered_torn_bytes = size - pos
            logger.warning(
                "truncating torn chunk tail file=%s dropped_bytes=%d", chunk.filename, size - pos
            )
        os.ftruncate(fd, pos)
        os.fsync(fd)
        self._open = _OpenChunk(first=chunk.first, fd=fd, positions=positions, size_bytes=pos)
        self.last_seqno = chunk.first + len(positions) - 1

    # -- append / flush --------------------------------------------------------------------

    def append(self, seqno: int, raw_entry: bytes) -> None:
        """Write one entry (no fsync). Seqnos must be contiguous."""
        self.append_many(((seqno, raw_entry),))

    def append_many(self, entries: Iterable[tuple[int, bytes]]) -> None:
        """Write entries in order (no fsync); the entries that land in one chunk leave in one
        pwrite. Seqnos must be contiguous. An entry refused (ValueError) stops the batch
        there, the entries before it written; a failed write (LedgerWriteError) leaves the
        files at the last entry written whole."""
        run: list[bytes] = []  # checked entries of the open chunk, not written yet
        run_bytes = 0
        try:
            for seqno, raw in entries:
                # An empty directory may start anywhere: a node that joined from a snapshot
                # at S keeps ledger files from S + 1 on, as CCF's nodes do.
                chunk = self._open
                if chunk is None:
                    last = self.last_seqno
                else:  # the open chunk's entries, written or in the run, follow its first
                    last = chunk.first + len(chunk.positions) + len(run) - 1
                starts_empty = self.last_seqno == 0 and chunk is None
                if seqno != last + 1 and not (starts_empty and seqno > 0):
                    raise ValueError(f"append seqno {seqno} after {last}")
                if len(raw) < HEADER_SIZE:
                    raise ValueError("entry shorter than its header")
                version, flags, lo, hi = _HEADER.unpack_from(raw, 0)
                assert version == ENTRY_VERSION and (lo | (hi << 16)) == len(raw) - HEADER_SIZE
                if (
                    flags & FLAG_FORCE_CHUNK_BEFORE
                    and chunk is not None
                    and (chunk.positions or run)
                ):
                    # CCF's host closes the current chunk first, so this entry starts a new one.
                    self._write_run(run)
                    run_bytes = 0
                    self._complete_open_chunk()
                    chunk = None
                if chunk is None:
                    chunk = self._start_chunk(seqno)
                offsets_bytes = 4 * (len(chunk.positions) + len(run) + 1)
                if chunk.size_bytes + run_bytes + len(raw) + offsets_bytes > CHUNK_FILE_BYTES_MAX:
                    raise ValueError("chunk would exceed 4 GiB; the chunk policy must cut earlier")
                run.append(raw)
                run_bytes += len(raw)
                if flags & FLAG_FORCE_CHUNK_AFTER:
                    self._write_run(run)
                    run_bytes = 0
                    self._complete_open_chunk()
        finally:
            self._write_run(run)  # the entries checked before one that was refused

    def _start_chunk(self, seqno: int) -> _OpenChunk:
        path = self._path(seqno)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all_at(fd, bytes(CHUNK_HEADER_SIZE), 0, path=path, what="starting")
        except LedgerWriteError:
            os.close(fd)
            os.unlink(path)
            raise
        self._open = _OpenChunk(first=seqno, fd=fd, positions=[], size_bytes=CHUNK_HEADER_SIZE)
        self._dir_dirty = True
        return self._open

    def _write_run(self, run: list[bytes]) -> None:
        """Write `run`, entries following the open chunk's, with one pwrite; empties it."""
        if not run:
            return
        chunk = self._open
        assert chunk is not None
        first = chunk.first + len(chunk.positions)
        last = first + len(run) - 1
        what = (
            f"writing entry {first} to" if first == last else f"writing entries {first}-{last} to"
        )
        data = run[0] if len(run) == 1 else b"".join(run)
        try:
            write_all_at(chunk.fd, data, chunk.size_bytes, path=self._path(chunk.first), what=what)
        except LedgerWriteError:
            run.clear()
            # Leave no partial entry behind: the file ends at its last whole entry.
            with contextlib.suppress(OSError):
                os.ftruncate(chunk.fd, chunk.size_bytes)
            raise
        pos = chunk.size_bytes
        for raw in run:
            chunk.positions.append(pos)
            pos += len(raw)
        run.clear()
        chunk.size_bytes = pos
        self._open_dirty = True
        self.last_seqno = last

    def _complete_open_chunk(self) -> None:
        chunk = self._open
        assert chunk is not None and chunk.positions
        last = chunk.first + len(chunk.positions) - 1
        table = struct.pack(f"<{len(chunk.positions)}I", *chunk.positions)
        path = self._path(chunk.first)
        write_all_at(chunk.fd, table, chunk.size_bytes, path=path, what="writing the offsets of")
        # The header goes last: a reader that sees a table offset also sees the table.
        write_all_at(chunk.fd, _U64.pack(chunk.size_bytes), 0, path=path, what="completing")
        os.rename(self._path(chunk.first), self._path(chunk.first, last))
        self._dirty_fds.append(chunk.fd)
        self._dir_dirty = True
        self._complete.append((chunk.first, last, False))
        self._open = None

    def flush(self) -> int:
        """fsync everything appended so far; returns the highest durable seqno."""
        while self._dirty_fds:
            fd = self._dirty_fds[0]
            self._fsync(fd, self.directory)
            self._dirty_fds.pop(0)
            os.close(fd)
        # Skip the open chunk's fsync when nothing changed: hosts flush every loop turn.
        if self._open is not None and self._open_dirty:
            self._fsync(self._open.fd, self._path(self._open.first))
        self._open_dirty = False
        if self._dir_dirty:
            _fsync_dir(self.directory)
            self._dir_dirty = False
        self.durable_seqno = self.last_seqno
        return self.durable_seqno

    @staticmethod
    def _fsync(fd: int, path: str) -> None:
        try:
            os.fsync(fd)
        except OSError as e:  # delayed allocation can report a full disk only here
            raise write_failure(e, path=path, what="syncing", needed_bytes=0) from e

    # -- commit / truncate -----------------------------------------------------------------

    def commit(self, seqno: int) -> None:
        """Mark complete chunks ending at or before `seqno` committed (rename)."""
        assert seqno <= self.last_seqno, "cannot commit beyond the last entry"
        if seqno <= self.committed_seqno:
            return
        for i, (first, last, committed) in enumerate(self._complete):
            if committed or last > seqno:
                continue
            os.rename(self._path(first, last), self._path(first, last, committed=True))
            self._complete[i] = (first, last, True)
            self._dir_dirty = True
        self.committed_seqno = seqno

    @property
    def first_seqno(self) -> int:
        """The first seqno this directory holds (last_seqno + 1 when it holds none): above 1
        for a node that joined from a snapshot, or once committed chunks were removed."""
        if self._complete:
            return self._complete[0][0]
        if self._open is not None:
            return self._open.first
        return self.last_seqno + 1

    def committed_chunks(self) -> list[tuple[int, int]]:
        """(first, last) of each committed chunk this writer holds, in order."""
        return [(first, last) for first, last, committed in self._complete if committed]

    def remove_committed_chunk(self, first: int, last: int) -> str:
        """Delete the committed chunk `ledger_first-last.committed` (the caller has made sure
        a copy is kept elsewhere); returns the path deleted. Only committed chunks can go."""
        index = self._complete.index((first, last, True))
        path = self._path(first, last, committed=True)
        os.unlink(path)
        del self._complete[index]
        _fsync_dir(self.directory)
        return path

    def truncate(self, seqno: int) -> None:
        """Drop every entry after `seqno` (never below the committed point)."""
        assert seqno >= self.committed_seqno, "cannot truncate committed entries"
        if seqno >= self.last_seqno:
            return
        # Make what stays durable and close completed chunks' fds before touching files.
        self.flush()
        if self._open is not None:
            chunk = self._open
            if seqno >= chunk.first:
                keep = seqno - chunk.first + 1
                new_size = chunk.positions[keep]
                del chunk.positions[keep:]
                os.ftruncate(chunk.fd, new_size)
                chunk.size_bytes = new_size
                self._open_dirty = True
                self.last_seqno = seqno
                self.durable_seqno = min(self.durable_seqno, seqno)
                return
            os.close(chunk.fd)
            os.unlink(self._path(chunk.first))
            self._open = None
        while self._complete and self._complete[-1][0] > seqno:
            first, last, committed = self._complete.pop()
            assert not committed
            os.unlink(self._path(first, last))
        if self._complete and self._complete[-1][1] > seqno:
            # Reopen the chunk holding `seqno` as in-progress, without its table and tail.
            first, last, committed = self._complete.pop()
            assert not committed
            path = self._path(first, last)
            fd = os.open(path, os.O_RDWR)
            with open(path, "rb") as f:
                data = f.read()
            positions, _end = chunk_positions(data, os.path.basename(path))
            keep = seqno - first + 1
            new_size = positions[keep]
            os.ftruncate(fd, new_size)
            os.pwrite(fd, bytes(CHUNK_HEADER_SIZE), 0)
            os.rename(path, self._path(first))
            self._open = _OpenChunk(
                first=first, fd=fd, positions=positions[:keep], size_bytes=new_size
            )
            self._open_dirty = True
        self._dir_dirty = True
        self.last_seqno = seqno
        self.durable_seqno = min(self.durable_seqno, seqno)

    def close(self) -> None:
        self.flush()
        if self._open is not None:
            os.close(self._open.fd)
            self._open = None

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LedgerReader:
    """Reads the chunks of a ledger directory in order, validating their structure.

    `committed_only` and `read_recovery_files` follow `ccf.ledger.Ledger`; `.ignored` files
    are never read. Chunks are read one at a time, so memory stays bounded by a chunk.
    """

    def __init__(
        self,
        directory: str,
        *,
        committed_only: bool = False,
        read_recovery_files: bool = False,
    ) -> None:
        self.directory = directory
        by_base: dict[str, ChunkName] = {}
        for filename in sorted(os.listdir(directory)):
            if not filename.startswith("ledger_"):
                continue
            parsed = parse_chunk_name(filename)
            if parsed.ignored or (parsed.recovery and not read_recovery_files):
                continue
            if committed_only and not parsed.committed:
                continue
            # A chunk present both as-is and as .recovery is read once, preferring the plain file.
            base = filename.removesuffix(RECOVERY_SUFFIX)
            if base not in by_base or by_base[base].recovery:
                by_base[base] = parsed
        chunks = list(by_base.values())
        chunks.sort(key=lambda c: c.first)
        for a, b in itertools.pairwise(chunks):
            if a.last is None:
                raise AuditError(
                    f"chunk {b.filename} follows in-progress chunk {a.filename}", seqno=b.first
                )
            if a.last + 1 != b.first:
                raise AuditError(
                    f"non-contiguous chunks {a.filename} and {b.filename}", seqno=a.last + 1
                )
        self.chunks: list[ChunkName] = chunks
        self._cache: tuple[int, bytes, list[int]] | None = None

    @property
    def first_seqno(self) -> int:
        return self.chunks[0].first if self.chunks else 1

    @property
    def last_seqno(self) -> int:
        """Last seqno held (reads the in-progress chunk if there is one); 0 if empty."""
        if not self.chunks:
            return 0
        tail = self.chunks[-1]
        if tail.last is not None:
            return tail.last
        _data, positions = self._load(len(self.chunks) - 1)
        return tail.first + len(positions) - 1

    def _load(self, index: int, *, walk: bool = True) -> tuple[bytes, list[int]]:
        if walk and self._cache is not None and self._cache[0] == index:
            return self._cache[1], self._cache[2]
        chunk = self.chunks[index]
        path = os.path.join(self.directory, chunk.filename)
        if os.path.getsize(path) > CHUNK_FILE_BYTES_MAX:
            raise DecodeError(f"chunk {chunk.filename} exceeds 4 GiB", field="file_size")
        with open(path, "rb") as f:
            data = f.read()
        positions = parse_chunk(data, chunk, walk=walk)
        if walk:
            self._cache = (index, data, positions)
        return data, positions

    def chunk_data(self, *, walk: bool = True) -> Iterator[tuple[ChunkName, bytes, list[int]]]:
        """(name, file bytes, entry positions) per chunk, in seqno order.

        `walk=False` skips checking offset tables against entry headers: for callers that
        check every entry's bounds themselves (see `chunk_positions`).
        """
        for index, chunk in enumerate(self.chunks):
            data, positions = self._load(index, walk=walk)
            yield chunk, data, positions

    def entries(self, start: int = 1, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seqno, raw entry) for start ≤ seqno ≤ end (end None = to the last entry)."""
        for index, chunk in enumerate(self.chunks):
            if chunk.last is not None and chunk.last < start:
                continue
            if end is not None and chunk.first > end:
                return
            data, positions = self._load(index)
            for i in range(max(0, start - chunk.first), len(positions)):
                seqno = chunk.first + i
                if end is not None and seqno > end:
                    return
                pos = positions[i]
                yield seqno, data[pos : pos + _entry_len(data, pos)]

    def get(self, seqno: int) -> bytes:
        for _, raw in self.entries(seqno, seqno):
            return raw
        raise KeyError(f"seqno {seqno} not in ledger")


def _entry_len(data: bytes, pos: int) -> int:
    _version, _flags, lo, hi = _HEADER.unpack_from(data, pos)
    length: int = HEADER_SIZE + (lo | (hi << 16))
    return length


def entry_iv_seqno(data: bytes | memoryview, pos: int) -> int:
    """The IV seqno of the entry at `pos` (caller has checked the entry's bounds)."""
    value: int = _U64.unpack_from(data, pos + _IV_SEQNO_OFFSET)[0]
    return value
