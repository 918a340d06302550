"""The enclave's key-value store: maps of bytes to bytes, versioned by ledger seqno.

Model (DESIGN §5): handlers run one at a time, so a transaction (`Tx`) reads the live state
of the `Store` and buffers its writes; nothing is copied per transaction. `Store.commit`
applies a transaction's write set at the next seqno and returns it for the ledger; a follower
applies replicated write sets with `Store.apply`. Every applied seqno not yet compacted keeps
an undo record (the previous value and version of each key it touched) so that
`Store.rollback` restores the exact earlier state after a view change.

A map whose name starts with ``public:`` is public (in clear in the ledger); any other map is
private. Keys and values are bytes; `Tx.view` gives typed access with a key and a value codec.

Snapshots (`Store.snapshot` / `Store.restore`) use CCF's snapshot table format (FORMATS §7):
per table ``u64 name_len, name | u64 map_version | u64 body_len | body`` with body =
repeated ``u64 klen, key, pad8 | u64 vlen (= 8 + len(value)), u64 version, value, pad8``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgpack

from charter.enclave_app.errors import KVError

logger = logging.getLogger(__name__)

WriteSet = dict[str, dict[bytes, bytes | None]]

PUBLIC_PREFIX = "public:"
MAP_NAME_BYTES_MAX = 1024
# A snapshot blob is held in memory whole; refuse anything larger than this before parsing.
SNAPSHOT_BYTES_MAX = 1 << 34
U64_MAX = (1 << 64) - 1

_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
# Zero padding that brings a length of n bytes to a multiple of 8, indexed by n % 8.
_PAD = tuple(bytes(-i % 8) for i in range(8))


def is_public(map_name: str) -> bool:
    """True for a public map (written in clear to the ledger)."""
    return map_name.startswith(PUBLIC_PREFIX)


def _check_map_name(map_name: object) -> str:
    if not isinstance(map_name, str) or not map_name:
        raise TypeError(f"a map name must be a non-empty str, got {type(map_name).__name__}")
    if len(map_name.encode("utf-8")) > MAP_NAME_BYTES_MAX:
        raise ValueError(f"map name longer than {MAP_NAME_BYTES_MAX} bytes")
    return map_name


def _as_bytes(what: str, data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"KV {what} must be bytes, got {type(data).__name__}")


# --------------------------------------------------------------------------------------------
# Codecs and typed views


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How a typed key or value is turned into bytes and back (decode raises `KVError`)."""

    name: str
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def _json_encode(value: Any) -> bytes:
    # Compact with sorted keys, as CCF's nlohmann-based JSON tables (FORMATS §1.7).
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _json_decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KVError(
            f"stored value is not JSON: {type(exc).__name__}", code="CodecError"
        ) from None


