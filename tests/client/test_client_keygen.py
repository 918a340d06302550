"""keygen: identities that load, carry the right ids, and keep private keys private."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from charter.errors import IdentityError
from charter.identity import Identity
from charter.keygen import generate_identity


def test_keygen_writes_a_p384_identity_whose_id_is_the_cert_fingerprint(tmp_path: Path) -> None:
    r = generate_identity("member7", tmp_path)
    assert r.cert_path == tmp_path / "member7_cert.pem"
    assert r.key_path == tmp_path / "member7_privk.pem"
    cert = x509.load_pem_x509_certificate(r.cert_path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert r.id == hashlib.sha256(der).hexdigest() == cert.fingerprint(hashes.SHA256()).hex()
    key = serialization.load_pem_private_key(r.key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert Identity.load(r.cert_path, r.key_path).id == r.id
    assert cert.subject.rfc4514_string() == "CN=member7"


def test_private_keys_are_written_0600_and_certs_are_readable(tmp_path: Path) -> None:
    r = generate_identity("m", tmp_path, encryption_key=True)
    assert r.enc_priv_path is not None and r.enc_pub_path is not None
    for private in (r.key_path, r.enc_priv_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    for public in (r.cert_path, r.enc_pub_path):
        assert stat.S_IMODE(public.stat().st_mode) & 0o044


def test_encryption_key_pair_round_trips_rsa_oaep(tmp_path: Path) -> None:
    r = generate_identity("m", tmp_path, encryption_key=True)
    assert r.enc_priv_path is not None and r.enc_pub_path is not None
    private = serialization.load_pem_private_key(r.enc_priv_path.read_bytes(), None)
    public = serialization.load_pem_public_key(r.enc_pub_path.read_bytes())
    assert isinstance(private, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    assert public.key_size >= 2048
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private.decrypt(public.encrypt(b"share", oaep), oaep) == b"share"


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = generate_identity("u", tmp_path)
    with pytest.raises(IdentityError, match="already exists"):
        generate_identity("u", tmp_path)
    second = generate_identity("u", tmp_path, overwrite=True)
    assert second.id != first.id
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600


def test_keygen_rejects_names_that_would_escape_the_directory(tmp_path: Path) -> None:
    for bad in ("../evil", "a/b", "", "x" * 65):
        with pytest.raises(IdentityError, match="name"):
            generate_identity(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_identity_with_mismatched_key_is_rejected(tmp_path: Path) -> None:
    a = generate_identity("a", tmp_path)
    b = generate_identity("b", tmp_path)
    with pytest.raises(IdentityError, match="does not match"):
        Identity.load(a.cert_path, b.key_path)


def test_encrypted_and_non_ec_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    r = generate_identity("m", tmp_path)
    key = serialization.load_pem_private_key(r.key_path.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(IdentityError, match="encrypted"):
        Identity.load(r.cert_path, locked)
    rsa_path = tmp_path / "rsa.pem"
    rsa_path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IdentityError, match=r"not an EC key \(RSA\)"):
        Identity.load(r.cert_path, rsa_path)
