"""The console in a real browser (Debian's Chromium) against a real 3-node sandbox."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import console_page, screenshot
from playwright.async_api import expect
from typer.testing import CliRunner

from charter.cli import app
from charter.keygen import generate_identity
from charter.ledger import certs, cose
from charter.member import Member, gov_envelope
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e


def _url(sb: Sandbox, view: str) -> str:
    return f"{sb.nodes[0].url}/console/#{view}"


async def test_service_view_shows_the_three_nodes_and_the_primary(sandbox: Sandbox) -> None:
    async with sandbox.client() as client:
        primary = (await client.network())["primary_id"]
    async with console_page(_url(sandbox, "service")) as page:
        rows = page.locator("#nodes-table tbody tr")
        await rows.nth(2).wait_for()
        assert await rows.count() == 3
        shown = {await rows.nth(i).get_attribute("data-node-id") for i in range(3)}
        assert shown == {node.node_id for node in sandbox.nodes}
        primary_row = page.locator("#nodes-table tbody tr", has=page.locator(".badge.primary"))
        assert await primary_row.count() == 1
        assert await primary_row.get_attribute("data-node-id") == primary
        assert await page.locator("#card-status").inner_text() == "Open"
        # A second sample draws the chart.
        await expect(page.locator("#commit-chart polyline")).to_have_attribute(
            "points", re.compile(r"\d")
        )
        await screenshot(page, "service")


async def _primary_and_backups(sb: Sandbox) -> tuple[NodeProcess, list[NodeProcess]]:
    primary_id = await sb.wait_for_primary()
    primary = next(n for n in sb.nodes if n.node_id == primary_id)
    return primary, [n for n in sb.nodes if n is not primary]


async def _write(sb: Sandbox, count: int) -> int:
    """`count` committed writes; returns the seqno of the last."""
    async with sb.client(user=0) as user:
        for k in range(count):
            r = user.check(await user.post("/app/log/public", json={"id": 900 + k, "msg": "x"}))
        assert r.txid is not None
        await user.wait_for_commit(r.txid, timeout_s=15)
    return r.txid.seqno


async def _node_figures(page: Any) -> dict[str, dict[str, str]]:
    figures = {}
    rows = page.locator("#nodes-table tbody tr")
    for i in range(await rows.count()):
        row = rows.nth(i)
        cells = {
            name: await row.locator(f"[data-field='{name}']").inner_text()
            for name in ("last-heard", "ledger-seqno", "commit-seqno", "source")
        }
        cells["data-source"] = await row.get_attribute("data-source") or ""
        figures[await row.get_attribute("data-node-id") or ""] = cells
    return figures


async def test_node_consensus_on_the_primary_acknowledges_each_backup_and_a_backup_knows_its_primary(
    sandbox: Sandbox,
) -> None:
    primary, backups = await _primary_and_backups(sandbox)
    seqno = await _write(sandbox, 1)
    deadline = asyncio.get_running_loop().time() + 20
    async with sandbox.client(primary) as client:
        while True:  # the backups' answers to the next heartbeats report the new commit
            details = (await client.get_json("/node/consensus"))["details"]
            acks = details["acks"]
            if all(acks[b.node_id]["commit_seqno"] >= seqno for b in backups):
                break
            assert asyncio.get_running_loop().time() < deadline, details
            await asyncio.sleep(0.2)
    assert details["node_id"] == details["primary_id"] == primary.node_id
    assert details["leadership_state"] == "Leader"
    assert details["membership_state"] == "Active" and details["ticking"] is True
    assert set(acks) == {b.node_id for b in backups}
    for ack in acks.values():
        assert ack["seqno"] >= seqno and ack["last_received_ms"] >= 0
        assert ack["needs_snapshot"] is False
    assert details["commit_seqno"] >= seqno and details["last_seqno"] >= details["commit_seqno"]
    (config,) = details["configs"]
    assert set(config["nodes"]) == {n.node_id for n in sandbox.nodes}
    assert all(node["address"] for node in config["nodes"].values())
    async with sandbox.client(backups[0]) as client:
        mine = (await client.get_json("/node/consensus"))["details"]
    assert mine["node_id"] == backups[0].node_id and mine["primary_id"] == primary.node_id
    assert mine["leadership_state"] == "Follower" and mine["acks"] == {}
    assert mine["primary_last_received_ms"] >= 0 and mine["commit_seqno"] >= seqno


async def test_nodes_table_shows_last_heard_and_seqnos_of_every_node_and_they_advance(
    sandbox: Sandbox,
) -> None:
    primary, backups = await _primary_and_backups(sandbox)
    async with console_page(f"{primary.url}/console/#service") as page:
        await page.locator("#nodes-table tbody tr").nth(2).wait_for()
        before = await _node_figures(page)
        assert set(before) == {n.node_id for n in sandbox.nodes}
        assert before[primary.node_id]["data-source"] == "self"
        for b in backups:
            assert before[b.node_id]["data-source"] == "ack"
            assert re.fullmatch(r"\d+(\.\d)? (ms|s|min) ago", before[b.node_id]["last-heard"])
        for cells in before.values():
            assert cells["last-heard"] and cells["source"]
            assert cells["ledger-seqno"].isdigit() and cells["commit-seqno"].isdigit()
        await expect(page.locator("#nodes-source")).to_contain_text("served by the primary")
        seqno = await _write(sandbox, 3)
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the page samples every 2 s
            after = await _node_figures(page)
            # The commit needs one backup's answer: the other's may come a sample later.
            if all(
                int(c["commit-seqno"]) >= seqno
                and int(c["ledger-seqno"]) > int(before[node_id]["ledger-seqno"])
                for node_id, c in after.items()
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, after
            await asyncio.sleep(0.5)
        for node_id, cells in after.items():
            assert int(cells["commit-seqno"]) > int(before[node_id]["commit-seqno"]), node_id
        await screenshot(page, "service-primary")
    # A backup's console shows what a backup knows, and says where the rest is.
    async with console_page(f"{backups[0].url}/console/#service") as page:
        await page.locator("#nodes-table tbody tr").nth(2).wait_for()
        figures = await _node_figures(page)
        assert figures[backups[0].node_id]["data-source"] == "self"
        assert figures[backups[0].node_id]["commit-seqno"].isdigit()
        assert figures[primary.node_id]["data-source"] == "heard-primary"
        assert figures[primary.node_id]["last-heard"].endswith(" ago")
        assert figures[backups[1].node_id]["data-source"] == "primary-only"
        assert figures[backups[1].node_id]["ledger-seqno"] == "—"
        link = page.locator("#primary-console-link")
        assert await link.get_attribute("href") == f"{primary.url}/console/#service"


async def test_a_write_made_through_the_sdk_appears_in_the_explorer_with_its_seqno(
    sandbox: Sandbox,
) -> None:
    async with sandbox.client(user=0) as user:
        r = user.check(
            await user.post("/app/log/public", json={"id": 42, "msg": "seen-in-browser"})
        )
        assert r.txid is not None
        await user.wait_for_commit(r.txid, timeout_s=15)
    txid = str(r.txid)
    seqno = int(txid.split(".")[1])
    async with console_page(_url(sandbox, "ledger"), client_cert=sandbox.user_paths(0)) as page:
        await page.fill("#jump-txid", txid)
        await page.click("#jump-form button")
        entry = page.locator(f"#entry-{seqno}")
        await entry.wait_for()
        assert await entry.get_attribute("data-txid") == txid
        assert "seen-in-browser" in await entry.inner_text()
        await screenshot(page, "ledger")
    # Without a registered certificate the explorer shows nothing of the ledger.
    async with console_page(_url(sandbox, "ledger")) as page:
        status = page.locator("#ledger-status")
        await expect(status).to_contain_text("InvalidAuthentication")
        assert await page.locator(".entry").count() == 0
        assert "certificate" in await status.inner_text()


async def test_a_receipt_from_the_sdk_verifies_in_the_page_and_one_changed_digit_does_not(
    sandbox: Sandbox,
) -> None:
    async with sandbox.client(user=0) as user:
        r = user.check(await user.post("/app/log/private", json={"id": 7, "msg": "receipt me"}))
        assert r.txid is not None
        receipt = await user.receipt(r.txid)
        cose_receipt = await user.cose_receipt(r.txid)
    service_pem = sandbox.service_cert_path.read_text()
    tampered = json.loads(json.dumps(receipt))
    digest = tampered["leaf_components"]["write_set_digest"]
    tampered["leaf_components"]["write_set_digest"] = ("1" if digest[0] != "1" else "2") + digest[
        1:
    ]
    async with console_page(_url(sandbox, "receipt")) as page:
        verdict = page.locator("#receipt-result .verdict")
        await page.fill("#service-cert-text", service_pem)
        for text, expected in (
            (json.dumps(receipt, indent=2), "valid"),
            (json.dumps(tampered, indent=2), "invalid"),
            (cose_receipt.hex(), "valid"),
        ):
            await page.fill("#receipt-text", text)
            await page.click("#verify-button")
            await verdict.wait_for()
            assert await verdict.get_attribute("data-verdict") == expected, text[:80]
            if expected == "valid":
                assert str(r.txid) in await verdict.inner_text()
            if text.startswith("{") and expected == "valid":
                await verdict.scroll_into_view_if_needed()
                await screenshot(page, "receipt")
        await page.fill("#receipt-text", json.dumps(tampered, indent=2))
        await page.click("#verify-button")
        await verdict.wait_for()
        assert "does not verify" in await verdict.inner_text()
        await verdict.scroll_into_view_if_needed()
        await screenshot(page, "receipt-invalid")


async def test_a_member_votes_from_the_page_and_the_proposal_is_accepted(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    newcomer = generate_identity("browser-user", tmp_path)
    members = sandbox.member_identities()
    async with sandbox.client() as client:
        proposer = Member(client, *members[0])
        proposal = await proposer.propose(
            [{"name": "set_user", "args": {"cert": Path(newcomer.cert_path).read_text()}}]
        )
        proposal = await proposer.vote(proposal.proposal_id, True)
        assert proposal.state == "Open"
    cert_path, key_path = members[1]
    async with console_page(_url(sandbox, "governance")) as page:
        await page.click("#member-identity summary")
        await page.set_input_files("#member-cert", str(cert_path))
        await page.set_input_files("#member-key", str(key_path))
        await expect(page.locator("#member-status")).to_contain_text("Acting as member")
        card = page.locator(f"[data-proposal-id='{proposal.proposal_id}']")
        await card.locator(".vote-approve").wait_for()
        await screenshot(page, "governance")
        await card.locator(".vote-approve").click()
        status = page.locator("#gov-status")
        await expect(status).to_contain_text("now Accepted")
        envelope = bytes.fromhex(await status.get_attribute("data-last-ballot") or "")
        await page.wait_for_selector(
            f"[data-proposal-id='{proposal.proposal_id}'][data-state='Accepted']"
        )
        await screenshot(page, "governance-accepted")
    async with sandbox.client() as client:
        assert (await Member(client, *members[1]).proposal(proposal.proposal_id)).state == (
            "Accepted"
        )
    # The page built the CLI's envelope: same protected header bytes, same payload, and a
    # signature that verifies with the member's certificate.
    sent = cose.decode_sign1(envelope)
    key = certs.load_key(Path(key_path).read_bytes())
    member_id = certs.cert_id(Path(cert_path).read_text())
    cli = cose.decode_sign1(
        gov_envelope(
            key,
            member_id,
            "ballot",
            b'{"ballot": "approve"}',
            proposal_id=proposal.proposal_id,
            created_at=sent.protected[cose.GOV_MSG_CREATED_AT],
        )
    )
    assert sent.protected_bytes == cli.protected_bytes
    assert sent.payload == cli.payload
    cose.verify_sign1(sent, certs.load_cert(Path(cert_path).read_text()))


def test_the_audit_report_opens_and_its_numbers_match_the_json_audit(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    ledger = Path(json.loads(sandbox.network_path.read_text())["nodes"][0]["ledger_dir"])
    report = tmp_path / "report.html"
    result = CliRunner().invoke(
        app,
        [
            "ledger",
            "audit",
            str(ledger),
            "--include-uncommitted",
            "--json",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    audit = json.loads(result.stdout)  # progress lines go to stderr
    assert audit["valid"] is True
    asyncio.run(_check_report(report, audit, sandbox))


async def _check_report(report: Path, audit: dict[str, Any], sandbox: Sandbox) -> None:
    async with console_page(report.as_uri(), ready_selector="[data-verdict]") as page:
        assert await page.locator("[data-verdict]").get_attribute("data-verdict") == "valid"
        for name in ("transactions", "signatures", "cose_signatures", "chunks", "last_txid"):
            shown = await page.locator(f"[data-field='{name}']").inner_text()
            assert shown == str(audit[name]), name
        assert await page.locator("[data-field='root']").inner_text() == audit["root"]
        # Every signature transaction is counted once, under the node that signed it.
        bars = page.locator("svg[aria-label='Signature transactions per node'] rect")
        assert await bars.count() >= 1
        text = await page.locator("body").inner_text()
        assert "transition_service_to_open" in text
        assert "Accepted" in text
        await screenshot(page, "audit-report")
