"""What an action asks of the runtime, and what it may read besides the KV.

Governance cannot sign anything with the service key nor touch ledger secrets, so an
accepted proposal returns `Effects` that the runtime performs in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeEndorsement:
    """A node the runtime must issue a service-endorsed certificate for."""

    node_id: str
    valid_from: str | None = None
    validity_period_days: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceRenewal:
    """The service certificate to re-issue, same key and subject, for this period."""

    valid_from: str
    validity_period_days: int


@dataclass(frozen=True, slots=True)
class Effects:
    """What an accepted proposal asks of the runtime beyond its KV writes.

    The runtime performs `renew_service_certificate` (before `endorse_nodes`, so that the
    nodes are endorsed by the new certificate), `endorse_nodes` and `rekey`; a dry run reports every field to the
    members (`proposals.effects_to_json`). Changes the runtime learns from the KV itself
    (members, users, nodes) are not effects: it watches those tables.
    """

    endorse_nodes: tuple[NodeEndorsement, ...] = ()
    open_service: bool = False
    rekey: bool = False
    refresh_recovery_shares: bool = False
    retired_nodes: tuple[str, ...] = ()
    renew_service_certificate: ServiceRenewal | None = None
    # The next signature takes a snapshot / ends the ledger chunk (CCF's trigger_snapshot,
    # trigger_ledger_chunk).
    trigger_snapshot: bool = False
    trigger_ledger_chunk: bool = False

    def merge(self, other: Effects) -> Effects:
        return Effects(
            endorse_nodes=self.endorse_nodes + other.endorse_nodes,
            open_service=self.open_service or other.open_service,
            rekey=self.rekey or other.rekey,
            refresh_recovery_shares=self.refresh_recovery_shares or other.refresh_recovery_shares,
            retired_nodes=self.retired_nodes + other.retired_nodes,
            # Two renewals in one proposal: the later action wins, as its KV write would.
            renew_service_certificate=other.renew_service_certificate
            or self.renew_service_certificate,
            trigger_snapshot=self.trigger_snapshot or other.trigger_snapshot,
            trigger_ledger_chunk=self.trigger_ledger_chunk or other.trigger_ledger_chunk,
        )

    @property
    def empty(self) -> bool:
        return self == Effects()


NO_EFFECTS = Effects()


@dataclass(frozen=True, slots=True)
class ActionContext:
    """Inputs an action may use besides the KV: no clocks, no I/O."""

    proposal_id: str
    now_s: int
    merkle_root: bytes
