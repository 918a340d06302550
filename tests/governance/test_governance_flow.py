"""End-to-end governance flows over a real KV store: genesis, activation, opening."""

from __future__ import annotations

import json

from gov_testkit import start_network

from charter.governance import handlers, proposals, queries
from charter.governance import tables as t


def test_genesis_starts_service_opening_with_accepted_members() -> None:
    net = start_network(activate=False)
    tx = net.store.begin()
    info = queries.service_info(tx)
    assert info["status"] == "Opening"
    assert info["certificate"] == net.service_cert_pem
    assert info["creationTransactionId"] == "2.1"
    members = queries.members(tx)["value"]
    assert sorted(m["memberId"] for m in members) == sorted(m.id for m in net.members)
    assert {m["status"] for m in members} == {"Accepted"}
    assert queries.nodes(tx)["value"][0]["status"] == "Trusted"
    assert queries.constitution(tx) == {
        "actions": {},
        "default": {"approvals": "majority", "proposers": "active_members", "veto": False},
    }


def test_member_becomes_active_by_acking_the_state_digest() -> None:
    net = start_network(activate=False)
    first = net.members[0]
    net.activate(first)
    tx = net.store.begin()
    assert queries.member(tx, first.id)["status"] == "Active"
    assert queries.member(tx, net.members[1].id)["status"] == "Accepted"
    ack = t.get_json_object(tx, t.MEMBERS_ACKS, first.id.encode())
    assert ack is not None and "cose_sign1_req" in ack


def test_three_members_open_the_service_with_two_approvals() -> None:
    net = start_network()
    proposer, second, third = net.members
    created = net.propose(proposer, [{"name": "transition_service_to_open", "args": {}}])
    assert created.status == 200
    pid = created.json["proposalId"]
    assert created.json == {
        "proposalId": pid,
        "proposerId": proposer.id,
        "proposalState": "Open",
        "ballotCount": 0,
    }
    first_vote = net.vote(second, pid)
    assert first_vote.json["proposalState"] == "Open"
    assert first_vote.json["ballotCount"] == 1
    assert not first_vote.effects.open_service
    accepted = net.vote(third, pid)
    assert accepted.json["proposalState"] == "Accepted"
    assert accepted.json["finalVotes"] == {second.id: True, third.id: True}
    assert accepted.effects.open_service
    tx = net.store.begin()
    assert queries.service_status(tx) == "Open"
    # The proposal and its state are in CCF's tables, as read_ledger.py would show them.
    stored = json.loads(tx.get(t.PROPOSALS_INFO, pid.encode()) or b"")
    assert stored["state"] == "Accepted"
    assert stored["ballots"] == {second.id: "approve", third.id: "approve"}
    assert json.loads(tx.get(t.PROPOSALS, pid.encode()) or b"") == {
        "actions": [{"name": "transition_service_to_open", "args": {}}]
    }
    assert tx.get(t.COSE_HISTORY, third.id.encode()) is not None


def test_governance_json_is_compact_with_sorted_keys() -> None:
    net = start_network(("solo",))
    tx = net.store.begin()
    raw = tx.get(t.MEMBERS_INFO, net.members[0].id.encode())
    assert raw is not None
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), sort_keys=True).encode()
    assert tx.get(t.SERVICE_INFO, bytes(8)) is not None


def test_majority_of_rejections_rejects_without_applying() -> None:
    net = start_network()
    proposer, second, third = net.members
    pid = net.propose(proposer, [{"name": "transition_service_to_open", "args": {}}]).json[
        "proposalId"
    ]
    net.vote(second, pid, "reject")
    result = net.vote(third, pid, "reject")
    assert result.json["proposalState"] == "Rejected"
    assert result.json["finalVotes"] == {second.id: False, third.id: False}
    assert result.effects.empty
    assert queries.service_status(net.store.begin()) == "Opening"


def test_withdrawn_proposal_takes_no_more_ballots_and_closed_ones_are_purged() -> None:
    net = start_network()
    proposer, second, _ = net.members
    pid = net.propose(proposer, [{"name": "transition_service_to_open", "args": {}}]).json[
        "proposalId"
    ]
    withdrawal = proposer.sign("withdrawal", b"", proposal_id=pid, created_at=net.now_s)
    result = net.run(handlers.withdraw_proposal, withdrawal, proposal_id=pid, now_s=net.now_s)
    assert result.json["proposalState"] == "Withdrawn"
    ballot = second.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    err = net.refused(
        handlers.submit_ballot,
        ballot,
        proposal_id=pid,
        member_id=second.id,
        now_s=net.now_s,
        merkle_root=net.root,
    )
    assert err.code == "ProposalNotOpen"
    # As CCF: when another proposal closes, earlier closed ones are forgotten.
    net.pass_proposal([{"name": "set_member_data", "args": {"member_id": second.id}}])
    listed = {p["proposalId"] for p in proposals.list_proposals(net.store.begin()).proposals}
    assert pid not in listed
