"""A bounded disk (issue 15) on real processes and real files: with files_cleanup on, a long
run of writes in small chunks leaves the ledger and snapshot directories under a bound, every
chunk deleted has an archive copy with its SHA-256, an archive copy that differs keeps its
chunk (and says so in the log), and a node that lagged behind catches up from entries the
primary now keeps only in a read-only ledger directory."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    log_tails,
    log_text,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    write,
)

from charter.errors import CharterError
from charter.ledger.chunks import parse_chunk_name
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

WRITES = 10_000
WRITERS = 6
KEYS = 100  # the state stays small: the bound is about the ledger, not the state
SNAPSHOT_TX_COUNT = 100
MAX_SNAPSHOTS = 2
ARCHIVE_PASS_S = 0.2
# What the ledger and snapshot directories of a node may hold at any moment: two snapshots
# of a small state, the chunks since the latest snapshot (100 seqnos of 4 KiB chunks, plus
# the signatures and whatever waits for the archiver's next pass) and the one chunk whose
# archive copy is kept wrong on purpose. Far below what the run writes (checked below).
DISK_BOUND_BYTES = 512 * 1024
CORRUPTED_INDEX = 3  # the 4th committed chunk the archiver sees gets a wrong copy
HELD_BACK_MIN = 20  # archived chunks after the wrong copy before it is put right


def _configure(i: int, config: dict[str, Any]) -> None:
    workspace = Path(config["workspace"])
    config["snapshots"] = {"tx_count": SNAPSHOT_TX_COUNT}
    config["memory"] = {"raft_log_entries": 10}  # a lagging peer is fed from the disk
    config["files_cleanup"] = {
        "max_snapshots": MAX_SNAPSHOTS,
        "ledger_archive_dir": str(workspace.parent / "archive"),
        "interval_ms": 100,
    }
    config["ledger_read_only_dirs"] = [str(workspace.parent / "read-only")]


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-disk") / "sb", 3, _configure))
    try:
        yield sb
    finally:
        sb.stop()


def _ledger_dir(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "ledger"


def _snapshots_dir(node: NodeProcess) -> Path:
    return node.directory / "workspace" / "snapshots"


def _archive(node: NodeProcess) -> Path:
    return node.directory / "archive"


def _read_only(node: NodeProcess) -> Path:
    return node.directory / "read-only"


def _bytes_in(*directories: Path) -> int:
    total = 0
    for directory in directories:
        for path in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing
                total += path.stat().st_size
    return total


def _listing(*directories: Path) -> list[tuple[str, int]]:
    """(name, size) of the files, to say what filled the disk if the bound is passed."""
    found = []
    for directory in directories:
        for path in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.append((path.name, path.stat().st_size))
    return sorted(found)


class Archiver:
    """The operator's job beside the node: copy each committed chunk to the archive and
    remember its SHA-256, and watch the node's disk. One copy is written wrong on purpose;
    once the node has shown that it holds that chunk and every later one back, the copy is
    put right, and the disk is watched from then on."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.sha256: dict[str, str] = {}
        self.order: list[str] = []
        self.corrupted: str | None = None
        self.held_back = 0  # chunks kept behind the wrong copy when it was put right
        self.repaired = False
        self.max_disk_bytes = 0
        self.at_max: list[tuple[str, int]] = []
        _archive(node).mkdir(exist_ok=True)
        _read_only(node).mkdir(exist_ok=True)

    def _copy(self, name: str, data: bytes) -> None:
        tmp = _archive(self.node) / (name + ".partial")
        tmp.write_bytes(data)
        tmp.rename(_archive(self.node) / name)

    def archive_pass(self) -> None:
        ledger = _ledger_dir(self.node)
        names = sorted(
            (p.name for p in ledger.iterdir() if p.name.endswith(".committed")),
            key=lambda n: parse_chunk_name(n).first,
        )
        for name in names:
            if name in self.sha256:
                continue
            try:
                data = (ledger / name).read_bytes()
            except FileNotFoundError:
                continue
            self.sha256[name] = hashlib.sha256(data).hexdigest()
            self.order.append(name)
            if self.corrupted is None and len(self.order) == CORRUPTED_INDEX + 1:
                self.corrupted = name
                data = data[:-1] + bytes([data[-1] ^ 0x01])  # same name and size
            self._copy(name, data)
        if self.corrupted is not None and not self.repaired:
            later = self.order[self.order.index(self.corrupted) + 1 :]
            present = {p.name for p in ledger.iterdir()}
            if len(later) >= HELD_BACK_MIN and self.corrupted in present:
                self.held_back = sum(1 for n in later if n in present)
                self._copy(self.corrupted, (ledger / self.corrupted).read_bytes())
                self.repaired = True
            return
        now = _bytes_in(ledger, _snapshots_dir(self.node))
        if now > self.max_disk_bytes:
            self.max_disk_bytes = now
            self.at_max = _listing(ledger, _snapshots_dir(self.node))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.archive_pass)
            await asyncio.sleep(ARCHIVE_PASS_S)


