"""Recovery shares, the enclave's side: issue them, serve them, take them back, recover.

The scheme is CCF's (doc/architecture/cryptography.rst, src/node/share_manager.h):

- the latest ledger secret is wrapped (AES-256-GCM) under a fresh *ledger-secret wrapping
  key*, used once (so its IV is zero, as CCF's);
- the wrapping key is split k-of-n (`charter.ledger.shamir`) among the active recovery
  members, each share RSA-OAEP-256 encrypted to that member's encryption key;
- both go to `public:ccf.internal.recovery_shares`, re-issued (a new wrapping key) whenever
  the recovery members, the threshold or the latest ledger secret change;
- each earlier ledger secret is encrypted under its successor (`rekey.py` writes the chain),
  so the newest shares unlock the whole history.

Besides CCF's fields the record holds, per member, the SHA-256 of the member's share (with
a domain and the member id): the share has 256 bits of entropy, so the digest gives nothing
away, and it lets a node refuse a tampered or stale share the moment it is submitted,
rather than after k shares fail to combine. It also holds the threshold the shares were
split with and the start seqno of the wrapped secret.

Submitted shares are stored as CCF stores them: encrypted (AES-GCM) under the node's
latest ledger secret, in `public:ccf.internal.encrypted_submitted_shares`. The host sees
only ciphertext: RSA-OAEP to members, AES-GCM under keys it never holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.enclave_app.kv import Tx
from charter.governance import tables as gt
from charter.governance.errors import STATUS_BY_CODE
from charter.governance.tx import KvTx
from charter.ledger import certs, shamir
from charter.ledger.service_state import (
    ENCRYPTED_SUBMITTED_SHARES,
    LEDGER_SECRET_CHAIN,
    RECOVERY_SHARES,
    SINGLETON_KEY,
)

LOG = logging.getLogger(__name__)

WRAPPING_KEY_BYTES: Final = 32
LEDGER_SECRET_BYTES: Final = 32
GCM_TAG_BYTES: Final = 16
GCM_IV_BYTES: Final = 12
# A wrapped secret: CCF's GcmCipher layout, tag || iv || ciphertext.
WRAPPED_SECRET_BYTES: Final = GCM_TAG_BYTES + GCM_IV_BYTES + LEDGER_SECRET_BYTES
SHARE_DIGEST_DOMAIN: Final = b"charter.recovery_share.v1\x00"
# Bounds on what is read back from the KV (written by the service, replicated by hosts).
RECOVERY_RECORD_BYTES_MAX: Final = 4 * 1024 * 1024
CHAIN_LINKS_MAX: Final = 1_000_000
SUBMITTED_SHARE_BYTES_MAX: Final = 1024
OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


class RecoveryShareError(Exception):
    """A refused share operation; `code` is its stable error code, `status` its HTTP one."""

    def __init__(self, message: str, *, code: str) -> None:
        assert code in STATUS_BY_CODE, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]


# ---------------------------------------------------------------------- AES-GCM wrapping
def gcm_wrap(key: bytes, plaintext: bytes, iv: bytes) -> bytes:
    assert len(iv) == GCM_IV_BYTES
    sealed = AESGCM(key).encrypt(iv, plaintext, None)
    return sealed[-GCM_TAG_BYTES:] + iv + sealed[:-GCM_TAG_BYTES]


def gcm_unwrap(key: bytes, blob: bytes) -> bytes:
    """Raises `InvalidTag` on a wrong key or damaged blob."""
    if len(blob) < GCM_TAG_BYTES + GCM_IV_BYTES:
        raise InvalidTag()
    tag, iv = blob[:GCM_TAG_BYTES], blob[GCM_TAG_BYTES : GCM_TAG_BYTES + GCM_IV_BYTES]
    return AESGCM(key).decrypt(iv, blob[GCM_TAG_BYTES + GCM_IV_BYTES :] + tag, None)


def chain_key(start_seqno: int) -> bytes:
    return struct.pack("<Q", start_seqno)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > RECOVERY_RECORD_BYTES_MAX:
        raise RecoveryShareError(f"{what} is not base64 text", code="RecoveryFailed")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecoveryShareError(f"{what} is not base64", code="RecoveryFailed") from None


def share_digest(member_id: str, share: bytes) -> str:
    return hashlib.sha256(SHARE_DIGEST_DOMAIN + member_id.encode() + b"\x00" + share).hexdigest()


# ---------------------------------------------------------------------- the record
@dataclass(frozen=True, slots=True)
class SharesRecord:
    wrapped_latest_ledger_secret: bytes
    encrypted_shares: dict[str, bytes]
    share_digests: dict[str, str]
    threshold: int
    latest_version: int


def read_record(tx: KvTx) -> SharesRecord | None:
    raw = tx.get(RECOVERY_SHARES, SINGLETON_KEY)
    if raw is None:
        return None
    if len(raw) > RECOVERY_RECORD_BYTES_MAX:
        raise RecoveryShareError("the recovery shares record is too large", code="RecoveryFailed")
    doc = gt.load_json(raw, what=RECOVERY_SHARES)
    try:
        return SharesRecord(
            wrapped_latest_ledger_secret=_unb64(doc["wrapped_latest_ledger_secret"], "wrapped"),
            encrypted_shares={
                str(m): _unb64(v, "share") for m, v in dict(doc["encrypted_shares"]).items()
            },
            share_digests={str(m): str(v) for m, v in dict(doc["share_digests"]).items()},
            threshold=int(doc["recovery_threshold"]),
            latest_version=int(doc["latest_ledger_secret_version"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RecoveryShareError(
            "the recovery shares record is malformed", code="RecoveryFailed"
        ) from None


def issue_shares(
    tx: Tx,
    *,
    latest_version: int,
    latest_secret: bytes,
    random_bytes: Callable[[int], bytes],
) -> bool:
    """(Re-)issue shares for the ledger secret that applies from `latest_version`: a fresh
    wrapping key, split among the active recovery members. False (nothing written) when
    there are fewer of them than the threshold, e.g. before the genesis members ack."""
    assert len(latest_secret) == LEDGER_SECRET_BYTES and latest_version >= 1
    members = gt.recovery_members(tx)
    threshold = int(gt.service_config(tx).get("recovery_threshold", 1))
    if len(members) < max(threshold, 1):
        LOG.info(
            "event=recovery_shares_not_issued members=%d threshold=%d", len(members), threshold
        )
        return False
    wrapping_key = random_bytes(WRAPPING_KEY_BYTES)
    # Used once, so a zero IV is safe (as CCF's LedgerSecretWrappingKey).
    wrapped = gcm_wrap(wrapping_key, latest_secret, bytes(GCM_IV_BYTES))
    raw_shares = shamir.split(wrapping_key, len(members), threshold, random_bytes=random_bytes)
    encrypted: dict[str, str] = {}
    digests: dict[str, str] = {}
    for (member_id, pem), share in zip(members.items(), raw_shares, strict=True):
        key = certs.load_public_key(pem)
        assert isinstance(key, rsa.RSAPublicKey), "governance admits RSA keys only"
        encrypted[member_id] = _b64(key.encrypt(share, OAEP))
        digests[member_id] = share_digest(member_id, share)
    record: dict[str, Any] = {
        "wrapped_latest_ledger_secret": _b64(wrapped),
        "encrypted_shares": encrypted,
        "share_digests": digests,
        "recovery_threshold": threshold,
        "latest_ledger_secret_version": latest_version,
    }
    gt.put_json(tx, RECOVERY_SHARES, SINGLETON_KEY, record)
    LOG.info(
        "event=recovery_shares_issued members=%d threshold=%d secret_version=%d",
        len(members),
        threshold,
        latest_version,
    )
    return True


def encrypted_share(tx: KvTx, member_id: str) -> bytes | None:
    record = read_record(tx)
    return None if record is None else record.encrypted_shares.get(member_id)


def check_share(record: SharesRecord, member_id: str, share: bytes) -> None:
    """The share issued to `member_id` in the current record, or a typed refusal."""
    expected = record.share_digests.get(member_id)
    if expected is None:
        raise RecoveryShareError(
            f"member {member_id} holds no recovery share", code="NotRecoveryMember"
        )
    try:
        shamir.parse_share(share)
    except shamir.ShamirError as exc:
        raise RecoveryShareError(str(exc), code="InvalidRecoveryShare") from None
    if not hmac.compare_digest(share_digest(member_id, share), expected):
        raise RecoveryShareError(
            f"the share submitted by {member_id} is not the one issued to it",
            code="InvalidRecoveryShare",
        )


# ---------------------------------------------------------------------- submissions
def submit_share(
    tx: KvTx,
    member_id: str,
    share: bytes,
    *,
    storage_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> int:
    """Check and store (encrypted under `storage_key`) one member's share; the number of
    shares now submitted. A member submitting again replaces its own share."""
    record = read_record(tx)
    if record is None:
        raise RecoveryShareError("no recovery shares were issued", code="RecoverySharesNotIssued")
    check_share(record, member_id, share)
    sealed = gcm_wrap(storage_key, share, random_bytes(GCM_IV_BYTES))
    tx.put(ENCRYPTED_SUBMITTED_SHARES, gt.id_key(member_id), sealed)
    return sum(1 for _ in tx.items(ENCRYPTED_SUBMITTED_SHARES))


def submitted_member_ids(tx: KvTx) -> list[str]:
    return sorted(gt.key_to_id(key) for key, _ in tx.items(ENCRYPTED_SUBMITTED_SHARES))


def submitted_shares(tx: KvTx, storage_key: bytes) -> dict[str, bytes]:
    """The submitted shares, decrypted (inside the enclave only)."""
    shares = {}
    for key, sealed in tx.items(ENCRYPTED_SUBMITTED_SHARES):
        if len(sealed) > SUBMITTED_SHARE_BYTES_MAX:
            raise RecoveryShareError("a stored share is too large", code="RecoveryFailed")
        try:
            shares[gt.key_to_id(key)] = gcm_unwrap(storage_key, sealed)
        except InvalidTag:
            raise RecoveryShareError(
                "a stored share does not decrypt under this node's key", code="RecoveryFailed"
            ) from None
    return shares


def clear_submitted_shares(tx: KvTx) -> None:
    for key, _ in list(tx.items(ENCRYPTED_SUBMITTED_SHARES)):
        tx.remove(ENCRYPTED_SUBMITTED_SHARES, key)


# ---------------------------------------------------------------------- recovery
def chain_links(tx: KvTx) -> dict[int, tuple[int, bytes]]:
    """next_version -> (start seqno, that secret wrapped under the one from next_version)."""
    links: dict[int, tuple[int, bytes]] = {}
    for count, (_key, raw) in enumerate(tx.items(LEDGER_SECRET_CHAIN)):
        if count >= CHAIN_LINKS_MAX:
            raise RecoveryShareError("the ledger secret chain is too long", code="RecoveryFailed")
        doc = gt.load_json(raw, what=LEDGER_SECRET_CHAIN)
        try:
            start, following = int(doc["version"]), int(doc["next_version"])
            wrapped = _unb64(doc["encrypted_data"], "chain link")
        except (KeyError, TypeError, ValueError):
            raise RecoveryShareError(
                "a ledger secret chain link is malformed", code="RecoveryFailed"
            ) from None
        links[following] = (start, wrapped)
    return links


def recover_ledger_secrets(tx: KvTx, submitted: Mapping[str, bytes]) -> list[tuple[int, bytes]]:
    """Every ledger secret as `(start_seqno, secret)`, sorted by seqno (the shape of
    `Identity.ledger_secrets`), from the raw shares members submitted (member id -> share).

    Each share is checked against the one issued to its member (`NotRecoveryMember`,
    `InvalidRecoveryShare`); fewer than the threshold is `NotEnoughRecoveryShares`; shares
    that combine to a key that does not unwrap the secrets (a damaged record) or a chain
    that does not lead back to seqno 1 is `RecoveryFailed`."""
    record = read_record(tx)
    if record is None:
        raise RecoveryShareError("no recovery shares were issued", code="RecoverySharesNotIssued")
    for member_id, share in submitted.items():
        check_share(record, member_id, share)
    if len(submitted) < record.threshold:
        raise RecoveryShareError(
            f"{len(submitted)} of {record.threshold} recovery shares submitted",
            code="NotEnoughRecoveryShares",
        )
    try:
        wrapping_key = shamir.combine(list(submitted.values()))
        latest = gcm_unwrap(wrapping_key, record.wrapped_latest_ledger_secret)
    except (shamir.ShamirError, InvalidTag, ValueError):
        raise RecoveryShareError(
            "the shares do not unwrap the latest ledger secret", code="RecoveryFailed"
        ) from None
    secrets = [(record.latest_version, latest)]
    links = chain_links(tx)
    start, key = record.latest_version, latest
    while start in links:
        previous_start, wrapped = links.pop(start)
        if previous_start >= start:
            raise RecoveryShareError("the ledger secret chain goes forwards", code="RecoveryFailed")
        try:
            key = gcm_unwrap(key, wrapped)
        except InvalidTag:
            raise RecoveryShareError(
                f"the ledger secret from seqno {previous_start} does not unwrap",
                code="RecoveryFailed",
            ) from None
        start = previous_start
        secrets.append((start, key))
    if start != 1:
        raise RecoveryShareError(
            f"the ledger secret chain stops at seqno {start}, not 1", code="RecoveryFailed"
        )
    secrets.reverse()
    return secrets


def wrap_previous_secret(
    tx: KvTx,
    *,
    previous_start: int,
    previous: bytes,
    next_start: int,
    successor: bytes,
    iv: bytes,
) -> bytes:
    """Record `previous` encrypted under its `successor` in the chain; the wrapped bytes."""
    wrapped = gcm_wrap(successor, previous, iv)
    gt.put_json(
        tx,
        LEDGER_SECRET_CHAIN,
        chain_key(previous_start),
        {"version": previous_start, "next_version": next_start, "encrypted_data": _b64(wrapped)},
    )
    return wrapped
