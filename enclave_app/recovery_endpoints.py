"""The members' recovery share endpoints, in CCF's 2024-07-01 shape
(src/node/gov/handlers/recovery.h), plus Charter's read-only status view.

- `GET /gov/recovery/encrypted-shares/{memberId}` → `{"memberId", "encryptedShare"}` (base64
  of the RSA-OAEP-256 ciphertext; 404 ResourceNotFound if the member holds none).
- `POST /gov/recovery/members/{memberId}:recover`, a COSE_Sign1 request of message type
  `recovery_share` signed by that member, payload `{"share": base64}` → `{"message",
  "submittedCount", "recoveryThreshold"}`. Refused, and nothing stored: 403
  ServiceNotWaitingForRecoveryShares (the service is not waiting for shares), 403
  NodeAlreadyRecovering (the private ledger is being replayed already), 401 UnknownMember /
  InvalidSignature (not signed by a member), 400 RequestReplay (that signed request was
  submitted before), 403 NotRecoveryMember (the member holds no share), 400
  InvalidRecoveryShare (malformed, tampered or stale share). At the threshold the node
  recovers the ledger secrets and hands them to `Node.on_recovery_shares_complete`.
- `GET /gov/recovery/status` (Charter's) → who holds a share, who has submitted, how many
  are still needed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from charter.enclave_app.app import App, Context
from charter.enclave_app.errors import HttpError
from charter.enclave_app.gov_endpoints import _check_cose_body, _gov
from charter.enclave_app.node import shares
from charter.governance import tables as gt
from charter.governance.requests import (
    DEFAULT_POLICY,
    MAX_ENVELOPE_BYTES,
    RequestPolicy,
    record_request,
    verify_request,
)

LOG = logging.getLogger(__name__)

# A share is at most 66 bytes; its base64 in a JSON object stays far below this.
SHARE_PAYLOAD_BYTES_MAX = 4096


@dataclass(frozen=True, slots=True)
class RecoveryHooks:
    """What the node supplies to the share endpoints."""

    now_s: Callable[[], int]
    # The key submitted shares are stored under (the node's latest ledger secret).
    storage_key: Callable[[], bytes | None]
    random_bytes: Callable[[int], bytes]
    # Called in the submitting transaction once the threshold is reached.
    on_complete: Callable[[list[tuple[int, bytes]]], None]
    # True while the node replays the private ledger (shares are no longer taken).
    replaying_private: Callable[[], bool] = lambda: False
    policy: RequestPolicy = DEFAULT_POLICY


def _member_id(ctx: Context) -> str:
    member_id = str(ctx.path["memberId"])
    if not gt.is_hex_id(member_id):
        raise HttpError("memberId must be 64 lowercase hex digits", code="InvalidResourceName")
    return member_id


def _share_from_payload(payload: bytes) -> bytes:
    if len(payload) > SHARE_PAYLOAD_BYTES_MAX:
        raise HttpError("the payload is too large for a share", code="InvalidInput")
    try:
        doc = json.loads(payload)
        text = doc["share"]
        if not isinstance(text, str):
            raise TypeError
        return base64.b64decode(text, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise HttpError('the payload must be {"share": base64}', code="InvalidInput") from None


def _threshold(ctx: Context, record: shares.SharesRecord | None) -> int:
    """The threshold the current shares were split with: while recovering, the service's
    configured one may have changed since (shares are only re-issued once it opens)."""
    if record is not None:
        return record.threshold
    return int(gt.service_config(ctx.tx).get("recovery_threshold", 1))


def register(app: App, hooks: RecoveryHooks) -> None:
    write = {"auth": "none", "max_body_bytes": MAX_ENVELOPE_BYTES}
    read = {"auth": "none"}

    @app.get("/recovery/encrypted-shares/{memberId}", **read)
    @_gov
    def get_encrypted_share(ctx: Context) -> Any:
        """A member's recovery share, encrypted to its encryption key."""
        member_id = _member_id(ctx)
        try:
            encrypted = shares.encrypted_share(ctx.tx, member_id)
        except shares.RecoveryShareError as exc:
            raise HttpError(exc.message, code=exc.code) from None
        if encrypted is None:
            raise HttpError(
                f"Recovery share not found for member {member_id}.", code="ResourceNotFound"
            )
        return {"memberId": member_id, "encryptedShare": base64.b64encode(encrypted).decode()}

    @app.post("/recovery/members/{memberId}:recover", **write)
    @_gov
    def submit_recovery_share(ctx: Context) -> Any:
        """Submit a member's decrypted share (msg type recovery_share)."""
        info = gt.service_info(ctx.tx)
        if info is None or info.get("status") != gt.ServiceStatus.WAITING_FOR_RECOVERY_SHARES:
            raise HttpError(
                "Service is not waiting for recovery shares.",
                code="ServiceNotWaitingForRecoveryShares",
            )
        if hooks.replaying_private():
            raise HttpError(
                "Node is already recovering private ledger.", code="NodeAlreadyRecovering"
            )
        member_id = _member_id(ctx)
        request = verify_request(
            ctx.tx,
            _check_cose_body(ctx),
            msg_type="recovery_share",
            now_s=hooks.now_s(),
            policy=hooks.policy,
            path_member_id=member_id,
        )
        share = _share_from_payload(request.payload)
        storage_key = hooks.storage_key()
        if storage_key is None:
            raise HttpError("this node holds no key to store shares under", code="InternalError")
        try:
            count = shares.submit_share(
                ctx.tx,
                member_id,
                share,
                storage_key=storage_key,
                random_bytes=hooks.random_bytes,
            )
            record_request(ctx.tx, request, now_s=hooks.now_s(), policy=hooks.policy)
            threshold = _threshold(ctx, shares.read_record(ctx.tx))
            message = f"{count}/{threshold} recovery shares successfully submitted"
            if count >= threshold:
                secrets = shares.recover_ledger_secrets(
                    ctx.tx, shares.submitted_shares(ctx.tx, storage_key)
                )
                message += "\nEnd of recovery procedure initiated"
                LOG.info("event=recovery_shares_complete submitted=%d", count)
                hooks.on_complete(secrets)
        except shares.RecoveryShareError as exc:
            LOG.info("event=recovery_share_refused member=%s code=%s", member_id[:16], exc.code)
            raise HttpError(exc.message, code=exc.code) from None
        return {"message": message, "submittedCount": count, "recoveryThreshold": threshold}

    @app.get("/recovery/status", **read)
    @_gov
    def recovery_status(ctx: Context) -> Any:
        """Who holds a share, who has submitted one, and how many are still needed."""
        try:
            record = shares.read_record(ctx.tx)
        except shares.RecoveryShareError as exc:
            raise HttpError(exc.message, code=exc.code) from None
        submitted = shares.submitted_member_ids(ctx.tx)
        threshold = _threshold(ctx, record)
        info = gt.service_info(ctx.tx) or {}
        return {
            "serviceStatus": info.get("status"),
            "recoveryThreshold": threshold,
            "recoveryMembers": sorted(record.share_digests) if record else [],
            "submittedMembers": submitted,
            "submittedCount": len(submitted),
            "stillNeeded": max(threshold - len(submitted), 0),
        }
