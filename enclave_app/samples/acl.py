"""An Azure Confidential Ledger–compatible application (data-plane API version 2022-05-13).

The official ``azure-confidentialledger`` client talks to a Charter network serving this app
unchanged (``charter sandbox --app acl``). See docs/acl.md for the whole story; in short:

    POST   /app/transactions[?collectionId=c]        {"contents": "..."} -> {"collectionId": c}
    GET    /app/transactions/{txid}[?collectionId=c] {"state": "Ready"|"Loading", "entry": ...}
    GET    /app/transactions[?collectionId&fromTransactionId&toTransactionId]  (paged, nextLink)
    GET    /app/transactions/current[?collectionId=c]
    GET    /app/transactions/{txid}/status           {"state": "Pending"|"Committed", ...}
    GET    /app/transactions/{txid}/receipt          CCF receipt, camelCase, + applicationClaims
    GET    /app/collections
    PATCH/GET/DELETE /app/users/{userId}             roles Administrator, Contributor, Reader
    GET    /app/governance/constitution | /app/governance/members | /app/enclaveQuotes

Storage. The private map ``acl.entries`` holds each collection's *latest* entry (keyed by
collection id: its contents, the view and seqno of its transaction id and the per-entry
secret key of its application claim); every write overwrites it, so the enclave holds one
entry per collection however long the ledger grows. Older entries are read back from the
ledger with historical queries (the node's historical cache, as CCF's ACL does): the
transaction that wrote an entry is the one whose write set holds it. Reads of an entry not
yet fetched answer ``Loading`` (the SDK polls), listing pages answer ``Loading`` with a
``nextLink`` to the same page. ``acl.collections`` holds each collection's latest seqno.
Roles live in the public map ``public:acl.users`` (auditable in the ledger), keyed by
Charter user id.

Roles. A caller's role is its ``public:acl.users`` record; a governance-registered user
(``public:ccf.gov.users.certs``) without a record is an Administrator; a removed one has no
role. Readers read, Contributors also write entries, Administrators also manage users.

Claims. Each entry gets a fresh 32-byte secret key; the transaction's claims digest is ACL's
LedgerEntryV1 digest (`acl_model.ledger_entry_claims_digest`), so the receipt proves the
entry and the SDK's ``verify_receipt(..., application_claims=...)`` checks it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
from typing import Any

from charter.enclave_app.app import App, Context
from charter.enclave_app.errors import HttpError
from charter.enclave_app.kv import JSON, STR, Tx
from charter.enclave_app.samples.acl_model import (
    API_VERSION,
    BODY_BYTES_MAX,
    CLAIM_SECRET_KEY_BYTES,
    COLLECTIONS_LISTED_MAX,
    DEFAULT_COLLECTION,
    PAGE_ENTRIES_MAX,
    U64_BE,
    USER_BODY_BYTES_MAX,
    Role,
    TxId,
    camel_case_receipt,
    check_collection_id,
    display_user_id,
    ledger_entry_claim,
    ledger_entry_claims_digest,
    normalise_user_id,
    parse_entry_body,
    parse_txid,
    parse_user_body,
    role_allows,
)
from charter.governance import tables as gt

logger = logging.getLogger(__name__)

ENTRIES = "acl.entries"
# Seqno of each collection's latest entry -> the collection: reads of a latest entry are
# answered from the store at once, without a read back from the ledger.
LATEST_SEQNOS = "acl.latest_seqnos"
COLLECTIONS = "acl.collections"
USERS = "public:acl.users"

COMMITTED = "Committed"
PENDING = "Pending"

app = App("acl", version=API_VERSION)


# --------------------------------------------------------------------------------------------
# Request helpers


def _query(ctx: Context, name: str) -> str | None:
    value = ctx.query.get(name)
    if isinstance(value, list):
        raise HttpError(f"query parameter {name} is repeated", code="InvalidInput")
    assert value is None or isinstance(value, str)
    return value


def _check_api_version(ctx: Context) -> None:
    version = _query(ctx, "api-version")
    if version is not None and version != API_VERSION:
        raise HttpError(
            f"api-version {version[:32]!r} is not {API_VERSION}", code="UnsupportedApiVersion"
        )


def _runtime(ctx: Context) -> Any:
    if ctx.runtime is None:
        raise HttpError("This endpoint needs a running node", code="ServiceNotReady")
    return ctx.runtime


def caller_role(tx: Tx, caller_id: str, *, is_user: bool) -> str | None:
    """The caller's ACL role (see the module docstring), or None."""
    record = tx.view(USERS, STR, JSON).get(caller_id)
    if record is not None:
        return None if record.get("removed") else str(record.get("assignedRole"))
    return Role.ADMINISTRATOR if is_user else None


