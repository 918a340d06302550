"""Nothing private leaves the enclave in clear: not in the ledger, snapshots, sealed state,
logs, or any frame of the host ⇄ enclave control channel."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

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
