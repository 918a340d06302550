"""Errors of the enclave's KV store and application framework.

Every error carries a stable machine-readable ``code``; the HTTP layer turns them into
``{"error": {"code": ..., "message": ...}}`` bodies (DESIGN §9).
"""

from __future__ import annotations


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

    >>> raise HttpError(404, "ResourceNotFound", "No such record")
    """

    default_code = "HttpError"

    def __init__(self, status: int, code: str, message: str) -> None:
        assert 400 <= status <= 599, f"an HttpError status must be 4xx/5xx, got {status}"
        super().__init__(message, code=code)
        self.status = status


class AppLoadError(EnclaveAppError):
    """The node config's ``app`` module cannot serve: it does not import, or has no ``app``.

    The message is one line that names the module, what went wrong and how to fix it; the
    node stops with it instead of a stack trace.
    """

    default_code = "AppLoadError"
