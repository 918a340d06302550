"""Root signatures and signature-transaction tables, checked against ccf and a real ledger."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from typing import Any

import cbor2
import ccf.receipt
import pytest
from ccf.ledger import BaseValidator, Ledger
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger import certs, cose, signatures
from charter.ledger.errors import DecodeError, VerificationError

CCF_LEDGER = SHARED_CCF_LEDGERS / "current"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def service() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = certs.new_key()
    return key, certs.self_signed_cert(key, "CCF Service", ca=True, days=30)


@pytest.fixture(scope="module")
def node(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = certs.new_key()
    cert = certs.endorse_public_key(
        key.public_key(), "CCF Node", service[0], service[1], san_ips=["127.0.0.1"], days=30
    )
    return key, cert


def _ccf_verify_cose_root(service_cert_pem: str, root: bytes, data: bytes) -> None:
    BaseValidator._verify_root_cose_signature(service_cert_pem, root, data)  # type: ignore[no-untyped-call]


def _real_signature_txs() -> list[dict[str, Any]]:
    """Per signature tx of the real CCF ledger: signatures value, cose value, service cert."""
    found = []
    service_cert_pem = None
    for chunk in Ledger([str(CCF_LEDGER)]):
        for tx in chunk:
            tables = tx.get_public_domain().get_tables()
            info = tables.get("public:ccf.gov.service.info")
            if info:
                service_cert_pem = json.loads(info[bytes(8)])["cert"]
            if "public:ccf.internal.signatures" in tables:
                found.append(
                    {
                        "sig": tables["public:ccf.internal.signatures"][bytes(8)],
                        "cose": tables["public:ccf.internal.cose_signatures"][bytes(8)],
                        "service_cert": service_cert_pem,
                    }
                )
    assert len(found) == 6
    return found


def test_root_signature_verifies_with_ours_and_ccf(
    node: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = node
    sig = signatures.sign_root(key, ROOT)
    signatures.verify_root(cert, ROOT, sig)
    signatures.verify_root(key.public_key(), ROOT, sig)
    signatures.verify_root(certs.cert_pem(cert), ROOT, sig)
    ccf.receipt.verify(ROOT.hex(), base64.b64encode(sig).decode(), cert)
    BaseValidator._verify_root_signature(certs.cert_pem(cert).encode(), ROOT, sig)


def test_root_signature_fails_for_other_root_key_or_bytes(
    node: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = node
    sig = signatures.sign_root(key, ROOT)
    bad_cases: list[tuple[Any, bytes, bytes]] = [
        (cert, hashlib.sha256(b"other").digest(), sig),
        (certs.new_key().public_key(), ROOT, sig),
        (cert, ROOT, sig[:-1] + bytes([sig[-1] ^ 1])),
        (cert, ROOT, b"not der"),
        (cert, ROOT, b""),
        (cert, ROOT[:31], sig),
        (cert, ROOT, b"\x30" * 500),
    ]
    for key_or_cert, root, bad_sig in bad_cases:
        with pytest.raises(VerificationError):
            signatures.verify_root(key_or_cert, root, bad_sig)


def test_real_ccf_signature_values_parse_and_verify() -> None:
    for tx in _real_signature_txs():
        parsed = signatures.parse_signature(tx["sig"])
        assert parsed.cert_pem is not None
        signatures.verify_root(parsed.cert_pem, parsed.root, parsed.sig)
        cose_bytes = signatures.parse_cose_signature(tx["cose"])
        protected = signatures.verify_cose_root_signature(
            cose_bytes, tx["service_cert"], parsed.root
        )
        assert protected[cose.HEADER_CCF_V1] == {"txid": f"{parsed.view}.{parsed.seqno}"}
        # Our serialisation of the parsed value is byte-identical to CCF's.
        assert (
            signatures.signature_value(
                node_id=parsed.node_id,
                node_cert_pem=parsed.cert_pem,
                root=parsed.root,
                sig=parsed.sig,
                seqno=parsed.seqno,
                view=parsed.view,
            )
            == tx["sig"]
        )


def test_cose_root_signature_has_ccf_header_layout_and_verifies_with_ccf(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = service
    data = signatures.cose_root_signature(key, ROOT, txid="2.14", iat=1_743_112_494)
    _ccf_verify_cose_root(certs.cert_pem(cert), ROOT, data)
    with pytest.raises(Exception, match="Signature verification failed"):
        _ccf_verify_cose_root(certs.cert_pem(cert), bytes(32), data)
    ours = cose.decode_sign1(data)
    assert ours.payload is None and ours.unprotected == {}
    real = cose.decode_sign1(signatures.parse_cose_signature(_real_signature_txs()[-1]["cose"]))

    def layout(header: dict[Any, Any]) -> list[Any]:
        return [(k, layout(v) if isinstance(v, dict) else type(v)) for k, v in header.items()]

    assert layout(ours.protected) == layout(real.protected)
    # Nothing configured: CCF's defaults, an empty issuer and subject.
    assert ours.protected[cose.HEADER_CWT_CLAIMS] == {6: 1_743_112_494, 1: "", 2: ""}
    assert ours.kid == cose.kid_for_public_key(key.public_key())
    signatures.verify_cose_root_signature(data, cert, ROOT)
    with pytest.raises(VerificationError, match="kid"):
        signatures.verify_cose_root_signature(data, certs.new_key().public_key(), ROOT)
    with pytest.raises(VerificationError):
        signatures.verify_cose_root_signature(data, cert, bytes(32))


def test_configured_issuer_and_subject_are_written_as_ccf_writes_them(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = service
    real = cose.decode_sign1(signatures.parse_cose_signature(_real_signature_txs()[-1]["cose"]))
    real_claims = real.protected[cose.HEADER_CWT_CLAIMS]
    data = signatures.cose_root_signature(
        key,
        ROOT,
        txid="2.14",
        iat=real_claims[6],
        issuer=real_claims[1],
        subject=real_claims[2],
    )
    ours = cose.decode_sign1(data)
    assert real_claims[1] == "cts-canary.confidential-ledger.azure.com"
    # Same claims, same order (cbor2 keeps map order), as the real service's signature.
    assert list(ours.protected[cose.HEADER_CWT_CLAIMS].items()) == list(real_claims.items())
    _ccf_verify_cose_root(certs.cert_pem(cert), ROOT, data)


@pytest.mark.parametrize(
    "issuer",
    ["127.0.0.1:8000", "localhost", "service.example.com", "scitt.example.org:443", "[::1]:8443"],
)
def test_a_host_or_host_and_port_is_an_issuer(issuer: str) -> None:
    assert signatures.check_cose_issuer(issuer) == issuer


@pytest.mark.parametrize(
    "issuer",
    [
        "",
        "https://scitt.example.org",
        "scitt.example.org/path",
        "user@host",
        "two words",
        "host:0",
        "host:65536",
        "host:",
        ":443",
        "-leading.example.org",
        "a..b",
        "::1",
        "[::1",
        "[not-ipv6]:1",
        "x" * 64 + ".org",
        "a." * 130 + "org",
    ],
)
def test_anything_else_is_not_an_issuer(issuer: str) -> None:
    with pytest.raises(ValueError):
        signatures.check_cose_issuer(issuer)


def test_a_subject_is_bounded_printable_text() -> None:
    assert signatures.check_cose_subject("scitt.ccf.signature.v1") == "scitt.ccf.signature.v1"
    for bad in ["", "x" * 257, "line\nbreak"]:
        with pytest.raises(ValueError):
            signatures.check_cose_subject(bad)


def test_cose_signatures_config_round_trips_and_bad_values_raise_decode_error() -> None:
    config = signatures.CoseSignaturesConfig("127.0.0.1:8000", "scitt.ccf.signature.v1")
    value = signatures.cose_signatures_config_value(config)
    assert json.loads(value) == {"issuer": "127.0.0.1:8000", "subject": "scitt.ccf.signature.v1"}
    assert signatures.parse_cose_signatures_config(value) == config
    for bad in [
        b"",
        b"[]",
        b'{"issuer": "a.org"}',
        b'{"issuer": "a.org", "subject": "s", "extra": 1}',
        b'{"issuer": "https://a.org", "subject": "s"}',
        b'{"issuer": 7, "subject": "s"}',
        b'{"issuer": "a.org", "subject": ""}',
        b'{"issuer": "a.org", "subject": "' + b"s" * 5000 + b'"}',
    ]:
        with pytest.raises(DecodeError):
            signatures.parse_cose_signatures_config(bad)


def test_cose_root_signature_without_vds_is_rejected(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = service
    data = cose.sign1(
        key, {cose.HEADER_KID: cose.kid_for_public_key(key.public_key())}, ROOT, detached=True
    )
    with pytest.raises(VerificationError, match="vds"):
        signatures.verify_cose_root_signature(data, cert, ROOT)


def test_signature_tables_are_ccf_shaped(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    node: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    node_key, node_cert = node
    sig = signatures.sign_root(node_key, ROOT)
    cose_sig = signatures.cose_root_signature(service[0], ROOT, txid="3.42", iat=1)
    nid = certs.node_id(node_key.public_key())
    tables = signatures.signature_tables(
        node_id=nid,
        node_cert_pem=certs.cert_pem(node_cert),
        root=ROOT,
        sig=sig,
        seqno=42,
        view=3,
        cose_sign1=cose_sig,
        tree_bytes=b"\x00" * 16,
    )
    assert set(tables) == {
        "public:ccf.internal.signatures",
        "public:ccf.internal.cose_signatures",
        "public:ccf.internal.tree",
    }
    assert all(list(t) == [bytes(8)] for t in tables.values())
    raw = tables["public:ccf.internal.signatures"][bytes(8)]
    as_json = json.loads(raw)
    assert list(as_json) == sorted(as_json)
    assert json.dumps(as_json, separators=(",", ":"), sort_keys=True).encode() == raw
    assert as_json["commit_seqno"] == 0 and as_json["hashed_nonce"] == "0" * 64
    parsed = signatures.parse_signature(raw)
    assert (parsed.node_id, parsed.root, parsed.sig, parsed.seqno, parsed.view) == (
        nid,
        ROOT,
        sig,
        42,
        3,
    )
    # What ccf.ledger.LedgerValidator does with the two signature tables.
    BaseValidator._verify_root_signature(
        as_json["cert"].encode(), bytes.fromhex(as_json["root"]), base64.b64decode(as_json["sig"])
    )
    cose_value = tables["public:ccf.internal.cose_signatures"][bytes(8)]
    _ccf_verify_cose_root(
        certs.cert_pem(service[1]), ROOT, base64.b64decode(json.loads(cose_value))
    )
    assert signatures.parse_cose_signature(cose_value) == cose_sig
    assert tables["public:ccf.internal.tree"][bytes(8)] == b"\x00" * 16


def _sig_json(**overrides: Any) -> bytes:
    value: dict[str, Any] = {
        "node": "ab" * 32,
        "root": "cd" * 32,
        "sig": base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode(),
        "seqno": 5,
        "view": 2,
    }
    for k, v in overrides.items():
        if v is None:
            value.pop(k)
        else:
            value[k] = v
    return json.dumps(value).encode()


def test_minimal_signature_value_parses() -> None:
    parsed = signatures.parse_signature(_sig_json())
    assert parsed.cert_pem is None and parsed.commit_seqno == 0


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b"not json", "signature"),
        (b"[1]", "signature"),
        (b"[" * 100_000, "signature"),
        (b" " * (signatures.MAX_SIGNATURE_VALUE_BYTES + 1), "signature"),
        (_sig_json(node=None), "node"),
        (_sig_json(node="AB" * 32), "node"),
        (_sig_json(root="cd" * 31), "root"),
        (_sig_json(root=5), "root"),
        (_sig_json(sig="***"), "sig"),
        (_sig_json(sig=""), "sig"),
        (_sig_json(sig="A" * 1000), "sig"),
        (_sig_json(seqno=True), "seqno"),
        (_sig_json(seqno=-1), "seqno"),
        (_sig_json(seqno=2**63), "seqno"),
        (_sig_json(view="2"), "view"),
        (_sig_json(view=None), "view"),
        (_sig_json(cert=7), "cert"),
        (_sig_json(hashed_nonce="x"), "hashed_nonce"),
        (_sig_json(commit_seqno=1.5), "commit_seqno"),
    ],
)
def test_malformed_signature_values_raise_decode_error(value: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        signatures.parse_signature(value)
    assert info.value.field == field


@pytest.mark.parametrize("value", [b'"not base64!"', b"12", b"nope", b'"' + b"A" * 40_000 + b'"'])
def test_malformed_cose_signature_values_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        signatures.parse_cose_signature(value)


def test_txid_must_be_view_dot_seqno(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    for bad in ["2", "2.x", "a.b", "02.3", "2.3.4", ""]:
        with pytest.raises(ValueError, match="txid"):
            signatures.cose_root_signature(service[0], ROOT, txid=bad, iat=0)


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["node", "root", "sig", "seqno", "view", "cert", "x"]),
                    inner,
                    max_size=7,
                )
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_signature_parsers_raise_only_decode_error(value: bytes) -> None:
    for parse in (signatures.parse_signature, signatures.parse_cose_signature):
        with contextlib.suppress(DecodeError):
            parse(value)


def test_cbor_of_real_cose_signature_is_tagged_sign1() -> None:
    raw = signatures.parse_cose_signature(_real_signature_txs()[0]["cose"])
    assert cbor2.loads(raw).tag == cose.COSE_SIGN1_TAG
