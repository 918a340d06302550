"""Receipts: ours are accepted by ccf's verifiers, and ours reject every tampered field."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import ccf.cose
import ccf.merkletree
import ccf.receipt
import pytest
from ccf.ledger import Ledger
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger import certs, cose, receipt, signatures
from charter.ledger.errors import DecodeError, LedgerError, VerificationError
from charter.ledger.merkle import MerkleTree

TREE_SIZE = 23  # leaves 0..22, signed by the signature transaction at seqno 23
TX_SEQNO = 13


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return certs.cert_pem(self.cert)


@dataclass(frozen=True)
class Scenario:
    service: Identity
    node: Identity
    components: list[tuple[bytes, str, bytes]]  # per seqno 1..TREE_SIZE-1
    tree: MerkleTree
    root: bytes
    sig: bytes
    cose_sig: bytes


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _service() -> Identity:
    key = certs.new_key()
    return Identity(key, certs.self_signed_cert(key, "CCF Service", ca=True, days=30))


def _node(service: Identity) -> Identity:
    key = certs.new_key()
    cert = certs.endorse_public_key(
        key.public_key(), "CCF Node", service.key, service.cert, san_ips=["127.0.0.1"], days=30
    )
    return Identity(key, cert)


def _scenario() -> Scenario:
    service = _service()
    node = _node(service)
    tree = MerkleTree()
    components = []
    for seqno in range(1, TREE_SIZE):
        claims = _digest(f"claims {seqno}") if seqno % 3 == 0 else bytes(32)
        leaf = (_digest(f"wsd {seqno}"), f"ce:2.{seqno}:{_digest(f'ce {seqno}').hex()}", claims)
        components.append(leaf)
        tree.append(receipt.leaf_digest(*leaf))
    root = tree.root_at(TREE_SIZE)
    return Scenario(
        service=service,
        node=node,
        components=components,
        tree=tree,
        root=root,
        sig=signatures.sign_root(node.key, root),
        cose_sig=signatures.cose_root_signature(service.key, root, txid=f"2.{TREE_SIZE}", iat=7),
    )


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return _scenario()


def _json_receipt(sc: Scenario, seqno: int = TX_SEQNO) -> dict[str, Any]:
    wsd, evidence, claims = sc.components[seqno - 1]
    return receipt.build_json_receipt(
        node_cert_pem=sc.node.pem,
        node_id=certs.node_id(sc.node.key.public_key()),
        signature=sc.sig,
        proof=sc.tree.inclusion_proof(seqno, TREE_SIZE),
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
    )


def _cose_receipt(sc: Scenario, seqno: int = TX_SEQNO) -> bytes:
    wsd, evidence, claims = sc.components[seqno - 1]
    return receipt.build_cose_receipt(
        sc.cose_sig,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
        proof=sc.tree.inclusion_proof(seqno, TREE_SIZE),
    )


def _ccf_verify_json(r: dict[str, Any], service_cert: x509.Certificate) -> None:
    """What FORMATS §5.1 says a CCF auditor runs on a JSON receipt."""
    lc = r["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(lc["write_set_digest"])
        + hashlib.sha256(lc["commit_evidence"].encode()).digest()
        + bytes.fromhex(lc["claims_digest"])
    ).hexdigest()
    root = ccf.receipt.root(leaf, r["proof"])
    node_cert = x509.load_pem_x509_certificate(r["cert"].encode())
    ccf.receipt.verify(root, r["signature"], node_cert)
    endorsements = [x509.load_pem_x509_certificate(e.encode()) for e in r["service_endorsements"]]
    ccf.receipt.check_endorsements(node_cert, service_cert, endorsements)
    ccf.receipt.check_cert_chain(node_cert, service_cert, endorsements)


def test_tree_root_matches_ccf_merkletree(sc: Scenario) -> None:
    theirs = ccf.merkletree.MerkleTree()  # type: ignore[no-untyped-call]
    theirs.add_leaf(bytes(32), do_hash=False)
    for leaf in sc.components:
        theirs.add_leaf(receipt.leaf_digest(*leaf), do_hash=False)
    assert theirs.get_merkle_root() == sc.root


def test_json_receipt_for_every_transaction_verifies_with_ours_and_ccf(sc: Scenario) -> None:
    for seqno in range(1, TREE_SIZE):
        r = _json_receipt(sc, seqno)
        assert receipt.verify_json_receipt(r, sc.service.pem) == sc.root
        _ccf_verify_json(r, sc.service.cert)
    r = _json_receipt(sc)
    assert receipt.verify_json_receipt(json.dumps(r), sc.service.cert) == sc.root
    claims = sc.components[TX_SEQNO - 1][2]
    assert receipt.verify_json_receipt(r, sc.service.pem, claims_digest=claims) == sc.root


def test_json_receipt_has_ccf_current_schema(sc: Scenario) -> None:
    r = _json_receipt(sc)
    assert set(r) == {
        "cert",
        "is_signature_transaction",
        "leaf_components",
        "node_id",
        "proof",
        "service_endorsements",
        "signature",
    }
    assert set(r["leaf_components"]) == {"claims_digest", "commit_evidence", "write_set_digest"}
    assert all(len(step) == 1 and set(step) <= {"left", "right"} for step in r["proof"])
    assert r["is_signature_transaction"] is False


def _flip_hex(h: str) -> str:
    return ("1" if h[0] == "0" else "0") + h[1:]


def _json_tampers(sc: Scenario) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    other_service = _service()
    foreign_node = _node(other_service)
    sibling_node = _node(sc.service)

    def set_(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(r: dict[str, Any]) -> None:
            target = r
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value

        return apply

    def foreign(r: dict[str, Any]) -> None:
        # A node of another service, signing the same root: a valid signature, wrong chain.
        r["cert"] = certs.cert_pem(foreign_node.cert)
        r["node_id"] = certs.node_id(foreign_node.key.public_key())
        r["signature"] = base64.b64encode(signatures.sign_root(foreign_node.key, sc.root)).decode()

    def other_sig(r: dict[str, Any]) -> None:
        r["signature"] = base64.b64encode(signatures.sign_root(sc.node.key, _digest("x"))).decode()

    def flip_sig_byte(r: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(r["signature"]))
        raw[-1] ^= 1
        r["signature"] = base64.b64encode(bytes(raw)).decode()

    def swap_side(i: int) -> Callable[[dict[str, Any]], None]:
        def apply(r: dict[str, Any]) -> None:
            ((side, h),) = r["proof"][i].items()
            r["proof"][i] = {("right" if side == "left" else "left"): h}

        return apply

    def flip_step(i: int) -> Callable[[dict[str, Any]], None]:
        def apply(r: dict[str, Any]) -> None:
            ((side, h),) = r["proof"][i].items()
            r["proof"][i] = {side: _flip_hex(h)}

        return apply

    n_steps = len(sc.tree.inclusion_proof(TX_SEQNO, TREE_SIZE))
    assert n_steps >= 4
    tampers: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("write_set_digest", set_(["leaf_components", "write_set_digest"], _flip_hex)),
        ("commit_evidence", set_(["leaf_components", "commit_evidence"], lambda s: s + "0")),
        ("claims_digest", set_(["leaf_components", "claims_digest"], _flip_hex)),
        ("claims_digest removed", lambda r: r["leaf_components"].pop("claims_digest")),
        ("truncated proof", lambda r: r["proof"].pop()),
        ("extra proof step", lambda r: r["proof"].append({"right": "00" * 32})),
        ("extra leading proof step", lambda r: r["proof"].insert(0, {"left": "00" * 32})),
        ("empty proof", set_(["proof"], [])),
        ("signature over another root", other_sig),
        ("signature byte flipped", flip_sig_byte),
        ("node cert of another service", foreign),
        ("cert of another node of the same service", set_(["cert"], sibling_node.pem)),
        ("node_id", set_(["node_id"], _flip_hex)),
        ("bogus service endorsement", set_(["service_endorsements"], [other_service.pem])),
    ]
    tampers += [(f"proof step {i} hash", flip_step(i)) for i in range(n_steps)]
    tampers += [(f"proof step {i} side", swap_side(i)) for i in range(n_steps)]
    return tampers


def test_every_tampered_json_receipt_field_is_rejected(sc: Scenario) -> None:
    good = _json_receipt(sc)
    for name, tamper in _json_tampers(sc):
        bad = copy.deepcopy(good)
        tamper(bad)
        with pytest.raises(VerificationError):
            receipt.verify_json_receipt(bad, sc.service.pem)
            pytest.fail(f"tampered {name} was accepted")


def test_json_receipt_fails_with_wrong_service_cert_or_claims(sc: Scenario) -> None:
    r = _json_receipt(sc)
    with pytest.raises(VerificationError, match="endorsed"):
        receipt.verify_json_receipt(r, _service().pem)
    with pytest.raises(VerificationError, match="claims"):
        receipt.verify_json_receipt(r, sc.service.pem, claims_digest=_digest("other claims"))


def test_json_receipt_failures_name_what_failed(sc: Scenario) -> None:
    r = _json_receipt(sc)
    r["proof"].pop()
    with pytest.raises(VerificationError) as info:
        receipt.verify_json_receipt(r, sc.service.pem)
    assert info.value.field == "signature"


def test_receipt_after_recovery_verifies_through_service_endorsement(sc: Scenario) -> None:
    new_service = _service()
    endorsement = certs.endorse_previous_service_identity(
        sc.service.cert, new_service.key, new_service.cert
    )
    r = _json_receipt(sc)
    r["service_endorsements"] = [certs.cert_pem(endorsement)]
    assert receipt.verify_json_receipt(r, new_service.pem) == sc.root
    _ccf_verify_json(r, new_service.cert)
    r["service_endorsements"] = []
    with pytest.raises(VerificationError):
        receipt.verify_json_receipt(r, new_service.pem)


def test_signature_transaction_receipt_verifies_with_ours_and_ccf(sc: Scenario) -> None:
    r = receipt.build_signature_receipt(
        node_cert_pem=sc.node.pem,
        node_id=certs.node_id(sc.node.key.public_key()),
        signature=sc.sig,
        root=sc.root,
    )
    assert receipt.verify_json_receipt(r, sc.service.pem) == sc.root
    root = ccf.receipt.root(r["leaf"], r["proof"])
    ccf.receipt.verify(root, r["signature"], sc.node.cert)
    r["leaf"] = _flip_hex(r["leaf"])
    with pytest.raises(VerificationError):
        receipt.verify_json_receipt(r, sc.service.pem)
    with pytest.raises(VerificationError, match="claims"):
        receipt.verify_json_receipt(r, sc.service.pem, claims_digest=bytes(32))


def test_legacy_receipt_without_claims_digest_verifies() -> None:
    service = _service()
    node = _node(service)
    wsd, evidence = _digest("wsd"), "ce:2.1:" + "ab" * 32
    leaf = hashlib.sha256(wsd + hashlib.sha256(evidence.encode()).digest()).digest()
    sibling = _digest("sibling")
    root = hashlib.sha256(sibling + leaf).digest()
    r: dict[str, Any] = {
        "cert": node.pem,
        "leaf_components": {"commit_evidence": evidence, "write_set_digest": wsd.hex()},
        "node_id": certs.node_id(node.key.public_key()),
        "proof": [{"left": sibling.hex()}],
        "signature": base64.b64encode(signatures.sign_root(node.key, root)).decode(),
    }
    assert receipt.verify_json_receipt(r, service.pem) == root


def test_real_ccf_signatures_verify_as_signature_receipts() -> None:
    service_pem = None
    checked = 0
    for chunk in Ledger([str(SHARED_CCF_LEDGERS / "current")]):
        for tx in chunk:
            tables = tx.get_public_domain().get_tables()
            if "public:ccf.gov.service.info" in tables:
                service_pem = json.loads(tables["public:ccf.gov.service.info"][bytes(8)])["cert"]
            value = tables.get("public:ccf.internal.signatures", {}).get(bytes(8))
            if value is None:
                continue
            assert service_pem is not None
            sig = signatures.parse_signature(value)
            assert sig.cert_pem is not None
            r = receipt.build_signature_receipt(
                node_cert_pem=sig.cert_pem, node_id=sig.node_id, signature=sig.sig, root=sig.root
            )
            # Real node certs (expired since) chain to the real service cert.
            assert receipt.verify_json_receipt(r, service_pem) == sig.root
            checked += 1
    assert checked == 6


def test_cose_receipt_for_every_transaction_verifies_with_ours_and_ccf(sc: Scenario) -> None:
    public_key = sc.service.key.public_key()
    for seqno in range(1, TREE_SIZE):
        data = _cose_receipt(sc, seqno)
        claims = sc.components[seqno - 1][2]
        protected = receipt.verify_cose_receipt(data, sc.service.pem, claims)
        assert protected[cose.HEADER_CCF_V1] == {"txid": f"2.{TREE_SIZE}"}
        theirs = ccf.cose.verify_receipt(data, public_key, claims)
        assert theirs[cose.HEADER_VDS] == 2
    data = _cose_receipt(sc)
    claims = sc.components[TX_SEQNO - 1][2]
    receipt.verify_cose_receipt(data, sc.service.cert, claims)
    receipt.verify_cose_receipt(data, public_key, claims)


def test_cose_receipt_keeps_the_signature_protected_header_and_signature(sc: Scenario) -> None:
    sig = cose.decode_sign1(sc.cose_sig)
    rec = cose.decode_sign1(_cose_receipt(sc))
    assert (rec.protected_bytes, rec.signature, rec.payload) == (
        sig.protected_bytes,
        sig.signature,
        None,
    )
    wsd, evidence, claims = sc.components[TX_SEQNO - 1]
    by_tuple = receipt.build_cose_receipt(
        sc.cose_sig, (wsd, evidence, claims), sc.tree.inclusion_proof(TX_SEQNO, TREE_SIZE)
    )
    assert by_tuple == _cose_receipt(sc)


def _cose_tampers(sc: Scenario) -> list[tuple[str, bytes]]:
    wsd, evidence, claims = sc.components[TX_SEQNO - 1]
    proof = sc.tree.inclusion_proof(TX_SEQNO, TREE_SIZE)

    def build(
        leaf: tuple[bytes, str, bytes] = (wsd, evidence, claims),
        path: list[tuple[bool, bytes]] = proof,
        signature_cose: bytes = sc.cose_sig,
    ) -> bytes:
        return receipt.build_cose_receipt(signature_cose, leaf, path)

    flip = bytes([1]) + bytes(31)
    other_service = _service()
    tampers = [
        ("write_set_digest", build(leaf=(_digest("other"), evidence, claims))),
        ("commit_evidence", build(leaf=(wsd, evidence + "0", claims))),
        ("truncated proof", build(path=proof[:-1])),
        ("extra proof step", build(path=[*proof, (False, bytes(32))])),
        ("empty proof", build(path=[])),
        (
            "signature of another root",
            build(
                signature_cose=signatures.cose_root_signature(
                    sc.service.key, _digest("x"), txid="2.23", iat=7
                )
            ),
        ),
        (
            "signature by another service",
            build(
                signature_cose=signatures.cose_root_signature(
                    other_service.key, sc.root, txid="2.23", iat=7
                )
            ),
        ),
    ]
    for i, (is_left, h) in enumerate(proof):
        changed = list(proof)
        changed[i] = (is_left, bytes(a ^ b for a, b in zip(h, flip, strict=True)))
        tampers.append((f"proof step {i} hash", build(path=changed)))
        changed = list(proof)
        changed[i] = (not is_left, h)
        tampers.append((f"proof step {i} side", build(path=changed)))
    msg = cose.decode_sign1(build())
    bad_sig = bytearray(msg.signature)
    bad_sig[5] ^= 0x40
    tampers.append(
        (
            "signature bytes",
            cbor2.dumps(
                cbor2.CBORTag(18, [msg.protected_bytes, msg.unprotected, None, bytes(bad_sig)])
            ),
        )
    )
    return tampers


def test_every_tampered_cose_receipt_field_is_rejected_by_ours_and_ccf(sc: Scenario) -> None:
    claims = sc.components[TX_SEQNO - 1][2]
    public_key = sc.service.key.public_key()
    for name, data in _cose_tampers(sc):
        with pytest.raises(VerificationError):
            receipt.verify_cose_receipt(data, sc.service.pem, claims)
            pytest.fail(f"tampered {name} was accepted")
        with pytest.raises((ValueError, AssertionError)):
            ccf.cose.verify_receipt(data, public_key, claims)


def test_cose_receipt_fails_with_wrong_claims_or_service(sc: Scenario) -> None:
    data = _cose_receipt(sc)
    claims = sc.components[TX_SEQNO - 1][2]
    with pytest.raises(VerificationError, match="claims"):
        receipt.verify_cose_receipt(data, sc.service.pem, _digest("other"))
    with pytest.raises(VerificationError, match="kid"):
        receipt.verify_cose_receipt(data, _service().pem, claims)


def test_cose_receipt_without_proof_is_a_decode_error(sc: Scenario) -> None:
    with pytest.raises(DecodeError, match="396"):
        receipt.verify_cose_receipt(sc.cose_sig, sc.service.pem, bytes(32))


def test_receipts_from_one_node_check_its_endorsement_chain_once(sc: Scenario) -> None:
    # What a verification costs against one ECDSA verify is measured by
    # scripts/bench_ledger.py; here, that the chain is not checked again for every receipt.
    r = _json_receipt(sc)
    receipt._chain_is_endorsed.cache_clear()
    for _ in range(5):
        assert receipt.verify_json_receipt(r, sc.service.pem) == sc.root
    checked = receipt._chain_is_endorsed.cache_info()
    assert (checked.misses, checked.hits) == (1, 4)


def test_bad_receipt_input_raises_ledger_errors_only(sc: Scenario) -> None:
    for bad in [b"", b"[]", "{", {"cert": 1}, {}, b"\xff" * 10]:
        with pytest.raises(LedgerError):
            receipt.verify_json_receipt(bad, sc.service.pem)  # type: ignore[arg-type]
    r = _json_receipt(sc)
    r["cert"] = "not a pem"
    with pytest.raises(VerificationError, match="cert"):
        receipt.verify_json_receipt(r, sc.service.pem)
    for bad_bytes in [b"", b"\xd2\x84", sc.cose_sig[:-3]]:
        with pytest.raises(LedgerError):
            receipt.verify_cose_receipt(bad_bytes, sc.service.pem, bytes(32))
