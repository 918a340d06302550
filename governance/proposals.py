"""Proposal lifecycle: create, ballot, withdraw, resolve, drop stale, dry run.

State lives in CCF's tables: `proposals` (proposal id -> the raw signed payload) and
`proposals_info` (JSON {proposer_id, state, ballots, final_votes?, vote_failures?,
failure?}). Ballots are stored as Charter's ballot strings, "approve" or "reject".

All checks run before the first write, so a refused request changes nothing. Accepted
proposals are applied through an `Overlay`: all actions apply or none do (Failed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from charter.governance import tables as t
from charter.governance.actions import (
    DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER,
    ParsedAction,
    apply_action,
    check_action,
    parse_action,
)
from charter.governance.constitution import check_proposer, load_constitution, resolve
from charter.governance.effects import NO_EFFECTS, ActionContext, Effects
from charter.governance.errors import GovernanceError
from charter.governance.overlay import Overlay
from charter.governance.requests import (
    DEFAULT_POLICY,
    RequestPolicy,
    SignedRequest,
    record_history,
    record_request,
)
from charter.governance.tx import KvTx

logger = logging.getLogger(__name__)

MAX_ACTIONS_PER_PROPOSAL = 64
# Proposals per page of GET /gov/members/proposals (the rest via nextLink).
PROPOSALS_PAGE_SIZE = 50
MAX_ACTION_NAME_CHARS = 128
BALLOTS = {"approve": True, "reject": False}
STATES = ("Open", "Accepted", "Withdrawn", "Rejected", "Failed", "Dropped")


@dataclass(frozen=True, slots=True)
class ProposalInfo:
    proposer_id: str
    state: str
    ballots: dict[str, str] = field(default_factory=dict)
    final_votes: dict[str, bool] | None = None
    failure: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        assert self.state in STATES, self.state

    @staticmethod
    def from_json(value: Any) -> ProposalInfo:
        if not isinstance(value, dict):
            raise GovernanceError("proposals_info value is not an object", code="InternalError")
        return ProposalInfo(
            proposer_id=str(value["proposer_id"]),
            state=str(value["state"]),
            ballots={str(k): str(v) for k, v in (value.get("ballots") or {}).items()},
            final_votes=value.get("final_votes"),
            failure=value.get("failure"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "proposer_id": self.proposer_id,
            "state": self.state,
            "ballots": dict(self.ballots),
        }
        if self.final_votes is not None:
            out["final_votes"] = dict(self.final_votes)
            out["vote_failures"] = {}
        if self.failure is not None:
            out["failure"] = self.failure
        return out

    def to_api(self, proposal_id: str) -> dict[str, Any]:
        """CCF's 2024-07-01 proposal object."""
        out: dict[str, Any] = {
            "proposalId": proposal_id,
            "proposerId": self.proposer_id,
            "proposalState": self.state,
            "ballotCount": len(self.ballots),
        }
        if self.final_votes is not None:
            out["finalVotes"] = dict(self.final_votes)
            out["voteFailures"] = {}
        if self.failure is not None:
            out["failure"] = self.failure
        return out

    def with_(self, **changes: Any) -> ProposalInfo:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of a proposal operation: the proposal as it now stands, and runtime effects."""

    proposal_id: str
    info: ProposalInfo
    effects: Effects = NO_EFFECTS

    def to_api(self) -> dict[str, Any]:
        return self.info.to_api(self.proposal_id)


def proposal_id_for(merkle_root: bytes, request: SignedRequest) -> str:
    """CCF: hex H(root at read version ‖ H(COSE signature))."""
    assert len(merkle_root) == 32
    return hashlib.sha256(merkle_root + request.signature_digest).hexdigest()


def parse_proposal(payload: bytes) -> list[ParsedAction]:
    """`{"actions": [{"name": ..., "args": {...}}, ...]}`, each action schema-checked."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GovernanceError(f"proposal is not JSON: {exc}", code="InvalidProposal") from None
    if not isinstance(document, dict) or set(document) != {"actions"}:
        raise GovernanceError(
            'proposal must be an object {"actions": [...]}', code="InvalidProposal"
        )
    raw_actions = document["actions"]
    if not isinstance(raw_actions, list) or not 1 <= len(raw_actions) <= MAX_ACTIONS_PER_PROPOSAL:
        raise GovernanceError(
            f"actions must be a list of 1 to {MAX_ACTIONS_PER_PROPOSAL} actions",
            code="InvalidProposal",
        )
    parsed = []
    for raw in raw_actions:
        if not isinstance(raw, dict) or not set(raw) <= {"name", "args"} or "name" not in raw:
            raise GovernanceError(
                'each action must be {"name": ..., "args": {...}}', code="InvalidProposal"
            )
        name = raw["name"]
        if not isinstance(name, str) or len(name) > MAX_ACTION_NAME_CHARS:
            raise GovernanceError("action name must be a short string", code="InvalidProposal")
        parsed.append(parse_action(name, raw.get("args")))
    return parsed


