"""Backups that come back with less than they reported durable (issue 11, items 1 and 8).

A 3-node network of real processes. A backup killed -9 while its ledger ends after the last
signature restarts (the documented way: `python -m charter.host --config FILE` again) without
that unsigned tail, although it had reported those entries durable. A backup whose disk fills
up stops, saying so; once space is freed it is restarted the same way. In every case the
backup must catch up and commit must keep advancing, also with both backups restarted so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    alive,
    log_tails,
    log_text,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.errors import CharterError
from charter.identity import TxId
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry
from charter.ledger.errors import LedgerError
from charter.ledger.signatures import SIGNATURES_TABLE
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

# Signatures at most every 250 ms: a write flood leaves unsigned entries at most ledger ends.
SIGNATURE_DELAY_MS = 250
KILL_ATTEMPTS = 6
SMALL_DISK_BYTES = 4 * 1024 * 1024
SMALL_DISK_NODE = 2
STOP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A real, small file system (tmpfs) for one backup's ledger; None where mounting is
    denied (then the full-disk test skips and the others run on the ordinary disk)."""
    path = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_BYTES}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, small_disk: Path | None) -> Iterator[Sandbox]:
    def configure(i: int, config: dict[str, Any]) -> None:
        config["signatures"]["delay_ms"] = SIGNATURE_DELAY_MS
        # Not sooner under light load either: the kills look for an unsigned tail.
        config["signatures"]["light_load_delay_ms"] = 0
        if i == SMALL_DISK_NODE and small_disk is not None:
            config["ledger_dir"] = str(small_disk / "ledger")

    sb = make_sandbox(tmp_path_factory.mktemp("e2e-backup-restart") / "sb", 3, configure)
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


def _ledger_dir(node: NodeProcess, small_disk: Path | None) -> Path:
    if node.index == SMALL_DISK_NODE and small_disk is not None:
        return small_disk / "ledger"
    return node.directory / "workspace" / "ledger"


def _unsigned_tail(ledger_dir: Path) -> tuple[int, int]:
    """(last signature seqno, last seqno) of the ledger files as they lie on disk."""
    reader = LedgerReader(str(ledger_dir))
    last_sig = last = 0
    for seqno, raw in reader.entries(1, None):
        last = seqno
        entry, _ = decode_entry(bytes(raw))
        if SIGNATURES_TABLE in entry.public:
            last_sig = seqno
    return last_sig, last


async def _restart(sb: Sandbox, node: NodeProcess) -> None:
    node.start()
    await asyncio.to_thread(node.wait_started)
    await wait_ready(sb, node)


async def _flood(sb: Sandbox, node: NodeProcess, base_key: int, stop: asyncio.Event) -> TxId:
    """Write through `node` until `stop`; returns the last txid it answered."""
    last: TxId | None = None
    async with sb.client(node, user=0) as c:
        i = 0
        while not stop.is_set() and i < 5_000:
            r = c.check(await c.post("/app/log/private", json={"id": base_key + i, "msg": f"f{i}"}))
            assert r.txid is not None
            last = r.txid
            i += 1
    assert last is not None, "the flood wrote nothing"
    return last


async def _kill_with_unsigned_tail(
    sb: Sandbox, primary: NodeProcess, victim: NodeProcess, base_key: int, disk: Path | None
) -> tuple[TxId, int, int]:
    """kill -9 `victim` during a write flood, until its ledger ends after its last signature
    (restarting it between attempts). Returns (a txid committed before the kill, last
    signature, last seqno on the victim's disk)."""
    for attempt in range(KILL_ATTEMPTS):
        committed = await write(sb, primary, base_key + 9_000 + attempt, "before the kill")
        await wait_committed_on(sb, victim, committed.seqno)
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(sb, primary, base_key + attempt * 1000, stop))
        await asyncio.sleep(0.4 + 0.1 * attempt)
        await asyncio.to_thread(victim.kill)
        stop.set()
        await flood
        try:
            last_sig, last = _unsigned_tail(_ledger_dir(victim, disk))
        except LedgerError:
            last_sig = last = 0  # a torn file end: try again for a clean unsigned tail
        if last > last_sig > 0:
            return committed, last_sig, last
        await _restart(sb, victim)
    raise AssertionError(f"no kill left an unsigned tail in {KILL_ATTEMPTS} tries")


async def test_backups_killed_with_an_unsigned_tail_restart_and_commit_keeps_advancing(
    net: Sandbox, small_disk: Path | None
) -> None:
    p = await primary_index(net)
    primary = net.nodes[p]
    backups = [n for n in net.nodes if n.index != p]
    seen_before_kill: dict[int, TxId] = {}
    for k, victim in enumerate(backups):
        rollbacks_before = log_text(victim).count("event=rollback")
        committed, last_sig, last = await _kill_with_unsigned_tail(
            net, primary, victim, 10_000 * (k + 1), small_disk
        )
        seen_before_kill[victim.index] = committed
        await _restart(net, victim)
        # It came back without the tail (the issue's `event=rollback from=L to=S`).
        text = log_text(victim)
        assert text.count("event=rollback") > rollbacks_before, log_tails(net)
        assert f"to={last_sig}" in text, (last_sig, last, log_tails(net))
    # Both backups came back without entries they had reported durable: commit advances...
    txid = await write(net, primary, 1, "after both restarts")
    for node in net.nodes:
        await wait_committed_on(net, node, txid.seqno)
    # ...and each restarted backup serves the new write and calls its old one Committed.
    for victim in backups:
        assert await read(net, victim, 1) == "after both restarts"
        async with net.client(victim) as c:
            assert await c.tx_status(seen_before_kill[victim.index]) == "Committed"
    # Still advancing afterwards.
    later = await write(net, net.nodes[await primary_index(net)], 2, "later")
    for node in net.nodes:
        await wait_committed_on(net, node, later.seqno)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Take all but `leave_bytes` of the small disk with a filler file."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


async def test_full_disk_stops_the_backup_saying_so_and_it_catches_up_once_space_is_freed(
    net: Sandbox, small_disk: Path | None
) -> None:
    if small_disk is None:
        pytest.skip("mounting a small tmpfs is not permitted here")
    victim = net.nodes[SMALL_DISK_NODE]
    p = await primary_index(net)
    assert p != SMALL_DISK_NODE, "the small disk belongs to a backup in this test"
    primary = net.nodes[p]
    before = await write(net, primary, 3, "before the disk filled")
    await wait_committed_on(net, victim, before.seqno)
    filler = _fill(small_disk, leave_bytes=64 * 1024)
    # Writes go on through the primary until the backup's host stops on its full disk.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    key = 20_000
    while alive(victim) and time.monotonic() < deadline:
        with contextlib.suppress(CharterError):
            await write(net, primary, key, "x" * 2000)
        key += 1
    assert not alive(victim), f"the backup kept running on a full disk\n{log_tails(net)}"
    assert victim.process is not None and victim.process.returncode != 0
    text = log_text(victim)
    assert "no space left on device" in text, log_tails(net)
    assert str(small_disk / "ledger" / "ledger_") in text, log_tails(net)
    assert "more bytes" in text and "short write" not in text
    # Meanwhile the two others commit.
    during = await write(net, primary, 4, "while the backup is down")
    await wait_committed_on(net, primary, during.seqno)
    # Space is freed; the operator starts the node again the documented way.
    filler.unlink()
    await _restart(net, victim)
    after = await write(net, primary, 5, "after space was freed")
    for node in net.nodes:
        await wait_committed_on(net, node, after.seqno)
    assert await read(net, victim, 4) == "while the backup is down"
    assert await read(net, victim, 5) == "after space was freed"
