"""Audit checkpoints: where an audit ended, so that a later audit reads only what follows.

A checkpoint is taken at the last signature transaction S an audit verified. It holds what
the validator needs to carry on from S+1 (the Merkle frontier at size S and the leaf of S,
the node and service state after S, the running counts), what proves it was not edited
(the signed root of S with its node and COSE signatures, which the frontier must fold to,
and a SHA-256 digest over the whole document), and what ties it to the files it was taken
from (per chunk, the SHA-256 of the entry bytes it covered).

A later audit (`audit(..., since=checkpoint)`) refuses a checkpoint that fails any of these
checks or does not match the ledger, verifies the entries after S as a full audit would, and
builds an RFC 9162 consistency proof from the checkpoint's signed root (tree size S) to the
last signed root it verified: anyone holding the two roots can check that the newer tree
extends the older one, without the ledger.

The checkpoint file is outside input: `AuditCheckpoint.loads` bounds its size, its counts
and every field, and raises only `DecodeError` (malformed) or `VerificationError` (digest).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mmap
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from charter.ledger import merkle
from charter.ledger.chunks import CHUNK_HEADER_SIZE, ChunkName, chunk_positions
from charter.ledger.errors import AuditError, DecodeError, LedgerError, VerificationError

CHECKPOINT_FORMAT = "charter.audit-checkpoint/1"
# A checkpoint grows with the number of chunks (~150 bytes each: 64 MiB is ~400,000 chunks,
# some 2 TB of ledger at CCF's 5 MB chunks) and of nodes ever seen.
CHECKPOINT_BYTES_MAX = 64 * 1024 * 1024
CHECKPOINT_CHUNKS_MAX = 400_000
CHECKPOINT_NODES_MAX = 10_000
_CERT_PEM_BYTES_MAX = 64 * 1024
_SIGNATURE_BYTES_MAX = 16 * 1024
_STATUS_BYTES_MAX = 64
_HEX32 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChunkDigest:
    """SHA-256 of a chunk file's bytes from its header to the end of entry `last`."""

    first: int
    last: int
    end: int  # file offset where entry `last` ends
    sha256: bytes


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """The validator's state just after signature transaction `seqno` (see module doc)."""

    seqno: int
    view: int
    root: bytes  # the root signed at `seqno`: of leaves 0..seqno-1
    frontier: tuple[bytes, ...]  # perfect-subtree roots of that tree, largest first
    leaf: bytes  # the leaf of `seqno` itself
    node_id: str  # the node that signed `root`, its DER signature, the service's COSE_Sign1
    signature: bytes
    cose_sign1: bytes | None
    service_status: str | None
    service_cert_pem: str | None
    node_status: dict[str, str]
    node_certs: dict[str, str]
    signatures: int
    cose_signatures: int
    deprecated_entries: int
    chunks: tuple[ChunkDigest, ...]

    # -- file format ---------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "seqno": self.seqno,
            "view": self.view,
            "root": self.root.hex(),
            "frontier": [node.hex() for node in self.frontier],
            "leaf": self.leaf.hex(),
            "signature": {
                "node_id": self.node_id,
                "sig": base64.b64encode(self.signature).decode(),
                "cose_sign1": (
                    base64.b64encode(self.cose_sign1).decode() if self.cose_sign1 else None
                ),
            },
            "service": {"status": self.service_status, "cert": self.service_cert_pem},
            "node_status": dict(sorted(self.node_status.items())),
            "node_certs": dict(sorted(self.node_certs.items())),
            "counts": {
                "signatures": self.signatures,
                "cose_signatures": self.cose_signatures,
                "deprecated_entries": self.deprecated_entries,
            },
            "chunks": [[c.first, c.last, c.end, c.sha256.hex()] for c in self.chunks],
        }

    def dumps(self) -> bytes:
        """The checkpoint file: JSON with a `digest` over everything else."""
        body = self._body()
        body["digest"] = _digest(body)
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @property
    def digest(self) -> str:
        return _digest(self._body())

    @classmethod
    def loads(cls, data: bytes) -> AuditCheckpoint:
        """Parse a checkpoint file; DecodeError if malformed, VerificationError if its digest
        does not match its content."""
        if len(data) > CHECKPOINT_BYTES_MAX:
            raise DecodeError(f"checkpoint exceeds {CHECKPOINT_BYTES_MAX} bytes", field="file")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise DecodeError("checkpoint is not JSON", field="file") from None
        obj = _Fields(doc, "checkpoint")
        if obj.str_field("format", 64) != CHECKPOINT_FORMAT:
            raise DecodeError(f"checkpoint format is not {CHECKPOINT_FORMAT}", field="format")
        digest = obj.str_field("digest", 64)
        body = {key: value for key, value in obj.doc.items() if key != "digest"}
        if _digest(body) != digest:
            raise VerificationError(
                "checkpoint digest does not match its content (edited or corrupted)",
                field="digest",
            )
        seqno = obj.int_field("seqno")
        if seqno < 1:
            raise DecodeError("checkpoint seqno must be at least 1", field="seqno")
        frontier_hex = obj.list_field("frontier", 64)
        if len(frontier_hex) != seqno.bit_count():
            raise DecodeError(
                f"a tree of {seqno} leaves has {seqno.bit_count()} frontier nodes, "
                f"not {len(frontier_hex)}",
                field="frontier",
            )
        signature = _Fields(obj.get("signature"), "signature")
        service = _Fields(obj.get("service"), "service")
        counts = _Fields(obj.get("counts"), "counts")
        cose_b64 = signature.optional_str_field("cose_sign1", 2 * _SIGNATURE_BYTES_MAX)
        chunks = []
        previous_last: int | None = None  # a snapshot-started ledger's first chunk is > 1
        for index, item in enumerate(obj.list_field("chunks", CHECKPOINT_CHUNKS_MAX)):
            if (
                not isinstance(item, list)
                or len(item) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item[:3])
            ):
                raise DecodeError(f"chunks[{index}] is not [first, last, end, sha256]")
            first, last, end = item[0], item[1], item[2]
            follows = first >= 1 if previous_last is None else first == previous_last + 1
            if not follows or last < first or end <= CHUNK_HEADER_SIZE:
                raise DecodeError(f"chunks[{index}] does not follow on from the one before")
            chunks.append(ChunkDigest(first, last, end, _hash(item[3], f"chunks[{index}]")))
            previous_last = last
        if previous_last is not None and previous_last != seqno:
            raise DecodeError("checkpoint chunks do not end at its seqno", field="chunks")
        return cls(
            seqno=seqno,
            view=obj.int_field("view"),
            root=_hash(obj.get("root"), "root"),
            frontier=tuple(_hash(node, "frontier") for node in frontier_hex),
            leaf=_hash(obj.get("leaf"), "leaf"),
            node_id=signature.str_field("node_id", 64),
            signature=_b64(signature.str_field("sig", 2 * _SIGNATURE_BYTES_MAX), "sig"),
            cose_sign1=_b64(cose_b64, "cose_sign1") if cose_b64 is not None else None,
            service_status=service.optional_str_field("status", _STATUS_BYTES_MAX),
            service_cert_pem=service.optional_str_field("cert", _CERT_PEM_BYTES_MAX),
            node_status=obj.str_map_field("node_status", _STATUS_BYTES_MAX),
            node_certs=obj.str_map_field("node_certs", _CERT_PEM_BYTES_MAX),
            signatures=counts.int_field("signatures"),
            cose_signatures=counts.int_field("cose_signatures"),
            deprecated_entries=counts.int_field("deprecated_entries"),
            chunks=tuple(chunks),
        )


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise DecodeError(f"{what} must be 64 lowercase hex characters", field=what)
    return bytes.fromhex(value)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what} is not base64", field=what) from None


