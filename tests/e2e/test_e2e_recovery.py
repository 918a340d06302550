"""Disaster recovery on real processes: a 3-node service, rekeyed and with its members
changed, loses every node, and a new service is recovered from one node's ledger files
with the real procedure: the operator runs `charter recovery start`; the members open the
recovering service naming both identities, then submit their recovery shares (one with
`charter recovery share`, the others through the SDK) until k of them are in. A second
recovery on top of the first works with the shares the first one issued.

On the way, the refusals a real recovering service must make: k-1 shares never open it; a
replayed submission, a tampered share, a share signed by a non-member and one from a
member removed before the disaster are each refused with their own error code and change
nothing; a member added after genesis helps recover.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    LEDGER_CHUNK_BYTES,
    ccf_validate,
    check_receipt_with_ccf,
    log_tails,
    make_sandbox,
    start_sandbox,
    wait_committed_on,
    write,
)

from charter.errors import CharterError
from charter.identity import Network
from charter.keygen import KeygenResult, generate_identity
from charter.member import Member, decrypt_share, load_encryption_key
from charter.sandbox import SANDBOX_SUBJECT_ALT_NAMES, NodeProcess, Sandbox, free_port
from charter.sdk import GOV_API_VERSION, CharterClient

pytestmark = pytest.mark.e2e

RECOVERY_START_TIMEOUT_S = 180.0
OPEN_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 120.0
REKEY = [{"name": "trigger_ledger_rekey", "args": {}}]


def _recovery_start(
    ledger: Path, previous_cert: Path, directory: Path
) -> tuple[dict[str, Any], NodeProcess]:
    """`charter recovery start --detach`, as an operator runs it."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from charter.cli import main; sys.exit(main())",
            "recovery",
            "start",
            "--ledger",
            str(ledger),
            "--previous-service-cert",
            str(previous_cert),
            "--dir",
            str(directory),
            "--detach",
            "--ledger-chunk-bytes",
            str(LEDGER_CHUNK_BYTES),
        ],
        capture_output=True,
        text=True,
        timeout=RECOVERY_START_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stderr}\n{_tail(directory / 'node.log')}"
    info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    node = NodeProcess(0, directory, directory / "node.json")
    node.ports = json.loads((directory / "workspace" / "ports.json").read_text())
    return info, node


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _join(directory: Path, target: NodeProcess, service_cert: Path) -> NodeProcess:
    """A node that joins `target`'s service (configured as `charter node join` expects)."""
    (directory / "workspace").mkdir(parents=True)
    config = {
        "workspace": str(directory / "workspace"),
        "rpc_address": f"127.0.0.1:{free_port()}",
        "node_to_node_address": f"127.0.0.1:{free_port()}",
        "rpc_interface": {"subject_alt_names": list(SANDBOX_SUBJECT_ALT_NAMES)},
        "start": {
            "mode": "join",
            "join": {"target": target.rpc_address, "service_cert": str(service_cert)},
        },
    }
    (directory / "node.json").write_text(json.dumps(config))
    node = NodeProcess(1, directory, directory / "node.json")
    node.start()
    return node


def _kill(node: NodeProcess) -> None:
    for pid in (node.ports.get("enclave_pid"), node.ports.get("host_pid")):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _client(node: NodeProcess, cert: Path, sb: Sandbox, user: int | None = None) -> CharterClient:
    cert_path = key_path = None
    if user is not None:
        cert_path, key_path = sb.user_paths(user)
    return CharterClient(node.url, cert, cert_path=cert_path, key_path=key_path)


async def _pass(client: CharterClient, sb: Sandbox, actions: list[dict[str, Any]]) -> None:
    members = sb.member_identities()
    proposal = await Member(client, *members[0]).propose(actions)
    for cert, key in members:
        if proposal.state != "Open":
            break
        proposal = await Member(client, cert, key).vote(proposal.proposal_id, True)
    assert proposal.state == "Accepted", proposal


async def _wait_status(client: CharterClient, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    network: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            network = await client.network()
            if network.get("service_status") == status:
                return network
        except CharterError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"service not {status}: {network}")


