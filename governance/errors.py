"""Errors raised by the governance package.

Every rejection carries a stable machine-readable `code` (CCF's where CCF has one), a
message for people, and the HTTP status the enclave answers with, so that the endpoint
layer maps it to `{"error": {"code", "message"}}` without knowing governance rules.
"""

from __future__ import annotations


class GovernanceError(Exception):
    """A governance request or action that is refused; the KV transaction must be dropped."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        assert 400 <= status <= 599, status
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}
