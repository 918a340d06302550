"""Member requests: COSE envelopes CCF's tools and our governance accept, and the gov calls."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from ccf.cose import create_cose_sign1, validate_cose_sign1
from client_helpers import GovRecorder, Pki, StartServer, member_tx
from cryptography import x509
from pycose.messages.sign1message import Sign1Message

from charter.errors import InvalidInput
from charter.governance.requests import verify_request
from charter.identity import Identity
from charter.member import Member, gov_envelope
from charter.sdk import CharterClient

PROPOSAL_ID = "ab" * 32


def test_envelope_verifies_with_ccf_and_pycose(pki: Pki) -> None:
    ident = Identity.load(pki.member.cert_path, pki.member.key_path)
    payload = b'{"actions":[]}'
    env = gov_envelope(ident.key, ident.id, "proposal", payload)
    public_key = x509.load_pem_x509_certificate(ident.cert_pem.encode()).public_key()
    validate_cose_sign1(public_key, env)  # type: ignore[no-untyped-call]  # raises if bad
    msg = Sign1Message.decode(env)
    assert msg.payload == payload
    assert msg.phdr["ccf.gov.msg.type"] == "proposal"
    assert msg.phdr["ccf.gov.msg.created_at"] == pytest.approx(time.time(), abs=5)


def test_envelope_protected_header_is_byte_identical_to_ccf_tooling(pki: Pki) -> None:
    ident = Identity.load(pki.member.cert_path, pki.member.key_path)
    headers: dict[str, Any] = {
        "ccf.gov.msg.type": "ballot",
        "ccf.gov.msg.proposal_id": PROPOSAL_ID,
        "ccf.gov.msg.created_at": 1_700_000_000,
    }
    ours = gov_envelope(
        ident.key, ident.id, "ballot", b"{}", proposal_id=PROPOSAL_ID, created_at=1_700_000_000
    )
    theirs = create_cose_sign1(b"{}", pki.member.key_path.read_text(), ident.cert_pem, headers)
    # Signatures are randomised; everything else, protected bytes included, must match.
    ours_msg, theirs_msg = cbor2.loads(ours).value, cbor2.loads(theirs).value
    assert ours_msg[0] == theirs_msg[0]
    assert ours_msg[2] == theirs_msg[2]


def test_governance_accepts_member_envelopes_of_every_kind(pki: Pki) -> None:
    ident = Identity.load(pki.member.cert_path, pki.member.key_path)
    now = int(time.time())
    for msg_type, proposal_id in (
        ("proposal", None),
        ("ballot", PROPOSAL_ID),
        ("withdrawal", PROPOSAL_ID),
        ("state_digest", None),
        ("ack", None),
    ):
        env = gov_envelope(ident.key, ident.id, msg_type, b"{}", proposal_id=proposal_id)
        req = verify_request(
            member_tx(pki), env, msg_type=msg_type, now_s=now, path_proposal_id=proposal_id
        )
        assert (req.member_id, req.msg_type, req.proposal_id) == (ident.id, msg_type, proposal_id)


def test_ballot_without_proposal_id_is_refused_before_signing(pki: Pki) -> None:
    ident = Identity.load(pki.member.cert_path, pki.member.key_path)
    with pytest.raises(ValueError, match="proposal id"):
        gov_envelope(ident.key, ident.id, "ballot", b"{}")
    with pytest.raises(ValueError, match="unknown"):
        gov_envelope(ident.key, ident.id, "sneaky", b"{}")


def _proposal(state: str = "Open", ballots: int = 0) -> dict[str, Any]:
    return {
        "proposalId": PROPOSAL_ID,
        "proposerId": "cd" * 32,
        "proposalState": state,
        "ballotCount": ballots,
    }


async def test_member_propose_vote_withdraw_ack_reach_the_right_endpoints(
    pki: Pki, tls_server: StartServer
) -> None:
    gov = GovRecorder(pki)
    base = "/gov/members"
    url = await tls_server(
        {
            f"{base}/proposals:create": gov.handler("proposal", _proposal()),
            base + "/proposals/{pid}/ballots/{mid}:submit": gov.handler(
                "ballot", _proposal("Accepted", 1)
            ),
            base + "/proposals/{pid}:withdraw": gov.handler("withdrawal", None, 204),
            base + "/state-digests/{mid}:update": gov.handler(
                "state_digest", {"memberId": pki.member.id, "stateDigest": "ee" * 32}
            ),
            base + "/state-digests/{mid}:ack": gov.handler("ack", None, 204),
        }
    )
    actions = [{"name": "set_user", "args": {"cert": pki.user.cert_path.read_text()}}]
    async with CharterClient(url, pki.service_cert) as c:
        m = Member(c, pki.member.cert_path, pki.member.key_path)
        p = await m.propose(actions)
        assert (p.proposal_id, p.state, str(p.txid)) == (PROPOSAL_ID, "Open", "2.30")
        voted = await m.vote(PROPOSAL_ID, approve=True)
        assert voted.state == "Accepted" and voted.ballot_count == 1
        assert await m.withdraw(PROPOSAL_ID) is None
        assert await m.ack() == "ee" * 32
    assert [s[0] for s in gov.seen] == ["proposal", "ballot", "withdrawal", "state_digest", "ack"]
    assert gov.seen[0][2] == {"actions": actions}
    assert gov.seen[1][2] == {"ballot": "approve"}
    assert gov.seen[4][2] == {"stateDigest": "ee" * 32}


async def test_invalid_action_args_are_refused_before_anything_is_sent(
    pki: Pki, closed_port_url: str
) -> None:
    # The port is closed: reaching the network would raise ConnectionFailed instead.
    async with CharterClient(closed_port_url, pki.service_cert) as c:
        m = Member(c, pki.member.cert_path, pki.member.key_path)
        with pytest.raises(InvalidInput, match="set_user") as info:
            await m.propose([{"name": "set_user", "args": {"certificate": "x"}}])
        assert info.value.code == "InvalidActionArgs"
        with pytest.raises(InvalidInput, match="unknown action"):
            await m.propose([{"name": "launch_missiles", "args": {}}])
        with pytest.raises(InvalidInput, match="non-empty"):
            await m.propose([])
        with pytest.raises(ValueError, match="64 lowercase hex"):
            await m.vote("../../node/state", approve=True)
