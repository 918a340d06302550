"""Scanning ledger chunks for an audit: the order-independent part of the work.

Per entry: structure, seqnos, entry type and chunk flags are checked, the Merkle leaf is
computed, and the entries whose public tables the validator must read are picked out. None
of it depends on validator state, so parts of chunks can be scanned in any process.

`scans(jobs, ...)` yields the scans in ledger order. With `processes` > 0 it farms parts out
to a pool of forked processes (and scans parts itself while it waits), and each scan then
carries, instead of its leaves, the perfect Merkle subtrees its leaves fold into (split at
the entries the validator reads): the auditing process appends those to its frontier with
O(log n) work, so hashing, the bulk of the cost, runs in parallel. Results come back in
order, and at most a bounded number of parts is in flight, so memory does not grow with the
ledger; the first failure is the one a serial scan finds.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import signal
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from typing import Any

from charter.ledger.audit_locate import chunk_damage
from charter.ledger.audit_workers import close_inherited_pipes
from charter.ledger.chunks import CHUNK_FILE_BYTES_MAX, ChunkName, parse_chunk
from charter.ledger.entry import (
    ENTRY_TYPE_SNAPSHOT,
    ENTRY_TYPE_WRITE_SET,
    ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE,
    ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS,
    ENTRY_VERSION,
    FLAG_FORCE_CHUNK_AFTER,
    FLAG_FORCE_CHUNK_BEFORE,
    PUBLIC_DOMAIN_OFFSET,
)
from charter.ledger.errors import AuditError, DecodeError, LedgerError

# Fixed fields of an entry from its start: header (version, flags, u48 size), GCM tag
# (skipped), IV (seqno, view), public_size, then the public domain's entry type and seqno.
_FIXED = struct.Struct("<BBHI16xQIQBq")
_U64 = struct.Struct("<Q")
_IV_VIEW = struct.Struct("<I")


# Entries per part when a chunk is scanned in parts (with workers; see `_scans`).
PART_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class ChunkScan:
    """What scanning one chunk found: leaves in order, the entries the validator must look
    at (seqno, view, public table bytes), and the first structural error if any.

    Built without any validator state, so chunks can be scanned in other processes.
    """

    first: int
    leaves: list[bytes]  # one per entry, up to (excluding) the first bad entry
    special: tuple[tuple[int, int, bytes], ...]
    last_view: int
    deprecated: int
    error: tuple[int, str] | None
    ends_chunk: bool = True  # False for all but the last part of a chunk scanned in parts
    # From a pool process: no `leaves`, but per run of entries between (and before) the
    # `special` ones, the (level, root) of the perfect subtrees their leaves fold into, in
    # order; and the leaf of each special entry (for checkpoints).
    segments: tuple[tuple[tuple[int, bytes], ...], ...] | None = None
    special_leaves: tuple[bytes, ...] = ()


Job = tuple[str, int, int | None, bool, int]


def _serial_scans(jobs: list[Job], part_entries: int) -> Iterator[ChunkScan]:
    """Scans of each chunk in order, in parts of `part_entries` (0: whole chunks), stopping
    after the first that found an error."""
    for job in jobs:
        for scan in _scan_parts(*job, part_entries=part_entries):
            yield scan
            if scan.error is not None:
                return


def _scan_parts(
    path: str,
    first: int,
    last: int | None,
    accept_deprecated: bool,
    resume_at: int,
    *,
    part_entries: int,
) -> Iterator[ChunkScan]:
    """Read and check a chunk file: structure, seqnos, entry types, leaves (no crypto), as
    scans of up to `part_entries` entries each (0: one scan), from seqno `resume_at` on (the
    entries before it were audited earlier). Stops after a failing part."""
    mapped: mmap.mmap | None = None
    data: bytes | mmap.mmap = b""
    try:
        try:
            with open(path, "rb") as f:
                size_bytes = os.fstat(f.fileno()).st_size
                if size_bytes > CHUNK_FILE_BYTES_MAX:
                    raise DecodeError(f"chunk {path} exceeds 4 GiB", field="file_size")
                # Map rather than read: hashing straight from the page cache saves a copy.
                if size_bytes:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            data = mapped if mapped is not None else b""
            name = ChunkName(os.path.basename(path), first, last, False, False, False)
            positions = parse_chunk(data, name, walk=False)
        except LedgerError as exc:
            damage = chunk_damage(data, os.path.basename(path), first, exc)
            yield ChunkScan(first, [], (), 0, 0, damage)
            return
        except OSError as exc:
            message = f"cannot read chunk {os.path.basename(path)}: {exc.strerror}"
            yield ChunkScan(first, [], (), 0, 0, (first, message))
            return
        (table_offset,) = _U64.unpack_from(data, 0)
        bounds = positions[1:]
        bounds.append(table_offset or len(data))
        shape = _ChunkShape(first, positions[-1] if positions else -1, last is not None)
        step = part_entries or max(len(positions), 1)
        for start in range(resume_at - first, max(len(positions), 1), step):
            stop = min(start + step, len(positions))
            scan = _scan_part(
                data,
                positions[start:stop],
                bounds[start:stop],
                first + start,
                shape,
                accept_deprecated,
                ends_chunk=stop == len(positions),
            )
            yield scan
            if scan.error is not None:
                return
    finally:
        if mapped is not None:
            mapped.close()


@dataclass(frozen=True, slots=True)
class _ChunkShape:
    """What the per-entry checks need to know about the whole chunk."""

    first: int
    last_pos: int  # position of the chunk's last entry (-1 if none)
    complete: bool


def _scan_part(
    data: bytes | mmap.mmap,
    positions: list[int],
    bounds: list[int],
    first: int,
    shape: _ChunkShape,
    accept_deprecated: bool,
    *,
    ends_chunk: bool,
) -> ChunkScan:
    """Check a run of entries starting at seqno `first` and compute their leaves."""
    special: list[tuple[int, int, bytes]] = []
    legacy: dict[int, int] = {}  # index in this run -> deprecated entry type
    error: tuple[int, str] | None = None
    valid = len(positions)
    try:
        _check_entries(data, positions, bounds, first, shape, special, legacy)
    except AuditError as exc:
        valid = exc.seqno - first if exc.seqno is not None else 0
        error = (first + valid, str(exc))
    if legacy and not accept_deprecated:
        index = min(legacy)
        if index < valid:
            valid = index
            error = (first + index, f"deprecated entry type {legacy[index]}")
    leaves = _entry_leaves(data, positions[:valid], bounds[:valid], legacy)
    special = [entry for entry in special if entry[0] < first + valid]
    deprecated = sum(1 for index in legacy if index < valid)
    view = 0
    if valid:
        view = _IV_VIEW.unpack_from(data, positions[valid - 1] + 32)[0] & 0x7FFFFFFF
    return ChunkScan(first, leaves, tuple(special), view, deprecated, error, ends_chunk)


def _check_entries(
    data: bytes | mmap.mmap,
    positions: list[int],
    bounds: list[int],
    first: int,
    shape: _ChunkShape,
    special: list[tuple[int, int, bytes]],
    legacy: dict[int, int],
) -> None:
    """The hot loop: checks each entry's structure and finds the ones to decode.

    Positions came from the offset table unchecked (`walk=False`): every entry must end
    exactly where the next one starts (`bounds`: the next position, or where the entries
    end), so a bad table is caught here at no extra cost. Per entry: one struct unpack for
    the fixed fields and a C-speed substring test that decides whether its public tables
    need decoding at all. Hashing is left to `_entry_leaves`, which does it in comprehensions.
    """
    fixed = _FIXED.unpack_from
    find = data.find
    seqno = first - 1
    chunk_first = shape.first
    last_pos = shape.last_pos
    complete = shape.complete
    try:
        for pos, next_pos in zip(positions, bounds, strict=True):
            seqno += 1
            version, flags, lo, hi, iv_seqno, iv_view, public_size, entry_type, public_seqno = (
                fixed(data, pos)
            )
            # Each entry must end where the next begins (or where the entries end): with
            # increasing positions from offset 8 this proves the whole table.
            if pos + 8 + (lo | (hi << 16)) != next_pos or version != ENTRY_VERSION:
                raise AuditError("entry is malformed or misplaced", seqno=seqno)
            if iv_seqno != seqno or public_seqno != seqno:
                raise AuditError(
                    f"entry seqnos (IV {iv_seqno}, public {public_seqno}) do not match position",
                    seqno=seqno,
                )
            pd_end = pos + PUBLIC_DOMAIN_OFFSET + public_size
            if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS and (
                public_size >= 81 and pd_end <= next_pos
            ):
                tables_at = pos + PUBLIC_DOMAIN_OFFSET + 81
            else:
                if pd_end > next_pos:
                    raise AuditError("public domain exceeds its entry", seqno=seqno)
                offset = _legacy_tables_at(entry_type, public_size, seqno)
                tables_at = pos + PUBLIC_DOMAIN_OFFSET + offset
                legacy[seqno - first] = entry_type
            if flags:
                if flags & FLAG_FORCE_CHUNK_AFTER and (pos != last_pos or not complete):
                    raise AuditError(
                        "entry forces a chunk end but the chunk continues", seqno=seqno
                    )
                if flags & FLAG_FORCE_CHUNK_BEFORE and seqno != chunk_first:
                    raise AuditError("entry forces a new chunk but is not its first", seqno=seqno)
            # Every table the validator reacts to is named "public:ccf.…"; if those bytes do
            # not occur, the entry cannot hold one and its tables need not be decoded.
            if find(b"public:ccf.", tables_at, pd_end) >= 0:
                special.append((seqno, iv_view & 0x7FFFFFFF, data[tables_at:pd_end]))
    except struct.error:
        # A position or size pointing past the end of the file.
        raise AuditError("entry runs past the end of its chunk", seqno=seqno) from None


def _legacy_tables_at(entry_type: int, public_size: int, seqno: int) -> int:
    """Where the tables start in a public domain other than a well-formed type 4's."""
    if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS:
        raise AuditError("public domain too short", seqno=seqno)
    if public_size < 17:
        raise AuditError("public domain too short", seqno=seqno)
    if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE:
        if public_size < 49:
            raise AuditError("public domain too short", seqno=seqno)
        return 49
    if entry_type == ENTRY_TYPE_WRITE_SET:
        return 17
    if entry_type == ENTRY_TYPE_SNAPSHOT:
        raise AuditError("snapshot entry inside a ledger chunk", seqno=seqno)
    raise AuditError(f"unsupported entry type {entry_type}", seqno=seqno)


