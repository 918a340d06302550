"""Promises of charter.ledger.history: the enclave's pipeline of entries, tree, signatures, receipts."""

from __future__ import annotations

import base64
import gc
import hashlib
import json

import ccf.receipt
import pytest
from cryptography import x509

from charter.ledger import certs
from charter.ledger.entry import decode_entry, decrypt_private, entry_leaf
from charter.ledger.errors import DecodeError, VerificationError
from charter.ledger.history import History
from charter.ledger.merkle import MerkleTree, root_from_proof
from charter.ledger.signatures import SIGNATURES_TABLE, SINGLETON_KEY, TREE_TABLE, verify_root

SECRET = bytes(range(32))
SERVICE_KEY = certs.new_key()
SERVICE_CERT = certs.service_cert(SERVICE_KEY)
NODE_KEY = certs.new_key()
NODE_CERT_PEM = certs.cert_pem(certs.endorse(NODE_KEY.public_key(), SERVICE_KEY, SERVICE_CERT))
NODE_ID = certs.node_id(NODE_KEY.public_key())


def _tx(history: History, seqno: int, view: int = 2) -> None:
    history.add_transaction(
        seqno=seqno,
        view=view,
        public={"public:t": {b"k": str(seqno).encode()}},
        private={"p": {b"k": b"secret"}},
        secret=SECRET,
    )


def _sign(history: History, seqno: int, view: int = 2) -> bytes:
    return history.add_signature(
        seqno=seqno,
        view=view,
        node_id=NODE_ID,
        node_key=NODE_KEY,
        node_cert_pem=NODE_CERT_PEM,
        service_key=SERVICE_KEY,
        secret=SECRET,
        iat=1_700_000_000,
    ).raw


def _signed_run(history: History, writes: int) -> list[bytes]:
    """`writes` transactions from seqno 1 (view 2), then a signature: their raw entries."""
    raws = [
        history.add_transaction(
            seqno=seqno, view=2, public={"public:t": {b"k": b"v"}}, private={}, secret=SECRET
        ).raw
        for seqno in range(1, writes + 1)
    ]
    return [*raws, _sign(history, writes + 1)]


def test_signature_signs_root_of_all_earlier_leaves_then_appends_its_own() -> None:
    history = History()
    for seqno in range(1, 6):
        _tx(history, seqno)
    root_before = history.tree.root_at(6)
    raw = _sign(history, 6)
    entry, _ = decode_entry(raw)
    value = json.loads(entry.public[SIGNATURES_TABLE][SINGLETON_KEY])
    assert value["root"] == root_before.hex() and value["seqno"] == 6 and value["node"] == NODE_ID
    verify_root(NODE_KEY.public_key(), root_before, history.last_signature.signature)  # type: ignore[union-attr]
    assert history.tree.size == 7 and history.tree.leaf(6) == entry_leaf(raw)


def test_tree_table_deserialises_to_the_signed_tree() -> None:
    history = History()
    for seqno in range(1, 4):
        _tx(history, seqno)
    _sign(history, 4)
    for seqno in range(5, 9):
        _tx(history, seqno)
    raw = _sign(history, 9)
    entry, _ = decode_entry(raw)
    tree = MerkleTree.deserialise(entry.public[TREE_TABLE][SINGLETON_KEY])
    assert tree.min_index == 4 and tree.root_at(9) == history.tree.root_at(9)


def test_receipt_material_verifies_with_ccf_receipt_code() -> None:
    history = History()
    for seqno in range(1, 8):
        _tx(history, seqno)
    assert history.receipt_material(3) is None  # no signature yet: receipt not ready
    _sign(history, 8)
    material = history.receipt_material(3)
    assert material is not None
    proof, signature = material
    wsd, evidence, claims = history.leaf_components(3)
    assert evidence is not None and evidence.startswith("ce:2.3:")
    leaf = hashlib.sha256(wsd + hashlib.sha256(evidence.encode()).digest() + claims).digest()
    assert leaf == history.tree.leaf(3)
    json_proof = [{"left" if left else "right": h.hex()} for left, h in proof]
    root = ccf.receipt.root(leaf.hex(), json_proof)
    assert bytes.fromhex(root) == signature.root == root_from_proof(leaf, proof)
    node_cert = x509.load_pem_x509_certificate(NODE_CERT_PEM.encode())
    ccf.receipt.verify(root, base64.b64encode(signature.signature).decode(), node_cert)