def _require(ctx: Context, needed: str) -> str:
    caller = ctx.caller
    _check_api_version(ctx)
    role = caller_role(ctx.tx, caller.id, is_user=caller.kind == "user") if caller.id else None
    if not role_allows(role, needed):
        raise HttpError(
            f"This operation needs the {needed} role (caller has {role})", code="Forbidden"
        )
    return caller.id


def _status(ctx: Context, txid: TxId) -> str:
    """Committed or Pending, or a 404 for an unknown or rolled-back transaction id."""
    status = str(_runtime(ctx).tx_status(txid.view, txid.seqno))
    if status in (COMMITTED, PENDING):
        return status
    if status == "Invalid":
        raise HttpError(f"Transaction {txid} was rolled back", code="InvalidTransactionId")
    raise HttpError(f"Transaction {txid} is unknown", code="TransactionNotFound")


# A listing page reads at most this many seqnos back from the ledger (then links onward).
SCAN_SEQNOS_MAX = 2_000


def _written_entry(state: Any) -> dict[str, Any] | None:
    """The ledger entry a historical transaction wrote, if it wrote one."""
    for _collection, record in state.view(ENTRIES, STR, JSON).items():
        if isinstance(record, dict):
            return record
    return None


def _entry_at(ctx: Context, txid: TxId) -> dict[str, Any] | bool | None:
    """The entry written at a committed `txid` (None: no entry there; False: still being
    read back from the ledger)."""
    collection = ctx.tx.view(LATEST_SEQNOS, U64_BE, STR).get(txid.seqno)
    if collection is not None:
        latest = ctx.tx.view(ENTRIES, STR, JSON).get(collection)
        assert latest is not None and latest["seqno"] == txid.seqno
        return latest if latest["view"] == txid.view else None
    state = _runtime(ctx).historical_state(txid.view, txid.seqno)
    if state is None:
        return False
    return _written_entry(state)


def _entry_json(seqno: int, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "collectionId": record["collectionId"],
        "contents": record["contents"],
        "transactionId": str(TxId(int(record["view"]), seqno)),
    }


# --------------------------------------------------------------------------------------------
# Ledger entries


@app.post("/transactions", auth="user_cert", max_body_bytes=BODY_BYTES_MAX)
def create_ledger_entry(ctx: Context) -> dict[str, Any]:
    """Write a ledger entry (Contributor); its claims digest binds collection and contents."""
    _require(ctx, Role.CONTRIBUTOR)
    request = parse_entry_body(ctx.body)
    in_query = _query(ctx, "collectionId")
    collection = (
        check_collection_id(in_query)
        if in_query is not None
        else request.collection_id or DEFAULT_COLLECTION
    )
    pending = _runtime(ctx).pending_txid
    if pending is None:
        raise HttpError("Writes run on the primary; retry", code="NotPrimary")
    view, seqno = pending
    # The store applies every ledger entry, signatures included, so its next version is the
    # seqno this write will take.
    assert seqno == ctx.tx.base_version + 1, (seqno, ctx.tx.base_version)
    secret_key = os.urandom(CLAIM_SECRET_KEY_BYTES)
    entries = ctx.tx.view(ENTRIES, STR, JSON)
    latest_seqnos = ctx.tx.view(LATEST_SEQNOS, U64_BE, STR)
    previous = entries.get(collection)
    if previous is not None:
        latest_seqnos.remove(int(previous["seqno"]))
    latest_seqnos.put(seqno, collection)
    entries.put(
        collection,
        {
            "collectionId": collection,
            "contents": request.contents,
            "secretKey": secret_key.hex(),
            "seqno": seqno,
            "view": view,
        },
    )
    ctx.tx.view(COLLECTIONS, STR, JSON).put(collection, {"latest": seqno})
    ctx.set_claims_digest(ledger_entry_claims_digest(collection, request.contents, secret_key))
    return {"collectionId": collection}


@app.get("/transactions/current", auth="user_cert")
def get_current_ledger_entry(ctx: Context) -> dict[str, Any]:
    """The latest entry of a collection (default collection if none is named)."""
    _require(ctx, Role.READER)
    collection = check_collection_id(_query(ctx, "collectionId") or DEFAULT_COLLECTION)
    latest = ctx.tx.view(COLLECTIONS, STR, JSON).get(collection)
    if latest is None:
        raise HttpError(f"Collection {collection!r} has no entries", code="EntryNotFound")
    seqno = int(latest["latest"])
    record = ctx.tx.view(ENTRIES, STR, JSON).get(collection)
    assert record is not None and record["seqno"] == seqno, "a collection's latest is stored"
    return _entry_json(seqno, record)


