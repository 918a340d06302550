"""Governance actions: for each, a pydantic argument schema, a check against the current
state, and an apply function that writes CCF's governance tables.

`check` runs when a proposal is created (so bad proposals are refused up front) and again
just before `apply` when the proposal is accepted (the state may have moved). `apply`
returns `Effects` for what governance cannot do itself because it needs the enclave's keys
(endorsing a node certificate, opening the service, rekeying the ledger); the runtime
performs them in the same transaction. Node certificate endorsement needs the service key,
so `transition_node_to_trusted` only records the node as Trusted and asks for it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue, StringConstraints, ValidationError

from charter.governance import cert_validity
from charter.governance import jwt as jwt_actions
from charter.governance import tables as t
from charter.governance.constitution import Constitution, parse_constitution, store_constitution
from charter.governance.effects import NO_EFFECTS, ActionContext, Effects, NodeEndorsement
from charter.governance.errors import GovernanceError
from charter.governance.scitt_config import (
    SetScittConfigurationArgs,
    apply_set_scitt_configuration,
    check_set_scitt_configuration,
)
from charter.governance.tx import KvTx
from charter.ledger import certs, snp
from charter.ledger.errors import LedgerError

logger = logging.getLogger(__name__)

HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Pem = Annotated[str, StringConstraints(min_length=1, max_length=certs.MAX_CERT_PEM_BYTES)]
Measurement = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{2}){1,128}$")]
# SEV-SNP values, as CCF writes them: lowercase hex of fixed lengths.
SnpMeasurement = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{96}$")]
HostData = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Cpuid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}$")]
TcbHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
MAX_SECURITY_POLICY_BYTES = 64 * 1024
RecoveryRole = Literal["NonParticipant", "Participant", "Owner"]

MAX_RECOVERY_THRESHOLD = 254


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Open proposals one member may have at a time (`public:ccf.gov.service.config`'s
# `maximum_open_proposals_per_member`): every open proposal is re-checked whenever another
# is accepted, so an unbounded number would let one member slow down all governance.
DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER = 20
MAX_OPEN_PROPOSALS_PER_MEMBER_LIMIT = 1000


def _invalid(message: str) -> GovernanceError:
    return GovernanceError(message, code="ProposalFailedToValidate")


# ---------------------------------------------------------------------------------------
# Members


class SetMemberArgs(Args):
    cert: Pem
    encryption_pub_key: Pem | None = None
    member_data: JsonValue = None
    recovery_role: RecoveryRole | None = None


class MemberIdArgs(Args):
    member_id: HexId


class SetMemberDataArgs(Args):
    member_id: HexId
    member_data: JsonValue = None


def _load_member_cert(pem: str) -> str:
    """The member id of a usable member certificate (ECDSA, for COSE signing)."""
    try:
        cert = certs.load_cert(pem)
    except LedgerError as exc:
        raise _invalid(f"cert is not a PEM certificate: {exc}") from None
    if not hasattr(cert.public_key(), "curve"):
        raise _invalid("member cert must hold an ECDSA key (COSE requests are ECDSA)")
    return certs.cert_id(cert)


def check_set_member(tx: KvTx, args: SetMemberArgs) -> None:
    _load_member_cert(args.cert)
    if args.encryption_pub_key is not None:
        try:
            key = certs.load_public_key(args.encryption_pub_key)
        except LedgerError as exc:
            raise _invalid(f"encryption_pub_key is not a PEM public key: {exc}") from None
        key_size = getattr(key, "key_size", None)
        if hasattr(key, "curve") or not isinstance(key_size, int):
            raise _invalid("encryption_pub_key must be an RSA key")
        if key_size < certs.RSA_ENCRYPTION_KEY_BITS_MIN:
            raise _invalid(
                f"encryption_pub_key must be at least {certs.RSA_ENCRYPTION_KEY_BITS_MIN} bits"
            )
    if args.recovery_role in ("Participant", "Owner") and args.encryption_pub_key is None:
        raise _invalid(f"recovery_role {args.recovery_role} needs an encryption_pub_key")


def apply_set_member(tx: KvTx, args: SetMemberArgs, ctx: ActionContext) -> Effects:
    member_id = _load_member_cert(args.cert)
    key = t.id_key(member_id)
    # Setting an active recovery member again makes it Accepted: it leaves the share holders.
    was_recovery = member_id in t.recovery_members(tx)
    tx.put(t.MEMBERS_CERTS, key, args.cert.encode())
    info: dict[str, Any] = {"status": t.MemberStatus.ACCEPTED, "member_data": args.member_data}
    if args.encryption_pub_key is not None:
        tx.put(t.MEMBERS_ENCRYPTION_PUBLIC_KEYS, key, args.encryption_pub_key.encode())
        info["recovery_role"] = args.recovery_role or "Participant"
    else:
        tx.remove(t.MEMBERS_ENCRYPTION_PUBLIC_KEYS, key)
        info["recovery_role"] = args.recovery_role or "NonParticipant"
    t.put_json(tx, t.MEMBERS_INFO, key, info)
    # The new member activates by acking this digest (FORMATS §6 :ack).
    t.put_json(tx, t.MEMBERS_ACKS, key, {"state_digest": ctx.merkle_root.hex()})
    tx.remove(t.RETIRED_MEMBERS, key)
    return Effects(refresh_recovery_shares=True) if was_recovery else NO_EFFECTS


def check_remove_member(tx: KvTx, args: MemberIdArgs) -> None:
    info = t.member_info(tx, args.member_id)
    if info is None:
        raise _invalid(f"member {args.member_id} does not exist")
    active = t.active_member_ids(tx)
    if active == [args.member_id]:
        raise _invalid("cannot remove the last active member")
    recovery = t.recovery_members(tx)
    threshold = t.service_config(tx).get("recovery_threshold", 1)
    if args.member_id in recovery and len(recovery) - 1 < threshold:
        # As CCF: the shares re-issued without this member must still reach the threshold.
        raise _invalid(
            f"removing recovery member {args.member_id} would leave {len(recovery) - 1} "
            f"active recovery members, below the recovery threshold {threshold}"
        )


def apply_remove_member(tx: KvTx, args: MemberIdArgs, ctx: ActionContext) -> Effects:
    key = t.id_key(args.member_id)
    info = t.member_info(tx, args.member_id) or {}
    was_recovery = tx.get(t.MEMBERS_ENCRYPTION_PUBLIC_KEYS, key) is not None
    for map_name in (
        t.MEMBERS_CERTS,
        t.MEMBERS_ENCRYPTION_PUBLIC_KEYS,
        t.MEMBERS_INFO,
        t.MEMBERS_ACKS,
        t.HISTORY,
        t.COSE_HISTORY,
    ):
        tx.remove(map_name, key)
    t.put_json(tx, t.RETIRED_MEMBERS, key, {"proposal_id": ctx.proposal_id})
    # As CCF: removing an active recovery member rotates the ledger secret so that the
    # shares it held no longer open future ledger suffixes.
    rekey = was_recovery and info.get("status") == t.MemberStatus.ACTIVE
    return Effects(rekey=rekey, refresh_recovery_shares=rekey)


def check_set_member_data(tx: KvTx, args: SetMemberDataArgs) -> None:
    if t.member_info(tx, args.member_id) is None:
        raise _invalid(f"member {args.member_id} does not exist")


def apply_set_member_data(tx: KvTx, args: SetMemberDataArgs, ctx: ActionContext) -> Effects:
    info = t.member_info(tx, args.member_id)
    assert info is not None, "checked before apply"
    info["member_data"] = args.member_data
    t.put_json(tx, t.MEMBERS_INFO, t.id_key(args.member_id), info)
    return NO_EFFECTS


# ---------------------------------------------------------------------------------------
# Users


class SetUserArgs(Args):
    cert: Pem
    user_data: JsonValue = None


class UserIdArgs(Args):
    user_id: HexId


class SetUserDataArgs(Args):
    user_id: HexId
    user_data: JsonValue = None


def _user_id(pem: str) -> str:
    try:
        return certs.cert_id(certs.load_cert(pem))
    except LedgerError as exc:
        raise _invalid(f"cert is not a PEM certificate: {exc}") from None


def check_set_user(tx: KvTx, args: SetUserArgs) -> None:
    _user_id(args.cert)


def check_user_cert_valid_at(args: SetUserArgs, now_s: int) -> None:
    """A user's cert is its TLS client identity: one outside its validity period would fail
    every handshake, so it is refused here rather than registered."""
    cert = certs.load_cert(args.cert)  # parsed by check_set_user already
    not_before = int(cert.not_valid_before_utc.timestamp())
    not_after = int(cert.not_valid_after_utc.timestamp())
    if now_s < not_before:
        raise _invalid(
            f"cert is not valid yet: its validity starts at {_utc(not_before)}, now is {_utc(now_s)}"
        )
    if now_s > not_after:
        raise _invalid(f"cert expired at {_utc(not_after)}, now is {_utc(now_s)}")


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply_set_user(tx: KvTx, args: SetUserArgs, ctx: ActionContext) -> Effects:
    key = t.id_key(_user_id(args.cert))
    tx.put(t.USERS_CERTS, key, args.cert.encode())
    if args.user_data is None:
        tx.remove(t.USERS_INFO, key)
    else:
        t.put_json(tx, t.USERS_INFO, key, {"user_data": args.user_data})
    return NO_EFFECTS


def _check_user_exists(tx: KvTx, user_id: str) -> None:
    if tx.get(t.USERS_CERTS, t.id_key(user_id)) is None:
        raise _invalid(f"user {user_id} does not exist")


def check_remove_user(tx: KvTx, args: UserIdArgs) -> None:
    _check_user_exists(tx, args.user_id)


def apply_remove_user(tx: KvTx, args: UserIdArgs, ctx: ActionContext) -> Effects:
    key = t.id_key(args.user_id)
    tx.remove(t.USERS_CERTS, key)
    tx.remove(t.USERS_INFO, key)
    return NO_EFFECTS


def check_set_user_data(tx: KvTx, args: SetUserDataArgs) -> None:
    _check_user_exists(tx, args.user_id)


def apply_set_user_data(tx: KvTx, args: SetUserDataArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, t.USERS_INFO, t.id_key(args.user_id), {"user_data": args.user_data})
    return NO_EFFECTS


# ---------------------------------------------------------------------------------------
# Nodes


class TrustNodeArgs(Args):
    node_id: HexId
    valid_from: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    validity_period_days: int | None = None


class NodeIdArgs(Args):
    node_id: HexId


class MeasurementArgs(Args):
    measurement: Measurement


class SnpMeasurementArgs(Args):
    measurement: SnpMeasurement


class SnpHostDataArgs(Args):
    host_data: HostData
    security_policy: Annotated[str, StringConstraints(max_length=MAX_SECURITY_POLICY_BYTES)] = ""


class SnpHostDataKeyArgs(Args):
    host_data: HostData


class SnpTcbArgs(Args):
    cpuid: Cpuid
    tcb_version: TcbHex


class CpuidArgs(Args):
    cpuid: Cpuid


def _node_record(tx: KvTx, node_id: str) -> t.NodeRecord:
    record = t.node_record(tx, node_id)
    if record is None:
        raise _invalid(f"node {node_id} does not exist")
    return record


def check_trust_node(tx: KvTx, args: TrustNodeArgs) -> None:
    if _node_record(tx, args.node_id).status is t.NodeStatus.RETIRED:
        raise _invalid(f"node {args.node_id} is retired")
    if args.valid_from is not None:
        cert_validity.parse_valid_from(args.valid_from)
    cert_validity.node_validity_days(tx, args.validity_period_days)


def check_trust_node_at(args: TrustNodeArgs, now_s: int) -> None:
    if args.valid_from is not None:
        cert_validity.check_period_at(args.valid_from, args.validity_period_days, now_s)


def apply_trust_node(tx: KvTx, args: TrustNodeArgs, ctx: ActionContext) -> Effects:
    record = _node_record(tx, args.node_id)
    if record.status is t.NodeStatus.TRUSTED:
        return NO_EFFECTS  # idempotent, as CCF: an already trusted node keeps its cert
    assert record.status is t.NodeStatus.PENDING, record.status
    t.put_json(tx, t.NODES_INFO, t.id_key(args.node_id), record.with_status(t.NodeStatus.TRUSTED))
    # Without a period the node is endorsed for the service's limit, as in CCF.
    days = cert_validity.node_validity_days(tx, args.validity_period_days)
    endorsement = NodeEndorsement(args.node_id, args.valid_from, days)
    return Effects(endorse_nodes=(endorsement,))


def check_remove_node(tx: KvTx, args: NodeIdArgs) -> None:
    if _node_record(tx, args.node_id).status is t.NodeStatus.TRUSTED:
        trusted = [
            k
            for k, raw in tx.items(t.NODES_INFO)
            if (t.load_json(raw, what=t.NODES_INFO) or {}).get("status") == t.NodeStatus.TRUSTED
        ]
        if len(trusted) <= 1:
            raise _invalid("cannot remove the last trusted node")


def apply_remove_node(tx: KvTx, args: NodeIdArgs, ctx: ActionContext) -> Effects:
    record = _node_record(tx, args.node_id)
    key = t.id_key(args.node_id)
    if record.status is t.NodeStatus.PENDING:
        tx.remove(t.NODES_INFO, key)
        tx.remove(t.NODES_ENDORSED_CERTIFICATES, key)
        return NO_EFFECTS
    if record.status is t.NodeStatus.RETIRED:
        return NO_EFFECTS
    info = record.with_status(t.NodeStatus.RETIRED)
    info["retired_committed"] = False
    t.put_json(tx, t.NODES_INFO, key, info)
    return Effects(retired_nodes=(args.node_id,))


def check_add_measurement(tx: KvTx, args: MeasurementArgs) -> None:
    return None


def apply_add_measurement(tx: KvTx, args: MeasurementArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, t.NODES_VIRTUAL_MEASUREMENTS, args.measurement.encode(), t.ALLOWED_TO_JOIN)
    return NO_EFFECTS


def check_remove_measurement(tx: KvTx, args: MeasurementArgs) -> None:
    if tx.get(t.NODES_VIRTUAL_MEASUREMENTS, args.measurement.encode()) is None:
        raise _invalid(f"measurement {args.measurement} is not allowed to join")


def apply_remove_measurement(tx: KvTx, args: MeasurementArgs, ctx: ActionContext) -> Effects:
    tx.remove(t.NODES_VIRTUAL_MEASUREMENTS, args.measurement.encode())
    return NO_EFFECTS


def _require_key(tx: KvTx, table: str, key: str, what: str) -> None:
    if tx.get(table, key.encode()) is None:
        raise _invalid(f"{what} {key} is not in {table}")


def check_add_snp_measurement(tx: KvTx, args: SnpMeasurementArgs) -> None:
    return None


def apply_add_snp_measurement(tx: KvTx, args: SnpMeasurementArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, t.NODES_SNP_MEASUREMENTS, args.measurement.encode(), t.ALLOWED_TO_JOIN)
    return NO_EFFECTS


def check_remove_snp_measurement(tx: KvTx, args: SnpMeasurementArgs) -> None:
    _require_key(tx, t.NODES_SNP_MEASUREMENTS, args.measurement, "measurement")


def apply_remove_snp_measurement(tx: KvTx, args: SnpMeasurementArgs, ctx: ActionContext) -> Effects:
    tx.remove(t.NODES_SNP_MEASUREMENTS, args.measurement.encode())
    return NO_EFFECTS


def check_add_snp_host_data(tx: KvTx, args: SnpHostDataArgs) -> None:
    # As CCF: a security policy given with the host data must be what it digests.
    if args.security_policy:
        digest = hashlib.sha256(args.security_policy.encode()).hexdigest()
        if digest != args.host_data:
            raise _invalid(f"security_policy digests to {digest}, not host_data {args.host_data}")


def apply_add_snp_host_data(tx: KvTx, args: SnpHostDataArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, t.NODES_SNP_HOST_DATA, args.host_data.encode(), args.security_policy)
    return NO_EFFECTS


def check_remove_snp_host_data(tx: KvTx, args: SnpHostDataKeyArgs) -> None:
    _require_key(tx, t.NODES_SNP_HOST_DATA, args.host_data, "host data")


def apply_remove_snp_host_data(tx: KvTx, args: SnpHostDataKeyArgs, ctx: ActionContext) -> Effects:
    tx.remove(t.NODES_SNP_HOST_DATA, args.host_data.encode())
    return NO_EFFECTS


def _tcb_policy(args: SnpTcbArgs) -> dict[str, Any]:
    try:
        product = snp.product_of_cpuid(args.cpuid)
        levels = snp.TcbVersion.from_hex(args.tcb_version, product)
    except snp.SnpError as exc:
        raise _invalid(str(exc)) from None
    policy: dict[str, Any] = {
        "boot_loader": levels.bootloader,
        "tee": levels.tee,
        "snp": levels.snp,
        "microcode": levels.microcode,
        "hexstring": args.tcb_version,
    }
    if product is snp.Product.TURIN:
        policy["fmc"] = levels.fmc
    return policy


def check_set_snp_tcb(tx: KvTx, args: SnpTcbArgs) -> None:
    _tcb_policy(args)


def apply_set_snp_tcb(tx: KvTx, args: SnpTcbArgs, ctx: ActionContext) -> Effects:
    t.put_json(tx, t.NODES_SNP_TCB_VERSIONS, args.cpuid.encode(), _tcb_policy(args))
    return NO_EFFECTS


def check_remove_snp_tcb(tx: KvTx, args: CpuidArgs) -> None:
    _require_key(tx, t.NODES_SNP_TCB_VERSIONS, args.cpuid, "CPUID")


def apply_remove_snp_tcb(tx: KvTx, args: CpuidArgs, ctx: ActionContext) -> Effects:
    tx.remove(t.NODES_SNP_TCB_VERSIONS, args.cpuid.encode())
    return NO_EFFECTS


# ---------------------------------------------------------------------------------------
# Service


class OpenServiceArgs(Args):
    next_service_identity: Pem | None = None
    previous_service_identity: Pem | None = None


class ConstitutionArgs(Args):
    # Validated into a Constitution by check_set_constitution (a clearer error than nesting).
    constitution: dict[str, JsonValue]


class RecoveryThresholdArgs(Args):
    recovery_threshold: int


class NoArgs(Args):
    pass


class ServiceConfigArgs(Args):
    reconfiguration_type: Literal["OneTransaction", "TwoTransaction"] | None = None
    recovery_threshold: int | None = None
    recent_cose_proposals_window_size: int | None = None
    maximum_node_certificate_validity_days: int | None = None
    maximum_service_certificate_validity_days: int | None = None
    maximum_open_proposals_per_member: int | None = None


def _same_pem(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def check_open_service(tx: KvTx, args: OpenServiceArgs) -> None:
    info = t.service_info(tx)
    if info is None:
        raise _invalid("the service has not been started")
    status = info.get("status")
    if status == t.ServiceStatus.RECOVERING:
        # CCF's rule: opening a recovered service names both identities, and both must be
        # the ones this service holds: the members confirm which service they recover.
        if args.previous_service_identity is None or args.next_service_identity is None:
            raise _invalid(
                "opening a recovering service needs previous_service_identity and "
                "next_service_identity"
            )
        previous = tx.get(t.PREVIOUS_SERVICE_IDENTITY, t.SINGLETON_KEY)
        if previous is None or not _same_pem(args.previous_service_identity, previous.decode()):
            raise _invalid("previous_service_identity is not the service this one recovers")
    elif status == t.ServiceStatus.OPENING:
        if args.previous_service_identity is not None:
            raise _invalid("previous_service_identity is only for a recovering service")
    else:
        raise _invalid(f"service is {status}, not Opening or Recovering")
    if args.next_service_identity is not None and not _same_pem(
        args.next_service_identity, str(info.get("cert", ""))
    ):
        raise _invalid("next_service_identity is not this service's certificate")


def apply_open_service(tx: KvTx, args: OpenServiceArgs, ctx: ActionContext) -> Effects:
    info = t.service_info(tx)
    assert info is not None
    if info.get("status") == t.ServiceStatus.RECOVERING:
        # The public state is back; the private state waits for the recovery shares, whose
        # threshold opens the service (the node's private replay writes Open).
        info["status"] = t.ServiceStatus.WAITING_FOR_RECOVERY_SHARES
        t.put_json(tx, t.SERVICE_INFO, t.SINGLETON_KEY, info)
        return NO_EFFECTS
    assert info.get("status") == t.ServiceStatus.OPENING
    info["status"] = t.ServiceStatus.OPEN
    t.put_json(tx, t.SERVICE_INFO, t.SINGLETON_KEY, info)
    return Effects(open_service=True)


def check_set_constitution(tx: KvTx, args: ConstitutionArgs) -> None:
    parse_constitution(args.constitution)


def apply_set_constitution(tx: KvTx, args: ConstitutionArgs, ctx: ActionContext) -> Effects:
    constitution: Constitution = parse_constitution(args.constitution)
    store_constitution(tx, constitution)
    return NO_EFFECTS


def _check_threshold(tx: KvTx, threshold: int) -> None:
    """1 <= k <= the active recovery members (CCF's count). While the service is opening,
    its recovery members may not have acked yet: those count too, Active or not."""
    if not 1 <= threshold <= MAX_RECOVERY_THRESHOLD:
        raise _invalid(f"recovery_threshold must be between 1 and {MAX_RECOVERY_THRESHOLD}")
    info = t.service_info(tx)
    opening = info is None or info.get("status") == t.ServiceStatus.OPENING
    recovery_members = len(t.recovery_members(tx, active_only=not opening))
    if threshold > recovery_members:
        which = "recovery members" if opening else "active recovery members"
        raise _invalid(f"recovery_threshold {threshold} exceeds the {recovery_members} {which}")


def check_set_recovery_threshold(tx: KvTx, args: RecoveryThresholdArgs) -> None:
    _check_threshold(tx, args.recovery_threshold)


def apply_set_recovery_threshold(
    tx: KvTx, args: RecoveryThresholdArgs, ctx: ActionContext
) -> Effects:
    config = t.service_config(tx)
    if config.get("recovery_threshold") == args.recovery_threshold:
        return NO_EFFECTS
    config["recovery_threshold"] = args.recovery_threshold
    t.put_json(tx, t.SERVICE_CONFIG, t.SINGLETON_KEY, config)
    return Effects(refresh_recovery_shares=True)


def check_rekey(tx: KvTx, args: NoArgs) -> None:
    info = t.service_info(tx)
    if info is None or info.get("status") != t.ServiceStatus.OPEN:
        raise _invalid("the ledger can only be rekeyed once the service is open")


def apply_rekey(tx: KvTx, args: NoArgs, ctx: ActionContext) -> Effects:
    # The new ledger secret is made and recorded by the runtime, which holds the secrets;
    # the accepted proposal in proposals_info is the governance record of the request.
    return Effects(rekey=True)


def check_refresh_shares(tx: KvTx, args: NoArgs) -> None:
    if not t.recovery_members(tx):
        raise _invalid("there are no active recovery members to issue shares to")


def apply_refresh_shares(tx: KvTx, args: NoArgs, ctx: ActionContext) -> Effects:
    # New shares of a new wrapping key (the runtime holds the ledger secret to wrap).
    return Effects(refresh_recovery_shares=True)


def check_file_trigger(tx: KvTx, args: NoArgs) -> None:
    """trigger_snapshot / trigger_ledger_chunk: anything goes (as in CCF), no arguments."""


def _record_trigger(tx: KvTx, what: bytes, ctx: ActionContext) -> None:
    # Recorded in the KV so that every node, not only the one that applies the proposal,
    # learns of it (a backup snapshots where the primary does).
    tx.put(t.FILE_TRIGGERS, what, json.dumps({"proposal_id": ctx.proposal_id}).encode())


def apply_trigger_snapshot(tx: KvTx, args: NoArgs, ctx: ActionContext) -> Effects:
    _record_trigger(tx, b"snapshot", ctx)
    return Effects(trigger_snapshot=True)


def apply_trigger_ledger_chunk(tx: KvTx, args: NoArgs, ctx: ActionContext) -> Effects:
    _record_trigger(tx, b"ledger_chunk", ctx)
    return Effects(trigger_ledger_chunk=True)


def check_service_config(tx: KvTx, args: ServiceConfigArgs) -> None:
    values = args.model_dump(exclude_none=True)
    if not values:
        raise _invalid("set_service_configuration needs at least one setting")
    if args.recovery_threshold is not None:
        _check_threshold(tx, args.recovery_threshold)
    bounds = {
        "recent_cose_proposals_window_size": (1, 10_000),
        "maximum_node_certificate_validity_days": (1, 3650),
        "maximum_service_certificate_validity_days": (1, 3650),
        "maximum_open_proposals_per_member": (1, MAX_OPEN_PROPOSALS_PER_MEMBER_LIMIT),
    }
    for name, (low, high) in bounds.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            raise _invalid(f"{name} must be between {low} and {high}")


def apply_service_config(tx: KvTx, args: ServiceConfigArgs, ctx: ActionContext) -> Effects:
    config = t.service_config(tx)
    values = args.model_dump(exclude_none=True)
    threshold_changed = (
        "recovery_threshold" in values
        and config.get("recovery_threshold") != values["recovery_threshold"]
    )
    config.update(values)
    t.put_json(tx, t.SERVICE_CONFIG, t.SINGLETON_KEY, config)
    return Effects(refresh_recovery_shares=threshold_changed)


# ---------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    args_model: type[BaseModel]
    check: Callable[[KvTx, Any], None]
    apply: Callable[[KvTx, Any, ActionContext], Effects]
    # Checks that depend on the time (certificate validity): (args, now_s).
    check_at: Callable[[Any, int], None] | None = None
    # Accepting this action changes what other open proposals mean (CCF's default
    # constitution invalidates them for the same actions), so they are Dropped.
    drops_open_proposals: bool = False


_SPECS = (
    ActionSpec("set_member", SetMemberArgs, check_set_member, apply_set_member),
    ActionSpec("remove_member", MemberIdArgs, check_remove_member, apply_remove_member),
    ActionSpec("set_member_data", SetMemberDataArgs, check_set_member_data, apply_set_member_data),
    ActionSpec(
        "set_user", SetUserArgs, check_set_user, apply_set_user, check_at=check_user_cert_valid_at
    ),
    ActionSpec("remove_user", UserIdArgs, check_remove_user, apply_remove_user),
    ActionSpec("set_user_data", SetUserDataArgs, check_set_user_data, apply_set_user_data),
    ActionSpec(
        "transition_node_to_trusted",
        TrustNodeArgs,
        check_trust_node,
        apply_trust_node,
        check_at=check_trust_node_at,
    ),
    # Certificate validity (governance/cert_validity.py).
    ActionSpec(
        "set_service_certificate_validity",
        cert_validity.ServiceCertValidityArgs,
        cert_validity.check_service,
        cert_validity.apply_service,
        check_at=cert_validity.check_service_at,
    ),
    ActionSpec(
        "set_node_certificate_validity",
        cert_validity.NodeCertValidityArgs,
        cert_validity.check_node,
        cert_validity.apply_node,
        check_at=cert_validity.check_node_at,
    ),
    ActionSpec(
        "set_all_nodes_certificate_validity",
        cert_validity.AllNodesCertValidityArgs,
        cert_validity.check_all_nodes,
        cert_validity.apply_all_nodes,
        check_at=cert_validity.check_all_nodes_at,
    ),
    ActionSpec("remove_node", NodeIdArgs, check_remove_node, apply_remove_node),
    # CCF's names for the virtual platform's join policy; `add_node_measurement` and
    # `remove_node_measurement` are Charter's first names for the same two, kept as aliases.
    *(
        ActionSpec(
            name,
            MeasurementArgs,
            check_add_measurement,
            apply_add_measurement,
            drops_open_proposals=True,
        )
        for name in ("add_virtual_measurement", "add_node_measurement")
    ),
    *(
        ActionSpec(
            name,
            MeasurementArgs,
            check_remove_measurement,
            apply_remove_measurement,
            drops_open_proposals=True,
        )
        for name in ("remove_virtual_measurement", "remove_node_measurement")
    ),
    # SEV-SNP join policy. Adding to it changes what other open proposals would admit, so
    # they are dropped (as CCF); removing only narrows it.
    ActionSpec(
        "add_snp_measurement",
        SnpMeasurementArgs,
        check_add_snp_measurement,
        apply_add_snp_measurement,
        drops_open_proposals=True,
    ),
    ActionSpec(
        "remove_snp_measurement",
        SnpMeasurementArgs,
        check_remove_snp_measurement,
        apply_remove_snp_measurement,
    ),
    ActionSpec(
        "add_snp_host_data",
        SnpHostDataArgs,
        check_add_snp_host_data,
        apply_add_snp_host_data,
        drops_open_proposals=True,
    ),
    ActionSpec(
        "remove_snp_host_data",
        SnpHostDataKeyArgs,
        check_remove_snp_host_data,
        apply_remove_snp_host_data,
    ),
    ActionSpec(
        "set_snp_minimum_tcb_version_hex",
        SnpTcbArgs,
        check_set_snp_tcb,
        apply_set_snp_tcb,
        drops_open_proposals=True,
    ),
    ActionSpec(
        "remove_snp_minimum_tcb_version", CpuidArgs, check_remove_snp_tcb, apply_remove_snp_tcb
    ),
    ActionSpec(
        "transition_service_to_open", OpenServiceArgs, check_open_service, apply_open_service
    ),
    ActionSpec(
        "set_constitution",
        ConstitutionArgs,
        check_set_constitution,
        apply_set_constitution,
        drops_open_proposals=True,
    ),
    ActionSpec(
        "set_recovery_threshold",
        RecoveryThresholdArgs,
        check_set_recovery_threshold,
        apply_set_recovery_threshold,
    ),
    ActionSpec("trigger_ledger_rekey", NoArgs, check_rekey, apply_rekey),
    ActionSpec("trigger_snapshot", NoArgs, check_file_trigger, apply_trigger_snapshot),
    ActionSpec("trigger_ledger_chunk", NoArgs, check_file_trigger, apply_trigger_ledger_chunk),
    ActionSpec(
        "trigger_recovery_shares_refresh", NoArgs, check_refresh_shares, apply_refresh_shares
    ),
    ActionSpec(
        "set_service_configuration", ServiceConfigArgs, check_service_config, apply_service_config
    ),
    # JWT issuers and the CA bundles their key refresh trusts (governance/jwt.py).
    ActionSpec(
        "set_ca_cert_bundle",
        jwt_actions.CaCertBundleArgs,
        jwt_actions.check_set_ca_cert_bundle,
        jwt_actions.apply_set_ca_cert_bundle,
    ),
    ActionSpec(
        "remove_ca_cert_bundle",
        jwt_actions.CaCertBundleNameArgs,
        jwt_actions.check_remove_ca_cert_bundle,
        jwt_actions.apply_remove_ca_cert_bundle,
    ),
    ActionSpec(
        "set_jwt_issuer",
        jwt_actions.SetJwtIssuerArgs,
        jwt_actions.check_set_jwt_issuer,
        jwt_actions.apply_set_jwt_issuer,
    ),
    ActionSpec(
        "set_jwt_public_signing_keys",
        jwt_actions.SetJwtKeysArgs,
        jwt_actions.check_set_jwt_keys,
        jwt_actions.apply_set_jwt_keys,
    ),
    ActionSpec(
        "remove_jwt_issuer",
        jwt_actions.JwtIssuerArgs,
        jwt_actions.check_remove_jwt_issuer,
        jwt_actions.apply_remove_jwt_issuer,
    ),
    # The SCITT sample's registration policy (governance/scitt_config.py).
    ActionSpec(
        "set_scitt_configuration",
        SetScittConfigurationArgs,
        check_set_scitt_configuration,
        apply_set_scitt_configuration,
    ),
)

ACTIONS: dict[str, ActionSpec] = {spec.name: spec for spec in _SPECS}


@dataclass(frozen=True, slots=True)
class ParsedAction:
    spec: ActionSpec
    args: BaseModel

    @property
    def name(self) -> str:
        return self.spec.name


def parse_action(name: str, args: Any) -> ParsedAction:
    """Schema validation only: UnknownAction or InvalidActionArgs (400)."""
    spec = ACTIONS.get(name)
    if spec is None:
        raise GovernanceError(f"unknown action {name!r}", code="UnknownAction")
    try:
        parsed = spec.args_model.model_validate({} if args is None else args)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(args)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise GovernanceError(
            f"invalid arguments for {name}: {details}", code="InvalidActionArgs"
        ) from None
    return ParsedAction(spec, parsed)


def check_action(tx: KvTx, action: ParsedAction, *, now_s: int) -> None:
    """State validation: ProposalFailedToValidate (400) if it could not apply now."""
    action.spec.check(tx, action.args)
    if action.spec.check_at is not None:
        action.spec.check_at(action.args, now_s)


def apply_action(tx: KvTx, action: ParsedAction, ctx: ActionContext) -> Effects:
    check_action(tx, action, now_s=ctx.now_s)
    effects = action.spec.apply(tx, action.args, ctx)
    logger.info("action applied name=%s proposal_id=%s", action.name, ctx.proposal_id)
    return effects


__all__ = [
    "ACTIONS",
    "ActionContext",
    "ActionSpec",
    "Effects",
    "NodeEndorsement",
    "ParsedAction",
    "apply_action",
    "check_action",
    "parse_action",
]
