"""What a newcomer sees from the installed `charter` command (issue 21), in real processes.

Each test runs `.venv/bin/charter` as a subprocess, as a shell would, against real files and,
where a service is needed, the scripted TLS server of client_helpers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from client_helpers import GovRecorder, Pki, ThreadedServer, app_seqno, receipts_for

from charter.ledger.generate import generate_ledger
from charter.sandbox import Sandbox

CHARTER = Path(sys.executable).parent / "charter"
PROPOSAL_ID = "ab" * 32


def charter(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHARTER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _network_file(pki: Pki, url: str, directory: Path) -> Path:
    doc = {
        "service_cert": str(pki.service_cert),
        "nodes": [{"rpc_address": url.removeprefix("https://")}],
        "members": [{"cert": str(pki.member.cert_path), "key": str(pki.member.key_path)}],
        "users": [{"cert": str(pki.user.cert_path), "key": str(pki.user.key_path)}],
    }
    path = directory / "network.json"
    path.write_text(json.dumps(doc))
    return path


def _answer(body: Any) -> Any:
    async def handle(_: web.Request) -> web.Response:
        return web.json_response(body)

    return handle


# --- receipts ------------------------------------------------------------------------------


def test_receipt_verify_json_prints_valid_false_and_the_reason_for_a_bad_receipt(
    tmp_path: Path,
) -> None:
    (tmp_path / "ledger").mkdir()
    g = generate_ledger(str(tmp_path / "ledger"), transactions=12, signature_interval=4, seed=5)
    cert = tmp_path / "service_cert.pem"
    cert.write_text(g.service_cert_pem)
    good, _ = receipts_for(g, app_seqno(g))
    (tmp_path / "good.json").write_text(json.dumps(good))
    ok = charter("receipt", "verify", tmp_path / "good.json", "--service-cert", cert, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    bad = dict(good, signature="AAAA")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    done = charter("receipt", "verify", tmp_path / "bad.json", "--service-cert", cert, "--json")
    assert done.returncode == 1  # unchanged: an invalid receipt exits 1
    verdict = json.loads(done.stdout)
    assert verdict["valid"] is False
    assert "does not verify" in verdict["reason"]
    # Without --json the failure stays one error line on stderr, nothing on stdout.
    plain = charter("receipt", "verify", tmp_path / "bad.json", "--service-cert", cert)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.startswith("error: ") and len(plain.stderr.strip().splitlines()) == 1


# --- member and proposal listings ----------------------------------------------------------


def test_member_and_proposal_listings_show_member_number_and_name_beside_ids(
    pki: Pki, threaded_server: ThreadedServer, tmp_path: Path
) -> None:
    member_id = pki.member.id
    proposal = {"proposalId": PROPOSAL_ID, "proposerId": member_id, "proposalState": "Open",
                "ballotCount": 1, "finalVotes": {member_id: True}}  # fmt: skip
    url = threaded_server.start(
        {
            "/gov/service/members": _answer(
                {
                    "value": [
                        {
                            "memberId": member_id,
                            "status": "Active",
                            "certificate": pki.member.cert_path.read_text(),
                        }
                    ]
                }
            ),
            "/gov/members/proposals": _answer({"value": [proposal]}),
            "/gov/members/proposals/{pid}": _answer(proposal),
            "/gov/members/proposals/{pid}/actions": _answer({"actions": []}),
        }
    )
    net = _network_file(pki, url, tmp_path)
    members = charter("members", "--network", net)
    assert members.returncode == 0, members.stderr
    row = next(line for line in members.stdout.splitlines() if member_id in line)
    # The number `--member N` takes and the certificate's common name (keygen's NAME).
    assert re.search(r"\b0\b.*\bmember0\b.*" + member_id, row), row
    listing = charter("proposals", "--network", net)
    assert listing.returncode == 0, listing.stderr
    assert "#0 member0" in listing.stdout and "member0 (" in listing.stdout
    one = charter("proposals", "--network", net, "--id", PROPOSAL_ID)
    assert f"proposer #0 member0 ({member_id})" in one.stdout
    assert f"vote     #0 member0 ({member_id}) approve" in one.stdout
    # --json keeps the service's own fields untouched for scripts.
    raw = json.loads(charter("members", "--network", net, "--json").stdout)
    assert raw[0]["memberId"] == member_id and "name" not in raw[0]


def test_propose_dry_run_prints_a_summary_unless_json(
    pki: Pki, threaded_server: ThreadedServer, tmp_path: Path
) -> None:
    report = {
        "valid": True,
        "errors": [],
        "votes": {
            "activeMembers": [pki.member.id],
            "requiredApprovals": 1,
            "acceptedBy": "approve ballots from at least 1 of the 1 active members",
            "vetoMembers": [],
        },
        "changes": [
            {
                "map": "public:ccf.gov.users.certs",
                "key": "ab" * 32,
                "op": "put",
                "value": "-----BEGIN CERTIFICATE-----\nMIIB" + "A" * 200,
            }
        ],
        "effects": {
            "endorseNodes": [],
            "openService": False,
            "rekey": True,
            "refreshRecoveryShares": False,
            "retiredNodes": [],
        },
    }
    gov = GovRecorder(pki)
    url = threaded_server.start({"/gov/members/proposals:dry-run": gov.handler("proposal", report)})
    net = _network_file(pki, url, tmp_path)
    summary = charter("propose", "--rekey", "--dry-run", "--network", net)
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0].startswith("dry run: the proposal is valid (nothing was stored")
    assert "accepted by approve ballots from at least 1 of the 1 active members" in summary.stdout
    assert "put public:ccf.gov.users.certs[" in summary.stdout
    assert "effects  rekey" in summary.stdout
    assert all(len(line) < 200 for line in lines), "long values are clipped"
    as_json = charter("propose", "--rekey", "--dry-run", "--network", net, "--json")
    assert json.loads(as_json.stdout) == report


# --- help texts -----------------------------------------------------------------------------


def test_help_shows_switches_as_flags_and_the_member_default() -> None:
    for command in (["keygen"], ["propose"], ["ledger", "audit"], ["receipt", "get"]):
        text = charter(*command, "--help").stdout
        assert "<bool>" not in text, command
    propose = charter("propose", "--help").stdout
    assert re.search(r"--dry-run\s+Ask the service", propose)
    assert "(default: member 0)" in " ".join(propose.split())
    assert "--add-user CERT" in propose


def test_help_examples_use_the_sandbox_layout(tmp_path: Path) -> None:
    # Lay out a real sandbox workspace (keys and configs; no processes) and check every
    # `workspace/sandbox/...` path an example names is one the sandbox makes.
    sandbox = Sandbox(tmp_path / "workspace" / "sandbox", nodes=2)
    sandbox.prepare()
    made = {
        sandbox.network_path,
        sandbox.service_cert_path,
        sandbox.workspace / "users" / "user1_cert.pem",  # the keygen example makes it
        sandbox.workspace,
        sandbox.workspace / "users",
        sandbox.nodes[0].directory / "workspace" / "ledger",
        sandbox.workspace / "node0" / "recover.json",  # an operator writes this one
        *(node.config_path for node in sandbox.nodes),
    }
    made |= {p for p in sandbox.workspace.rglob("*")}
    commands = [["keygen"], ["propose"], ["vote"], ["members"], ["nodes"], ["ledger", "audit"],
                ["ledger", "read"], ["receipt", "verify"], ["node", "start"], ["node", "join"],
                ["node", "recover"], ["sandbox"]]  # fmt: skip
    seen = 0
    for command in commands:
        text = charter(*command, "--help").stdout
        example = next(line for line in text.splitlines() if "Example: charter" in line)
        for path in re.findall(r"(workspace/\S+)", example):
            seen += 1
            assert path.startswith("workspace/sandbox"), (command, path)
            assert tmp_path / path in made, (command, path)
    assert seen >= 10


def test_keygen_dir_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "users"
    done = charter("keygen", "user1", "--dir", target)
    assert done.returncode == 0, done.stderr
    assert (target / "user1_cert.pem").is_file() and (target / "user1_privk.pem").is_file()


def test_sandbox_help_is_one_screen_with_every_option_and_default() -> None:
    long_help = charter("sandbox", "--help")
    short_help = charter("sandbox", "-h")
    assert long_help.returncode == short_help.returncode == 0
    assert long_help.stdout == short_help.stdout
    text = " ".join(long_help.stdout.split())
    for option in ("--nodes N", "--workspace DIR", "--port-base PORT", "--app APP"):
        assert option in text, option
    assert "(default: 3)" in text and "(default: workspace/sandbox)" in text
    assert "PORT+2i" in text and "default: free ports" in text
    assert "a resumed network keeps its ports" in text