@app.get("/transactions/{transactionId}", auth="user_cert")
def get_ledger_entry(ctx: Context) -> dict[str, Any]:
    """The entry written at a transaction id; ``Loading`` until that transaction commits."""
    _require(ctx, Role.READER)
    txid = parse_txid(ctx.path["transactionId"])
    if _status(ctx, txid) != COMMITTED:
        return {"state": "Loading"}
    record = _entry_at(ctx, txid)
    if record is False:
        return {"state": "Loading"}
    wanted = _query(ctx, "collectionId")
    if not isinstance(record, dict) or (wanted is not None and record["collectionId"] != wanted):
        raise HttpError(f"No ledger entry was written at {txid}", code="EntryNotFound")
    return {"state": "Ready", "entry": _entry_json(txid.seqno, record)}


@app.get("/transactions", auth="user_cert")
def list_ledger_entries(ctx: Context) -> dict[str, Any]:
    """Committed entries of a collection in a txid range, oldest first, paged by nextLink."""
    _require(ctx, Role.READER)
    collection = check_collection_id(_query(ctx, "collectionId") or DEFAULT_COLLECTION)
    first = _query(ctx, "fromTransactionId")
    last = _query(ctx, "toTransactionId")
    from_seqno = parse_txid(first, what="fromTransactionId").seqno if first else 1
    commit_view, commit_seqno = _runtime(ctx).commit_txid
    # Later pages keep the first page's upper bound, so paging sees one fixed range.
    to_txid = parse_txid(last, what="toTransactionId") if last else TxId(commit_view, commit_seqno)
    to_seqno = min(to_txid.seqno, commit_seqno)

    def link(from_txid: TxId) -> str:
        query = urllib.parse.urlencode(
            {
                "api-version": API_VERSION,
                "collectionId": collection,
                "fromTransactionId": str(from_txid),
                "toTransactionId": str(to_txid),
            }
        )
        return f"/app/transactions?{query}"

    if from_seqno > to_seqno:
        return {"state": "Ready", "entries": []}
    scan_end = min(to_seqno, from_seqno + SCAN_SEQNOS_MAX - 1)
    states = _runtime(ctx).historical_range(from_seqno, scan_end)
    if states is None:
        # Being read back from the ledger: the same page again (the SDK follows nextLink).
        return {
            "state": "Loading",
            "entries": [],
            "nextLink": link(TxId(commit_view, from_seqno)),
        }
    entries: list[dict[str, Any]] = []
    next_from: TxId | None = None
    for state in states:
        record = _written_entry(state)
        if record is None or record["collectionId"] != collection:
            continue
        if len(entries) == PAGE_ENTRIES_MAX:
            next_from = TxId(state.tx_view, state.seqno)
            break
        entries.append(_entry_json(state.seqno, record))
    if next_from is None and scan_end < to_seqno:
        next_from = TxId(commit_view, scan_end + 1)
    page: dict[str, Any] = {"state": "Ready", "entries": entries}
    if next_from is not None:
        page["nextLink"] = link(next_from)
    return page


@app.get("/transactions/{transactionId}/status", auth="user_cert")
def get_transaction_status(ctx: Context) -> dict[str, Any]:
    """Pending or Committed (404 for unknown or rolled-back ids)."""
    _require(ctx, Role.READER)
    txid = parse_txid(ctx.path["transactionId"])
    return {"state": _status(ctx, txid), "transactionId": str(txid)}


@app.get("/transactions/{transactionId}/receipt", auth="user_cert")
def get_receipt(ctx: Context) -> dict[str, Any]:
    """The CCF receipt of a committed transaction, camelCase, with the application claims
    of the ledger entry written there; ``Loading`` while the receipt is not yet available."""
    _require(ctx, Role.READER)
    txid = parse_txid(ctx.path["transactionId"])
    loading = {"state": "Loading", "transactionId": str(txid), "receipt": None}
    if _status(ctx, txid) != COMMITTED:
        return loading
    code, receipt = _runtime(ctx).receipt(txid.view, txid.seqno)
    if code == 202:
        # Committed, but the signature that covers it is not yet known to be committed here,
        # or the transaction is being read back from the ledger.
        return loading
    if code != 200 or receipt is None:
        raise HttpError(f"No receipt for {txid}", code="TransactionNotFound")
    answer: dict[str, Any] = {
        "state": "Ready",
        "transactionId": str(txid),
        "receipt": camel_case_receipt(receipt),
    }
    record = _entry_at(ctx, txid)
    if record is False:
        return loading
    if isinstance(record, dict):
        secret_key = bytes.fromhex(record["secretKey"])
        answer["applicationClaims"] = [
            ledger_entry_claim(record["collectionId"], record["contents"], secret_key)
        ]
    return answer


@app.get("/collections", auth="user_cert")
def list_collections(ctx: Context) -> dict[str, Any]:
    """Every collection that holds an entry."""
    _require(ctx, Role.READER)
    found = []
    for name, _ in ctx.tx.view(COLLECTIONS, STR, JSON).items():
        found.append({"collectionId": name})
        if len(found) >= COLLECTIONS_LISTED_MAX:
            break
    return {"collections": found}


