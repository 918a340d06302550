"""Verification of signed requests (COSE_Sign1 envelopes, FORMATS §6): members' governance
requests, and members' and users' signed requests to application endpoints
(`verify_app_request`, the `member_cose` and `user_cose_sign1` auth policies): one verifier,
one freshness window, one replay record.

A request is accepted only if: it decodes within the size limit; its `kid` is the id of a
member whose certificate is in `members.certs`; the signature verifies with that
certificate; `ccf.gov.msg.type` is the endpoint's; `ccf.gov.msg.created_at` lies within the
configured window around `now`; `ccf.gov.msg.proposal_id` (ballots, withdrawals) equals the
URL's; the member has the required status; and the envelope has not been seen before.

Verification reads the KV and never writes it: the caller records the request (replay
entry, history) only once the whole operation is known to succeed, so a refused request
leaves the KV unchanged whatever the transaction layer does with a raised error.

Replay protection: proposals use CCF's `cose_recent_proposals` window (key
`"{created_at:010d}:{hex H(signature)}"`, value the proposal id; a created_at older than the
median kept entry is refused). Other messages are kept in Charter's `recent_requests` table
with the same key; entries older than the created_at window are pruned, since the window
already refuses them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from charter.governance import tables as t
from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx
from charter.ledger import certs, cose
from charter.ledger.errors import LedgerError

logger = logging.getLogger(__name__)

DEFAULT_RECENT_PROPOSALS_WINDOW_SIZE = 100
MAX_CREATED_AT = 9_999_999_999
# Governance bodies are small JSON documents; a constitution or a batch of certificates
# is well under this. Bounds the CBOR we decode from unauthenticated callers.
MAX_ENVELOPE_BYTES = 1024 * 1024

MSG_TYPES_NEEDING_ACTIVE_MEMBER = frozenset({"proposal", "ballot", "withdrawal"})

SignerKind = Literal["member", "user"]
# CCF's protected header for the time of a user's signed request (`UserCOSESign1AuthnPolicy`).
MSG_CREATED_AT = "ccf.msg.created_at"
# What the replay record says a signed application request was (never a governance type).
APP_REQUEST_TYPES: dict[str, str] = {"member": "member_app_request", "user": "user_app_request"}


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """How far `created_at` may be from the service's `now`: past and future, in seconds."""

    max_age_s: int = 600
    max_future_s: int = 60
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES

    def __post_init__(self) -> None:
        assert self.max_age_s > 0 and self.max_future_s >= 0 and self.max_envelope_bytes > 0


DEFAULT_POLICY = RequestPolicy()


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A verified request: a member's, or a user's to an application endpoint (`signer`);
    `member_id` is the signer's id either way (the kid)."""

    member_id: str
    msg_type: str
    created_at: int
    proposal_id: str | None
    payload: bytes
    signature: bytes
    envelope: bytes
    signer: SignerKind = "member"
    cert_pem: str | None = None

    @property
    def replay_key(self) -> bytes:
        digest = hashlib.sha256(self.signature).hexdigest()
        return f"{self.created_at:010d}:{digest}".encode()

    @property
    def signature_digest(self) -> bytes:
        return hashlib.sha256(self.signature).digest()


def _auth_error(message: str, *, code: str) -> GovernanceError:
    return GovernanceError(message, code=code)


def _header_text(protected: dict[Any, Any], label: str) -> str | None:
    value = protected.get(label)
    if value is None:
        return None
    if not isinstance(value, str):
        raise GovernanceError(f"header {label} must be text", code="InvalidCoseSign1")
    return value


def _decode(envelope: bytes, policy: RequestPolicy) -> cose.Sign1:
    if len(envelope) > policy.max_envelope_bytes:
        raise GovernanceError(
            f"request of {len(envelope)} bytes exceeds {policy.max_envelope_bytes}",
            code="RequestTooLarge",
        )
    try:
        msg = cose.decode_sign1(envelope, max_bytes=policy.max_envelope_bytes)
    except LedgerError as exc:
        raise GovernanceError(f"body is not a COSE_Sign1: {exc}", code="InvalidCoseSign1") from None
    if msg.payload is None:
        raise GovernanceError("payload must be embedded", code="InvalidCoseSign1")
    return msg


