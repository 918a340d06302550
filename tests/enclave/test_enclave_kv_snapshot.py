"""KV snapshots: CCF's snapshot table format, exact round trips, and restore of hostile bytes."""

from __future__ import annotations

import random
import struct

import pytest
from ccf.ledger import PublicDomain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.enclave_app.errors import KVError
from charter.enclave_app.kv import Store


def sample_store() -> Store:
    store = Store()
    history: list[dict[str, dict[bytes, bytes | None]]] = [
        {"records": {b"\x01" + bytes(7): b"private one"}, "public:records": {b"k": b"v"}},
        {"public:ccf.gov.users.certs": {b"u" * 64: b"-----BEGIN CERTIFICATE-----"}},
        {"records": {b"\x02" + bytes(7): b"", b"odd-length-key": b"12345678"}},
        {"public:records": {b"k": None}, "empty-after": {b"x": b"y"}},
        {"empty-after": {b"x": None}},
    ]
    for seqno, writes in enumerate(history, start=1):
        store.apply(writes, seqno)
    return store


def table(name: bytes, map_version: int, body: bytes) -> bytes:
    return struct.pack("<Q", len(name)) + name + struct.pack("<QQ", map_version, len(body)) + body


def record(key: bytes, version: int, value: bytes) -> bytes:
    return (
        struct.pack("<Q", len(key))
        + key
        + bytes(-len(key) % 8)
        + struct.pack("<QQ", len(value) + 8, version)
        + value
        + bytes(-len(value) % 8)
    )


def test_snapshot_restores_exactly_values_versions_and_map_versions() -> None:
    store = sample_store()
    public, private = store.snapshot()
    restored = Store()
    restored.restore(public, private, store.version)
    assert restored.version == store.version
    assert restored.snapshot() == (public, private)
    assert restored.map_names() == store.map_names()
    for name in store.map_names():
        assert restored.map_version(name) == store.map_version(name)
        assert list(restored.begin().items(name)) == list(store.begin().items(name))
    tx = restored.begin()
    assert tx.version_of("records", b"odd-length-key") == 3
    assert tx.get("records", b"\x02" + bytes(7)) == b""


def test_snapshot_puts_public_maps_in_the_public_blob_only() -> None:
    public, private = sample_store().snapshot()
    assert b"public:records" in public and b"private one" not in public
    assert b"private one" in private and b"public:" not in private


def test_snapshot_bytes_are_deterministic_whatever_the_write_order() -> None:
    first, second = Store(), Store()
    first.apply({"m": {b"a": b"1", b"b": b"2"}, "public:z": {b"q": b"r"}}, 1)
    second.apply({"public:z": {b"q": b"r"}, "m": {b"b": b"2", b"a": b"1"}}, 1)
    assert first.snapshot() == second.snapshot()


def test_snapshot_tables_have_ccf_layout() -> None:
    store = Store()
    store.apply({"public:t": {b"abc": b"hello"}}, 1)
    store.apply({"public:t": {b"k2": b"12345678"}}, 2)
    public, private = store.snapshot()
    expected_body = record(b"abc", 1, b"hello") + record(b"k2", 2, b"12345678")
    assert public == table(b"public:t", 2, expected_body)
    assert private == b""


def test_ccf_reader_parses_the_public_snapshot_tables() -> None:
    store = sample_store()
    public, _private = store.snapshot()
    seqno = store.version
    # A snapshot entry's public domain as ccf.ledger reads it (FORMATS §7), our tables inside.
    header = (
        bytes([1])
        + struct.pack("<qq", seqno, 0)
        + struct.pack("<Q", 32)
        + bytes(32)
        + struct.pack("<Q", 8)
        + struct.pack("<Q", 1)
    )
    tables = PublicDomain(header + public).get_tables()
    assert tables == {
        "public:ccf.gov.users.certs": {b"u" * 64: b"-----BEGIN CERTIFICATE-----"},
        "public:records": {},
    }


def test_restore_replaces_the_state_and_rollback_cannot_cross_it() -> None:
    source = sample_store()
    target = Store()
    target.apply({"stale": {b"x": b"y"}}, 1)
    target.restore(*source.snapshot(), seqno=source.version)
    assert "stale" not in target.map_names()
    assert target.undo_depth == 0
    with pytest.raises(AssertionError):
        target.rollback(source.version - 1)
    target.apply({"records": {b"new": b"v"}}, source.version + 1)
    target.rollback(source.version)
    assert target.snapshot() == source.snapshot()


