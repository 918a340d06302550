"""One ledger entry (= one transaction) in CCF's current format (FORMATS §1.3-1.6, §2.1-2.2).

Layout of an entry::

    u8 version (1) | u8 flags | u48 size | 16 B GCM tag | 12 B IV (u64 seqno | u32 view)
    | u64 public_size | public domain | AES-256-GCM ciphertext of the private domain

The encoder always writes entry type 4 (write set with commit evidence and claims) and always
encrypts the private domain, even when it is empty, so that the GCM tag authenticates the
public domain (which is the AAD). The decoder also reads the deprecated types 0/2/3 and
snapshots (type 1) so that real CCF ledgers can be read.

Every size read from outside bytes is checked against the bytes that remain and against an
explicit maximum before anything is allocated; every failure is a `DecodeError` naming the
offset and field.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.ledger.errors import DecodeError, VerificationError

logger = logging.getLogger(__name__)

WriteSet = dict[str, dict[bytes, bytes | None]]

ENTRY_VERSION = 1
ENTRY_TYPE_WRITE_SET = 0
ENTRY_TYPE_SNAPSHOT = 1
ENTRY_TYPE_WRITE_SET_WITH_CLAIMS = 2
ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE = 3
ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS = 4
DEPRECATED_ENTRY_TYPES = frozenset(
    {
        ENTRY_TYPE_WRITE_SET,
        ENTRY_TYPE_WRITE_SET_WITH_CLAIMS,
        ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE,
    }
)
_TYPES_WITH_CLAIMS = frozenset(
    {ENTRY_TYPE_WRITE_SET_WITH_CLAIMS, ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS}
)
_TYPES_WITH_EVIDENCE = frozenset(
    {
        ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE,
        ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS,
    }
)

FLAG_FORCE_CHUNK_AFTER = 0x01
FLAG_FORCE_CHUNK_BEFORE = 0x02

ZERO_DIGEST = bytes(32)
DIGEST_SIZE = 32
SECRET_SIZE = 32

HEADER_SIZE = 8
GCM_TAG_SIZE = 16
GCM_IV_SIZE = 12
PUBLIC_SIZE_FIELD_SIZE = 8
# Bytes counted by `size` before the public domain: GCM tag, IV, u64 public_size.
BODY_PREFIX_SIZE = GCM_TAG_SIZE + GCM_IV_SIZE + PUBLIC_SIZE_FIELD_SIZE
PUBLIC_DOMAIN_OFFSET = HEADER_SIZE + BODY_PREFIX_SIZE  # 44

# Explicit limits on outside bytes. CCF's default chunk is 5 MB and a single transaction is
# far smaller; 64 MiB leaves room for large governance writes while bounding allocation.
ENTRY_SIZE_BYTES_MAX = 64 * 1024 * 1024
TABLE_NAME_BYTES_MAX = 4096
VIEW_MAX = 2**31 - 1
SEQNO_MAX = 2**63 - 1
_SIZE_MAX_U48 = 2**48 - 1
_IV_SNAPSHOT_BIT = 0x80000000

# A compiled header struct: version, flags, size low 16 bits, size high 32 bits.
_HEADER = struct.Struct("<BBHI")
_IV = struct.Struct("<QI")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U64_PAIR = struct.Struct("<QQ")
_TYPE_SEQNO = struct.Struct("<Bq")
_TABLE_PREFIX = struct.Struct("<QQQ")  # read_version, read_count, write_count

PUBLIC_TABLE_PREFIX = "public:"


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded entry. `public` holds the public tables; the private domain stays encrypted.

    `seqno` and `view` come from the GCM IV (as `ccf.ledger` reports a TxID); `public_seqno`
    is the seqno written in the public domain (an auditor checks the two agree).
    """

    seqno: int
    view: int
    flags: int
    entry_type: int
    claims_digest: bytes | None
    commit_evidence_digest: bytes | None
    public: WriteSet
    private_ciphertext: bytes
    gcm_tag: bytes
    gcm_iv: bytes
    raw: bytes
    public_seqno: int = 0
    public_size: int = 0
    is_snapshot_iv: bool = False
    # Snapshot entries only (type 1): the Merkle leaf at the snapshot seqno, view history.
    snapshot_hash: bytes | None = None
    view_history: tuple[int, ...] = ()

    @property
    def txid(self) -> str:
        return f"{self.view}.{self.seqno}"

    @property
    def is_deprecated(self) -> bool:
        return self.entry_type in DEPRECATED_ENTRY_TYPES

    @property
    def public_domain(self) -> bytes:
        start = PUBLIC_DOMAIN_OFFSET
        return self.raw[start : start + self.public_size]


