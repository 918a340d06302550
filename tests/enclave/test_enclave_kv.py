"""The KV store's promises: transactions, isolation, versions, rollback, hooks, typed views."""

from __future__ import annotations

import logging

import pytest

from charter.enclave_app.errors import KVError
from charter.enclave_app.kv import (
    JSON,
    MSGPACK,
    RAW,
    STR,
    U64,
    MapChange,
    Store,
    is_public,
)


def commit_puts(store: Store, writes: dict[str, dict[bytes, bytes | None]]) -> None:
    tx = store.begin()
    for map_name, pairs in writes.items():
        for key, value in pairs.items():
            if value is None:
                tx.remove(map_name, key)
            else:
                tx.put(map_name, key, value)
    store.commit(tx, store.version + 1)


def test_committed_write_is_visible_to_the_next_transaction() -> None:
    store = Store()
    commit_puts(store, {"m": {b"k": b"v"}})
    assert store.version == 1
    assert store.begin().get("m", b"k") == b"v"


def test_transaction_reads_its_own_writes_before_commit() -> None:
    store = Store()
    commit_puts(store, {"m": {b"k": b"old"}})
    tx = store.begin()
    tx.put("m", b"k", b"new")
    tx.put("m", b"fresh", b"x")
    assert tx.get("m", b"k") == b"new"
    assert tx.get("m", b"fresh") == b"x"
    assert store.begin().get("m", b"k") == b"old"


def test_discarded_transaction_changes_nothing() -> None:
    store = Store()
    commit_puts(store, {"m": {b"k": b"v"}, "public:p": {b"a": b"b"}})
    before = store.snapshot()
    tx = store.begin()
    tx.put("m", b"k", b"changed")
    tx.remove("public:p", b"a")
    tx.put("other", b"x", b"y")
    del tx
    assert store.snapshot() == before
    assert store.version == 1
    assert store.begin().get("m", b"k") == b"v"
    # A later transaction commits normally at the next seqno.
    commit_puts(store, {"m": {b"k": b"w"}})
    assert store.begin().get("m", b"k") == b"w"


def test_write_set_is_sorted_by_map_and_key_with_none_for_removals() -> None:
    store = Store()
    commit_puts(store, {"b": {b"gone": b"1"}})
    tx = store.begin()
    tx.put("z", b"2", b"b")
    tx.put("z", b"1", b"a")
    tx.remove("b", b"gone")
    tx.put("public:a", b"k", b"v")
    write_set = tx.write_set()
    assert list(write_set) == ["b", "public:a", "z"]
    assert list(write_set["z"]) == [b"1", b"2"]
    assert write_set["b"] == {b"gone": None}
    assert store.commit(tx, 2) == write_set


def test_write_set_asked_again_after_more_writes_holds_them_too() -> None:
    """The write set is remembered between calls, but a put or remove after one is never
    missed: the ledger entry and the store always get the transaction's last writes."""
    store = Store()
    commit_puts(store, {"m": {b"old": b"1"}})
    tx = store.begin()
    tx.put("m", b"a", b"1")
    assert tx.write_set() == {"m": {b"a": b"1"}}
    assert tx.write_set() is tx.write_set()
    tx.put("n", b"b", b"2")
    assert tx.write_set() == {"m": {b"a": b"1"}, "n": {b"b": b"2"}}
    tx.remove("m", b"old")
    assert tx.write_set() == {"m": {b"a": b"1", b"old": None}, "n": {b"b": b"2"}}
    tx.remove("m", b"a")
    expected = {"m": {b"old": None}, "n": {b"b": b"2"}}
    assert tx.write_set() == expected
    assert store.commit(tx, 2) == expected
    assert store.begin().get("m", b"a") is None and store.begin().get("m", b"old") is None


def test_removing_an_absent_key_writes_nothing() -> None:
    store = Store()
    tx = store.begin()
    assert tx.remove("m", b"never") is False
    assert not tx.has_writes
    assert tx.write_set() == {}


def test_removing_a_key_put_in_the_same_transaction_cancels_the_put() -> None:
    store = Store()
    tx = store.begin()
    tx.put("m", b"k", b"v")
    assert tx.remove("m", b"k") is True
    assert not tx.has_writes
    commit_puts(store, {"m": {b"k": b"v"}})
    tx = store.begin()
    tx.put("m", b"k", b"v2")
    assert tx.remove("m", b"k") is True
    assert tx.write_set() == {"m": {b"k": None}}


