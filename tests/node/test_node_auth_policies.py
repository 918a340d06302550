"""Authentication policies, policy × credential, on a node driven in-process (the logging
sample's endpoints, governance's real actions for users, members and JWT issuers).

Every policy admits exactly whom it should; every refusal answers its own error code, with
that code's one status (401 for a missing or unproven credential, 400 for a stale or replayed
COSE envelope, as governance answers them) and commits nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.node import Node
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import tables as gt
from charter.governance.actions import apply_action, parse_action
from charter.governance.effects import ActionContext
from charter.ledger import certs, cose

ISSUER = "https://idp.example"
OTHER_ISSUER = "https://other-idp.example"
AUDIENCE = "charter-logging"
NOW_S = 1_800_000_000


@dataclass
class Identity:
    key: Any
    pem: str

    @property
    def der(self) -> bytes:
        return certs.load_cert(self.pem).public_bytes(serialization.Encoding.DER)

    @property
    def id(self) -> str:
        return certs.cert_id(self.pem)


def _identity(name: str) -> Identity:
    key = certs.new_key()
    return Identity(key, certs.cert_pem(certs.identity_cert(key, name)))


@dataclass
class Service:
    node: Node
    clock: list[float]
    member: Identity
    user: Identity
    removed_user: Identity
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    other_rsa_key: rsa.RSAPrivateKey
    other_issuer_key: ec.EllipticCurvePrivateKey
    used: set[bytes] = field(default_factory=set)

    def drain(self) -> None:
        node = self.node
        node.settle()  # once per turn, as the runtime does
        while node.outbox:
            frames, node.outbox = node.outbox, []
            for frame in frames:
                if isinstance(frame, itf.WriteEntries):
                    node.durable(max(s for s, _ in frame.entries))

    def commit(self, write: Callable[[Any], None]) -> None:
        tx = self.node.store.begin()
        write(tx)
        self.node.commit_tx(tx)
        self.drain()

    def act(self, name: str, args: dict[str, Any]) -> None:
        ctx = ActionContext(proposal_id="p", now_s=int(self.clock[0]), merkle_root=bytes(32))
        self.commit(lambda tx: apply_action(tx, parse_action(name, args), ctx))

    def request(
        self,
        method: str,
        path: str,
        *,
        peer: Identity | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, Any] | None]:
        response = self.node.handle(
            method, path, "", headers or {}, body, peer.der if peer else None
        )
        self.drain()
        status = response.status  # type: ignore[union-attr]
        raw = response.body  # type: ignore[union-attr]
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None


def _jwk(public_key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    tmp = tmp_path_factory.mktemp("auth")
    member = _identity("member0")
    (tmp / "member0_cert.pem").write_text(member.pem)
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(tmp),
            "start": {"mode": "start", "members": [{"cert": str(tmp / "member0_cert.pem")}]},
        }
    )
    clock = [float(NOW_S)]
    node = Node(config, VirtualPlatform(tmp), load_app(config.app), clock_s=lambda: clock[0])
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    node.start_new_network(initial_members(config), None)
    service = Service(
        node,
        clock,
        member,
        _identity("user0"),
        _identity("user1"),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
    )
    service.drain()

    def open_and_activate(tx: Any) -> None:
        info = gt.member_info(tx, member.id)
        assert info is not None
        gt.put_json(tx, gt.MEMBERS_INFO, gt.id_key(member.id), {**info, "status": "Active"})
        status = gt.service_info(tx)
        assert status is not None
        gt.put_json(tx, gt.SERVICE_INFO, gt.SINGLETON_KEY, {**status, "status": "Open"})

    service.commit(open_and_activate)
    service.act("set_user", {"cert": service.user.pem})
    service.act("set_user", {"cert": service.removed_user.pem})
    service.act("remove_user", {"user_id": service.removed_user.id})
    service.act(
        "set_jwt_issuer",
        {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks": {
                "keys": [
                    _jwk(service.rsa_key.public_key(), "rsa-1"),
                    _jwk(service.ec_key.public_key(), "ec-1"),
                ]
            },
        },
    )
    service.act(
        "set_jwt_issuer",
        {
            "issuer": OTHER_ISSUER,
            "audience": AUDIENCE,
            "jwks": {"keys": [_jwk(service.other_issuer_key.public_key(), "other-1")]},
        },
    )
    return service


# ------------------------------------------------------------------ credentials


def _token(
    key: Any,
    *,
    kid: str = "rsa-1",
    alg: str = "RS256",
    iss: str = ISSUER,
    aud: str = AUDIENCE,
    exp: int = NOW_S + 600,
    nbf: int = NOW_S - 60,
    sub: str = "alice",
) -> str:
    claims = {"iss": iss, "aud": aud, "exp": exp, "nbf": nbf, "sub": sub}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: unsigned, or HMAC-signed with a public key."""
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW_S + 600, "nbf": NOW_S, "sub": "mallory"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _record(record_id: int, msg: str = "hello") -> bytes:
    return json.dumps({"id": record_id, "msg": msg}).encode()


