"""Promises of charter.ledger.chunks: CCF-compatible chunk files, group fsync, truncation, recovery."""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import ccf.ledger
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger.chunks import ChunkPolicy, LedgerReader, LedgerWriter, parse_chunk_name
from charter.ledger.entry import (
    FLAG_FORCE_CHUNK_AFTER,
    FLAG_FORCE_CHUNK_BEFORE,
    commit_evidence,
    commit_evidence_digest,
    encode_entry,
)
from charter.ledger.errors import AuditError, DecodeError, LedgerWriteError

SECRET = bytes(range(32))


def _raw(seqno: int, *, cut: bool = False, size: int = 10) -> bytes:
    return encode_entry(
        seqno=seqno,
        view=1,
        public={"public:t": {seqno.to_bytes(8, "little"): b"v" * size}},
        private={"p": {b"k": b"secret"}},
        secret=SECRET,
        commit_evidence_digest=commit_evidence_digest(commit_evidence(SECRET, 1, seqno)),
        flags=FLAG_FORCE_CHUNK_AFTER if cut else 0,
    )


def _write(directory: Path, count: int, cut_every: int = 4) -> dict[int, bytes]:
    entries = {s: _raw(s, cut=s % cut_every == 0) for s in range(1, count + 1)}
    with LedgerWriter(str(directory)) as writer:
        for seqno, raw in entries.items():
            writer.append(seqno, raw)
    return entries


