"""Snapshot files in CCF's format (FORMATS.md §7).

A snapshot is one ledger entry of type 1 (the IV's top view bit set) whose public domain
holds the snapshot header and the public tables, and whose private domain holds the private
tables encrypted like any entry; once the snapshot's evidence transaction is committed, the
file also carries that transaction's JSON receipt, so a reader can check the snapshot
against the service identity (`ccf.ledger.Snapshot` does exactly that).

The evidence transaction's claims digest is the SHA-256 of the snapshot entry (as in CCF,
whose `verify_snapshot` compares the two): so the receipt, signed by a node the service
endorsed, vouches for every byte of the entry. `verify_snapshot` is the one check that
nodes (before installing or serving a snapshot) and auditors share.

The table blobs are opaque here: the KV store produces and consumes them
(`enclave_app.kv.Store.snapshot/restore`), in CCF's snapshot table format.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.ledger import receipt as receipts
from charter.ledger.certs import cert_pem, load_cert
from charter.ledger.entry import ENTRY_TYPE_SNAPSHOT
from charter.ledger.errors import DecodeError, LedgerError, VerificationError

SNAPSHOT_BYTES_MAX = 1 << 32
VIEW_HISTORY_MAX = 1 << 20
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<BBHI")  # version, flags, size low 16 bits, size high 32 bits
_GCM_TAG = 16
_GCM_IV = 12
_ENTRY_VERSION = 1
_SNAPSHOT_IV_BIT = 0x80000000
SNAPSHOT_RECEIPT_BYTES_MAX = receipts.MAX_JSON_RECEIPT_BYTES
_FILE_NAME = re.compile(r"snapshot_([0-9]{1,19})_([0-9]{1,19})(\.committed)?")
_COMMIT_EVIDENCE_TXID = re.compile(r"ce:([0-9]{1,19})\.([0-9]{1,19}):[0-9a-f]{64}")


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot entry (the private tables still encrypted).

    The large parts (`entry`, `public_domain`, `public_tables`, `private_ciphertext`) are
    slices of the file bytes `data`, made on first use: checking a snapshot
    (`verify_snapshot`) hashes the entry in place and copies none of them."""

    seqno: int
    view: int
    hash_at_snapshot: bytes  # the Merkle leaf of the snapshot's seqno
    view_history: tuple[int, ...]  # first seqno of each view, index = view
    gcm_tag: bytes
    gcm_iv: bytes
    receipt: dict[str, Any] | None
    data: bytes = field(repr=False)  # the file this was decoded from
    entry_size: int  # the entry is data[:entry_size]; its receipt follows
    public_at: int  # the public domain is data[public_at:private_at]
    tables_at: int  # the public tables are data[tables_at:private_at]
    private_at: int  # the private ciphertext is data[private_at:entry_size]

    @cached_property
    def entry(self) -> bytes:
        """The raw snapshot entry (what the evidence transaction hashes)."""
        return self.data[: self.entry_size]

    @cached_property
    def public_domain(self) -> bytes:
        return self.data[self.public_at : self.private_at]

    @cached_property
    def public_tables(self) -> bytes:
        return self.data[self.tables_at : self.private_at]

    @cached_property
    def private_ciphertext(self) -> bytes:
        return self.data[self.private_at : self.entry_size]

    def entry_digest(self) -> bytes:
        """SHA-256 of the entry, hashed where it lies in `data`."""
        with memoryview(self.data) as view, view[: self.entry_size] as entry:
            return hashlib.sha256(entry).digest()

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
    public_at, private_at = pos, pos + public_size
    iv_seqno = int.from_bytes(iv[:8], "little")
    iv_view = int.from_bytes(iv[8:], "little")
    if not iv_view & _SNAPSHOT_IV_BIT:
        raise DecodeError("IV is not a snapshot IV", offset=_HEADER.size + _GCM_TAG, field="iv")
    p = 0

    def take(n: int, field: str) -> bytes:
        nonlocal p
        if n > public_size - p:
            raise DecodeError("truncated snapshot header", offset=pos + p, field=field)
        chunk = data[public_at + p : public_at + p + n]
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
        if len(data) - end > SNAPSHOT_RECEIPT_BYTES_MAX:
            raise DecodeError(
                f"snapshot receipt exceeds {SNAPSHOT_RECEIPT_BYTES_MAX} bytes",
                offset=end,
                field="receipt",
            )
        try:
            receipt = json.loads(data[end:])
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
            raise DecodeError("snapshot receipt is not JSON", offset=end, field="receipt") from None
        if not isinstance(receipt, dict):
            raise DecodeError("snapshot receipt is not an object", offset=end, field="receipt")
    return Snapshot(
        seqno=seqno,
        view=iv_view & ~_SNAPSHOT_IV_BIT,
        hash_at_snapshot=hash_at_snapshot,
        view_history=view_history,
        gcm_tag=tag,
        gcm_iv=iv,
        receipt=receipt,
        data=data,
        entry_size=end,
        public_at=public_at,
        tables_at=public_at + p,
        private_at=private_at,
    )


