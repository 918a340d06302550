"""Values and rules of the ACL-compatible sample (`charter.enclave_app.samples.acl`), without I/O.

Everything here is a pure function of its arguments: request parsing with explicit limits,
user ids, roles, the application-claims digest ACL binds into each ledger entry's Merkle
leaf, and the camelCase receipt shape the Azure SDK reads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Final

from charter.enclave_app.errors import HttpError, KVError
from charter.enclave_app.kv import Codec

API_VERSION: Final = "2022-05-13"
DEFAULT_COLLECTION: Final = "subledger:0"

# Limits on outside input. ACL documents no exact figure for entry contents; a contents
# string is held whole in memory and in one ledger entry, so it is capped at 1 MiB of UTF-8.
CONTENTS_BYTES_MAX: Final = 1 << 20
# A request body is the contents plus a little JSON around them.
BODY_BYTES_MAX: Final = CONTENTS_BYTES_MAX + 4096
COLLECTION_ID_CHARS_MAX: Final = 256
USER_ID_CHARS_MAX: Final = 128
USER_BODY_BYTES_MAX: Final = 4096
# Entries per page of GET /app/transactions (the SDK follows nextLink for the rest).
PAGE_ENTRIES_MAX: Final = 50
COLLECTIONS_LISTED_MAX: Final = 10_000

# ACL's LedgerEntryV1 application claim (as the SDK's compute_claims_digest checks it).
CLAIM_KIND_LEDGER_ENTRY: Final = "LedgerEntry"
CLAIM_PROTOCOL_LEDGER_ENTRY_V1: Final = "LedgerEntryV1"
CLAIM_SECRET_KEY_BYTES: Final = 32

_TXID = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")
_HEX_ID = re.compile(r"[0-9A-Fa-f]{64}")
# Other user ids (ACL also accepts Entra object ids) are opaque, from a safe alphabet.
_OPAQUE_ID = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_U64_BE = struct.Struct(">Q")


# --------------------------------------------------------------------------------------------
# Roles


class Role:
    READER: Final = "Reader"
    CONTRIBUTOR: Final = "Contributor"
    ADMINISTRATOR: Final = "Administrator"


# Each role may do everything the roles before it may.
ROLE_RANK: Final[dict[str, int]] = {Role.READER: 0, Role.CONTRIBUTOR: 1, Role.ADMINISTRATOR: 2}


def role_allows(role: str | None, needed: str) -> bool:
    assert needed in ROLE_RANK
    return role is not None and ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


# --------------------------------------------------------------------------------------------
# Transaction ids and user ids


@dataclass(frozen=True, slots=True, order=True)
class TxId:
    view: int
    seqno: int

    def __str__(self) -> str:
        return f"{self.view}.{self.seqno}"


def parse_txid(text: str, *, what: str = "transactionId") -> TxId:
    """A CCF transaction id ``view.seqno`` (400 InvalidTransactionId otherwise)."""
    found = _TXID.fullmatch(text)
    if found is None:
        raise HttpError(f"{what} must look like <view>.<seqno>", code="InvalidInput")
    view, seqno = int(found.group(1)), int(found.group(2))
    if view < 1 or seqno < 1 or seqno > (1 << 63):
        raise HttpError(f"{what} has an out-of-range view or seqno", code="InvalidInput")
    return TxId(view, seqno)


def normalise_user_id(text: str) -> str:
    """The key a user is stored under. A certificate fingerprint (ACL writes SHA-256 as
    ``5F:23:…``, Charter as 64 lowercase hex digits; both name the same DER hash) becomes
    lowercase hex, which is Charter's user id; any other id is kept as given."""
    if _FINGERPRINT.fullmatch(text):
        return text.replace(":", "").lower()
    if _HEX_ID.fullmatch(text):
        return text.lower()
    if len(text) > USER_ID_CHARS_MAX or not _OPAQUE_ID.fullmatch(text):
        raise HttpError("userId is not a certificate fingerprint or id", code="InvalidUserId")
    return text


def display_user_id(key: str) -> str:
    """ACL's form of a stored user id: fingerprints as colon-separated uppercase pairs."""
    if _HEX_ID.fullmatch(key):
        upper = key.upper()
        return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))
    return key


# --------------------------------------------------------------------------------------------
# Request bodies


def _json_object(body: bytes, limit_bytes: int) -> dict[str, Any]:
    if len(body) > limit_bytes:
        raise HttpError(f"Body exceeds {limit_bytes} bytes", code="RequestTooLarge")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise HttpError("Body is not valid JSON", code="InvalidInput") from None
    if not isinstance(doc, dict):
        raise HttpError("Body must be a JSON object", code="InvalidInput")
    return doc


