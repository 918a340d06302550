"""Promises of charter.ledger.entry: CCF's entry format, encryption, digests and defensive decoding."""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
import struct

import ccf.ledger
import pytest
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger.entry import (
    ENTRY_SIZE_BYTES_MAX,
    ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS,
    FLAG_FORCE_CHUNK_AFTER,
    ZERO_DIGEST,
    commit_evidence,
    commit_evidence_digest,
    decode_entry,
    decrypt_private,
    encode_entry,
    entry_leaf,
    leaf_hash,
    write_set_digest,
)
from charter.ledger.errors import DecodeError, VerificationError

SECRET = bytes(range(32))
CCF_LEDGERS = str(SHARED_CCF_LEDGERS)


def _entry(seqno: int = 5, view: int = 2, **kwargs: object) -> bytes:
    evidence = commit_evidence(SECRET, view, seqno)
    args: dict[str, object] = {
        "public": {"public:app.records": {b"k1": b"v1", b"gone": None}},
        "private": {"app.secrets": {(7).to_bytes(8, "little"): b"hidden"}},
        "secret": SECRET,
        "commit_evidence_digest": commit_evidence_digest(evidence),
    }
    args.update(kwargs)
    return encode_entry(seqno=seqno, view=view, **args)  # type: ignore[arg-type]


def test_encoded_entry_round_trips_public_tables_and_private_domain() -> None:
    raw = _entry()
    entry, end = decode_entry(raw)
    assert end == len(raw)
    assert (entry.seqno, entry.view, entry.public_seqno) == (5, 2, 5)
    assert entry.entry_type == ENTRY_TYPE_WRITE_SET_WITH_COMMIT_EVIDENCE_AND_CLAIMS
    assert entry.public == {"public:app.records": {b"k1": b"v1", b"gone": None}}
    assert decrypt_private(entry, SECRET) == {"app.secrets": {(7).to_bytes(8, "little"): b"hidden"}}
    assert entry.claims_digest == ZERO_DIGEST


def test_header_fields_follow_ccf_layout() -> None:
    raw = _entry(seqno=9, view=3, flags=FLAG_FORCE_CHUNK_AFTER)
    assert raw[0] == 1 and raw[1] == FLAG_FORCE_CHUNK_AFTER
    assert int.from_bytes(raw[2:8], "little") == len(raw) - 8
    assert struct.unpack_from("<QI", raw, 24) == (9, 3)
    public_size = struct.unpack_from("<Q", raw, 36)[0]
    assert raw[44] == 4 and struct.unpack_from("<q", raw, 45)[0] == 9
    # max_conflict_version is 0 right after the two digests
    assert raw[44 + 9 + 64 : 44 + 9 + 64 + 8] == bytes(8)
    assert 44 + public_size <= len(raw)


def test_private_domain_is_encrypted_with_public_domain_as_aad() -> None:
    raw = _entry()
    assert b"hidden" not in raw
    entry, _ = decode_entry(raw)
    tampered = bytearray(raw)
    tampered[60] ^= 1  # inside the public domain's claims digest
    bad, _ = decode_entry(bytes(tampered))
    with pytest.raises(VerificationError):
        decrypt_private(bad, SECRET)
    with pytest.raises(VerificationError):
        decrypt_private(entry, bytes(32))


def test_empty_private_domain_is_still_authenticated_by_a_tag() -> None:
    raw = _entry(private={})
    entry, _ = decode_entry(raw)
    assert entry.private_ciphertext == b""
    assert entry.gcm_tag != bytes(16)
    assert decrypt_private(entry, SECRET) == {}


def test_tables_are_written_in_name_order_and_empty_tables_omitted() -> None:
    raw = _entry(public={"public:b": {b"1": b"x"}, "public:a": {b"2": b"y"}, "public:c": {}})
    entry, _ = decode_entry(raw)
    assert list(entry.public) == ["public:a", "public:b"]


def test_private_table_in_public_domain_is_refused() -> None:
    with pytest.raises(ValueError):
        _entry(public={"secret.table": {b"k": b"v"}})


