"""The constitution as data: who may propose each action and what it takes to accept it.

Charter replaces CCF's JavaScript constitution with a validated JSON document (FORMATS,
"Where Charter differs"). It is stored, compact and key-sorted, in
`public:ccf.gov.constitution` and changed only by the `set_constitution` action.

Document shape:
    {"default": Rule, "actions": {action name: Rule}}
    Rule = {"proposers": "active_members" | [member id, ...],
            "approvals": "majority" | "unanimous" | int >= 1 | fraction in (0, 1],
            "veto": false | true | [member id, ...]}

Only ballots of members that are Active when the proposal is resolved count. With n active
members an action needs `n // 2 + 1` approvals by default ("majority" is strict), `n` for
"unanimous", `k` for a count and `ceil(f * n)` (at least 1) for a fraction. `veto: true`
lets any active member's reject ballot reject the proposal; a list gives only those members
that power. A proposal with several actions needs every action's rule to hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from charter.governance.errors import GovernanceError
from charter.governance.tables import CONSTITUTION, SINGLETON_KEY, dump_json, get_json, is_hex_id
from charter.governance.tx import KvTx

MAX_RULES = 256
MAX_LISTED_MEMBERS = 256


def _check_member_ids(ids: list[str]) -> list[str]:
    if len(ids) > MAX_LISTED_MEMBERS:
        raise ValueError(f"at most {MAX_LISTED_MEMBERS} member ids")
    for member_id in ids:
        if not is_hex_id(member_id):
            raise ValueError(f"{member_id!r} is not a member id (64 lowercase hex digits)")
    return ids


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    proposers: Literal["active_members"] | list[str] = "active_members"
    approvals: Literal["majority", "unanimous"] | int | float = "majority"
    veto: bool | list[str] = False

    @field_validator("proposers")
    @classmethod
    def _proposers_ids(cls, v: Any) -> Any:
        return _check_member_ids(v) if isinstance(v, list) else v

    @field_validator("veto")
    @classmethod
    def _veto_ids(cls, v: Any) -> Any:
        return _check_member_ids(v) if isinstance(v, list) else v

    @field_validator("approvals")
    @classmethod
    def _approvals_range(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("approvals must be a count, a fraction or a keyword")
        if isinstance(v, int) and not 1 <= v <= 10_000:
            raise ValueError("an approval count must be between 1 and 10000")
        if isinstance(v, float) and not 0.0 < v <= 1.0:
            raise ValueError("an approval fraction must be in (0, 1]")
        return v

    def required_approvals(self, active_count: int) -> int:
        """Approvals needed among `active_count` active members (may exceed it: unreachable)."""
        if self.approvals == "majority":
            return active_count // 2 + 1
        if self.approvals == "unanimous":
            return max(active_count, 1)
        if isinstance(self.approvals, float):
            return max(1, math.ceil(self.approvals * active_count - 1e-9))
        assert isinstance(self.approvals, int)
        return self.approvals

    def may_propose(self, member_id: str) -> bool:
        return self.proposers == "active_members" or member_id in self.proposers

    def may_veto(self, member_id: str) -> bool:
        return self.veto is True or (isinstance(self.veto, list) and member_id in self.veto)


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    default: Rule = Field(default_factory=Rule)
    actions: dict[str, Rule] = Field(default_factory=dict)

    @field_validator("actions")
    @classmethod
    def _bounded(cls, v: dict[str, Rule]) -> dict[str, Rule]:
        if len(v) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} action rules")
        return v

    def rule_for(self, action_name: str) -> Rule:
        return self.actions.get(action_name, self.default)

    def to_bytes(self) -> bytes:
        return dump_json(self.model_dump(mode="json"))


def default_constitution() -> Constitution:
    """Strict majority of active members for everything; any active member may propose."""
    return Constitution()


def parse_constitution(document: Any) -> Constitution:
    """Validate a constitution document (a JSON object); GovernanceError on anything else."""
    try:
        return Constitution.model_validate(document)
    except ValidationError as exc:
        raise GovernanceError(
            f"constitution is invalid: {_summary(exc)}", code="InvalidConstitution"
        ) from None


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_constitution(tx: KvTx) -> Constitution:
    document = get_json(tx, CONSTITUTION, SINGLETON_KEY)
    if document is None:
        raise GovernanceError(
            "no constitution is set - proposals cannot be evaluated", code="InternalError"
        )
    try:
        return Constitution.model_validate(document)
    except ValidationError as exc:
        raise GovernanceError(
            f"stored constitution is invalid: {_summary(exc)}", code="InternalError"
        ) from None


def store_constitution(tx: KvTx, constitution: Constitution) -> None:
    tx.put(CONSTITUTION, SINGLETON_KEY, constitution.to_bytes())


Resolution = Literal["Open", "Accepted", "Rejected"]


@dataclass(frozen=True, slots=True)
class Tally:
    """How the counted ballots stand against the rules of a proposal's actions."""

    state: Resolution
    approvals: int
    rejections: int
    required: int
    vetoed_by: tuple[str, ...]


def resolve(
    constitution: Constitution,
    action_names: Iterable[str],
    votes: Mapping[str, bool],
    active_members: Iterable[str],
) -> Tally:
    """Decide a proposal from its ballots: Accepted, Rejected (can no longer pass, or vetoed)
    or still Open. `votes` maps member id to approve (True) / reject (False)."""
    active = set(active_members)
    counted = {m: v for m, v in votes.items() if m in active}
    approvals = sum(1 for v in counted.values() if v)
    rejections = len(counted) - approvals
    rules = [constitution.rule_for(name) for name in action_names]
    assert rules, "a proposal has at least one action"
    required = max(rule.required_approvals(len(active)) for rule in rules)
    vetoed_by = tuple(
        sorted(m for m, v in counted.items() if not v and any(r.may_veto(m) for r in rules))
    )
    if vetoed_by:
        state: Resolution = "Rejected"
    elif approvals >= required:
        state = "Accepted"
    elif approvals + (len(active) - len(counted)) < required:
        # Even if every remaining active member approved, the threshold is out of reach.
        state = "Rejected"
    else:
        state = "Open"
    return Tally(state, approvals, rejections, required, vetoed_by)


def check_proposer(constitution: Constitution, action_names: Iterable[str], member_id: str) -> None:
    for name in action_names:
        if not constitution.rule_for(name).may_propose(member_id):
            raise GovernanceError(
                f"member {member_id} may not propose action {name} under the constitution",
                code="ProposerNotAllowed",
            )