def snapshot_file_name(seqno: int, evidence_seqno: int, committed: bool) -> str:
    return f"snapshot_{seqno}_{evidence_seqno}" + (".committed" if committed else "")


def parse_snapshot_file_name(name: str) -> tuple[int, int, bool] | None:
    """(seqno, evidence_seqno, committed) for a snapshot file name, else None."""
    m = _FILE_NAME.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


def encode_snapshot_receipt(receipt: dict[str, Any]) -> bytes:
    """The receipt as a snapshot file carries it: compact JSON with sorted keys, which is
    also what CCF's nlohmann encoder writes. `verify_snapshot` accepts only this form."""
    return json.dumps(receipt, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class VerifiedSnapshot:
    """A snapshot whose receipt checked out against the service certificate."""

    snapshot: Snapshot
    evidence_seqno: int  # the evidence transaction the receipt proves
    evidence_view: int
    root: bytes  # the Merkle root the receipt's node signed


def verify_snapshot(
    data: bytes,
    service_cert_pem: x509.Certificate | str | bytes,
    *,
    name: str = "snapshot",
) -> VerifiedSnapshot:
    """Check a committed snapshot file against the service certificate, before anyone uses
    or serves it. Raises DecodeError (bytes that do not parse) or VerificationError (bytes
    nobody signed), each message starting with `name` (the file name, where there is one).

    What is checked: the entry decodes; a receipt follows it; the receipt's claims digest is
    the SHA-256 of the entry (so any change to the entry is refused); its root signature and
    the node cert's endorsement by the service cert verify; its node id is its cert's; the
    evidence transaction comes after the snapshot (and is the one the file name says); and the
    receipt is byte for byte its canonical encoding (`encode_snapshot_receipt`, lowercase
    hex, canonical base64 and PEM), so that no byte of the file is left that the signature
    does not pin down.
    """
    try:
        return _verify(data, service_cert_pem, name)
    except LedgerError as exc:
        named = type(exc)(f"snapshot {name}: {exc}")
        named.offset, named.field = exc.offset, exc.field
        raise named from None


def _verify(
    data: bytes, service_cert_pem: x509.Certificate | str | bytes, name: str
) -> VerifiedSnapshot:
    snapshot = decode_snapshot(data)
    receipt_bytes = data[snapshot.entry_size :]  # decode_snapshot bounded its size
    if not receipt_bytes:
        raise VerificationError("has no receipt: its evidence is not committed", field="receipt")
    parsed = receipts.parse_json_receipt(receipt_bytes)
    components = parsed.leaf_components
    if parsed.is_signature_transaction or components is None:
        raise VerificationError("receipt is not a transaction receipt", field="receipt")
    if components.claims_digest != snapshot.entry_digest():
        raise VerificationError(
            "the snapshot entry's SHA-256 is not the claims digest its evidence receipt "
            "commits to (the entry was changed, or the receipt is another transaction's)",
            field="claims_digest",
        )
    m = _COMMIT_EVIDENCE_TXID.fullmatch(components.commit_evidence)
    if m is None:
        raise DecodeError("receipt commit evidence is not ce:V.S:<hex>", field="commit_evidence")
    evidence_view, evidence_seqno = int(m.group(1)), int(m.group(2))
    if evidence_seqno <= snapshot.seqno:
        raise VerificationError(
            f"evidence seqno {evidence_seqno} does not follow snapshot seqno {snapshot.seqno}",
            field="commit_evidence",
        )
    named = parse_snapshot_file_name(name)
    if named is not None and named[:2] != (snapshot.seqno, evidence_seqno):
        raise VerificationError(
            f"holds snapshot {snapshot.seqno} with evidence {evidence_seqno}, not what its "
            "name says",
            field="name",
        )
    root = receipts.verify_json_receipt(receipt_bytes, service_cert_pem)
    canonical = encode_snapshot_receipt(_canonical_receipt(parsed))
    if canonical != receipt_bytes:
        at = next(
            (i for i, (a, b) in enumerate(zip(canonical, receipt_bytes, strict=False)) if a != b),
            min(len(canonical), len(receipt_bytes)),
        )
        raise VerificationError(
            "receipt is not in its canonical encoding",
            offset=snapshot.entry_size + at,
            field="receipt",
        )
    return VerifiedSnapshot(snapshot, evidence_seqno, evidence_view, root)


def _canonical_receipt(parsed: receipts.JsonReceipt) -> dict[str, Any]:
    components = parsed.leaf_components
    assert components is not None and components.claims_digest is not None
    return receipts.build_json_receipt(
        node_cert_pem=cert_pem(load_cert(parsed.cert_pem)),
        node_id=parsed.node_id.lower(),
        signature=parsed.signature,
        proof=parsed.proof,
        write_set_digest=components.write_set_digest,
        commit_evidence=components.commit_evidence,
        claims_digest=components.claims_digest,
        service_endorsements=[cert_pem(load_cert(e)) for e in parsed.service_endorsements],
    )
