"""CCF's governance table names and their key/value encodings (FORMATS §1.7, §4).

Keys of id-keyed maps are the ASCII bytes of the 64-hex-digit id; single-value tables use
the 8-byte zero key; JSON values are written compact with sorted keys, as CCF's nlohmann
writer does, so that ledgers read the same in CCF's tools. Certificates are raw PEM bytes.

The names themselves, `SINGLETON_KEY` and the status enums are defined once in
`charter.ledger.service_state` (auditors read the same tables) and re-exported here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx

# The table names and key live in the one vocabulary module, re-exported here for governance.
from charter.ledger.service_state import (
    ALLOWED_TO_JOIN as ALLOWED_TO_JOIN,
)
from charter.ledger.service_state import (
    CONSTITUTION as CONSTITUTION,
)
from charter.ledger.service_state import (
    COSE_HISTORY as COSE_HISTORY,
)
from charter.ledger.service_state import (
    COSE_RECENT_PROPOSALS as COSE_RECENT_PROPOSALS,
)
from charter.ledger.service_state import (
    FILE_TRIGGERS as FILE_TRIGGERS,
)
from charter.ledger.service_state import (
    GOV_TABLE_PREFIX as GOV_TABLE_PREFIX,
)
from charter.ledger.service_state import (
    HISTORY as HISTORY,
)
from charter.ledger.service_state import (
    MEMBERS_ACKS as MEMBERS_ACKS,
)
from charter.ledger.service_state import (
    MEMBERS_CERTS as MEMBERS_CERTS,
)
from charter.ledger.service_state import (
    MEMBERS_ENCRYPTION_PUBLIC_KEYS as MEMBERS_ENCRYPTION_PUBLIC_KEYS,
)
from charter.ledger.service_state import (
    MEMBERS_INFO as MEMBERS_INFO,
)
from charter.ledger.service_state import (
    NODES_ENDORSED_CERTIFICATES as NODES_ENDORSED_CERTIFICATES,
)
from charter.ledger.service_state import (
    NODES_INFO as NODES_INFO,
)
from charter.ledger.service_state import (
    NODES_SNP_HOST_DATA as NODES_SNP_HOST_DATA,
)
from charter.ledger.service_state import (
    NODES_SNP_MEASUREMENTS as NODES_SNP_MEASUREMENTS,
)
from charter.ledger.service_state import (
    NODES_SNP_TCB_VERSIONS as NODES_SNP_TCB_VERSIONS,
)
from charter.ledger.service_state import (
    NODES_VIRTUAL_MEASUREMENTS as NODES_VIRTUAL_MEASUREMENTS,
)
from charter.ledger.service_state import (
    PREVIOUS_SERVICE_IDENTITY as PREVIOUS_SERVICE_IDENTITY,
)
from charter.ledger.service_state import (
    PROPOSALS as PROPOSALS,
)
from charter.ledger.service_state import (
    PROPOSALS_INFO as PROPOSALS_INFO,
)
from charter.ledger.service_state import (
    RECENT_REQUESTS as RECENT_REQUESTS,
)
from charter.ledger.service_state import (
    RETIRED_MEMBERS as RETIRED_MEMBERS,
)
from charter.ledger.service_state import (
    SCITT_CONFIGURATION as SCITT_CONFIGURATION,
)
from charter.ledger.service_state import (
    SERVICE_CONFIG as SERVICE_CONFIG,
)
from charter.ledger.service_state import (
    SERVICE_INFO as SERVICE_INFO,
)
from charter.ledger.service_state import (
    SINGLETON_KEY as SINGLETON_KEY,
)
from charter.ledger.service_state import (
    USERS_CERTS as USERS_CERTS,
)
from charter.ledger.service_state import (
    USERS_INFO as USERS_INFO,
)
from charter.ledger.service_state import (
    MemberStatus as MemberStatus,
)
from charter.ledger.service_state import (
    NodeRecord as NodeRecord,
)
from charter.ledger.service_state import (
    NodeRecordError as NodeRecordError,
)
from charter.ledger.service_state import (
    NodeStatus as NodeStatus,
)
from charter.ledger.service_state import (
    ServiceStatus as ServiceStatus,
)

# Values are governance documents, not application data: a megabyte is generous and bounds
# what a hostile ledger or a buggy writer can make us parse.
MAX_JSON_VALUE_BYTES = 1024 * 1024

_HEX_ID = re.compile(r"[0-9a-f]{64}")


def is_hex_id(value: str) -> bool:
    """A member, user, node or proposal id: 64 lowercase hex digits."""
    return _HEX_ID.fullmatch(value) is not None


def id_key(entity_id: str) -> bytes:
    assert is_hex_id(entity_id), entity_id
    return entity_id.encode("ascii")


def key_to_id(key: bytes) -> str:
    return key.decode("ascii")


def dump_json(value: Any) -> bytes:
    """CCF's JSON encoding: compact separators, sorted keys, UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def load_json(data: bytes, *, what: str) -> Any:
    if len(data) > MAX_JSON_VALUE_BYTES:
        raise GovernanceError(f"{what} value exceeds size limit", code="InternalError")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GovernanceError(f"{what} value is not JSON: {exc}", code="InternalError") from None


