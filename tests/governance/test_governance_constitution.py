"""Constitution rules: who may propose, approval counts and fractions, vetoes, unanimity,
and open proposals dropped when the constitution changes."""

from __future__ import annotations

from typing import Any

import pytest
from gov_testkit import start_network

from charter.governance import handlers, proposals
from charter.governance.constitution import (
    Constitution,
    Rule,
    default_constitution,
    parse_constitution,
    resolve,
)
from charter.governance.errors import GovernanceError

A, B, C, D, E = (f"{i:064x}" for i in range(1, 6))
ACTIVE = [A, B, C, D, E]
OPEN = [{"name": "transition_service_to_open", "args": {}}]


def tally(rule: dict[str, Any], votes: dict[str, bool], active: list[str] = ACTIVE) -> str:
    constitution = Constitution(actions={"act": Rule.model_validate(rule)})
    return resolve(constitution, ["act"], votes, active).state


def test_default_needs_a_strict_majority_of_active_members() -> None:
    assert tally({}, {A: True, B: True}) == "Open"
    assert tally({}, {A: True, B: True, C: True}) == "Accepted"
    assert tally({}, {A: True, B: True}, [A, B, C, D]) == "Open"  # 2 of 4 is not a majority
    assert tally({}, {A: False, B: False, C: False}) == "Rejected"


def test_count_rule_accepts_at_that_many_approvals() -> None:
    assert tally({"approvals": 2}, {A: True}) == "Open"
    assert tally({"approvals": 2}, {A: True, B: True}) == "Accepted"
    # 4 rejections leave one possible approval: 2 can no longer be reached.
    assert tally({"approvals": 2}, {A: False, B: False, C: False, D: False}) == "Rejected"


def test_fraction_rule_rounds_up() -> None:
    assert tally({"approvals": 0.5}, {A: True, B: True}) == "Open"  # ceil(2.5) = 3
    assert tally({"approvals": 0.5}, {A: True, B: True, C: True}) == "Accepted"
    assert tally({"approvals": 0.2}, {A: True}) == "Accepted"


def test_unanimity_needs_every_active_member() -> None:
    everyone = dict.fromkeys(ACTIVE, True)
    assert tally({"approvals": "unanimous"}, {**everyone, E: False}) == "Rejected"
    assert tally({"approvals": "unanimous"}, {A: True, B: True, C: True, D: True}) == "Open"
    assert tally({"approvals": "unanimous"}, everyone) == "Accepted"
    assert tally({"approvals": 1.0}, everyone) == "Accepted"


def test_veto_rejects_despite_enough_approvals() -> None:
    votes = {A: True, B: True, C: True, D: False}
    assert tally({"veto": True}, votes) == "Rejected"
    assert tally({"veto": [D]}, votes) == "Rejected"
    assert tally({"veto": [E]}, votes) == "Accepted"


def test_ballots_of_inactive_members_do_not_count() -> None:
    outsider = "f" * 64
    assert tally({"approvals": 2}, {A: True, outsider: True}) == "Open"


def test_strictest_action_rule_applies_to_a_multi_action_proposal() -> None:
    constitution = Constitution(actions={"hard": Rule(approvals="unanimous")})
    votes = {A: True, B: True, C: True}
    assert resolve(constitution, ["easy"], votes, ACTIVE).state == "Accepted"
    assert resolve(constitution, ["easy", "hard"], votes, ACTIVE).state == "Open"


@pytest.mark.parametrize(
    "document",
    [
        {"default": {"approvals": 0}},
        {"default": {"approvals": 1.5}},
        {"default": {"approvals": True}},
        {"default": {"approvals": "most"}},
        {"default": {"proposers": ["not-a-member-id"]}},
        {"default": {"veto": "yes"}},
        {"actions": {"x": {"approvals": 2, "extra": 1}}},
        {"rules": {}},
    ],
)
def test_invalid_constitution_documents_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(GovernanceError) as err:
        parse_constitution(document)
    assert err.value.code == "InvalidConstitution"


def test_default_constitution_round_trips_through_its_json() -> None:
    doc = default_constitution().model_dump(mode="json")
    assert parse_constitution(doc) == default_constitution()


def test_member_outside_the_proposer_list_may_not_propose() -> None:
    net = start_network()
    first, second, _ = net.members
    constitution = {"default": {"proposers": [first.id]}}
    net.pass_proposal([{"name": "set_constitution", "args": {"constitution": constitution}}])
    envelope = second.sign("proposal", {"actions": OPEN}, created_at=net.now_s)
    err = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    assert (err.code, err.status) == ("ProposerNotAllowed", 403)
    assert net.propose(first, OPEN).status == 200


def test_constitution_change_drops_other_open_proposals() -> None:
    net = start_network()
    first, second, third = net.members
    pending = net.propose(second, OPEN).json["proposalId"]
    strict = {"default": {"approvals": "unanimous"}}
    change = net.propose(first, [{"name": "set_constitution", "args": {"constitution": strict}}])
    change_id = change.json["proposalId"]
    net.vote(first, change_id)
    assert net.vote(second, change_id).json["proposalState"] == "Accepted"
    tx = net.store.begin()
    assert proposals.get_proposal(tx, pending)["proposalState"] == "Dropped"
    # The new rules are in force: two approvals no longer suffice.
    fresh = net.propose(first, OPEN).json["proposalId"]
    net.vote(first, fresh)
    assert net.vote(second, fresh).json["proposalState"] == "Open"
    assert net.vote(third, fresh).json["proposalState"] == "Accepted"


def test_proposal_made_invalid_by_another_is_dropped() -> None:
    net = start_network(("d0", "d1", "d2"))
    user_cert = net.members[0].cert_pem  # any certificate will do for a user
    added = net.pass_proposal([{"name": "set_user", "args": {"cert": user_cert}}])
    assert added.json["proposalState"] == "Accepted"
    user_id = net.members[0].id
    set_data = net.propose(
        net.members[1], [{"name": "set_user_data", "args": {"user_id": user_id, "user_data": 1}}]
    ).json["proposalId"]
    removed = net.pass_proposal([{"name": "remove_user", "args": {"user_id": user_id}}])
    assert removed.json["proposalState"] == "Accepted"
    info = proposals.get_proposal(net.store.begin(), set_data)
    assert info["proposalState"] == "Dropped"
