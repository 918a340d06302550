"""The host stores the ledger but is not trusted: a node restarted on ledger files that the
host tampered with or cut short must not resume as if nothing happened (DESIGN §3: "the enclave
trusts nothing the host returns"). One 1-node network; each test restores the files after."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    alive,
    committed_chunk_end,
    log_tails,
    log_text,
    make_sandbox,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.identity import TxId
from charter.sandbox import NodeProcess, Sandbox, SandboxError

pytestmark = pytest.mark.e2e

RESTART_TIMEOUT_S = 30.0
# How often, at most, a node seals how far its ledger is committed (enclave_app/node.py).
SEAL_INTERVAL_S = 1.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-storage") / "sb", nodes=1))
    try:
        yield sb
    finally:
        sb.stop()


def _ledger(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "ledger"


def _first_seqno(path: Path) -> int:
    return int(path.name.removeprefix("ledger_").split(".")[0].split("-")[0])


async def _committed_records(sb: Sandbox, base_key: int, count: int) -> list[TxId]:
    """`count` records, all in committed chunk files."""
    node = sb.nodes[0]
    txids = [await write(sb, node, base_key + i, f"rec{i} " + "z" * 200) for i in range(count)]
    await wait_committed_on(sb, node, txids[-1].seqno)
    for i in range(40):
        if committed_chunk_end(_ledger(node)) >= txids[-1].seqno:
            break
        t = await write(sb, node, base_key + 500 + i, "pad " + "z" * 300)
        await wait_committed_on(sb, node, t.seqno)
    assert committed_chunk_end(_ledger(node)) >= txids[-1].seqno
    return txids


async def _try_start(sb: Sandbox, node: NodeProcess) -> bool:
    """Start `node`; True if it came up and serves, False if it refused to start."""
    node.start()
    try:
        await asyncio.to_thread(node.wait_started, RESTART_TIMEOUT_S)
    except SandboxError:
        return False
    await wait_ready(sb, node)
    return True


async def _restart_clean(sb: Sandbox, node: NodeProcess) -> None:
    node.stop()
    assert await _try_start(sb, node), f"node did not restart on its own files\n{log_tails(sb)}"


async def test_restart_refuses_a_ledger_entry_the_host_altered(net: Sandbox) -> None:
    node = net.nodes[0]
    marker = "tamper-target-" + "q" * 40
    target = await write(net, node, 1, marker, public=True)
    await _committed_records(net, 10, 5)
    node.stop()
    chunk = next(p for p in _ledger(node).iterdir() if marker.encode() in p.read_bytes())
    original = chunk.read_bytes()
    at = original.index(marker.encode()) + len("tamper-target-")
    chunk.write_bytes(original[:at] + b"Q" + original[at + 1 :])  # one byte of a public value
    log_size = len(log_text(node))
    try:
        started = await _try_start(net, node)
        if started:
            # Had it resumed, it would serve the altered record as committed.
            value = await read(net, node, 1, public=True)
            pytest.fail(f"node resumed on an altered ledger; record reads {value!r}")
        assert not alive(node)
        new_log = log_text(node)[log_size:]
        assert "fatal" in new_log and "start failed" in new_log, new_log[-2000:]
        # The refusal names the entry and the file that holds it.
        assert "GCM tag does not authenticate the entry" in new_log, new_log[-2000:]
        assert f"ledger entry seqno {target.seqno}:" in new_log, new_log[-2000:]
        assert f"[ledger file {chunk}]" in new_log, new_log[-2000:]
    finally:
        node.stop()
        chunk.write_bytes(original)
        await _restart_clean(net, node)
    assert await read(net, node, 1, public=True) == marker
    async with net.client(node) as c:
        assert await c.tx_status(target) == "Committed"


@pytest.mark.parametrize("halt", ["stop", "kill"])
async def test_host_cannot_roll_back_committed_writes_by_deleting_ledger_files(
    net: Sandbox, tmp_path: Path, halt: str
) -> None:
    node = net.nodes[0]
    base = 100 if halt == "stop" else 200
    txids = await _committed_records(net, base, 40)
    if halt == "stop":
        node.stop()  # SIGTERM: the node seals its commit point on the way out
    else:
        # kill -9: commits older than the sealing interval (1 s) must be protected as well.
        await asyncio.sleep(SEAL_INTERVAL_S + 1.0)
        node.kill()
    files = sorted(_ledger(node).iterdir(), key=_first_seqno)
    committed = [p for p in files if p.name.endswith(".committed")]
    # The host keeps the older chunks and drops the last two committed ones and the open one.
    cut = _first_seqno(committed[-2])
    assert cut <= txids[-1].seqno
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = [p for p in files if _first_seqno(p) >= cut]
    for path in moved:
        shutil.move(str(path), aside / path.name)
    try:
        started = await _try_start(net, node)
        if started:
            lost = [str(t) for i, t in enumerate(txids) if await read(net, node, base + i) is None]
            async with net.client(node) as c:
                status = await c.tx_status(txids[-1])
            assert not lost, (
                f"node resumed on a ledger cut at seqno {cut}: committed {lost} are gone "
                f"(last one now {status})"
            )
        else:
            assert not alive(node)
    finally:
        node.stop()
        for path in _ledger(node).iterdir():
            if _first_seqno(path) >= cut:
                path.unlink()  # whatever it wrote on the cut ledger
        for path in moved:
            shutil.move(str(aside / path.name), path)
        with contextlib.suppress(AssertionError):
            await _restart_clean(net, node)