def _charter(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "charter"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


async def _open_naming_both_identities(
    c: CharterClient, sb: Sandbox, previous_cert: Path, new_cert: Path
) -> None:
    """The members' first step: open the recovering service, naming the previous service
    identity and the new one; it then waits for their shares."""
    await _pass(
        c,
        sb,
        [
            {
                "name": "transition_service_to_open",
                "args": {
                    "previous_service_identity": previous_cert.read_text(),
                    "next_service_identity": new_cert.read_text(),
                },
            }
        ],
    )
    await _wait_status(c, "WaitingForRecoveryShares")


async def _share_of(c: CharterClient, member: Member, encryption_key: Path) -> bytes:
    return decrypt_share(load_encryption_key(encryption_key), await c.encrypted_share(member.id))


async def _refused(submission: Any) -> tuple[int | None, str]:
    with pytest.raises(CharterError) as refused:
        await submission
    return refused.value.status, refused.value.code


async def _still_waiting(c: CharterClient, submitted: int) -> None:
    """Nothing opened the service and no submission beyond `submitted` was kept."""
    status = await c.recovery_status()
    assert status["serviceStatus"] == "WaitingForRecoveryShares", status
    assert (status["submittedCount"], status["stillNeeded"]) == (submitted, 2 - submitted)
    assert (await c.node_state())["state"] == "PartOfPublicNetwork"


async def _wait_open(c: CharterClient) -> None:
    await _wait_status(c, "Open")
    state = await c.node_state()
    assert state["state"] == "PartOfNetwork", state
    status = await c.recovery_status()
    assert (status["serviceStatus"], status["submittedCount"]) == ("Open", 0), status


async def _first_recovery_shares(
    c: CharterClient,
    sb: Sandbox,
    node: NodeProcess,
    new_cert: Path,
    late: KeygenResult,
    removed_share: bytes,
    tmp_path: Path,
) -> None:
    """k = 2 recovery members of {member0, member1, late}: member0 through the SDK, every
    refusal, then `late` (added after genesis) with `charter recovery share`."""
    network = Network.load(sb.network_path)
    identities = sb.member_identities()
    member0 = Member(c, *identities[0])
    removed = Member(c, *identities[2])
    late_member = Member(c, late.cert_path, late.key_path)
    status = await c.recovery_status()
    assert sorted(status["recoveryMembers"]) == sorted(
        [member0.id, Member(c, *identities[1]).id, late_member.id]
    )
    assert (status["submittedCount"], status["stillNeeded"]) == (0, 2)

    share0 = await _share_of(c, member0, network.member_encryption_key(0))
    payload = json.dumps({"share": base64.b64encode(share0).decode()}).encode()
    envelope = member0.envelope("recovery_share", payload)
    path = f"/gov/recovery/members/{member0.id}:recover"
    params = {"api-version": GOV_API_VERSION}
    headers = {"Content-Type": "application/cose"}
    first = await c.post(path, data=envelope, params=params, headers=headers)
    assert first.status == 200, first.body
    assert first.body["submittedCount"] == 1
    replayed = await c.post(path, data=envelope, params=params, headers=headers)
    assert (replayed.status, replayed.body["error"]["code"]) == (400, "RequestReplay")
    await _still_waiting(c, 1)

    late_share = await _share_of(c, late_member, late.enc_priv_path)  # type: ignore[arg-type]
    tampered = bytearray(late_share)
    tampered[5] ^= 0x40
    assert await _refused(late_member.submit_share(bytes(tampered))) == (
        400,
        "InvalidRecoveryShare",
    )
    outsider = generate_identity("outsider", tmp_path / "outsider")
    assert await _refused(
        Member(c, outsider.cert_path, outsider.key_path).submit_share(late_share)
    ) == (401, "UnknownMember")
    # Removed before the disaster: it holds no share, and the one it held is refused.
    assert await _refused(c.encrypted_share(removed.id)) == (404, "ResourceNotFound")
    assert await _refused(removed.submit_share(removed_share)) == (403, "MemberRetired")
    await _still_waiting(c, 1)  # k-1 shares: still not open

    done = await asyncio.to_thread(
        _charter,
        "recovery", "share", "--url", node.url, "--service-cert", new_cert,
        "--cert", late.cert_path, "--key", late.key_path, "--enc-key", late.enc_priv_path,
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["memberId"], doc["submittedCount"]) == (late_member.id, 2), doc
    await _wait_open(c)


async def _second_recovery_shares(
    c: CharterClient, sb: Sandbox, node: NodeProcess, new_cert: Path, late: KeygenResult
) -> None:
    """member1 with `charter recovery share --member 1`, `late` through the SDK: shares the
    first recovery issued."""
    status = await asyncio.to_thread(
        _charter, "recovery", "status", "--url", node.url, "--service-cert", new_cert, "--json"
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stillNeeded"] == 2
    done = await asyncio.to_thread(
        _charter,
        "recovery", "share", "--network", sb.network_path, "--member", "1",
        "--url", node.url, "--service-cert", new_cert,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1/2 recovery shares successfully submitted" in done.stdout, done.stdout
    late_member = Member(c, late.cert_path, late.key_path)
    result = await late_member.recover(late.enc_priv_path)  # type: ignore[arg-type]
    assert result["message"].endswith("End of recovery procedure initiated"), result
    await _wait_open(c)


def test_service_recovered_from_one_nodes_ledger_keeps_every_committed_write(
    tmp_path: Path,
) -> None:
    sb = start_sandbox(make_sandbox(tmp_path / "old", 3))
    recovery_nodes: list[NodeProcess] = []
    try:
        asyncio.run(_scenario(sb, tmp_path, recovery_nodes))
    except BaseException:
        print(log_tails(sb))
        for node in recovery_nodes:
            print(f"----- {node.directory}\n{_tail(node.log_path)}")
        raise
    finally:
        sb.stop()
        for node in recovery_nodes:
            _kill(node)


async def _scenario(sb: Sandbox, tmp_path: Path, recovery_nodes: list[NodeProcess]) -> None:
    old_cert = tmp_path / "old_service_cert.pem"
    shutil.copy(sb.service_cert_path, old_cert)
    written: dict[tuple[int, bool], str] = {}
    txids = {}
    for key in range(12):
        if key == 6:  # a rekey before the disaster: the shares must walk back past it
            async with sb.client() as c:
                await sb.pass_proposal(c, REKEY)
        for public in (False, True):
            msg = f"{'public' if public else 'private'} value {key}"
            txids[(key, public)] = await write(sb, sb.nodes[key % 3], key, msg, public=public)
            written[(key, public)] = msg
    # The members change before the disaster: a member added after genesis (with an
    # encryption key, acked), member 2 removed (its share fetched while it held one).
    late = generate_identity("late", tmp_path / "late", encryption_key=True)
    network = Network.load(sb.network_path)
    async with sb.client() as c:
        removed = Member(c, *sb.member_identities()[2])
        removed_share = await _share_of(c, removed, network.member_encryption_key(2))
        set_late = {
            "cert": late.cert_path.read_text(),
            "encryption_pub_key": late.enc_pub_path.read_text(),
        }  # type: ignore[union-attr]
        await sb.pass_proposal(c, [{"name": "set_member", "args": set_late}])
        await Member(c, late.cert_path, late.key_path).ack()
        await sb.pass_proposal(c, [{"name": "remove_member", "args": {"member_id": removed.id}}])
    txids[(12, False)] = await write(sb, sb.nodes[0], 12, "after the member changes")
    written[(12, False)] = "after the member changes"
    last = max(t.seqno for t in txids.values())
    for node in sb.nodes:
        await wait_committed_on(sb, node, last)
    async with sb.client(sb.nodes[0], user=0) as c:
        old_receipt = await c.receipt(txids[(3, False)])
    check_receipt_with_ccf(old_receipt, old_cert.read_text())
    assert old_receipt["service_endorsements"] == []

    # The disaster: every process killed; two workspaces gone, and the third's sealed state.
    for node in sb.nodes:
        node.kill()
    third = sb.nodes[2].directory / "workspace"
    for node in sb.nodes[:2]:
        shutil.rmtree(node.directory / "workspace")
    (third / "sealed.bin").unlink()
    (third / "virtual_sealing_key.bin").unlink()
    assert not (third / "ledger").joinpath("sealed.bin").exists()

    # The operator: one command, on a copy of the third node's ledger.
    info, node = _recovery_start(third / "ledger", old_cert, tmp_path / "recovery1")
    recovery_nodes.append(node)
    new_cert = Path(info["service_cert"])
    assert new_cert.read_text() != old_cert.read_text()
    async with _client(node, new_cert, sb) as c:
        state = await c.node_state()
        assert state["state"] == "PartOfPublicNetwork", state
        assert state["recovery_target_seqno"] >= last
        network = await c.network()
        assert network["service_status"] == "Recovering"
        assert network["recovery_count"] == 1
    async with _client(node, new_cert, sb, user=0) as c:
        refused = await c.post("/app/log/private", json={"id": 99, "msg": "too early"})
        assert refused.status == 503, refused.body
        assert refused.body["error"]["code"] == "FrontendNotOpen"

    async with _client(node, new_cert, sb) as c:
        await _open_naming_both_identities(c, sb, old_cert, new_cert)
        await _first_recovery_shares(c, sb, node, new_cert, late, removed_share, tmp_path)

    async with _client(node, new_cert, sb, user=0) as c:
        for (key, public), msg in written.items():
            path = "/app/log/public" if public else "/app/log/private"
            r = c.check(await c.get(path, params={"id": str(key)}))
            assert r.body["msg"] == msg, (key, public)
        new_txid = c.check(await c.post("/app/log/private", json={"id": 100, "msg": "after"})).txid
        assert new_txid is not None
        after = await c.receipt(txids[(3, False)])
        new_receipt = await c.receipt(new_txid)
    # The old receipt still verifies against the old certificate; the one fetched now
    # carries the endorsement that chains it to the new certificate.
    check_receipt_with_ccf(old_receipt, old_cert.read_text())
    assert len(after["service_endorsements"]) == 1
    check_receipt_with_ccf(after, new_cert.read_text())
    assert new_receipt["service_endorsements"] == []
    check_receipt_with_ccf(new_receipt, new_cert.read_text())

    # Other nodes join the recovered service as usual, and hold every value.
    joiner = _join(tmp_path / "joiner", node, new_cert)
    recovery_nodes.append(joiner)
    await asyncio.to_thread(joiner.wait_started)
    async with _client(node, new_cert, sb) as c:
        await _pass(
            c, sb, [{"name": "transition_node_to_trusted", "args": {"node_id": joiner.node_id}}]
        )
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    value: object = None
    while not isinstance(value, str) and time.monotonic() < deadline:
        try:
            async with _client(joiner, new_cert, sb, user=0) as c:
                value = await read_with(c, 3)
        except (CharterError, AssertionError) as exc:
            value = exc
            await asyncio.sleep(0.2)
    assert value == written[(3, False)], f"{value!r}\n{_tail(joiner.log_path, 80)}"

    # The ledger after recovery validates with CCF's own validator, across the change.
    async with _client(node, new_cert, sb, user=0) as c:
        for key in range(101, 140):  # enough to complete and commit a chunk after recovery
            c.check(await c.post("/app/log/public", json={"id": key, "msg": "x" * 200}))
    validated = ccf_validate(tmp_path / "recovery1" / "workspace" / "ledger")
    assert validated["status"] == "Open"
    assert int(validated["txid"].split(".")[1]) > last

    # A second recovery on top of the first chains the endorsements.
    _kill(joiner)
    _kill(node)
    await asyncio.sleep(0.5)
    info2, node2 = _recovery_start(
        tmp_path / "recovery1" / "workspace" / "ledger", new_cert, tmp_path / "recovery2"
    )
    recovery_nodes.append(node2)
    newest = Path(info2["service_cert"])
    async with _client(node2, newest, sb) as c:
        assert (await c.network())["recovery_count"] == 2
    async with _client(node2, newest, sb) as c:
        await _open_naming_both_identities(c, sb, new_cert, newest)
        await _second_recovery_shares(c, sb, node2, newest, late)
    async with _client(node2, newest, sb, user=0) as c:
        assert (await read_with(c, 3)) == written[(3, False)]
        assert (await read_with(c, 100)) == "after"
        chained = await c.receipt(txids[(3, False)])
    assert len(chained["service_endorsements"]) == 2
    check_receipt_with_ccf(chained, newest.read_text())


async def read_with(c: CharterClient, key: int) -> str:
    r = c.check(await c.get("/app/log/private", params={"id": str(key)}))
    msg = r.body["msg"]
    assert isinstance(msg, str)
    return msg


def test_recovery_from_a_damaged_copy_stops_at_the_last_valid_signature(tmp_path: Path) -> None:
    sb = start_sandbox(make_sandbox(tmp_path / "old", 1))
    recovery_nodes: list[NodeProcess] = []
    try:
        asyncio.run(_damaged(sb, tmp_path, recovery_nodes))
    except BaseException:
        print(log_tails(sb))
        for node in recovery_nodes:
            print(f"----- {node.directory}\n{_tail(node.log_path)}")
        raise
    finally:
        sb.stop()
        for node in recovery_nodes:
            _kill(node)


async def _damaged(sb: Sandbox, tmp_path: Path, recovery_nodes: list[NodeProcess]) -> None:
    from charter.ledger.chunks import LedgerReader
    from charter.ledger.entry import decode_entry
    from charter.ledger.service_state import SIGNATURES

    old_cert = tmp_path / "old_service_cert.pem"
    shutil.copy(sb.service_cert_path, old_cert)
    txid = None
    for key in range(8):
        txid = await write(sb, sb.nodes[0], key, f"value {key}", public=True)
        await asyncio.sleep(0.05)  # a signature (every 20 ms) between writes
    assert txid is not None
    await wait_committed_on(sb, sb.nodes[0], txid.seqno)
    sb.nodes[0].kill()
    ledger = sb.nodes[0].directory / "workspace" / "ledger"
    entries = {s: bytes(r) for s, r in LedgerReader(str(ledger)).entries()}
    signatures = [s for s, r in entries.items() if SIGNATURES in decode_entry(r)[0].public]
    # Damage one byte of an application write in the unfinished chunk, signed after.
    target = max(s for s, r in entries.items() if b"value 5" in r)
    copy = tmp_path / "damaged"
    shutil.copytree(ledger, copy)
    holder = next(p for p in copy.iterdir() if entries[target] in p.read_bytes())
    data = bytearray(holder.read_bytes())
    data[data.find(entries[target]) + entries[target].find(b"value 5")] ^= 0x01
    holder.write_bytes(bytes(data))
    expected = max(s for s in signatures if s < target)
    found_at = min(s for s in signatures if s > target)

    info, node = _recovery_start(copy, old_cert, tmp_path / "recovery")
    recovery_nodes.append(node)
    async with _client(node, Path(info["service_cert"]), sb) as c:
        state = await c.node_state()
    assert state["recovery_target_seqno"] == expected, state
    # Said where: the signature that no longer signs what the copy holds.
    assert state["recovery_replay_stopped"]["seqno"] == found_at
    assert f"last_signed_seqno={expected}" in _tail(node.log_path, 400)
    assert state["state"] == "PartOfPublicNetwork"


def test_a_recovery_node_killed_before_the_shares_says_to_start_again_and_a_fresh_start_works(
    tmp_path: Path,
) -> None:
    # Restarted as it was, it died with a stack trace ("IdentityError: no ledger secret
    # applies to seqno 1"), not saying what the operator should do.
    sb = start_sandbox(make_sandbox(tmp_path / "old", 1))
    nodes: list[NodeProcess] = []
    try:
        txid = asyncio.run(write(sb, sb.nodes[0], 1, "private before the disaster"))
        asyncio.run(wait_committed_on(sb, sb.nodes[0], txid.seqno))
        old_cert = tmp_path / "old_service_cert.pem"
        shutil.copy(sb.service_cert_path, old_cert)
        sb.nodes[0].kill()
        ledger = sb.nodes[0].directory / "workspace" / "ledger"
        before = {p.name: p.read_bytes() for p in ledger.iterdir()}

        _, first = _recovery_start(ledger, old_cert, tmp_path / "recovery1")
        nodes.append(first)
        _kill(first)  # public ledger replayed, no share submitted yet
        restarted = subprocess.run(
            [sys.executable, "-m", "charter.host", "--config", str(first.config_path)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert restarted.returncode == 1
        fatal = json.loads((first.directory / "workspace" / "ports.json").read_text())["fatal"]
        assert "stopped before its recovery completed" in fatal, fatal
        assert "charter recovery start" in fatal and "a new directory" in fatal
        assert "Traceback" not in restarted.stdout + restarted.stderr
        assert {p.name: p.read_bytes() for p in ledger.iterdir()} == before  # untouched

        # The same copy recovers in a new directory.
        info, second = _recovery_start(ledger, old_cert, tmp_path / "recovery2")
        nodes.append(second)
        asyncio.run(_recover_with_shares(sb, second, Path(info["service_cert"]), old_cert))
    finally:
        sb.stop()
        for node in nodes:
            _kill(node)


async def _recover_with_shares(
    sb: Sandbox, node: NodeProcess, new_cert: Path, old_cert: Path
) -> None:
    async with _client(node, new_cert, sb) as c:
        await _pass(
            c,
            sb,
            [
                {
                    "name": "transition_service_to_open",
                    "args": {
                        "previous_service_identity": old_cert.read_text(),
                        "next_service_identity": new_cert.read_text(),
                    },
                }
            ],
        )
        await _wait_status(c, "WaitingForRecoveryShares")
        for i, (cert, key) in enumerate(sb.member_identities()):
            status = await c.recovery_status()
            if status.get("serviceStatus") != "WaitingForRecoveryShares":
                break  # the threshold was met: the private ledger is being replayed
            await Member(c, cert, key).recover(sb.member_encryption_key(i))
        await _wait_status(c, "Open")
    async with _client(node, new_cert, sb, user=0) as c:
        doc = await c.get_json("/app/log/private", params={"id": "1"})
    assert doc["msg"] == "private before the disaster"