def _verified_signer(tx: KvTx, msg: cose.Sign1, signer: SignerKind) -> tuple[str, bytes]:
    """(id, cert PEM) of the member or user named by `kid`, once the signature verifies."""
    kid = msg.kid
    try:
        signer_id = kid.decode("ascii") if kid is not None else ""
    except UnicodeDecodeError:
        signer_id = ""
    if not t.is_hex_id(signer_id):
        raise _auth_error(
            f"kid must be the {signer} id (64 lowercase hex digits)", code="InvalidKid"
        )
    certs_table = t.MEMBERS_CERTS if signer == "member" else t.USERS_CERTS
    cert_pem = tx.get(certs_table, t.id_key(signer_id))
    if cert_pem is None:
        if signer == "user":
            raise _auth_error(f"kid {signer_id} is not a registered user", code="UnknownUser")
        if tx.get(t.RETIRED_MEMBERS, t.id_key(signer_id)) is not None:
            raise GovernanceError(f"member {signer_id} has been removed", code="MemberRetired")
        raise _auth_error(f"kid {signer_id} is not a known member", code="UnknownMember")
    try:
        cert = certs.load_cert(cert_pem)
        if certs.cert_id(cert) != signer_id:
            raise GovernanceError(f"{certs_table} holds a mismatched cert", code="InternalError")
        cose.verify_sign1(msg, cert)
    except LedgerError as exc:
        raise _auth_error(f"signature does not verify: {exc}", code="InvalidSignature") from None
    return signer_id, cert_pem


def _created_at(msg: cose.Sign1, label: str, now_s: int, policy: RequestPolicy) -> int:
    created_at = msg.protected.get(label)
    if isinstance(created_at, bool) or not isinstance(created_at, int):
        raise GovernanceError(f"{label} must be an int", code="InvalidCreatedAt")
    if not 0 <= created_at <= MAX_CREATED_AT:
        raise GovernanceError(f"{label} out of range", code="InvalidCreatedAt")
    if created_at < now_s - policy.max_age_s:
        raise GovernanceError(
            f"created_at {created_at} is more than {policy.max_age_s}s before now {now_s}",
            code="RequestExpired",
        )
    if created_at > now_s + policy.max_future_s:
        raise GovernanceError(
            f"created_at {created_at} is more than {policy.max_future_s}s after now {now_s}",
            code="RequestInFuture",
        )
    return created_at


def verify_request(
    tx: KvTx,
    envelope: bytes,
    *,
    msg_type: str,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
    path_proposal_id: str | None = None,
    path_member_id: str | None = None,
) -> SignedRequest:
    """Check a member's COSE_Sign1 request for an endpoint expecting `msg_type`."""
    assert msg_type in cose.GOV_MSG_TYPES, msg_type
    msg = _decode(envelope, policy)
    assert msg.payload is not None
    member_id, _ = _verified_signer(tx, msg, "member")

    signed_type = _header_text(msg.protected, cose.GOV_MSG_TYPE)
    if signed_type != msg_type:
        raise _auth_error(
            f"expected ccf.gov.msg.type {msg_type!r}, got {signed_type!r}",
            code="InvalidMessageType",
        )
    created_at = _created_at(msg, cose.GOV_MSG_CREATED_AT, now_s, policy)

    signed_proposal_id = _header_text(msg.protected, cose.GOV_MSG_PROPOSAL_ID)
    if msg_type in cose.GOV_MSG_TYPES_WITH_PROPOSAL_ID and (
        signed_proposal_id is None or signed_proposal_id != path_proposal_id
    ):
        raise GovernanceError(
            "authenticated proposal id does not match URL", code="InvalidResourceName"
        )
    if path_member_id is not None and path_member_id != member_id:
        raise GovernanceError(
            "authenticated member id does not match URL", code="InvalidResourceName"
        )

    info = t.member_info(tx, member_id)
    status = None if info is None else info.get("status")
    if msg_type in MSG_TYPES_NEEDING_ACTIVE_MEMBER and status != "Active":
        raise GovernanceError(f"member {member_id} is {status}, not Active", code="MemberNotActive")

    request = SignedRequest(
        member_id=member_id,
        msg_type=msg_type,
        created_at=created_at,
        proposal_id=signed_proposal_id,
        payload=msg.payload,
        signature=msg.signature,
        envelope=bytes(envelope),
    )
    _check_not_replayed(tx, request)
    return request


