"""A buffering layer over a KV transaction.

Proposal actions are applied to an `Overlay`: if every action succeeds its buffered writes
are flushed into the real transaction; if one fails, the buffer is dropped and the proposal
is marked Failed with nothing else changed. A dry run applies to an overlay and reports its
changes without flushing. Writes are kept in order of first touch so reports are stable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from charter.governance.tx import KvTx


@dataclass(frozen=True, slots=True)
class KvChange:
    """One buffered write: `value is None` means a removal."""

    map_name: str
    key: bytes
    value: bytes | None

    def to_json(self) -> dict[str, Any]:
        """Dry-run report shape: {map, key, op, value}; text where it is text, else hex."""
        return {
            "map": self.map_name,
            "key": _show(self.key),
            "op": "remove" if self.value is None else "put",
            "value": None if self.value is None else _show(self.value),
        }


def _show(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
    return text if text.isprintable() or "\n" in text else data.hex()


class Overlay:
    """Reads fall through to `base`; writes stay here until `flush`."""

    def __init__(self, base: KvTx) -> None:
        self._base = base
        self._writes: dict[str, dict[bytes, bytes | None]] = {}

    def get(self, map_name: str, key: bytes) -> bytes | None:
        table = self._writes.get(map_name)
        if table is not None and key in table:
            return table[key]
        return self._base.get(map_name, key)

    def put(self, map_name: str, key: bytes, value: bytes) -> None:
        assert isinstance(key, bytes) and isinstance(value, bytes)
        self._writes.setdefault(map_name, {})[key] = value

    def remove(self, map_name: str, key: bytes) -> None:
        assert isinstance(key, bytes)
        self._writes.setdefault(map_name, {})[key] = None

    def items(self, map_name: str) -> Iterator[tuple[bytes, bytes]]:
        """Merged view, sorted by key like the store's own `items`."""
        merged = dict(self._base.items(map_name))
        for key, maybe in self._writes.get(map_name, {}).items():
            if maybe is None:
                merged.pop(key, None)
            else:
                merged[key] = maybe
        return iter(sorted(merged.items()))

    def changes(self) -> list[KvChange]:
        """Buffered writes, dropping removals of keys that never existed (no-ops)."""
        out = []
        for map_name, table in self._writes.items():
            for key, value in table.items():
                if value is None and self._base.get(map_name, key) is None:
                    continue
                out.append(KvChange(map_name, key, value))
        return out

    def flush(self) -> None:
        for change in self.changes():
            if change.value is None:
                self._base.remove(change.map_name, change.key)
            else:
                self._base.put(change.map_name, change.key, change.value)
        self._writes.clear()
