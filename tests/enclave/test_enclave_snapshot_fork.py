"""The fork snapshot encoder (enclave_app/snapshot_fork.py): real forks, real pipes, on the
enclave's own event loop (uvloop); nothing mocked.

Children that must be caught mid-encode wait for a file (never for a time), so every test
is deterministic: the test, or the parent's loop, creates the file or kills the child.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.loop import run_loop
from charter.enclave_app.node import Node
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.snapshot_fork import ForkSnapshotEncoder, SnapshotEncodeError
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.ledger import certs
from charter.ledger.snapshot import decode_snapshot, parse_snapshot_file_name

Outcome = tuple[str, int, Any]
# How long a test waits for something that must happen (a bound on a hang, never a
# measured time: every wait ends as soon as what it waits for is there).
WAIT_S = 30.0
SNAPSHOT_TX = 10


def _run(test: Callable[[], Awaitable[None]]) -> None:
    run_loop(test())


class _Results:
    """What the encoder delivered, as a future per delivery."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Outcome] = asyncio.Queue()

    def encoded(self, seqno: int, entry: bytes) -> None:
        self.queue.put_nowait(("encoded", seqno, entry))

    def failed(self, seqno: int, error: SnapshotEncodeError) -> None:
        self.queue.put_nowait(("failed", seqno, error))

    async def next(self) -> Outcome:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)

    def encoder(self, **kwargs: Any) -> ForkSnapshotEncoder:
        return ForkSnapshotEncoder(self.loop, self.encoded, self.failed, **kwargs)


def _wait_for_file(path: Path) -> None:
    """In the child: wait until `path` exists (created by the parent or the test)."""
    while not path.exists():
        time.sleep(0.001)


