"""Fuzzing the COSE_Sign1 decoder: hostile bytes only ever raise DecodeError."""

from __future__ import annotations

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger import certs, cose
from charter.ledger.errors import DecodeError, VerificationError

_KEY = certs.new_key()
_VALID = cose.sign1(
    _KEY,
    {cose.HEADER_KID: b"kid", cose.GOV_MSG_TYPE: "proposal", cose.GOV_MSG_CREATED_AT: 1},
    b'{"actions":[]}',
)
_VALID_DETACHED = cose.sign1(
    _KEY,
    {15: {6: 1, 1: "iss", 2: "sub"}, "ccf.v1": {"txid": "2.10"}, 395: 2},
    bytes(32),
    detached=True,
    unprotected={396: {-1: [cbor2.dumps({1: [bytes(32), "ce:2.9:00", bytes(32)], 2: []})]}},
)
# Inputs fed to decode_sign1: 4000 x 3 random + 2000 x 2 mutated = 16,000, deterministic.
_FUZZ = settings(
    max_examples=4000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _decode_and_verify(data: bytes) -> None:
    try:
        msg = cose.decode_sign1(data, max_bytes=4096)
    except DecodeError:
        return
    try:
        cose.verify_sign1(msg, _KEY.public_key(), detached_payload=bytes(32))
    except VerificationError:
        return


@_FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    _decode_and_verify(data)
    _decode_and_verify(b"\xd2" + data)  # behind the Sign1 tag
    _decode_and_verify(b"\xd2\x84" + data)  # inside the 4-array


@settings(_FUZZ, max_examples=2000)
@given(
    st.sampled_from([_VALID, _VALID_DETACHED]),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_messages_raise_only_decode_or_verification_error(
    base: bytes, edits: list[tuple[int, int, str]]
) -> None:
    data = bytearray(base)
    for pos, byte, op in edits:
        at = pos % (len(data) + 1)
        if op == "x" and at < len(data):
            data[at] = byte
        elif op == "i":
            data.insert(at, byte)
        elif op == "d" and at < len(data):
            del data[at]
    _decode_and_verify(bytes(data))
    _decode_and_verify(bytes(data[: len(data) // 2]))
