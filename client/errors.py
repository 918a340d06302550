"""Typed errors of the Charter SDK.

Every failure the SDK reports is a `CharterError`. Errors returned by the service carry the
HTTP status and the service's own error code (`{"error": {"code", "message"}}`, DESIGN §9);
failures on the client side (unreachable service, a bad file, a timeout) use `status=None`
and a code of our own, so that a caller (and the `charter` command line) can print one clear
line for any of them.
"""

from __future__ import annotations

import json
from typing import Any

# A service error body is JSON of a few hundred bytes; anything longer is cut in messages so
# that one broken proxy page cannot flood a terminal.
ERROR_MESSAGE_CHARS_MAX = 500


class CharterError(Exception):
    """Base of every SDK error: `status` (HTTP status or None), `code`, `message`."""

    default_code = "CharterError"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        self.status = status
        self.code = code or self.default_code
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        # The service's code is what its operators search for; a client-side error's class
        # name would only be noise in the one line a user reads.
        if self.status is not None:
            return f"HTTP {self.status} {self.code}: {self.message}"
        return self.message


# --- errors answered by the service ----------------------------------------------------------


class InvalidInput(CharterError):
    """400: the service rejected the request as malformed or invalid."""

    default_code = "InvalidInput"


class Unauthorized(CharterError):
    """401: no or unknown credentials (client cert or COSE signature)."""

    default_code = "Unauthorized"


class Forbidden(CharterError):
    """403: the caller is known but not allowed to do this."""

    default_code = "Forbidden"


class NotFound(CharterError):
    """404: unknown path, transaction, proposal, member, ..."""

    default_code = "NotFound"


class Conflict(CharterError):
    """409: the request conflicts with the current state (e.g. a proposal no longer open)."""

    default_code = "Conflict"


class TooManyRequests(CharterError):
    """429: the service asks the client to slow down."""

    default_code = "TooManyRequests"


class InternalError(CharterError):
    """500: the service failed while handling the request."""

    default_code = "InternalError"


class ServiceUnavailable(CharterError):
    """503 (or 502/504): the node cannot serve now (not open, backpressure, no primary)."""

    default_code = "ServiceUnavailable"


# --- errors detected by the client ------------------------------------------------------------


class ConnectionFailed(CharterError):
    """The service could not be reached, or the TLS handshake failed."""

    default_code = "ConnectionFailed"


class CertificateRefused(ConnectionFailed):
    """The node refused the client certificate: it is not, or no longer, registered.

    TLS gives the client no error message for this: the node ends the handshake, and the
    client sees its connection reset. The SDK checks that the node itself answers (without
    a client certificate) before it reports this rather than a plain `ConnectionFailed`.
    """

    default_code = "CertificateRefused"


class ProtocolError(CharterError):
    """The service answered something that does not follow the documented API."""

    default_code = "ProtocolError"


class CommitTimeout(CharterError):
    """A transaction (or a receipt) was still pending when the caller's deadline passed."""

    default_code = "CommitTimeout"


class TransactionInvalid(CharterError):
    """The service reports the transaction as Invalid: it was rolled back and never commits."""

    default_code = "TransactionInvalid"


class IdentityError(CharterError):
    """A key, certificate or network file is missing, unreadable, or of the wrong kind."""

    default_code = "IdentityError"


class ReceiptInvalid(CharterError):
    """A receipt or ledger did not verify against the service certificate."""

    default_code = "ReceiptInvalid"


class QuoteInvalid(CharterError):
    """A node's attestation evidence is malformed or fails a check (named first)."""

    default_code = "QuoteInvalid"


class LedgerAuditFailed(CharterError):
    """A ledger directory failed the audit; `seqno` is the first bad transaction."""

    default_code = "LedgerAuditFailed"

    def __init__(self, message: str, *, seqno: int | None = None, code: str | None = None):
        self.seqno = seqno
        super().__init__(message, code=code)


_BY_STATUS: dict[int, type[CharterError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    500: InternalError,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def error_class_for_status(status: int) -> type[CharterError]:
    """The exception family for an HTTP error status (CharterError for unmapped ones)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 500 <= status < 600:
        return InternalError
    return CharterError


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > ERROR_MESSAGE_CHARS_MAX:
        return text[:ERROR_MESSAGE_CHARS_MAX] + "…"
    return text


def error_from_response(status: int, body: Any) -> CharterError:
    """Build the typed error for a non-2xx answer.

    `body` is the decoded JSON body if there was one, else bytes or text. A CCF-shaped body
    gives the service's code and message; anything else falls back to the HTTP reason.
    """
    assert status >= 300, "only error statuses map to exceptions"
    cls = error_class_for_status(status)
    code: str | None = None
    message: str | None = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            raw_code = err.get("code")
            raw_message = err.get("message")
            code = str(raw_code) if raw_code is not None else None
            message = str(raw_message) if raw_message is not None else None
        if message is None:
            message = json.dumps(body, sort_keys=True)
    elif isinstance(body, bytes | bytearray):
        message = bytes(body).decode("utf-8", errors="replace")
    elif isinstance(body, str):
        message = body
    if not message:
        message = f"request failed with HTTP status {status}"
    return cls(_clip(message), status=status, code=code)
