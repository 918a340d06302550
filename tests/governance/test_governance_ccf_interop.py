"""Requests signed by CCF's own `ccf_cose_sign1` tool (ccf 6.0.28) are accepted."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

from gov_testkit import Network, start_network

from charter.governance import handlers, queries
from charter.ledger import certs

CCF_COSE_SIGN1 = Path(sys.executable).parent / "ccf_cose_sign1"


def ccf_sign(
    tmp_path: Path,
    net: Network,
    index: int,
    msg_type: str,
    content: bytes,
    proposal_id: str | None = None,
) -> bytes:
    who = net.members[index]
    key_file = tmp_path / f"{who.name}_privk.pem"
    cert_file = tmp_path / f"{who.name}_cert.pem"
    key_file.write_text(certs.key_pem(who.key))
    cert_file.write_text(who.cert_pem)
    content_file = tmp_path / f"{msg_type}.json"
    content_file.write_bytes(content)
    created_at = datetime.datetime.fromtimestamp(net.now_s, tz=datetime.UTC).isoformat()
    argv = [
        str(CCF_COSE_SIGN1),
        "--content",
        str(content_file),
        "--signing-key",
        str(key_file),
        "--signing-cert",
        str(cert_file),
        "--ccf-gov-msg-type",
        msg_type,
        "--ccf-gov-msg-created_at",
        created_at,
    ]
    if proposal_id is not None:
        argv += ["--ccf-gov-msg-proposal_id", proposal_id]
    return subprocess.run(argv, check=True, capture_output=True, timeout=60).stdout


def test_ccf_signed_proposal_and_ballots_open_the_service(tmp_path: Path) -> None:
    net = start_network(("ccf0", "ccf1", "ccf2"))
    proposal = json.dumps({"actions": [{"name": "transition_service_to_open", "args": {}}]})
    envelope = ccf_sign(tmp_path, net, 0, "proposal", proposal.encode())
    created = net.run(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    pid = created.json["proposalId"]
    assert created.json["proposalState"] == "Open"
    for index in (1, 2):
        ballot = ccf_sign(tmp_path, net, index, "ballot", b'{"ballot": "approve"}', pid)
        result = net.run(
            handlers.submit_ballot,
            ballot,
            proposal_id=pid,
            member_id=net.members[index].id,
            now_s=net.now_s,
            merkle_root=net.root,
        )
    assert result.json["proposalState"] == "Accepted"
    assert queries.service_status(net.store.begin()) == "Open"


def test_ccf_signed_state_digest_ack_activates_a_member(tmp_path: Path) -> None:
    net = start_network(("ccfa",), activate=False)
    who = net.members[0]
    update = ccf_sign(tmp_path, net, 0, "state_digest", b"")
    body = net.run(
        handlers.update_state_digest,
        update,
        member_id=who.id,
        now_s=net.now_s,
        merkle_root=net.root,
    ).json
    ack = ccf_sign(
        tmp_path, net, 0, "ack", json.dumps({"stateDigest": body["stateDigest"]}).encode()
    )
    result = net.run(handlers.ack_state_digest, ack, member_id=who.id, now_s=net.now_s)
    assert result.status == 204 and result.effects.empty
    assert queries.member(net.store.begin(), who.id)["status"] == "Active"