def test_each_key_records_the_seqno_that_last_wrote_it() -> None:
    store = Store()
    commit_puts(store, {"m": {b"a": b"1", b"b": b"1"}})
    commit_puts(store, {"m": {b"b": b"2"}})
    commit_puts(store, {"n": {b"c": b"3"}})
    tx = store.begin()
    assert tx.version_of("m", b"a") == 1
    assert tx.version_of("m", b"b") == 2
    assert tx.version_of("n", b"c") == 3
    assert tx.version_of("m", b"missing") is None
    assert store.map_version("m") == 2
    assert tx.view("m", RAW, RAW).version_of(b"b") == 2


def test_commit_only_at_the_next_seqno() -> None:
    store = Store()
    tx = store.begin()
    tx.put("m", b"k", b"v")
    with pytest.raises(AssertionError):
        store.commit(tx, 2)
    store.commit(tx, 1)


def test_transaction_gone_stale_is_refused() -> None:
    store = Store()
    stale = store.begin()
    commit_puts(store, {"m": {b"k": b"v"}})
    with pytest.raises(KVError) as raised:
        stale.get("m", b"k")
    assert raised.value.code == "StaleTransaction"


def test_committed_transaction_cannot_write_again() -> None:
    store = Store()
    tx = store.begin()
    tx.put("m", b"k", b"v")
    store.commit(tx, 1)
    with pytest.raises(KVError) as raised:
        tx.put("m", b"k", b"again")
    assert raised.value.code == "TransactionClosed"
    assert tx.get("m", b"k") == b"v"
    assert tx.version_of("m", b"k") == 1