def check_collection_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise HttpError("collectionId must be a non-empty string", code="InvalidCollectionId")
    if len(value) > COLLECTION_ID_CHARS_MAX or not value.isprintable():
        raise HttpError(
            f"collectionId must be printable and at most {COLLECTION_ID_CHARS_MAX} characters",
            code="InvalidCollectionId",
        )
    return value


@dataclass(frozen=True, slots=True)
class EntryRequest:
    contents: str
    collection_id: str | None


def parse_entry_body(body: bytes) -> EntryRequest:
    """``{"contents": str, "collectionId"?: str | {"collectionId": str}}``."""
    doc = _json_object(body, BODY_BYTES_MAX)
    contents = doc.get("contents")
    if not isinstance(contents, str):
        raise HttpError("contents must be a string", code="InvalidInput")
    try:
        size = len(contents.encode("utf-8"))
    except UnicodeEncodeError:
        raise HttpError("contents is not valid Unicode", code="InvalidInput") from None
    if size > CONTENTS_BYTES_MAX:
        raise HttpError(f"contents exceeds {CONTENTS_BYTES_MAX} bytes", code="InvalidInput")
    collection = doc.get("collectionId")
    # The SDK's docs show the body's collectionId both as a string and wrapped in an object.
    if isinstance(collection, dict):
        collection = collection.get("collectionId")
    return EntryRequest(contents, None if collection is None else check_collection_id(collection))


def parse_user_body(body: bytes) -> str | None:
    """The ``assignedRole`` of a JSON merge patch on a user (None when absent)."""
    doc = _json_object(body, USER_BODY_BYTES_MAX)
    role = doc.get("assignedRole")
    if role is None:
        return None
    if role not in ROLE_RANK:
        raise HttpError(f"assignedRole must be one of {', '.join(ROLE_RANK)}", code="InvalidRole")
    assert isinstance(role, str)
    return role


# --------------------------------------------------------------------------------------------
# Application claims


def ledger_entry_claim(collection_id: str, contents: str, secret_key: bytes) -> dict[str, Any]:
    """The application claim ACL attaches to a ledger entry, as receipts return it."""
    assert len(secret_key) == CLAIM_SECRET_KEY_BYTES
    return {
        "kind": CLAIM_KIND_LEDGER_ENTRY,
        "ledgerEntry": {
            "collectionId": collection_id,
            "contents": contents,
            "protocol": CLAIM_PROTOCOL_LEDGER_ENTRY_V1,
            "secretKey": base64.b64encode(secret_key).decode("ascii"),
        },
    }


def ledger_entry_claims_digest(collection_id: str, contents: str, secret_key: bytes) -> bytes:
    """The 32-byte claims digest of one LedgerEntryV1 claim.

    The collection id and the contents are each HMAC-SHA256'd under a per-entry secret key,
    so that the digest in the (public) Merkle leaf reveals nothing about private contents;
    then SHA-256(protocol || SHA-256(hmac_c || hmac_x)) is the claim's digest, and the
    claims digest is SHA-256(u32 LE count || claim digests) over the one claim.
    """
    assert len(secret_key) == CLAIM_SECRET_KEY_BYTES
    collection_mac = hmac.new(secret_key, collection_id.encode("utf-8"), hashlib.sha256).digest()
    contents_mac = hmac.new(secret_key, contents.encode("utf-8"), hashlib.sha256).digest()
    entry_digest = hashlib.sha256(collection_mac + contents_mac).digest()
    claim_digest = hashlib.sha256(
        CLAIM_PROTOCOL_LEDGER_ENTRY_V1.encode("ascii") + entry_digest
    ).digest()
    return hashlib.sha256((1).to_bytes(4, "little") + claim_digest).digest()


# --------------------------------------------------------------------------------------------
# Receipts and codecs


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def camel_case_receipt(doc: Any) -> Any:
    """CCF's snake_case JSON receipt with ACL's camelCase keys (values unchanged)."""
    if isinstance(doc, dict):
        return {_camel(str(key)): camel_case_receipt(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [camel_case_receipt(item) for item in doc]
    return doc


def _u64_be_encode(value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 64):
        raise ValueError(f"U64BE codec needs an int in [0, 2**64), got {value!r}")
    return _U64_BE.pack(value)


def _u64_be_decode(data: bytes) -> int:
    if len(data) != 8:
        raise KVError(f"U64BE needs 8 bytes, got {len(data)}", code="CodecError")
    value: int = _U64_BE.unpack(data)[0]
    return value


# Big-endian, so that the store's byte-sorted iteration is seqno order.
U64_BE: Codec[int] = Codec("u64be", _u64_be_encode, _u64_be_decode)
