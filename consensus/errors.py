"""The one error type of the consensus package, with stable machine-readable codes."""

from __future__ import annotations


class ConsensusError(Exception):
    """Every failure the consensus core reports: bad input bytes, misuse, wrong role.

    `code` is stable and machine readable (the runtime maps it to HTTP errors); the message is
    for people.
    """

    code: str = "ConsensusError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


class DecodeError(ConsensusError):
    """Bytes from outside that are not a valid message (size, type or structure)."""

    code = "DecodeError"


class NotPrimaryError(ConsensusError):
    """A proposal or primary-only request made on a node that is not the primary."""

    code = "NotPrimary"


class ConfigurationError(ConsensusError):
    """A configuration change that Raft's one-node-at-a-time rule does not allow now."""

    code = "InvalidConfiguration"