def test_chunk_is_completed_after_flagged_entry_with_ccf_names(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    assert sorted(os.listdir(tmp_path)) == ["ledger_1-4", "ledger_5-8", "ledger_9"]
    data = (tmp_path / "ledger_1-4").read_bytes()
    table_offset = struct.unpack_from("<Q", data)[0]
    positions = struct.unpack_from("<4I", data, table_offset)
    assert positions[0] == 8 and len(data) == table_offset + 16
    assert struct.unpack_from("<Q", (tmp_path / "ledger_9").read_bytes())[0] == 0


def test_writer_reader_round_trip_across_chunks(tmp_path: Path) -> None:
    entries = _write(tmp_path, 10)
    reader = LedgerReader(str(tmp_path))
    assert reader.last_seqno == 10
    assert dict(reader.entries()) == entries
    assert dict(reader.entries(3, 6)) == {s: entries[s] for s in range(3, 7)}
    assert reader.get(7) == entries[7]


def test_commit_renames_complete_chunks_and_ccf_reads_them(tmp_path: Path) -> None:
    entries = _write(tmp_path, 10)
    writer = LedgerWriter(str(tmp_path))
    writer.commit(9)
    writer.close()
    assert sorted(os.listdir(tmp_path)) == [
        "ledger_1-4.committed",
        "ledger_5-8.committed",
        "ledger_9",
    ]
    ccf_raw = [tx.get_raw_tx() for tx in ccf.ledger.Ledger([str(tmp_path)]).transactions()]
    assert ccf_raw == [entries[s] for s in range(1, 9)]
    committed = LedgerReader(str(tmp_path), committed_only=True)
    assert committed.last_seqno == 8


def test_flush_returns_highest_durable_seqno(tmp_path: Path) -> None:
    writer = LedgerWriter(str(tmp_path))
    for seqno in range(1, 6):
        writer.append(seqno, _raw(seqno, cut=seqno == 3))
    assert writer.durable_seqno == 0
    assert writer.flush() == 5
    writer.close()


def test_truncate_then_append_within_open_chunk(tmp_path: Path) -> None:
    entries = _write(tmp_path, 10)
    with LedgerWriter(str(tmp_path)) as writer:
        writer.truncate(9)
        replacement = _raw(10, size=99)
        writer.append(10, replacement)
    assert dict(LedgerReader(str(tmp_path)).entries()) == {**entries, 10: replacement}


def test_truncate_across_chunk_files_reopens_the_holding_chunk(tmp_path: Path) -> None:
    entries = _write(tmp_path, 10)
    with LedgerWriter(str(tmp_path)) as writer:
        writer.truncate(2)
        assert writer.last_seqno == 2
        assert sorted(os.listdir(tmp_path)) == ["ledger_1"]
        for seqno in range(3, 7):
            writer.append(seqno, _raw(seqno, cut=seqno == 5))
    assert sorted(os.listdir(tmp_path)) == ["ledger_1-5", "ledger_6"]
    read = dict(LedgerReader(str(tmp_path)).entries())
    assert read[2] == entries[2] and read[5] == _raw(5, cut=True) and len(read) == 6


def test_truncate_at_a_chunk_end_keeps_the_chunk_complete(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    with LedgerWriter(str(tmp_path)) as writer:
        writer.truncate(8)
    assert sorted(os.listdir(tmp_path)) == ["ledger_1-4", "ledger_5-8"]


def test_truncate_below_committed_point_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    writer = LedgerWriter(str(tmp_path))
    writer.commit(8)
    with pytest.raises(AssertionError):
        writer.truncate(7)
    writer.close()


def test_reopening_resumes_after_a_torn_last_entry(tmp_path: Path) -> None:
    entries = _write(tmp_path, 10)
    path = tmp_path / "ledger_9"
    whole = path.read_bytes()
    path.write_bytes(whole + _raw(11)[:30])  # a crash in the middle of writing entry 11
    writer = LedgerWriter(str(tmp_path))
    assert writer.last_seqno == 10
    assert writer.recovered_torn_bytes == 30
    assert path.read_bytes() == whole
    writer.append(11, _raw(11))
    writer.close()
    assert dict(LedgerReader(str(tmp_path)).entries()) == {**entries, 11: _raw(11)}


def test_reopening_finishes_a_completion_interrupted_before_rename(tmp_path: Path) -> None:
    _write(tmp_path, 8)
    os.rename(tmp_path / "ledger_5-8", tmp_path / "ledger_5")
    writer = LedgerWriter(str(tmp_path))
    assert writer.last_seqno == 8
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["ledger_1-4", "ledger_5-8"]


def test_reader_rejects_gap_between_chunks(tmp_path: Path) -> None:
    _write(tmp_path, 8)
    os.rename(tmp_path / "ledger_5-8", tmp_path / "ledger_6-9")
    with pytest.raises(AuditError) as info:
        LedgerReader(str(tmp_path))
    assert info.value.seqno == 5


def test_reader_rejects_entry_count_that_disagrees_with_name(tmp_path: Path) -> None:
    _write(tmp_path, 8)
    os.rename(tmp_path / "ledger_5-8", tmp_path / "ledger_5-9")
    with pytest.raises(AuditError):
        list(LedgerReader(str(tmp_path)).entries())


def test_reader_rejects_offset_table_that_disagrees_with_entries(tmp_path: Path) -> None:
    _write(tmp_path, 8)
    path = tmp_path / "ledger_1-4"
    data = bytearray(path.read_bytes())
    table_offset = struct.unpack_from("<Q", data)[0]
    data[table_offset + 4] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError) as info:
        list(LedgerReader(str(tmp_path)).entries())
    assert info.value.field == "offset_table"


def test_reader_skips_ignored_and_recovery_files_like_ccf(tmp_path: Path) -> None:
    _write(tmp_path, 8)
    os.rename(tmp_path / "ledger_5-8", tmp_path / "ledger_5-8.committed.recovery")
    (tmp_path / "ledger_9-12.ignored").write_bytes(b"junk")
    assert LedgerReader(str(tmp_path)).last_seqno == 4
    assert LedgerReader(str(tmp_path), read_recovery_files=True).last_seqno == 8


def test_chunk_names_are_validated() -> None:
    assert parse_chunk_name("ledger_5-9.committed").last == 9
    assert parse_chunk_name("ledger_10").last is None
    for bad in ("ledger_x", "ledger_9-5", "ledger_0-3", "ledger_5.committed", "ledger_1-2.txt"):
        with pytest.raises(DecodeError):
            parse_chunk_name(bad)


def test_chunk_policy_flags_first_signature_past_the_threshold() -> None:
    policy = ChunkPolicy(chunk_size_bytes=1000)
    assert policy.flags_for_signature(100) == 0
    policy.record(950, 0)
    assert policy.flags_for_signature(100) == FLAG_FORCE_CHUNK_AFTER
    policy.record(100, FLAG_FORCE_CHUNK_AFTER)
    assert policy.bytes_in_chunk == 0


def test_reopening_discards_an_offset_table_that_did_not_fully_reach_disk(tmp_path: Path) -> None:
    entries = _write(tmp_path, 8)
    data = (tmp_path / "ledger_5-8").read_bytes()
    os.unlink(tmp_path / "ledger_5-8")
    (tmp_path / "ledger_5").write_bytes(data[:-6])  # header written, table cut short
    with LedgerWriter(str(tmp_path)) as writer:
        assert writer.last_seqno == 8
        assert writer.recovered_torn_bytes == 10
        writer.append(9, _raw(9, cut=True))
    assert dict(LedgerReader(str(tmp_path)).entries()) == {**entries, 9: _raw(9, cut=True)}


def test_an_empty_directory_may_start_after_a_snapshot_seqno(tmp_path: Path) -> None:
    with LedgerWriter(str(tmp_path)) as writer:
        writer.append(501, _raw(501))
        writer.append(502, _raw(502, cut=True))
        with pytest.raises(ValueError):
            writer.append(504, _raw(504))
    assert sorted(os.listdir(tmp_path)) == ["ledger_501-502"]
    reader = LedgerReader(str(tmp_path))
    assert (reader.first_seqno, reader.last_seqno) == (501, 502)
    with LedgerWriter(str(tmp_path)) as writer:
        assert writer.last_seqno == 502
        writer.append(503, _raw(503))


def test_entry_flagged_force_chunk_before_starts_a_new_chunk(tmp_path: Path) -> None:
    before = encode_entry(
        seqno=3,
        view=1,
        public={},
        private={},
        secret=SECRET,
        commit_evidence_digest=commit_evidence_digest(commit_evidence(SECRET, 1, 3)),
        flags=FLAG_FORCE_CHUNK_BEFORE,
    )
    with LedgerWriter(str(tmp_path)) as writer:
        writer.append(1, _raw(1))
        writer.append(2, _raw(2))
        writer.append(3, before)
        writer.append(4, _raw(4, cut=True))
    assert sorted(os.listdir(tmp_path)) == ["ledger_1-2", "ledger_3-4"]


@contextlib.contextmanager
def _small_disk(path: Path, size_bytes: int) -> Iterator[Path]:
    """A real file system of `size_bytes` (tmpfs) at `path`; skips where mounting is denied."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_names_no_space_the_chunk_file_and_the_bytes_needed(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk", 64 * 1024) as disk:
        ledger = disk / "ledger"
        writer = LedgerWriter(str(ledger))
        seqno = 0
        with pytest.raises(LedgerWriteError) as caught:
            for seqno in range(1, 10_000):  # bounded: 64 KiB holds far fewer 1 KiB entries
                writer.append(seqno, _raw(seqno, size=1000))
        err = caught.value
        message = str(err)
        assert message.startswith("no space left on device: "), message
        assert f"writing entry {seqno} to {ledger / 'ledger_1'}" in message
        assert err.needed_bytes is not None and 0 < err.needed_bytes <= len(_raw(seqno, size=1000))
        assert f"needed {err.needed_bytes} more bytes" in message
        assert err.path == str(ledger / "ledger_1") and err.code == "LedgerWriteError"
        writer.close()
        # No partial entry is left behind: the file ends at the last whole entry.
        reopened = LedgerWriter(str(ledger))
        assert reopened.last_seqno == seqno - 1 and reopened.recovered_torn_bytes == 0
        # Once space is freed the same directory takes the entry that did not fit.
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        reopened.append(seqno, _raw(seqno, size=1000))
        assert reopened.flush() == seqno
        reopened.close()


def _flagged(seqno: int, flags: int, size: int = 10) -> bytes:
    return encode_entry(
        seqno=seqno,
        view=1,
        public={"public:t": {seqno.to_bytes(8, "little"): b"v" * size}},
        private={},
        secret=SECRET,
        commit_evidence_digest=commit_evidence_digest(commit_evidence(SECRET, 1, seqno)),
        flags=flags,
    )


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.sampled_from([1, 501]),
    flags=st.lists(
        st.sampled_from([0, 0, 0, FLAG_FORCE_CHUNK_AFTER, FLAG_FORCE_CHUNK_BEFORE]),
        min_size=1,
        max_size=40,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=8),
)
def test_batched_appends_write_the_same_files_as_one_entry_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, first: int, flags: list[int], cuts: list[int]
) -> None:
    """The host writes each WriteEntries frame with `append_many` (one pwrite per chunk):
    however the entries are split into batches, the chunk files are byte for byte those of
    appending them one by one, chunk cuts before and after flagged entries included."""
    entries = [(first + i, _flagged(first + i, f)) for i, f in enumerate(flags)]
    one_by_one, batched = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("batched")
    with LedgerWriter(str(one_by_one)) as writer:
        for seqno, raw in entries:
            writer.append(seqno, raw)
    bounds = sorted({0, len(entries), *(c for c in cuts if c < len(entries))})
    with LedgerWriter(str(batched)) as writer:
        for start, end in itertools.pairwise(bounds):
            writer.append_many(entries[start:end])
        assert writer.last_seqno == entries[-1][0]
    assert _files(batched) == _files(one_by_one)


def test_a_refused_entry_stops_a_batch_after_writing_the_entries_before_it(
    tmp_path: Path,
) -> None:
    with LedgerWriter(str(tmp_path)) as writer:
        writer.append_many([(1, _raw(1)), (2, _raw(2))])
        with pytest.raises(ValueError, match="append seqno 6 after 4"):
            writer.append_many([(3, _raw(3)), (4, _raw(4)), (6, _raw(6))])
        assert writer.last_seqno == 4
        with pytest.raises(ValueError, match="append seqno 7 after 4"):
            writer.append_many([(7, _raw(7))])
        with pytest.raises(ValueError, match="shorter than its header"):
            writer.append_many([(5, _raw(5)), (6, b"\x01")])
        assert writer.last_seqno == 5
        assert writer.flush() == 5
    reader = LedgerReader(str(tmp_path))
    assert [reader.get(s) for s in range(1, 6)] == [_raw(s) for s in range(1, 6)]


def test_a_batch_the_full_disk_cannot_take_leaves_no_part_of_it(tmp_path: Path) -> None:
    """One pwrite for the batch: on a full disk none of it stays, the error names the
    entries and the chunk file, and once space is freed the same batch is taken."""
    with _small_disk(tmp_path / "disk", 64 * 1024) as disk:
        ledger = disk / "ledger"
        writer = LedgerWriter(str(ledger))
        writer.append_many([(s, _raw(s, size=1000)) for s in range(1, 11)])
        assert writer.flush() == 10
        batch = [(s, _raw(s, size=1000)) for s in range(11, 111)]  # ~100 KiB > the disk
        with pytest.raises(LedgerWriteError) as caught:
            writer.append_many(batch)
        message = str(caught.value)
        assert message.startswith("no space left on device: "), message
        assert f"writing entries 11-110 to {ledger / 'ledger_1'}" in message
        assert writer.last_seqno == 10
        writer.close()
        reopened = LedgerWriter(str(ledger))
        assert reopened.last_seqno == 10 and reopened.recovered_torn_bytes == 0
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        reopened.append_many(batch)
        assert reopened.flush() == 110
        reopened.close()
