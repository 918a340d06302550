"""Nothing private leaves the enclave in clear: not in the ledger, snapshots, sealed state,
logs, or any frame of the host ⇄ enclave control channel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
from pathlib import Path

import pytest

from charter.enclave_app.kv import Store
from charter.enclave_app.node.shares import recover_ledger_secrets
from charter.errors import CharterError
from charter.identity import Network
from charter.ledger import shamir
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry
from charter.member import Member, decrypt_share, load_encryption_key
from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_private_record_plaintext_never_leaves_the_enclave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = tmp_path / "control-frames.bin"
    monkeypatch.setenv("CHARTER_CAPTURE_CONTROL_FRAMES", str(capture))
    private_marker = f"private-{secrets.token_hex(16)}"
    public_marker = f"public-{secrets.token_hex(16)}"
    sandbox = Sandbox(
        tmp_path / "ws",
        nodes=1,
        signature_tx_count=5,
        election_timeout_ms=(300, 600),
        ledger_chunk_bytes=4096,
        # A snapshot every few transactions, so snapshots are searched too.
        configure_node=lambda i, config: config.update(snapshots={"tx_count": 5}),
    )

    async def write_records() -> None:
        await sandbox.start()
        async with sandbox.client(user=0) as client:
            for i in range(12):
                private = await client.post(
                    "/app/log/private", json={"id": i, "msg": f"{private_marker} {i}"}
                )
                assert private.status == 200, private.body
                public = await client.post(
                    "/app/log/public", json={"id": i, "msg": f"{public_marker} {i}"}
                )
                assert public.status == 200, public.body
            read = await client.get("/app/log/private", params={"id": "3"})
            assert read.body == {"msg": f"{private_marker} 3"}
            await client.wait_for_commit(public.txid)

    try:
        asyncio.run(write_records())
    finally:
        sandbox.stop()
    node_dir = sandbox.nodes[0].directory
    searched = [*_files_under(node_dir), capture]
    names = {p.name for p in searched}
    assert any(n.startswith("ledger_") for n in names), names
    assert any(n.startswith("snapshot_") for n in names), names
    assert {"sealed.bin", "node.log", "host.log", capture.name} <= names, names
    assert capture.stat().st_size > 0, "the control channel capture is empty"
    leaks = [str(p) for p in searched if private_marker.encode() in p.read_bytes()]
    assert not leaks, f"private plaintext found in {leaks}"
    # Positive control: the same search finds what is public by definition.
    ledger_bytes = b"".join(p.read_bytes() for p in searched if p.name.startswith("ledger_"))
    assert public_marker.encode() in ledger_bytes
    assert public_marker.encode() in capture.read_bytes()
    assert os.environ["CHARTER_CAPTURE_CONTROL_FRAMES"] == str(capture)


def _forms(secret: bytes) -> list[bytes]:
    """The ways a secret could show up in a file or frame: raw, base64, hex."""
    return [secret, base64.b64encode(secret), secret.hex().encode()]


def test_no_recovery_share_or_ledger_secret_appears_in_clear_on_the_host_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across rekeys and the members' share round trip (fetch, decrypt locally, submit), the
    host's files, logs and control frames hold no ledger secret, no wrapping key and no
    share in clear: shares leave the enclave RSA-OAEP encrypted to their member, secrets
    AES-GCM wrapped or sealed to a node, and submissions arrive inside TLS."""
    capture = tmp_path / "control-frames.bin"
    monkeypatch.setenv("CHARTER_CAPTURE_CONTROL_FRAMES", str(capture))
    sandbox = Sandbox(
        tmp_path / "ws",
        nodes=2,
        signature_tx_count=5,
        election_timeout_ms=(300, 600),
        ledger_chunk_bytes=4096,
        configure_node=lambda i, config: config.update(snapshots={"tx_count": 5}),
    )
    rekey = [{"name": "trigger_ledger_rekey", "args": {}}]

    encrypted: list[bytes] = []

    async def run() -> dict[str, bytes]:
        await sandbox.start()
        shares: dict[str, bytes] = {}
        async with sandbox.client() as client:
            for round_ in range(2):
                await sandbox.pass_proposal(client, rekey)
                async with sandbox.client(user=0) as user:
                    r = await user.post("/app/log/private", json={"id": round_, "msg": "x"})
                    await user.wait_for_commit(r.txid)
            network = Network.load(sandbox.network_path)
            for i, (cert, key) in enumerate(sandbox.member_identities()):
                member = Member(client, cert, key)
                private_key = load_encryption_key(network.member_encryption_key(i))
                encrypted.append(await client.encrypted_share(member.id))
                shares[member.id] = decrypt_share(private_key, encrypted[-1])
                # The share crosses to the enclave (refused: the service is not recovering).
                with pytest.raises(CharterError):
                    await member.submit_share(shares[member.id])
        return shares

    try:
        shares = asyncio.run(run())
    finally:
        sandbox.stop()
    ledger_dir = sandbox.nodes[0].directory / "workspace" / "ledger"
    store = Store()
    for seqno, raw in LedgerReader(str(ledger_dir)).entries(1, None):
        store.apply(dict(decode_entry(bytes(raw))[0].public), seqno)
    secrets_ = recover_ledger_secrets(store.begin(), shares)
    assert len(secrets_) == 3
    wrapping_key = shamir.combine(list(shares.values()))
    needles = [wrapping_key, *shares.values(), *(s for _, s in secrets_)]
    searched = [p for node in sandbox.nodes for p in _files_under(node.directory)] + [capture]
    assert capture.stat().st_size > 0
    leaks = [
        f"{p} holds {needle[:4].hex()}…"
        for p in searched
        for needle in needles
        for form in _forms(needle)
        if form in p.read_bytes()
    ]
    assert not leaks, leaks
    # Positive control: the same search finds the encrypted shares, public in the ledger.
    ledger_bytes = b"".join(p.read_bytes() for p in searched if p.name.startswith("ledger_"))
    assert all(base64.b64encode(e) in ledger_bytes for e in encrypted)


