"""A snapshot file is checked against its recorded evidence before anyone uses or serves it
(issue 11, item 9): the receipt of its evidence transaction commits to the entry's SHA-256
(the claims digest, as in CCF) and is signed by a node the service endorsed, so a change to
any byte of the file, in the entry or in the receipt, is refused with an error naming the
file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger import certs
from charter.ledger.errors import DecodeError, LedgerError, VerificationError
from charter.ledger.history import History
from charter.ledger.receipt import build_json_receipt
from charter.ledger.signatures import SINGLETON_KEY
from charter.ledger.snapshot import (
    decode_snapshot,
    encode_snapshot,
    encode_snapshot_receipt,
    snapshot_digest,
    verify_snapshot,
)

VIEW = 2
SNAPSHOT_SEQNO = 3
EVIDENCE_SEQNO = 4
NAME = f"snapshot_{SNAPSHOT_SEQNO}_{EVIDENCE_SEQNO}.committed"


@dataclass(frozen=True)
class SnapshotFile:
    data: bytes
    entry_size: int
    service_cert_pem: str
    zero_claims_data: bytes  # the same snapshot, evidence without claims (before this fix)


def _receipt(history: History, seqno: int) -> dict[str, object]:
    material = history.receipt_material(seqno)
    assert material is not None
    proof, signature = material
    wsd, evidence, claims = history.leaf_components(seqno)
    assert evidence is not None and signature.node_cert_pem is not None
    return build_json_receipt(
        node_cert_pem=signature.node_cert_pem,
        node_id=signature.node_id,
        signature=signature.signature,
        proof=proof,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
    )


def _build(*, claims: bool) -> tuple[bytes, str]:
    service_key = certs.new_key()
    service_cert = certs.service_cert(service_key)
    node_key = certs.new_key()
    node_cert_pem = certs.cert_pem(
        certs.endorse(node_key.public_key(), service_key, service_cert, san_ips=["127.0.0.1"])
    )
    secret = bytes(range(32))
    history = History()

    def sign(seqno: int) -> None:
        history.add_signature(
            seqno=seqno,
            view=VIEW,
            node_id=certs.node_id(node_key),
            node_key=node_key,
            node_cert_pem=node_cert_pem,
            service_key=service_key,
            secret=secret,
            iat=1_700_000_000,
        )

    for seqno in (1, 2):
        history.add_transaction(
            seqno=seqno,
            view=VIEW,
            public={"public:records": {b"k%d" % seqno: b"public value"}},
            private={"records": {b"k%d" % seqno: b"private value"}},
            secret=secret,
        )
    sign(SNAPSHOT_SEQNO)
    entry = encode_snapshot(
        seqno=SNAPSHOT_SEQNO,
        view=VIEW,
        hash_at_snapshot=history.tree.leaf(SNAPSHOT_SEQNO),
        view_history=[1, 1, 1],
        public_tables=b"\x0epublic:records" + bytes(40),
        private_tables=b"\x07records" + bytes(40),
        secret=secret,
    )
    evidence = {"hash": snapshot_digest(entry), "version": SNAPSHOT_SEQNO}
    history.add_transaction(
        seqno=EVIDENCE_SEQNO,
        view=VIEW,
        public={
            "public:ccf.internal.snapshot_evidence": {SINGLETON_KEY: json.dumps(evidence).encode()}
        },
        private={},
        secret=secret,
        claims_digest=hashlib.sha256(entry).digest() if claims else bytes(32),
    )
    sign(EVIDENCE_SEQNO + 1)
    data = entry + encode_snapshot_receipt(_receipt(history, EVIDENCE_SEQNO))
    return data, certs.cert_pem(service_cert)


@cache
def _snapshot() -> SnapshotFile:
    data, service_cert_pem = _build(claims=True)
    zero_claims, zero_service_cert = _build(claims=False)
    # Both built under different keys; a zero-claims file is refused whatever its signer.
    del zero_service_cert
    return SnapshotFile(
        data, len(decode_snapshot(data).entry), service_cert_pem, zero_claims_data=zero_claims
    )


def _refused(data: bytes, service_cert_pem: str, name: str = NAME) -> LedgerError:
    with pytest.raises((DecodeError, VerificationError)) as info:
        verify_snapshot(data, service_cert_pem, name=name)
    assert name in str(info.value), info.value
    return info.value


def test_an_untouched_snapshot_verifies_against_the_service_cert() -> None:
    snap = _snapshot()
    verified = verify_snapshot(snap.data, snap.service_cert_pem, name=NAME)
    assert verified.snapshot.seqno == SNAPSHOT_SEQNO
    assert verified.evidence_seqno == EVIDENCE_SEQNO
    assert verified.evidence_view == VIEW


def test_every_flipped_byte_of_the_entry_is_refused_naming_the_file() -> None:
    snap = _snapshot()
    for offset in range(snap.entry_size):
        for mask in (0x01, 0x80):
            tampered = bytearray(snap.data)
            tampered[offset] ^= mask
            _refused(bytes(tampered), snap.service_cert_pem)


def test_every_flipped_byte_of_the_receipt_is_refused_naming_the_file() -> None:
    snap = _snapshot()
    for offset in range(snap.entry_size, len(snap.data)):
        # 0x01 turns hex and base64 digits into others; 0x20 changes the case of letters
        # (an uppercase hex digit decodes to the same value: refused all the same).
        for mask in (0x01, 0x20):
            tampered = bytearray(snap.data)
            tampered[offset] ^= mask
            _refused(bytes(tampered), snap.service_cert_pem)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_byte_replaced_anywhere_is_refused(data: st.DataObject) -> None:
    snap = _snapshot()
    offset = data.draw(st.integers(0, len(snap.data) - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != snap.data[offset]), label="byte")
    tampered = bytearray(snap.data)
    tampered[offset] = value
    _refused(bytes(tampered), snap.service_cert_pem)


def test_a_truncated_or_extended_snapshot_is_refused() -> None:
    snap = _snapshot()
    for cut in (1, 10, len(snap.data) - snap.entry_size, len(snap.data) - 1):
        _refused(snap.data[:-cut], snap.service_cert_pem)
    _refused(snap.data + b" ", snap.service_cert_pem)
    _refused(snap.data + b"\n", snap.service_cert_pem)


def test_a_snapshot_without_receipt_is_refused_as_uncommitted() -> None:
    snap = _snapshot()
    error = _refused(snap.data[: snap.entry_size], snap.service_cert_pem)
    assert "no receipt" in str(error)


def test_a_receipt_that_does_not_commit_to_the_snapshot_digest_is_refused() -> None:
    # Evidence recorded without claims (what nodes wrote before): nothing signed vouches
    # for the entry's bytes.
    snap = _snapshot()
    error = _refused(snap.zero_claims_data, snap.service_cert_pem)
    assert isinstance(error, VerificationError) and error.field == "claims_digest"


def test_a_snapshot_signed_under_another_service_is_refused() -> None:
    snap = _snapshot()
    other = certs.cert_pem(certs.service_cert(certs.new_key()))
    error = _refused(snap.data, other)
    assert "not endorsed by the service cert" in str(error)


def test_a_snapshot_under_another_file_name_is_refused() -> None:
    snap = _snapshot()
    _refused(snap.data, snap.service_cert_pem, name="snapshot_3_9.committed")
    _refused(snap.data, snap.service_cert_pem, name="snapshot_1_4.committed")


def test_a_deeply_nested_receipt_is_a_decode_error() -> None:
    snap = _snapshot()
    data = snap.data[: snap.entry_size] + b"[" * 100_000
    error = _refused(data, snap.service_cert_pem)
    assert isinstance(error, DecodeError)
    with pytest.raises(DecodeError):
        decode_snapshot(data)


def test_an_oversized_receipt_is_a_decode_error() -> None:
    snap = _snapshot()
    data = snap.data[: snap.entry_size] + b" " * (300 * 1024)
    error = _refused(data, snap.service_cert_pem)
    assert isinstance(error, DecodeError) and error.field == "receipt"
