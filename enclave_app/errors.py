"""Errors of the enclave's KV store and application framework.

Every error carries a stable machine-readable ``code``; the HTTP layer turns them into
``{"error": {"code": ..., "message": ...}}`` bodies (DESIGN §9).
"""

from __future__ import annotations

from charter.governance.errors import STATUS_BY_CODE


class EnclaveAppError(Exception):
    """Base of the enclave application errors; ``code`` is stable, ``message`` is for people."""

    default_code = "EnclaveAppError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code


class KVError(EnclaveAppError):
    """Bad input to the KV store: undecodable snapshot bytes, a value a codec cannot decode.

    ``offset`` is the byte offset in the input where decoding failed, when known.
    """

    default_code = "KVError"

    def __init__(self, message: str, *, code: str | None = None, offset: int | None = None) -> None:
        super().__init__(
            message if offset is None else f"{message} (at offset {offset})", code=code
        )
        self.offset = offset


class HttpError(EnclaveAppError):
    """Raised by an endpoint handler to answer with an error status and a JSON error body.

    >>> raise HttpError("No such record", code="ResourceNotFound")

    The status of a code the service itself sends comes from `STATUS_BY_CODE`; an
    application's own code (one without a row) names its status:

    >>> raise HttpError("already there", code="RecordExists", status=409)
    """

    default_code = "HttpError"

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = error_status(code, status)


def error_status(code: str, status: int | None = None) -> int:
    """The HTTP status of `code`: its row in `STATUS_BY_CODE`, or, for an application's own
    code, the `status` it names. A code with a row is never sent with another status."""
    row = STATUS_BY_CODE.get(code)
    if row is None:
        assert status is not None, (
            f"error code {code!r} has no row in STATUS_BY_CODE: name a status"
        )
        assert 400 <= status <= 599, f"an error status must be 4xx/5xx, got {status}"
        return status
    assert status in (None, row), f"{code} is sent with {row} (STATUS_BY_CODE), not {status}"
    return row


class AppLoadError(EnclaveAppError):
    """The node config's ``app`` module cannot serve: it does not import, or has no ``app``.

    The message is one line that names the module, what went wrong and how to fix it; the
    node stops with it instead of a stack trace.
    """

    default_code = "AppLoadError"


class StartRefused(EnclaveAppError):
    """The node's workspace cannot be started as it is (e.g. a recovery node stopped before
    its recovery completed). One line saying why and what to do instead; no stack trace."""

    default_code = "StartRefused"
