"""Why an index query is not answered with seqnos. Each error has a stable `code` (the
`HttpError` code an app answers with, see `as_http_error`); `IndexNotReady` is no error
to the client: the app answers 202 Accepted with Retry-After."""

from __future__ import annotations

from charter.enclave_app.errors import EnclaveAppError, HttpError


class IndexingError(EnclaveAppError):
    default_code = "IndexingError"

    def as_http_error(self) -> HttpError:
        return HttpError(self.message, code=self.code)


class IndexNotReady(IndexingError):
    """Buckets the query needs are being fetched back from the host, or the range ends past
    what the index has seen committed: ask again after `retry_after_s`."""

    default_code = "IndexNotReady"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IndexRangeNotCovered(IndexingError):
    """The range starts before the first seqno this node's index holds (the node started
    from a snapshot at `covers_from - 1`)."""

    default_code = "IndexRangeNotCovered"

    def __init__(self, message: str, *, covers_from: int) -> None:
        super().__init__(message)
        self.covers_from = covers_from


class IndexRangeTooLarge(IndexingError):
    """The range spans more buckets than the enclave may hold at once: page it."""

    default_code = "IndexRangeTooLarge"

    def __init__(self, message: str, *, max_range_seqnos: int) -> None:
        super().__init__(message)
        self.max_range_seqnos = max_range_seqnos


class IndexBlobRejected(IndexingError):
    """The host handed back a blob this node did not store for that bucket (altered,
    swapped, replayed from an earlier version, or malformed): the query is refused rather
    than answered from it. `reason`: Tampered, Malformed or Missing."""

    default_code = "IndexBlobRejected"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