def _user_envelope(
    signer: Identity, record_id: int, *, kid: str | None = None, age_s: int = 0
) -> bytes:
    return cose.sign1(
        signer.key,
        {4: (kid or signer.id).encode(), "ccf.msg.created_at": NOW_S - age_s},
        _record(record_id, "signed"),
    )


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    credential: Callable[[Service], dict[str, Any]]
    status: int
    code: str | None = None


def _cert(who: str) -> Callable[[Service], dict[str, Any]]:
    return lambda s: {"peer": getattr(s, who)}


def _jwt_of(make: Callable[[Service], str]) -> Callable[[Service], dict[str, Any]]:
    return lambda s: {"headers": _bearer(make(s))}


def _cose_of(make: Callable[[Service], bytes]) -> Callable[[Service], dict[str, Any]]:
    return lambda s: {"body": make(s), "headers": {"content-type": "application/cose"}}


def _public_pem(s: Service) -> bytes:
    return s.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


NONE: Callable[[Service], dict[str, Any]] = lambda s: {}  # noqa: E731

CASES = [
    # user_cert
    Case("user cert on a user endpoint", "POST", "/app/log/private", _cert("user"), 200),
    Case(
        "member cert on a user endpoint",
        "POST",
        "/app/log/private",
        _cert("member"),
        401,
        "UnknownUserCertificate",
    ),
    Case(
        "removed user's cert",
        "POST",
        "/app/log/private",
        _cert("removed_user"),
        401,
        "UnknownUserCertificate",
    ),
    Case("no credential at all", "POST", "/app/log/private", NONE, 401, "InvalidAuthentication"),
    # jwt
    Case("RS256 token", "POST", "/app/log/private/jwt", _jwt_of(lambda s: _token(s.rsa_key)), 200),
    Case(
        "ES256 token",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.ec_key, kid="ec-1", alg="ES256")),
        200,
    ),
    Case(
        "token for another audience",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.rsa_key, aud="another-service")),
        401,
        "TokenAudienceInvalid",
    ),
    Case(
        "expired token",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.rsa_key, exp=NOW_S - 3600, nbf=NOW_S - 7200)),
        401,
        "TokenExpired",
    ),
    Case(
        "token not valid yet",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.rsa_key, nbf=NOW_S + 3600, exp=NOW_S + 7200)),
        401,
        "TokenNotYetValid",
    ),
    Case(
        "unknown kid",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.rsa_key, kid="rsa-unknown")),
        401,
        "TokenKeyUnknown",
    ),
    Case(
        "alg none",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, None)),
        401,
        "TokenAlgorithmNotAllowed",
    ),
    Case(
        "HMAC token signed with the public key",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _forged({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, _public_pem(s))),
        401,
        "TokenAlgorithmNotAllowed",
    ),
    Case(
        "token signed by another key under a known kid",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.other_rsa_key)),
        401,
        "TokenSignatureInvalid",
    ),
    Case(
        "another issuer's token under this issuer's kid",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.other_issuer_key, kid="rsa-1", alg="ES256", iss=OTHER_ISSUER)),
        401,
        "TokenIssuerInvalid",
    ),
    Case(
        "ES256 token under an RSA kid",
        "POST",
        "/app/log/private/jwt",
        _jwt_of(lambda s: _token(s.ec_key, kid="rsa-1", alg="ES256")),
        401,
        "TokenAlgorithmNotAllowed",
    ),
    Case(
        "garbage bearer token",
        "POST",
        "/app/log/private/jwt",
        lambda s: {"headers": _bearer("not.a.jwt")},
        401,
        "InvalidTokenFormat",
    ),
    Case(
        "user cert on a jwt endpoint",
        "POST",
        "/app/log/private/jwt",
        _cert("user"),
        401,
        "InvalidAuthentication",
    ),
    # user_cose_sign1
    Case(
        "user's fresh COSE request",
        "POST",
        "/app/log/private/cose",
        _cose_of(lambda s: _user_envelope(s.user, 50)),
        200,
    ),
    Case(
        "user COSE envelope re-signed with another key",
        "POST",
        "/app/log/private/cose",
        _cose_of(lambda s: _user_envelope(_identity("thief"), 51, kid=s.user.id)),
        401,
        "InvalidSignature",
    ),
    Case(
        "stale user COSE request",
        "POST",
        "/app/log/private/cose",
        _cose_of(lambda s: _user_envelope(s.user, 52, age_s=3600)),
        400,
        "RequestExpired",
    ),
    Case(
        "removed user's COSE request",
        "POST",
        "/app/log/private/cose",
        _cose_of(lambda s: _user_envelope(s.removed_user, 53)),
        401,
        "UnknownUser",
    ),
    Case(
        "member's COSE envelope on a user endpoint",
        "POST",
        "/app/log/private/cose",
        _cose_of(lambda s: _user_envelope(s.member, 54)),
        401,
        "UnknownUser",
    ),
    Case(
        "JSON body on a COSE endpoint",
        "POST",
        "/app/log/private/cose",
        lambda s: {"body": _record(55)},
        401,
        "InvalidAuthentication",
    ),
    # any_cert and no authentication
    Case("member cert on any_cert", "GET", "/app/multi_auth", _cert("member"), 200),
    Case(
        "nobody on an unauthenticated endpoint",
        "POST",
        "/app/log/private/anonymous",
        lambda s: {"body": _record(60)},
        200,
    ),
    # all_of
    Case(
        "user cert and token on all_of",
        "GET",
        "/app/all_of_auth",
        lambda s: {"peer": s.user, "headers": _bearer(_token(s.rsa_key))},
        200,
    ),
    Case(
        "user cert without a token on all_of",
        "GET",
        "/app/all_of_auth",
        _cert("user"),
        401,
        "InvalidAuthentication",
    ),
    Case(
        "member cert and token on all_of",
        "GET",
        "/app/all_of_auth",
        lambda s: {"peer": s.member, "headers": _bearer(_token(s.rsa_key))},
        401,
        "UnknownUserCertificate",
    ),
    Case(
        "user cert and expired token on all_of",
        "GET",
        "/app/all_of_auth",
        lambda s: {"peer": s.user, "headers": _bearer(_token(s.rsa_key, exp=NOW_S - 3600))},
        401,
        "TokenExpired",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_policy_admits_exactly_whom_it_should(service: Service, case: Case) -> None:
    """A refusal has its own code and that code's status and commits nothing; an admission
    runs."""
    body_default = _record(1000 + CASES.index(case)) if case.method == "POST" else b""
    credential = case.credential(service)
    credential.setdefault("body", body_default)
    before = service.node.store.version
    status, answer = service.request(case.method, case.path, **credential)
    assert status == case.status, (case.name, answer)
    if case.code is not None:
        assert answer is not None and answer["error"]["code"] == case.code, answer
        assert service.node.store.version == before, "a refused request committed something"


def test_replayed_user_cose_request_is_refused_and_changes_nothing(service: Service) -> None:
    envelope = _user_envelope(service.user, 70)
    headers = {"content-type": "application/cose"}
    assert (
        service.request("POST", "/app/log/private/cose", headers=headers, body=envelope)[0] == 200
    )
    before = service.node.store.version
    status, answer = service.request(
        "POST", "/app/log/private/cose", headers=headers, body=envelope
    )
    assert (status, answer and answer["error"]["code"]) == (400, "RequestReplay")
    assert service.node.store.version == before


def test_all_of_exposes_each_identity(service: Service) -> None:
    status, answer = service.request(
        "GET",
        "/app/all_of_auth",
        peer=service.user,
        headers=_bearer(_token(service.rsa_key, sub="bob")),
    )
    assert status == 200 and answer is not None
    assert answer["policy"] == "all_of"
    assert answer["identities"]["user_cert"] == {
        "policy": "user_cert",
        "kind": "user",
        "id": service.user.id,
    }
    assert answer["identities"]["jwt"]["id"] == "bob"
    assert answer["identities"]["jwt"]["issuer"] == ISSUER


def test_jwt_caller_is_the_tokens_subject_and_issuer(service: Service) -> None:
    status, answer = service.request(
        "GET", "/app/multi_auth", headers=_bearer(_token(service.ec_key, kid="ec-1", alg="ES256"))
    )
    assert status == 200 and answer is not None
    assert (answer["policy"], answer["id"], answer["issuer"]) == ("jwt", "alice", ISSUER)


def test_removed_issuer_tokens_are_refused(service: Service) -> None:
    token = _token(service.other_issuer_key, kid="other-1", alg="ES256", iss=OTHER_ISSUER)
    status, answer = service.request("GET", "/app/multi_auth", headers=_bearer(token))
    assert (status, answer and answer["issuer"]) == (200, OTHER_ISSUER)
    service.act("remove_jwt_issuer", {"issuer": OTHER_ISSUER})
    status, answer = service.request(
        "POST", "/app/log/private/jwt", headers=_bearer(token), body=_record(80)
    )
    assert (status, answer and answer["error"]["code"]) == (401, "TokenKeyUnknown")


def test_a_certificates_admission_ends_when_governance_removes_it_and_returns_when_added(
    service: Service,
) -> None:
    """The frontend remembers whom a certificate is (a per-request lookup saved), but never
    past a change of the users' or members' maps: a removed user is refused at once, and
    the same certificate is admitted again once governance adds it back."""
    user = _identity("user-comes-and-goes")
    service.act("set_user", {"cert": user.pem})
    for _ in range(2):  # the second answer comes from what the first one remembered
        status, _answer = service.request("POST", "/app/log/private", peer=user, body=_record(90))
        assert status == 200
    service.act("remove_user", {"user_id": user.id})
    status, answer = service.request("POST", "/app/log/private", peer=user, body=_record(91))
    assert (status, answer and answer["error"]["code"]) == (401, "UnknownUserCertificate")
    service.act("set_user", {"cert": user.pem})
    status, _answer = service.request("POST", "/app/log/private", peer=user, body=_record(93))
    assert status == 200
