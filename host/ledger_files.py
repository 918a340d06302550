"""Ledger and snapshot files beyond the writer: read-only ledger directories, the archive,
the bounded-disk cleanup (CCF's `files_cleanup`) and the files the operator endpoints serve.

Blocking file I/O only, run by the storage worker (host/storage.py) in its order. Nothing read
here is trusted by the enclave: entries are checked against its Merkle tree, snapshots against
the service certificate.

The cleanup rule, in full:
- Snapshots: committed snapshot files beyond the newest `max_snapshots` are deleted (oldest
  first), and uncommitted ones older than the newest committed one (never to be completed).
- Ledger chunks, only when an archive directory is configured: a chunk is deleted when it is
  committed (`ledger_a-b.committed`), it ends before the newest committed snapshot's seqno
  (`b < s`), and the archive holds a file of the same name whose SHA-256, computed now from
  the archive's bytes, equals the SHA-256 of the local file. So the chunks holding the
  snapshot's seqno, its evidence and the signature over it, and everything after them, stay:
  a restart or a joiner starts from the snapshot with what follows it on this disk, and any
  older entry is still found in the archive (`ChunkSources`). Without a committed snapshot
  no chunk is deleted. Deletion goes oldest first and stops at the first chunk it may not
  delete, so the ledger directory always holds one contiguous run of chunks (as a ledger
  must): an archive copy that is missing, or that differs (logged), holds back that chunk
  and every later one until the archive is put right. An archive directory that is gone, is
  not a directory or cannot be listed holds them all back likewise, logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from charter.enclave_app.interface import parse_snapshot_name
from charter.ledger.chunks import (
    CHUNK_FILE_BYTES_MAX,
    ChunkName,
    LedgerWriter,
    parse_chunk,
    parse_chunk_name,
)
from charter.ledger.errors import LedgerError

_log = logging.getLogger(__name__)

HASH_READ_BYTES = 1 << 20
# A directory holding more chunk files than this is read up to it (and the rest logged):
# the listing of one directory must stay bounded like everything the host reads.
CHUNKS_PER_DIRECTORY_MAX = 1_000_000


def file_sha256(path: Path, limit_bytes: int = CHUNK_FILE_BYTES_MAX) -> bytes | None:
    """SHA-256 of a file's bytes read now, or None if it cannot be read or is over the limit."""
    digest = hashlib.sha256()
    total = 0
    try:
        with path.open("rb") as f:
            while block := f.read(HASH_READ_BYTES):
                total += len(block)
                if total > limit_bytes:
                    return None
                digest.update(block)
    except OSError as e:
        _log.warning("cannot read file=%s reason=%s", path, e.strerror)
        return None
    return digest.digest()


def committed_chunk_names(directory: Path) -> list[ChunkName]:
    """The committed chunk files of a directory, by first seqno (other names are skipped)."""
    found: list[ChunkName] = []
    try:
        names = os.listdir(directory)
    except OSError as e:
        _log.warning("cannot list ledger directory dir=%s reason=%s", directory, e.strerror)
        return found
    for filename in names:
        if not filename.startswith("ledger_") or not filename.endswith(".committed"):
            continue
        try:
            parsed = parse_chunk_name(filename)
        except LedgerError:
            continue
        if parsed.committed and not parsed.recovery and not parsed.ignored:
            found.append(parsed)
        if len(found) >= CHUNKS_PER_DIRECTORY_MAX:
            _log.error("too many chunk files dir=%s max=%d", directory, CHUNKS_PER_DIRECTORY_MAX)
            break
    found.sort(key=lambda c: c.first)
    return found


def read_chunk_entries(path: Path, chunk: ChunkName) -> tuple[bytes, list[int]] | None:
    """A committed chunk's bytes and entry positions, or None (logged) if it is unreadable,
    too large or malformed."""
    try:
        if path.stat().st_size > CHUNK_FILE_BYTES_MAX:
            _log.error("chunk file too large file=%s", path)
            return None
        data = path.read_bytes()
        return data, parse_chunk(data, chunk)
    except OSError as e:
        _log.warning("cannot read chunk file=%s reason=%s", path, e.strerror)
    except LedgerError as e:
        _log.error("malformed chunk file=%s reason=%s", path, e)
    return None