def test_replica_append_raw_rebuilds_the_same_tree() -> None:
    primary, replica = History(), History()
    entries = _signed_run(primary, 4)
    for raw in entries:
        replica.append_raw(raw, secret=SECRET)
    assert replica.tree.root() == primary.tree.root()
    assert replica.last_signature is not None and replica.last_signature.seqno == 5
    assert replica.receipt_material(2) is not None


def test_an_entry_decoded_by_the_caller_is_appended_as_from_its_bytes() -> None:
    """A backup decodes each replicated entry once and hands the decoding in; the history
    then checks and records exactly what it would from the bytes alone."""
    primary, from_bytes, from_decoded = History(), History(), History()
    entries = _signed_run(primary, 3)
    for raw in entries:
        a = from_bytes.append_raw(raw, secret=SECRET)
        b = from_decoded.append_raw(raw, secret=SECRET, decoded=decode_entry(raw))
        assert a == b
    assert from_decoded.tree.root() == from_bytes.tree.root() == primary.tree.root()
    with pytest.raises(DecodeError):
        # The decoding must cover the bytes: a shorter one is trailing bytes.
        raw = entries[0] + b"x"
        History().append_raw(raw, secret=SECRET, decoded=decode_entry(raw))


def test_replica_rejects_signature_over_a_different_tree() -> None:
    primary, replica = History(), History()
    _tx(primary, 1)
    raw_sig = _sign(primary, 2)
    replica.add_transaction(
        seqno=1, view=2, public={"public:t": {b"k": b"other"}}, private={}, secret=SECRET
    )
    with pytest.raises(VerificationError):
        replica.append_raw(raw_sig)
    assert replica.last_seqno == 1


def test_replica_rejects_out_of_order_entry() -> None:
    primary, replica = History(), History()
    _tx(primary, 1)
    _tx(primary, 2)
    second = primary.add_transaction(seqno=3, view=2, public={}, private={}, secret=SECRET).raw
    with pytest.raises(VerificationError):
        replica.append_raw(second)


def test_truncate_rolls_back_tree_and_signatures() -> None:
    history = History()
    for seqno in range(1, 4):
        _tx(history, seqno)
    _sign(history, 4)
    root_at_3 = history.tree.root_at(4)
    _tx(history, 5)
    _sign(history, 6)
    history.truncate(4)
    assert history.last_seqno == 4 and history.last_signature.seqno == 4  # type: ignore[union-attr]
    assert history.tree.root_at(4) == root_at_3
    _tx(history, 5, view=3)
    assert history.receipt_material(5) is None  # the signature at 6 was rolled back
    _sign(history, 6, view=3)
    assert history.receipt_material(5) is not None


def test_signature_before_names_the_last_signature_held_strictly_before_a_seqno() -> None:
    history = History()
    assert history.signature_before(5) == 0
    _tx(history, 1)
    _sign(history, 2)
    _tx(history, 3)
    _sign(history, 4)
    assert [history.signature_before(s) for s in (1, 2, 3, 4, 5, 99)] == [0, 0, 2, 2, 4, 4]
    history.compact(3)  # the signature at 2 is forgotten
    assert history.signature_before(4) == 0 and history.signature_before(5) == 4
    history.truncate(3)  # the signature at 4 is rolled back
    assert history.signature_before(5) == 0


