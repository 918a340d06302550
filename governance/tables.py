"""CCF's governance table names and their key/value encodings (FORMATS §1.7, §4).

Keys of id-keyed maps are the ASCII bytes of the 64-hex-digit id; single-value tables use
the 8-byte zero key; JSON values are written compact with sorted keys, as CCF's nlohmann
writer does, so that ledgers read the same in CCF's tools. Certificates are raw PEM bytes.

Two tables are Charter's own (CCF has no equivalent), named under `public:ccf.gov.charter.`
so that they travel with the governance history: `recent_requests` (replay protection for
signed requests other than proposals) and `retired_members` (ids of removed members, so a
removed member's request gets a specific error).
"""

from __future__ import annotations

import json
import re
from typing import Any

from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx

MEMBERS_CERTS = "public:ccf.gov.members.certs"
MEMBERS_INFO = "public:ccf.gov.members.info"
MEMBERS_ENCRYPTION_PUBLIC_KEYS = "public:ccf.gov.members.encryption_public_keys"
MEMBERS_ACKS = "public:ccf.gov.members.acks"
USERS_CERTS = "public:ccf.gov.users.certs"
USERS_INFO = "public:ccf.gov.users.info"
NODES_INFO = "public:ccf.gov.nodes.info"
NODES_ENDORSED_CERTIFICATES = "public:ccf.gov.nodes.endorsed_certificates"
# The code allowed to join, per platform, in CCF's tables (key: the measurement as hex text,
# value: JSON "AllowedToJoin"). SNP also governs host data (key: hex, value: JSON string of
# the security policy it digests, or "") and a minimum TCB per CPU model (key: CPUID hex,
# value: JSON object with the levels and the `hexstring` they were given as).
NODES_VIRTUAL_MEASUREMENTS = "public:ccf.gov.nodes.virtual.measurements"
NODES_SNP_MEASUREMENTS = "public:ccf.gov.nodes.snp.measurements"
NODES_SNP_HOST_DATA = "public:ccf.gov.nodes.snp.host_data"
NODES_SNP_TCB_VERSIONS = "public:ccf.gov.nodes.snp.tcb_versions"
SERVICE_INFO = "public:ccf.gov.service.info"
SERVICE_CONFIG = "public:ccf.gov.service.config"
CONSTITUTION = "public:ccf.gov.constitution"
PROPOSALS = "public:ccf.gov.proposals"
PROPOSALS_INFO = "public:ccf.gov.proposals_info"
COSE_RECENT_PROPOSALS = "public:ccf.gov.cose_recent_proposals"
HISTORY = "public:ccf.gov.history"
COSE_HISTORY = "public:ccf.gov.cose_history"
RECENT_REQUESTS = "public:ccf.gov.charter.recent_requests"
RETIRED_MEMBERS = "public:ccf.gov.charter.retired_members"

SINGLETON_KEY = bytes(8)

# Values are governance documents, not application data: a megabyte is generous and bounds
# what a hostile ledger or a buggy writer can make us parse.
MAX_JSON_VALUE_BYTES = 1024 * 1024

_HEX_ID = re.compile(r"[0-9a-f]{64}")

ALLOWED_TO_JOIN = "AllowedToJoin"


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
        raise GovernanceError("InternalError", f"{what} value exceeds size limit", 500)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GovernanceError("InternalError", f"{what} value is not JSON: {exc}", 500) from None


def get_json(tx: KvTx, map_name: str, key: bytes) -> Any | None:
    raw = tx.get(map_name, key)
    return None if raw is None else load_json(raw, what=map_name)


def get_json_object(tx: KvTx, map_name: str, key: bytes) -> dict[str, Any] | None:
    value = get_json(tx, map_name, key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise GovernanceError("InternalError", f"{map_name} value is not a JSON object", 500)
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
                "InternalError", f"{SERVICE_INFO} value is not a JSON object", 500
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
        if isinstance(info, dict) and info.get("status") == "Active":
            active.append(key_to_id(key))
    return sorted(active)


def node_info(tx: KvTx, node_id: str) -> dict[str, Any] | None:
    return get_json_object(tx, NODES_INFO, id_key(node_id))