def test_commit_evidence_matches_ccf_derivation() -> None:
    commit_secret = hmac.new(SECRET, b"Commit S", hashlib.sha256).digest()
    nonce = hmac.new(commit_secret, b"2.500", hashlib.sha256).hexdigest()
    assert commit_evidence(SECRET, 2, 500) == f"ce:2.500:{nonce}"
    assert commit_evidence_digest("ce:1.1:ab") == hashlib.sha256(b"ce:1.1:ab").digest()


def test_leaf_is_hash_of_write_set_evidence_and_claims() -> None:
    claims = hashlib.sha256(b"claim").digest()
    raw = _entry(claims_digest=claims)
    ced = commit_evidence_digest(commit_evidence(SECRET, 2, 5))
    wsd = hashlib.sha256(raw).digest()
    assert write_set_digest(raw) == wsd
    assert (
        entry_leaf(raw)
        == leaf_hash(wsd, ced, claims)
        == hashlib.sha256(wsd + ced + claims).digest()
    )


def _ccf_transactions() -> list[tuple[str, object]]:
    out = []
    for directory in sorted(glob.glob(f"{CCF_LEDGERS}/*/")):
        for tx in ccf.ledger.Ledger([directory]).transactions():
            out.append((os.path.basename(directory.rstrip("/")), tx))
    return out


def test_every_real_ccf_entry_decodes_as_ccf_ledger_reads_it() -> None:
    transactions = _ccf_transactions()
    assert len(transactions) == 14 + 26
    for _name, tx in transactions:
        raw = tx.get_raw_tx()  # type: ignore[attr-defined]
        entry, end = decode_entry(raw)
        assert end == len(raw)
        public = tx.get_public_domain()  # type: ignore[attr-defined]
        assert entry.public == public.get_tables()
        assert entry.txid == tx.get_txid()  # type: ignore[attr-defined]
        assert entry.public_seqno == public.get_seqno()
        assert entry.claims_digest == public.get_claims_digest()
        assert entry.commit_evidence_digest == public.get_commit_evidence_digest()
        assert len(entry.private_ciphertext) == tx.get_private_domain_size()  # type: ignore[attr-defined]
        assert entry_leaf(raw) == tx.get_tx_digest()  # type: ignore[attr-defined]


def test_entry_claiming_more_bytes_than_remain_is_a_decode_error() -> None:
    raw = bytearray(_entry())
    with pytest.raises(DecodeError) as info:
        decode_entry(bytes(raw[:-1]))
    assert info.value.field == "size"
    raw[2:8] = (ENTRY_SIZE_BYTES_MAX + 1).to_bytes(6, "little")
    with pytest.raises(DecodeError):
        decode_entry(bytes(raw))


def test_unknown_version_and_entry_type_are_decode_errors() -> None:
    raw = bytearray(_entry())
    raw[0] = 2
    with pytest.raises(DecodeError) as info:
        decode_entry(bytes(raw))
    assert info.value.field == "version"
    raw = bytearray(_entry())
    raw[44] = 9
    with pytest.raises(DecodeError) as info:
        decode_entry(bytes(raw))
    assert info.value.field == "entry_type"


def test_oversized_table_name_length_is_rejected_before_allocation() -> None:
    raw = bytearray(_entry())
    name_len_at = 44 + 9 + 64 + 8
    raw[name_len_at : name_len_at + 8] = (2**62).to_bytes(8, "little")
    with pytest.raises(DecodeError) as info:
        decode_entry(bytes(raw))
    assert info.value.field == "name_len"
    assert info.value.offset == name_len_at


def test_nonzero_read_count_is_rejected_as_ccf_does() -> None:
    raw = bytearray(_entry(private={}))
    name_len_at = 44 + 9 + 64 + 8
    name_len = int.from_bytes(raw[name_len_at : name_len_at + 8], "little")
    read_count_at = name_len_at + 8 + name_len + 8
    raw[read_count_at] = 1
    with pytest.raises(DecodeError) as info:
        decode_entry(bytes(raw))
    assert info.value.field == "read_count"


def test_decode_at_offset_returns_next_offset() -> None:
    first, second = _entry(seqno=1), _entry(seqno=2)
    data = first + second
    entry1, pos = decode_entry(data)
    entry2, end = decode_entry(data, pos)
    assert (entry1.seqno, entry2.seqno, pos, end) == (1, 2, len(first), len(data))
