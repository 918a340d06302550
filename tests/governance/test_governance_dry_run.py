"""Dry runs report validity, the votes that would accept, and KV changes, recording nothing."""

from __future__ import annotations

from typing import Any

from gov_testkit import Member, Network, member, start_network, state_of

from charter.governance import handlers
from charter.governance import tables as t
from charter.governance.handlers import GovResult


def dry_run(net: Network, who: Member, actions: list[dict[str, Any]]) -> tuple[GovResult, bytes]:
    envelope = who.sign("proposal", {"actions": actions}, created_at=net.now_s)
    before = state_of(net.store)
    tx = net.store.begin()
    result = handlers.dry_run_proposal(tx, envelope, now_s=net.now_s, merkle_root=net.root)
    assert not tx.has_writes and state_of(net.store) == before
    return result, envelope


def test_dry_run_lists_changes_and_votes_without_recording_anything() -> None:
    net = start_network()
    newcomer = member("dry-newcomer")
    result, envelope = dry_run(
        net, net.members[0], [{"name": "set_user", "args": {"cert": newcomer.cert_pem}}]
    )
    body = result.json
    assert body["valid"] is True and body["errors"] == []
    assert body["votes"]["requiredApprovals"] == 2
    assert body["votes"]["activeMembers"] == sorted(m.id for m in net.members)
    assert body["changes"] == [
        {"map": t.USERS_CERTS, "key": newcomer.id, "op": "put", "value": newcomer.cert_pem}
    ]
    # Nothing was recorded, not even the replay entry: the same envelope can still be used.
    created = net.run(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    assert created.json["proposalState"] == "Open"


def test_dry_run_of_an_invalid_proposal_reports_why() -> None:
    net = start_network()
    result, _ = dry_run(
        net, net.members[0], [{"name": "remove_user", "args": {"user_id": "ab" * 32}}]
    )
    assert result.json["valid"] is False
    assert result.json["errors"][0]["code"] == "ProposalFailedToValidate"
    assert result.json["changes"] == []


def test_dry_run_reports_runtime_effects_and_vetoes() -> None:
    net = start_network()
    veto = {"default": {"veto": True}}
    net.pass_proposal([{"name": "set_constitution", "args": {"constitution": veto}}])
    result, _ = dry_run(net, net.members[1], [{"name": "transition_service_to_open", "args": {}}])
    assert result.json["effects"]["openService"] is True
    assert result.json["votes"]["vetoMembers"] == sorted(m.id for m in net.members)
    assert result.json["changes"][0]["map"] == t.SERVICE_INFO
