"""CCF's ledger Merkle tree: append-only, provable, in flat byte buffers.

Shape and hashing follow CCF (FORMATS §2.3): leaf *i* is the leaf hash of seqno *i*, leaf 0
is 32 zero bytes stored as-is, an interior node is SHA-256(left ‖ right) with no domain
prefixes, and the shape is RFC 9162's (split at the largest power of two below the size).

Storage: `_levels[k]` is one bytearray holding, back to back, the 32-byte roots of the
complete, aligned perfect subtrees of 2^k leaves, i.e. node j of level k covers leaves
[j·2^k, (j+1)·2^k). Every other node of any historical tree (an "incomplete" right edge) is
a fold of such nodes, so nothing else is ever stored: about 64 bytes per leaf in total and
no Python object per node. After `drop_prefix(d)`, level k keeps its nodes from index
`2·(d >> (k+1))` on: the node containing d's ancestor and, when bit k of d is set, its left
sibling, which is exactly what proofs of leaves ≥ d and roots of sizes ≥ d still need.

Hashing is deferred: `append` only stores the leaf, and the interior nodes it completes are
hashed in batches (every 1024 leaves, or before any read of an interior node). SHA-256 of
64 bytes costs ~350 ns in CPython, so per-call overhead is what batching saves.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Sequence

from charter.ledger.errors import DecodeError

_log = logging.getLogger(__name__)

HASH_SIZE_BYTES = 32
ZERO_LEAF = bytes(HASH_SIZE_BYTES)
# A serialised tree comes from the ledger (outside bytes): bound it before allocating. CCF
# serialises only the leaves since the last flush (about one signature interval), so 256 MiB
# (8 Mi leaves) is far above anything legitimate.
MAX_SERIALISED_TREE_BYTES = 256 * 1024 * 1024
# Leaf indices are seqnos; CCF stores them as u64 but nothing real comes near 2^62, and this
# keeps `from + count` far from any overflow in other implementations.
MAX_LEAF_INDEX = 1 << 62
_HEADER = struct.Struct(">QQ")
# append/extend hash their backlog whenever the size is a multiple of 1024.
_FLUSH_EVERY_MASK = 1024 - 1

_sha256 = hashlib.sha256

InclusionProof = list[tuple[bool, bytes]]


def hash_node(left: bytes, right: bytes) -> bytes:
    """Interior node hash: SHA-256(left ‖ right), no domain separation (CCF's choice)."""
    return _sha256(left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    assert n > 1
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """CCF's Merkle tree over ledger leaves; leaf index = seqno, starting with leaf 0."""

    __slots__ = ("_first", "_hashed", "_levels", "_root_cache", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray(ZERO_LEAF)]
        self._size = 1  # leaves ever appended (including a dropped prefix)
        self._first = 0  # leaves below this index were dropped by drop_prefix
        # Levels above the leaves are complete for the first `_hashed` leaves; the rest
        # are hashed in one tight loop by `_flush` before anything reads them, which is
        # about a third cheaper than hashing pair by pair inside `append`.
        self._hashed = 1
        self._root_cache: tuple[int, bytes] | None = None

    # ---------------------------------------------------------------- growing

    @property
    def size(self) -> int:
        """Number of leaves, counting a dropped prefix: the next leaf gets this index."""
        return self._size

    @property
    def min_index(self) -> int:
        """Lowest leaf index still held (merklecpp's name); 0 unless a prefix was dropped."""
        return self._first

    def append(self, leaf: bytes) -> None:
        """Append one 32-byte leaf hash (one node hash per append on average, deferred)."""
        if len(leaf) != HASH_SIZE_BYTES:
            raise ValueError(f"a leaf is {HASH_SIZE_BYTES} bytes, got {len(leaf)}")
        self._levels[0] += leaf
        size = self._size + 1
        self._size = size
        if not size & _FLUSH_EVERY_MASK:
            self._flush()  # bounds the unhashed backlog, and so _flush's temporaries

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaves; same result as calling `append` on each."""
        leaf_level = self._levels[0]
        size = self._size
        try:
            for leaf in leaves:
                if len(leaf) != HASH_SIZE_BYTES:
                    raise ValueError(f"a leaf is {HASH_SIZE_BYTES} bytes, got {len(leaf)}")
                leaf_level += leaf
                size += 1
                if not size & _FLUSH_EVERY_MASK:
                    self._size = size
                    self._flush()
        finally:
            # Leaves appended before a bad one stay, exactly as with repeated `append`.
            self._size = size

    def _flush(self) -> None:
        """Hash every node completed by leaves appended since the last flush."""
        size = self._size
        if self._hashed == size:
            return
        levels = self._levels
        first = self._first
        sha256 = _sha256
        level = 0
        while size >> (level + 1):
            if level + 1 == len(levels):
                levels.append(bytearray())
            lower, upper = levels[level], levels[level + 1]
            lower_start = (first >> (level + 1)) << 1
            done = ((first >> (level + 2)) << 1) + len(upper) // HASH_SIZE_BYTES
            wanted = size >> (level + 1)
            if done == wanted:
                break  # nothing new here, so nothing new above either
            begin = (2 * done - lower_start) * HASH_SIZE_BYTES
            end = (2 * wanted - lower_start) * HASH_SIZE_BYTES
            assert 0 <= begin < end <= len(lower)
            upper += b"".join([sha256(lower[o : o + 64]).digest() for o in range(begin, end, 64)])
            level += 1
        self._hashed = size

    # --------------------------------------------------------------- reading

    def _node(self, level: int, index: int) -> bytes:
        """Root of the perfect subtree over leaves [index·2^level, (index+1)·2^level)."""
        start = (self._first >> (level + 1)) << 1
        if index < start or index >= (self._size >> level):
            raise IndexError(
                f"subtree {index} of height {level} is not held by this tree "
                f"(leaves {self._first}..{self._size - 1})"
            )
        if (index + 1) << level > self._hashed:
            self._flush()  # every read of an interior node goes through here
        offset = (index - start) * HASH_SIZE_BYTES
        return bytes(self._levels[level][offset : offset + HASH_SIZE_BYTES])

    def _range_root(self, lo: int, hi: int) -> bytes:
        """Root of the RFC 9162 subtree over leaves [lo, hi); lo is aligned as in the tree."""
        assert 0 <= lo < hi
        width = hi - lo
        if not width & (width - 1):  # a perfect subtree: one stored node, most proof steps
            level = width.bit_length() - 1
            return self._node(level, lo >> level)
        # The subtree is the fold, right to left, of the perfect subtrees given by the bits
        # of its size, largest first.
        nodes: list[bytes] = []
        offset = lo
        for level in range(width.bit_length() - 1, -1, -1):
            if width >> level & 1:
                assert offset % (1 << level) == 0, "range is not a node of this tree"
                nodes.append(self._node(level, offset >> level))
                offset += 1 << level
        acc = nodes[-1]
        for node in reversed(nodes[:-1]):
            acc = _sha256(node + acc).digest()
        return acc

    def _check_size(self, size: int, what: str) -> None:
        lowest = max(self._first, 1)
        if not lowest <= size <= self._size:
            raise IndexError(f"{what} {size} is outside the provable sizes {lowest}..{self._size}")

    def root(self) -> bytes:
        """Root over all leaves."""
        return self.root_at(self._size)

    def root_at(self, size: int) -> bytes:
        """Root over the first `size` leaves (for a signature at seqno S: `root_at(S)`)."""
        self._check_size(size, "tree size")
        cached = self._root_cache
        if cached is not None and cached[0] == size:
            return cached[1]
        root = self._range_root(0, size)
        self._root_cache = (size, root)
        return root

    def leaf(self, index: int) -> bytes:
        """The 32-byte leaf at `index` (= seqno)."""
        if not self._first <= index < self._size:
            raise IndexError(f"leaf {index} is not held (leaves {self._first}..{self._size - 1})")
        offset = (index - ((self._first >> 1) << 1)) * HASH_SIZE_BYTES
        return bytes(self._levels[0][offset : offset + HASH_SIZE_BYTES])

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """Audit path of leaf `index` in the tree of the first `size` leaves (default: all).

        Leaf-to-root order; `(True, h)` means h is the LEFT sibling (acc = H(h ‖ acc)),
        which is CCF's JSON `{"left": h}`. The receipt of seqno s signed at seqno S is
        `inclusion_proof(s, S)`.
        """
        if size is None:
            size = self._size
        self._check_size(size, "tree size")
        if not self._first <= index < size:
            raise IndexError(
                f"leaf {index} is not provable in a tree of {size} leaves "
                f"(leaves held from {self._first})"
            )
        top_down: InclusionProof = []
        lo, hi = 0, size
        while hi - lo > 1:
            mid = lo + _largest_power_of_two_below(hi - lo)
            if index < mid:
                top_down.append((False, self._range_root(mid, hi)))
                hi = mid
            else:
                top_down.append((True, self._range_root(lo, mid)))
                lo = mid
        top_down.reverse()
        return top_down

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4 proof that the tree of `old_size` leaves is a prefix of `new_size`."""
        self._check_size(old_size, "old size")
        self._check_size(new_size, "new size")
        if old_size > new_size:
            raise ValueError(f"old size {old_size} is larger than new size {new_size}")
        top_down: list[bytes] = []
        lo, hi = 0, new_size
        # `complete` is RFC 9162's b: true while the old tree's root is a node on our path,
        # in which case the verifier already knows it and it is left out.
        complete = True
        while True:
            if old_size == hi:
                if not complete:
                    top_down.append(self._range_root(lo, hi))
                break
            mid = lo + _largest_power_of_two_below(hi - lo)
            if old_size <= mid:
                top_down.append(self._range_root(mid, hi))
                hi = mid
            else:
                top_down.append(self._range_root(lo, mid))
                lo = mid
                complete = False
        top_down.reverse()
        return top_down

    # --------------------------------------------------------------- shrinking

    def truncate(self, size: int) -> None:
        """Keep only the first `size` leaves (rollback of uncommitted entries)."""
        self._check_size(size, "truncation size")
        for level, buf in enumerate(self._levels):
            start = (self._first >> (level + 1)) << 1
            keep = (size >> level) - start
            assert keep >= 0
            del buf[keep * HASH_SIZE_BYTES :]
        # Levels above the new top are empty now; drop them so `append` recreates them.
        while len(self._levels) > 1 and not self._levels[-1]:
            self._levels.pop()
        self._size = size
        self._hashed = min(self._hashed, size)
        self._root_cache = None

    def drop_prefix(self, index: int) -> None:
        """Forget leaves below `index`; leaves ≥ index stay provable, sizes ≥ index rootable."""
        if not 0 <= index <= self._size:
            raise IndexError(f"cannot drop below {index}: the tree has {self._size} leaves")
        if index <= self._first:
            return  # already dropped
        self._flush()  # the level buffers are cut at offsets that assume hashed levels
        for level, buf in enumerate(self._levels):
            old_start = (self._first >> (level + 1)) << 1
            new_start = (index >> (level + 1)) << 1
            del buf[: (new_start - old_start) * HASH_SIZE_BYTES]
        self._first = index
        _log.debug("merkle drop_prefix first=%d size=%d", index, self._size)

    # ----------------------------------------------------------- serialisation

    def serialise(self, from_: int, to: int) -> bytes:
        """merklecpp `serialise(from, to)` (FORMATS §2.5): leaves from..to plus left edge."""
        if not self._first <= from_ <= to < self._size:
            raise IndexError(
                f"cannot serialise leaves {from_}..{to}: "
                f"held leaves are {self._first}..{self._size - 1}"
            )
        first_leaf = (self._first >> 1) << 1
        out = bytearray(_HEADER.pack(to - from_ + 1, from_))
        out += self._levels[0][
            (from_ - first_leaf) * HASH_SIZE_BYTES : (to + 1 - first_leaf) * HASH_SIZE_BYTES
        ]
        # merklecpp collects the left siblings on the way down to leaf `from` and writes
        # them bottom-up: for each set bit k of from, ascending, the perfect subtree just
        # left of from's ancestor at height k.
        for level in range(from_.bit_length()):
            if from_ >> level & 1:
                out += self._node(level, (from_ >> level) - 1)
        return bytes(out)

    @classmethod
    def deserialise(cls, data: bytes | bytearray | memoryview) -> MerkleTree:
        """Rebuild a tree from merklecpp bytes; raises only `DecodeError` on bad input.

        The result holds leaves from..to, proves them, has roots for sizes from..to+1 and
        keeps appending from to+1.
        """
        view = memoryview(data)
        if len(view) > MAX_SERIALISED_TREE_BYTES:
            raise DecodeError(
                f"serialised tree of {len(view)} bytes exceeds {MAX_SERIALISED_TREE_BYTES}",
                field="tree",
            )
        if len(view) < _HEADER.size:
            raise DecodeError("serialised tree shorter than its 16-byte header", offset=0)
        count, first = _HEADER.unpack_from(view, 0)
        if count == 0:
            raise DecodeError("serialised tree holds no leaves", offset=0, field="count")
        if first >= MAX_LEAF_INDEX:
            raise DecodeError(f"first leaf index {first} is out of range", offset=8, field="from")
        extras = first.bit_count()
        # Compare counts before multiplying into a length: `count` is attacker-controlled.
        available = (len(view) - _HEADER.size) // HASH_SIZE_BYTES
        if count > available or (len(view) - _HEADER.size) % HASH_SIZE_BYTES:
            raise DecodeError(
                f"serialised tree of {len(view)} bytes cannot hold {count} leaves",
                offset=0,
                field="count",
            )
        if count + extras != available:
            raise DecodeError(
                f"serialised tree has {available - count} left-edge hashes, "
                f"from={first} needs {extras}",
                offset=_HEADER.size + count * HASH_SIZE_BYTES,
                field="extras",
            )
        tree = cls.__new__(cls)
        # Start as a tree of `first` leaves whose prefix is dropped: level k then holds
        # exactly one node when bit k of `first` is set (the serialised extra) and none
        # otherwise; appending the leaves rebuilds everything else.
        extra_offset = _HEADER.size + count * HASH_SIZE_BYTES
        levels: list[bytearray] = []
        for level in range(max(first.bit_length(), 1)):
            buf = bytearray()
            if first >> level & 1:
                buf += view[extra_offset : extra_offset + HASH_SIZE_BYTES]
                extra_offset += HASH_SIZE_BYTES
            levels.append(buf)
        tree._levels = levels
        tree._size = first
        tree._hashed = first
        tree._first = first
        tree._root_cache = None
        tree.extend(
            bytes(view[offset : offset + HASH_SIZE_BYTES])
            for offset in range(
                _HEADER.size, _HEADER.size + count * HASH_SIZE_BYTES, HASH_SIZE_BYTES
            )
        )
        assert tree._size == first + count
        return tree


# ------------------------------------------------------------------ verification


def root_from_proof(leaf: bytes, proof: Sequence[tuple[bool, bytes]]) -> bytes:
    """Fold an inclusion proof (leaf → root; True = sibling on the left) into a root."""
    acc = bytes(leaf)
    for sibling_is_left, sibling in proof:
        acc = _sha256(sibling + acc if sibling_is_left else acc + sibling).digest()
    return acc


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[tuple[bool, bytes]], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: True iff `proof` shows `leaf` at `index` in the tree `root`.

    Unlike `root_from_proof` this also checks that the proof's shape and directions are
    the ones position `index` in a tree of `size` leaves must have.
    """
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    acc = bytes(leaf)
    for sibling_is_left, sibling in proof:
        if sn == 0 or len(sibling) != HASH_SIZE_BYTES:
            return False
        if fn & 1 or fn == sn:
            if not sibling_is_left:
                return False
            acc = _sha256(sibling + acc).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            if sibling_is_left:
                return False
            acc = _sha256(acc + sibling).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and acc == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2 with CCF's node hash: is tree `old_root` a prefix of `new_root`?"""
    if not 1 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    path = list(proof)
    if any(len(node) != HASH_SIZE_BYTES for node in path):
        return False
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the path's start.
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _sha256(node + fr).digest()
            sr = _sha256(node + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(sr + node).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
