"""JWT issuers, their signing keys and the CA bundles that authenticate them (CCF's actions).

Five governance actions, with CCF's names, argument shapes and tables:

- `set_ca_cert_bundle {name, cert_bundle}` / `remove_ca_cert_bundle {name}`: PEM bundles in
  `public:ccf.gov.tls.ca_cert_bundles` (key: the name's UTF-8, value: the bundle as a JSON
  string). An issuer with `auto_refresh` names one: the primary checks the issuer's TLS
  certificate against it (and nothing else) when it fetches the issuer's keys.
- `set_jwt_issuer {issuer, auto_refresh?, ca_cert_bundle_name?, jwks?, key_filter?,
  audience?}`: the issuer (an `https://` URL, as CCF's constitution asks) and its metadata in
  `public:ccf.gov.jwt.issuers` (key: the issuer's UTF-8, value: JSON). `jwks` sets its keys
  in the same transaction. `key_filter` may only be CCF's `"all"`. `audience` is Charter's
  addition: the `aud` values a token of this issuer must name one of (without it, a token
  carrying `aud` is refused, so that a token minted for another service is never accepted).
- `set_jwt_public_signing_keys {issuer, jwks}`: replaces the issuer's keys.
- `remove_jwt_issuer {issuer}`: removes the issuer and its keys.

Keys are kept by key id in `public:ccf.gov.jwt.public_signing_keys_metadata` (key: the kid's
UTF-8, value: a JSON list of `{"issuer", "public_key"}`, the key as SPKI PEM): one kid may be
used by several issuers. Only asymmetric keys are kept (RSA of 2048 bits or more, EC P-256,
P-384, P-521): a JWKS entry of another type (an HMAC secret `oct`, for one) is refused, so an
HMAC token can never be checked against a public key.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from charter.governance import tables as t
from charter.governance.effects import NO_EFFECTS, ActionContext, Effects
from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx
from charter.ledger import service_state as ss

JWT_ISSUERS = ss.JWT_ISSUERS
JWT_PUBLIC_SIGNING_KEYS = ss.JWT_PUBLIC_SIGNING_KEYS
CA_CERT_BUNDLES = ss.CA_CERT_BUNDLES

ISSUER_BYTES_MAX = 2048
KID_BYTES_MAX = 256
JWKS_KEYS_MAX = 64
# A JWK holds one key (an RSA-4096 modulus is ~700 base64 characters) and maybe a short
# certificate chain; what a JWKS document fetched from an issuer may weigh in all.
JWK_BYTES_MAX = 16 * 1024
JWKS_BYTES_MAX = 256 * 1024
CA_BUNDLE_BYTES_MAX = 256 * 1024
CA_BUNDLE_CERTS_MAX = 64
AUDIENCES_MAX = 16
RSA_KEY_BITS_MIN = 2048
EC_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Issuer = Annotated[str, StringConstraints(min_length=1, max_length=ISSUER_BYTES_MAX)]
Audience = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Jwks(BaseModel):
    """A JSON Web Key Set; each key is checked by `parse_jwks` (types, sizes, kids)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    keys: list[dict[str, Any]] = Field(max_length=JWKS_KEYS_MAX)


class CaCertBundleArgs(_Args):
    name: Name
    cert_bundle: Annotated[str, StringConstraints(min_length=1, max_length=CA_BUNDLE_BYTES_MAX)]


class CaCertBundleNameArgs(_Args):
    name: Name


class SetJwtIssuerArgs(_Args):
    issuer: Issuer
    auto_refresh: bool = False
    ca_cert_bundle_name: Name | None = None
    jwks: Jwks | None = None
    key_filter: Literal["all"] = "all"
    audience: Audience | list[Audience] | None = None


class JwtIssuerArgs(_Args):
    issuer: Issuer


class SetJwtKeysArgs(_Args):
    issuer: Issuer
    jwks: Jwks


def _invalid(message: str) -> GovernanceError:
    return GovernanceError(message, code="ProposalFailedToValidate")


# ---------------------------------------------------------------------------------------
# Parsing (shared with the primary's key refresh: same checks for keys from a proposal and
# keys from the issuer's JWKS URL)