def test_a_recovery_keeps_private_values_and_ledger_secrets_inside_the_enclave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole recovery (public replay, the members' shares submitted, private replay,
    reads): neither a private value, nor a ledger secret, nor a decrypted recovery share
    appears on the recovery node's host side (its files, logs, or any control-channel
    frame). The members decrypt their shares here, outside the node, and submit them over
    TLS."""
    import base64
    import json
    import subprocess
    import sys

    from charter.enclave_app.identity import Identity
    from charter.enclave_app.platform import VirtualPlatform
    from charter.identity import Network
    from charter.member import Member, decrypt_share, load_encryption_key
    from charter.sdk import CharterClient

    private_marker = f"private-{secrets.token_hex(16)}"
    sandbox = Sandbox(
        tmp_path / "ws", nodes=1, election_timeout_ms=(300, 600), ledger_chunk_bytes=4096
    )

    async def write_records() -> str:
        await sandbox.start()
        async with sandbox.client(user=0) as client:
            for i in range(6):
                r = await client.post(
                    "/app/log/private", json={"id": i, "msg": f"{private_marker} {i}"}
                )
                assert r.status == 200, r.body
            await client.wait_for_commit(r.txid)
            measurement: str = (await client.get_json("/node/quotes/self"))["measurement"]
            return measurement

    try:
        measurement = asyncio.run(write_records())
    finally:
        sandbox.stop()
    old_workspace = sandbox.nodes[0].directory / "workspace"
    # What to search for (not how the recovery gets them): the old secrets, from the dead
    # node's sealed state, which the virtual platform's key file beside it opens.
    identity = Identity.from_bytes(
        VirtualPlatform(old_workspace, measurement).unseal(
            (old_workspace / "sealed.bin").read_bytes()
        )
    )
    old_secrets = list(identity.ledger_secrets)

    capture = tmp_path / "recovery-control-frames.bin"
    monkeypatch.setenv("CHARTER_CAPTURE_CONTROL_FRAMES", str(capture))
    recovery = tmp_path / "recovery"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from charter.cli import main; sys.exit(main())",
            "recovery",
            "start",
            "--ledger",
            str(old_workspace / "ledger"),
            "--previous-service-cert",
            str(sandbox.service_cert_path),
            "--dir",
            str(recovery),
            "--detach",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    ports = json.loads((recovery / "workspace" / "ports.json").read_text())
    url = f"https://{ports['rpc_address']}"
    new_cert = Path(info["service_cert"])
    submitted_shares: list[bytes] = []

    async def recover() -> None:
        async with CharterClient(url, new_cert) as c:
            members = sandbox.member_identities()
            proposal = await Member(c, *members[0]).propose(
                [
                    {
                        "name": "transition_service_to_open",
                        "args": {
                            "previous_service_identity": sandbox.service_cert_path.read_text(),
                            "next_service_identity": new_cert.read_text(),
                        },
                    }
                ]
            )
            for cert, key in members:
                if proposal.state != "Open":
                    break
                proposal = await Member(c, cert, key).vote(proposal.proposal_id, True)
            assert proposal.state == "Accepted"
            network = Network.load(sandbox.network_path)
            for i in range(2):  # the sandbox's recovery threshold
                member = Member(c, *members[i])
                share = decrypt_share(
                    load_encryption_key(network.member_encryption_key(i)),
                    await c.encrypted_share(member.id),
                )
                submitted_shares.append(share)
                await member.submit_share(share)
            for _ in range(100):
                if (await c.network())["service_status"] == "Open":
                    break
                await asyncio.sleep(0.1)
        cert, key = sandbox.user_paths(0)
        async with CharterClient(url, new_cert, cert_path=cert, key_path=key) as c:
            read = await c.get("/app/log/private", params={"id": "3"})
            assert read.body == {"msg": f"{private_marker} 3"}

    try:
        asyncio.run(recover())
    finally:
        for pid in (ports.get("enclave_pid"), ports.get("host_pid")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
    searched = [*_files_under(recovery), capture]
    assert capture.stat().st_size > 0, "the control channel capture is empty"
    needles = [private_marker.encode()]
    assert len(submitted_shares) == 2
    for secret in [*(s for _, s in old_secrets), *submitted_shares]:
        needles += [secret, base64.b64encode(secret)]
    leaks = [str(p) for p in searched for n in needles if n in p.read_bytes()]
    assert not leaks, f"private plaintext or a ledger secret found in {leaks}"