# --------------------------------------------------------------------------------------------
# Users and roles


def _gov_user(tx: Tx, user_key: str) -> bool:
    return gt.is_hex_id(user_key) and tx.get(gt.USERS_CERTS, gt.id_key(user_key)) is not None


def _user_json(user_key: str, role: str) -> dict[str, Any]:
    return {"assignedRole": role, "userId": display_user_id(user_key)}


@app.get("/users/{userId}", auth="user_cert")
def get_user(ctx: Context) -> dict[str, Any]:
    """A user's role (Administrator only); governance users without a record are
    Administrators."""
    _require(ctx, Role.ADMINISTRATOR)
    key = normalise_user_id(ctx.path["userId"])
    role = caller_role(ctx.tx, key, is_user=_gov_user(ctx.tx, key))
    if role is None:
        raise HttpError(f"No user {ctx.path['userId'][:160]}", code="UserNotFound")
    return _user_json(key, role)


@app.patch("/users/{userId}", auth="user_cert", max_body_bytes=USER_BODY_BYTES_MAX)
def create_or_update_user(ctx: Context) -> dict[str, Any]:
    """Add a user or change a user's role (Administrator only; JSON merge patch)."""
    me = _require(ctx, Role.ADMINISTRATOR)
    key = normalise_user_id(ctx.path["userId"])
    role = parse_user_body(ctx.body)
    current = caller_role(ctx.tx, key, is_user=_gov_user(ctx.tx, key))
    if role is None:
        if current is None:
            raise HttpError("A new user needs an assignedRole", code="InvalidRole")
        role = current
    if key == me and role != Role.ADMINISTRATOR:
        # Keeps at least the acting Administrator: nobody locks themselves out by mistake.
        raise HttpError("An Administrator cannot demote themselves", code="UserConflict")
    ctx.tx.view(USERS, STR, JSON).put(key, {"assignedRole": role})
    logger.info("event=acl_user_set role=%s", role)
    return _user_json(key, role)


@app.delete("/users/{userId}", auth="user_cert")
def delete_user(ctx: Context) -> None:
    """Remove a user's access (Administrator only; 204)."""
    me = _require(ctx, Role.ADMINISTRATOR)
    key = normalise_user_id(ctx.path["userId"])
    gov_user = _gov_user(ctx.tx, key)
    if caller_role(ctx.tx, key, is_user=gov_user) is None:
        raise HttpError(f"No user {ctx.path['userId'][:160]}", code="UserNotFound")
    if key == me:
        raise HttpError("An Administrator cannot remove themselves", code="UserConflict")
    users = ctx.tx.view(USERS, STR, JSON)
    if gov_user:
        # Governance still lists the certificate; the record withdraws the implicit role.
        users.put(key, {"removed": True})
    else:
        users.remove(key)
    logger.info("event=acl_user_removed")


# --------------------------------------------------------------------------------------------
# Governance and attestation, from Charter's own state


@app.get("/governance/constitution", auth="user_cert")
def get_constitution(ctx: Context) -> dict[str, Any]:
    """Charter's constitution document and its SHA-256."""
    _require(ctx, Role.READER)
    raw = ctx.tx.get(gt.CONSTITUTION, gt.SINGLETON_KEY)
    if raw is None:
        raise HttpError("No constitution is set", code="ConstitutionNotFound")
    script = raw.decode("utf-8")
    return {"digest": hashlib.sha256(raw).hexdigest(), "script": script}


@app.get("/governance/members", auth="user_cert")
def list_consortium_members(ctx: Context) -> dict[str, Any]:
    """The consortium members with their certificates."""
    _require(ctx, Role.READER)
    members = [
        {"certificate": pem.decode("utf-8"), "id": gt.key_to_id(key)}
        for key, pem in ctx.tx.items(gt.MEMBERS_CERTS)
    ]
    return {"members": members}


@app.get("/enclaveQuotes", auth="user_cert")
def get_enclave_quotes(ctx: Context) -> dict[str, Any]:
    """Every trusted node's attestation report, as recorded when it joined."""
    _require(ctx, Role.READER)
    quotes: dict[str, Any] = {}
    for key, value in ctx.tx.items(gt.NODES_INFO):
        info = gt.load_json(value, what=gt.NODES_INFO)
        if not isinstance(info, dict) or info.get("status") != gt.NodeStatus.TRUSTED:
            continue
        node_id = gt.key_to_id(key)
        quote = info.get("quote_info") or {}
        quotes[node_id] = {
            "nodeId": node_id,
            "quoteVersion": str(quote.get("format", "")),
            "raw": str(quote.get("quote", "")),
            "mrenclave": str(info.get("code_digest", "")),
        }
    return {"currentNodeId": _runtime(ctx).node_id, "enclaveQuotes": quotes}
