"""Naming the damaged entry when an audit finds a signed root that does not match.

A changed byte in an ordinary entry shows up only at the next signature, whose root then
differs from the recomputed one. The signature transaction also carries the leaves it
signed since the previous signature (`public:ccf.internal.tree`, merklecpp format). Once
those leaves are shown authentic (they fold to the signed root, and the node's signature
over that root verifies), the first of them that differs from the leaf recomputed from the
file is the entry that was changed: it is named with its chunk file and offset.

Only the failure path runs this code; it reads back at most the entries since the
previous signature.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger.chunks import ChunkName, chunk_positions
from charter.ledger.entry import entry_leaf
from charter.ledger.errors import AuditError, LedgerError
from charter.ledger.merkle import MerkleTree
from charter.ledger.signatures import verify_root

# Leaves read back to find a changed entry at most (the entries since the last signature).
LOCATE_ENTRIES_MAX = 1 << 20


def entry_location(
    directory: str, chunks: Sequence[ChunkName], seqno: int
) -> tuple[str, int] | None:
    """(chunk file name, file offset) of entry `seqno`, or None if the file cannot say."""
    for chunk, _data, positions in _chunks_holding(directory, chunks, seqno, seqno):
        return chunk.filename, positions[seqno - chunk.first]
    return None


def where(directory: str, chunks: Sequence[ChunkName], seqno: int) -> str:
    """' (in FILE at offset N)' for messages, or '' when the entry cannot be found."""
    location = entry_location(directory, chunks, seqno)
    return f" (in {location[0]} at offset {location[1]})" if location else ""


def damaged_entry(
    directory: str,
    chunks: Sequence[ChunkName],
    signature_seqno: int,
    signed_root: bytes,
    node_key: ec.EllipticCurvePublicKey,
    signature: bytes,
    tree_bytes: bytes | None,
) -> AuditError | None:
    """The AuditError naming the entry whose leaf differs from the one signed at
    `signature_seqno`, or None if the signature's tree table cannot show it."""
    if tree_bytes is None or not directory:
        return None
    try:
        verify_root(node_key, signed_root, signature)
        tree = MerkleTree.deserialise(tree_bytes)
        first = tree.min_index
        if tree.size != signature_seqno or tree.root_at(signature_seqno) != signed_root:
            return None
    except (LedgerError, IndexError, ValueError):
        return None
    if signature_seqno - first > LOCATE_ENTRIES_MAX or first < 1:
        return None
    for chunk, data, positions in _chunks_holding(directory, chunks, first, signature_seqno - 1):
        count = len(positions)
        for index in range(max(first, chunk.first) - chunk.first, count):
            seqno = chunk.first + index
            if seqno >= signature_seqno:
                return None
            start = positions[index]
            end = positions[index + 1] if index + 1 < count else _entries_end(data, count)
            try:
                leaf = entry_leaf(data[start:end])
            except LedgerError:
                leaf = b""
            if leaf != tree.leaf(seqno):
                return AuditError(
                    f"entry was changed after it was signed: its bytes no longer hash to the "
                    f"leaf that signature {signature_seqno} covers "
                    f"(in {chunk.filename} at offset {start})",
                    seqno=seqno,
                )
    return None


def _entries_end(data: bytes | mmap.mmap, count: int) -> int:
    table_offset = int.from_bytes(data[0:8], "little")
    return table_offset or len(data)


def _chunks_holding(
    directory: str, chunks: Sequence[ChunkName], lo: int, hi: int
) -> list[tuple[ChunkName, bytes, list[int]]]:
    """(chunk, bytes, entry positions) of the readable chunks holding seqnos lo..hi."""
    out = []
    for chunk in chunks:
        if chunk.first > hi or (chunk.last is not None and chunk.last < lo):
            continue
        try:
            with open(os.path.join(directory, chunk.filename), "rb") as f:
                data = f.read()
            positions, _end = chunk_positions(data, chunk.filename)
        except (OSError, LedgerError):
            continue
        if chunk.first + len(positions) - 1 >= lo:
            out.append((chunk, data, positions))
    return out


def chunk_damage(
    data: bytes | mmap.mmap, filename: str, first: int, error: LedgerError
) -> tuple[int, str]:
    """(seqno, message) naming where a chunk file that failed to parse is damaged: the
    first entry that does not fit, or the first entry whose offset-table slot is wrong."""
    if isinstance(error, AuditError) and error.seqno is not None:
        return error.seqno, f"{_message(error)} (in {filename})"
    size = len(data)
    if size < 8:
        return first, f"chunk file {filename} is shorter than its 8-byte header"
    table_offset = int.from_bytes(data[0:8], "little")
    table_ok = 8 <= table_offset <= size
    end = table_offset if table_ok and table_offset else size
    positions: list[int] = []
    pos = 8
    while pos < end:
        entry_size = int.from_bytes(data[pos + 2 : pos + 8], "little") if end - pos >= 8 else -1
        if entry_size < 0 or data[pos] != 1 or entry_size > end - pos - 8:
            seqno = first + len(positions)
            return seqno, (
                f"entry is cut short or its header is damaged (in {filename} at offset {pos}; "
                f"the file has {size} bytes)"
            )
        positions.append(pos)
        pos += 8 + entry_size
    if table_offset and table_ok:
        slots = (size - table_offset) // 4
        for index, position in enumerate(positions):
            slot = table_offset + 4 * index
            if index >= slots or int.from_bytes(data[slot : slot + 4], "little") != position:
                return first + index, (
                    f"the chunk's offset table is cut or wrong from this entry on "
                    f"(in {filename}: table slot at offset {slot}, entry at offset {position})"
                )
    seqno = first + len(positions)
    return seqno, f"chunk file {filename} is malformed after its last entry: {_message(error)}"


def _message(error: LedgerError) -> str:
    text = str(error)
    if isinstance(error, AuditError) and error.seqno is not None:
        text = text.removeprefix(f"seqno {error.seqno}: ")
    return text