def load_info(tx: KvTx, proposal_id: str) -> ProposalInfo | None:
    value = t.get_json(tx, t.PROPOSALS_INFO, proposal_id.encode())
    return None if value is None else ProposalInfo.from_json(value)


def _require_info(tx: KvTx, proposal_id: str) -> ProposalInfo:
    info = load_info(tx, proposal_id) if t.is_hex_id(proposal_id) else None
    if info is None:
        raise GovernanceError(f"could not find proposal {proposal_id}", code="ProposalNotFound")
    return info


def _store_info(tx: KvTx, proposal_id: str, info: ProposalInfo) -> None:
    t.put_json(tx, t.PROPOSALS_INFO, proposal_id.encode(), info.to_json())


def _validate(tx: KvTx, request: SignedRequest, now_s: int) -> list[ParsedAction]:
    actions = parse_proposal(request.payload)
    check_proposer(load_constitution(tx), [a.name for a in actions], request.member_id)
    for action in actions:
        check_action(tx, action, now_s=now_s)
    return actions


def create(
    tx: KvTx,
    request: SignedRequest,
    *,
    merkle_root: bytes,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> Outcome:
    assert request.msg_type == "proposal"
    actions = _validate(tx, request, now_s)
    _check_open_proposal_cap(tx, request.member_id)
    proposal_id = proposal_id_for(merkle_root, request)
    if tx.get(t.PROPOSALS, proposal_id.encode()) is not None:
        raise GovernanceError("proposal id collision", code="InternalError")
    # No refusal past this point: writes begin.
    tx.put(t.PROPOSALS, proposal_id.encode(), request.payload)
    info = ProposalInfo(proposer_id=request.member_id, state="Open")
    _store_info(tx, proposal_id, info)
    record_request(tx, request, now_s=now_s, policy=policy, proposal_id=proposal_id)
    record_history(tx, request)
    logger.info("proposal created proposal_id=%s proposer=%s", proposal_id, request.member_id)
    ctx = ActionContext(proposal_id=proposal_id, now_s=now_s, merkle_root=merkle_root)
    return _resolve(tx, proposal_id, info, actions, ctx)


def max_open_proposals_per_member(tx: KvTx) -> int:
    value = t.service_config(tx).get("maximum_open_proposals_per_member")
    return value if isinstance(value, int) else DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER


def _check_open_proposal_cap(tx: KvTx, member_id: str) -> None:
    cap = max_open_proposals_per_member(tx)
    open_count = 0
    for _key, raw in tx.items(t.PROPOSALS_INFO):
        info = ProposalInfo.from_json(t.load_json(raw, what=t.PROPOSALS_INFO))
        if info.state == "Open" and info.proposer_id == member_id:
            open_count += 1
    if open_count >= cap:
        raise GovernanceError(
            f"member {member_id} already has {open_count} open proposals (at most {cap}); "
            "withdraw one or wait for one to close",
            code="TooManyOpenProposals",
        )


def parse_ballot(payload: bytes) -> str:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if not isinstance(document, dict) or set(document) != {"ballot"}:
        raise GovernanceError(
            'ballot must be {"ballot": "approve"} or {"ballot": "reject"}', code="InvalidBallot"
        )
    ballot = document["ballot"]
    if ballot not in BALLOTS:
        raise GovernanceError('ballot must be "approve" or "reject"', code="InvalidBallot")
    assert isinstance(ballot, str)
    return ballot


def submit_ballot(
    tx: KvTx,
    request: SignedRequest,
    *,
    proposal_id: str,
    merkle_root: bytes,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> Outcome:
    assert request.msg_type == "ballot" and request.proposal_id == proposal_id
    info = _require_info(tx, proposal_id)
    if info.state != "Open":
        raise GovernanceError(
            f"proposal {proposal_id} is {info.state} - only Open proposals take ballots",
            code="ProposalNotOpen",
        )
    ballot = parse_ballot(request.payload)
    if request.member_id in info.ballots:
        raise GovernanceError(
            f"member {request.member_id} already voted on proposal {proposal_id}",
            code="VoteAlreadyExists",
        )
    payload = tx.get(t.PROPOSALS, proposal_id.encode())
    if payload is None:
        raise GovernanceError(f"proposal {proposal_id} has no body", code="InternalError")
    actions = parse_proposal(payload)
    # No refusal past this point: writes begin.
    ballots = dict(info.ballots)
    ballots[request.member_id] = ballot
    info = info.with_(ballots=ballots)
    _store_info(tx, proposal_id, info)
    record_request(tx, request, now_s=now_s, policy=policy)
    record_history(tx, request)
    ctx = ActionContext(proposal_id=proposal_id, now_s=now_s, merkle_root=merkle_root)
    return _resolve(tx, proposal_id, info, actions, ctx)


def withdraw(
    tx: KvTx,
    request: SignedRequest,
    *,
    proposal_id: str,
    now_s: int,
    policy: RequestPolicy = DEFAULT_POLICY,
) -> Outcome | None:
    """None when the proposal is unknown (CCF answers 204: withdrawal is idempotent)."""
    assert request.msg_type == "withdrawal" and request.proposal_id == proposal_id
    info = load_info(tx, proposal_id)
    if info is None:
        return None
    if info.proposer_id != request.member_id:
        raise GovernanceError(
            f"proposal {proposal_id} can only be withdrawn by its proposer {info.proposer_id}",
            code="AuthorizationFailed",
        )
    if info.state not in ("Open", "Withdrawn"):
        raise GovernanceError(
            f"proposal {proposal_id} is {info.state} and cannot be withdrawn",
            code="ProposalNotOpen",
        )
    if info.state == "Open":
        info = info.with_(state="Withdrawn")
        _store_info(tx, proposal_id, info)
        _purge_other_closed(tx, proposal_id)
        record_request(tx, request, now_s=now_s, policy=policy)
        record_history(tx, request)
    return Outcome(proposal_id, info)


def _purge_other_closed(tx: KvTx, keep_id: str) -> None:
    """As CCF: once a proposal closes, other closed proposals are forgotten."""
    for key, raw in list(tx.items(t.PROPOSALS_INFO)):
        if key == keep_id.encode():
            continue
        if ProposalInfo.from_json(t.load_json(raw, what=t.PROPOSALS_INFO)).state != "Open":
            tx.remove(t.PROPOSALS, key)
            tx.remove(t.PROPOSALS_INFO, key)


def _resolve(
    tx: KvTx,
    proposal_id: str,
    info: ProposalInfo,
    actions: list[ParsedAction],
    ctx: ActionContext,
) -> Outcome:
    votes = {member: BALLOTS[ballot] for member, ballot in info.ballots.items()}
    tally = resolve(
        load_constitution(tx), [a.name for a in actions], votes, t.active_member_ids(tx)
    )
    if tally.state == "Open":
        return Outcome(proposal_id, info)
    _purge_other_closed(tx, proposal_id)
    info = info.with_(state=tally.state, final_votes=votes)
    effects = NO_EFFECTS
    if tally.state == "Accepted":
        overlay = Overlay(tx)
        try:
            for action in actions:
                effects = effects.merge(apply_action(overlay, action, ctx))
        except GovernanceError as exc:
            info = info.with_(state="Failed", failure={"reason": exc.message, "trace": None})
            effects = NO_EFFECTS
        except Exception as exc:  # a bug in an action must not half-apply a proposal
            logger.exception("action raised proposal_id=%s", proposal_id)
            info = info.with_(
                state="Failed",
                failure={"reason": f"{type(exc).__name__}: {exc}", "trace": None},
            )
            effects = NO_EFFECTS
        else:
            overlay.flush()
            _drop_stale(tx, proposal_id, actions, ctx.now_s)
    _store_info(tx, proposal_id, info)
    logger.info("proposal resolved proposal_id=%s state=%s", proposal_id, info.state)
    return Outcome(proposal_id, info, effects)


def _drop_stale(tx: KvTx, accepted_id: str, accepted: list[ParsedAction], now_s: int) -> None:
    """Drop open proposals that the accepted one made stale: all of them if it changed what
    proposals mean (e.g. a new constitution), else those that no longer validate."""
    drop_all = any(a.spec.drops_open_proposals for a in accepted)
    for key, raw in list(tx.items(t.PROPOSALS_INFO)):
        proposal_id = key.decode()
        if proposal_id == accepted_id:
            continue
        info = ProposalInfo.from_json(t.load_json(raw, what=t.PROPOSALS_INFO))
        if info.state != "Open":
            continue
        stale = drop_all
        if not stale:
            payload = tx.get(t.PROPOSALS, key) or b""
            try:
                actions = parse_proposal(payload)
                check_proposer(load_constitution(tx), [a.name for a in actions], info.proposer_id)
                for action in actions:
                    check_action(tx, action, now_s=now_s)
            except GovernanceError:
                stale = True
        if stale:
            _store_info(tx, proposal_id, info.with_(state="Dropped"))
            logger.info("proposal dropped proposal_id=%s by=%s", proposal_id, accepted_id)


def dry_run(tx: KvTx, request: SignedRequest, *, merkle_root: bytes, now_s: int) -> dict[str, Any]:
    """What a proposal would do, recording nothing: validity, the votes that would accept
    it, and the KV changes its actions would make if accepted now."""
    assert request.msg_type == "proposal"
    actions = parse_proposal(request.payload)  # malformed proposals are 400s, as on create
    constitution = load_constitution(tx)
    names = [a.name for a in actions]
    errors: list[dict[str, str]] = []
    try:
        check_proposer(constitution, names, request.member_id)
    except GovernanceError as exc:
        errors.append({"code": exc.code, "message": exc.message})
    for action in actions:
        try:
            check_action(tx, action, now_s=now_s)
        except GovernanceError as exc:
            errors.append({"code": exc.code, "message": f"{action.name}: {exc.message}"})
    active = t.active_member_ids(tx)
    rules = [constitution.rule_for(n) for n in names]
    required = max(rule.required_approvals(len(active)) for rule in rules)
    vetoers = sorted(m for m in active if any(rule.may_veto(m) for rule in rules))
    changes: list[dict[str, Any]] = []
    effects = NO_EFFECTS
    if not errors:
        overlay = Overlay(tx)
        ctx = ActionContext(
            proposal_id=proposal_id_for(merkle_root, request), now_s=now_s, merkle_root=merkle_root
        )
        try:
            for action in actions:
                effects = effects.merge(apply_action(overlay, action, ctx))
            changes = [c.to_json() for c in overlay.changes()]
        except GovernanceError as exc:
            errors.append({"code": exc.code, "message": exc.message})
    return {
        "valid": not errors,
        "errors": errors,
        "votes": {
            "activeMembers": active,
            "requiredApprovals": required,
            "acceptedBy": (
                f"approve ballots from at least {required} of the {len(active)} active members"
                + (", with no reject ballot from a veto holder" if vetoers else "")
            ),
            "vetoMembers": vetoers,
        },
        "changes": changes,
        "effects": effects_to_json(effects),
    }


def effects_to_json(effects: Effects) -> dict[str, Any]:
    return {
        "endorseNodes": [
            {
                "nodeId": e.node_id,
                "validFrom": e.valid_from,
                "validityPeriodDays": e.validity_period_days,
            }
            for e in effects.endorse_nodes
        ],
        "openService": effects.open_service,
        "rekey": effects.rekey,
        "refreshRecoveryShares": effects.refresh_recovery_shares,
        "retiredNodes": list(effects.retired_nodes),
        "renewServiceCertificate": (
            None
            if effects.renew_service_certificate is None
            else {
                "validFrom": effects.renew_service_certificate.valid_from,
                "validityPeriodDays": effects.renew_service_certificate.validity_period_days,
            }
        ),
        "triggerSnapshot": effects.trigger_snapshot,
        "triggerLedgerChunk": effects.trigger_ledger_chunk,
    }


@dataclass(frozen=True, slots=True)
class ProposalPage:
    """One page of proposals in id order; `next_after` is the id to continue after."""

    proposals: list[dict[str, Any]]
    next_after: str | None


def list_proposals(
    tx: KvTx, *, after: str | None = None, page_size: int = PROPOSALS_PAGE_SIZE
) -> ProposalPage:
    """Proposals with ids above `after` (all when None), at most `page_size` of them."""
    assert page_size >= 1
    out: list[dict[str, Any]] = []
    # Keys are ASCII hex ids: pages follow the id order.
    for key, raw in sorted(tx.items(t.PROPOSALS_INFO)):
        proposal_id = key.decode()
        if after is not None and proposal_id <= after:
            continue
        if len(out) == page_size:
            return ProposalPage(out, out[-1]["proposalId"])
        info = ProposalInfo.from_json(t.load_json(raw, what=t.PROPOSALS_INFO))
        out.append(info.to_api(proposal_id))
    return ProposalPage(out, None)


def get_proposal(tx: KvTx, proposal_id: str) -> dict[str, Any]:
    return _require_info(tx, proposal_id).to_api(proposal_id)


def get_actions(tx: KvTx, proposal_id: str) -> bytes:
    payload = tx.get(t.PROPOSALS, proposal_id.encode()) if t.is_hex_id(proposal_id) else None
    if payload is None:
        raise GovernanceError(f"could not find proposal {proposal_id}", code="ProposalNotFound")
    return payload


def get_ballot(tx: KvTx, proposal_id: str, member_id: str) -> dict[str, str]:
    info = _require_info(tx, proposal_id)
    ballot = info.ballots.get(member_id)
    if ballot is None:
        raise GovernanceError(
            f"member {member_id} has not voted on proposal {proposal_id}", code="VoteNotFound"
        )
    return {"ballot": ballot}
