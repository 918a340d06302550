"""The shape of a KV transaction as governance sees it.

Governance is pure functions over a transaction: it never commits, never reads a clock and
never touches the network. Anything with these methods works (the enclave's `kv.Tx`, or
the buffering `Overlay` used to apply proposals atomically and for dry runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class KvTx(Protocol):
    """Duck-typed KV transaction: map names are `str`, keys and values raw `bytes`."""

    def get(self, map_name: str, key: bytes) -> bytes | None: ...

    def put(self, map_name: str, key: bytes, value: bytes) -> None: ...

    def remove(self, map_name: str, key: bytes) -> object: ...

    def items(self, map_name: str) -> Iterable[tuple[bytes, bytes]]: ...
