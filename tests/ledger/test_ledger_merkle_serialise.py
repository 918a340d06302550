"""Promises of charter.ledger.merkle beyond appending: truncate, drop_prefix, merklecpp bytes.

The serialised format is checked against the `public:ccf.internal.tree` values that real
CCF nodes wrote into the ledgers under shared/ccf-ledgers.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from ccf.ledger import Ledger
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger.errors import DecodeError
from charter.ledger.merkle import MAX_SERIALISED_TREE_BYTES, MerkleTree, verify_inclusion

DETERMINISTIC = settings(max_examples=60, derandomize=True, deadline=None)
CCF_LEDGERS = SHARED_CCF_LEDGERS


def random_leaves(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(32)] + [rng.randbytes(32) for _ in range(count - 1)]


def build(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    tree.extend(leaves[1:])
    return tree


def assert_proves_like(tree: MerkleTree, reference: MerkleTree, first: int) -> None:
    """`tree` answers every question about leaves ≥ first exactly like `reference`."""
    assert tree.size == reference.size
    for size in range(max(first, 1), reference.size + 1):
        assert tree.root_at(size) == reference.root_at(size), size
    for index in range(first, reference.size):
        assert tree.leaf(index) == reference.leaf(index)
        for size in {index + 1, (index + reference.size + 1) // 2, reference.size}:
            assert tree.inclusion_proof(index, size) == reference.inclusion_proof(index, size)
    for old_size in range(max(first, 1), reference.size + 1, 3):
        assert tree.consistency_proof(old_size, reference.size) == reference.consistency_proof(
            old_size, reference.size
        )


# ------------------------------------------------------------------- truncate


@DETERMINISTIC
@given(st.integers(1, 600), st.data())
def test_truncate_then_append_equals_a_fresh_build(size: int, data: st.DataObject) -> None:
    leaves = random_leaves(size, seed=size)
    tree = build(leaves)
    keep = data.draw(st.integers(1, size))
    tree.truncate(keep)
    assert tree.size == keep
    assert tree.root() == build(leaves[:keep]).root()
    fresh_tail = random_leaves(size + 7, seed=-size)[1:]
    tree.extend(fresh_tail)
    expected = build([*leaves[:keep], *fresh_tail])
    assert tree.root() == expected.root()
    assert tree.inclusion_proof(keep - 1) == expected.inclusion_proof(keep - 1)


def test_truncate_after_drop_prefix_keeps_the_retained_leaves_provable() -> None:
    leaves = random_leaves(300, seed=20)
    tree = build(leaves)
    tree.drop_prefix(100)
    tree.truncate(150)
    with pytest.raises(IndexError):
        tree.truncate(99)
    tree.extend(leaves[150:])
    assert_proves_like(tree, build(leaves), first=100)


# ---------------------------------------------------------------- drop_prefix


@DETERMINISTIC
@given(st.integers(1, 300), st.data())
def test_drop_prefix_keeps_proofs_and_roots_of_retained_leaves(
    size: int, data: st.DataObject
) -> None:
    leaves = random_leaves(size + 40, seed=size)
    tree = build(leaves[:size])
    first = data.draw(st.integers(0, size))
    tree.drop_prefix(first)
    assert tree.min_index == first
    assert_proves_like(tree, build(leaves[:size]), first)
    # ...and it keeps growing correctly after the drop, even across a second drop.
    tree.extend(leaves[size:])
    second = data.draw(st.integers(first, size + 40))
    tree.drop_prefix(second)
    assert_proves_like(tree, build(leaves), second)


def test_drop_prefix_forgets_dropped_leaves_and_keeps_memory_logarithmic() -> None:
    leaves = random_leaves(5000, seed=21)
    tree = build(leaves)
    tree.drop_prefix(4990)
    for index in (0, 4988, 4989):
        with pytest.raises(IndexError):
            tree.leaf(index)
        with pytest.raises(IndexError):
            tree.inclusion_proof(index)
    with pytest.raises(IndexError):
        tree.root_at(4989)
    assert tree.root_at(4990) == build(leaves[:4990]).root()
    # 10 retained leaves, plus at most two nodes per level for the left edge.
    retained = tree.serialise(4990, 4999)
    assert len(retained) <= 16 + 32 * (10 + 13)
    tree.drop_prefix(10)  # below the current prefix: nothing to do
    assert tree.min_index == 4990


# --------------------------------------------------------------- serialisation


def test_serialised_bytes_follow_merklecpp_layout() -> None:
    leaves = random_leaves(40, seed=22)
    tree = build(leaves)
    first, last = 11, 30  # 11 = 0b1011: extras for heights 0, 1 and 3, ascending
    data = tree.serialise(first, last)
    assert struct.unpack(">QQ", data[:16]) == (20, 11)
    assert data[16 : 16 + 20 * 32] == b"".join(leaves[11:31])
    extras = data[16 + 20 * 32 :]
    # Left siblings of leaf 11's ancestors, smallest first: [10, 11), [8, 10), [0, 8).
    assert extras[:32] == leaves[10]
    assert extras[32:64] == _perfect_root(leaves[8:10])
    assert extras[64:96] == _perfect_root(leaves[0:8])
    assert len(extras) == 96


def _perfect_root(leaves: list[bytes]) -> bytes:
    level = leaves
    while len(level) > 1:
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def _ccf_tree_values(directory: Path) -> list[tuple[int, bytes, bytes, list[tuple[int, bytes]]]]:
    """(signature seqno, serialised tree, signed root, all leaves so far) per signature."""
    found = []
    leaves: list[tuple[int, bytes]] = []
    for chunk in Ledger([str(directory)], committed_only=False):
        for tx in chunk:
            public = tx.get_public_domain()
            tables = public.get_tables()
            seqno = public.get_seqno()
            if "public:ccf.internal.tree" in tables:
                (tree_value,) = tables["public:ccf.internal.tree"].values()
                (signature,) = tables["public:ccf.internal.signatures"].values()
                root = bytes.fromhex(json.loads(signature)["root"])
                found.append((seqno, tree_value, root, list(leaves)))
            leaves.append((seqno, tx.get_tx_digest()))
    return found


@pytest.mark.parametrize("ledger", ["current", "deprecated-entry-types"])
def test_tree_serialised_by_ccf_deserialises_to_the_signed_root_and_back(ledger: str) -> None:
    signatures = _ccf_tree_values(CCF_LEDGERS / ledger)
    assert len(signatures) >= 6
    for seqno, tree_value, signed_root, _ in signatures:
        tree = MerkleTree.deserialise(tree_value)
        assert tree.size == seqno
        assert tree.root() == signed_root
        assert tree.serialise(tree.min_index, tree.size - 1) == tree_value


@pytest.mark.parametrize("ledger", ["current", "deprecated-entry-types"])
def test_tree_built_from_ccf_transactions_reaches_every_signed_root(ledger: str) -> None:
    tree = MerkleTree()
    for seqno, _, signed_root, leaves in _ccf_tree_values(CCF_LEDGERS / ledger):
        for leaf_seqno, leaf in leaves[tree.size - 1 :]:
            assert leaf_seqno == tree.size
            tree.append(leaf)
        assert tree.root_at(seqno) == signed_root
        for index in range(1, seqno):
            proof = tree.inclusion_proof(index, seqno)
            assert verify_inclusion(tree.leaf(index), index, seqno, proof, signed_root)


@DETERMINISTIC
@given(st.integers(1, 400), st.data())
def test_deserialised_tree_proves_and_keeps_appending_like_the_original(
    size: int, data: st.DataObject
) -> None:
    leaves = random_leaves(size + 30, seed=size)
    original = build(leaves[:size])
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size - 1))
    copy = MerkleTree.deserialise(original.serialise(first, last))
    assert copy.min_index == first
    assert copy.size == last + 1
    original.truncate(last + 1)
    assert_proves_like(copy, original, first)
    copy.extend(leaves[last + 1 :])
    assert_proves_like(copy, build(leaves), first)


def _reject(data: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        MerkleTree.deserialise(data)
    return str(caught.value)


def test_deserialise_rejects_bytes_that_do_not_match_their_counts() -> None:
    valid = build(random_leaves(20, seed=23)).serialise(5, 12)  # 8 leaves, 2 extras
    assert MerkleTree.deserialise(valid).size == 13
    assert "header" in _reject(b"")
    assert "header" in _reject(valid[:15])
    assert "no leaves" in _reject(struct.pack(">QQ", 0, 0))
    assert "hold" in _reject(struct.pack(">QQ", 1 << 60, 0) + bytes(64))
    assert "hold" in _reject(struct.pack(">QQ", 2**64 - 1, 3) + bytes(64))
    assert "hold" in _reject(valid[:-1])
    assert "left-edge" in _reject(valid[:-32])
    assert "left-edge" in _reject(valid + bytes(32))
    assert "out of range" in _reject(struct.pack(">QQ", 1, 2**63) + bytes(32 * 2))
    assert "exceeds" in _reject(bytes(MAX_SERIALISED_TREE_BYTES + 1))


def test_deserialise_fuzz_only_ever_raises_decode_error() -> None:
    rng = random.Random(24)
    seeds = [
        build(random_leaves(n, seed=n)).serialise(f, n - 1)
        for n, f in [(9, 3), (64, 63), (33, 0), (100, 37)]
    ]
    accepted = rejected = 0
    for attempt in range(10_000):
        kind = attempt % 5
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        else:
            buf = bytearray(rng.choice(seeds))
            if kind == 1:
                for _ in range(rng.randrange(1, 4)):
                    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif kind == 2:
                del buf[rng.randrange(len(buf)) :]
            elif kind == 3:
                buf += rng.randbytes(rng.choice([1, 31, 32, 64]))
            else:
                # Plausible headers: small counts and offsets with a matching-ish body.
                count, first = rng.randrange(0, 6), rng.randrange(0, 70)
                body = 32 * (count + rng.randrange(0, 8))
                buf = bytearray(struct.pack(">QQ", count, first) + rng.randbytes(body))
            data = bytes(buf)
        try:
            tree = MerkleTree.deserialise(data)
        except DecodeError:
            rejected += 1
            continue
        # Anything accepted is a consistent tree that re-serialises to the same bytes.
        assert tree.serialise(tree.min_index, tree.size - 1) == data
        accepted += 1
    assert accepted > 100 and rejected > 1000


# ---------------------------------------------------------------------- memory


def test_memory_per_leaf_stays_under_100_bytes() -> None:
    leaves = random_leaves(200_000, seed=25)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tree = build(leaves)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (after - before) / tree.size < 100


# ----------------------------------------------- mixed operations across batches


@settings(max_examples=25, derandomize=True, deadline=None)
@given(st.data())
def test_any_sequence_of_appends_reads_truncates_and_drops_matches_a_fresh_build(
    data: st.DataObject,
) -> None:
    # Sizes cross the 1024-leaf hashing batches, so deferred hashing meets every operation.
    pool = random_leaves(6000, seed=26)[1:]
    tree = MerkleTree()
    history = [bytes(32)]  # the leaves the tree should hold, in order
    for _ in range(data.draw(st.integers(3, 12))):
        operation = data.draw(st.sampled_from(["append", "extend", "read", "truncate", "drop"]))
        if operation == "append":
            for _ in range(data.draw(st.integers(1, 1500))):
                leaf = pool[len(history) % len(pool)]
                tree.append(leaf)
                history.append(leaf)
        elif operation == "extend":
            batch = pool[: data.draw(st.integers(0, 2500))]
            tree.extend(batch)
            history.extend(batch)
        elif operation == "read":
            size = data.draw(st.integers(max(tree.min_index, 1), tree.size))
            assert tree.root_at(size) == build(history[:size]).root()
        elif operation == "truncate":
            size = data.draw(st.integers(max(tree.min_index, 1), tree.size))
            tree.truncate(size)
            del history[size:]
        else:
            tree.drop_prefix(data.draw(st.integers(tree.min_index, tree.size)))
    reference = build(history)
    assert tree.size == len(history)
    assert tree.root() == reference.root()
    first = tree.min_index
    for index in {first, (first + tree.size - 1) // 2, tree.size - 1}:
        if index < tree.size:
            assert tree.leaf(index) == history[index]
            assert tree.inclusion_proof(index) == reference.inclusion_proof(index)
    if first < tree.size:
        again = MerkleTree.deserialise(tree.serialise(first, tree.size - 1))
        assert again.root() == reference.root()
