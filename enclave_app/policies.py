"""Who may call an endpoint: CCF's authentication policy names, `all_of`, and the `Caller`
an admitted request carries. Declarations only; `enclave_app.auth` evaluates them.

May import: nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

AuthPolicy = Literal[
    "user_cert", "member_cert", "any_cert", "jwt", "user_cose_sign1", "member_cose", "none"
]
# CCF's policy names (`member_cose` is CCF's `member_cose_sign1`); "none" is the same as an
# empty list: no authentication.
AUTH_POLICIES: frozenset[str] = frozenset(
    {"user_cert", "member_cert", "any_cert", "jwt", "user_cose_sign1", "member_cose", "none"}
)
# Policies whose credential is the request body (a COSE_Sign1 envelope): at most one may
# apply to a request, since the handler reads the payload that policy unwraps.
COSE_POLICIES: frozenset[str] = frozenset({"user_cose_sign1", "member_cose"})


@dataclass(frozen=True, slots=True)
class AllOf:
    """CCF's ``all_of`` policy: every listed policy must admit the caller. Declare it with
    `all_of` (e.g. ``auth=[all_of("user_cert", "jwt")]``); ``ctx.caller.identities`` then
    holds each policy's identity by policy name."""

    policies: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.policies) < 2 or len(set(self.policies)) != len(self.policies):
            raise ValueError(f"all_of needs two or more distinct policies, got {self.policies}")
        if not set(self.policies) <= AUTH_POLICIES - {"none"}:
            raise ValueError(
                f"all_of takes policies among {sorted(AUTH_POLICIES - {'none'})}, "
                f"got {self.policies}"
            )
        if len(COSE_POLICIES & set(self.policies)) > 1:
            raise ValueError("all_of may hold only one COSE policy (the body is one envelope)")

    @property
    def name(self) -> str:
        return "all_of"


def all_of(*policies: AuthPolicy) -> AllOf:
    """The ``all_of`` policy over ``policies`` (CCF's ``AllOfAuthnPolicy``)."""
    return AllOf(tuple(policies))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called, as authenticated by the runtime. ``kind`` and ``id``: "user" / "member"
    (hex SHA-256 of the cert DER, for a TLS certificate or a COSE-signed request), "cert"
    (``any_cert``: any client certificate, same id), "jwt" (the token's ``sub``; ``data`` holds
    ``issuer``, ``kid`` and the ``claims``), "all_of" (``identities`` maps each policy to its
    caller; ``id`` is the first one's), "anonymous". ``policy`` names the policy that admitted
    the caller."""

    kind: Literal["user", "member", "cert", "jwt", "all_of", "anonymous"]
    id: str
    cert_pem: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    policy: str = ""
    identities: Mapping[str, Caller] = field(default_factory=dict)


ANONYMOUS = Caller("anonymous", "")
