"""Fuzzing the receipt decoders: hostile input only ever raises LedgerError subclasses."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger import certs, receipt, signatures
from charter.ledger.errors import LedgerError
from charter.ledger.merkle import MerkleTree

_SERVICE_KEY = certs.new_key()
_SERVICE_PEM = certs.cert_pem(certs.self_signed_cert(_SERVICE_KEY, "CCF Service", ca=True, days=5))
_NODE_KEY = certs.new_key()
_NODE_PEM = certs.cert_pem(
    certs.endorse_public_key(
        _NODE_KEY.public_key(), "CCF Node", _SERVICE_KEY, certs.load_cert(_SERVICE_PEM), days=5
    )
)
_LEAF = (hashlib.sha256(b"wsd").digest(), "ce:2.3:" + "ab" * 32, bytes(32))
_TREE = MerkleTree()
for _i in range(1, 6):
    _TREE.append(receipt.leaf_digest(*_LEAF) if _i == 3 else hashlib.sha256(bytes([_i])).digest())
_ROOT = _TREE.root_at(6)
_JSON = receipt.build_json_receipt(
    node_cert_pem=_NODE_PEM,
    node_id=certs.node_id(_NODE_KEY.public_key()),
    signature=signatures.sign_root(_NODE_KEY, _ROOT),
    proof=_TREE.inclusion_proof(3, 6),
    write_set_digest=_LEAF[0],
    commit_evidence=_LEAF[1],
    claims_digest=_LEAF[2],
)
_COSE = receipt.build_cose_receipt(
    signatures.cose_root_signature(_SERVICE_KEY, _ROOT, txid="2.6", iat=1),
    _LEAF,
    _TREE.inclusion_proof(3, 6),
)
# Inputs fed to the receipt decoders: 2500 x 3 random + 2500 mutated COSE + 800 x 2 mutated
# JSON + 800 x 2 hostile inclusion proofs = 13,200, deterministic (derandomize).
_FUZZ = settings(
    max_examples=2500,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Inputs that get as far as an ECDSA verify cost ~1 ms each: a smaller budget.
_FUZZ_SLOW = settings(_FUZZ, max_examples=800)

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=80)
    | st.sampled_from(["00" * 32, "left", "right", _NODE_PEM, "ce:1.1:00"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["left", "right", "x"]), inner, max_size=2)
    ),
    max_leaves=8,
)


def _check_json(value: Any) -> None:
    with contextlib.suppress(LedgerError):
        receipt.verify_json_receipt(value, _SERVICE_PEM)


def _check_cose(data: bytes) -> None:
    with contextlib.suppress(LedgerError):
        receipt.verify_cose_receipt(data, _SERVICE_PEM, bytes(32))


def test_fuzz_fixtures_are_valid_receipts() -> None:
    assert receipt.verify_json_receipt(_JSON, _SERVICE_PEM) == _ROOT
    receipt.verify_cose_receipt(_COSE, _SERVICE_PEM, bytes(32))


_PATHS: list[list[Any]] = [
    [],
    ["cert"],
    ["node_id"],
    ["signature"],
    ["proof"],
    ["proof", 0],
    ["proof", 0, "left"],
    ["leaf_components"],
    ["leaf_components", "write_set_digest"],
    ["leaf_components", "commit_evidence"],
    ["leaf_components", "claims_digest"],
    ["service_endorsements"],
    ["is_signature_transaction"],
    ["leaf"],
]


@_FUZZ_SLOW
@given(st.sampled_from(_PATHS), _json_values, st.booleans())
def test_mutated_json_receipts_raise_only_ledger_errors(
    path: list[Any], value: Any, delete: bool
) -> None:
    r = copy.deepcopy(_JSON)
    target: Any = r
    try:
        for step in path[:-1]:
            target = target[step]
        if path and delete and isinstance(target, dict):
            target.pop(path[-1], None)
        elif path:
            target[path[-1]] = value
        else:
            r = value
    except (KeyError, IndexError, TypeError):
        r = value
    _check_json(r)
    _check_json(json.dumps(r).encode())


@_FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_as_receipts_raise_only_ledger_errors(data: bytes) -> None:
    _check_json(data)
    _check_cose(data)
    _check_cose(b"\xd2\x84" + data)


@_FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_cose_receipts_raise_only_ledger_errors(edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(_COSE)
    for pos, byte, op in edits:
        at = pos % (len(data) + 1)
        if op == "x" and at < len(data):
            data[at] = byte
        elif op == "i":
            data.insert(at, byte)
        elif op == "d" and at < len(data):
            del data[at]
    _check_cose(bytes(data))


@_FUZZ_SLOW
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**65), 2**65)
        | st.binary(max_size=40)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.integers(-2, 3) | st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_hostile_inclusion_proofs_raise_only_ledger_errors(proof: Any) -> None:
    msg = cbor2.loads(_COSE).value
    for inclusion in (cbor2.dumps(proof), proof):
        msg[1] = {396: {-1: [inclusion]}}
        _check_cose(cbor2.dumps(cbor2.CBORTag(18, msg)))
