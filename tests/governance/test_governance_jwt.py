"""JWT issuer and CA bundle actions: what they accept, what they refuse, what they write."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from gov_testkit import Network, start_network
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from charter.governance import handlers
from charter.governance import jwt as gov_jwt
from charter.ledger import certs

ISSUER = "https://idp.example/tenant"


@pytest.fixture()
def net() -> Network:
    return start_network()


def _ec_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {**ECAlgorithm.to_jwk(key, as_dict=True), "kid": kid}


def _refused_code(net: Network, actions: list[dict[str, Any]]) -> str:
    envelope = net.members[0].sign("proposal", {"actions": actions}, created_at=net.now_s)
    error = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    return error.code


def _state(net: Network, result: Any) -> str:
    return str(result.json["proposalState"])


def test_issuer_with_keys_is_recorded_and_removal_takes_its_keys(net: Network) -> None:
    result = net.pass_proposal(
        [{"name": "set_jwt_issuer", "args": {"issuer": ISSUER, "jwks": {"keys": [_ec_jwk("k1")]}}}]
    )
    assert _state(net, result) == "Accepted"
    tx = net.store.begin()
    assert gov_jwt.issuer_metadata(tx, ISSUER) == {"auto_refresh": False, "key_filter": "all"}
    assert [k["issuer"] for k in gov_jwt.signing_keys(tx, "k1")] == [ISSUER]

    net.pass_proposal([{"name": "remove_jwt_issuer", "args": {"issuer": ISSUER}}])
    tx = net.store.begin()
    assert gov_jwt.issuer_metadata(tx, ISSUER) is None
    assert gov_jwt.signing_keys(tx, "k1") == []


def test_set_keys_replaces_the_issuers_keys_only(net: Network) -> None:
    other = "https://other.example"
    net.pass_proposal(
        [
            {
                "name": "set_jwt_issuer",
                "args": {"issuer": ISSUER, "jwks": {"keys": [_ec_jwk("a")]}},
            },
            {"name": "set_jwt_issuer", "args": {"issuer": other, "jwks": {"keys": [_ec_jwk("a")]}}},
        ]
    )
    net.pass_proposal(
        [
            {
                "name": "set_jwt_public_signing_keys",
                "args": {"issuer": ISSUER, "jwks": {"keys": [_ec_jwk("b")]}},
            }
        ]
    )
    tx = net.store.begin()
    assert [k["issuer"] for k in gov_jwt.signing_keys(tx, "a")] == [other]
    assert [k["issuer"] for k in gov_jwt.signing_keys(tx, "b")] == [ISSUER]


@pytest.mark.parametrize(
    ("why", "args"),
    [
        ("not an https issuer", {"issuer": "http://idp.example"}),
        ("an issuer with a query", {"issuer": "https://idp.example/?x=1"}),
        (
            "an HMAC key",
            {"issuer": ISSUER, "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}},
        ),
        (
            "a key without kid",
            {"issuer": ISSUER, "jwks": {"keys": [{"kty": "EC", "crv": "P-256"}]}},
        ),
        ("auto_refresh without a CA bundle", {"issuer": ISSUER, "auto_refresh": True}),
    ],
)
def test_bad_issuers_are_refused_when_proposed(
    net: Network, why: str, args: dict[str, Any]
) -> None:
    assert _refused_code(net, [{"name": "set_jwt_issuer", "args": args}]) == (
        "ProposalFailedToValidate"
    ), why


def test_small_rsa_keys_and_duplicate_kids_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(ValueError, match="2048"):
        gov_jwt.parse_jwks({"keys": [{**RSAAlgorithm.to_jwk(small, as_dict=True), "kid": "s"}]})
    with pytest.raises(ValueError, match="twice"):
        gov_jwt.parse_jwks({"keys": [_ec_jwk("d"), _ec_jwk("d")]})
    with pytest.raises(ValueError, match="more than"):
        gov_jwt.parse_jwks({"keys": [_ec_jwk(str(i)) for i in range(gov_jwt.JWKS_KEYS_MAX + 1)]})


def test_issuer_naming_a_missing_bundle_fails_and_a_bundle_in_use_stays(net: Network) -> None:
    auto = {"issuer": ISSUER, "auto_refresh": True, "ca_cert_bundle_name": "ca"}
    failed = net.pass_proposal([{"name": "set_jwt_issuer", "args": auto}])
    assert _state(net, failed) == "Failed"
    assert gov_jwt.issuer_metadata(net.store.begin(), ISSUER) is None

    bundle = certs.cert_pem(certs.self_signed_cert(certs.new_key(), "IdP CA", ca=True))
    accepted = net.pass_proposal(
        [
            {"name": "set_ca_cert_bundle", "args": {"name": "ca", "cert_bundle": bundle}},
            {"name": "set_jwt_issuer", "args": auto},
        ]
    )
    assert _state(net, accepted) == "Accepted"
    assert _refused_code(net, [{"name": "remove_ca_cert_bundle", "args": {"name": "ca"}}]) == (
        "ProposalFailedToValidate"
    )
    assert (
        _refused_code(
            net,
            [{"name": "set_ca_cert_bundle", "args": {"name": "bad", "cert_bundle": "not a pem"}}],
        )
        == "ProposalFailedToValidate"
    )