async def _write_many(sb: Sandbox, node: NodeProcess) -> int:
    """WRITES private writes over KEYS keys from WRITERS clients; the last seqno written."""
    last = 0

    async def writer(w: int) -> None:
        nonlocal last
        async with sb.client(node, user=0) as c:
            for i in range(w, WRITES, WRITERS):
                for _attempt in range(50):
                    try:
                        r = await c.post("/app/log/private", json={"id": i % KEYS, "msg": f"v{i}"})
                    except CharterError:
                        await asyncio.sleep(0.1)
                        continue
                    if r.status == 200 and r.txid is not None:
                        last = max(last, r.txid.seqno)
                        break
                    await asyncio.sleep(0.05)  # 503 backpressure: try again
                else:
                    raise AssertionError(f"write {i} never accepted\n{log_tails(sb)}")

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    return last


async def test_with_cleanup_on_the_disk_stays_bounded_and_deletes_only_verified_archived_chunks(
    net: Sandbox,
) -> None:
    primary = net.nodes[await primary_index(net)]
    lagging = next(n for n in net.nodes if n is not primary)
    early = await write(net, primary, 5000, "written early")
    await wait_committed_on(net, lagging, early.seqno)
    lagging.stop()  # it will need entries the primary no longer keeps in its ledger dir

    archiver = Archiver(primary)
    stop = asyncio.Event()
    archiving = asyncio.create_task(archiver.run(stop))
    try:
        middle = await write(net, primary, 5001, "written in the middle")
        last = await _write_many(net, primary)
        await wait_committed_on(net, primary, last)
        # Let the last snapshot commit and cleanup catch up with the archive.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = {p.name for p in _ledger_dir(primary).iterdir()}
            if len(set(archiver.sha256) - left) >= len(archiver.sha256) * 3 // 4:
                break
    finally:
        stop.set()
        await archiving

    left = {p.name for p in _ledger_dir(primary).iterdir()}
    deleted = sorted(set(archiver.sha256) - left, key=lambda n: parse_chunk_name(n).first)
    written_bytes = _bytes_in(_archive(primary))
    text = log_text(primary)
    # The wrong archive copy held its chunk and every later one back, and the log said why;
    # put right, it let them all go.
    assert archiver.corrupted is not None and archiver.repaired, log_tails(net)
    assert archiver.held_back >= HELD_BACK_MIN, archiver.held_back
    assert f"event=ledger_chunk_kept file={archiver.corrupted} reason=archive copy differs" in text
    assert archiver.corrupted in deleted
    assert len(deleted) >= 100, (len(deleted), sorted(left), log_tails(net))
    # Every deleted chunk has an archive copy whose SHA-256 is the chunk's.
    for name in deleted:
        copy = hashlib.sha256((_archive(primary) / name).read_bytes()).hexdigest()
        assert copy == archiver.sha256[name], name
    # The disk stayed under its bound all along, while the run wrote far more than that.
    assert archiver.max_disk_bytes <= DISK_BOUND_BYTES, archiver.at_max
    assert written_bytes >= 4 * DISK_BOUND_BYTES, (written_bytes, archiver.max_disk_bytes)
    committed_snapshots = [
        p for p in _snapshots_dir(primary).iterdir() if p.name.endswith(".committed")
    ]
    assert len(committed_snapshots) <= MAX_SNAPSHOTS
    assert "event=snapshot_deleted" in text

    # The operator moves the archive to read-only storage; the lagging node comes back and
    # catches up from seqnos the primary's ledger directory no longer holds.
    def deleted_holds(seqno: int) -> bool:
        return any(
            parse_chunk_name(n).first <= seqno <= (parse_chunk_name(n).last or 0) for n in deleted
        )

    assert deleted_holds(early.seqno + 1) and deleted_holds(middle.seqno)
    for path in list(_archive(primary).iterdir()):
        shutil.move(str(path), _read_only(primary) / path.name)
    lagging.start()
    await asyncio.to_thread(lagging.wait_started)
    await wait_committed_on(net, lagging, last, timeout_s=60)
    assert await read(net, lagging, 5001) == "written in the middle", log_tails(net)
