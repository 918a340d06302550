"""The `charter` command line: help for every command, and every failure as one clear line."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from client_helpers import GovRecorder, Pki, ThreadedServer, app_seqno, receipts_for
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS
from typer.testing import CliRunner, Result

from charter import cli_process
from charter.cli import app
from charter.ledger.chunks import LedgerReader

CCF_LEDGER = SHARED_CCF_LEDGERS / "current"
PROPOSAL_ID = "ab" * 32

COMMANDS = [
    ["keygen"], ["propose"], ["vote"], ["withdraw"], ["ack"], ["proposals"], ["members"],
    ["users"], ["nodes"], ["status"], ["sandbox"], ["bench"], ["node", "start"],
    ["node", "join"], ["node", "recover"], ["receipt", "get"], ["receipt", "verify"], ["ledger", "audit"],
    ["ledger", "read"], ["call"], ["recovery", "start"],
]  # fmt: skip

runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_fails_cleanly(result: Result, pattern: str, exit_code: int | None = None) -> None:
    """Non-zero exit, one `error:` line on stderr matching `pattern`, no traceback."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert pattern.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def network_file(pki: Pki, tmp_path: Path) -> Any:
    """Write a sandbox-style network.json naming `url` and the test identities."""

    def write(url: str) -> Path:
        doc = {
            "service_cert": str(pki.service_cert),
            "nodes": [{"rpc_address": url.removeprefix("https://")}],
            "members": [
                {"id": pki.member.id, "cert": str(pki.member.cert_path),
                 "key": str(pki.member.key_path)},
            ],
            "users": [{"cert": str(pki.user.cert_path), "key": str(pki.user.key_path)}],
        }  # fmt: skip
        path = tmp_path / "network.json"
        path.write_text(json.dumps(doc))
        return path

    return write


# --- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"charter {' '.join(command)}" in result.output


def test_top_level_help_lists_every_command() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in {c[0] for c in COMMANDS}:
        assert command in result.output


# --- keygen ---------------------------------------------------------------------------------------