def _entry_leaves(
    data: bytes | mmap.mmap, positions: list[int], ends: list[int], legacy: dict[int, int]
) -> list[bytes]:
    """Merkle leaves of entries already checked by `_check_entries` (as ccf.ledger computes
    them): type 4 → H(wsd ‖ evidence ‖ claims), type 3 → H(wsd ‖ evidence), type 0 → wsd."""
    if not positions:
        return []
    sha256 = hashlib.sha256
    # Checked entries end exactly at `ends` (the next position or where the entries end).
    with memoryview(data) as mv:
        wsds = [sha256(mv[a:b]).digest() for a, b in zip(positions, ends, strict=True)]
    # Type 4 public domain (at +44): type, seqno, claims digest (+53), evidence digest (+85).
    leaves = [
        sha256(wsd + data[pos + 85 : pos + 117] + data[pos + 53 : pos + 85]).digest()
        for wsd, pos in zip(wsds, positions, strict=True)
    ]
    for index, entry_type in legacy.items():
        if index >= len(positions):
            continue
        if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE:
            pos = positions[index]
            leaves[index] = sha256(wsds[index] + data[pos + 53 : pos + 85]).digest()
        else:
            leaves[index] = wsds[index]
    return leaves


# -- scanning in a pool of processes ---------------------------------------------------------