def get_json(tx: KvTx, map_name: str, key: bytes) -> Any | None:
    raw = tx.get(map_name, key)
    return None if raw is None else load_json(raw, what=map_name)


def get_json_object(tx: KvTx, map_name: str, key: bytes) -> dict[str, Any] | None:
    value = get_json(tx, map_name, key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise GovernanceError(f"{map_name} value is not a JSON object", code="InternalError")
    return value


def put_json(tx: KvTx, map_name: str, key: bytes, value: Any) -> None:
    tx.put(map_name, key, dump_json(value))


def get_text(tx: KvTx, map_name: str, key: bytes) -> str | None:
    raw = tx.get(map_name, key)
    return None if raw is None else raw.decode("utf-8", errors="strict")


# The service info is read on every application request (is the service open?) and changes
# a handful of times in a service's life; parsing its JSON each time cost ~3% of a write's
# CPU. The last value parsed is kept with the bytes it came from (a value of the KV store,
# so immutable) and handed out as a fresh copy, which callers may change as they like.
_service_info_parsed: tuple[bytes, dict[str, Any]] | None = None


def service_info(tx: KvTx) -> dict[str, Any] | None:
    global _service_info_parsed
    raw = tx.get(SERVICE_INFO, SINGLETON_KEY)
    if raw is None:
        return None
    cached = _service_info_parsed
    if cached is None or not (cached[0] is raw or cached[0] == raw):
        value = load_json(raw, what=SERVICE_INFO)
        if not isinstance(value, dict):
            raise GovernanceError(
                f"{SERVICE_INFO} value is not a JSON object", code="InternalError"
            )
        cached = _service_info_parsed = (bytes(raw), value)
    copy: dict[str, Any] = _copy_json(cached[1])
    return copy


def _copy_json(value: Any) -> Any:
    """A deep copy of a parsed JSON value (its strings and numbers are immutable)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def service_config(tx: KvTx) -> dict[str, Any]:
    return get_json_object(tx, SERVICE_CONFIG, SINGLETON_KEY) or {}


def member_info(tx: KvTx, member_id: str) -> dict[str, Any] | None:
    return get_json_object(tx, MEMBERS_INFO, id_key(member_id))


def active_member_ids(tx: KvTx) -> list[str]:
    """Ids of members whose status is Active, sorted (deterministic across nodes)."""
    active = []
    for key, raw in tx.items(MEMBERS_INFO):
        info = load_json(raw, what=MEMBERS_INFO)
        if isinstance(info, dict) and info.get("status") == MemberStatus.ACTIVE:
            active.append(key_to_id(key))
    return sorted(active)


def node_info(tx: KvTx, node_id: str) -> dict[str, Any] | None:
    return get_json_object(tx, NODES_INFO, id_key(node_id))


def node_record(tx: KvTx, node_id: str) -> NodeRecord | None:
    """The typed record of `node_id`, or None if it has none."""
    info = node_info(tx, node_id)
    if info is None:
        return None
    try:
        return NodeRecord.from_json_object(info)
    except NodeRecordError as e:
        raise GovernanceError(f"{NODES_INFO}: {e}", code="InternalError") from None


# Members whose recovery role gives them a share (CCF's MemberRecoveryRole).
RECOVERY_ROLES = frozenset({"Participant", "Owner"})


def recovery_members(tx: KvTx, *, active_only: bool = True) -> dict[str, str]:
    """Member id -> encryption public key PEM of the members that get a recovery share, as
    CCF counts them: an encryption key, a Participant or Owner role, and (by default)
    status Active. Sorted by id, so every node splits the same way."""
    members: dict[str, str] = {}
    for key, pem in sorted(tx.items(MEMBERS_ENCRYPTION_PUBLIC_KEYS)):
        info = get_json_object(tx, MEMBERS_INFO, key)
        if info is None or info.get("recovery_role", "Participant") not in RECOVERY_ROLES:
            continue
        if active_only and info.get("status") != MemberStatus.ACTIVE:
            continue
        members[key_to_id(key)] = pem.decode("utf-8", errors="replace")
    return members
