"""Certificate validity actions (CCF's names and arguments): the service certificate
re-issued with the same key, and node certificates re-endorsed, for a new period.

Governance cannot sign, so each action checks its arguments against the service's limits
(`maximum_service_certificate_validity_days`, `maximum_node_certificate_validity_days` in
`public:ccf.gov.service.config`) and returns the `Effects` the runtime carries out in the
same transaction, with the period resolved (a missing `validity_period_days` is the limit,
as in CCF's constitution).
"""

from __future__ import annotations

import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from charter.governance import tables as t
from charter.governance.effects import ActionContext, Effects, NodeEndorsement, ServiceRenewal
from charter.governance.errors import GovernanceError
from charter.governance.tx import KvTx

DEFAULT_MAX_NODE_CERT_VALIDITY_DAYS = 365
DEFAULT_MAX_SERVICE_CERT_VALIDITY_DAYS = 365
# A bound on what `valid_from` may say, whatever the limits: 100 years either way of now.
VALID_FROM_SPAN_DAYS_MAX = 36_500

ValidFrom = Annotated[str, StringConstraints(min_length=1, max_length=40)]
HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServiceCertValidityArgs(_Args):
    valid_from: ValidFrom
    validity_period_days: int | None = None


class NodeCertValidityArgs(_Args):
    node_id: HexId
    valid_from: ValidFrom
    validity_period_days: int | None = None


class AllNodesCertValidityArgs(_Args):
    valid_from: ValidFrom
    validity_period_days: int | None = None


def _invalid(message: str) -> GovernanceError:
    return GovernanceError(message, code="ProposalFailedToValidate")


def parse_valid_from(text: str) -> datetime.datetime:
    """ASN.1 UTCTime/GeneralizedTime text (what CCF's tooling passes, "230101000000Z") or
    ISO 8601; a time without a zone is UTC."""
    parsed: datetime.datetime | None = None
    for fmt in ("%y%m%d%H%M%SZ", "%Y%m%d%H%M%SZ"):
        try:
            parsed = datetime.datetime.strptime(text, fmt)
            break
        except ValueError:
            pass
    if parsed is None:
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise _invalid(f"valid_from {text!r} is not a date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def _limit(tx: KvTx, name: str, default: int) -> int:
    return int(t.service_config(tx).get(name, default))


def node_validity_days(tx: KvTx, requested: int | None) -> int:
    """`requested`, checked against `maximum_node_certificate_validity_days`, or that limit."""
    limit = _limit(
        tx, "maximum_node_certificate_validity_days", DEFAULT_MAX_NODE_CERT_VALIDITY_DAYS
    )
    return _checked_days(requested, limit)


def service_validity_days(tx: KvTx, requested: int | None) -> int:
    limit = _limit(
        tx, "maximum_service_certificate_validity_days", DEFAULT_MAX_SERVICE_CERT_VALIDITY_DAYS
    )
    return _checked_days(requested, limit)


def _checked_days(requested: int | None, limit: int) -> int:
    if requested is None:
        return limit
    if not 1 <= requested <= limit:
        raise _invalid(f"validity_period_days must be between 1 and {limit}")
    return requested


def check_period_at(valid_from: str, days: int | None, now_s: int) -> None:
    """A period that has already ended (or starts implausibly far away) is refused: a
    certificate issued for it would fail every TLS handshake from the moment it is used."""
    start = parse_valid_from(valid_from)
    now = datetime.datetime.fromtimestamp(now_s, datetime.UTC)
    if abs((start - now).days) > VALID_FROM_SPAN_DAYS_MAX:
        raise _invalid(
            f"valid_from {valid_from!r} is more than {VALID_FROM_SPAN_DAYS_MAX} days away"
        )
    # Without a period the limit applies, at least one day: checked once the KV is read.
    end = start + datetime.timedelta(days=days if days is not None else 1)
    if end <= now:
        raise _invalid(f"a certificate valid from {valid_from} for {days or 1} days has expired")


def _trusted_node_ids(tx: KvTx) -> list[str]:
    found = []
    for key, raw in tx.items(t.NODES_INFO):
        info = t.load_json(raw, what=t.NODES_INFO) or {}
        if info.get("status") == t.NodeStatus.TRUSTED:
            found.append(t.key_to_id(key))
    return found


# ---------------------------------------------------------------------------- service


def check_service(tx: KvTx, args: ServiceCertValidityArgs) -> None:
    parse_valid_from(args.valid_from)
    service_validity_days(tx, args.validity_period_days)
    if t.service_info(tx) is None:
        raise _invalid("the service has not been started")


def check_service_at(args: ServiceCertValidityArgs, now_s: int) -> None:
    check_period_at(args.valid_from, args.validity_period_days, now_s)


def apply_service(tx: KvTx, args: ServiceCertValidityArgs, ctx: ActionContext) -> Effects:
    days = service_validity_days(tx, args.validity_period_days)
    return Effects(renew_service_certificate=ServiceRenewal(args.valid_from, days))


# ---------------------------------------------------------------------------- nodes


def check_node(tx: KvTx, args: NodeCertValidityArgs) -> None:
    parse_valid_from(args.valid_from)
    node_validity_days(tx, args.validity_period_days)
    record = t.node_record(tx, args.node_id)
    if record is None:
        raise _invalid(f"node {args.node_id} does not exist")
    if record.status is not t.NodeStatus.TRUSTED:
        raise _invalid(f"node {args.node_id} is {record.status}, not Trusted")


def check_node_at(args: NodeCertValidityArgs, now_s: int) -> None:
    check_period_at(args.valid_from, args.validity_period_days, now_s)


def apply_node(tx: KvTx, args: NodeCertValidityArgs, ctx: ActionContext) -> Effects:
    days = node_validity_days(tx, args.validity_period_days)
    return Effects(endorse_nodes=(NodeEndorsement(args.node_id, args.valid_from, days),))


def check_all_nodes(tx: KvTx, args: AllNodesCertValidityArgs) -> None:
    parse_valid_from(args.valid_from)
    node_validity_days(tx, args.validity_period_days)


def check_all_nodes_at(args: AllNodesCertValidityArgs, now_s: int) -> None:
    check_period_at(args.valid_from, args.validity_period_days, now_s)


def apply_all_nodes(tx: KvTx, args: AllNodesCertValidityArgs, ctx: ActionContext) -> Effects:
    days = node_validity_days(tx, args.validity_period_days)
    return Effects(
        endorse_nodes=tuple(
            NodeEndorsement(node_id, args.valid_from, days) for node_id in _trusted_node_ids(tx)
        )
    )