class _Fields:
    """Typed, bounded access to one JSON object of the checkpoint."""

    def __init__(self, doc: object, what: str) -> None:
        if not isinstance(doc, dict):
            raise DecodeError(f"{what} is not a JSON object", field=what)
        self.doc: dict[str, Any] = doc
        self.what = what

    def get(self, key: str) -> object:
        if key not in self.doc:
            raise DecodeError(f"{self.what} has no {key}", field=key)
        return self.doc[key]

    def int_field(self, key: str) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
            raise DecodeError(f"{key} must be a non-negative integer", field=key)
        return value

    def str_field(self, key: str, limit: int) -> str:
        value = self.get(key)
        if not isinstance(value, str) or len(value) > limit:
            raise DecodeError(f"{key} must be a string of at most {limit} characters", field=key)
        return value

    def optional_str_field(self, key: str, limit: int) -> str | None:
        return None if self.get(key) is None else self.str_field(key, limit)

    def list_field(self, key: str, limit: int) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) > limit:
            raise DecodeError(f"{key} must be a list of at most {limit} items", field=key)
        return value

    def str_map_field(self, key: str, limit: int) -> dict[str, str]:
        value = self.get(key)
        if not isinstance(value, dict) or len(value) > CHECKPOINT_NODES_MAX:
            raise DecodeError(f"{key} must map at most {CHECKPOINT_NODES_MAX} node ids", field=key)
        for node_id, item in value.items():
            if len(node_id) > 128 or not isinstance(item, str) or len(item) > limit:
                raise DecodeError(f"{key}[{node_id[:128]}] is not a valid entry", field=key)
        return dict(value)