def test_compact_keeps_receipts_for_later_transactions() -> None:
    history = History()
    for seqno in range(1, 10):
        _tx(history, seqno)
    _sign(history, 10)
    for seqno in range(11, 20):
        _tx(history, seqno)
    _sign(history, 20)
    history.compact(11)
    material = history.receipt_material(15)
    assert material is not None
    proof, signature = material
    assert root_from_proof(history.tree.leaf(15), proof) == signature.root
    with pytest.raises(KeyError):
        history.receipt_material(5)


def test_signatures_after_compaction_serialise_only_held_leaves() -> None:
    history = History()
    for seqno in range(1, 10):
        _tx(history, seqno)
    _sign(history, 10)
    for seqno in range(11, 14):
        _tx(history, seqno)
    history.compact(12)
    raw = _sign(history, 14)
    entry, _ = decode_entry(raw)
    tree = MerkleTree.deserialise(entry.public[TREE_TABLE][SINGLETON_KEY])
    assert tree.min_index == 12 and tree.root_at(14) == history.tree.root_at(14)


def test_a_replica_gets_the_private_writes_it_checked_and_a_tampered_entry_appends_nothing() -> (
    None
):
    """A backup applies the private write set the history decrypted to check the GCM tag
    (one decryption per entry): it is the one the primary wrote, and an entry whose private
    domain was changed is refused with nothing appended."""
    primary, replica = History(), History()
    private = {"t": {b"k": b"secret value"}}
    raw = primary.add_transaction(
        seqno=1, view=2, public={"public:t": {b"p": b"v"}}, private=private, secret=SECRET
    ).raw
    entry, _ = decode_entry(raw)
    flipped = bytearray(raw)
    flipped[raw.index(entry.private_ciphertext) + len(entry.private_ciphertext) // 2] ^= 1
    with pytest.raises(VerificationError):
        replica.append_decrypted(bytes(flipped), secret=SECRET)
    assert replica.last_seqno == 0
    record, decrypted = replica.append_decrypted(raw, secret=SECRET, decoded=decode_entry(raw))
    assert decrypted == private == decrypt_private(entry, SECRET)
    assert record == History().append_raw(raw, secret=SECRET)
    public_only = primary.add_transaction(
        seqno=2, view=2, public={"public:t": {b"p": b"w"}}, private={}, secret=SECRET
    ).raw
    assert replica.append_decrypted(public_only, secret=SECRET)[1] == {}


def test_replica_with_the_wrong_ledger_secret_rejects_commit_evidence() -> None:
    primary, replica = History(), History()
    raw = primary.add_transaction(seqno=1, view=2, public={}, private={}, secret=SECRET).raw
    with pytest.raises(VerificationError):
        replica.append_raw(raw, secret=bytes(32))
    assert replica.append_raw(raw, secret=SECRET).commit_evidence == primary.leaf_components(1)[1]


def test_replica_with_the_secret_detects_a_changed_public_only_entry() -> None:
    primary, replica = History(), History()
    raw = primary.add_transaction(
        seqno=1,
        view=2,
        public={"public:ccf.gov.members.info": {b"m": b'{"status":"Accepted"}'}},
        private={},
        secret=SECRET,
    ).raw
    forged = raw.replace(b'"Accepted"', b'"Active"  ', 1)  # same length, still valid
    with pytest.raises(VerificationError):
        replica.append_raw(forged, secret=SECRET)
    assert replica.last_seqno == 0
    replica.append_raw(raw, secret=SECRET)


def test_what_a_history_keeps_per_transaction_drops_out_of_the_garbage_collectors_walks() -> None:
    # A node keeps this for every retained transaction (100,000 by default): while the
    # collector tracked it, each full collection walked all of it (a pause of the loop).
    primary, replica = History(), History()
    raws = _signed_run(primary, 39)
    for raw in raws:
        replica.append_raw(raw, secret=SECRET)
    gc.collect()
    for history in (primary, replica):
        kept = list(history._components.values())
        assert len(kept) == 40 and not any(gc.is_tracked(c) for c in kept)
        assert history.is_signature(40) and not history.is_signature(39)
        assert history.leaf_components(3) == primary.leaf_components(3)
