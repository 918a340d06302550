"""Member state-digest acknowledgement: how an Accepted member becomes Active.

`:update` (msg type `state_digest`, any known member) sets the member's expected digest to
the current Merkle root; `:ack` (msg type `ack`) must sign exactly that digest, and then
the member is Active. The signed ack is kept in `members.acks` (`cose_sign1_req`, base64)
as CCF does.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from charter.governance import tables as t
from charter.governance.errors import GovernanceError
from charter.governance.requests import DEFAULT_POLICY, RequestPolicy, SignedRequest, record_request
from charter.governance.tx import KvTx

logger = logging.getLogger(__name__)


def get_state_digest(tx: KvTx, member_id: str) -> dict[str, str]:
    ack = (
        t.get_json_object(tx, t.MEMBERS_ACKS, member_id.encode())
        if t.is_hex_id(member_id)
        else None
    )
    if ack is None:
        raise GovernanceError(
            f"no ACK record exists for member {member_id}", code="ResourceNotFound"
        )
    return {"memberId": member_id, "stateDigest": str(ack.get("state_digest", ""))}


def update_state_digest(
    tx: KvTx,
    request: SignedRequest,
    *,
    merkle_root: bytes,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> dict[str, str]:
    assert request.msg_type == "state_digest" and len(merkle_root) == 32
    key = t.id_key(request.member_id)
    ack = t.get_json_object(tx, t.MEMBERS_ACKS, key) or {}
    ack["state_digest"] = merkle_root.hex()
    t.put_json(tx, t.MEMBERS_ACKS, key, ack)
    record_request(tx, request, now_s=now_s, policy=policy)
    return {"memberId": request.member_id, "stateDigest": ack["state_digest"]}


def ack_state_digest(
    tx: KvTx,
    request: SignedRequest,
    *,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> bool:
    """Returns True when the member became Active with this ack."""
    assert request.msg_type == "ack"
    key = t.id_key(request.member_id)
    ack = t.get_json_object(tx, t.MEMBERS_ACKS, key)
    if ack is None:
        raise GovernanceError(
            f"no ACK record exists for member {request.member_id}", code="AuthorizationFailed"
        )
    try:
        body: Any = json.loads(request.payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    digest = body.get("stateDigest") if isinstance(body, dict) else None
    if not isinstance(digest, str):
        raise GovernanceError(
            'signed request body must be a JSON object with string field "stateDigest"',
            code="InvalidInput",
        )
    expected = ack.get("state_digest")
    if not expected or digest != expected:
        raise GovernanceError(
            f"submitted state digest is not valid: expected {expected!r}, got {digest!r}",
            code="StateDigestMismatch",
        )
    info = t.member_info(tx, request.member_id)
    if info is None:
        raise GovernanceError("member has a cert but no info", code="InternalError")
    # No refusal past this point: writes begin.
    ack.pop("signed_req", None)
    ack["cose_sign1_req"] = base64.b64encode(request.envelope).decode("ascii")
    t.put_json(tx, t.MEMBERS_ACKS, key, ack)
    newly_active = info.get("status") != t.MemberStatus.ACTIVE
    if newly_active:
        info["status"] = t.MemberStatus.ACTIVE
        t.put_json(tx, t.MEMBERS_INFO, key, info)
        logger.info("member activated member_id=%s", request.member_id)
    record_request(tx, request, now_s=now_s, policy=policy)
    return newly_active