# -- chunk digests -------------------------------------------------------------------------


def chunk_digests(
    directory: str, chunks: Sequence[ChunkName], upto: int, known: Iterable[ChunkDigest] = ()
) -> tuple[ChunkDigest, ...]:
    """Digests of the entry bytes of seqnos 1..`upto`, one per chunk: taken from `known`
    where that already covers a whole chunk, computed from the files otherwise."""
    reuse = {digest.first: digest for digest in known}
    out: list[ChunkDigest] = []
    for chunk in chunks:
        if chunk.first > upto:
            break
        old = reuse.get(chunk.first)
        if old is not None and chunk.last is not None and old.last == min(chunk.last, upto):
            out.append(old)
            continue
        with _mapped(os.path.join(directory, chunk.filename)) as data:
            positions, end = chunk_positions(data, chunk.filename, walk=False)
            last = min(chunk.first + len(positions) - 1, upto)
            stop = (
                positions[last - chunk.first + 1]
                if last < chunk.first + len(positions) - 1
                else end
            )
            out.append(ChunkDigest(chunk.first, last, stop, _sha256(data, stop)))
    return tuple(out)


def check_chunk_digests(
    directory: str, chunks: Sequence[ChunkName], digests: Sequence[ChunkDigest]
) -> None:
    """AuditError unless every chunk the checkpoint covered still holds the same bytes."""
    by_first = {chunk.first: chunk for chunk in chunks}
    for digest in digests:
        chunk = by_first.get(digest.first)
        if chunk is None:
            raise AuditError(
                f"the chunk starting at seqno {digest.first} that the checkpoint covered is "
                "missing: the ledger was rewritten or cut before the checkpoint",
                seqno=digest.first,
            )
        path = os.path.join(directory, chunk.filename)
        try:
            with _mapped(path) as data:
                same = len(data) >= digest.end and _sha256(data, digest.end) == digest.sha256
        except OSError as exc:
            raise AuditError(
                f"cannot read chunk {chunk.filename}: {exc.strerror}", seqno=digest.first
            ) from None
        if not same:
            raise AuditError(
                f"chunk {chunk.filename} changed since the checkpoint: its entries "
                f"{digest.first}..{digest.last} are not the bytes audited then "
                "(a full audit, without --since, names the first changed entry)",
                seqno=digest.first,
            )