def load_ca_bundle(bundle: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (1 to CA_BUNDLE_CERTS_MAX), else ValueError."""
    if len(bundle.encode()) > CA_BUNDLE_BYTES_MAX:
        raise ValueError(f"bundle exceeds {CA_BUNDLE_BYTES_MAX} bytes")
    try:
        loaded = x509.load_pem_x509_certificates(bundle.encode())
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate bundle: {exc}") from None
    if len(loaded) > CA_BUNDLE_CERTS_MAX:
        raise ValueError(f"more than {CA_BUNDLE_CERTS_MAX} certificates")
    return loaded


def _b64url_int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not 0 < len(value) <= 2048:
        raise ValueError(f"{what} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise ValueError(f"{what} is not base64url") from None
    return int.from_bytes(raw, "big")


def _key_from_jwk(jwk: dict[str, Any]) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    kty = jwk.get("kty")
    x5c = jwk.get("x5c")
    if x5c is not None:
        # CCF's documented shape: the key is that of the first certificate of the chain.
        if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
            raise ValueError("x5c must be a list of base64 DER certificates")
        try:
            key = x509.load_der_x509_certificate(base64.b64decode(x5c[0])).public_key()
        except ValueError as exc:
            raise ValueError(f"x5c[0] is not a DER certificate: {exc}") from None
    elif kty == "RSA":
        numbers = rsa.RSAPublicNumbers(
            _b64url_int(jwk.get("e"), "e"), _b64url_int(jwk.get("n"), "n")
        )
        key = numbers.public_key()
    elif kty == "EC":
        curve = EC_CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError(f"crv must be one of {sorted(EC_CURVES)}")
        x, y = _b64url_int(jwk.get("x"), "x"), _b64url_int(jwk.get("y"), "y")
        key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    else:
        raise ValueError(f"kty must be RSA or EC (asymmetric keys only), got {kty!r}")
    if isinstance(key, rsa.RSAPublicKey):
        if kty not in (None, "RSA"):
            raise ValueError(f"kty {kty!r} does not match the certificate's RSA key")
        if key.key_size < RSA_KEY_BITS_MIN:
            raise ValueError(f"RSA keys must have at least {RSA_KEY_BITS_MIN} bits")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if kty not in (None, "EC"):
            raise ValueError(f"kty {kty!r} does not match the certificate's EC key")
        if key.curve.name not in {c.name for c in EC_CURVES.values()}:
            raise ValueError(f"EC curve {key.curve.name} is not supported")
        return key
    raise ValueError("only RSA and EC keys are supported")


def parse_jwks(jwks: Any) -> dict[str, str]:
    """kid → SPKI PEM of every key of a JWKS document, else ValueError (nothing partial)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("a JWKS is an object with a list `keys`")
    if len(json.dumps(jwks)) > JWKS_BYTES_MAX:
        raise ValueError(f"the JWKS exceeds {JWKS_BYTES_MAX} bytes")
    keys: list[Any] = jwks["keys"]
    if len(keys) > JWKS_KEYS_MAX:
        raise ValueError(f"more than {JWKS_KEYS_MAX} keys")
    parsed: dict[str, str] = {}
    for index, jwk in enumerate(keys):
        if not isinstance(jwk, dict):
            raise ValueError(f"keys[{index}] is not an object")
        if len(json.dumps(jwk)) > JWK_BYTES_MAX:
            raise ValueError(f"keys[{index}] exceeds {JWK_BYTES_MAX} bytes")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid.encode()) <= KID_BYTES_MAX:
            raise ValueError(f"keys[{index}] needs a kid of 1 to {KID_BYTES_MAX} bytes")
        if kid in parsed:
            raise ValueError(f"kid {kid!r} appears twice")
        if jwk.get("use", "sig") != "sig":
            raise ValueError(f"keys[{index}] is not a signing key (use {jwk.get('use')!r})")
        try:
            key = _key_from_jwk(jwk)
        except ValueError as exc:
            raise ValueError(f"keys[{index}] (kid {kid!r}): {exc}") from None
        parsed[kid] = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    return parsed


def check_issuer_url(issuer: str) -> None:
    """CCF's rule: an issuer is an https URL with a host and no query or fragment."""
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError("issuer must be a URL starting with https://")
    if parts.query or parts.fragment:
        raise ValueError("issuer must be a URL without query/fragment")


# ---------------------------------------------------------------------------------------
# Reading the records


def issuer_metadata(tx: KvTx, issuer: str) -> dict[str, Any] | None:
    return t.get_json_object(tx, JWT_ISSUERS, issuer.encode())


def issuers(tx: KvTx) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key, value in tx.items(JWT_ISSUERS):
        loaded = t.load_json(value, what="jwt issuer")
        if isinstance(loaded, dict):
            found[key.decode()] = loaded
    return found


def signing_keys(tx: KvTx, kid: str) -> list[dict[str, str]]:
    """The keys recorded under `kid`: [{"issuer", "public_key"}] (empty when none)."""
    value = tx.get(JWT_PUBLIC_SIGNING_KEYS, kid.encode())
    if value is None:
        return []
    loaded = t.load_json(value, what="jwt signing keys")
    return [k for k in loaded if isinstance(k, dict)] if isinstance(loaded, list) else []


def ca_bundle(tx: KvTx, name: str) -> str | None:
    value = t.get_json(tx, CA_CERT_BUNDLES, name.encode())
    return value if isinstance(value, str) else None


def audiences(metadata: dict[str, Any]) -> list[str]:
    audience = metadata.get("audience")
    if audience is None:
        return []
    return [audience] if isinstance(audience, str) else [str(a) for a in audience]


