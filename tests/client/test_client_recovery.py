"""The member's side of recovery shares, offline: decrypting a share with the right key
only, and finding a member's encryption key in a network file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from charter.errors import IdentityError, InvalidInput
from charter.identity import Network
from charter.keygen import generate_identity
from charter.member import decrypt_share, load_encryption_key

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def test_a_share_decrypts_with_its_members_key_and_no_other(tmp_path: Path) -> None:
    mine = generate_identity("m0", tmp_path, encryption_key=True)
    other = generate_identity("m1", tmp_path, encryption_key=True)
    assert mine.enc_priv_path is not None and other.enc_priv_path is not None
    key = load_encryption_key(mine.enc_priv_path)
    share = bytes([1, 7]) + bytes(range(32))
    encrypted = key.public_key().encrypt(share, OAEP)
    assert decrypt_share(key, encrypted) == share
    with pytest.raises(InvalidInput):
        decrypt_share(load_encryption_key(other.enc_priv_path), encrypted)


def test_an_ecdsa_key_is_not_an_encryption_key(tmp_path: Path) -> None:
    ident = generate_identity("m0", tmp_path)
    with pytest.raises(IdentityError):
        load_encryption_key(ident.key_path)


def test_the_network_file_names_each_members_encryption_key(tmp_path: Path) -> None:
    doc = {
        "service_cert": "service_cert.pem",
        "members": [
            {"cert": "m0_cert.pem", "key": "m0_privk.pem", "encryption_key": "m0_enc_privk.pem"},
            {"cert": "m1_cert.pem", "key": "m1_privk.pem"},
        ],
    }
    path = tmp_path / "network.json"
    path.write_text(json.dumps(doc))
    network = Network.load(path)
    assert network.member_encryption_key(0) == tmp_path / "m0_enc_privk.pem"
    with pytest.raises(IdentityError, match="give --enc-key"):
        network.member_encryption_key(1)
    with pytest.raises(IdentityError, match="no member 2"):
        network.member_encryption_key(2)
