"""Certificates: the shapes CCF's tooling accepts, ids, PEM round trips."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from pathlib import Path

import ccf.receipt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger import certs
from charter.ledger.errors import DecodeError


@pytest.fixture(scope="module")
def service() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = certs.new_key()
    return key, certs.self_signed_cert(key, "CCF Service", ca=True, days=30)


def test_new_key_is_p384() -> None:
    assert isinstance(certs.new_key().curve, ec.SECP384R1)


def test_service_cert_is_a_critical_ca_with_cert_signing_usage(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    _, cert = service
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)


def test_endorsed_node_cert_passes_ccf_chain_checks(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    service_key, service_cert = service
    node_key = certs.new_key()
    node_cert = certs.endorse_public_key(
        node_key.public_key(),
        "CCF Node",
        service_key,
        service_cert,
        san_ips=["127.0.0.1"],
        san_dns=["node0.example.com"],
        days=10,
    )
    ccf.receipt.check_endorsements(node_cert, service_cert, [])
    ccf.receipt.check_cert_chain(node_cert, service_cert, [])
    assert not node_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = node_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = node_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    service_ski = service_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == service_ski.value.digest
    san = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["node0.example.com"]
    assert node_cert.issuer == service_cert.subject


def test_node_cert_never_outlives_the_service_cert(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    service_key, service_cert = service
    node_cert = certs.endorse_public_key(
        certs.new_key().public_key(), "CCF Node", service_key, service_cert, days=3650
    )
    assert node_cert.not_valid_after_utc <= service_cert.not_valid_after_utc


def test_node_cert_from_other_service_fails_ccf_chain_check(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    other_key = certs.new_key()
    other_cert = certs.self_signed_cert(other_key, "CCF Service", ca=True, days=30)
    node_cert = certs.endorse_public_key(
        certs.new_key().public_key(), "CCF Node", other_key, other_cert, days=10
    )
    with pytest.raises(Exception):  # noqa: B017 - ccf raises cryptography's InvalidSignature
        ccf.receipt.check_endorsements(node_cert, service[1], [])


def test_endorse_from_csr_uses_the_csr_key(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    node_key = certs.new_key()
    csr = x509.load_pem_x509_csr(certs.node_csr(node_key).encode())
    node_cert = certs.endorse(csr, service[0], service[1], san_ips=["10.0.0.1"], days=5)
    assert node_cert.public_key() == node_key.public_key()
    ccf.receipt.check_cert_chain(node_cert, service[1], [])


def test_endorse_refuses_a_mismatched_issuer_key(
    service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    with pytest.raises(ValueError, match="issuer key"):
        certs.endorse_public_key(
            certs.new_key().public_key(), "CCF Node", certs.new_key(), service[1], days=5
        )


def _write_identity(
    tmp_path: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_text(certs.cert_pem(cert))
    key_path.write_text(certs.key_pem(key))
    return cert_path, key_path


def _tls_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> bytes | None:
    """Run a TLS handshake in memory; returns the client cert DER the server saw."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # a TLS 1.3 handshake needs 2-3 flights
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "handshake did not finish"
    return server.getpeercert(binary_form=True)


def test_identity_cert_authenticates_a_tls_client_to_a_node_endorsed_by_the_service(
    tmp_path: Path, service: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> None:
    user_key = certs.new_key()
    user = certs.identity_cert(user_key, "user0")
    assert not user.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = user.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    user.verify_directly_issued_by(user)
    node_key = certs.new_key()
    node = certs.endorse_public_key(
        node_key.public_key(), "CCF Node", service[0], service[1], san_ips=["127.0.0.1"], days=5
    )
    # Server: the node cert; trust anchors = registered user certs (DESIGN §3).
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_write_identity(tmp_path, "node", node_key, node))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=certs.cert_pem(user))
    # Client: pins the service cert, checks the node's IP SAN, presents its identity.
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=certs.cert_pem(service[1]))
    client_ctx.load_cert_chain(*_write_identity(tmp_path, "user", user_key, user))
    seen = _tls_handshake(client_ctx, server_ctx)
    assert seen == user.public_bytes(serialization.Encoding.DER)
    # An unregistered identity is refused by the server.
    stranger_key = certs.new_key()
    stranger = certs.identity_cert(stranger_key, "stranger")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=certs.cert_pem(service[1]))
    client_ctx.load_cert_chain(*_write_identity(tmp_path, "s", stranger_key, stranger))
    with pytest.raises(ssl.SSLError):
        _tls_handshake(client_ctx, server_ctx)


