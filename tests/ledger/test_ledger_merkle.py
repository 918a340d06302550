"""Promises of charter.ledger.merkle: CCF's roots, valid RFC 9162 proofs, clear refusals.

The oracles are `ccf.merkletree.MerkleTree` and `ccf.receipt.root` (CCF's own Python) and a
naive recursive model written from RFC 9162's definitions below, which shares no code or
data layout with the implementation.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from ccf.merkletree import MerkleTree as CcfMerkleTree
from ccf.receipt import root as ccf_receipt_root
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.ledger.merkle import (
    MerkleTree,
    hash_node,
    root_from_proof,
    verify_consistency,
    verify_inclusion,
)

DETERMINISTIC = settings(max_examples=60, derandomize=True, deadline=None)

# ------------------------------------------------------------ reference model (RFC 9162)


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return hashlib.sha256(ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_path(index: int, leaves: list[bytes]) -> list[tuple[bool, bytes]]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*ref_path(index, leaves[:k]), (False, ref_root(leaves[k:]))]
    return [*ref_path(index - k, leaves[k:]), (True, ref_root(leaves[:k]))]


def ref_consistency(m: int, leaves: list[bytes], complete: bool = True) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*ref_consistency(m, leaves[:k], complete), ref_root(leaves[k:])]
    return [*ref_consistency(m - k, leaves[k:], False), ref_root(leaves[:k])]


def random_leaves(count: int, seed: int) -> list[bytes]:
    """Leaf 0 is 32 zero bytes as in CCF, then seeded random leaves."""
    rng = random.Random(seed)
    return [bytes(32)] + [rng.randbytes(32) for _ in range(count - 1)]


def build(leaves: list[bytes]) -> MerkleTree:
    assert leaves[0] == bytes(32)
    tree = MerkleTree()
    for leaf in leaves[1:]:
        tree.append(leaf)
    return tree


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# ---------------------------------------------------------------------- roots


def test_new_tree_holds_only_the_zero_leaf() -> None:
    tree = MerkleTree()
    assert tree.size == 1
    assert tree.leaf(0) == bytes(32)
    assert tree.root() == bytes(32)
    assert tree.inclusion_proof(0) == []


def test_root_equals_ccf_merkletree_for_every_size_up_to_600() -> None:
    leaves = random_leaves(600, seed=1)
    ours = MerkleTree()
    theirs = CcfMerkleTree()  # type: ignore[no-untyped-call]  # ccf ships no hints
    theirs.add_leaf(leaves[0], do_hash=False)
    assert ours.root() == theirs.get_merkle_root()
    for leaf in leaves[1:]:
        ours.append(leaf)
        theirs.add_leaf(leaf, do_hash=False)
        assert ours.root() == theirs.get_merkle_root(), ours.size


def test_historical_roots_equal_roots_of_trees_built_to_that_size() -> None:
    leaves = random_leaves(300, seed=2)
    tree = build(leaves)
    for size in range(1, 301):
        assert tree.root_at(size) == ref_root(leaves[:size]), size


def test_interior_node_is_sha256_of_concatenation_without_prefix() -> None:
    left, right = b"\x01" * 32, b"\x02" * 32
    assert hash_node(left, right) == hashlib.sha256(left + right).digest()
    tree = MerkleTree()
    tree.append(right)
    assert tree.root() == hashlib.sha256(bytes(32) + right).digest()


def test_extend_builds_the_same_tree_as_repeated_append() -> None:
    leaves = random_leaves(1000, seed=3)
    one_by_one = build(leaves)
    batched = MerkleTree()
    batched.extend(leaves[1:])
    assert batched.size == one_by_one.size == 1000
    assert batched.root() == one_by_one.root()
    assert batched.inclusion_proof(777, 900) == one_by_one.inclusion_proof(777, 900)


# ----------------------------------------------------------- inclusion proofs


def test_inclusion_proofs_verify_for_every_leaf_and_size_up_to_200() -> None:
    leaves = random_leaves(200, seed=4)
    tree = build(leaves)
    for size in range(1, 201):
        root = tree.root_at(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert root_from_proof(leaves[index], proof) == root, (index, size)
            assert verify_inclusion(leaves[index], index, size, proof, root), (index, size)


def test_inclusion_proofs_equal_rfc9162_audit_paths() -> None:
    leaves = random_leaves(70, seed=5)
    tree = build(leaves)
    for size in range(1, 71):
        for index in range(size):
            assert tree.inclusion_proof(index, size) == ref_path(index, leaves[:size])


@DETERMINISTIC
@given(st.integers(min_value=1, max_value=2000), st.data())
def test_inclusion_proofs_verify_for_sampled_leaves_up_to_2000(
    size: int, data: st.DataObject
) -> None:
    leaves = random_leaves(size, seed=size)
    tree = build(leaves)
    for index in data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=20)):
        proof = tree.inclusion_proof(index)
        assert verify_inclusion(leaves[index], index, size, proof, tree.root())
        historical = data.draw(st.integers(index + 1, size))
        old_proof = tree.inclusion_proof(index, historical)
        assert verify_inclusion(
            leaves[index], index, historical, old_proof, tree.root_at(historical)
        )


def test_receipt_proof_folds_to_the_signed_root_with_ccf_receipt_root() -> None:
    # A signature at seqno S signs root_at(S) (leaves 0..S-1); the receipt of s < S carries
    # inclusion_proof(s, S) as [{"left"|"right": hex}].
    leaves = random_leaves(150, seed=6)
    tree = build(leaves)
    for signature_seqno in (2, 5, 64, 65, 100, 149):
        signed_root = tree.root_at(signature_seqno)
        for seqno in range(1, signature_seqno):
            proof = tree.inclusion_proof(seqno, signature_seqno)
            as_json = [{"left" if is_left else "right": h.hex()} for is_left, h in proof]
            assert ccf_receipt_root(leaves[seqno].hex(), as_json) == signed_root.hex()


def test_tampered_inclusion_proof_leaf_index_or_root_is_rejected() -> None:
    leaves = random_leaves(45, seed=7)
    tree = build(leaves)
    root = tree.root()
    index = 13
    proof = tree.inclusion_proof(index)
    leaf = leaves[index]
    assert verify_inclusion(leaf, index, 45, proof, root)
    for position, (is_left, sibling) in enumerate(proof):
        tampered = list(proof)
        tampered[position] = (is_left, flip_bit(sibling, position))
        assert not verify_inclusion(leaf, index, 45, tampered, root)
        assert root_from_proof(leaf, tampered) != root
        swapped = list(proof)
        swapped[position] = (not is_left, sibling)
        assert not verify_inclusion(leaf, index, 45, swapped, root)
    assert not verify_inclusion(flip_bit(leaf, 3), index, 45, proof, root)
    assert not verify_inclusion(leaf, index, 45, proof, flip_bit(root, 200))
    assert not verify_inclusion(leaf, index + 1, 45, proof, root)
    # (The size is not bound by RFC 9162 proofs: sizes with the same path shape, like 45
    # and 46 for leaf 13, accept the same proof. Verifiers take the size from the signer.)
    assert not verify_inclusion(leaf, index, 45, proof[:-1], root)
    assert not verify_inclusion(leaf, index, 45, [*proof, proof[-1]], root)
    assert not verify_inclusion(leaf, 45, 45, proof, root)


# --------------------------------------------------------- consistency proofs


def test_consistency_proofs_verify_for_every_pair_of_sizes_up_to_300() -> None:
    leaves = random_leaves(300, seed=8)
    tree = build(leaves)
    roots = [b""] + [tree.root_at(size) for size in range(1, 301)]
    for new_size in range(1, 301):
        for old_size in range(1, new_size + 1):
            proof = tree.consistency_proof(old_size, new_size)
            assert verify_consistency(old_size, new_size, roots[old_size], roots[new_size], proof)


def test_consistency_proofs_equal_rfc9162_proofs() -> None:
    leaves = random_leaves(66, seed=9)
    tree = build(leaves)
    for new_size in range(1, 67):
        for old_size in range(1, new_size + 1):
            expected = ref_consistency(old_size, leaves[:new_size])
            assert tree.consistency_proof(old_size, new_size) == expected


@DETERMINISTIC
@given(st.integers(min_value=2, max_value=5000), st.data())
def test_consistency_proofs_verify_for_random_pairs_up_to_5000(
    new_size: int, data: st.DataObject
) -> None:
    tree = build(random_leaves(new_size, seed=new_size))
    old_size = data.draw(st.integers(1, new_size))
    proof = tree.consistency_proof(old_size, new_size)
    old_root, new_root = tree.root_at(old_size), tree.root_at(new_size)
    assert verify_consistency(old_size, new_size, old_root, new_root, proof)
    if old_size < new_size:
        assert not verify_consistency(old_size, new_size, flip_bit(old_root, 9), new_root, proof)
        assert not verify_consistency(old_size, new_size, old_root, flip_bit(new_root, 9), proof)


def test_consistency_proof_against_wrong_roots_or_tampered_nodes_is_rejected() -> None:
    leaves = random_leaves(1000, seed=10)
    tree = build(leaves)
    other = build([*leaves[:500], *random_leaves(500, seed=11)[1:], bytes(32)][:1000])
    for old_size, new_size in [(1, 2), (3, 7), (4, 1000), (500, 1000), (511, 513), (999, 1000)]:
        proof = tree.consistency_proof(old_size, new_size)
        old_root, new_root = tree.root_at(old_size), tree.root_at(new_size)
        assert verify_consistency(old_size, new_size, old_root, new_root, proof)
        # A fork after the old tree: the new root of a different history must not verify.
        if old_size <= 500 < new_size:
            assert not verify_consistency(
                old_size, new_size, old_root, other.root_at(new_size), proof
            )
        for position in range(len(proof)):
            tampered = list(proof)
            tampered[position] = flip_bit(proof[position], 77)
            assert not verify_consistency(old_size, new_size, old_root, new_root, tampered)
        assert not verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])
        assert not verify_consistency(old_size, new_size, old_root, new_root, [*proof, proof[0]])
        assert not verify_consistency(new_size, old_size, new_root, old_root, proof)


def test_consistency_of_equal_sizes_needs_equal_roots_and_an_empty_proof() -> None:
    tree = build(random_leaves(10, seed=12))
    assert tree.consistency_proof(7, 7) == []
    assert verify_consistency(7, 7, tree.root_at(7), tree.root_at(7), [])
    assert not verify_consistency(7, 7, tree.root_at(7), tree.root_at(8), [])
    assert not verify_consistency(7, 7, tree.root_at(7), tree.root_at(7), [tree.root_at(7)])
    assert not verify_consistency(0, 7, bytes(32), tree.root_at(7), [])


# ------------------------------------------------------------------- refusals


def test_out_of_range_requests_raise_instead_of_answering() -> None:
    tree = build(random_leaves(10, seed=13))
    with pytest.raises(IndexError):
        tree.leaf(10)
    with pytest.raises(IndexError):
        tree.leaf(-1)
    with pytest.raises(IndexError):
        tree.root_at(0)
    with pytest.raises(IndexError):
        tree.root_at(11)
    with pytest.raises(IndexError):
        tree.inclusion_proof(10)
    with pytest.raises(IndexError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(IndexError):
        tree.inclusion_proof(2, 11)
    with pytest.raises(IndexError):
        tree.consistency_proof(0, 5)
    with pytest.raises(IndexError):
        tree.consistency_proof(5, 11)
    with pytest.raises(ValueError):
        tree.consistency_proof(6, 5)
    with pytest.raises(IndexError):
        tree.truncate(0)
    with pytest.raises(IndexError):
        tree.truncate(11)
    with pytest.raises(IndexError):
        tree.drop_prefix(11)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_leaf_of_wrong_length_is_refused_and_tree_is_unchanged(length: int) -> None:
    tree = build(random_leaves(5, seed=14))
    root = tree.root()
    with pytest.raises(ValueError):
        tree.append(b"\x01" * length)
    with pytest.raises(ValueError):
        tree.extend([b"\x02" * 32, b"\x01" * length])
    # extend keeps the good leaves before the bad one, exactly like repeated append.
    assert tree.size == 6
    assert tree.root_at(5) == root