# ------------------------------------------------------------------------------------------
# Digests and commit evidence


_HMAC_BLOCK_BYTES = 64  # SHA-256's block


@functools.lru_cache(maxsize=16)
def _commit_mac(secret: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 keyed with the commit secret, as its two SHA-256 states after the padded
    key (RFC 2104: H((K ^ opad) ‖ H((K ^ ipad) ‖ m))), ready to be copied per transaction.

    The commit secret is HMAC(secret, "Commit S"): the label is the 8 bytes "Commit S", as
    CCF froze a historical truncation of its label. Both are set up once per ledger secret
    (as the AES key of `_aead` is): every write needs the evidence, and copying two hash
    states costs about half of copying an `hmac.HMAC` (a Python object around them).
    """
    key = hmac.new(secret, b"Commit S", hashlib.sha256).digest()  # 32 bytes < one block
    key = key.ljust(_HMAC_BLOCK_BYTES, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def commit_evidence(secret: bytes, view: int, seqno: int) -> str:
    """CCF commit evidence "ce:V.S:<hex nonce>" for a transaction (FORMATS §2.1)."""
    assert len(secret) == SECRET_SIZE, "ledger secret must be 32 bytes"
    assert 0 <= view <= VIEW_MAX and 0 <= seqno <= SEQNO_MAX
    txid = f"{view}.{seqno}"
    inner_state, outer_state = _commit_mac(bytes(secret))
    inner = inner_state.copy()  # never update the cached states themselves
    inner.update(txid.encode())
    outer = outer_state.copy()
    outer.update(inner.digest())
    return f"ce:{txid}:{outer.hexdigest()}"


def commit_evidence_digest(evidence: str) -> bytes:
    return hashlib.sha256(evidence.encode()).digest()


def write_set_digest(raw: bytes | bytearray | memoryview) -> bytes:
    """H(entire entry bytes): header and everything counted by its size (FORMATS §1.6)."""
    return hashlib.sha256(raw).digest()


def leaf_hash(
    write_set_digest: bytes, commit_evidence_digest: bytes, claims_digest: bytes = ZERO_DIGEST
) -> bytes:
    """Merkle leaf of a type-4 transaction: H(wsd ‖ ced ‖ claims) (FORMATS §2.2)."""
    assert len(write_set_digest) == DIGEST_SIZE
    assert len(commit_evidence_digest) == DIGEST_SIZE
    assert len(claims_digest) == DIGEST_SIZE
    return hashlib.sha256(write_set_digest + commit_evidence_digest + claims_digest).digest()


def entry_leaf(raw: bytes | bytearray | memoryview) -> bytes:
    """Merkle leaf of one whole raw entry, reading only the header and digests it needs.

    Mirrors `ccf.ledger.Transaction.get_tx_digest`: type 4 → H(wsd‖ced‖claims), type 3 →
    H(wsd‖ced), types 0 and 1 → wsd. Type 2 has claims but no evidence, which CCF's own tool
    refuses, so it is a DecodeError here.
    """
    n = len(raw)
    if n < PUBLIC_DOMAIN_OFFSET + 9:
        raise DecodeError("entry too short for a public domain", offset=0, field="size")
    _version, _flags, lo, hi = _HEADER.unpack_from(raw, 0)
    if lo | (hi << 16) != n - HEADER_SIZE:
        raise DecodeError("entry size does not match its bytes", offset=2, field="size")
    (public_size,) = _U64.unpack_from(raw, HEADER_SIZE + GCM_TAG_SIZE + GCM_IV_SIZE)
    if public_size > n - PUBLIC_DOMAIN_OFFSET:
        raise DecodeError("public_size exceeds entry", offset=36, field="public_size")
    entry_type = raw[PUBLIC_DOMAIN_OFFSET]
    wsd = hashlib.sha256(raw).digest()
    base = PUBLIC_DOMAIN_OFFSET + 9
    if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS:
        if public_size < 9 + 2 * DIGEST_SIZE:
            raise DecodeError("public domain too short for digests", offset=base, field="digests")
        claims = raw[base : base + DIGEST_SIZE]
        evidence = raw[base + DIGEST_SIZE : base + 2 * DIGEST_SIZE]
        return hashlib.sha256(wsd + bytes(evidence) + bytes(claims)).digest()
    if entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE:
        if public_size < 9 + DIGEST_SIZE:
            raise DecodeError("public domain too short for digest", offset=base, field="digests")
        return hashlib.sha256(wsd + bytes(raw[base : base + DIGEST_SIZE])).digest()
    if entry_type in (ENTRY_TYPE_WRITE_SET, ENTRY_TYPE_SNAPSHOT):
        return wsd
    if entry_type == ENTRY_TYPE_WRITE_SET_WITH_CLAIMS:
        raise DecodeError("entry type 2 has no commit evidence", offset=44, field="entry_type")
    raise DecodeError(f"unknown entry type {entry_type}", offset=44, field="entry_type")


# ------------------------------------------------------------------------------------------
# Encoding


def _encode_tables(tables: WriteSet, *, public: bool) -> bytes:
    """Serialise tables in name order; tables with no writes and no removals are omitted."""
    if not tables:
        return b""  # most writes have one domain empty
    out: list[bytes] = []
    for name in sorted(tables) if len(tables) > 1 else tables:
        if name.startswith(PUBLIC_TABLE_PREFIX) != public:
            domain = "public" if public else "private"
            raise ValueError(f"table {name!r} does not belong in the {domain} domain")
        records = tables[name]
        if not records:
            continue
        name_bytes = name.encode()
        assert len(name_bytes) <= TABLE_NAME_BYTES_MAX, "table name too long"
        writes: list[bytes] = []
        removes: list[bytes] = []
        write_count = remove_count = 0
        for key, value in records.items():
            if value is None:
                removes += (_U64.pack(len(key)), key)
                remove_count += 1
            else:
                writes += (_U64.pack(len(key)), key, _U64.pack(len(value)), value)
                write_count += 1
        out.append(_U64.pack(len(name_bytes)))
        out.append(name_bytes)
        # read_version 0 (NoVersion) and read_count 0: reads are not serialised to the ledger.
        out.append(_TABLE_PREFIX.pack(0, 0, write_count))
        out.extend(writes)
        out.append(_U64.pack(remove_count))
        out.extend(removes)
    return b"".join(out)


# max_conflict_version: a placeholder CCF always writes as 0 (an i64).
_MAX_CONFLICT_VERSION = _I64.pack(0)


@functools.lru_cache(maxsize=16)
def _aead(secret: bytes) -> AESGCM:
    return AESGCM(secret)


def encode_entry(
    *,
    seqno: int,
    view: int,
    public: WriteSet,
    private: WriteSet,
    secret: bytes,
    commit_evidence_digest: bytes,
    claims_digest: bytes = ZERO_DIGEST,
    flags: int = 0,
) -> bytes:
    """Encode one type-4 entry; the private domain is AES-256-GCM encrypted (FORMATS §1.5)."""
    assert 1 <= seqno <= SEQNO_MAX, "seqnos start at 1"
    assert 0 <= view <= VIEW_MAX, "view must fit in 31 bits"
    assert len(secret) == SECRET_SIZE, "ledger secret must be 32 bytes"
    assert len(commit_evidence_digest) == DIGEST_SIZE and len(claims_digest) == DIGEST_SIZE
    assert flags & ~(FLAG_FORCE_CHUNK_AFTER | FLAG_FORCE_CHUNK_BEFORE) == 0, "unknown flags"
    public_domain = b"".join(
        (
            _TYPE_SEQNO.pack(ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS, seqno),
            claims_digest,
            commit_evidence_digest,
            _MAX_CONFLICT_VERSION,
            _encode_tables(public, public=True),
        )
    )
    iv = _IV.pack(seqno, view)
    plaintext = _encode_tables(private, public=False)
    # Always encrypt, even an empty plaintext, so the tag authenticates the public domain.
    sealed = memoryview(_aead(bytes(secret)).encrypt(iv, plaintext, public_domain))
    ciphertext, tag = sealed[: len(plaintext)], sealed[len(plaintext) :]  # no copies
    size = BODY_PREFIX_SIZE + len(public_domain) + len(ciphertext)
    if size > ENTRY_SIZE_BYTES_MAX:
        raise ValueError(f"entry of {size} bytes exceeds {ENTRY_SIZE_BYTES_MAX}")
    header = _HEADER.pack(ENTRY_VERSION, flags, size & 0xFFFF, size >> 16)
    return b"".join((header, tag, iv, _U64.pack(len(public_domain)), public_domain, ciphertext))


# ------------------------------------------------------------------------------------------
# Decoding


def read_header(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """(version, flags, size) of the entry header at `offset`; size = bytes after the header."""
    if len(data) - offset < HEADER_SIZE:
        raise DecodeError("truncated entry header", offset=offset, field="header")
    version, flags, lo, hi = _HEADER.unpack_from(data, offset)
    return version, flags, lo | (hi << 16)


def decode_tables(
    buf: bytes, start: int, end: int, *, base: int, snapshot: bool = False
) -> WriteSet:
    """Parse table records in buf[start:end]; `base` maps buffer offsets to entry offsets."""
    tables: WriteSet = {}
    pos = start
    u64 = _U64.unpack_from
    while pos < end:
        if end - pos < 8:
            raise DecodeError("truncated table name length", offset=base + pos, field="name_len")
        (name_len,) = u64(buf, pos)
        pos += 8
        if name_len > TABLE_NAME_BYTES_MAX or name_len > end - pos:
            raise DecodeError(
                f"bad table name length {name_len}", offset=base + pos - 8, field="name_len"
            )
        try:
            name = buf[pos : pos + name_len].decode()
        except UnicodeDecodeError:
            raise DecodeError("table name is not UTF-8", offset=base + pos, field="name") from None
        pos += name_len
        if name in tables:
            raise DecodeError(f"duplicate table {name!r}", offset=base + pos, field="name")
        records: dict[bytes, bytes | None] = {}
        tables[name] = records
        if snapshot:
            pos = _decode_snapshot_table(buf, pos, end, records, base=base)
            continue
        if end - pos < 24:
            raise DecodeError("truncated table header", offset=base + pos, field="table")
        _read_version, read_count, write_count = _TABLE_PREFIX.unpack_from(buf, pos)
        if read_count != 0:
            raise DecodeError("read_count must be 0", offset=base + pos + 8, field="read_count")
        pos += 24
        # Each write is at least two u64 lengths: bound the count by the bytes that remain.
        if write_count > (end - pos) // 16:
            raise DecodeError(
                f"bad write count {write_count}", offset=base + pos - 8, field="write_count"
            )
        for _ in range(write_count):
            if end - pos < 8:
                raise DecodeError("truncated key length", offset=base + pos, field="key_len")
            (klen,) = u64(buf, pos)
            pos += 8
            if klen > end - pos - 8:
                raise DecodeError(f"bad key length {klen}", offset=base + pos - 8, field="key_len")
            key = buf[pos : pos + klen]
            pos += klen
            (vlen,) = u64(buf, pos)
            pos += 8
            if vlen > end - pos:
                raise DecodeError(
                    f"bad value length {vlen}", offset=base + pos - 8, field="value_len"
                )
            records[key] = buf[pos : pos + vlen]
            pos += vlen
        if end - pos < 8:
            raise DecodeError("truncated remove count", offset=base + pos, field="remove_count")
        (remove_count,) = u64(buf, pos)
        pos += 8
        if remove_count > (end - pos) // 8:
            raise DecodeError(
                f"bad remove count {remove_count}", offset=base + pos - 8, field="remove_count"
            )
        for _ in range(remove_count):
            if end - pos < 8:
                raise DecodeError("truncated key length", offset=base + pos, field="key_len")
            (klen,) = u64(buf, pos)
            pos += 8
            if klen > end - pos:
                raise DecodeError(f"bad key length {klen}", offset=base + pos - 8, field="key_len")
            records[buf[pos : pos + klen]] = None
            pos += klen
    assert pos == end
    return tables


def _decode_snapshot_table(
    buf: bytes, pos: int, end: int, records: dict[bytes, bytes | None], *, base: int
) -> int:
    """Snapshot table body: u64 map_version | u64 body_len | {key, pad | vlen, version, value, pad}*."""
    if end - pos < 16:
        raise DecodeError("truncated snapshot table header", offset=base + pos, field="table")
    _map_version, body_len = _U64_PAIR.unpack_from(buf, pos)
    pos += 16
    if body_len > end - pos:
        raise DecodeError(
            f"bad snapshot table size {body_len}", offset=base + pos - 8, field="body_len"
        )
    body_end = pos + body_len
    while pos < body_end:
        if body_end - pos < 8:
            raise DecodeError("truncated snapshot key", offset=base + pos, field="key_len")
        (klen,) = _U64.unpack_from(buf, pos)
        pos += 8
        padded = klen + (-klen % 8)
        if klen > body_end - pos or padded > body_end - pos:
            raise DecodeError(
                f"bad snapshot key length {klen}", offset=base + pos - 8, field="key_len"
            )
        key = buf[pos : pos + klen]
        pos += padded
        if body_end - pos < 8:
            raise DecodeError("truncated snapshot value", offset=base + pos, field="value_len")
        (vlen,) = _U64.unpack_from(buf, pos)
        pos += 8
        padded = vlen + (-vlen % 8)
        if vlen < 8 or vlen > body_end - pos or padded > body_end - pos:
            raise DecodeError(
                f"bad snapshot value length {vlen}", offset=base + pos - 8, field="value_len"
            )
        # The first 8 bytes are the value's version, which a ledger reader does not need.
        records[key] = buf[pos + 8 : pos + vlen]
        pos += padded
    return pos


def decode_entry(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Entry, int]:
    """Decode the entry at `offset`; returns it and the offset just past it."""
    remaining = len(data) - offset
    if offset < 0 or remaining < HEADER_SIZE:
        raise DecodeError("truncated entry header", offset=offset, field="header")
    version, flags, lo, hi = _HEADER.unpack_from(data, offset)
    size = lo | (hi << 16)
    if version != ENTRY_VERSION:
        raise DecodeError(f"unsupported entry version {version}", offset=offset, field="version")
    if size > ENTRY_SIZE_BYTES_MAX:
        raise DecodeError(f"entry size {size} exceeds limit", offset=offset + 2, field="size")
    if size > remaining - HEADER_SIZE:
        raise DecodeError(
            f"entry size {size} exceeds remaining bytes", offset=offset + 2, field="size"
        )
    if size < BODY_PREFIX_SIZE + 9:
        raise DecodeError(f"entry size {size} too small", offset=offset + 2, field="size")
    end = offset + HEADER_SIZE + size
    raw = bytes(data[offset:end])
    gcm_tag = raw[HEADER_SIZE : HEADER_SIZE + GCM_TAG_SIZE]
    gcm_iv = raw[HEADER_SIZE + GCM_TAG_SIZE : HEADER_SIZE + GCM_TAG_SIZE + GCM_IV_SIZE]
    iv_seqno, iv_view = _IV.unpack(gcm_iv)
    (public_size,) = _U64.unpack_from(raw, HEADER_SIZE + GCM_TAG_SIZE + GCM_IV_SIZE)
    if public_size > size - BODY_PREFIX_SIZE:
        raise DecodeError(
            f"public_size {public_size} exceeds entry", offset=offset + 36, field="public_size"
        )
    if public_size < 9:
        raise DecodeError("public domain too short", offset=offset + 36, field="public_size")
    pd_end = PUBLIC_DOMAIN_OFFSET + public_size
    pos = PUBLIC_DOMAIN_OFFSET
    entry_type, public_seqno = _TYPE_SEQNO.unpack_from(raw, pos)
    if entry_type > ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS:
        raise DecodeError(
            f"unknown entry type {entry_type}", offset=offset + pos, field="entry_type"
        )
    pos += 9
    claims: bytes | None = None
    evidence: bytes | None = None
    need = (DIGEST_SIZE if entry_type in _TYPES_WITH_CLAIMS else 0) + (
        DIGEST_SIZE if entry_type in _TYPES_WITH_EVIDENCE else 0
    )
    if pd_end - pos < need + 8:
        raise DecodeError(
            "public domain too short for its header", offset=offset + pos, field="public_domain"
        )
    if entry_type in _TYPES_WITH_CLAIMS:
        claims = raw[pos : pos + DIGEST_SIZE]
        pos += DIGEST_SIZE
    if entry_type in _TYPES_WITH_EVIDENCE:
        evidence = raw[pos : pos + DIGEST_SIZE]
        pos += DIGEST_SIZE
    pos += 8  # max_conflict_version: ignored, as CCF does
    snapshot_hash: bytes | None = None
    view_history: tuple[int, ...] = ()
    is_snapshot = entry_type == ENTRY_TYPE_SNAPSHOT
    if is_snapshot:
        if pd_end - pos < 8:
            raise DecodeError("truncated snapshot hash", offset=offset + pos, field="hash_len")
        (hash_len,) = _U64.unpack_from(raw, pos)
        pos += 8
        if hash_len > pd_end - pos or hash_len > 64:
            raise DecodeError(
                f"bad snapshot hash length {hash_len}", offset=offset + pos - 8, field="hash_len"
            )
        snapshot_hash = raw[pos : pos + hash_len]
        pos += hash_len
        if pd_end - pos < 8:
            raise DecodeError("truncated view history", offset=offset + pos, field="view_history")
        (vh_len,) = _U64.unpack_from(raw, pos)
        pos += 8
        if vh_len > pd_end - pos or vh_len % 8:
            raise DecodeError(
                f"bad view history length {vh_len}", offset=offset + pos - 8, field="view_history"
            )
        view_history = struct.unpack_from(f"<{vh_len // 8}Q", raw, pos)
        pos += vh_len
    public = decode_tables(raw, pos, pd_end, base=offset, snapshot=is_snapshot)
    entry = Entry(
        seqno=iv_seqno,
        view=iv_view & 0x7FFFFFFF,
        flags=flags,
        entry_type=entry_type,
        claims_digest=claims,
        commit_evidence_digest=evidence,
        public=public,
        private_ciphertext=raw[pd_end:],
        gcm_tag=gcm_tag,
        gcm_iv=gcm_iv,
        raw=raw,
        public_seqno=public_seqno,
        public_size=public_size,
        is_snapshot_iv=bool(iv_view & _IV_SNAPSHOT_BIT),
        snapshot_hash=snapshot_hash,
        view_history=view_history,
    )
    return entry, end


def decrypt_private(entry: Entry, secret: bytes) -> WriteSet:
    """Decrypt and parse the private domain; a wrong secret or tampering → VerificationError."""
    if len(secret) != SECRET_SIZE:
        raise VerificationError("ledger secret must be 32 bytes", field="secret")
    try:
        plaintext = _aead(bytes(secret)).decrypt(
            entry.gcm_iv, entry.private_ciphertext + entry.gcm_tag, entry.public_domain
        )
    except InvalidTag:
        raise VerificationError(
            "GCM tag does not authenticate the entry", field="gcm_tag"
        ) from None
    base = PUBLIC_DOMAIN_OFFSET + entry.public_size
    return decode_tables(
        plaintext, 0, len(plaintext), base=base, snapshot=entry.entry_type == ENTRY_TYPE_SNAPSHOT
    )
