"""Every refused member request gets a specific 4xx code and leaves the KV unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from gov_testkit import NOW_S, Network, member, start_network

from charter.governance import handlers
from charter.governance import tables as t
from charter.governance.requests import MAX_ENVELOPE_BYTES
from charter.ledger import cose

OPEN = [{"name": "transition_service_to_open", "args": {}}]


@pytest.fixture()
def net() -> Network:
    return start_network()


def create(net: Network, envelope: bytes) -> object:
    return net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)


def open_proposal(net: Network) -> str:
    return str(net.propose(net.members[0], OPEN).json["proposalId"])


def ballot_refusal(net: Network, envelope: bytes, pid: str, member_id: str) -> object:
    return net.refused(
        handlers.submit_ballot,
        envelope,
        proposal_id=pid,
        member_id=member_id,
        now_s=net.now_s,
        merkle_root=net.root,
    )


def check(err: object, code: str, status: int) -> None:
    assert getattr(err, "code", None) == code, err
    assert getattr(err, "status", None) == status, err


def test_tampered_signature_is_rejected(net: Network) -> None:
    envelope = bytearray(net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s))
    envelope[-5] ^= 0x01  # inside the raw r||s signature, the last CBOR item
    check(create(net, bytes(envelope)), "InvalidSignature", 401)


def test_signature_by_another_key_under_a_members_kid_is_rejected(net: Network) -> None:
    impostor = member("impostor")
    protected: dict[int | str, Any] = {
        cose.HEADER_KID: net.members[0].id.encode(),
        cose.GOV_MSG_TYPE: "proposal",
        cose.GOV_MSG_CREATED_AT: net.now_s,
    }
    envelope = cose.sign1(impostor.key, protected, b'{"actions": []}')
    check(create(net, envelope), "InvalidSignature", 401)


def test_unknown_member_is_rejected(net: Network) -> None:
    stranger = member("stranger")
    envelope = stranger.sign("proposal", {"actions": OPEN}, created_at=net.now_s)
    check(create(net, envelope), "UnknownMember", 401)


def test_removed_member_is_rejected_as_retired(net: Network) -> None:
    leaver = net.members[2]
    result = net.pass_proposal([{"name": "remove_member", "args": {"member_id": leaver.id}}])
    assert result.json["proposalState"] == "Accepted"
    envelope = leaver.sign("proposal", {"actions": OPEN}, created_at=net.now_s)
    check(create(net, envelope), "MemberRetired", 403)


def test_accepted_but_not_active_member_may_not_propose() -> None:
    net = start_network(activate=False)
    envelope = net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s)
    check(create(net, envelope), "MemberNotActive", 403)


@pytest.mark.parametrize("kid", [b"", b"zz" * 32, b"AB" * 32, None])
def test_malformed_or_missing_kid_is_rejected(net: Network, kid: bytes | None) -> None:
    protected: dict[int | str, Any] = {
        cose.GOV_MSG_TYPE: "proposal",
        cose.GOV_MSG_CREATED_AT: net.now_s,
    }
    if kid is not None:
        protected[cose.HEADER_KID] = kid
    envelope = cose.sign1(net.members[0].key, protected, b'{"actions": []}')
    check(create(net, envelope), "InvalidKid", 401)


def test_wrong_message_type_is_rejected(net: Network) -> None:
    envelope = net.members[0].sign("ack", {"actions": OPEN}, created_at=net.now_s)
    check(create(net, envelope), "InvalidMessageType", 401)


def test_expired_created_at_is_rejected(net: Network) -> None:
    envelope = net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s - 601)
    check(create(net, envelope), "RequestExpired", 400)


def test_created_at_in_the_future_is_rejected(net: Network) -> None:
    envelope = net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s + 61)
    check(create(net, envelope), "RequestInFuture", 400)


def test_missing_created_at_is_rejected(net: Network) -> None:
    protected: dict[int | str, Any] = {
        cose.HEADER_KID: net.members[0].id.encode(),
        cose.GOV_MSG_TYPE: "proposal",
    }
    envelope = cose.sign1(net.members[0].key, protected, b'{"actions": []}')
    check(create(net, envelope), "InvalidCreatedAt", 400)


def test_replayed_proposal_envelope_is_rejected(net: Network) -> None:
    envelope = net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s)
    net.run(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    check(create(net, envelope), "ProposalReplay", 400)


def test_proposal_older_than_the_median_recent_one_is_rejected(net: Network) -> None:
    for offset in (10, 20, 30):
        net.propose(net.members[0], OPEN, created_at=net.now_s + offset - 30)
    envelope = net.members[0].sign("proposal", {"actions": OPEN}, created_at=net.now_s - 100)
    check(create(net, envelope), "ProposalCreatedTooLongAgo", 400)


def test_replayed_ballot_envelope_is_rejected(net: Network) -> None:
    pid = open_proposal(net)
    voter = net.members[1]
    envelope = voter.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    net.run(
        handlers.submit_ballot,
        envelope,
        proposal_id=pid,
        member_id=voter.id,
        now_s=net.now_s,
        merkle_root=net.root,
    )
    check(ballot_refusal(net, envelope, pid, voter.id), "RequestReplay", 400)


def test_second_ballot_by_the_same_member_is_rejected(net: Network) -> None:
    pid = open_proposal(net)
    voter = net.members[1]
    net.vote(voter, pid, "reject")
    again = voter.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    check(ballot_refusal(net, again, pid, voter.id), "VoteAlreadyExists", 400)


def test_ballot_on_a_closed_proposal_is_rejected(net: Network) -> None:
    result = net.pass_proposal(OPEN)
    pid = result.json["proposalId"]
    assert result.json["proposalState"] == "Accepted"
    late = net.members[2]
    envelope = late.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    check(ballot_refusal(net, envelope, pid, late.id), "ProposalNotOpen", 400)


def test_ballot_on_an_unknown_proposal_is_not_found(net: Network) -> None:
    pid = "cd" * 32
    voter = net.members[1]
    envelope = voter.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    check(ballot_refusal(net, envelope, pid, voter.id), "ProposalNotFound", 404)


def test_ballot_signed_for_another_proposal_is_rejected(net: Network) -> None:
    pid = open_proposal(net)
    voter = net.members[1]
    envelope = voter.sign(
        "ballot", {"ballot": "approve"}, proposal_id="ef" * 32, created_at=net.now_s
    )
    check(ballot_refusal(net, envelope, pid, voter.id), "InvalidResourceName", 400)


def test_ballot_for_another_members_url_is_rejected(net: Network) -> None:
    pid = open_proposal(net)
    voter = net.members[1]
    envelope = voter.sign("ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s)
    check(ballot_refusal(net, envelope, pid, net.members[2].id), "InvalidResourceName", 400)


@pytest.mark.parametrize(
    "body",
    [{"ballot": "yes"}, {"ballot": True}, {"vote": "approve"}, {"ballot": "approve", "x": 1}],
)
def test_malformed_ballot_is_rejected(net: Network, body: dict[str, object]) -> None:
    pid = open_proposal(net)
    voter = net.members[1]
    envelope = voter.sign("ballot", body, proposal_id=pid, created_at=net.now_s)
    check(ballot_refusal(net, envelope, pid, voter.id), "InvalidBallot", 400)


def test_malformed_action_args_are_rejected(net: Network) -> None:
    actions = [{"name": "set_recovery_threshold", "args": {"recovery_threshold": "two"}}]
    envelope = net.members[0].sign("proposal", {"actions": actions}, created_at=net.now_s)
    check(create(net, envelope), "InvalidActionArgs", 400)


def test_unexpected_action_arg_is_rejected(net: Network) -> None:
    actions = [{"name": "transition_service_to_open", "args": {"surprise": 1}}]
    envelope = net.members[0].sign("proposal", {"actions": actions}, created_at=net.now_s)
    check(create(net, envelope), "InvalidActionArgs", 400)


def test_unknown_action_is_rejected(net: Network) -> None:
    actions = [{"name": "make_me_root", "args": {}}]
    envelope = net.members[0].sign("proposal", {"actions": actions}, created_at=net.now_s)
    check(create(net, envelope), "UnknownAction", 400)


@pytest.mark.parametrize(
    "payload", [b"not json", b"[]", b'{"actions": []}', b'{"actions": [{"args": {}}]}']
)
def test_malformed_proposal_is_rejected(net: Network, payload: bytes) -> None:
    envelope = net.members[0].sign("proposal", payload, created_at=net.now_s)
    check(create(net, envelope), "InvalidProposal", 400)


def test_oversized_body_is_rejected(net: Network) -> None:
    padding = "x" * MAX_ENVELOPE_BYTES
    envelope = net.members[0].sign(
        "proposal", {"actions": OPEN, "pad": padding}, created_at=net.now_s
    )
    check(create(net, envelope), "RequestTooLarge", 413)


@pytest.mark.parametrize("body", [b"", b"\xa0", b"\xd2\x84\x40\xa0\xf6\x40", b"\xff" * 10])
def test_body_that_is_not_cose_sign1_is_rejected(net: Network, body: bytes) -> None:
    check(create(net, body), "InvalidCoseSign1", 400)


def test_detached_payload_is_rejected(net: Network) -> None:
    protected: dict[int | str, Any] = {
        cose.HEADER_KID: net.members[0].id.encode(),
        cose.GOV_MSG_TYPE: "proposal",
        cose.GOV_MSG_CREATED_AT: net.now_s,
    }
    envelope = cose.sign1(net.members[0].key, protected, b"{}", detached=True)
    check(create(net, envelope), "InvalidCoseSign1", 400)


def test_withdrawal_by_someone_other_than_the_proposer_is_rejected(net: Network) -> None:
    pid = open_proposal(net)
    other = net.members[1]
    envelope = other.sign("withdrawal", b"", proposal_id=pid, created_at=net.now_s)
    err = net.refused(handlers.withdraw_proposal, envelope, proposal_id=pid, now_s=net.now_s)
    check(err, "AuthorizationFailed", 403)


def test_ack_of_the_wrong_state_digest_is_rejected() -> None:
    net = start_network(activate=False)
    who = net.members[0]
    update = who.sign("state_digest", b"", created_at=net.now_s)
    net.run(
        handlers.update_state_digest,
        update,
        member_id=who.id,
        now_s=net.now_s,
        merkle_root=net.root,
    )
    ack = who.sign("ack", {"stateDigest": "00" * 32}, created_at=net.now_s)
    err = net.refused(handlers.ack_state_digest, ack, member_id=who.id, now_s=net.now_s)
    check(err, "StateDigestMismatch", 400)


def test_ack_before_any_digest_update_is_rejected() -> None:
    net = start_network(activate=False)
    who = net.members[0]
    ack = who.sign("ack", {"stateDigest": ""}, created_at=net.now_s)
    err = net.refused(handlers.ack_state_digest, ack, member_id=who.id, now_s=NOW_S)
    check(err, "StateDigestMismatch", 400)


def test_replay_records_of_expired_requests_are_pruned(net: Network) -> None:
    pid = open_proposal(net)
    net.vote(net.members[1], pid, "reject")
    assert len(list(net.store.begin().items(t.RECENT_REQUESTS))) == 7  # 3 updates, 3 acks, 1 ballot
    net.now_s += 601  # every recorded request is now outside the created_at window
    net.vote(net.members[2], pid, "reject")
    recent = list(net.store.begin().items(t.RECENT_REQUESTS))
    assert len(recent) == 1 and recent[0][0].startswith(str(net.now_s).encode())
