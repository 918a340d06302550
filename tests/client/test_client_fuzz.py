"""Whatever bytes an auditor or a service hands the client, it answers with one typed error."""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.auditor import verify_receipt_bytes
from charter.errors import CharterError, ReceiptInvalid, error_from_response
from charter.ledger import certs

SERVICE_PEM = certs.cert_pem(certs.service_cert(certs.new_key()))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
receipt_keys = st.sampled_from(
    ["cert", "node_id", "proof", "signature", "leaf_components", "service_endorsements",
     "is_signature_transaction", "leaf"]
)  # fmt: skip
receipt_like = st.dictionaries(receipt_keys, json_values, max_size=8)


def _only_receipt_invalid(data: bytes) -> None:
    try:
        verify_receipt_bytes(data, SERVICE_PEM)
    except ReceiptInvalid:
        return
    raise AssertionError("a random receipt verified")


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected_as_invalid_receipts(data: bytes) -> None:
    _only_receipt_invalid(data)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(receipt_like)
def test_receipt_shaped_json_is_rejected_as_invalid(receipt: dict[str, Any]) -> None:
    _only_receipt_invalid(json.dumps(receipt).encode())


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), json_values), min_size=4, max_size=4))
def test_cose_shaped_cbor_is_rejected_as_invalid(parts: list[Any]) -> None:
    _only_receipt_invalid(cbor2.dumps(cbor2.CBORTag(18, parts)))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(300, 599), json_values | st.binary(max_size=100))
def test_any_error_answer_becomes_one_line_typed_error(status: int, body: Any) -> None:
    err = error_from_response(status, body)
    assert isinstance(err, CharterError)
    assert err.status == status and err.code
    assert "\n" not in str(err) and len(err.message) <= 501