class _mapped:
    """A read-only map of a file (an empty bytes object for an empty file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.map: mmap.mmap | None = None

    def __enter__(self) -> bytes | mmap.mmap:
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self.map

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.map.close()


def _sha256(data: bytes | mmap.mmap, end: int) -> bytes:
    with memoryview(data) as view:
        return hashlib.sha256(view[CHUNK_HEADER_SIZE:end]).digest()


# -- frontier and consistency proof --------------------------------------------------------


def frontier_ranges(size: int) -> list[tuple[int, int]]:
    """Leaf ranges [lo, hi) of the perfect subtrees a tree of `size` leaves decomposes into,
    largest first (the nodes of its frontier)."""
    ranges = []
    lo = 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            ranges.append((lo, lo + (1 << level)))
            lo += 1 << level
    return ranges


def frontier_root(nodes: Sequence[bytes]) -> bytes:
    """The root of a tree given its frontier nodes (largest first)."""
    assert nodes
    acc = nodes[-1]
    for node in reversed(nodes[:-1]):
        acc = merkle.hash_node(node, acc)
    return acc


class ExtensionFold:
    """Folds the leaves appended to a tree of `start` leaves into what a consistency proof
    from size `start` needs: the perfect subtrees [p, p + lowbit(p)) for p = start,
    p + lowbit(p), … (none of which the old tree has seen), plus the partial one in progress.
    Memory is O(log n) hashes; each leaf costs one more SHA-256 on average."""

    def __init__(self, start: int) -> None:
        assert start >= 1
        self.size = start
        self.blocks: dict[tuple[int, int], bytes] = {}
        self._lo = start
        self._width = start & -start
        self._nodes: list[bytes] = []  # frontier of the block in progress, largest first
        self._count = 0

    def extend(self, leaves: Sequence[bytes]) -> None:
        done = 0
        while done < len(leaves):
            take = min(self._width - self._count, len(leaves) - done)
            self._fold(leaves[done : done + take])
            done += take
            if self._count == self._width:
                self.blocks[(self._lo, self._lo + self._width)] = self._nodes[0]
                self._lo += self._width
                self._width = self._lo & -self._lo
                self._nodes = []
                self._count = 0
        self.size += len(leaves)

    def _fold(self, leaves: Sequence[bytes]) -> None:
        # The block in progress starts at a multiple of its width: fold as a tree from 0.
        nodes = self._nodes
        old = self._count
        current = list(leaves)
        new_low: list[bytes] = []
        level = 0
        sha256 = hashlib.sha256
        while current:
            if (old >> level) & 1:
                current.insert(0, nodes.pop())
            if len(current) & 1:
                new_low.append(current.pop())
            current = [
                sha256(a + b).digest() for a, b in zip(current[0::2], current[1::2], strict=True)
            ]
            level += 1
        nodes.extend(reversed(new_low))
        self._count = old + len(leaves)

    def known(self) -> dict[tuple[int, int], bytes]:
        """Every node this fold can vouch for at its current size, by leaf range."""
        nodes = dict(self.blocks)
        for (lo, hi), node in zip(frontier_ranges(self._count), self._nodes, strict=True):
            nodes[(self._lo + lo, self._lo + hi)] = node
        return nodes


def consistency_proof(
    old_size: int, new_size: int, known: dict[tuple[int, int], bytes]
) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, D[0:new_size]) from nodes known by leaf range (the
    old tree's frontier and an ExtensionFold's nodes): larger ranges are hashed from them."""
    assert 1 <= old_size <= new_size

    def mth(lo: int, hi: int) -> bytes:
        node = known.get((lo, hi))
        if node is not None:
            return node
        if hi - lo < 2:
            raise LedgerError(f"no node for leaves {lo}..{hi - 1} to build the proof from")
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return merkle.hash_node(mth(lo, lo + k), mth(lo + k, hi))

    def subproof(lo: int, hi: int, complete: bool) -> list[bytes]:
        if old_size == hi:
            return [] if complete else [mth(lo, hi)]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if old_size <= lo + k:
            return [*subproof(lo, lo + k, complete), mth(lo + k, hi)]
        return [*subproof(lo + k, hi, False), mth(lo, lo + k)]

    if old_size == new_size:
        return []
    return subproof(0, new_size, True)