def test_keygen_json_output_names_files_and_id(tmp_path: Path) -> None:
    result = run("keygen", "member3", "--dir", tmp_path, "--enc-key", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert Path(out["cert"]).is_file() and Path(out["encryption_public_key"]).is_file()
    assert len(out["id"]) == 64


def test_keygen_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert_fails_cleanly(run("keygen", "m", "--dir", tmp_path / "a-file"), "not a directory")
    assert run("keygen", "m", "--dir", tmp_path).exit_code == 0
    assert_fails_cleanly(run("keygen", "m", "--dir", tmp_path), "already exists")
    assert_fails_cleanly(run("keygen", "m", "--dir", tmp_path, "--rsa-bits", "1024"), "2048")


# --- governance: errors before and at the network -------------------------------------------------


def _member_args(pki: Pki, url: str) -> list[str | Path]:
    return [
        "--url", url, "--service-cert", pki.service_cert,
        "--cert", pki.member.cert_path, "--key", pki.member.key_path,
    ]  # fmt: skip


def test_propose_error_paths(pki: Pki, tmp_path: Path, closed_port_url: str) -> None:
    args = _member_args(pki, closed_port_url)
    assert_fails_cleanly(run("propose", tmp_path / "nope.json", *args), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"actions": [')
    assert_fails_cleanly(run("propose", bad, *args), "not valid JSON")
    bad.write_text('{"actions": {"name": "x"}}')
    assert_fails_cleanly(run("propose", bad, *args), "list of actions")
    bad.write_text('{"actions": [{"name": "set_user", "args": {"cert": 5}}]}')
    assert_fails_cleanly(run("propose", bad, *args), "set_user")
    assert_fails_cleanly(run("propose", *args), "nothing to propose")
    assert_fails_cleanly(
        run("propose", bad, "--open-service", *args), "proposal file or action flags"
    )
    assert_fails_cleanly(run("propose", "--add-user", tmp_path / "no_cert.pem", *args), "not found")
    # A well-formed proposal to a closed port: the network error, in one line.
    assert_fails_cleanly(run("propose", "--add-user", pki.user.cert_path, *args), "cannot connect")


def test_wrong_key_type_is_refused_with_a_clear_message(pki: Pki, closed_port_url: str) -> None:
    args: list[str | Path] = ["--url", closed_port_url, "--service-cert", pki.service_cert]
    rsa_key: list[str | Path] = ["--cert", pki.member.cert_path, "--key", pki.rsa_key]
    assert_fails_cleanly(run("propose", "--open-service", *args, *rsa_key), "EC")
    cert_as_key: list[str | Path] = ["--cert", pki.member.cert_path, "--key", pki.member.cert_path]
    assert_fails_cleanly(run("vote", PROPOSAL_ID, "--approve", *args, *cert_as_key), "not a PEM")
    mismatched: list[str | Path] = ["--cert", pki.member.cert_path, "--key", pki.user.key_path]
    assert_fails_cleanly(run("withdraw", PROPOSAL_ID, *args, *mismatched), "does not match")
    assert_fails_cleanly(run("ack", *args, "--cert", pki.member.cert_path), "both --cert")


def test_vote_needs_a_ballot_and_a_valid_proposal_id(pki: Pki, closed_port_url: str) -> None:
    args = _member_args(pki, closed_port_url)
    assert_fails_cleanly(run("vote", PROPOSAL_ID, *args), "--approve or --reject", 2)
    assert_fails_cleanly(run("vote", "not-an-id", "--reject", *args), "64 lowercase hex")
    assert_fails_cleanly(run("vote", PROPOSAL_ID, "--reject", *args), "cannot connect")
    assert_fails_cleanly(run("withdraw", PROPOSAL_ID, *args), "cannot connect")
    assert_fails_cleanly(run("ack", *args), "cannot connect")


@pytest.mark.parametrize("command", ["proposals", "members", "users", "nodes", "status"])
def test_read_commands_fail_cleanly_when_service_unreachable(
    command: str, pki: Pki, closed_port_url: str, tmp_path: Path
) -> None:
    assert_fails_cleanly(
        run(command, "--url", closed_port_url, "--service-cert", pki.service_cert),
        "cannot connect",
    )
    assert_fails_cleanly(run(command, "--service-cert", pki.service_cert), "--url or --network")
    assert_fails_cleanly(run(command, "--url", closed_port_url), "--service-cert or --network")
    assert_fails_cleanly(
        run(command, "--url", closed_port_url, "--service-cert", tmp_path / "x.pem"), "not found"
    )
    not_a_cert = tmp_path / "garbage.pem"
    not_a_cert.write_text("hello")
    assert_fails_cleanly(
        run(command, "--url", closed_port_url, "--service-cert", not_a_cert), "not a PEM"
    )
    bad_network = tmp_path / "network.json"
    bad_network.write_text("[1, 2")
    assert_fails_cleanly(run(command, "--network", bad_network), "not valid JSON")


def test_member_index_beyond_network_file_is_reported(
    network_file: Any, closed_port_url: str
) -> None:
    net = network_file(closed_port_url)
    assert_fails_cleanly(run("propose", "--open-service", "--network", net, "--member", "4"),
                         "no member 4")  # fmt: skip


# --- governance and reads against a scripted TLS service ------------------------------------------


def _proposal(state: str = "Open") -> dict[str, Any]:
    return {"proposalId": PROPOSAL_ID, "proposerId": "cd" * 32, "proposalState": state,
            "ballotCount": 1, "finalVotes": {"cd" * 32: True}}  # fmt: skip


def test_propose_and_vote_through_a_network_file(
    pki: Pki, threaded_server: ThreadedServer, network_file: Any
) -> None:
    gov = GovRecorder(pki)
    url = threaded_server.start(
        {
            "/gov/members/proposals:create": gov.handler("proposal", _proposal()),
            "/gov/members/proposals/{pid}/ballots/{mid}:submit": gov.handler(
                "ballot", _proposal("Accepted")
            ),
        }
    )
    net = network_file(url)
    result = run("propose", "--network", net, "--member", "0", "--add-user",
                 pki.user.cert_path, "--open-service", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["proposalId"] == PROPOSAL_ID
    actions = gov.seen[0][2]["actions"]  # type: ignore[index]
    assert [a["name"] for a in actions] == ["set_user", "transition_service_to_open"]
    assert actions[1]["args"]["next_service_identity"] == pki.service_cert.read_text()
    result = run("vote", PROPOSAL_ID, "--approve", "--network", net)
    assert result.exit_code == 0, result.output
    assert "Accepted" in result.stdout
    assert gov.seen[1][2] == {"ballot": "approve"}


def test_service_errors_print_the_service_code(
    pki: Pki, threaded_server: ThreadedServer, network_file: Any
) -> None:
    async def refuse(_: web.Request) -> web.Response:
        body = {"error": {"code": "ProposalNotOpen", "message": "proposal is not open"}}
        return web.json_response(body, status=400)

    url = threaded_server.start({"/gov/members/proposals/{pid}/ballots/{mid}:submit": refuse})
    result = run("vote", PROPOSAL_ID, "--reject", "--network", network_file(url))
    assert_fails_cleanly(result, "HTTP 400 ProposalNotOpen: proposal is not open")


def test_read_commands_show_tables_and_json(
    pki: Pki, threaded_server: ThreadedServer, network_file: Any
) -> None:
    def answer(body: Any) -> Any:
        async def handle(_: web.Request) -> web.Response:
            return web.json_response(body)

        return handle

    node = {"node_id": "ef" * 32, "status": "Trusted", "primary": True,
            "rpc_interfaces": {"primary_rpc_interface": {"published_address": "127.0.0.1:8000"}}}  # fmt: skip
    url = threaded_server.start(
        {
            "/gov/members/proposals": answer({"value": [_proposal(), _proposal("Accepted")]}),
            "/gov/members/proposals/{pid}": answer(_proposal("Accepted")),
            "/gov/members/proposals/{pid}/actions": answer(
                {"actions": [{"name": "trigger_ledger_rekey", "args": {}}]}
            ),
            "/gov/service/members": answer(
                {"value": [{"memberId": pki.member.id, "status": "Active"}]}
            ),
            "/gov/service/users": answer({"value": [{"userId": pki.user.id, "userData": None}]}),
            "/node/network/nodes": answer({"nodes": [node]}),
            "/node/network": answer({"service_status": "Open", "current_view": 2}),
            "/node/state": answer({"node_id": "ef" * 32, "state": "PartOfNetwork"}),
            "/node/commit": answer({"transaction_id": "2.17"}),
        }
    )
    net = network_file(url)
    result = run("proposals", "--network", net, "--state", "Open", "--json")
    assert result.exit_code == 0, result.output
    assert [p["proposalState"] for p in json.loads(result.stdout)] == ["Open"]
    table = run("proposals", "--network", net)
    assert PROPOSAL_ID in table.stdout and "Accepted" in table.stdout
    one = json.loads(run("proposals", "--network", net, "--id", PROPOSAL_ID, "--json").stdout)
    assert one["proposalState"] == "Accepted"
    assert one["actions"] == [{"name": "trigger_ledger_rekey", "args": {}}]
    shown = run("proposals", "--network", net, "--id", PROPOSAL_ID).stdout
    assert "action   trigger_ledger_rekey {}" in shown and "approve" in shown
    assert_fails_cleanly(run("proposals", "--network", net, "--id", "nope"), "64 lowercase hex")
    assert pki.member.id in run("members", "--network", net).stdout
    assert json.loads(run("users", "--network", net, "--json").stdout)[0]["userId"] == pki.user.id
    nodes = run("nodes", "--network", net)
    assert "ef" * 32 in nodes.stdout and "127.0.0.1:8000" in nodes.stdout
    status = run("status", "--network", net, "--json")
    assert json.loads(status.stdout)["commit"] == "2.17"
    assert json.loads(status.stdout)["network"]["service_status"] == "Open"
    # This node reports no certificate end dates: said, not fatal.
    assert "does not report its certificates' end dates" in status.stderr


def test_status_warns_of_each_certificate_ending_within_30_days(
    threaded_server: ThreadedServer, network_file: Any
) -> None:
    def at(days: float) -> str:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    network = {
        "service_status": "Open",
        "current_view": 2,
        "service_certificate_not_after": at(12),
        "node_certificates_not_after": {"ab" * 32: at(29), "cd" * 32: at(31)},
    }

    async def answer(request: web.Request) -> web.Response:
        bodies = {
            "/node/network": network,
            "/node/state": {"node_id": "ab" * 32, "state": "PartOfNetwork"},
            "/node/commit": {"transaction_id": "2.17"},
        }
        return web.json_response(bodies[request.path])

    url = threaded_server.start(
        {p: answer for p in ("/node/network", "/node/state", "/node/commit")}
    )
    result = run("status", "--network", network_file(url))
    assert result.exit_code == 0, result.output
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith("warning: service certificate expires")
    assert "set_service_certificate_validity" in warnings[0]
    assert warnings[1].startswith(f"warning: node {'ab' * 32} certificate expires")
    assert "service certificate valid until" in result.stdout


# --- receipts -------------------------------------------------------------------------------------


def test_receipt_get_error_paths(pki: Pki, closed_port_url: str) -> None:
    args: list[str | Path] = ["--url", closed_port_url, "--service-cert", pki.service_cert]
    assert_fails_cleanly(run("receipt", "get", "2-5", *args), "transaction id")
    assert_fails_cleanly(run("receipt", "get", "2.5", *args), "cannot connect")


def test_receipt_verify_accepts_good_and_rejects_tampered_files(
    tmp_path: Path,
) -> None:
    from charter.ledger.generate import generate_ledger

    (tmp_path / "ledger").mkdir()
    g = generate_ledger(str(tmp_path / "ledger"), transactions=12, signature_interval=4, seed=3)
    cert = tmp_path / "service_cert.pem"
    cert.write_text(g.service_cert_pem)
    seqno = app_seqno(g)
    json_receipt, cose_receipt = receipts_for(g, seqno)
    (tmp_path / "r.json").write_text(json.dumps(json_receipt))
    (tmp_path / "r.cose").write_bytes(cose_receipt)
    for name in ("r.json", "r.cose"):
        result = run("receipt", "verify", tmp_path / name, "--service-cert", cert, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["transaction_id"] == f"{g.view}.{seqno}"
    json_receipt["signature"] = "AAAA"
    (tmp_path / "bad.json").write_text(json.dumps(json_receipt))
    assert_fails_cleanly(
        run("receipt", "verify", tmp_path / "bad.json", "--service-cert", cert), "receipt"
    )
    assert_fails_cleanly(run("receipt", "verify", tmp_path / "none.json", "--service-cert", cert),
                         "not found")  # fmt: skip
    assert_fails_cleanly(run("receipt", "verify", tmp_path / "r.json"), "--service-cert")
    assert_fails_cleanly(
        run("receipt", "verify", tmp_path / "r.cose", "--service-cert", cert,
            "--claims-digest", "zz"), "hex",
    )  # fmt: skip


# --- ledgers --------------------------------------------------------------------------------------


def test_ledger_audit_reports_a_valid_ccf_ledger() -> None:
    result = run("ledger", "audit", CCF_LEDGER)
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "14 transactions" in result.stdout
    doc = json.loads(run("ledger", "audit", CCF_LEDGER, "--json").stdout)
    assert doc["valid"] and doc["last_txid"] == "2.14"


def test_ledger_audit_exits_1_with_the_first_bad_seqno(tmp_path: Path) -> None:
    copy = tmp_path / "ledger"
    shutil.copytree(CCF_LEDGER, copy)
    reader = LedgerReader(str(CCF_LEDGER))
    entry = reader.get(5)
    chunk = next(copy.iterdir())
    data = bytearray(chunk.read_bytes())
    at = data.find(entry)
    data[at + len(entry) - 1] ^= 0x01
    chunk.write_bytes(bytes(data))
    result = run("ledger", "audit", copy)
    assert_fails_cleanly(result, "first bad seqno", 1)
    assert "seqno 5" in result.stderr or "seqno 6" in result.stderr
    doc = json.loads(run("ledger", "audit", copy, "--json").stdout)
    assert doc["valid"] is False and doc["first_bad_seqno"] in (5, 6)


def test_ledger_audit_and_read_error_paths(tmp_path: Path) -> None:
    assert_fails_cleanly(run("ledger", "audit", tmp_path / "missing"), "not found")
    assert_fails_cleanly(run("ledger", "audit", tmp_path), "no ledger chunks")
    assert_fails_cleanly(run("ledger", "read", tmp_path / "missing"), "not found")
    assert_fails_cleanly(run("ledger", "read", CCF_LEDGER, "--from", "5", "--to", "3"), "--to", 2)
    (tmp_path / "ledger_1-3.committed").write_bytes(b"\x00" * 7)
    assert_fails_cleanly(run("ledger", "read", tmp_path), "ledger")


def test_ledger_read_dumps_entries_and_governance_history() -> None:
    result = run("ledger", "read", CCF_LEDGER, "--to", "4")
    assert result.exit_code == 0, result.output
    assert "2.1 " in result.stdout and "2.4 " in result.stdout and "2.5 " not in result.stdout
    assert "public:ccf.gov.members.info" in result.stdout
    gov = run("ledger", "read", CCF_LEDGER, "--governance").stdout
    assert "transition_service_to_open" in gov and "service is Open" in gov
    assert "public:ccf.internal.signatures" not in gov
    lines = run("ledger", "read", CCF_LEDGER, "--json").stdout.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["seqno"] for e in entries] == list(range(1, 15))
    assert sum(e["signature"] for e in entries) == 6


# --- processes ------------------------------------------------------------------------------------


def test_node_start_and_join_check_the_config_and_build_the_host_command(tmp_path: Path) -> None:
    for sub in ("start", "join", "recover"):
        assert_fails_cleanly(run("node", sub, tmp_path / "node.json"), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert_fails_cleanly(run("node", "start", bad), "not valid JSON")
    good = tmp_path / "node.json"
    good.write_text("{}")
    result = run("node", "join", good, "--print-command")
    assert result.exit_code == 0
    assert f"-m charter.host --config {good}" in result.stdout


def test_sandbox_fails_clearly_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as in an install without it.
    monkeypatch.setitem(sys.modules, "charter.sandbox_command", None)
    assert_fails_cleanly(run("sandbox", "--nodes", "1"), "not available")


def test_bench_fails_clearly_when_the_script_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli_process, "BENCH_SCRIPT", tmp_path / "bench.py")
    assert_fails_cleanly(run("bench", "--duration", "1"), "not available")


def test_bench_passes_its_arguments_and_exit_status_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "bench.py"
    out = tmp_path / "argv.json"
    script.write_text(
        f"import json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\nsys.exit(3)\n"
    )
    monkeypatch.setattr(cli_process, "BENCH_SCRIPT", script)
    result = run("bench", "--duration", "1", "--clients", "4")
    assert result.exit_code == 3
    assert json.loads(out.read_text()) == ["--duration", "1", "--clients", "4"]


def test_installed_entry_point_reports_usage_and_runtime_errors_in_one_line(
    tmp_path: Path,
) -> None:
    # The real console script in a real process: what a user's shell sees.
    charter = Path(sys.executable).parent / "charter"
    cases = [
        (["vote", PROPOSAL_ID, "--bogus"], 2, "no such option: --bogus"),
        (["ledger", "audit", str(tmp_path / "missing")], 1, "not found"),
    ]
    for argv, code, pattern in cases:
        done = subprocess.run([charter, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == code, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert pattern in lines[0].lower()
        assert "Traceback" not in done.stdout + done.stderr


def test_ledger_audit_says_which_chunks_it_did_not_read(tmp_path: Path) -> None:
    copy = tmp_path / "ledger"
    shutil.copytree(CCF_LEDGER, copy)
    # An in-progress chunk after the committed ones (as on a running node).
    (copy / "ledger_15").write_bytes(b"\x00" * 8)
    result = run("ledger", "audit", copy)
    assert result.exit_code == 0, result.output
    assert "not read: 1 uncommitted chunk(s)" in result.stdout
    only_new = tmp_path / "fresh"
    only_new.mkdir()
    (only_new / "ledger_1").write_bytes(b"\x00" * 8)
    assert_fails_cleanly(run("ledger", "audit", only_new), "--include-uncommitted")


def test_every_propose_flag_becomes_its_governance_action(
    pki: Pki, threaded_server: ThreadedServer, network_file: Any
) -> None:
    gov = GovRecorder(pki)
    url = threaded_server.start(
        {"/gov/members/proposals:create": gov.handler("proposal", _proposal())}
    )
    node_id = "ef" * 32
    result = run(
        "propose", "--network", network_file(url),
        "--add-user", pki.user.cert_path, "--remove-user", pki.user.id,
        "--add-member", pki.member.cert_path,
        "--member-enc-key", pki.member.enc_pub_path,  # type: ignore[arg-type]
        "--remove-member", pki.member.id, "--trust-node", node_id, "--remove-node", node_id,
        "--recovery-threshold", "1", "--rekey", "--open-service",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    actions = gov.seen[0][2]["actions"]  # type: ignore[index]
    assert [a["name"] for a in actions] == [
        "set_user", "remove_user", "set_member", "remove_member", "transition_node_to_trusted",
        "remove_node", "set_recovery_threshold", "trigger_ledger_rekey",
        "transition_service_to_open",
    ]  # fmt: skip
    assert actions[2]["args"]["encryption_pub_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert actions[6]["args"] == {"recovery_threshold": 1}


def test_ledger_audit_checkpoint_then_since_audits_only_the_appended_entries(
    tmp_path: Path,
) -> None:
    from charter.ledger.generate import generate_ledger

    g = generate_ledger(
        str(tmp_path / "ledger"), transactions=200, signature_interval=20, chunk_size_bytes=20_000
    )
    names = sorted(
        (p.name for p in Path(g.directory).iterdir()),
        key=lambda n: int(n.split("_")[1].split("-")[0]),
    )
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    for name in names[:2]:
        shutil.copy(Path(g.directory) / name, prefix / name)
    checkpoint = tmp_path / "audit.checkpoint"
    first = run("ledger", "audit", prefix, "--checkpoint", checkpoint)
    assert first.exit_code == 0, first.output
    assert f"written to {checkpoint}" in first.stdout and checkpoint.exists()
    old_seqno = json.loads(checkpoint.read_text())["seqno"]

    later = run("ledger", "audit", g.directory, "--since", checkpoint, "--checkpoint", checkpoint,
                "--json")  # fmt: skip
    assert later.exit_code == 0, later.output
    doc = json.loads(later.stdout)
    assert doc["valid"] and doc["resumed_from"] == old_seqno and doc["transactions"] == 200
    assert doc["consistency"]["old_size"] == old_seqno and doc["consistency"]["new_size"] == 200
    assert doc["checkpoint"]["seqno"] == 200 == json.loads(checkpoint.read_text())["seqno"]
    # Progress went to stderr as JSON lines, ending at the last seqno.
    progress = [json.loads(line) for line in later.stderr.splitlines()]
    assert progress[-1]["event"] == "progress" and progress[-1]["seqno"] == 200

    forged = json.loads(checkpoint.read_text())
    forged["counts"]["signatures"] = 0
    checkpoint.write_text(json.dumps(forged))
    assert_fails_cleanly(run("ledger", "audit", g.directory, "--since", checkpoint),
                         "checkpoint", 1)  # fmt: skip


# --- recovery start -------------------------------------------------------------------------------


def test_recovery_start_lays_out_a_recover_node_from_a_ledger_copy(tmp_path: Path) -> None:
    """The node directory as `charter node` uses it; the copy's chunks lose `.committed` (the
    recovery decides what is kept) and the old directory is left as it was."""
    from charter.cli_recovery_start import write_recovery_node
    from charter.ledger.generate import generate_ledger

    old = tmp_path / "old"
    old.mkdir()
    g = generate_ledger(str(old), transactions=40, signature_interval=10, chunk_size_bytes=2000)
    (old / "ledger_999.ignored").write_bytes(b"")
    before = sorted(p.name for p in old.iterdir())
    cert = tmp_path / "service_cert.pem"
    cert.write_text(g.service_cert_pem)
    config_path = write_recovery_node(
        tmp_path / "recovery",
        old,
        cert,
        rpc_address="127.0.0.1:0",
        node_to_node_address="127.0.0.1:0",
        app="charter.enclave_app.samples.logging",
    )
    config = json.loads(config_path.read_text())
    assert config["start"]["mode"] == "recover"
    assert Path(config["start"]["previous_service_identity"]).read_text() == g.service_cert_pem
    assert Path(config["workspace"]) == tmp_path / "recovery" / "workspace"
    copied = sorted(p.name for p in (tmp_path / "recovery" / "workspace" / "ledger").iterdir())
    assert copied and not any(n.endswith((".committed", ".ignored")) for n in copied)
    assert sorted(p.name for p in old.iterdir()) == before
    entries = dict(LedgerReader(str(tmp_path / "recovery" / "workspace" / "ledger")).entries())
    assert len(entries) == 40


def test_recovery_start_refuses_what_it_cannot_recover_from(tmp_path: Path) -> None:
    cert = tmp_path / "service_cert.pem"
    cert.write_text("not a certificate")
    (tmp_path / "empty").mkdir()
    result = run("recovery", "start", "--ledger", tmp_path / "empty",
                 "--previous-service-cert", cert, "--dir", tmp_path / "r")  # fmt: skip
    assert_fails_cleanly(result, "previous-service-cert")
    from charter.ledger import certs

    cert.write_text(certs.cert_pem(certs.service_cert(certs.new_key())))
    result = run("recovery", "start", "--ledger", tmp_path / "empty",
                 "--previous-service-cert", cert, "--dir", tmp_path / "r")  # fmt: skip
    assert_fails_cleanly(result, "no ledger chunk files")
