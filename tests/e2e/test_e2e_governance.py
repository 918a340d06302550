"""Governance end to end on a real node: members open the service by ballots, users come and
go by proposal, a removed member is refused, proposals signed by CCF's own `ccf_cose_sign1`
are accepted, and a constitution change to unanimity is enforced. The unanimity test runs
last: it changes the rules for everything after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    check_receipt_with_ccf,
    log_tails,
    make_sandbox,
    read,
    start_sandbox,
    wait_committed_on,
)

from charter.errors import CharterError, Forbidden
from charter.keygen import KeygenResult, generate_identity
from charter.member import Member, Proposal
from charter.sandbox import Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

CCF_COSE_SIGN1 = Path(sys.executable).parent / "ccf_cose_sign1"
GOV_PARAMS = {"api-version": "2024-07-01"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-gov") / "sb", nodes=1))
    try:
        yield sb
    finally:
        sb.stop()


def _members(sb: Sandbox, c: CharterClient) -> list[Member]:
    return [Member(c, cert, key) for cert, key in sb.member_identities()]


def _as(sb: Sandbox, ident: KeygenResult) -> CharterClient:
    return CharterClient(
        sb.nodes[0].url, sb.service_cert_path, cert_path=ident.cert_path, key_path=ident.key_path
    )


async def test_service_opened_by_ballots_and_user_added_by_proposal_can_write(
    net: Sandbox, tmp_path: Path
) -> None:
    node = net.nodes[0]
    async with net.client(node) as c:
        network = await c.network()
        assert network["service_status"] == "Open"
        members = await c.members()
        assert len(members) == 3 and {m["status"] for m in members} == {"Active"}
        proposals = await _members(net, c)[0].proposals()
        opening = [
            p
            for p in proposals
            if any(
                a.get("name") == "transition_service_to_open"
                for a in (await c.get_json(f"/gov/members/proposals/{p.proposal_id}/actions",
                                           params=GOV_PARAMS)).get("actions", [])
            )
        ]  # fmt: skip
        assert [p.state for p in opening] == ["Accepted"], proposals
        assert len(opening[0].final_votes) >= 2  # opened by ballots, not by fiat

        user = generate_identity("user5", tmp_path)
        actions = [{"name": "set_user", "args": {"cert": user.cert_path.read_text()}}]
        proposal = await _members(net, c)[0].propose(actions)
        assert proposal.state == "Open"
        async with _as(net, user) as u:
            # Not a user yet: refused at the handshake or by the endpoint.
            with pytest.raises(CharterError):
                u.check(await u.post("/app/log/private", json={"id": 5, "msg": "too early"}))
        for member in _members(net, c)[1:]:
            proposal = await member.vote(proposal.proposal_id, True)
            if proposal.state != "Open":
                break
        assert proposal.state == "Accepted", proposal
        assert user.id in {u["userId"] for u in await c.users()}

    async with _as(net, user) as u:
        r = u.check(await u.post("/app/log/private", json={"id": 5, "msg": "by user5"}))
        assert r.txid is not None
        await wait_committed_on(net, node, r.txid.seqno)
        check_receipt_with_ccf(await u.receipt(r.txid), net.service_cert_path.read_text())
    assert await read(net, node, 5) == "by user5"


async def test_removed_member_is_refused_on_its_next_request(net: Sandbox, tmp_path: Path) -> None:
    newcomer = generate_identity("member3", tmp_path, encryption_key=True)
    async with net.client() as c:
        await net.pass_proposal(
            c, [{"name": "set_member", "args": {"cert": newcomer.cert_path.read_text()}}]
        )
        m3 = Member(c, newcomer.cert_path, newcomer.key_path)
        await m3.ack()
        status = {m["memberId"]: m["status"] for m in await c.members()}
        assert status[m3.id] == "Active", status
        # While a member, its proposals are taken.
        own = await m3.propose(
            [{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}]
        )
        assert own.state == "Open"

        removal = await net.pass_proposal(
            c, [{"name": "remove_member", "args": {"member_id": m3.id}}]
        )
        assert removal.state == "Accepted"
        assert m3.id not in {m["memberId"] for m in await c.members()}
        with pytest.raises(CharterError) as refused:
            await m3.propose(
                [{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}]
            )
        assert refused.value.status in (401, 403), refused.value
        with pytest.raises(CharterError) as refused_vote:
            await m3.vote(own.proposal_id, True)
        assert refused_vote.value.status in (401, 403), refused_vote.value
        with pytest.raises(Forbidden):
            await m3.ack()


def _ccf_sign(
    sb: Sandbox,
    member: int,
    msg_type: str,
    content: dict[str, Any],
    directory: Path,
    proposal_id: str | None = None,
) -> bytes:
    cert, key = sb.member_identities()[member]
    content_path = directory / f"{msg_type}-{member}.json"
    content_path.write_text(json.dumps(content))
    argv = [
        str(CCF_COSE_SIGN1),
        "--content", str(content_path),
        "--signing-cert", str(cert),
        "--signing-key", str(key),
        "--ccf-gov-msg-type", msg_type,
        "--ccf-gov-msg-created-at", datetime.now(UTC).isoformat(timespec="seconds"),
    ]  # fmt: skip
    if proposal_id is not None:
        argv += ["--ccf-gov-msg-proposal-id", proposal_id]
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


async def test_proposals_signed_by_the_sdk_and_by_ccf_cose_sign1_are_both_accepted(
    net: Sandbox, tmp_path: Path
) -> None:
    by_sdk = generate_identity("user_sdk", tmp_path)
    by_ccf = generate_identity("user_ccf", tmp_path)
    async with net.client() as c:
        sdk_proposal = await net.pass_proposal(
            c, [{"name": "set_user", "args": {"cert": by_sdk.cert_path.read_text()}}]
        )
        assert sdk_proposal.state == "Accepted"

        actions = {
            "actions": [{"name": "set_user", "args": {"cert": by_ccf.cert_path.read_text()}}]
        }
        envelope = await asyncio.to_thread(_ccf_sign, net, 0, "proposal", actions, tmp_path)
        r = c.check(
            await c.post(
                "/gov/members/proposals:create",
                data=envelope,
                headers={"Content-Type": "application/cose"},
                params=GOV_PARAMS,
            )
        )
        proposal = Proposal.from_json(r.body)
        assert proposal.state == "Open", r.body
        # The same signed bytes again are a replay, refused without a second proposal.
        replay = await c.post(
            "/gov/members/proposals:create",
            data=envelope,
            headers={"Content-Type": "application/cose"},
            params=GOV_PARAMS,
        )
        assert replay.status == 400 and replay.body["error"]["code"] == "ProposalReplay", replay
        members = _members(net, c)
        assert proposal.proposer_id == members[0].id
        for i in (1, 2):
            ballot = await asyncio.to_thread(
                _ccf_sign, net, i, "ballot", {"ballot": "approve"}, tmp_path, proposal.proposal_id
            )
            path = f"/gov/members/proposals/{proposal.proposal_id}/ballots/{members[i].id}:submit"
            r = c.check(
                await c.post(
                    path,
                    data=ballot,
                    headers={"Content-Type": "application/cose"},
                    params=GOV_PARAMS,
                )
            )
            proposal = Proposal.from_json(r.body)
            if proposal.state != "Open":
                break
            again = await c.post(
                path, data=ballot, headers={"Content-Type": "application/cose"}, params=GOV_PARAMS
            )
            assert again.status >= 400, ("a replayed ballot was taken", again)
        assert proposal.state == "Accepted", (proposal, log_tails(net))
        users = {u["userId"] for u in await c.users()}
    assert {by_sdk.id, by_ccf.id} <= users
    async with _as(net, by_ccf) as u:
        u.check(await u.post("/app/log/public", json={"id": 9, "msg": "signed by ccf"}))


async def test_unanimity_constitution_is_enforced_once_adopted(
    net: Sandbox, tmp_path: Path
) -> None:
    async with net.client() as c:
        members = _members(net, c)
        assert len(await c.members()) == 3
        adopted = await net.pass_proposal(
            c,
            [
                {
                    "name": "set_constitution",
                    "args": {"constitution": {"default": {"approvals": "unanimous"}}},
                }
            ],
        )
        assert adopted.state == "Accepted"
        stored = await c.get_json("/gov/service/constitution", params=GOV_PARAMS)
        assert "unanimous" in json.dumps(stored), stored

        late = generate_identity("user_late", tmp_path)
        p = await members[0].propose(
            [{"name": "set_user", "args": {"cert": late.cert_path.read_text()}}]
        )
        p = await members[0].vote(p.proposal_id, True)
        p = await members[1].vote(p.proposal_id, True)
        # A majority (2 of 3) no longer suffices.
        assert p.state == "Open", p
        assert late.id not in {u["userId"] for u in await c.users()}
        p = await members[2].vote(p.proposal_id, True)
        assert p.state == "Accepted", p
        assert late.id in {u["userId"] for u in await c.users()}

        # One reject among three now blocks a proposal for good.
        other = generate_identity("user_never", tmp_path)
        q = await members[0].propose(
            [{"name": "set_user", "args": {"cert": other.cert_path.read_text()}}]
        )
        for m, approve in ((members[0], True), (members[1], True), (members[2], False)):
            q = await m.vote(q.proposal_id, approve)
        assert q.state in ("Open", "Rejected"), q
        assert other.id not in {u["userId"] for u in await c.users()}
