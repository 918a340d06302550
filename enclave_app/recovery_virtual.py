"""`POST /node/recovery/virtual/ledger-secrets`: the `virtual` platform's stand-in for
recovery shares.

On the `virtual` platform the sealed state is encrypted with a key file that sits beside it
in the workspace: it protects nothing, and whoever holds a dead node's workspace holds its
ledger secrets. This route lets an active member hand those secrets to a recovering node
(in a COSE-signed request, over TLS) so that the private replay can be run and tested before
the recovery shares exist. It is not registered on any other platform; with shares, members
submit shares instead (`/gov/recovery/members/{memberId}:recover`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from charter.enclave_app.app import App, Context
from charter.enclave_app.errors import HttpError
from charter.enclave_app.identity import LEDGER_SECRET_BYTES
from charter.enclave_app.node.lifecycle import IllegalTransition
from charter.enclave_app.node.recovery import LEDGER_SECRETS_MAX, RecoveryError

if TYPE_CHECKING:
    from charter.enclave_app.node import Node

# A body of LEDGER_SECRETS_MAX secrets would be ~6 MiB; a virtual test needs far fewer.
BODY_BYTES_MAX = 1024 * 1024


def parse_ledger_secrets(payload: Any) -> list[tuple[int, bytes]]:
    """`{"ledger_secrets": [{"seqno": n, "secret": base64}, ...]}` → [(seqno, secret)]."""
    if isinstance(payload, bytes | bytearray):
        try:
            payload = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError("the body is not JSON", code="InvalidInput") from None
    items = payload.get("ledger_secrets") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= LEDGER_SECRETS_MAX:
        raise HttpError("ledger_secrets must be a non-empty list", code="InvalidInput")
    secrets = []
    for item in items:
        seqno = item.get("seqno") if isinstance(item, dict) else None
        text = item.get("secret") if isinstance(item, dict) else None
        if not isinstance(seqno, int) or seqno < 1 or not isinstance(text, str):
            raise HttpError("each ledger secret needs a seqno and a secret", code="InvalidInput")
        try:
            secret = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError("a secret is not base64", code="InvalidInput") from None
        if len(secret) != LEDGER_SECRET_BYTES:
            raise HttpError(f"a secret is not {LEDGER_SECRET_BYTES} bytes", code="InvalidInput")
        secrets.append((seqno, secret))
    return secrets


def build(node: Node) -> App:
    app = App("recovery-virtual", prefix="/node", api_path=None)

    @app.post(
        "/recovery/virtual/ledger-secrets",
        auth="member_cose",
        max_body_bytes=BODY_BYTES_MAX,
        include_in_api=False,
    )
    def ledger_secrets(ctx: Context) -> dict[str, Any]:
        """An active member gives a recovering node the old service's ledger secrets."""
        secrets = parse_ledger_secrets(ctx.body)
        recovery = node.recovery
        if recovery is None:
            raise HttpError("this node is not recovering a service", code="InvalidInput")
        try:
            recovery.start_private_replay(secrets)
        except (RecoveryError, IllegalTransition) as exc:
            raise HttpError(str(exc), code="InvalidInput") from None
        return {"recovery_target_seqno": recovery.recovery_target_seqno}

    return app
