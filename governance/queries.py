"""Read-only views of the governance state in CCF's 2024-07-01 JSON shapes."""

from __future__ import annotations

from typing import Any

from charter.governance import tables as t
from charter.governance.actions import DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER
from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx
from charter.ledger import snp

DEFAULT_NODE_CERT_VALIDITY_DAYS = 365
DEFAULT_SERVICE_CERT_VALIDITY_DAYS = 365
DEFAULT_RECENT_COSE_PROPOSALS_WINDOW_SIZE = 100


def _not_found(what: str) -> GovernanceError:
    return GovernanceError(what, code="ResourceNotFound")


def service_info(tx: KvTx) -> dict[str, Any]:
    info = t.service_info(tx)
    if info is None:
        raise _not_found("service info not yet available")
    out: dict[str, Any] = {
        "status": info.get("status"),
        "certificate": info.get("cert"),
        "recoveryCount": info.get("recovery_count") or 0,
        "serviceData": info.get("service_data"),
    }
    if info.get("current_service_create_txid") is not None:
        out["creationTransactionId"] = info["current_service_create_txid"]
    config = t.get_json_object(tx, t.SERVICE_CONFIG, t.SINGLETON_KEY)
    if config is not None:
        out["configuration"] = {
            "recoveryThreshold": config.get("recovery_threshold"),
            "maximumNodeCertificateValidityDays": config.get(
                "maximum_node_certificate_validity_days", DEFAULT_NODE_CERT_VALIDITY_DAYS
            ),
            "maximumServiceCertificateValidityDays": config.get(
                "maximum_service_certificate_validity_days", DEFAULT_SERVICE_CERT_VALIDITY_DAYS
            ),
            "recentCoseProposalsWindowSize": config.get(
                "recent_cose_proposals_window_size", DEFAULT_RECENT_COSE_PROPOSALS_WINDOW_SIZE
            ),
            "maximumOpenProposalsPerMember": config.get(
                "maximum_open_proposals_per_member", DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER
            ),
        }
    return out


def service_status(tx: KvTx) -> str | None:
    info = t.service_info(tx)
    status = None if info is None else info.get("status")
    return status if isinstance(status, str) else None


def _member(tx: KvTx, member_id: str, info: dict[str, Any]) -> dict[str, Any]:
    key = t.id_key(member_id)
    out: dict[str, Any] = {
        "memberId": member_id,
        "status": info.get("status"),
        "memberData": info.get("member_data"),
    }
    cert = t.get_text(tx, t.MEMBERS_CERTS, key)
    if cert is not None:
        out["certificate"] = cert
    enc_key = t.get_text(tx, t.MEMBERS_ENCRYPTION_PUBLIC_KEYS, key)
    if enc_key is not None:
        out["publicEncryptionKey"] = enc_key
    role = info.get("recovery_role") or ("Participant" if enc_key else "NonParticipant")
    out["recoveryRole"] = role
    return out


def members(tx: KvTx) -> dict[str, Any]:
    out = []
    for key, raw in tx.items(t.MEMBERS_INFO):
        info = t.load_json(raw, what=t.MEMBERS_INFO)
        out.append(_member(tx, t.key_to_id(key), info if isinstance(info, dict) else {}))
    out.sort(key=lambda m: str(m["memberId"]))
    return {"value": out}


def member(tx: KvTx, member_id: str) -> dict[str, Any]:
    info = t.member_info(tx, member_id) if t.is_hex_id(member_id) else None
    if info is None:
        raise _not_found(f"member {member_id} does not exist")
    return _member(tx, member_id, info)


def _user(tx: KvTx, user_id: str, cert: bytes) -> dict[str, Any]:
    info = t.get_json_object(tx, t.USERS_INFO, t.id_key(user_id))
    return {
        "userId": user_id,
        "certificate": cert.decode(),
        "userData": None if info is None else info.get("user_data"),
    }


def users(tx: KvTx) -> dict[str, Any]:
    out = [_user(tx, t.key_to_id(k), cert) for k, cert in tx.items(t.USERS_CERTS)]
    out.sort(key=lambda u: str(u["userId"]))
    return {"value": out}


