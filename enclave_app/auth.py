"""Authentication policies: who is calling an endpoint, under the policies it declares.

Pure: `authenticate` reads the transaction, the TLS peer certificate, the request headers and
body and the clock it is given, and returns the caller or raises `AuthFailure` (always 401,
each reason with its own code). It never writes; a COSE-signed request is recorded against
replay by `record_signed` only once its transaction commits, so a refused request changes
nothing.

Policies (CCF's names; an endpoint lists one or more and any of them admits the caller):

- ``user_cert`` / ``member_cert``: the TLS client certificate of a registered user / member.
- ``any_cert``: any TLS client certificate (the node's TLS context only completes handshakes
  with the certificates governance registered, so in practice a user's or a member's).
- ``jwt``: ``Authorization: Bearer <JWT>`` signed by a key of an issuer registered by
  governance (`charter.governance.jwt`): algorithm RS*/PS*/ES* matching the key (``none`` and
  HMAC are refused before anything else), ``kid`` known, signature, ``iss`` = the key's
  issuer, ``aud`` among the issuer's audiences, ``exp`` and ``nbf`` present and within
  `JWT_LEEWAY_S` of the node's clock.
- ``user_cose_sign1`` / ``member_cose``: the body is a COSE_Sign1 envelope signed by a
  registered user / an active member, checked by governance's one verifier
  (`charter.governance.requests.verify_app_request`: kid, signature, ``created_at`` window,
  replay). The handler reads the signed payload.
- ``none`` (or an empty list): anyone, unauthenticated.
- `all_of(...)`: every listed policy must admit the caller; the caller's ``identities`` holds
  each one's.

Errors: a request that presents no credential any listed policy looks at gets
``InvalidAuthentication``; one that presents a credential which is refused gets the code of
that refusal (the first such, in the order the endpoint lists its policies).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from charter.enclave_app.app import COSE_POLICIES, AllOf, Caller
from charter.enclave_app.kv import Tx
from charter.governance import jwt as gov_jwt
from charter.governance import requests as gov_requests
from charter.governance import tables as gt
from charter.governance.errors import STATUS_BY_CODE, GovernanceError

LOG = logging.getLogger(__name__)

# How far a token's exp/nbf may be off the node's clock (clocks of IdPs and hosts drift).
JWT_LEEWAY_S = 30
# A bearer token with a few dozen claims is ~2 KiB; anything far bigger is not a token.
TOKEN_BYTES_MAX = 16 * 1024
# Asymmetric JWS algorithms, by the key type they need. `none` and HS* are absent on purpose:
# a token is never accepted unsigned, nor checked as an HMAC keyed with a public key.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
COSE_CONTENT_TYPE = "application/cose"
COSE_SIGN1_TAG_BYTE = 0xD2  # CBOR tag 18, the first byte of a tagged COSE_Sign1


class AuthFailure(Exception):
    """A refused caller, answered with the status of ``code`` in `STATUS_BY_CODE` (401 for a
    missing or unproven credential; a COSE envelope's other refusals keep the status
    governance answers them with). ``presented``: the request carried the kind of credential
    the policy looks at (else it simply did not try that policy)."""

    def __init__(self, message: str, *, code: str, presented: bool = True) -> None:
        assert code in STATUS_BY_CODE, f"error code {code!r} has no row in STATUS_BY_CODE"
        super().__init__(message)
        self.code = code
        self.message = message
        self.presented = presented

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """An admitted caller, the body and headers the handler gets (a COSE policy unwraps the
    signed payload, declared JSON), and the signed request to record once committed."""

    caller: Caller
    body: bytes
    headers: Mapping[str, str]
    signed: gov_requests.SignedRequest | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """What the policies look at."""

    peer_der: bytes | None
    headers: Mapping[str, str]
    body: bytes
    now_s: int
    cose_policy: gov_requests.RequestPolicy = field(default=gov_requests.DEFAULT_POLICY)
    # A user's `users.info` data: (tx, user id, table key) -> data (the frontend caches it).
    user_data: Callable[[Tx, str, bytes], Any] | None = None

    def data_of_user(self, tx: Tx, user_id: str) -> Any:
        key = gt.id_key(user_id)
        if self.user_data is not None:
            return self.user_data(tx, user_id, key)
        info = tx.get(gt.USERS_INFO, key)
        return gt.load_json(info, what="user info") if info else {}

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None


_Result = tuple[Caller, gov_requests.SignedRequest | None]


def authenticate(
    policies: tuple[str | AllOf, ...],
    tx: Tx,
    *,
    peer_der: bytes | None,
    headers: Mapping[str, str],
    body: bytes,
    now_s: int,
    cose_policy: gov_requests.RequestPolicy = gov_requests.DEFAULT_POLICY,
    user_data: Callable[[Tx, str, bytes], Any] | None = None,
) -> Authenticated:
    """The caller under ``policies`` (any of them), or raise `AuthFailure`."""
    request = Request(peer_der, headers, body, now_s, cose_policy, user_data)
    failures: list[AuthFailure] = []
    for policy in policies:
        if policy == "none":
            continue  # the fallback, once every other policy has had its chance
        try:
            if isinstance(policy, AllOf):
                caller, signed = _all_of(policy, tx, request)
            else:
                caller, signed = _POLICIES[policy](tx, request)
        except AuthFailure as failure:
            failures.append(failure)
            continue
        return _admitted(caller, signed, request)
    if "none" in policies:
        return Authenticated(Caller("anonymous", "", policy="none"), body, headers)
    refused = next((f for f in failures if f.presented), None)
    if refused is not None:
        raise refused
    raise AuthFailure(
        "No credential for this endpoint's policies: " + "; ".join(f.message for f in failures),
        code="InvalidAuthentication",
        presented=False,
    )


def record_signed(
    tx: Tx,
    authenticated: Authenticated,
    *,
    now_s: int,
    cose_policy: gov_requests.RequestPolicy = gov_requests.DEFAULT_POLICY,
) -> None:
    """Record a COSE-signed request against replay, in the transaction it committed with."""
    if authenticated.signed is not None:
        gov_requests.record_request(tx, authenticated.signed, now_s=now_s, policy=cose_policy)


def _admitted(
    caller: Caller, signed: gov_requests.SignedRequest | None, request: Request
) -> Authenticated:
    if signed is None:
        return Authenticated(caller, request.body, request.headers)
    # The signed payload is what the endpoint reads; the envelope's type is COSE.
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
    headers["content-type"] = "application/json"
    return Authenticated(caller, signed.payload, headers, signed)


def _all_of(policy: AllOf, tx: Tx, request: Request) -> _Result:
    identities: dict[str, Caller] = {}
    signed: gov_requests.SignedRequest | None = None
    for name in policy.policies:
        try:
            caller, signed_here = _POLICIES[name](tx, request)
        except AuthFailure as failure:
            raise AuthFailure(
                f"all_of: {name}: {failure.message}", code=failure.code, presented=failure.presented
            ) from None
        identities[name] = caller
        signed = signed_here or signed
    first = identities[policy.policies[0]]
    caller = Caller("all_of", first.id, first.cert_pem, policy="all_of", identities=identities)
    return caller, signed


# ------------------------------------------------------------------ certificates


def _peer(request: Request) -> tuple[str, bytes]:
    if request.peer_der is None:
        raise AuthFailure(
            "no TLS client certificate", code="MissingClientCertificate", presented=False
        )
    # An identity's id is the SHA-256 of its certificate's DER: no parsing needed.
    cert_id = hashlib.sha256(request.peer_der).hexdigest()
    return cert_id, gt.id_key(cert_id)


def _user_cert(tx: Tx, request: Request) -> _Result:
    cert_id, key = _peer(request)
    pem = tx.get(gt.USERS_CERTS, key)
    if pem is None:
        what = "a member's" if tx.get(gt.MEMBERS_CERTS, key) is not None else "an unknown"
        raise AuthFailure(
            f"the client certificate is {what}, not a user's", code="UnknownUserCertificate"
        )
    data = request.data_of_user(tx, cert_id)
    return Caller("user", cert_id, pem.decode(), data, policy="user_cert"), None


def _member_cert(tx: Tx, request: Request) -> _Result:
    cert_id, key = _peer(request)
    pem = tx.get(gt.MEMBERS_CERTS, key)
    if pem is None:
        raise AuthFailure(
            "the client certificate is not a member's", code="UnknownMemberCertificate"
        )
    return Caller("member", cert_id, pem.decode(), policy="member_cert"), None


def _any_cert(tx: Tx, request: Request) -> _Result:
    cert_id, _ = _peer(request)
    assert request.peer_der is not None
    try:
        pem = x509.load_der_x509_certificate(request.peer_der).public_bytes(
            serialization.Encoding.PEM
        )
    except ValueError:
        raise AuthFailure(
            "the client certificate does not parse", code="InvalidClientCertificate"
        ) from None
    return Caller("cert", cert_id, pem.decode(), policy="any_cert"), None


# ------------------------------------------------------------------ COSE-signed requests


def _cose(signer: gov_requests.SignerKind, policy_name: str) -> Callable[[Tx, Request], _Result]:
    def check(tx: Tx, request: Request) -> _Result:
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != COSE_CONTENT_TYPE and (
            not request.body or request.body[0] != COSE_SIGN1_TAG_BYTE
        ):
            raise AuthFailure(
                "the body is not a COSE_Sign1", code="MissingCoseSign1", presented=False
            )
        try:
            signed = gov_requests.verify_app_request(
                tx, request.body, signer=signer, now_s=request.now_s, policy=request.cose_policy
            )
        except GovernanceError as exc:
            raise AuthFailure(exc.message, code=exc.code) from None
        data = request.data_of_user(tx, signed.member_id) if signer == "user" else {}
        caller = Caller(signer, signed.member_id, signed.cert_pem, data, policy=policy_name)
        return caller, signed

    return check


# ------------------------------------------------------------------ JWT


def _jwt(tx: Tx, request: Request) -> _Result:
    authorization = request.header("authorization")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure(
            "no Authorization: Bearer token", code="MissingBearerToken", presented=False
        )
    token = token.strip()
    if len(token) > TOKEN_BYTES_MAX:
        raise AuthFailure(f"the token exceeds {TOKEN_BYTES_MAX} bytes", code="InvalidTokenFormat")
    try:
        header = pyjwt.get_unverified_header(token)
        unverified = pyjwt.decode(token, options={"verify_signature": False})
    except pyjwt.InvalidTokenError as exc:
        raise AuthFailure(f"not a JWT: {type(exc).__name__}", code="InvalidTokenFormat") from None
    alg = header.get("alg")
    if alg not in RSA_ALGORITHMS and alg not in EC_ALGORITHMS:
        raise AuthFailure(
            f"alg {alg!r} is not an allowed asymmetric algorithm", code="TokenAlgorithmNotAllowed"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthFailure("the token header names no kid", code="TokenKidMissing")
    entries = gov_jwt.signing_keys(tx, kid)
    if not entries:
        raise AuthFailure("no signing key is registered under this kid", code="TokenKeyUnknown")
    claimed_issuer = unverified.get("iss")
    entry = next((e for e in entries if e.get("issuer") == claimed_issuer), None)
    if entry is None:
        raise AuthFailure("iss is not the issuer of the token's key", code="TokenIssuerInvalid")
    issuer = str(entry["issuer"])
    metadata = gov_jwt.issuer_metadata(tx, issuer)
    if metadata is None:
        raise AuthFailure("the token's issuer is not registered", code="TokenIssuerInvalid")
    key = serialization.load_pem_public_key(entry["public_key"].encode())
    if not _alg_fits_key(alg, key):
        raise AuthFailure(f"alg {alg} does not fit the kid's key", code="TokenAlgorithmNotAllowed")
    audiences = gov_jwt.audiences(metadata)
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token,
            key=key,  # type: ignore[arg-type]
            algorithms=[alg],
            audience=audiences or None,
            issuer=issuer,
            # exp/nbf against the node's clock below, not the process's.
            options={
                "require": ["exp", "nbf", "iss"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except pyjwt.InvalidSignatureError:
        raise AuthFailure(
            "the token's signature does not verify", code="TokenSignatureInvalid"
        ) from None
    except pyjwt.InvalidAudienceError:
        raise AuthFailure(
            "aud is not this service's audience", code="TokenAudienceInvalid"
        ) from None
    except pyjwt.InvalidIssuerError:
        raise AuthFailure(
            "iss is not the issuer of the token's key", code="TokenIssuerInvalid"
        ) from None
    except pyjwt.MissingRequiredClaimError as exc:
        raise AuthFailure(
            f"the token lacks the claim {exc.claim}", code="TokenClaimMissing"
        ) from None
    except pyjwt.InvalidTokenError as exc:
        raise AuthFailure(
            f"invalid token: {type(exc).__name__}", code="InvalidTokenFormat"
        ) from None
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not _is_number(exp) or not _is_number(nbf):
        raise AuthFailure("exp and nbf must be numbers", code="InvalidTokenFormat")
    assert exp is not None and nbf is not None
    if request.now_s > exp + JWT_LEEWAY_S:
        raise AuthFailure("the token has expired", code="TokenExpired")
    if request.now_s + JWT_LEEWAY_S < nbf:
        raise AuthFailure("the token is not valid yet (nbf)", code="TokenNotYetValid")
    subject = claims.get("sub")
    data = {"issuer": issuer, "kid": kid, "claims": claims}
    return Caller("jwt", subject if isinstance(subject, str) else "", None, data, "jwt"), None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _alg_fits_key(alg: str, key: Any) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return alg in RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS.get(alg) == key.curve.name
    return False


_POLICIES: dict[str, Callable[[Tx, Request], _Result]] = {
    "user_cert": _user_cert,
    "member_cert": _member_cert,
    "any_cert": _any_cert,
    "jwt": _jwt,
    "user_cose_sign1": _cose("user", "user_cose_sign1"),
    "member_cose": _cose("member", "member_cose"),
}
assert set(_POLICIES) >= COSE_POLICIES
