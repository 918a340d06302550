"""The errors of the host ⇄ enclave contract, in the shared shape `XError(message, *, code)`."""

from __future__ import annotations


class InterfaceError(Exception):
    """A frame or config that breaks this contract; the only error the codec raises."""

    code: str = "InterfaceError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ChannelClosed(InterfaceError):
    """The control channel is closed (peer hung up, fatal framing error, or `close()`)."""

    code = "ChannelClosed"