def user(tx: KvTx, user_id: str) -> dict[str, Any]:
    cert = tx.get(t.USERS_CERTS, t.id_key(user_id)) if t.is_hex_id(user_id) else None
    if cert is None:
        raise _not_found(f"user {user_id} does not exist")
    return _user(tx, user_id, cert)


def _node(tx: KvTx, node_id: str, info: dict[str, Any]) -> dict[str, Any]:
    quote = info.get("quote_info") or {}
    out: dict[str, Any] = {
        "nodeId": node_id,
        "status": info.get("status"),
        "nodeData": info.get("node_data"),
        "retiredCommitted": bool(info.get("retired_committed", False)),
        "quoteInfo": {"format": quote.get("format")},
        "rpcInterfaces": {
            name: {
                "publishedAddress": iface.get("published_address"),
                "protocol": iface.get("protocol", "http1"),
            }
            for name, iface in (info.get("rpc_interfaces") or {}).items()
            if isinstance(iface, dict)
        },
    }
    cert = t.get_text(tx, t.NODES_ENDORSED_CERTIFICATES, t.id_key(node_id))
    if cert is not None:
        out["certificate"] = cert
    return out


def nodes(tx: KvTx) -> dict[str, Any]:
    out = []
    for key, raw in tx.items(t.NODES_INFO):
        info = t.load_json(raw, what=t.NODES_INFO)
        out.append(_node(tx, t.key_to_id(key), info if isinstance(info, dict) else {}))
    out.sort(key=lambda n: str(n["nodeId"]))
    return {"value": out}


def node(tx: KvTx, node_id: str) -> dict[str, Any]:
    info = t.node_info(tx, node_id) if t.is_hex_id(node_id) else None
    if info is None:
        raise _not_found(f"node {node_id} does not exist")
    return _node(tx, node_id, info)


def constitution(tx: KvTx) -> Any:
    document = t.get_json(tx, t.CONSTITUTION, t.SINGLETON_KEY)
    if document is None:
        raise _not_found("constitution not found")
    return document


def _allowed(tx: KvTx, table: str) -> list[str]:
    return sorted(
        k.decode()
        for k, raw in tx.items(table)
        if t.load_json(raw, what=table) == t.ALLOWED_TO_JOIN
    )


def join_policy(tx: KvTx) -> dict[str, Any]:
    """CCF's `/gov/service/join-policy` shape: what each platform's nodes need to join."""
    return {
        "virtual": {"measurements": _allowed(tx, t.NODES_VIRTUAL_MEASUREMENTS), "hostData": []},
        "snp": {
            "measurements": _allowed(tx, t.NODES_SNP_MEASUREMENTS),
            "hostData": {
                k.decode(): t.load_json(raw, what=t.NODES_SNP_HOST_DATA)
                for k, raw in tx.items(t.NODES_SNP_HOST_DATA)
            },
            "tcbVersions": {
                k.decode(): t.load_json(raw, what=t.NODES_SNP_TCB_VERSIONS)
                for k, raw in tx.items(t.NODES_SNP_TCB_VERSIONS)
            },
            "uvmEndorsements": {},
        },
    }


def snp_join_policy(tx: KvTx) -> snp.Policy:
    """The governed SEV-SNP policy a joining node's evidence is checked against.

    No governed host data means none is accepted (as CCF: a service on SNP governs it).
    """
    tcb: dict[str, str] = {}
    for key, raw in tx.items(t.NODES_SNP_TCB_VERSIONS):
        value = t.load_json(raw, what=t.NODES_SNP_TCB_VERSIONS)
        if isinstance(value, dict) and isinstance(value.get("hexstring"), str):
            tcb[key.decode()] = value["hexstring"]
    return snp.Policy(
        measurements=frozenset(_allowed(tx, t.NODES_SNP_MEASUREMENTS)),
        host_data=frozenset(k.decode() for k, _ in tx.items(t.NODES_SNP_HOST_DATA)),
        minimum_tcb=tcb,
    )
