"""The start of a network: the first node writes the initial governance state.

Members start `Accepted` (as in CCF) and become `Active` by acking a state digest; the
service starts `Opening` and becomes `Open` only through a `transition_service_to_open`
proposal. The constitution and service configuration come from the first node's config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from charter.governance import tables as t
from charter.governance.actions import (
    DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER,
    MAX_OPEN_PROPOSALS_PER_MEMBER_LIMIT,
    MAX_RECOVERY_THRESHOLD,
)
from charter.governance.constitution import Constitution, default_constitution, store_constitution
from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx
from charter.ledger import certs
from charter.ledger.errors import LedgerError

logger = logging.getLogger(__name__)


class InitialMember(BaseModel):
    """A member from the first node's config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: str
    encryption_public_key: str | None = None
    member_data: JsonValue = None
    recovery_role: Literal["NonParticipant", "Participant", "Owner"] | None = None


class ServiceConfig(BaseModel):
    """`public:ccf.gov.service.config`, CCF's field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recovery_threshold: int = 1
    reconfiguration_type: Literal["OneTransaction", "TwoTransaction"] = "OneTransaction"
    recent_cose_proposals_window_size: int = 100
    maximum_node_certificate_validity_days: int = 365
    maximum_service_certificate_validity_days: int = 365
    # Charter's own: how many proposals one member may have open at a time.
    maximum_open_proposals_per_member: int = Field(
        default=DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER, ge=1, le=MAX_OPEN_PROPOSALS_PER_MEMBER_LIMIT
    )


def bootstrap(
    tx: KvTx,
    *,
    members: Sequence[InitialMember],
    service_cert_pem: str,
    node_id: str,
    node_info: dict[str, Any],
    node_endorsed_cert_pem: str | None = None,
    constitution: Constitution | None = None,
    service_config: ServiceConfig | None = None,
    create_txid: str | None = None,
    service_data: JsonValue = None,
) -> list[str]:
    """Write the genesis governance state; returns the member ids in the given order."""
    if not members:
        raise GovernanceError("a network needs at least one member", code="InvalidGenesis")
    if t.service_info(tx) is not None:
        raise GovernanceError("the service already exists", code="InvalidGenesis")
    config = service_config or ServiceConfig()
    recovery_members = sum(1 for m in members if m.encryption_public_key is not None)
    if not 1 <= config.recovery_threshold <= MAX_RECOVERY_THRESHOLD or (
        recovery_members and config.recovery_threshold > recovery_members
    ):
        raise GovernanceError(
            f"recovery_threshold {config.recovery_threshold} does not fit "
            f"{recovery_members} recovery members",
            code="InvalidGenesis",
        )
    member_ids = []
    for member in members:
        try:
            member_id = certs.cert_id(member.cert)
            if member.encryption_public_key is not None:
                certs.load_public_key(member.encryption_public_key)
        except LedgerError as exc:
            raise GovernanceError(f"bad initial member: {exc}", code="InvalidGenesis") from None
        if member_id in member_ids:
            raise GovernanceError(f"member {member_id} listed twice", code="InvalidGenesis")
        member_ids.append(member_id)
        key = t.id_key(member_id)
        tx.put(t.MEMBERS_CERTS, key, member.cert.encode())
        info: dict[str, Any] = {
            "status": t.MemberStatus.ACCEPTED,
            "member_data": member.member_data,
        }
        if member.encryption_public_key is not None:
            tx.put(t.MEMBERS_ENCRYPTION_PUBLIC_KEYS, key, member.encryption_public_key.encode())
            info["recovery_role"] = member.recovery_role or "Participant"
        else:
            info["recovery_role"] = member.recovery_role or "NonParticipant"
        t.put_json(tx, t.MEMBERS_INFO, key, info)
        # No signed root exists yet; the member asks for one with :update, then acks it.
        t.put_json(tx, t.MEMBERS_ACKS, key, {"state_digest": ""})

    service: dict[str, Any] = {
        "cert": service_cert_pem,
        "status": t.ServiceStatus.OPENING,
        "recovery_count": 0,
        "service_data": service_data,
    }
    if create_txid is not None:
        service["current_service_create_txid"] = create_txid
    t.put_json(tx, t.SERVICE_INFO, t.SINGLETON_KEY, service)
    t.put_json(tx, t.SERVICE_CONFIG, t.SINGLETON_KEY, config.model_dump(mode="json"))
    store_constitution(tx, constitution or default_constitution())

    node = dict(node_info)
    node["status"] = t.NodeStatus.TRUSTED
    node.pop("cert", None)  # a 1.x field; CCF's validator refuses it next to endorsed certs
    t.put_json(tx, t.NODES_INFO, t.id_key(node_id), node)
    if node_endorsed_cert_pem is not None:
        tx.put(t.NODES_ENDORSED_CERTIFICATES, t.id_key(node_id), node_endorsed_cert_pem.encode())
    logger.info("genesis members=%d node_id=%s", len(member_ids), node_id)
    return member_ids


def parse_initial_members(raw: Any) -> list[InitialMember]:
    """Initial members from a config file's JSON; GovernanceError on a bad entry."""
    if not isinstance(raw, list):
        raise GovernanceError("members must be a list", code="InvalidGenesis")
    try:
        return [InitialMember.model_validate(item) for item in raw]
    except ValidationError as exc:
        raise GovernanceError(f"bad initial member: {exc}", code="InvalidGenesis") from None
