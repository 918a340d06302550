"""Rollback exactness, as a property: rolling back to seqno r gives the state built up to r."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app.kv import Store

MAPS = ("public:a", "b", "c")
KEYS = (b"k0", b"k1", b"k2", b"\x00" * 9)

op = st.tuples(
    st.sampled_from(MAPS),
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.binary(max_size=12)),
)
transaction = st.lists(op, max_size=6)


def run(store: Store, txs: list[list[tuple[str, bytes, bytes | None]]]) -> None:
    for ops in txs:
        tx = store.begin()
        for map_name, key, value in ops:
            if value is None:
                tx.remove(map_name, key)
            else:
                tx.put(map_name, key, value)
        store.commit(tx, store.version + 1)


def state(store: Store) -> tuple[int, tuple[bytes, bytes], dict[str, int | None]]:
    return (
        store.version,
        store.snapshot(),
        {name: store.map_version(name) for name in store.map_names()},
    )


@settings(max_examples=250, derandomize=True, deadline=None)
@given(
    txs=st.lists(transaction, max_size=25),
    more=st.lists(transaction, max_size=5),
    data=st.data(),
)
def test_rollback_equals_the_state_built_only_up_to_that_seqno(
    txs: list[list[tuple[str, bytes, bytes | None]]],
    more: list[list[tuple[str, bytes, bytes | None]]],
    data: st.DataObject,
) -> None:
    compacted = data.draw(st.integers(0, len(txs)), label="compacted")
    target = data.draw(st.integers(compacted, len(txs)), label="target")
    store = Store()
    run(store, txs[:compacted])
    store.compact(compacted)
    run(store, txs[compacted:])
    store.rollback(target)

    reference = Store()
    run(reference, txs[:target])
    assert state(store) == state(reference)

    # Both continue identically after the rollback, and roll back again to the same point.
    run(store, more)
    run(reference, more)
    assert state(store) == state(reference)
    store.rollback(target)
    reference_again = Store()
    run(reference_again, txs[:target])
    assert state(store) == state(reference_again)