class ChunkSources:
    """Where committed entries the ledger directory does not hold are found: the read-only
    ledger directories in the order configured, then the archive."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories
        self._listing: list[tuple[Path, list[ChunkName]]] | None = None

    def _chunks(self, refresh: bool) -> list[tuple[Path, list[ChunkName]]]:
        if self._listing is None or refresh:
            self._listing = [(d, committed_chunk_names(d)) for d in self.directories]
        return self._listing

    def find(self, seqno: int) -> tuple[Path, ChunkName] | None:
        """The committed chunk file holding `seqno`, if any directory has one."""
        # A cached listing first; files may have arrived, moved or gone since (the operator
        # manages these directories), so a miss or a vanished file lists them again.
        for refresh in (False, True):
            for directory, chunks in self._chunks(refresh):
                for chunk in chunks:
                    assert chunk.last is not None
                    path = directory / chunk.filename
                    if chunk.first <= seqno <= chunk.last and path.is_file():
                        return path, chunk
        return None

    def find_name(self, filename: str) -> Path | None:
        for directory in self.directories:
            path = directory / filename
            if path.is_file():
                return path
        return None


@dataclass(slots=True)
class CleanupReport:
    """What one cleanup pass did (for logs and tests)."""

    snapshots_deleted: list[str] = field(default_factory=list)
    chunks_deleted: list[str] = field(default_factory=list)
    chunks_blocked: list[str] = field(default_factory=list)


def committed_snapshots(snapshots_dir: Path) -> list[tuple[int, str]]:
    """(seqno, file name) of each committed snapshot, newest first."""
    found = []
    for name in os.listdir(snapshots_dir):
        parsed = parse_snapshot_name(name)
        if parsed is not None and parsed[2]:
            found.append((parsed[0], name))
    found.sort(reverse=True)
    return found


class FilesCleanup:
    """CCF's `files_cleanup` for one node's ledger and snapshot directories (rule above)."""

    def __init__(
        self,
        *,
        writer: LedgerWriter,
        ledger_dir: Path,
        snapshots_dir: Path,
        max_snapshots: int | None,
        archive_dir: Path | None,
    ) -> None:
        assert max_snapshots is None or max_snapshots >= 1
        self.writer = writer
        self.ledger_dir = ledger_dir
        self.snapshots_dir = snapshots_dir
        self.max_snapshots = max_snapshots
        self.archive_dir = archive_dir
        # Chunks whose archive copy differed, with the archive file's (size, mtime): logged
        # once, compared again only once the archive file changes.
        self._differs: dict[str, tuple[int, int]] = {}
        # Why the archive directory itself cannot be used (gone, not a directory, unreadable):
        # logged once when it becomes so, and once when it is usable again.
        self._archive_problem: str | None = None

    @property
    def enabled(self) -> bool:
        return self.max_snapshots is not None or self.archive_dir is not None

    def run(self) -> CleanupReport:
        report = CleanupReport()
        snapshots = committed_snapshots(self.snapshots_dir)
        if self.max_snapshots is not None:
            for seqno, name in snapshots[self.max_snapshots :]:
                (self.snapshots_dir / name).unlink(missing_ok=True)
                report.snapshots_deleted.append(name)
                _log.info("event=snapshot_deleted file=%s seqno=%d", name, seqno)
            snapshots = snapshots[: self.max_snapshots]
            if snapshots:
                # An uncommitted snapshot older than a committed one will never be completed
                # (one that was abandoned): it only takes space.
                for name in os.listdir(self.snapshots_dir):
                    parsed = parse_snapshot_name(name)
                    if parsed is not None and not parsed[2] and parsed[0] < snapshots[0][0]:
                        (self.snapshots_dir / name).unlink(missing_ok=True)
                        report.snapshots_deleted.append(name)
                        _log.info("event=snapshot_deleted file=%s uncommitted", name)
        if self.archive_dir is not None and snapshots:
            self._delete_archived_chunks(snapshots[0][0], report)
        return report

    def _delete_archived_chunks(self, snapshot_seqno: int, report: CleanupReport) -> None:
        assert self.archive_dir is not None
        for first, last in self.writer.committed_chunks():
            if last >= snapshot_seqno:
                break  # chunks are in order: the rest hold the snapshot or follow it
            name = f"ledger_{first}-{last}.committed"
            local = self.ledger_dir / name
            archived = self.archive_dir / name
            try:
                archived_stat = archived.stat()
            except OSError:
                # Not archived (yet): it and all later chunks stay; say so if the archive
                # directory itself is the reason.
                self._note_archive_problem(name)
                return
            self._note_archive_problem(None)
            mark = (archived_stat.st_size, archived_stat.st_mtime_ns)
            if self._differs.get(name) == mark:
                report.chunks_blocked.append(name)
                return
            local_digest = file_sha256(local)
            archived_digest = file_sha256(archived)
            if local_digest is None or archived_digest is None or local_digest != archived_digest:
                self._differs[name] = mark
                report.chunks_blocked.append(name)
                _log.warning(
                    "event=ledger_chunk_kept file=%s reason=archive copy differs "
                    "archive=%s local_sha256=%s archive_sha256=%s",
                    name,
                    archived,
                    local_digest.hex() if local_digest else "unreadable",
                    archived_digest.hex() if archived_digest else "unreadable",
                )
                return
            self._differs.pop(name, None)
            self.writer.remove_committed_chunk(first, last)
            report.chunks_deleted.append(name)
            _log.info(
                "event=ledger_chunk_deleted file=%s sha256=%s archive=%s",
                name,
                local_digest.hex(),
                archived,
            )

    def _note_archive_problem(self, kept: str | None) -> None:
        """Log once why chunks stay while the archive directory is unusable (`kept`: the
        first chunk held back, None when its archive copy was found), and once when it can
        be used again."""
        assert self.archive_dir is not None
        problem = None
        if kept is not None:
            try:
                if not stat.S_ISDIR(os.stat(self.archive_dir).st_mode):
                    problem = "not a directory"
                else:
                    os.listdir(self.archive_dir)
            except OSError as e:
                problem = e.strerror or type(e).__name__
        if problem == self._archive_problem:
            return
        if problem is not None:
            _log.warning(
                "event=ledger_archive_unusable archive=%s reason=%s kept_from=%s",
                self.archive_dir,
                problem,
                kept,
            )
        else:
            _log.info("event=ledger_archive_usable archive=%s", self.archive_dir)
        self._archive_problem = problem
