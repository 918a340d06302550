"""SDK and CLI against a real one-node network (real processes, TLS, ledger on disk)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import ccf.cose
import ccf.receipt
import pytest
from cryptography import x509
from typer.testing import CliRunner

from charter.auditor import audit_ledger, verify_receipt_bytes
from charter.cli import app
from charter.errors import ConnectionFailed, NotFound, Unauthorized
from charter.keygen import generate_identity
from charter.member import Member
from charter.sandbox import Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("e2e") / "sandbox", nodes=1)
    try:
        asyncio.run(sb.start())
        yield sb
    finally:
        sb.stop()


def _ledger_dir(sb: Sandbox) -> Path:
    return Path(json.loads(sb.network_path.read_text())["nodes"][0]["ledger_dir"])


async def test_user_write_commits_and_its_receipts_verify_offline(sandbox: Sandbox) -> None:
    async with sandbox.client(user=0) as user:
        r = user.check(await user.post("/app/log/private", json={"id": 7, "msg": "hello"}))
        assert r.txid is not None
        await user.wait_for_commit(r.txid, timeout_s=10)
        assert await user.tx_status(r.txid) == "Committed"
        receipt = await user.receipt(r.txid)
        root = user.verify_receipt(receipt)
        assert len(root) == 32
        cose = await user.cose_receipt(r.txid)
    service = sandbox.service_cert_path.read_text()
    assert verify_receipt_bytes(json.dumps(receipt).encode(), service).txid == str(r.txid)
    assert verify_receipt_bytes(cose, service).txid == str(r.txid)
    # CCF's own verifiers accept what the SDK fetched (FORMATS §5).
    service_cert = x509.load_pem_x509_certificate(service.encode())
    node_cert = x509.load_pem_x509_certificate(receipt["cert"].encode())
    components = receipt["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(components["write_set_digest"])
        + hashlib.sha256(components["commit_evidence"].encode()).digest()
        + bytes.fromhex(components["claims_digest"])
    ).hexdigest()
    ccf_root = ccf.receipt.root(leaf, receipt["proof"])
    assert ccf_root == root.hex()
    ccf.receipt.verify(ccf_root, receipt["signature"], node_cert)
    ccf.receipt.check_endorsements(node_cert, service_cert, [])
    claims = bytes.fromhex(components["claims_digest"])
    ccf.cose.verify_receipt(cose, service_cert.public_key(), claims)


async def test_user_endpoints_refuse_callers_without_a_registered_cert(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with sandbox.client() as anonymous:
        with pytest.raises(Unauthorized) as info:
            await anonymous.get_json("/app/log/private", params={"id": "7"})
        assert info.value.status == 401
    stranger = generate_identity("stranger", tmp_path)
    url = sandbox.nodes[0].url
    async with CharterClient(
        url, sandbox.service_cert_path, cert_path=stranger.cert_path, key_path=stranger.key_path
    ) as c:
        # An unregistered cert fails the TLS handshake itself (DESIGN §3).
        with pytest.raises(ConnectionFailed, match="registered"):
            await c.get_json("/app/log/private", params={"id": "7"})


async def test_member_governance_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    user9 = generate_identity("user9", tmp_path)
    members = sandbox.member_identities()
    async with sandbox.client() as c:
        proposer = Member(c, *members[0])
        actions = [{"name": "set_user", "args": {"cert": user9.cert_path.read_text()}}]
        dry = await proposer.dry_run(actions)
        assert dry["valid"] is True
        withdrawn = await proposer.propose(actions)
        gone = await proposer.withdraw(withdrawn.proposal_id)
        assert gone is not None and gone.state == "Withdrawn"
        p = await proposer.propose(actions)
        for cert, key in members[1:]:
            p = await Member(c, cert, key).vote(p.proposal_id, approve=True)
        assert p.state == "Accepted"
        assert p.txid is not None
        await c.wait_for_commit(p.txid)
        assert user9.id in {u["userId"] for u in await c.users()}
        assert (await proposer.proposal(p.proposal_id)).state == "Accepted"
        with pytest.raises(NotFound):
            await proposer.proposal("00" * 32)


def test_cli_reads_a_live_network_and_audits_its_ledger(sandbox: Sandbox) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    net = str(sandbox.network_path)
    status = runner.invoke(app, ["status", "--network", net, "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["network"]["service_status"] == "Open"
    members = json.loads(runner.invoke(app, ["members", "--network", net, "--json"]).stdout)
    assert {m["status"] for m in members} == {"Active"}
    ledger = str(_ledger_dir(sandbox))
    audit = runner.invoke(
        app, ["ledger", "audit", ledger, "--network", net, "--include-uncommitted", "--json"]
    )
    assert audit.exit_code == 0, audit.output
    assert json.loads(audit.stdout)["service_status"] == "Open"
    report = audit_ledger(ledger, service_cert=sandbox.service_cert_path, include_uncommitted=True)
    assert report.last_seqno >= 1
    gov = runner.invoke(app, ["ledger", "read", ledger, "--governance"])
    assert "transition_service_to_open" in gov.stdout