# Entries per part sent to a pool process: ~2-3 ms of work, far above a task's overhead.
POOL_PART_ENTRIES = 2048
# Parts in flight per pool process: enough that none runs dry while results are absorbed.
_IN_FLIGHT_PER_PROCESS = 4
# Parts the auditing process may scan itself while it waits for the oldest one.
_STOLEN_MAX = 4

_PartJob = tuple[str, int, int | None, bool, int, int, bool]


def scans(jobs: list[Job], *, processes: int, leaves: bool = True) -> Iterator[ChunkScan]:
    """Scans of the jobs' chunks in ledger order, stopping after the first that failed.

    `processes` = 0 scans here, in parts of PART_ENTRIES when `leaves` (so that signature
    checks interleave with scanning). Otherwise a pool of that many forked processes scans
    parts of POOL_PART_ENTRIES and sends back folded subtrees (or, with `leaves`, the
    leaves themselves, which a checkpoint resume needs one by one).
    """
    if processes <= 0:
        yield from _serial_scans(jobs, PART_ENTRIES)
        return
    context = multiprocessing.get_context("fork")
    pool = context.Pool(processes, initializer=_init_process)
    window: deque[AsyncResult[ChunkScan] | ChunkScan] = deque()
    parts = _parts(jobs, not leaves)
    pending: _PartJob | None = next(parts, None)
    try:
        while window or pending is not None:
            while pending is not None and len(window) < processes * _IN_FLIGHT_PER_PROCESS:
                window.append(pool.apply_async(scan_part_job, pending))
                pending = next(parts, None)
            head = window[0]
            # Rather than wait, scan the next part here (this process has a core too).
            stolen = 0
            while (
                isinstance(head, AsyncResult)
                and not head.ready()
                and pending is not None
                and stolen < _STOLEN_MAX
            ):
                window.append(scan_part_job(*pending))
                pending = next(parts, None)
                stolen += 1
            window.popleft()
            scan = head.get() if isinstance(head, AsyncResult) else head
            yield scan
            if scan.error is not None:
                return
    finally:
        pool.terminate()
        pool.join()
        _forget_chunk()


