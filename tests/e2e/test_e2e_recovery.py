"""Disaster recovery on real processes: a 3-node service loses every node, and a new service
is recovered from one node's ledger files with `charter recovery start`.

Until the recovery shares land (another part of issue #13), the old ledger secrets reach
the recovering node through the `virtual` platform's stand-in
(`POST /node/recovery/virtual/ledger-secrets`, member-signed): the test helper
`_dead_node_secrets` reads them from the dead node's sealed state and its virtual sealing
key, which on the `virtual` platform protect nothing. That helper is test-only; with shares,
members submit shares instead.
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

from charter.enclave_app.identity import Identity
from charter.enclave_app.platform import VirtualPlatform
from charter.errors import CharterError
from charter.member import Member
from charter.sandbox import SANDBOX_SUBJECT_ALT_NAMES, NodeProcess, Sandbox, free_port
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

RECOVERY_START_TIMEOUT_S = 180.0
OPEN_TIMEOUT_S = 60.0


def _dead_node_secrets(workspace: Path, measurement: str) -> list[tuple[int, bytes]]:
    """TEST-ONLY: the ledger secrets in a node's sealed state, unsealed with the virtual
    platform's key file (until recovery shares replace this)."""
    platform = VirtualPlatform(workspace, measurement)
    identity = Identity.from_bytes(platform.unseal((workspace / "sealed.bin").read_bytes()))
    return list(identity.ledger_secrets)


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


async def _give_secrets(
    client: CharterClient, sb: Sandbox, secrets: list[tuple[int, bytes]]
) -> Any:
    payload = json.dumps(
        {
            "ledger_secrets": [
                {"seqno": seqno, "secret": base64.b64encode(secret).decode()}
                for seqno, secret in secrets
            ]
        }
    ).encode()
    member = Member(client, *sb.member_identities()[0])
    return await client.post(
        "/node/recovery/virtual/ledger-secrets",
        data=member.envelope("proposal", payload),
        headers={"Content-Type": "application/cose"},
    )


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


async def _recover_and_open(
    sb: Sandbox,
    node: NodeProcess,
    previous_cert: Path,
    new_cert: Path,
    secrets: list[tuple[int, bytes]],
) -> None:
    """What the members do: open the recovered service naming both identities, then
    (virtual stand-in for shares) give it the old secrets; wait until it is open."""
    async with _client(node, new_cert, sb) as c:
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
        answer = await _give_secrets(c, sb, secrets)
        assert answer.status == 200, answer.body
        await _wait_status(c, "Open")
        state = await c.node_state()
        assert state["state"] == "PartOfNetwork"


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
        for public in (False, True):
            msg = f"{'public' if public else 'private'} value {key}"
            txids[(key, public)] = await write(sb, sb.nodes[key % 3], key, msg, public=public)
            written[(key, public)] = msg
    last = max(t.seqno for t in txids.values())
    for node in sb.nodes:
        await wait_committed_on(sb, node, last)
    async with sb.client(sb.nodes[0], user=0) as c:
        old_receipt = await c.receipt(txids[(3, False)])
        measurement = (await c.get_json("/node/quotes/self"))["measurement"]
    check_receipt_with_ccf(old_receipt, old_cert.read_text())
    assert old_receipt["service_endorsements"] == []

    # The disaster: every process killed; two workspaces gone, and the third's sealed state.
    for node in sb.nodes:
        node.kill()
    third = sb.nodes[2].directory / "workspace"
    secrets = _dead_node_secrets(third, measurement)  # TEST-ONLY, see the module docstring
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

    await _recover_and_open(sb, node, old_cert, new_cert, secrets)

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
    secrets2 = [*secrets]
    _kill(joiner)
    _kill(node)
    await asyncio.sleep(0.5)
    second_secrets = _dead_node_secrets(tmp_path / "recovery1" / "workspace", measurement)
    assert second_secrets[: len(secrets2)] == secrets2
    info2, node2 = _recovery_start(
        tmp_path / "recovery1" / "workspace" / "ledger", new_cert, tmp_path / "recovery2"
    )
    recovery_nodes.append(node2)
    newest = Path(info2["service_cert"])
    async with _client(node2, newest, sb) as c:
        assert (await c.network())["recovery_count"] == 2
    await _recover_and_open(sb, node2, new_cert, newest, second_secrets)
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
