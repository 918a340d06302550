"""Snapshots encoded off the ordering loop, on real processes: the enclave forks a child per
snapshot (enclave_app/snapshot_fork.py); the primary's evidence commits, the files complete
and verify on the primary and the backup, the ledger still validates with CCF's own
`ccf.ledger`, every child is reaped, and none outlives its node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ccf_validate, log_tails, log_text, running_sandbox, write

from charter.ledger.snapshot import parse_snapshot_file_name, verify_snapshot
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

WAIT_S = 30.0
SNAPSHOT_TX = 40


def _configure(i: int, config: dict[str, Any]) -> None:
    config["snapshots"] = {"tx_count": SNAPSHOT_TX}


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("e2e-snapfork") / "sb", 2, _configure) as sb:
        yield sb


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _encoding_children(pid: int) -> list[int]:
    """The children of enclave `pid` that are forks of it (not its frontend processes), and
    any zombie child nobody reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is None or int(fields[1]) != pid:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] == "Z" or b"charter.enclave_app.main" in cmdline:
                found.append(int(entry.name))
    return found


def _in_session(session: int) -> list[int]:
    """Processes of a node's session (its host, enclave, frontends and their children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) == session:
                found.append(int(entry.name))
    return found


def _committed(node: NodeProcess) -> list[str]:
    directory = node.directory / "workspace" / "snapshots"
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".committed"))


async def _until(what: str, check: Callable[[], bool], sb: Sandbox) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {WAIT_S}s\n{log_tails(sb)}"
        await asyncio.sleep(0.05)


async def test_snapshots_encoded_by_a_forked_child_commit_verify_and_leave_no_child_behind(
    net: Sandbox,
) -> None:
    primary, backup = net.nodes
    enclaves = [int(node.ports["enclave_pid"]) for node in net.nodes]
    sessions = [node.process.pid for node in net.nodes if node.process is not None]
    assert len(sessions) == 2
    for i in range(4 * SNAPSHOT_TX):
        await write(net, primary, i, f"record {i}")
    # Snapshots on both nodes, each a complete file that verifies against the service.
    await _until(
        "two committed snapshots on both nodes",
        lambda: all(len(_committed(node)) >= 2 for node in net.nodes),
        net,
    )
    service_pem = net.service_cert_path.read_text()
    for node in net.nodes:
        for name in _committed(node):
            parsed = parse_snapshot_file_name(name)
            assert parsed is not None and parsed[1] > parsed[0], name
            data = (node.directory / "workspace" / "snapshots" / name).read_bytes()
            verify_snapshot(data, service_pem, name=name)
    assert set(_committed(primary)) & set(_committed(backup)), "the backup took the same ones"
    for node in net.nodes:
        text = log_text(node)
        assert "event=snapshot_encode_forked" in text and "event=snapshot_encoded" in text
        assert "event=snapshot_encode_failed" not in text
    assert "role=backup" in log_text(backup)
    # Every child was reaped: none left, not even a zombie, once encoding is over.
    await _until(
        "no encoding child left",
        lambda: not any(_encoding_children(enclave) for enclave in enclaves),
        net,
    )
    # CCF's own validator still accepts the ledger with the evidence where it now lands.
    ledger = primary.directory / "workspace" / "ledger"
    assert ccf_validate(ledger)["transactions"] > 4 * SNAPSHOT_TX

    net.stop()
    deadline = time.monotonic() + WAIT_S
    while any(_in_session(s) for s in sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(_in_session(s) for s in sessions), "a process outlived its node"