def test_keys_and_values_must_be_bytes() -> None:
    tx = Store().begin()
    with pytest.raises(TypeError):
        tx.put("m", "text-key", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tx.get("m", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tx.put("", b"k", b"v")
    tx.put("m", bytearray(b"k"), memoryview(b"v"))  # type: ignore[arg-type]
    assert tx.get("m", b"k") == b"v"


def test_items_merge_store_and_transaction_writes_sorted_by_key() -> None:
    store = Store()
    commit_puts(store, {"m": {b"b": b"1", b"d": b"2", b"a": b"0"}})
    tx = store.begin()
    tx.put("m", b"c", b"new")
    tx.put("m", b"d", b"changed")
    tx.remove("m", b"a")
    assert list(tx.items("m")) == [(b"b", b"1"), (b"c", b"new"), (b"d", b"changed")]
    assert list(tx.items("absent")) == []


def test_apply_gives_the_same_state_as_commit() -> None:
    leader, follower = Store(), Store()
    history: list[dict[str, dict[bytes, bytes | None]]] = [
        {"m": {b"k": b"1"}, "public:p": {b"x": b"y"}},
        {"m": {b"k": None, b"j": b"2"}},
        {"public:p": {b"x": b"z"}},
    ]
    for seqno, writes in enumerate(history, start=1):
        tx = leader.begin()
        for name, pairs in writes.items():
            for key, value in pairs.items():
                if value is None:
                    tx.remove(name, key)
                else:
                    tx.put(name, key, value)
        follower.apply(leader.commit(tx, seqno), seqno)
    assert follower.snapshot() == leader.snapshot()
    assert follower.version == leader.version == 3


def test_apply_refuses_a_write_set_of_non_bytes() -> None:
    store = Store()
    with pytest.raises(TypeError):
        store.apply({"m": {"k": b"v"}}, 1)  # type: ignore[dict-item]
    assert store.version == 0


def test_rollback_restores_values_versions_and_maps_exactly() -> None:
    store = Store()
    commit_puts(store, {"m": {b"a": b"1", b"b": b"1"}})
    expected = store.snapshot()
    commit_puts(store, {"m": {b"a": b"2", b"b": None, b"c": b"2"}, "new": {b"x": b"y"}})
    commit_puts(store, {"m": {b"a": b"3"}, "public:n": {b"q": b"r"}})
    store.rollback(1)
    assert store.version == 1
    assert store.snapshot() == expected
    assert store.map_names() == ["m"]
    tx = store.begin()
    assert tx.version_of("m", b"a") == 1
    assert tx.get("m", b"c") is None
    assert store.map_version("m") == 1
    # The rolled-back seqnos are reused by new transactions.
    commit_puts(store, {"m": {b"a": b"again"}})
    assert store.version == 2
    assert store.begin().version_of("m", b"a") == 2


def test_rollback_at_or_after_the_current_version_does_nothing() -> None:
    store = Store()
    commit_puts(store, {"m": {b"a": b"1"}})
    before = store.snapshot()
    store.rollback(1)
    store.rollback(5)
    assert store.snapshot() == before
    assert store.version == 1


def test_rollback_below_a_compacted_seqno_is_refused() -> None:
    store = Store()
    for _ in range(5):
        commit_puts(store, {"m": {b"a": b"x"}})
    store.compact(3)
    assert store.undo_depth == 2
    with pytest.raises(AssertionError):
        store.rollback(2)
    store.rollback(3)
    assert store.version == 3


def test_compacting_ahead_of_the_applied_version_keeps_no_undo_for_those_seqnos() -> None:
    store = Store()
    store.compact(2)
    commit_puts(store, {"m": {b"a": b"1"}})
    commit_puts(store, {"m": {b"a": b"2"}})
    commit_puts(store, {"m": {b"a": b"3"}})
    assert store.undo_depth == 1
    store.rollback(2)
    assert store.begin().get("m", b"a") == b"2"


def test_hooks_fire_after_commit_apply_rollback_and_restore_for_their_map_only() -> None:
    store = Store()
    seen: list[MapChange] = []
    store.add_hook("public:ccf.gov.users.certs", seen.append)
    commit_puts(store, {"other": {b"k": b"v"}})
    assert seen == []
    commit_puts(store, {"public:ccf.gov.users.certs": {b"u1": b"pem"}})
    store.apply({"public:ccf.gov.users.certs": {b"u2": b"pem"}}, 3)
    store.rollback(2)
    blobs = store.snapshot()
    store.restore(*blobs, seqno=2)
    assert [(c.reason, c.keys, c.version) for c in seen] == [
        ("commit", frozenset({b"u1"}), 2),
        ("apply", frozenset({b"u2"}), 3),
        ("rollback", frozenset({b"u2"}), 2),
        ("restore", frozenset({b"u1"}), 2),
    ]


def test_failing_hook_is_logged_and_the_commit_stands(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()

    def broken(change: MapChange) -> None:
        raise RuntimeError("hook bug")

    store.on_commit("m", broken)
    with caplog.at_level(logging.ERROR, logger="charter.enclave_app.kv"):
        commit_puts(store, {"m": {b"k": b"v"}})
    assert store.version == 1
    assert store.begin().get("m", b"k") == b"v"
    assert "kv hook failed" in caplog.text


def test_map_names_starting_with_public_are_public() -> None:
    assert is_public("public:records")
    assert is_public("public:ccf.gov.users.certs")
    assert not is_public("records")
    assert not is_public("Public:records")


def test_typed_views_round_trip_each_codec() -> None:
    store = Store()
    tx = store.begin()
    tx.view("j", STR, JSON).put("k", {"b": [1, 2], "a": None})
    tx.view("mp", U64, MSGPACK).put(7, {"x": b"\x00\x01", "y": [1.5]})
    tx.view("r", RAW, RAW).put(b"\xff", b"\x00")
    tx.view("s", U64, STR).put(2**64 - 1, "héllo")
    store.commit(tx, 1)
    tx = store.begin()
    assert tx.view("j", STR, JSON).get("k") == {"a": None, "b": [1, 2]}
    assert tx.get("j", b"k") == b'{"a":null,"b":[1,2]}'
    assert tx.view("mp", U64, MSGPACK).get(7) == {"x": b"\x00\x01", "y": [1.5]}
    assert tx.view("r", RAW, RAW).get(b"\xff") == b"\x00"
    assert tx.view("s", U64, STR).get(2**64 - 1) == "héllo"
    assert list(tx.view("s", U64, STR).items()) == [(2**64 - 1, "héllo")]
    assert tx.view("s", U64, STR).get(3) is None
    assert tx.view("s", U64, STR).has(2**64 - 1)


def test_u64_keys_are_eight_bytes_little_endian_like_ccf_samples() -> None:
    tx = Store().begin()
    tx.view("public:records", U64, STR).put(1, "m")
    assert tx.write_set() == {"public:records": {b"\x01" + bytes(7): b"m"}}
    with pytest.raises(ValueError):
        U64.encode(-1)
    with pytest.raises(ValueError):
        U64.encode(2**64)


def test_undecodable_stored_values_raise_kverror() -> None:
    tx = Store().begin()
    tx.put("m", b"k", b"\xff\xfe not json")
    tx.put("m", b"short", b"\x01")
    for codec in (JSON, STR, MSGPACK):
        with pytest.raises(KVError) as raised:
            tx.view("m", RAW, codec).get(b"k")
        assert raised.value.code == "CodecError"
    with pytest.raises(KVError):
        tx.view("m", RAW, U64).get(b"short")


def test_a_long_run_of_commits_keeps_every_write_and_compacts_to_no_undo_state() -> None:
    # What a transaction costs is measured by scripts/bench_kv.py, not asserted here.
    store = Store()
    keys = [i.to_bytes(8, "little") for i in range(20_000)]
    for key in keys:
        tx = store.begin()
        assert tx.get("m", key) is None
        tx.put("m", key, b"value")
        store.commit(tx, store.version + 1)
    assert store.version == len(keys)
    store.compact(store.version)
    assert store.undo_depth == 0
    check = store.begin()
    assert all(check.get("m", key) == b"value" for key in keys)
