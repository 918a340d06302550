"""Errors raised by the ledger package.

Every decoder of outside bytes raises only `LedgerError` subclasses; each carries a stable,
machine-readable `code` and, where it applies, the byte offset or field that was wrong.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger package raises on bad input or failed verification."""

    code = "LedgerError"

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None):
        self.offset = offset
        self.field = field
        where = []
        if offset is not None:
            where.append(f"offset={offset}")
        if field is not None:
            where.append(f"field={field}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class DecodeError(LedgerError):
    """Bytes that do not follow the format (truncated, oversized, wrong type or version)."""

    code = "DecodeError"


class VerificationError(LedgerError):
    """Well-formed data whose signature, proof, digest or chain does not check out."""

    code = "VerificationError"


class AuditError(LedgerError):
    """A ledger directory that fails validation; `seqno` is the first bad transaction."""

    code = "AuditError"

    def __init__(self, message: str, *, seqno: int | None = None, **kwargs: object) -> None:
        self.seqno = seqno
        prefix = f"seqno {seqno}: " if seqno is not None else ""
        super().__init__(prefix + message, **kwargs)  # type: ignore[arg-type]


class LedgerWriteError(LedgerError):
    """Writing or syncing a ledger or snapshot file failed (e.g. the disk is full). Names the
    file, the errno, how many bytes the write still needed and how many the disk had free."""

    code = "LedgerWriteError"

    def __init__(
        self,
        message: str,
        *,
        path: str,
        errno: int | None = None,
        needed_bytes: int | None = None,
        free_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.errno = errno
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        super().__init__(message)


class AuditInterrupted(LedgerError):
    """An audit stopped by the user (Ctrl-C) before the end: `seqno` is the last entry
    scanned, `total` the ledger's last seqno, `checkpoint` (an `AuditCheckpoint`, when the
    audit was asked for one) the state after the last signature fully verified by then."""

    code = "AuditInterrupted"

    def __init__(self, *, seqno: int, total: int, checkpoint: object | None = None) -> None:
        self.seqno = seqno
        self.total = total
        self.checkpoint = checkpoint
        super().__init__(f"audit interrupted after seqno {seqno} of {total}")
