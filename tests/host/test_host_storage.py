"""The host's storage: real ledger chunk files, snapshots, sealed blob, group fsync."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from charter.enclave_app import interface as itf
from charter.enclave_app.interface import ControlChannel
from charter.host import storage as storage_mod
from charter.host.storage import Storage, StorageWorker
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER, encode_entry


def entry(seqno: int, *, last_in_chunk: bool = False, size: int = 10) -> bytes:
    return encode_entry(
        seqno=seqno,
        view=2,
        public={"public:records": {b"k%d" % seqno: b"v" * size}},
        private={},
        secret=bytes(32),
        commit_evidence_digest=bytes(32),
        flags=FLAG_FORCE_CHUNK_AFTER if last_in_chunk else 0,
    )


def _no_node_messages(address: str, payload: bytes) -> None:
    raise AssertionError(f"no node message expected, got one to {address}")


def make_storage(tmp_path: Path) -> Storage:
    return Storage(
        workspace=tmp_path / "ws",
        ledger_dir=tmp_path / "ws" / "ledger",
        snapshots_dir=tmp_path / "ws" / "snapshots",
        chunk_size_bytes=5_000_000,
    )


def test_written_entries_become_durable_and_readable_after_restart(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    raws = [entry(i, last_in_chunk=(i == 5)) for i in range(1, 9)]
    assert s.write_entries(list(enumerate(raws, start=1)))
    assert s.needs_flush
    assert s.flush() == 8
    assert not s.needs_flush
    s.close()
    reader = LedgerReader(str(tmp_path / "ws" / "ledger"))
    assert [raw for _, raw in reader.entries()] == raws
    again = make_storage(tmp_path)
    assert again.last_seqno == 8
    assert again.read_entries(1, 1, 8).entries == raws
    again.close()


def test_ledger_write_that_skips_a_seqno_is_refused(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    assert s.write_entries([(1, entry(1))])
    assert not s.write_entries([(3, entry(3))])
    assert s.last_seqno == 1
    s.close()


def test_resent_identical_entries_are_skipped_but_a_conflicting_one_is_refused(
    tmp_path: Path,
) -> None:
    s = make_storage(tmp_path)
    assert s.write_entries([(1, entry(1)), (2, entry(2))])
    assert s.write_entries([(2, entry(2)), (3, entry(3))])
    assert s.last_seqno == 3
    assert not s.write_entries([(3, entry(3, size=77))])
    assert s.read_entries(1, 3, 3).entries == [entry(3)]
    s.close()


def test_a_write_refused_midway_keeps_the_entries_before_it(tmp_path: Path) -> None:
    """The entries of one frame leave in one pwrite; one that does not follow is refused
    and the ones before it are written and become durable as before."""
    s = make_storage(tmp_path)
    assert not s.write_entries([(1, entry(1)), (2, entry(2)), (4, entry(4))])
    assert s.last_seqno == 2 and s.needs_flush and s.last_entry_view == 2
    assert s.flush() == 2
    assert s.write_entries([(3, entry(3)), (4, entry(4))])
    assert s.flush() == 4
    assert s.read_entries(1, 1, 4).entries == [entry(i) for i in range(1, 5)]
    s.close()


def test_read_entries_returns_the_range_and_stops_at_the_end(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    raws = {i: entry(i, last_in_chunk=(i % 4 == 0)) for i in range(1, 11)}
    s.write_entries(list(raws.items()))
    got = s.read_entries(7, 3, 6)
    assert (got.request_id, got.first_seqno, got.entries) == (7, 3, [raws[i] for i in range(3, 7)])
    assert s.read_entries(8, 9, 1000).entries == [raws[9], raws[10]]
    assert s.read_entries(9, 11, 20).entries == []
    assert s.read_entries(9, 5, 4).entries == []
    s.close()


def test_read_entries_reply_is_cut_to_fit_one_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_storage(tmp_path)
    raws = [entry(i, size=1000) for i in range(1, 21)]
    s.write_entries(list(enumerate(raws, start=1)))
    monkeypatch.setattr(storage_mod, "READ_REPLY_BYTES_MAX", 5 * (len(raws[0]) + 8))
    assert s.read_entries(1, 1, 20).entries == raws[:5]
    s.close()


def test_truncate_drops_the_suffix_and_writing_resumes_there(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    s.write_entries([(i, entry(i, last_in_chunk=(i == 3))) for i in range(1, 7)])
    s.flush()
    assert s.truncate(2)
    assert s.last_seqno == 2
    new3 = entry(3, size=99)
    assert s.write_entries([(3, new3)])
    assert s.flush() == 3
    assert s.read_entries(1, 1, 10).entries[-1] == new3
    s.close()


def test_commit_marks_complete_chunks_and_truncation_below_commit_is_refused(
    tmp_path: Path,
) -> None:
    s = make_storage(tmp_path)
    s.write_entries([(i, entry(i, last_in_chunk=(i in (3, 6)))) for i in range(1, 9)])
    s.flush()
    s.commit(6)
    names = sorted(os.listdir(tmp_path / "ws" / "ledger"))
    assert names == ["ledger_1-3.committed", "ledger_4-6.committed", "ledger_7"]
    assert not s.truncate(5)
    assert s.last_seqno == 8
    s.close()


def test_commit_never_goes_beyond_durable_entries(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    s.write_entries([(i, entry(i, last_in_chunk=(i == 2))) for i in range(1, 5)])
    s.commit(4)  # nothing fsynced yet: nothing may be marked committed
    assert not any(n.endswith(".committed") for n in os.listdir(tmp_path / "ws" / "ledger"))
    s.flush()
    s.commit(4)
    assert "ledger_1-2.committed" in os.listdir(tmp_path / "ws" / "ledger")
    s.close()


def test_latest_committed_snapshot_is_served_and_uncommitted_ones_are_not(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    assert s.read_latest_snapshot(1) == itf.SnapshotRead(request_id=1, name=None, data=None)
    s.write_snapshot(10, 12, b"snap10", committed=False)
    assert s.read_latest_snapshot(2).name is None
    s.write_snapshot(10, 12, b"", committed=True)  # mark the pending one committed
    s.write_snapshot(20, 22, b"snap20", committed=False)
    s.write_snapshot(5, 6, b"snap5", committed=True)
    got = s.read_latest_snapshot(3)
    assert (got.name, got.data) == ("snapshot_10_12.committed", b"snap10")
    s.write_snapshot(20, 22, b"snap20", committed=True)  # data given again: replaces pending
    names = sorted(os.listdir(tmp_path / "ws" / "snapshots"))
    assert names == [
        "snapshot_10_12.committed",
        "snapshot_20_22.committed",
        "snapshot_5_6.committed",
    ]
    assert s.read_latest_snapshot(4).data == b"snap20"
    s.close()


def test_sealed_blob_is_stored_atomically_and_given_back(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    assert s.load_sealed() is None
    s.store_sealed(b"first")
    s.store_sealed(b"second")
    assert s.load_sealed() == b"second"
    assert sorted(os.listdir(tmp_path / "ws")) == ["ledger", "sealed.bin", "snapshots"]
    s.close()


async def test_worker_group_commits_writes_and_replies_durable_over_the_channel(
    tmp_path: Path,
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host_end, enclave = ControlChannel(a, name="host"), ControlChannel(b, name="enclave")
    failures: list[str] = []
    worker = StorageWorker(
        make_storage(tmp_path), host_end.send, failures.append, _no_node_messages
    )

    async def host_loop() -> None:
        async for frame, _ in host_end:
            await worker.submit(frame)

    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(host_loop())]
    raws = {i: entry(i, last_in_chunk=(i % 50 == 0)) for i in range(1, 201)}
    for i in range(1, 201):  # one frame per entry, sent back to back
        enclave.send(itf.WriteEntries(entries=[(i, raws[i])]))
    durable = 0
    while durable < 200:
        frame, _ = await asyncio.wait_for(enclave.receive(), 10)
        assert isinstance(frame, itf.Durable) and frame.seqno > durable
        durable = frame.seqno
    assert worker.fsync_count < 200  # writes that queued up shared an fsync
    enclave.send(itf.ReadEntries(request_id=4, from_seqno=199, to_seqno=300))
    reply, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert reply == itf.EntriesRead(request_id=4, entries=[raws[199], raws[200]], first_seqno=199)
    enclave.send(itf.WriteEntries(entries=[(500, entry(500))]))
    enclave.send(itf.ReadLatestSnapshot(request_id=5))
    reply, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert reply == itf.SnapshotRead(request_id=5, name=None, data=None)
    assert failures == ["enclave sent a ledger write that does not follow the ledger"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    worker.storage.close()
    host_end.close()
    enclave.close()


async def test_a_read_that_fails_is_answered_as_nothing_and_the_worker_keeps_writing(
    tmp_path: Path,
) -> None:
    # A directory where the latest committed snapshot file should be: reading it raised
    # IsADirectoryError out of the worker, whose task then stopped the node.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host_end, enclave = ControlChannel(a, name="host"), ControlChannel(b, name="enclave")
    failures: list[str] = []
    storage = make_storage(tmp_path)
    (storage.snapshots_dir / "snapshot_5_6.committed").mkdir()
    worker = StorageWorker(storage, host_end.send, failures.append, _no_node_messages)

    async def host_loop() -> None:
        async for frame, _ in host_end:
            await worker.submit(frame)

    run = asyncio.create_task(worker.run())
    tasks = [run, asyncio.create_task(host_loop())]
    enclave.send(itf.ReadLatestSnapshot(request_id=1))
    reply, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert reply == itf.SnapshotRead(request_id=1, name=None, data=None)
    enclave.send(itf.WriteEntries(entries=[(1, entry(1))]))
    durable, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert isinstance(durable, itf.Durable) and durable.seqno == 1
    assert not run.done() and failures == []
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    worker.storage.close()
    host_end.close()
    enclave.close()


def test_a_snapshot_write_cut_by_a_crash_leaves_no_file_behind_after_restart(
    tmp_path: Path,
) -> None:
    s = make_storage(tmp_path)
    s.close()
    snapshots, workspace = s.snapshots_dir, s.workspace
    # What a host killed inside write_atomically leaves: the temporary, never renamed.
    (snapshots / "snapshot_20_23.tmp").write_bytes(b"half a snapshot")
    (workspace / f"{storage_mod.SEALED_FILE_NAME}.tmp").write_bytes(b"half a blob")
    (snapshots / "operator-notes.tmp").write_bytes(b"not ours")  # not a name we write
    restarted = make_storage(tmp_path)
    assert sorted(os.listdir(snapshots)) == ["operator-notes.tmp"]
    assert not (workspace / f"{storage_mod.SEALED_FILE_NAME}.tmp").exists()
    restarted.close()


def test_snapshots_an_earlier_run_left_uncommitted_are_removed_and_committed_ones_kept(
    tmp_path: Path,
) -> None:
    s = make_storage(tmp_path)
    s.write_snapshot(10, 11, b"committed ten", True)
    s.write_snapshot(20, 23, b"uncommitted twenty", False)  # its run died before commit
    s.close()
    restarted = make_storage(tmp_path)
    assert sorted(os.listdir(restarted.snapshots_dir)) == ["snapshot_10_11.committed"]
    latest = restarted.latest_committed_snapshot()
    assert latest is not None and latest[1] == b"committed ten"
    restarted.close()


async def test_a_held_node_message_leaves_after_the_fsync_and_never_for_truncated_entries(
    tmp_path: Path,
) -> None:
    """`SendWhenDurable` (a backup's answer to entries it received): the host sends it once
    an fsync made its seqno durable, and drops it when a truncation removes that seqno
    first (the answer would count copies this node no longer has)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host_end, enclave = ControlChannel(a, name="host"), ControlChannel(b, name="enclave")
    failures: list[str] = []
    storage = make_storage(tmp_path)
    sent: list[tuple[bytes, int]] = []  # (payload, durable seqno when it left)
    worker = StorageWorker(
        storage,
        host_end.send,
        failures.append,
        lambda address, payload: sent.append((payload, storage.durable_seqno)),
    )
    peer, address = "ab" * 32, "127.0.0.1:1"
    other = entry(3, size=99)  # the new primary's entry 3
    frames = [
        itf.WriteEntries(entries=[(1, entry(1)), (2, entry(2))]),
        itf.SendWhenDurable(2, peer, address, b"answer 2"),
        itf.WriteEntries(entries=[(3, entry(3)), (4, entry(4))]),
        itf.SendWhenDurable(4, peer, address, b"answer 4"),
        itf.Truncate(seqno=2),
        itf.WriteEntries(entries=[(3, other)]),
        itf.SendWhenDurable(3, peer, address, b"answer 3"),
        itf.SendWhenDurable(9, peer, address, b"answer 9"),  # not written: stays held
    ]
    for frame in frames:  # queued before the worker runs: one batch, one fsync
        await worker.submit(frame)
    run = asyncio.create_task(worker.run())
    reply, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert reply == itf.Durable(seqno=3, view=2)
    await asyncio.sleep(0.1)
    assert sent == [(b"answer 2", 3), (b"answer 3", 3)]
    assert storage.read_entries(1, 3, 3).entries == [other]
    # Seqno 4 becomes durable again, with the new primary's entry: the answer held for
    # the old entry 4 was dropped with it and does not leave now either.
    await worker.submit(itf.WriteEntries(entries=[(4, entry(4, size=98))]))
    reply, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert reply == itf.Durable(seqno=4, view=2)
    await asyncio.sleep(0.1)
    assert [payload for payload, _ in sent] == [b"answer 2", b"answer 3"]
    assert failures == []
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    storage.close()
    host_end.close()
    enclave.close()


async def test_node_messages_held_for_seqnos_never_written_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_mod, "HELD_NODE_MESSAGES_MAX", 3)
    storage = make_storage(tmp_path)
    sent: list[bytes] = []
    worker = StorageWorker(
        storage, lambda frame: None, lambda reason: None, lambda a, p: sent.append(p)
    )
    for seqno in range(1, 6):  # nothing is ever written: they can only wait
        await worker.submit(itf.SendWhenDurable(seqno, "ab" * 32, "127.0.0.1:1", b"%d" % seqno))
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)
    assert sent == []
    await worker.submit(itf.WriteEntries(entries=[(s, entry(s)) for s in range(1, 5)]))
    await asyncio.sleep(0.3)
    assert sent == [b"3", b"4"]  # 1 and 2 were dropped when 4 and 5 came; 5 still waits
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    storage.close()
