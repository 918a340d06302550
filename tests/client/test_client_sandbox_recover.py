"""`charter sandbox --recover` (issue 13): a dead sandbox network is taken through disaster
recovery by its own members, with the installed command, real nodes and real files.

The network is killed with SIGKILL (every host and enclave, and the sandbox itself), then
recovered: a recovery node replays the largest ledger left, the members open the new service
naming both identities and submit their recovery shares, the other nodes join afresh, and every
committed write, private ones included, reads back. A second disaster on top of the first is
recovered the same way: the shares the first recovery issued unlock the whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_client_sandbox_cli import CHARTER, Running

from charter.identity import Network
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e


def _client(workspace: Path, node: int = 0) -> CharterClient:
    network = Network.load(workspace / "network.json")
    cert, key = network.user(0)
    return CharterClient(network.urls[node], network.service_cert, cert_path=cert, key_path=key)


async def _write(workspace: Path, records: dict[int, str]) -> None:
    async with _client(workspace) as c:
        for key, msg in records.items():
            r = await c.post("/app/log/private", json={"id": key, "msg": msg})
            assert r.status == 200, r.body
            await c.wait_for_commit(r.txid)


async def _read_all(workspace: Path, keys: list[int], node: int = 0) -> dict[int, str]:
    async with _client(workspace, node) as c:
        return {key: (await c.get_json("/app/log/private", params={"id": str(key)}))["msg"]
                for key in keys}  # fmt: skip


def _kill_everything(workspace: Path, sandbox: Running) -> None:
    """kill -9 every node process of the workspace, and the sandbox command itself: those
    its ports.json files name, and any process started with one of its node configs (a node
    the sandbox was launching when it was killed has no ports.json yet), until none is left."""
    sandbox.process.kill()
    sandbox.process.wait()
    for ports in workspace.glob("node*/workspace/ports.json"):
        doc = json.loads(ports.read_text())
        for pid in (doc.get("enclave_pid"), doc.get("host_pid")):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    marker = str(workspace).encode()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    left.append(int(proc.name))
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise AssertionError(f"processes of {workspace} still run after kill -9")


def _env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200")
    env["PATH"] = f"{CHARTER.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dead_two_node_sandbox(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[int, str], str]:
    """A 2-node sandbox in tmp_path/ws given five private writes, then killed with -9: its
    workspace, the values written and its service certificate."""
    workspace = tmp_path / "ws"
    first = Running(["--nodes", "2", "--workspace", "ws"], tmp_path, env)
    first.wait_ready()
    before = {k: f"private value {k}" for k in range(1, 6)}
    try:
        asyncio.run(_write(workspace, before))
        old_cert = (workspace / "service_cert.pem").read_text()
    finally:
        _kill_everything(workspace, first)
    return workspace, before, old_cert


def test_a_dead_sandbox_is_recovered_by_its_members_with_every_committed_write(
    tmp_path: Path,
) -> None:
    env = _env()
    workspace, before, old_cert = _dead_two_node_sandbox(tmp_path, env)

    recovered = Running(["--workspace", "ws", "--recover"], tmp_path, env)
    try:
        banner = recovered.wait_ready()
        assert "Recovering the 2-node network" in banner
        new_cert = (workspace / "service_cert.pem").read_text()
        assert new_cert != old_cert
        assert (workspace / "recovered1" / "service_cert.pem").read_text() == old_cert
        assert (workspace / "recovered1" / "node0").is_dir()  # nothing was deleted
        assert asyncio.run(_read_all(workspace, list(before))) == before
        assert asyncio.run(_read_all(workspace, list(before), node=1)) == before
        after = {100: "written after the recovery"}
        asyncio.run(_write(workspace, after))
    finally:
        _kill_everything(workspace, recovered)

    # A second disaster: the first recovery's shares unlock the whole history again.
    again = Running(["--workspace", "ws", "--recover"], tmp_path, env)
    try:
        again.wait_ready()
        assert (workspace / "recovered2" / "service_cert.pem").read_text() == new_cert
        everything = {**before, **after}
        assert asyncio.run(_read_all(workspace, list(everything))) == everything
    finally:
        again.stop()
    assert again.process.returncode == 0, "".join(again.stderr)


# Log lines of the recovery node marking the moments a `--recover` is killed at.
RECOVERY_MOMENTS = {
    "public_replay": "to=ReadingPublicLedger",
    "waiting_for_shares": "name=transition_service_to_open",
    "after_the_kth_share": "event=recovery_shares_complete",
}


def _wait_recovery_log(workspace: Path, marker: str, timeout_s: float = 120.0) -> None:
    log = workspace / "node0" / "node.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # network.json is the last thing moved into the archive: until it is there, node0/
        # may still be the dead network's node, whose log holds its own genesis opening.
        archived = (workspace / "recovered1" / "network.json").is_file() and log.is_file()
        if archived and marker in log.read_text(errors="replace"):
            return
        time.sleep(0.002)
    raise AssertionError(f"the recovery node never logged {marker!r}")


@pytest.mark.parametrize("moment", list(RECOVERY_MOMENTS))
def test_a_recover_killed_half_way_is_retried_from_the_same_dead_network(
    tmp_path: Path, moment: str
) -> None:
    # Killed half-way, `--recover` used to retry on the half-recovered node alone: a 1-node
    # network, from a ledger whose new entries no share decrypts (409 RecoveryLedgerMismatch).
    env = _env()
    workspace, before, old_cert = _dead_two_node_sandbox(tmp_path, env)

    interrupted = Running(["--workspace", "ws", "--recover"], tmp_path, env)
    try:
        _wait_recovery_log(workspace, RECOVERY_MOMENTS[moment])
    finally:
        _kill_everything(workspace, interrupted)
    assert not (workspace / "network.json").exists()  # it did not finish

    again = Running(["--workspace", "ws", "--recover"], tmp_path, env)
    try:
        banner = again.wait_ready()
        assert "An earlier --recover did not finish" in banner
        assert "Recovering the 2-node network" in banner
        assert not (workspace / "recovered2").exists()  # the same dead network, once
        assert (workspace / "recovered1" / "service_cert.pem").read_text() == old_cert
        assert (workspace / "recovered1" / "interrupted1" / "node0").is_dir()  # kept
        assert asyncio.run(_read_all(workspace, list(before))) == before
        assert asyncio.run(_read_all(workspace, list(before), node=1)) == before
    finally:
        again.stop()
    assert again.process.returncode == 0, "".join(again.stderr)


def test_recover_refuses_options_it_cannot_honour_and_a_workspace_without_a_network(
    tmp_path: Path,
) -> None:
    env = _env()
    empty = subprocess.run(
        [str(CHARTER), "sandbox", "--workspace", "nothing-here", "--recover"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 1
    assert "holds no network to recover" in empty.stderr
    assert not (tmp_path / "nothing-here" / "node0").exists()
    (tmp_path / "ws" / "node0").mkdir(parents=True)
    (tmp_path / "ws" / "node0" / "node.json").write_text("{}")
    mixed = subprocess.run(
        [str(CHARTER), "sandbox", "--workspace", "ws", "--recover", "--nodes", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert mixed.returncode == 1
    assert "give no --nodes, --port-base or --app" in mixed.stderr
    assert (tmp_path / "ws" / "node0" / "node.json").read_text() == "{}"  # untouched