def _msgpack_encode(value: Any) -> bytes:
    packed = msgpack.packb(value, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def _msgpack_decode(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise KVError(
            f"stored value is not msgpack: {type(exc).__name__}", code="CodecError"
        ) from None


def _str_decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KVError("stored value is not UTF-8", code="CodecError") from None


def _u64_encode(value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"U64 codec needs an int in [0, 2**64), got {value!r}")
    return _U64.pack(value)


def _u64_decode(data: bytes) -> int:
    if len(data) != 8:
        raise KVError(f"U64 needs 8 bytes, got {len(data)}", code="CodecError")
    value: int = _U64.unpack(data)[0]
    return value


JSON: Codec[Any] = Codec("json", _json_encode, _json_decode)
MSGPACK: Codec[Any] = Codec("msgpack", _msgpack_encode, _msgpack_decode)
RAW: Codec[bytes] = Codec("raw", lambda value: _as_bytes("value", value), lambda data: data)
STR: Codec[str] = Codec("str", lambda value: value.encode("utf-8"), _str_decode)
# u64 little-endian, as CCF's samples key their tables.
U64: Codec[int] = Codec("u64", _u64_encode, _u64_decode)


class View(Generic[K, V]):
    """Typed access to one map of a transaction: keys and values go through codecs."""

    __slots__ = ("_key_codec", "_map_name", "_tx", "_value_codec")

    def __init__(self, tx: Tx, map_name: str, key_codec: Codec[K], value_codec: Codec[V]):
        self._tx = tx
        self._map_name = _check_map_name(map_name)
        self._key_codec = key_codec
        self._value_codec = value_codec

    @property
    def map_name(self) -> str:
        return self._map_name

    def get(self, key: K) -> V | None:
        raw = self._tx.get(self._map_name, self._key_codec.encode(key))
        return None if raw is None else self._value_codec.decode(raw)

    def has(self, key: K) -> bool:
        return self._tx.get(self._map_name, self._key_codec.encode(key)) is not None

    def put(self, key: K, value: V) -> None:
        self._tx.put(self._map_name, self._key_codec.encode(key), self._value_codec.encode(value))

    def remove(self, key: K) -> bool:
        return self._tx.remove(self._map_name, self._key_codec.encode(key))

    def version_of(self, key: K) -> int | None:
        return self._tx.version_of(self._map_name, self._key_codec.encode(key))

    def items(self) -> Iterator[tuple[K, V]]:
        key_decode, value_decode = self._key_codec.decode, self._value_codec.decode
        for key, value in self._tx.items(self._map_name):
            yield key_decode(key), value_decode(value)


# --------------------------------------------------------------------------------------------
# Transactions


class Tx:
    """A transaction over a `Store`: reads see the store's state plus this transaction's own
    writes; writes are buffered until `Store.commit`. Dropping a Tx changes nothing."""

    __slots__ = ("_closed", "_generation", "_store", "_write_set", "_writes", "base_version")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._generation = store._generation
        self._writes: dict[str, dict[bytes, bytes | None]] = {}
        # `write_set()`'s answer until the next put or remove (a write is committed with
        # its write set asked for three times: frontend, ledger entry, store).
        self._write_set: WriteSet | None = None
        self._closed = False
        self.base_version = store.version

    def _check_fresh(self) -> None:
        # Reads go to the live store, so a Tx must not outlive a change of the store.
        if self._generation != self._store._generation:
            raise KVError(
                f"transaction begun at version {self.base_version} is stale "
                f"(store is at {self._store.version})",
                code="StaleTransaction",
            )

    def get(self, map_name: str, key: bytes) -> bytes | None:
        if type(key) is not bytes:
            key = _as_bytes("key", key)
        if self._generation != self._store._generation:
            self._check_fresh()
        writes = self._writes.get(map_name)
        if writes is not None and key in writes:
            return writes[key]
        table = self._store._maps.get(map_name)
        if table is None:
            return None
        entry = table.entries.get(key)
        return None if entry is None else entry[0]

    def put(self, map_name: str, key: bytes, value: bytes) -> None:
        if type(key) is not bytes:
            key = _as_bytes("key", key)
        if type(value) is not bytes:
            value = _as_bytes("value", value)
        if self._closed:
            raise KVError("transaction already committed", code="TransactionClosed")
        if self._generation != self._store._generation:
            self._check_fresh()
        writes = self._writes.get(map_name)
        if writes is None:
            writes = self._writes[_check_map_name(map_name)] = {}
        writes[key] = value
        self._write_set = None

    def remove(self, map_name: str, key: bytes) -> bool:
        """Remove a key; returns whether it was present. Removing an absent key writes nothing."""
        if type(key) is not bytes:
            key = _as_bytes("key", key)
        if self._closed:
            raise KVError("transaction already committed", code="TransactionClosed")
        if self._generation != self._store._generation:
            self._check_fresh()
        table = self._store._maps.get(map_name)
        in_store = table is not None and key in table.entries
        writes = self._writes.get(map_name)
        self._write_set = None
        if writes is not None and key in writes:
            present = writes[key] is not None
            if in_store:
                writes[key] = None
            else:
                del writes[key]
            return present
        if not in_store:
            return False
        if writes is None:
            writes = self._writes[_check_map_name(map_name)] = {}
        writes[key] = None
        return True

    def items(self, map_name: str) -> Iterator[tuple[bytes, bytes]]:
        """The map's (key, value) pairs as this transaction sees them, sorted by key."""
        self._check_fresh()
        table = self._store._maps.get(map_name)
        writes = self._writes.get(map_name) or {}
        entries = table.entries if table is not None else {}
        keys = sorted(entries.keys() | writes.keys()) if writes else sorted(entries)
        pairs: list[tuple[bytes, bytes]] = []
        for key in keys:
            if key in writes:
                value = writes[key]
                if value is not None:
                    pairs.append((key, value))
            else:
                pairs.append((key, entries[key][0]))
        return iter(pairs)

    def version_of(self, map_name: str, key: bytes) -> int | None:
        """The seqno that last committed this key (this transaction's own writes are ignored);
        None if the key is absent from the store."""
        self._check_fresh()
        table = self._store._maps.get(map_name)
        entry = None if table is None else table.entries.get(_as_bytes("key", key))
        return None if entry is None else entry[1]

    def view(self, map_name: str, key_codec: Codec[K], value_codec: Codec[V]) -> View[K, V]:
        return View(self, map_name, key_codec, value_codec)

    def write_set(self) -> WriteSet:
        """The buffered writes, maps and keys in sorted order (None = removal). The same
        dict is answered until the next put or remove: read it, do not change it."""
        write_set = self._write_set
        if write_set is None:
            write_set = self._write_set = {
                name: dict(sorted(writes.items()))
                for name, writes in sorted(self._writes.items())
                if writes
            }
        return write_set

    @property
    def has_writes(self) -> bool:
        return any(self._writes.values())


# --------------------------------------------------------------------------------------------
# The store


class _Table:
    """One map's state: key -> (value, version), and the seqno that last wrote the map."""

    __slots__ = ("entries", "version")

    def __init__(self, version: int = 0) -> None:
        self.entries: dict[bytes, tuple[bytes, int]] = {}
        self.version = version


# One applied seqno's undo data: the (map name, key, previous entry) of each write in order,
# and (map name, previous map version or -1 when the map was created) of each map.
_KeyUndo = tuple[str, bytes, tuple[bytes, int] | None]
_Undo = tuple[int, list[_KeyUndo], list[tuple[str, int]]]

ChangeReason = Literal["commit", "apply", "rollback", "restore"]


@dataclass(frozen=True, slots=True)
class MapChange:
    """What a hook is told: which map changed, why, its keys touched, and the store version."""

    map_name: str
    reason: ChangeReason
    keys: frozenset[bytes]
    version: int


Hook = Callable[[MapChange], None]


class Store:
    """The KV state of one node. Not thread-safe: the enclave runs one transaction at a time."""

    def __init__(self) -> None:
        self._maps: dict[str, _Table] = {}
        self._version = 0
        # Rollback may not go below this seqno (it is committed: its undo data is dropped).
        self._compacted = 0
        self._undo: list[_Undo] = []
        self._hooks: dict[str, list[Hook]] = {}
        # Bumped on every state change so that a Tx can tell it has gone stale.
        self._generation = 0

    @property
    def version(self) -> int:
        """The last applied seqno."""
        return self._version

    @property
    def compacted_version(self) -> int:
        """Rollback below this seqno is impossible."""
        return self._compacted

    def map_names(self) -> list[str]:
        return sorted(self._maps)

    def map_version(self, map_name: str) -> int | None:
        table = self._maps.get(map_name)
        return None if table is None else table.version

    def begin(self) -> Tx:
        return Tx(self)

    def add_hook(self, map_name: str, fn: Hook) -> None:
        """Call ``fn(MapChange)`` after every commit, apply, rollback or restore touching the
        map. A hook that raises is logged; the store change stands."""
        self._hooks.setdefault(_check_map_name(map_name), []).append(fn)

    # docs/internals.md names the hooks ``on_commit``; same thing.
    on_commit = add_hook

    def commit(self, tx: Tx, seqno: int) -> WriteSet:
        """Apply ``tx`` at ``seqno`` (== version + 1) and return its write set for the ledger."""
        assert tx._store is self, "transaction belongs to another store"
        assert not tx._closed, "transaction committed twice"
        tx._check_fresh()
        write_set = tx.write_set()
        self._apply(write_set, seqno, "commit")
        tx._closed = True
        # The committed state is the Tx's own view, so it may still read until the next change.
        tx._generation = self._generation
        return write_set

    def apply(self, write_set: WriteSet, seqno: int) -> None:
        """Apply a replicated entry's write set at ``seqno`` (the follower path)."""
        for name, writes in write_set.items():
            _check_map_name(name)
            for key, value in writes.items():
                if type(key) is not bytes or not (value is None or type(value) is bytes):
                    raise TypeError(f"write set of map {name!r} must map bytes to bytes | None")
        self._apply(write_set, seqno, "apply")

    def _apply(self, write_set: WriteSet, seqno: int, reason: ChangeReason) -> None:
        assert seqno == self._version + 1, f"seqno {seqno} does not follow {self._version}"
        maps = self._maps
        key_undo: list[_KeyUndo] = []
        map_undo: list[tuple[str, int]] = []
        for name, writes in write_set.items():
            if not writes:
                continue
            table = maps.get(name)
            if table is None:
                table = maps[name] = _Table()
                map_undo.append((name, -1))
            else:
                map_undo.append((name, table.version))
            entries = table.entries
            for key, value in writes.items():
                old = entries.get(key)
                if value is None:
                    if old is not None:
                        del entries[key]
                else:
                    entries[key] = (value, seqno)
                key_undo.append((name, key, old))
            table.version = seqno
        self._version = seqno
        self._generation += 1
        if seqno > self._compacted:
            self._undo.append((seqno, key_undo, map_undo))
        hooks = self._hooks
        if hooks:
            # Only maps someone listens to: most writes touch none of them.
            changes = {
                name: frozenset(writes)
                for name, writes in write_set.items()
                if writes and name in hooks
            }
            if changes:
                self._fire(changes, reason)

    def rollback(self, seqno: int) -> None:
        """Undo every version > ``seqno`` exactly. Rolling back at or beyond the current
        version does nothing; below the compacted (committed) version is a bug."""
        if seqno >= self._version:
            return
        assert seqno >= self._compacted, (
            f"cannot roll back to {seqno}: compacted up to {self._compacted}"
        )
        maps = self._maps
        touched: dict[str, set[bytes]] = {}
        while self._undo and self._undo[-1][0] > seqno:
            _, key_undo, map_undo = self._undo.pop()
            # Walking back in order, maps[name] is the table exactly as this record left it.
            for name, key, old in reversed(key_undo):
                entries = maps[name].entries
                if old is None:
                    entries.pop(key, None)
                else:
                    entries[key] = old
                touched.setdefault(name, set()).add(key)
            for name, old_version in reversed(map_undo):
                if old_version < 0:
                    del maps[name]
                else:
                    maps[name].version = old_version
        assert not self._undo or self._undo[-1][0] <= seqno
        self._version = seqno
        self._generation += 1
        if touched and self._hooks:
            self._fire({name: frozenset(keys) for name, keys in touched.items()}, "rollback")

    def compact(self, seqno: int) -> None:
        """Forget undo data of seqnos ≤ ``seqno`` (they are committed: never rolled back)."""
        if seqno <= self._compacted:
            return
        self._compacted = seqno
        undo = self._undo
        drop = 0
        while drop < len(undo) and undo[drop][0] <= seqno:
            drop += 1
        if drop:
            del undo[:drop]

    @property
    def undo_depth(self) -> int:
        """How many applied seqnos can still be rolled back."""
        return len(self._undo)

    def _fire(self, changes: dict[str, frozenset[bytes]], reason: ChangeReason) -> None:
        for name, keys in changes.items():
            for fn in self._hooks.get(name, ()):
                try:
                    fn(MapChange(name, reason, keys, self._version))
                except Exception:
                    logger.exception("kv hook failed map=%s reason=%s", name, reason)

    # ----------------------------------------------------------------------------------------
    # Snapshots

    def recover_private(self, write_set: WriteSet, seqno: int) -> None:
        """Apply the private part of an old, committed transaction at its own `seqno`,
        below the store's version: a recovery's private replay, whose public part was
        applied before. Only private maps; no undo data (a committed seqno is never rolled
        back). Hooks are told with reason "restore"."""
        assert seqno <= self._compacted, f"seqno {seqno} is not committed ({self._compacted})"
        maps = self._maps
        for name, writes in write_set.items():
            assert not is_public(name), f"{name} is public"
            if not writes:
                continue
            table = maps.get(name)
            if table is None:
                table = maps[name] = _Table()
            entries = table.entries
            for key, value in writes.items():
                if value is None:
                    entries.pop(key, None)
                else:
                    entries[key] = (value, seqno)
            table.version = max(table.version, seqno)
        self._generation += 1
        if self._hooks:
            self._fire(
                {name: frozenset(writes) for name, writes in write_set.items() if writes},
                "restore",
            )

    def snapshot(self) -> tuple[bytes, bytes]:
        """The public and the private tables at the current version, in CCF's snapshot table
        format, maps and keys sorted (so equal states give equal bytes)."""
        public: list[bytes] = []
        private: list[bytes] = []
        pack = _U64.pack
        pack2 = _U64X2.pack
        pad = _PAD
        for name in sorted(self._maps):
            table = self._maps[name]
            entries = table.entries
            body: list[bytes] = []
            append = body.append
            for key in sorted(entries):
                value, version = entries[key]
                append(pack(len(key)))
                append(key)
                append(pad[len(key) & 7])
                append(pack2(len(value) + 8, version))
                append(value)
                append(pad[len(value) & 7])
            body_bytes = b"".join(body)
            name_bytes = name.encode("utf-8")
            out = public if is_public(name) else private
            out.append(pack(len(name_bytes)))
            out.append(name_bytes)
            out.append(pack2(table.version, len(body_bytes)))
            out.append(body_bytes)
        return b"".join(public), b"".join(private)

    def restore(self, public: bytes, private: bytes, seqno: int) -> None:
        """Replace the whole state by a snapshot's tables, taken at ``seqno``. Raises `KVError`
        on malformed bytes, leaving the store unchanged."""
        if not isinstance(seqno, int) or not 0 <= seqno <= U64_MAX:
            raise KVError(f"bad snapshot seqno {seqno!r}", code="SnapshotDecodeError")
        maps = _decode_tables(_as_bytes("snapshot", public), public=True, seqno=seqno)
        maps.update(_decode_tables(_as_bytes("snapshot", private), public=False, seqno=seqno))
        old_names = set(self._maps)
        self._maps = maps
        self._version = seqno
        self._compacted = seqno
        self._undo = []
        self._generation += 1
        if self._hooks:
            names = old_names | set(maps)
            self._fire(
                {
                    name: frozenset(maps[name].entries) if name in maps else frozenset()
                    for name in sorted(names)
                },
                "restore",
            )


def _decode_tables(blob: bytes, *, public: bool, seqno: int) -> dict[str, _Table]:
    """Parse snapshot tables, checking every length against the remaining bytes."""
    size = len(blob)
    if size > SNAPSHOT_BYTES_MAX:
        raise KVError(f"snapshot of {size} bytes is too large", code="SnapshotDecodeError")
    unpack = _U64.unpack_from
    maps: dict[str, _Table] = {}
    pos = 0

    def fail(message: str, at: int) -> KVError:
        return KVError(message, code="SnapshotDecodeError", offset=at)

    while pos < size:
        if pos + 8 > size:
            raise fail("truncated table name length", pos)
        (name_len,) = unpack(blob, pos)
        pos += 8
        if name_len == 0 or name_len > MAP_NAME_BYTES_MAX or pos + name_len > size:
            raise fail(f"bad table name length {name_len}", pos - 8)
        try:
            name = blob[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise fail("table name is not UTF-8", pos) from None
        if is_public(name) != public:
            raise fail(f"{'private' if public else 'public'} table in the wrong domain", pos)
        if name in maps:
            raise fail("duplicate table", pos)
        pos += name_len
        if pos + 16 > size:
            raise fail("truncated table header", pos)
        map_version, body_len = _U64X2.unpack_from(blob, pos)
        if map_version > seqno:
            raise fail(f"table version {map_version} is after the snapshot {seqno}", pos)
        pos += 16
        end = pos + body_len
        if end > size:
            raise fail(f"table body of {body_len} bytes overruns the snapshot", pos - 8)
        table = maps[name] = _Table(map_version)
        entries = table.entries
        while pos < end:
            if pos + 8 > end:
                raise fail("truncated key length", pos)
            (key_len,) = unpack(blob, pos)
            pos += 8
            key_end = pos + key_len
            if key_end + (-key_len % 8) + 16 > end:
                raise fail(f"key of {key_len} bytes overruns the table", pos - 8)
            key = blob[pos:key_end]
            pos = key_end + (-key_len % 8)
            value_len, version = _U64X2.unpack_from(blob, pos)
            if value_len < 8 or pos + 8 + value_len + (-value_len % 8) > end:
                raise fail(f"bad versioned value length {value_len}", pos)
            if version > map_version:
                raise fail(f"key version {version} is after its table's {map_version}", pos + 8)
            value = blob[pos + 16 : pos + 8 + value_len]
            pos += 8 + value_len + (-value_len % 8)
            if key in entries:
                raise fail("duplicate key", key_end - key_len)
            entries[key] = (value, version)
        assert pos == end
    return maps
