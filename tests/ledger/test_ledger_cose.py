"""COSE_Sign1: our encoder/decoder/verifier against CCF's own (ccf.cose, pycose, the CLI)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import ccf.cose
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.messages.sign1message import Sign1Message
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger import certs, cose
from charter.ledger.errors import DecodeError, VerificationError

CCF_LEDGER = SHARED_CCF_LEDGERS / "current"
CCF_COSE_SIGN1_CLI = Path(sys.executable).parent / "ccf_cose_sign1"


@pytest.fixture(scope="module")
def member() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = certs.new_key()
    return key, certs.cert_pem(certs.identity_cert(key, "member0"))


def ccf_validate(
    public_key: ec.EllipticCurvePublicKey, data: bytes, payload: bytes | None = None
) -> None:
    ccf.cose.validate_cose_sign1(public_key, data, payload)  # type: ignore[no-untyped-call]


def _gov_headers(cert_pem: str, msg_type: str = "proposal") -> dict[int | str, object]:
    return {
        cose.HEADER_KID: cose.kid_for_cert(certs.load_cert(cert_pem)),
        cose.GOV_MSG_TYPE: msg_type,
        cose.GOV_MSG_CREATED_AT: 1_700_000_000,
    }


@pytest.mark.parametrize(
    ("curve", "alg"),
    [
        (ec.SECP256R1(), cose.ALG_ES256),
        (ec.SECP384R1(), cose.ALG_ES384),
        (ec.SECP521R1(), cose.ALG_ES512),
    ],
)
def test_signed_message_round_trips_and_verifies_for_each_curve(
    curve: ec.EllipticCurve, alg: int
) -> None:
    key = ec.generate_private_key(curve)
    data = cose.sign1(key, {cose.HEADER_KID: b"k"}, b"hello")
    msg = cose.decode_sign1(data)
    assert msg.alg == alg
    assert msg.kid == b"k"
    assert msg.payload == b"hello"
    assert msg.raw == data
    assert cbor2.loads(data).tag == cose.COSE_SIGN1_TAG
    cose.verify_sign1(msg, key.public_key())


def test_detached_payload_is_nil_and_verifies_only_with_the_payload() -> None:
    key = certs.new_key()
    data = cose.sign1(key, {}, b"root" * 8, detached=True)
    msg = cose.decode_sign1(data)
    assert msg.payload is None
    cose.verify_sign1(msg, key.public_key(), detached_payload=b"root" * 8)
    with pytest.raises(VerificationError):
        cose.verify_sign1(msg, key.public_key())
    with pytest.raises(VerificationError):
        cose.verify_sign1(msg, key.public_key(), detached_payload=b"toor" * 8)


def test_message_from_ccf_create_cose_sign1_verifies_with_ours(
    member: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    key, cert_pem = member
    extra = {cose.GOV_MSG_TYPE: "ballot", cose.GOV_MSG_PROPOSAL_ID: "ab" * 32}
    extra[cose.GOV_MSG_CREATED_AT] = 1_700_000_001  # type: ignore[assignment]
    data = ccf.cose.create_cose_sign1(b'{"ballot": "approve"}', certs.key_pem(key), cert_pem, extra)
    msg = cose.decode_sign1(data)
    assert msg.payload == b'{"ballot": "approve"}'
    assert msg.protected[cose.GOV_MSG_PROPOSAL_ID] == "ab" * 32
    assert msg.kid == certs.cert_id(cert_pem).encode()
    cose.verify_sign1(msg, certs.load_cert(cert_pem))


def test_message_from_ccf_cose_sign1_cli_verifies_with_ours(
    tmp_path: Path, member: tuple[ec.EllipticCurvePrivateKey, str]
) -> None:
    key, cert_pem = member
    (tmp_path / "content.json").write_bytes(b'{"actions": []}')
    (tmp_path / "key.pem").write_text(certs.key_pem(key))
    (tmp_path / "cert.pem").write_text(cert_pem)
    out = subprocess.run(
        [
            str(CCF_COSE_SIGN1_CLI),
            "--content",
            str(tmp_path / "content.json"),
            "--signing-cert",
            str(tmp_path / "cert.pem"),
            "--signing-key",
            str(tmp_path / "key.pem"),
            "--ccf-gov-msg-type",
            "proposal",
            "--ccf-gov-msg-created-at",
            "2023-11-14T22:13:20+00:00",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    msg = cose.decode_sign1(out)
    assert msg.protected[cose.GOV_MSG_TYPE] == "proposal"
    assert msg.protected[cose.GOV_MSG_CREATED_AT] == 1_700_000_000
    assert msg.payload == b'{"actions": []}'
    public_key = certs.load_cert(cert_pem).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    cose.verify_sign1(msg, public_key)


def test_our_messages_verify_with_ccf_and_pycose(
    member: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    key, cert_pem = member
    embedded = cose.sign1(key, _gov_headers(cert_pem), b"payload")
    ccf_validate(key.public_key(), embedded)
    detached = cose.sign1(key, _gov_headers(cert_pem), b"x" * 32, detached=True)
    ccf_validate(key.public_key(), detached, payload=b"x" * 32)
    with pytest.raises(ValueError, match="invalid"):
        ccf_validate(key.public_key(), detached, payload=b"y" * 32)
    decoded = Sign1Message.decode(embedded)
    decoded.key = ccf.cose.from_cryptography_eckey_obj(key.public_key())
    assert decoded.verify_signature()


def test_protected_header_is_byte_identical_to_ccf_for_same_inputs(
    member: tuple[ec.EllipticCurvePrivateKey, str],
) -> None:
    key, cert_pem = member
    cases: list[tuple[str, dict[int | str, object]]] = [
        ("proposal", {}),
        ("ballot", {cose.GOV_MSG_PROPOSAL_ID: "12" * 32}),
        ("withdrawal", {cose.GOV_MSG_PROPOSAL_ID: "34" * 32}),
        ("ack", {}),
    ]
    for msg_type, extra in cases:
        headers: dict[int | str, object] = {cose.GOV_MSG_TYPE: msg_type, **extra}
        headers[cose.GOV_MSG_CREATED_AT] = 1_712_345_678
        theirs = ccf.cose.create_cose_sign1(b"{}", certs.key_pem(key), cert_pem, dict(headers))
        ours = cose.sign1(
            key, {cose.HEADER_KID: cose.kid_for_cert(certs.load_cert(cert_pem)), **headers}, b"{}"
        )
        assert cose.decode_sign1(ours).protected_bytes == cose.decode_sign1(theirs).protected_bytes


def test_real_ccf_cose_root_signatures_verify_with_service_cert() -> None:
    from ccf.ledger import Ledger

    service_cert = None
    checked = 0
    for chunk in Ledger([str(CCF_LEDGER)]):
        for tx in chunk:
            tables = tx.get_public_domain().get_tables()
            info = tables.get("public:ccf.gov.service.info")
            if info:
                service_cert = certs.load_cert(json.loads(info[bytes(8)])["cert"])
            cose_table = tables.get("public:ccf.internal.cose_signatures")
            if not cose_table:
                continue
            assert service_cert is not None
            root = bytes.fromhex(
                json.loads(tables["public:ccf.internal.signatures"][bytes(8)])["root"]
            )
            msg = cose.decode_sign1(base64.b64decode(json.loads(cose_table[bytes(8)])))
            assert msg.kid == cose.kid_for_public_key(service_cert.public_key())  # type: ignore[arg-type]
            assert msg.protected[cose.HEADER_VDS] == cose.VDS_CCF_LEDGER_SHA256
            cose.verify_sign1(msg, service_cert, detached_payload=root)
            with pytest.raises(VerificationError):
                cose.verify_sign1(msg, service_cert, detached_payload=bytes(32))
            checked += 1
    assert checked == 6


def test_any_tampered_part_fails_verification() -> None:
    key = certs.new_key()
    data = cose.sign1(key, {cose.GOV_MSG_TYPE: "proposal"}, b"payload")
    msg = cose.decode_sign1(data)
    tampered = [
        cose.Sign1(msg.protected, msg.protected_bytes, {}, b"payloaD", msg.signature, data),
        cose.Sign1(
            msg.protected,
            cbor2.dumps({1: -35, cose.GOV_MSG_TYPE: "ballot"}),
            {},
            msg.payload,
            msg.signature,
            data,
        ),
        cose.Sign1(
            msg.protected, msg.protected_bytes, {}, msg.payload, msg.signature[:-1] + b"\0", data
        ),
        cose.Sign1(msg.protected, msg.protected_bytes, {}, msg.payload, msg.signature[:-1], data),
        cose.Sign1(msg.protected, msg.protected_bytes, {}, msg.payload, bytes(96), data),
    ]
    for bad in tampered:
        with pytest.raises(VerificationError):
            cose.verify_sign1(bad, key.public_key())
    with pytest.raises(VerificationError):
        cose.verify_sign1(msg, certs.new_key().public_key())
    with pytest.raises(VerificationError, match="alg"):
        cose.verify_sign1(msg, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_unprotected_header_is_not_signed_and_can_be_replaced() -> None:
    key = certs.new_key()
    data = cose.sign1(key, {}, b"r" * 32, detached=True)
    replaced = cose.with_unprotected(data, {cose.HEADER_VDP: {cose.VDP_INCLUSION_PROOF: [b"p"]}})
    msg = cose.decode_sign1(replaced)
    assert msg.unprotected == {396: {-1: [b"p"]}}
    cose.verify_sign1(msg, key.public_key(), detached_payload=b"r" * 32)


def test_mismatched_alg_header_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="alg"):
        cose.sign1(certs.new_key(), {cose.HEADER_ALG: cose.ALG_ES256}, b"x")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), "tag"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), "array of 4"),
        (cbor2.dumps([b"", {}, b"", b""]) + b"\0", "trailing"),
        (cbor2.dumps([{}, {}, b"", b""]), "protected"),
        (cbor2.dumps([cbor2.dumps([1]), {}, b"", b""]), "not a map"),
        (cbor2.dumps([cbor2.dumps({1: -7}) + b"\0", {}, b"", b""]), "trailing"),
        (cbor2.dumps([cbor2.dumps({1.5: 1}), {}, b"", b""]), "label"),
        (cbor2.dumps([cbor2.dumps({4: "kid"}), {}, b"", b""]), "kid"),
        (cbor2.dumps([b"", [], b"", b""]), "not a map"),
        (cbor2.dumps([b"", {}, "text", b""]), "payload"),
        (cbor2.dumps([b"", {}, b"", None]), "signature"),
        (b"\x81" * 5000, "nests too deeply"),
        (b"\x9f\x40\x40\x40\x40\xff", "unsupported"),  # indefinite-length array
        (b"\xd2\xd2\x84\x40\xa0\x40\x40", "tag 18"),  # tag inside the tag
        (cbor2.dumps([b"", {}, b"", b""])[:-1], "truncated"),
        (cbor2.dumps([b"", {}, b"", b"\0" * 10])[:-1], "truncated"),
        (b"\x84\x40\xa0\x40\x5b" + b"\xff" * 8, "truncated"),
        (b"\x84\x40\xbb" + b"\x7f" * 8, "truncated"),
        (b"\x84\x40\xa0\x40\x5c", "unsupported"),
        (cbor2.dumps([b"", {}, b"", b""]) + b"\0", "trailing"),
        (cbor2.dumps([b"", {1: [0] * 20_000}, b"", b""]), "too many"),
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        cose.decode_sign1(data)


def test_semantic_tag_cpu_bombs_are_refused_before_cbor2_sees_them() -> None:
    # A rational (tag 30) of two 100 KB bignums makes cbor2 spend seconds in gcd.
    bomb = b"\xd8\x1e\x82" + (b"\xc2\x5a" + (100_000).to_bytes(4, "big") + b"\x7b" * 100_000) * 2
    for inner in (
        cbor2.dumps([cbor2.dumps({1: -35}), {}, b"", b""])[:-1] + bomb,
        b"\xd2\x84" + b"\x41\xa0" + b"\xa1\x01" + bomb + b"\x40\x40",
    ):
        with pytest.raises(DecodeError, match="tag 30"):
            cose.decode_sign1(inner)
    protected_with_bomb = cbor2.dumps([b"\xa1\x01" + bomb, {}, b"", b""])
    with pytest.raises(DecodeError, match="tag 30"):
        cose.decode_sign1(protected_with_bomb)


def test_oversized_message_is_rejected_before_parsing() -> None:
    data = cose.sign1(certs.new_key(), {}, b"x" * 2000)
    with pytest.raises(DecodeError, match="exceeds"):
        cose.decode_sign1(data, max_bytes=1000)


def test_untagged_sign1_is_accepted() -> None:
    key = certs.new_key()
    tagged = cbor2.loads(cose.sign1(key, {}, b"x"))
    msg = cose.decode_sign1(cbor2.dumps(tagged.value))
    cose.verify_sign1(msg, key.public_key())


def test_the_kid_of_a_signing_key_is_its_public_keys_kid_for_every_key() -> None:
    """The kid remembered per signing key is the one derived from its public key, and each
    key (the service key after a rekey, say) gets its own, never another key's."""
    keys = [certs.new_key() for _ in range(cose._SIGNING_KIDS_MAX + 3)]
    for _ in range(2):  # the second pass reads what the first remembered (or derives again)
        for key in keys:
            assert cose.kid_for_signing_key(key) == cose.kid_for_public_key(key.public_key())
    assert len(cose._SIGNING_KIDS) <= cose._SIGNING_KIDS_MAX