def _assert_reaped(pid: int) -> None:
    """`pid` was this process's child and is gone: no zombie left to wait for."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _pipe_fd() -> int:
    """In the child: its only fd above stderr, the pipe to the parent."""
    fds = [int(name) for name in os.listdir("/proc/self/fd") if int(name) > 2]
    # listdir itself opened one, closed by now
    return min(fd for fd in fds if _is_open(fd))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------
def _config(tmp: Path, **extra: Any) -> itf.NodeConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    key = certs.new_key()
    cert = tmp / "member0_cert.pem"
    cert.write_text(certs.cert_pem(certs.identity_cert(key, "member0")))
    return itf.NodeConfig.model_validate(
        {
            "workspace": str(tmp),
            "start": {"mode": "start", "members": [{"cert": str(cert)}]},
            **extra,
        }
    )


def _one_node(tmp: Path, snapshot_tx: int = SNAPSHOT_TX, **kwargs: Any) -> Node:
    config = _config(
        tmp, snapshots={"tx_count": snapshot_tx}, signatures={"tx_count": 1000, "delay_ms": 1}
    )
    node = Node(config, VirtualPlatform(tmp), load_app(config.app), **kwargs)
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    node.start_new_network(initial_members(config), None)
    return node


def _drain(node: Node) -> None:
    """Act as a host that makes every write durable at once."""
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.WriteEntries):
                node.durable(max(s for s, _ in frame.entries))


def _write(node: Node, count: int, prefix: str) -> None:
    for i in range(count):
        tx = node.store.begin()
        tx.put("records", f"{prefix}{i}".encode(), f"value {i}".encode() * 3)
        tx.put("public:records", f"{prefix}{i}".encode(), b"public")
        node.commit_tx(tx)


# ------------------------------------------------------------------------------------------
def test_the_fork_encoder_gives_the_bytes_of_the_synchronous_encode_of_the_same_state(
    tmp_path: Path,
) -> None:
    """The child encodes the state as it was when the node asked, byte for byte what the
    synchronous encode gives, though the parent writes on at once."""
    node = _one_node(tmp_path, snapshot_tx=1_000_000)
    _drain(node)
    _write(node, 300, "k")
    node.emit_signature()
    _drain(node)
    assert node.replication is not None
    seqno, view = node.applied_seqno, node.replication.raft.view
    encode = node.snapshots._encoder(seqno, view)
    expected = encode()

    async def test() -> None:
        results = _Results(asyncio.get_running_loop())
        encoder = results.encoder()
        encoder.start(seqno, view, encode)
        _write(node, 50, "after")  # the parent goes on: the child must not see these
        assert node.store.version > seqno
        kind, got_seqno, entry = await results.next()
        assert (kind, got_seqno) == ("encoded", seqno)
        assert entry == expected
        assert decode_snapshot(entry).seqno == seqno

    _run(test)


def test_the_event_loop_keeps_running_while_a_snapshot_is_encoded(tmp_path: Path) -> None:
    """The child finishes only once the parent's loop has run a callback that it scheduled
    after the fork: the parent is not blocked by the encoding."""
    go = tmp_path / "go"

    def encode() -> bytes:
        _wait_for_file(go)
        return b"entry made after the parent's loop ran"

    async def test() -> None:
        loop = asyncio.get_running_loop()
        results = _Results(loop)
        encoder = results.encoder()
        encoder.start(7, 2, encode)
        (pid,) = encoder.child_pids
        loop.call_soon(go.touch)
        assert await results.next() == ("encoded", 7, b"entry made after the parent's loop ran")
        assert encoder.child_pids == []
        _assert_reaped(pid)

    _run(test)


def test_children_encoding_at_once_each_deliver_their_own_entry(tmp_path: Path) -> None:
    """A second snapshot forks while the first is still encoding: each child delivers its
    own entry, in the order they finish, and both are reaped."""
    go = tmp_path / "go"

    def slow() -> bytes:
        _wait_for_file(go)
        return b"the first"

    async def test() -> None:
        results = _Results(asyncio.get_running_loop())
        encoder = results.encoder()
        encoder.start(5, 1, slow)
        encoder.start(9, 1, lambda: b"the second")
        pids = encoder.child_pids
        assert len(pids) == 2
        assert await results.next() == ("encoded", 9, b"the second")
        go.touch()
        assert await results.next() == ("encoded", 5, b"the first")
        assert encoder.child_pids == []
        for pid in pids:
            _assert_reaped(pid)

    _run(test)


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("killed", "SnapshotEncoderDied"),
        ("raises", "SnapshotEncoderDied"),
        ("short", "SnapshotTruncated"),
        ("long", "SnapshotTruncated"),
        ("no length", "SnapshotTruncated"),
        ("oversized", "SnapshotTooLarge"),
        ("hangs", "SnapshotEncoderTimeout"),
    ],
)
def test_a_child_that_dies_or_writes_a_wrong_result_is_a_failed_snapshot_and_is_reaped(
    tmp_path: Path, how: str, code: str
) -> None:
    """Killed mid-encode, an exception, fewer or more bytes than its length, a length over
    the bound, no answer in time: each is delivered as a typed failure, and the child is
    reaped (no zombie)."""
    started = tmp_path / "started"

    def encode() -> bytes:
        started.touch()
        if how == "raises":
            raise RuntimeError("encoding failed")
        if how in ("killed", "hangs"):
            _wait_for_file(tmp_path / "never")
        fd = _pipe_fd()
        if how == "short":
            os.write(fd, struct.pack("<Q", 40) + b"x" * 10)
            os._exit(0)
        if how == "long":
            os.write(fd, struct.pack("<Q", 4) + b"x" * 10)
            os._exit(0)
        if how == "no length":
            os.write(fd, b"\x01\x02")
            os._exit(0)
        return b"y" * 1000  # oversized: over the 64 bytes allowed below

    async def test() -> None:
        loop = asyncio.get_running_loop()
        results = _Results(loop)
        encoder = results.encoder(entry_bytes_max=64, timeout_s=1.0 if how == "hangs" else WAIT_S)
        encoder.start(11, 3, encode)
        (pid,) = encoder.child_pids
        if how == "killed":
            while not started.exists():
                await asyncio.sleep(0.001)
            os.kill(pid, signal.SIGKILL)
        kind, seqno, error = await results.next()
        assert (kind, seqno) == ("failed", 11)
        assert isinstance(error, SnapshotEncodeError) and error.code == code, error
        assert encoder.child_pids == []
        _assert_reaped(pid)
        # The encoder takes the next snapshot as if nothing happened.
        encoder.start(12, 3, lambda: b"ok")
        assert await results.next() == ("encoded", 12, b"ok")

    _run(test)


def test_close_kills_and_reaps_every_running_child(tmp_path: Path) -> None:
    started = tmp_path / "started"

    def encode() -> bytes:
        started.touch()
        _wait_for_file(tmp_path / "never")
        return b""

    async def test() -> None:
        results = _Results(asyncio.get_running_loop())
        encoder = results.encoder()
        encoder.start(5, 1, encode)
        encoder.start(6, 1, encode)
        pids = encoder.child_pids
        assert len(pids) == 2
        while not started.exists():
            await asyncio.sleep(0.001)
        encoder.close()
        for pid in pids:
            _assert_reaped(pid)
        assert encoder.child_pids == []
        await asyncio.sleep(0.05)
        assert results.queue.empty(), "nothing is delivered after close"

    _run(test)


def test_the_child_holds_none_of_the_parents_fds_but_its_pipe(tmp_path: Path) -> None:
    """A socket the parent closes is closed for its peer at once, even while a child
    forked after it was opened is still encoding."""
    report = tmp_path / "fds"

    def encode() -> bytes:
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2)
        report.write_text(" ".join(str(fd) for fd in fds if _is_open(fd)))
        return b"done"

    async def test() -> None:
        import socket

        results = _Results(asyncio.get_running_loop())
        left, right = socket.socketpair()
        encoder = results.encoder()
        encoder.start(3, 1, encode)
        left.close()
        assert right.recv(1) == b"", "the peer sees the close while the child lives"
        right.close()
        assert await results.next() == ("encoded", 3, b"done")
        assert len(report.read_text().split()) == 1, report.read_text()

    _run(test)


def test_the_child_does_not_outlive_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    """A parent killed -9 mid-encode leaves no encoding child behind (PR_SET_PDEATHSIG)."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, sys, time
            from pathlib import Path
            from charter.enclave_app.loop import run_loop
            from charter.enclave_app.snapshot_fork import ForkSnapshotEncoder

            def encode():
                while not Path({str(tmp_path / "never")!r}).exists():
                    time.sleep(0.001)
                return b""

            async def main():
                loop = asyncio.get_running_loop()
                encoder = ForkSnapshotEncoder(loop, print, print)
                encoder.start(1, 1, encode)
                print(*encoder.child_pids, flush=True)
                await asyncio.sleep(3600)

            run_loop(main())
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + WAIT_S
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child), f"encoding child {child} outlived its parent"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# ------------------------------------------------------------------------------------------
class _FirstEncodingKilled:
    """The runtime's fork encoder, whose first child is killed mid-encode by the test."""

    def __init__(self, inner: ForkSnapshotEncoder, started: Path) -> None:
        self.inner = inner
        self.started = started
        self.starts: list[int] = []

    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None:
        self.starts.append(seqno)
        if len(self.starts) == 1:
            started = self.started

            def hang() -> bytes:
                started.touch()
                _wait_for_file(started.with_name("never"))
                return b""

            self.inner.start(seqno, view, hang)
        else:
            self.inner.start(seqno, view, encode)