# ---------------------------------------------------------------------------------------
# Writing the keys (actions and the primary's refresh)


def remove_issuer_keys(tx: KvTx, issuer: str) -> None:
    for key, _ in list(tx.items(JWT_PUBLIC_SIGNING_KEYS)):
        kept = [k for k in signing_keys(tx, key.decode()) if k.get("issuer") != issuer]
        if not kept:
            tx.remove(JWT_PUBLIC_SIGNING_KEYS, key)
        else:
            t.put_json(tx, JWT_PUBLIC_SIGNING_KEYS, key, kept)


def set_issuer_keys(tx: KvTx, issuer: str, keys: dict[str, str]) -> bool:
    """Make `keys` (kid → PEM) the issuer's whole key set; True if anything changed."""
    current = {
        key.decode(): k["public_key"]
        for key, _ in tx.items(JWT_PUBLIC_SIGNING_KEYS)
        for k in signing_keys(tx, key.decode())
        if k.get("issuer") == issuer
    }
    if current == keys:
        return False
    remove_issuer_keys(tx, issuer)
    for kid, pem in sorted(keys.items()):
        entries = signing_keys(tx, kid)
        entries.append({"issuer": issuer, "public_key": pem})
        t.put_json(tx, JWT_PUBLIC_SIGNING_KEYS, kid.encode(), entries)
    return True


# ---------------------------------------------------------------------------------------
# Actions


def check_set_ca_cert_bundle(tx: KvTx, args: CaCertBundleArgs) -> None:
    try:
        load_ca_bundle(args.cert_bundle)
    except ValueError as exc:
        raise _invalid(f"cert_bundle: {exc}") from None


def apply_set_ca_cert_bundle(tx: KvTx, args: CaCertBundleArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, CA_CERT_BUNDLES, args.name.encode(), args.cert_bundle)
    return NO_EFFECTS


def check_remove_ca_cert_bundle(tx: KvTx, args: CaCertBundleNameArgs) -> None:
    users = [i for i, m in issuers(tx).items() if m.get("ca_cert_bundle_name") == args.name]
    if users:
        raise _invalid(f"CA cert bundle {args.name!r} is used by issuer {users[0]!r}")


def apply_remove_ca_cert_bundle(
    tx: KvTx, args: CaCertBundleNameArgs, ctx: ActionContext
) -> Effects:
    tx.remove(CA_CERT_BUNDLES, args.name.encode())
    return NO_EFFECTS


def check_set_jwt_issuer(tx: KvTx, args: SetJwtIssuerArgs) -> None:
    try:
        check_issuer_url(args.issuer)
        if args.jwks is not None:
            parse_jwks(args.jwks.model_dump())
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    if isinstance(args.audience, list) and not 0 < len(args.audience) <= AUDIENCES_MAX:
        raise _invalid(f"audience lists 1 to {AUDIENCES_MAX} values")
    if args.auto_refresh and args.ca_cert_bundle_name is None:
        raise _invalid("ca_cert_bundle_name is missing but required if auto_refresh is true")


def apply_set_jwt_issuer(tx: KvTx, args: SetJwtIssuerArgs, ctx: ActionContext) -> Effects:
    # Checked when applied, not proposed (as CCF): the same proposal may set the bundle first.
    if args.ca_cert_bundle_name is not None and ca_bundle(tx, args.ca_cert_bundle_name) is None:
        raise _invalid(f"No CA cert bundle found with name {args.ca_cert_bundle_name!r}")
    metadata = args.model_dump(mode="json", exclude={"jwks", "issuer"}, exclude_none=True)
    t.put_json(tx, JWT_ISSUERS, args.issuer.encode(), metadata)
    if args.jwks is not None:
        set_issuer_keys(tx, args.issuer, parse_jwks(args.jwks.model_dump()))
    return NO_EFFECTS


def check_set_jwt_keys(tx: KvTx, args: SetJwtKeysArgs) -> None:
    if issuer_metadata(tx, args.issuer) is None:
        raise _invalid(f"issuer {args.issuer} not found")
    try:
        parse_jwks(args.jwks.model_dump())
    except ValueError as exc:
        raise _invalid(f"jwks: {exc}") from None


def apply_set_jwt_keys(tx: KvTx, args: SetJwtKeysArgs, ctx: ActionContext) -> Effects:
    set_issuer_keys(tx, args.issuer, parse_jwks(args.jwks.model_dump()))
    return NO_EFFECTS


def check_remove_jwt_issuer(tx: KvTx, args: JwtIssuerArgs) -> None:
    """Removing an issuer that is not there changes nothing (as CCF)."""


def apply_remove_jwt_issuer(tx: KvTx, args: JwtIssuerArgs, ctx: ActionContext) -> Effects:
    if issuer_metadata(tx, args.issuer) is not None:
        tx.remove(JWT_ISSUERS, args.issuer.encode())
        remove_issuer_keys(tx, args.issuer)
    return NO_EFFECTS
