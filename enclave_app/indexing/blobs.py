"""Index buckets as host-held blobs (CCF's LFS): their plaintext format and their sealing.

A bucket is what one strategy learnt from the committed transactions of one seqno range:
for `SeqnosByKey`, each key written in the range with the seqnos that wrote it. Once the
enclave keeps more completed buckets than `indexing.buckets_in_memory`, the oldest are
sealed here and handed to the host (`IndexBlobStore`); a query that needs one asks for it
back (`IndexBlobFetch`).

Sealing: AES-256-GCM under a key drawn when the node first offloads, held only by the
enclave and never sealed to disk (so a restarted node cannot read its previous blobs: it
rebuilds its indexes while it replays its ledger, and the host empties the folder). The
additional data binds the strategy, the bucket and the strategy's epoch (bumped whenever
its index restarts, e.g. from a snapshot): a blob the host altered, took from another bucket
or kept from an earlier epoch fails authentication and is refused with `IndexBlobRejected`.

Plaintext (all integers little-endian):
    b"CIX1" | u64 bucket_first_seqno | u32 seqnos_per_bucket | u32 key_count
    then key_count times: u32 key_len | key | u32 n | n x u32 (seqno - bucket_first_seqno)
Keys in ascending byte order, seqnos ascending and inside the bucket. The parser checks
every length against the bytes left, so a truncated or inflated blob is an error, never a
wrong answer (it has passed GCM, but the format is checked as if it had not).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.enclave_app.indexing.errors import IndexBlobRejected
from charter.enclave_app.interface.limits import INDEX_BLOB_BYTES_MAX

MAGIC = b"CIX1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# The largest key an index keeps (a KV key may be larger; CCF's maps rarely are).
INDEX_KEY_BYTES_MAX = 64 * 1024
# Plaintext must fit a blob once sealed.
PLAINTEXT_BYTES_MAX = INDEX_BLOB_BYTES_MAX - NONCE_BYTES - TAG_BYTES

_HEADER = struct.Struct("<4sQII")
_U32 = struct.Struct("<I")
_AAD_PREFIX = b"charter-index-blob-v1\x00"

Bucket = Mapping[bytes, Sequence[int]]


def encode_bucket(first_seqno: int, seqnos_per_bucket: int, bucket: Bucket) -> bytes:
    """The plaintext of one bucket (see the module docstring)."""
    parts = [_HEADER.pack(MAGIC, first_seqno, seqnos_per_bucket, len(bucket))]
    for key in sorted(bucket):
        seqnos = bucket[key]
        parts.append(_U32.pack(len(key)))
        parts.append(key)
        parts.append(_U32.pack(len(seqnos)))
        parts.append(struct.pack(f"<{len(seqnos)}I", *(s - first_seqno for s in seqnos)))
    return b"".join(parts)


def decode_bucket(data: bytes, first_seqno: int, seqnos_per_bucket: int) -> dict[bytes, list[int]]:
    """Parse a bucket's plaintext, expected to start at `first_seqno`; `IndexBlobRejected`
    (code `IndexBlobMalformed`) on anything else."""

    def fail(why: str) -> IndexBlobRejected:
        return IndexBlobRejected(f"index bucket at seqno {first_seqno}: {why}", reason="Malformed")

    if len(data) > PLAINTEXT_BYTES_MAX:
        raise fail(f"over {PLAINTEXT_BYTES_MAX} bytes")
    if len(data) < _HEADER.size:
        raise fail("shorter than its header")
    magic, first, per_bucket, count = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or first != first_seqno or per_bucket != seqnos_per_bucket:
        raise fail("header names another bucket or format")
    offset = _HEADER.size
    end = len(data)
    out: dict[bytes, list[int]] = {}
    previous_key: bytes | None = None
    for _ in range(count):
        if end - offset < _U32.size:
            raise fail("key length past the end")
        (key_len,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        if key_len > INDEX_KEY_BYTES_MAX or end - offset < key_len + _U32.size:
            raise fail("key past the end or too long")
        key = data[offset : offset + key_len]
        offset += key_len
        if previous_key is not None and key <= previous_key:
            raise fail("keys not in ascending order")
        previous_key = key
        (n,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        if n == 0 or end - offset < 4 * n:
            raise fail("seqno list empty or past the end")
        deltas = struct.unpack_from(f"<{n}I", data, offset)
        offset += 4 * n
        if deltas[-1] >= seqnos_per_bucket or any(a >= b for a, b in itertools.pairwise(deltas)):
            raise fail("seqnos outside the bucket or not ascending")
        out[key] = [first_seqno + d for d in deltas]
    if offset != end:
        raise fail("trailing bytes")
    return out


class BlobSealer:
    """Seals and opens the blobs of one node incarnation.

    Each strategy has an epoch, bumped when its index restarts (`forget`). The caller seals a
    bucket at most once per epoch (`SeqnosByKeyIndex` keeps one bit per bucket for that), so
    (epoch, bucket) is a unique GCM nonce and no per-bucket state is kept here: the enclave's
    memory does not grow with the number of blobs.
    """

    def __init__(self, key: bytes) -> None:
        assert len(key) == KEY_BYTES
        self._aead = AESGCM(key)
        self._epochs: dict[str, int] = {}

    def forget(self, strategy: str) -> None:
        """The strategy was reset: none of its stored blobs may be used again."""
        self._epochs[strategy] = self._epochs.get(strategy, 0) + 1

    def seal(self, strategy: str, bucket: int, plaintext: bytes) -> bytes:
        assert len(plaintext) <= PLAINTEXT_BYTES_MAX
        epoch = self._epochs.get(strategy, 0)
        nonce = _nonce(epoch, bucket)
        return nonce + self._aead.encrypt(nonce, plaintext, _aad(strategy, bucket, epoch))

    def open(self, strategy: str, bucket: int, blob: bytes) -> bytes:
        """The plaintext of the blob stored for this bucket in the strategy's current epoch;
        `IndexBlobRejected` for anything else (altered, another bucket's, an earlier
        epoch's)."""
        epoch = self._epochs.get(strategy, 0)
        where = f"index blob {strategy}/{bucket}"
        if len(blob) > INDEX_BLOB_BYTES_MAX or len(blob) < NONCE_BYTES + TAG_BYTES:
            raise IndexBlobRejected(f"{where}: {len(blob)} bytes is no blob", reason="Malformed")
        nonce = _nonce(epoch, bucket)
        try:
            return self._aead.decrypt(nonce, blob[NONCE_BYTES:], _aad(strategy, bucket, epoch))
        except InvalidTag:
            raise IndexBlobRejected(
                f"{where}: failed authentication (altered, another bucket's, or stored by an "
                f"earlier index than the current one, epoch {epoch})",
                reason="Tampered",
            ) from None


def _nonce(epoch: int, bucket: int) -> bytes:
    return struct.pack(">IQ", epoch, bucket)


def _aad(strategy: str, bucket: int, epoch: int) -> bytes:
    return _AAD_PREFIX + strategy.encode() + b"\x00" + struct.pack("<QQ", bucket, epoch)