def test_a_node_whose_encoding_child_is_killed_serves_on_and_snapshots_at_the_next_signature(
    tmp_path: Path,
) -> None:
    """The first snapshot's child is killed mid-encode: the node goes on taking writes,
    the next due signature forks again, and that snapshot's evidence commits and its file
    completes and verifies (at a seqno after the snapshot's own + 1: writes came between)."""

    async def test() -> None:
        loop = asyncio.get_running_loop()
        holder: dict[str, Node] = {}
        events: list[str] = []

        def encoded(seqno: int, entry: bytes) -> None:
            events.append(f"encoded {seqno}")
            holder["node"].snapshot_encoded(seqno, entry)

        def failed(seqno: int, error: SnapshotEncodeError) -> None:
            events.append(f"failed {seqno} {error.code}")
            holder["node"].snapshot_encode_failed(seqno, error.message)

        inner = ForkSnapshotEncoder(loop, encoded, failed)
        encoder = _FirstEncodingKilled(inner, tmp_path / "started")
        node = holder["node"] = _one_node(tmp_path / "node", snapshot_encoder=encoder)
        _drain(node)
        _write(node, 12, "a")
        node.emit_signature()
        _drain(node)
        assert len(encoder.starts) == 1
        first = encoder.starts[0]
        while not encoder.started.exists():
            await asyncio.sleep(0.001)
        (pid,) = inner.child_pids
        os.kill(pid, signal.SIGKILL)
        while not events:
            await asyncio.sleep(0.001)
        assert events == [f"failed {first} SnapshotEncoderDied"]
        _assert_reaped(pid)
        # Serving on: writes commit; the next signature is due again at once.
        _write(node, 3, "b")
        node.emit_signature()
        _drain(node)
        assert node.commit_seqno == node.applied_seqno
        assert len(encoder.starts) == 2
        second = encoder.starts[1]
        _write(node, 4, "c")  # served while the second child encodes
        node.emit_signature()
        _drain(node)
        # That signature opens the next interval: it forks too, the second still encoding.
        assert len(encoder.starts) == 3
        third = encoder.starts[2]
        assert second // SNAPSHOT_TX < third // SNAPSHOT_TX
        while len(events) < 3:
            await asyncio.sleep(0.001)
        assert sorted(events[1:]) == sorted([f"encoded {second}", f"encoded {third}"])
        node.emit_signature()  # the evidence's signature, then the evidences commit
        _drain(node)
        node.emit_signature()
        _drain(node)
        assert node.latest_snapshot is not None and node.latest_snapshot_name is not None
        parsed = parse_snapshot_file_name(node.latest_snapshot_name)
        assert parsed is not None
        snap_seqno, evidence_seqno, committed = parsed
        assert (snap_seqno, committed) == (third, True)
        assert evidence_seqno > snap_seqno + 1
        node.snapshots.verify(node.latest_snapshot, node.latest_snapshot_name)
        assert inner.child_pids == []
        inner.close()

    _run(test)


def test_the_child_encodes_at_the_lowest_priority_so_serving_goes_first(tmp_path: Path) -> None:
    """Encoding is background work: where the cores are busy serving (nodes sharing a
    machine, each forking at the same signature) the child waits for them."""
    from charter.enclave_app.snapshot_fork import CHILD_NICE

    def encode() -> bytes:
        return str(os.getpriority(os.PRIO_PROCESS, 0)).encode()

    async def test() -> None:
        results = _Results(asyncio.get_running_loop())
        results.encoder().start(4, 1, encode)
        outcome = await results.next()
        assert outcome[:2] == ("encoded", 4)
        assert int(outcome[2]) == max(CHILD_NICE, os.getpriority(os.PRIO_PROCESS, 0))
        assert os.getpriority(os.PRIO_PROCESS, 0) < CHILD_NICE  # the parent's is its own

    _run(test)