def verify_app_request(
    tx: KvTx,
    envelope: bytes,
    *,
    signer: SignerKind,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> SignedRequest:
    """Check a COSE_Sign1 request to an application endpoint, signed by an active member
    (`member_cose`) or a registered user (`user_cose_sign1`, kid = the user id, the SHA-256
    of the user's certificate DER). Same checks as governance requests but no message type:
    size, signature by the kid's certificate, `created_at` within the window (CCF's
    `ccf.msg.created_at` header for users, `ccf.gov.msg.created_at` for members), and never
    seen before (the same replay record, `record_request`, once the request commits)."""
    msg = _decode(envelope, policy)
    assert msg.payload is not None
    signer_id, cert_pem = _verified_signer(tx, msg, signer)
    label = cose.GOV_MSG_CREATED_AT if signer == "member" else MSG_CREATED_AT
    created_at = _created_at(msg, label, now_s, policy)
    if signer == "member":
        info = t.member_info(tx, signer_id)
        status = None if info is None else info.get("status")
        if status != "Active":
            raise GovernanceError(
                f"member {signer_id} is {status}, not Active", code="MemberNotActive"
            )
    request = SignedRequest(
        member_id=signer_id,
        msg_type=APP_REQUEST_TYPES[signer],
        created_at=created_at,
        proposal_id=None,
        payload=msg.payload,
        signature=msg.signature,
        envelope=bytes(envelope),
        signer=signer,
        cert_pem=cert_pem.decode(),
    )
    _check_not_replayed(tx, request)
    return request


def _check_not_replayed(tx: KvTx, request: SignedRequest) -> None:
    if request.msg_type == "proposal":
        colliding = tx.get(t.COSE_RECENT_PROPOSALS, request.replay_key)
        if colliding is not None:
            raise GovernanceError(
                f"proposal submission replay, already exists as proposal {colliding.decode()}",
                code="ProposalReplay",
            )
        keys = sorted(k for k, _ in tx.items(t.COSE_RECENT_PROPOSALS))
        if keys:
            # As CCF: a new proposal must not be older than the median one kept.
            median_created_at = keys[len(keys) // 2].split(b":", 1)[0]
            if request.replay_key.split(b":", 1)[0] < median_created_at:
                raise GovernanceError(
                    f"proposal created too long ago, created_at must be greater than "
                    f"{median_created_at.decode()}",
                    code="ProposalCreatedTooLongAgo",
                )
    elif tx.get(t.RECENT_REQUESTS, request.replay_key) is not None:
        raise GovernanceError("this signed request was already submitted", code="RequestReplay")


def record_request(
    tx: KvTx,
    request: SignedRequest,
    *,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
    proposal_id: str | None = None,
) -> None:
    """Write the replay entry of an accepted request (after all other checks passed)."""
    if request.msg_type == "proposal":
        assert proposal_id is not None
        _record_proposal(tx, request, proposal_id)
        return
    cutoff = f"{max(now_s - policy.max_age_s, 0):010d}:".encode()
    for key, _ in list(tx.items(t.RECENT_REQUESTS)):
        if key < cutoff:
            tx.remove(t.RECENT_REQUESTS, key)
    t.put_json(
        tx,
        t.RECENT_REQUESTS,
        request.replay_key,
        {f"{request.signer}_id": request.member_id, "msg_type": request.msg_type},
    )


def _record_proposal(tx: KvTx, request: SignedRequest, proposal_id: str) -> None:
    window = t.service_config(tx).get(
        "recent_cose_proposals_window_size", DEFAULT_RECENT_PROPOSALS_WINDOW_SIZE
    )
    window = max(int(window), 1)
    keys = sorted(k for k, _ in tx.items(t.COSE_RECENT_PROPOSALS))
    tx.put(t.COSE_RECENT_PROPOSALS, request.replay_key, proposal_id.encode())
    # Keep only the most recent `window` entries, oldest (smallest key) dropped first.
    excess = len(keys) + 1 - window
    for key in keys[: max(excess, 0)]:
        tx.remove(t.COSE_RECENT_PROPOSALS, key)


def record_history(tx: KvTx, request: SignedRequest) -> None:
    """Keep the member's latest governance request, as CCF's `cose_history`."""
    tx.put(t.COSE_HISTORY, t.id_key(request.member_id), request.envelope)