def _init_process() -> None:
    # Ctrl-C is the auditing process's to handle: it stops the pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_pipes()


def _parts(jobs: list[Job], nodes: bool) -> Iterator[_PartJob]:
    """Pool jobs of up to POOL_PART_ENTRIES seqnos; a chunk with no end seqno in its name
    (in progress) is one job, as its entry count is known only from its bytes."""
    for path, first, last, accept, resume_at in jobs:
        if last is None:
            yield (path, first, last, accept, resume_at, 1 << 62, nodes)
            continue
        for lo in range(resume_at, last + 1, POOL_PART_ENTRIES):
            yield (path, first, last, accept, lo, min(lo + POOL_PART_ENTRIES, last + 1), nodes)


# The chunk a process scanned last, kept open for its next part (parts come in order).
_CHUNK: dict[str, Any] = {}


def _forget_chunk() -> None:
    mapped = _CHUNK.pop("map", None)
    _CHUNK.clear()
    if mapped is not None:
        mapped.close()


def _load_chunk(path: str, first: int, last: int | None) -> Any:
    """(data, positions, bounds, shape), or a ChunkScan carrying the chunk's error."""
    if _CHUNK.get("path") == path:
        return _CHUNK["loaded"]
    _forget_chunk()
    data: bytes | mmap.mmap = b""
    try:
        with open(path, "rb") as f:
            size_bytes = os.fstat(f.fileno()).st_size
            if size_bytes > CHUNK_FILE_BYTES_MAX:
                raise DecodeError(f"chunk {path} exceeds 4 GiB", field="file_size")
            if size_bytes:
                data = _CHUNK["map"] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        name = ChunkName(os.path.basename(path), first, last, False, False, False)
        positions = parse_chunk(data, name, walk=False)
    except LedgerError as exc:
        loaded: Any = ChunkScan(
            first, [], (), 0, 0, chunk_damage(data, os.path.basename(path), first, exc)
        )
    except OSError as exc:
        message = f"cannot read chunk {os.path.basename(path)}: {exc.strerror}"
        loaded = ChunkScan(first, [], (), 0, 0, (first, message))
    else:
        (table_offset,) = _U64.unpack_from(data, 0)
        bounds = positions[1:]
        bounds.append(table_offset or len(data))
        shape = _ChunkShape(first, positions[-1] if positions else -1, last is not None)
        loaded = (data, positions, bounds, shape)
    _CHUNK["path"] = path
    _CHUNK["loaded"] = loaded
    return loaded


def scan_part_job(
    path: str, first: int, last: int | None, accept: bool, lo: int, hi: int, nodes: bool
) -> ChunkScan:
    """Scan seqnos lo..hi-1 of a chunk (run in a pool process or here)."""
    loaded = _load_chunk(path, first, last)
    if isinstance(loaded, ChunkScan):
        return loaded
    data, positions, bounds, shape = loaded
    start, stop = lo - first, min(hi - first, len(positions))
    scan = _scan_part(
        data,
        positions[start:stop],
        bounds[start:stop],
        lo,
        shape,
        accept,
        ends_chunk=stop == len(positions),
    )
    return _folded(scan) if nodes else scan


def _folded(scan: ChunkScan) -> ChunkScan:
    """The scan with its leaves folded into perfect subtrees, split at special entries."""
    leaves, first = scan.leaves, scan.first
    cuts = [seqno - first for seqno, _view, _tables in scan.special]
    segments = []
    previous = 0
    for cut in [*cuts, len(leaves)]:
        segments.append(aligned_subtrees(leaves[previous:cut], first + previous))
        previous = cut
    return ChunkScan(
        scan.first,
        [],
        scan.special,
        scan.last_view,
        scan.deprecated,
        scan.error,
        scan.ends_chunk,
        tuple(segments),
        tuple(leaves[cut] for cut in cuts),
    )


def aligned_subtrees(leaves: list[bytes], start: int) -> tuple[tuple[int, bytes], ...]:
    """The leaves of indexes start.. as the largest aligned perfect subtrees, left to right:
    (level, root) pairs that `MerkleFrontier.append_subtree` takes in order."""
    out = []
    sha256 = hashlib.sha256
    index, done, count = start, 0, len(leaves)
    while done < count:
        level = (index & -index).bit_length() - 1 if index else 62
        while 1 << level > count - done:
            level -= 1
        nodes = leaves[done : done + (1 << level)]
        while len(nodes) > 1:
            nodes = [sha256(a + b).digest() for a, b in zip(nodes[0::2], nodes[1::2], strict=True)]
        out.append((level, nodes[0]))
        index += 1 << level
        done += 1 << level
    return tuple(out)