def test_malformed_restore_leaves_the_store_unchanged() -> None:
    store = sample_store()
    before = store.snapshot()
    public, private = before
    with pytest.raises(KVError):
        store.restore(public, private[:-3], seqno=99)
    assert store.snapshot() == before
    assert store.version == 5


@pytest.mark.parametrize(
    ("public", "private", "why"),
    [
        (table(b"records", 1, b""), b"", "private table in the public blob"),
        (b"", table(b"public:x", 1, b""), "public table in the private blob"),
        (table(b"public:x", 1, b"") * 2, b"", "duplicate table"),
        (table(b"public:x", 9, b""), b"", "map version after the snapshot seqno"),
        (table(b"public:x", 2, record(b"k", 3, b"v")), b"", "key version after its map's"),
        (table(b"public:x", 2, record(b"k", 1, b"v") * 2), b"", "duplicate key"),
        (table(b"public:\xff", 1, b""), b"", "name not UTF-8"),
        (table(b"", 1, b""), b"", "empty name"),
        (struct.pack("<Q", 2**63) + b"public:x", b"", "huge name length"),
        (table(b"public:x", 1, b"")[:-1], b"", "truncated header"),
        (table(b"public:x", 1, struct.pack("<QQQ", 1, 4, 1)), b"", "vlen below 8"),
    ],
)
def test_restore_rejects_malformed_tables_with_kverror(
    public: bytes, private: bytes, why: str
) -> None:
    with pytest.raises(KVError) as raised:
        Store().restore(public, private, seqno=5)
    assert raised.value.code == "SnapshotDecodeError", why


def test_restore_survives_ten_thousand_mutated_snapshots_raising_only_kverror() -> None:
    public, private = sample_store().snapshot()
    rng = random.Random(20261125)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(10_000):
        blob = bytearray(public if rng.random() < 0.5 else private)
        mutation = rng.randrange(5)
        if mutation == 0 and blob:
            for _flip in range(rng.randint(1, 4)):
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        elif mutation == 1:
            del blob[rng.randrange(len(blob) + 1) :]
        elif mutation == 2:
            at = rng.randrange(len(blob) + 1)
            blob[at:at] = rng.randbytes(rng.randint(1, 24))
        elif mutation == 3 and len(blob) >= 8:
            at = rng.randrange(0, len(blob) - 7)
            blob[at : at + 8] = struct.pack("<Q", rng.choice([0, 7, 8, 2**31, 2**63, 2**64 - 1]))
        else:
            blob = bytearray(rng.randbytes(rng.randint(0, 64)))
        is_public_blob = rng.random() < 0.5
        try:
            store = Store()
            if is_public_blob:
                store.restore(bytes(blob), b"", seqno=5)
            else:
                store.restore(b"", bytes(blob), seqno=5)
            outcomes["ok"] += 1
            # Whatever was accepted re-serialises to a snapshot that restores to itself.
            again = Store()
            again.restore(*store.snapshot(), seqno=5)
            assert again.snapshot() == store.snapshot()
        except KVError:
            outcomes["rejected"] += 1
    assert outcomes["ok"] + outcomes["rejected"] == 10_000
    assert outcomes["rejected"] > 1000


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(public=st.binary(max_size=200), private=st.binary(max_size=200))
def test_restore_of_arbitrary_bytes_raises_only_kverror(public: bytes, private: bytes) -> None:
    try:
        Store().restore(public, private, seqno=2**40)
    except KVError as exc:
        assert exc.code == "SnapshotDecodeError"


def test_a_snapshot_of_100k_keys_restores_every_key() -> None:
    # How long snapshot and restore take is measured by scripts/bench_kv.py, not asserted here.
    store = Store()
    writes: dict[bytes, bytes | None] = {
        i.to_bytes(8, "little"): b"value-%d" % i for i in range(100_000)
    }
    store.apply({"records": writes}, 1)
    public, private = store.snapshot()
    restored = Store()
    restored.restore(public, private, seqno=1)
    check = restored.begin()
    assert all(check.get("records", key) == value for key, value in writes.items())
