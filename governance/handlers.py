"""The /gov write operations end to end: verify the signed request, then run it.

One function per state-changing endpoint, so the HTTP layer (enclave_app/gov_endpoints.py)
only parses the URL, calls one of these with the raw body, and renders the `GovResult`.
A raised `GovernanceError` means: answer its status and code, and drop the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charter.governance import acks, proposals
from charter.governance import tables as t
from charter.governance.effects import NO_EFFECTS, Effects
from charter.governance.requests import DEFAULT_POLICY, RequestPolicy, verify_request
from charter.governance.tx import KvTx


@dataclass(frozen=True, slots=True)
class GovResult:
    """A JSON body (or None for 204) and the effects the runtime must carry out."""

    status: int
    body: dict[str, Any] | None
    effects: Effects = NO_EFFECTS

    @property
    def json(self) -> dict[str, Any]:
        """The body of a 200 answer (asserting there is one)."""
        assert self.body is not None, self.status
        return self.body


def create_proposal(
    tx: KvTx,
    envelope: bytes,
    *,
    now_s: int,
    merkle_root: bytes,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(tx, envelope, msg_type="proposal", now_s=now_s, policy=policy)
    outcome = proposals.create(tx, request, merkle_root=merkle_root, now_s=now_s, policy=policy)
    return GovResult(200, outcome.to_api(), outcome.effects)


def dry_run_proposal(
    tx: KvTx,
    envelope: bytes,
    *,
    now_s: int,
    merkle_root: bytes,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(tx, envelope, msg_type="proposal", now_s=now_s, policy=policy)
    return GovResult(200, proposals.dry_run(tx, request, merkle_root=merkle_root, now_s=now_s))


def submit_ballot(
    tx: KvTx,
    envelope: bytes,
    *,
    proposal_id: str,
    member_id: str,
    now_s: int,
    merkle_root: bytes,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(
        tx,
        envelope,
        msg_type="ballot",
        now_s=now_s,
        policy=policy,
        path_proposal_id=proposal_id,
        path_member_id=member_id,
    )
    outcome = proposals.submit_ballot(
        tx, request, proposal_id=proposal_id, merkle_root=merkle_root, now_s=now_s, policy=policy
    )
    return GovResult(200, outcome.to_api(), outcome.effects)


def withdraw_proposal(
    tx: KvTx,
    envelope: bytes,
    *,
    proposal_id: str,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(
        tx,
        envelope,
        msg_type="withdrawal",
        now_s=now_s,
        policy=policy,
        path_proposal_id=proposal_id,
    )
    outcome = proposals.withdraw(tx, request, proposal_id=proposal_id, now_s=now_s, policy=policy)
    if outcome is None:
        return GovResult(204, None)
    return GovResult(200, outcome.to_api())


def update_state_digest(
    tx: KvTx,
    envelope: bytes,
    *,
    member_id: str,
    now_s: int,
    merkle_root: bytes,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(
        tx,
        envelope,
        msg_type="state_digest",
        now_s=now_s,
        policy=policy,
        path_member_id=member_id,
    )
    body = acks.update_state_digest(
        tx, request, merkle_root=merkle_root, now_s=now_s, policy=policy
    )
    return GovResult(200, body)


def ack_state_digest(
    tx: KvTx,
    envelope: bytes,
    *,
    member_id: str,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> GovResult:
    request = verify_request(
        tx, envelope, msg_type="ack", now_s=now_s, policy=policy, path_member_id=member_id
    )
    newly_active = acks.ack_state_digest(tx, request, now_s=now_s, policy=policy)
    # A recovery member that becomes active joins the share holders: shares are re-issued.
    refresh = newly_active and member_id in t.recovery_members(tx)
    return GovResult(204, None, Effects(refresh_recovery_shares=True) if refresh else NO_EFFECTS)
