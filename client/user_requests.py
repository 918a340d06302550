"""A user's signed request for endpoints with the ``user_cose_sign1`` policy.

The envelope is a COSE_Sign1 over the request body, with CCF's headers for it: ``kid`` = the
user id (hex SHA-256 of the user's certificate DER) and ``ccf.msg.created_at`` = now in
seconds. The service runs it once, within its freshness window (10 minutes by default), and
refuses it again after that (``RequestReplay``).
"""

from __future__ import annotations

import time

from charter.identity import Identity
from charter.ledger import cose

MSG_CREATED_AT = "ccf.msg.created_at"
COSE_CONTENT_TYPE = "application/cose"


def user_envelope(identity: Identity, payload: bytes, *, created_at: int | None = None) -> bytes:
    """Sign `payload` as the user `identity` (its key and certificate)."""
    kid = identity.id.encode()
    when = int(time.time()) if created_at is None else created_at
    return cose.sign1(identity.key, {cose.HEADER_KID: kid, MSG_CREATED_AT: when}, payload)
