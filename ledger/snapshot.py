"""Snapshot files in CCF's format (FORMATS.md §7).

A snapshot is one ledger entry of type 1 (the IV's top view bit set) whose public domain
holds the snapshot header and the public tables, and whose private domain holds the private
tables encrypted like any entry; once the snapshot's evidence transaction is committed, the
file also carries that transaction's JSON receipt, so a reader can check the snapshot
against the service identity (`ccf.ledger.Snapshot` does exactly that).

The table blobs are opaque here: the KV store produces and consumes them
(`enclave_app.kv.Store.snapshot/restore`), in CCF's snapshot table format.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.ledger.entry import ENTRY_TYPE_SNAPSHOT
from charter.ledger.errors import DecodeError, VerificationError

SNAPSHOT_BYTES_MAX = 1 << 32
VIEW_HISTORY_MAX = 1 << 20
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<BBHI")  # version, flags, size low 16 bits, size high 32 bits
_GCM_TAG = 16
_GCM_IV = 12
_ENTRY_VERSION = 1
_SNAPSHOT_IV_BIT = 0x80000000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot entry (the private tables still encrypted)."""

    seqno: int
    view: int
    hash_at_snapshot: bytes  # the Merkle leaf of the snapshot's seqno
    view_history: tuple[int, ...]  # first seqno of each view, index = view
    public_tables: bytes
    private_ciphertext: bytes
    gcm_tag: bytes
    gcm_iv: bytes
    public_domain: bytes
    entry: bytes  # the raw snapshot entry (what the evidence transaction hashes)
    receipt: dict[str, Any] | None

    def decrypt_private(self, secret: bytes) -> bytes:
        try:
            return AESGCM(secret).decrypt(
                self.gcm_iv, self.private_ciphertext + self.gcm_tag, self.public_domain
            )
        except InvalidTag:
            raise VerificationError("snapshot private tables fail authentication") from None


def _iv(seqno: int, view: int) -> bytes:
    assert 0 <= view < _SNAPSHOT_IV_BIT
    return seqno.to_bytes(8, "little") + (view | _SNAPSHOT_IV_BIT).to_bytes(4, "little")


def encode_snapshot(
    *,
    seqno: int,
    view: int,
    hash_at_snapshot: bytes,
    view_history: list[int],
    public_tables: bytes,
    private_tables: bytes,
    secret: bytes,
) -> bytes:
    """The snapshot entry (without receipt)."""
    assert len(hash_at_snapshot) == 32
    public_domain = b"".join(
        [
            bytes([ENTRY_TYPE_SNAPSHOT]),
            struct.pack("<qq", seqno, 0),
            _U64.pack(32),
            hash_at_snapshot,
            _U64.pack(8 * len(view_history)),
            b"".join(_U64.pack(v) for v in view_history),
            public_tables,
        ]
    )
    iv = _iv(seqno, view)
    sealed = AESGCM(secret).encrypt(iv, private_tables, public_domain)
    ciphertext, tag = sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]
    body = tag + iv + _U64.pack(len(public_domain)) + public_domain + ciphertext
    size = len(body)
    return _HEADER.pack(_ENTRY_VERSION, 0, size & 0xFFFF, size >> 16) + body


def snapshot_digest(entry: bytes) -> str:
    """What the evidence transaction records (`snapshot_evidence.hash`)."""
    return hashlib.sha256(entry).hexdigest()


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse a snapshot file (entry, then an optional JSON receipt); DecodeError on bad bytes."""
    if not _HEADER.size + _GCM_TAG + _GCM_IV + 8 <= len(data) <= SNAPSHOT_BYTES_MAX:
        raise DecodeError(f"snapshot of {len(data)} bytes has an impossible size", offset=0)
    version, _flags, low, high = _HEADER.unpack_from(data)
    size = low | high << 16
    if version != _ENTRY_VERSION or _HEADER.size + size > len(data):
        raise DecodeError("bad snapshot entry header", offset=0, field="size")
    end = _HEADER.size + size
    pos = _HEADER.size
    tag = data[pos : pos + _GCM_TAG]
    iv = data[pos + _GCM_TAG : pos + _GCM_TAG + _GCM_IV]
    pos += _GCM_TAG + _GCM_IV
    (public_size,) = _U64.unpack_from(data, pos)
    pos += 8
    if public_size > end - pos:
        raise DecodeError("public domain overruns the entry", offset=pos - 8, field="public_size")
    public_domain = data[pos : pos + public_size]
    ciphertext = data[pos + public_size : end]
    iv_seqno = int.from_bytes(iv[:8], "little")
    iv_view = int.from_bytes(iv[8:], "little")
    if not iv_view & _SNAPSHOT_IV_BIT:
        raise DecodeError("IV is not a snapshot IV", offset=_HEADER.size + _GCM_TAG, field="iv")
    p = 0

    def take(n: int, field: str) -> bytes:
        nonlocal p
        if n > len(public_domain) - p:
            raise DecodeError("truncated snapshot header", offset=pos + p, field=field)
        chunk = public_domain[p : p + n]
        p += n
        return chunk

    if take(1, "entry_type")[0] != ENTRY_TYPE_SNAPSHOT:
        raise DecodeError("not a snapshot entry", offset=pos, field="entry_type")
    seqno, _ = struct.unpack("<qq", take(16, "seqno"))
    if seqno != iv_seqno or seqno < 1:
        raise DecodeError("snapshot seqno does not match its IV", offset=pos + 1, field="seqno")
    (hash_len,) = _U64.unpack(take(8, "hash_len"))
    if hash_len != 32:
        raise DecodeError("snapshot hash is not 32 bytes", offset=pos + p - 8, field="hash")
    hash_at_snapshot = take(32, "hash")
    (history_bytes,) = _U64.unpack(take(8, "view_history"))
    if history_bytes % 8 or history_bytes > 8 * VIEW_HISTORY_MAX:
        raise DecodeError("bad view history size", offset=pos + p - 8, field="view_history")
    raw_history = take(history_bytes, "view_history")
    view_history = tuple(v for (v,) in _U64.iter_unpack(raw_history))
    receipt = None
    if end < len(data):
        try:
            receipt = json.loads(data[end:])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DecodeError("snapshot receipt is not JSON", offset=end, field="receipt") from None
        if not isinstance(receipt, dict):
            raise DecodeError("snapshot receipt is not an object", offset=end, field="receipt")
    return Snapshot(
        seqno=seqno,
        view=iv_view & ~_SNAPSHOT_IV_BIT,
        hash_at_snapshot=hash_at_snapshot,
        view_history=view_history,
        public_tables=public_domain[p:],
        private_ciphertext=ciphertext,
        gcm_tag=tag,
        gcm_iv=iv,
        public_domain=public_domain,
        entry=data[:end],
        receipt=receipt,
    )