def test_ids_are_sha256_of_der() -> None:
    key = certs.new_key()
    cert = certs.identity_cert(key, "member0")
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certs.cert_id(cert) == hashlib.sha256(der).hexdigest()
    assert certs.cert_id(certs.cert_pem(cert)) == certs.cert_id(cert)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert certs.node_id(key.public_key()) == hashlib.sha256(spki).hexdigest()
    assert certs.node_id(key) == certs.node_id(key.public_key())


def test_real_ccf_node_id_matches_its_endorsed_cert() -> None:
    # From shared/ccf-ledgers/current, transaction 2.2 (node 9eef25…).
    import json

    from ccf.ledger import Ledger

    for chunk in Ledger([str(SHARED_CCF_LEDGERS / "current")]):
        for tx in chunk:
            sigs = tx.get_public_domain().get_tables().get("public:ccf.internal.signatures")
            if sigs:
                value = json.loads(sigs[bytes(8)])
                pub = certs.load_cert(value["cert"]).public_key()
                assert isinstance(pub, ec.EllipticCurvePublicKey)
                assert certs.node_id(pub) == value["node"]
                return
    raise AssertionError("no signature transaction found")


def test_pem_round_trips() -> None:
    key = certs.new_key()
    assert certs.load_key(certs.key_pem(key)).private_numbers() == key.private_numbers()
    cert = certs.identity_cert(key, "u")
    assert certs.load_cert(certs.cert_pem(cert)) == cert
    assert certs.pem(cert) == certs.cert_pem(cert)
    assert certs.load_public_key(certs.public_key_pem(key.public_key())) == key.public_key()


@pytest.mark.parametrize(
    "bad", [b"", "not a pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_bad_cert_pem_raises_decode_error(bad: bytes | str) -> None:
    with pytest.raises(DecodeError):
        certs.load_cert(bad)


def test_oversized_cert_pem_is_rejected() -> None:
    with pytest.raises(DecodeError, match="exceeds"):
        certs.load_cert(b"A" * (certs.MAX_CERT_PEM_BYTES + 1))


def test_bad_key_pem_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        certs.load_key("garbage")
    rsa_pem = certs.key_pem(certs.new_rsa_encryption_key())
    with pytest.raises(DecodeError, match="not ECDSA"):
        certs.load_key(rsa_pem)


def test_rsa_encryption_key_is_at_least_2048_bits() -> None:
    assert certs.new_rsa_encryption_key().key_size >= 2048
    with pytest.raises(ValueError):
        certs.new_rsa_encryption_key(1024)


def test_a_renewed_service_cert_keeps_key_subject_and_ski_and_verifies_old_endorsements() -> None:
    import datetime

    key = certs.new_key()
    old = certs.service_cert(key, "My Service", days=1)
    node_key = certs.new_key()
    old_node = certs.endorse(node_key.public_key(), key, old, san_ips=["127.0.0.1"], days=1)
    start = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    new = certs.renew_service_cert(key, old, days=30, valid_from=start)
    assert new.public_key() == key.public_key() and new.subject == old.subject
    assert new.not_valid_before_utc == start
    assert new.not_valid_after_utc == start + datetime.timedelta(days=30)
    ski = x509.SubjectKeyIdentifier
    assert (
        new.extensions.get_extension_for_class(ski).value
        == old.extensions.get_extension_for_class(ski).value
    )
    # ccf's own chain check: a node cert endorsed under the old one verifies against the new.
    ccf.receipt.check_endorsements(old_node, new, [])
    new_node = certs.endorse(node_key.public_key(), key, new, days=365, valid_from=start)
    ccf.receipt.check_endorsements(new_node, old, [])
    # A node certificate never outlives the service certificate that endorsed it.
    assert new_node.not_valid_after_utc == new.not_valid_after_utc
    with pytest.raises(ValueError, match="does not match"):
        certs.renew_service_cert(certs.new_key(), old, days=1)
