"""The bounded disk on the host (issue 15): files_cleanup's rule on real files, reads that
fall back to read-only ledger directories and the archive, and the operator file lookups."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pydantic
import pytest

from charter.enclave_app import interface as itf
from charter.host.storage import Storage
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER, encode_entry

CHUNK_ENTRIES = 5


def entry(seqno: int) -> bytes:
    return encode_entry(
        seqno=seqno,
        view=2,
        public={"public:records": {b"k%d" % seqno: b"v" * 20}},
        private={},
        secret=bytes(32),
        commit_evidence_digest=bytes(32),
        flags=FLAG_FORCE_CHUNK_AFTER if seqno % CHUNK_ENTRIES == 0 else 0,
    )


def make_storage(
    tmp_path: Path,
    *,
    archive: Path | None = None,
    max_snapshots: int | None = None,
    read_only: list[Path] | None = None,
    name: str = "ws",
) -> Storage:
    return Storage(
        workspace=tmp_path / name,
        ledger_dir=tmp_path / name / "ledger",
        snapshots_dir=tmp_path / name / "snapshots",
        chunk_size_bytes=5_000_000,
        archive_dir=archive,
        max_snapshots=max_snapshots,
        read_only_dirs=read_only,
    )


def written(s: Storage, last: int, *, commit: int | None = None) -> list[bytes]:
    raws = [entry(i) for i in range(1, last + 1)]
    assert s.write_entries(list(enumerate(raws, start=1)))
    s.flush()
    s.commit(last if commit is None else commit)
    return raws


def snapshot(s: Storage, seqno: int) -> None:
    s.write_snapshot(seqno, seqno + 1, b"snapshot %d" % seqno, True)


def archive_all(s: Storage, archive: Path) -> None:
    archive.mkdir(exist_ok=True)
    for f in s.ledger_dir.iterdir():
        if f.name.endswith(".committed"):
            shutil.copyfile(f, archive / f.name)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_the_newest_max_snapshots_committed_snapshots_are_kept(tmp_path: Path) -> None:
    s = make_storage(tmp_path, max_snapshots=2)
    for seqno in (10, 20, 30, 40):
        snapshot(s, seqno)
    s.write_snapshot(50, 51, b"pending", False)
    s.write_snapshot(25, 26, b"abandoned", False)  # older than a committed one
    report = s.run_cleanup()
    assert sorted(report.snapshots_deleted) == [
        "snapshot_10_11.committed",
        "snapshot_20_21.committed",
        "snapshot_25_26",
    ]
    left = sorted(p.name for p in s.snapshots_dir.iterdir())
    assert left == ["snapshot_30_31.committed", "snapshot_40_41.committed", "snapshot_50_51"]


def test_archived_chunks_before_the_latest_snapshot_are_deleted_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    raws = written(s, 30, commit=27)
    archive_all(s, archive)
    snapshot(s, 17)
    before = {p.name: sha(p) for p in s.ledger_dir.iterdir()}
    report = s.run_cleanup()
    # Chunks ending before seqno 17: 1-5, 6-10, 11-15. 16-20 holds the snapshot: kept.
    assert report.chunks_deleted == [
        "ledger_1-5.committed",
        "ledger_6-10.committed",
        "ledger_11-15.committed",
    ]
    for name in report.chunks_deleted:
        assert not (s.ledger_dir / name).exists()
        assert sha(archive / name) == before[name]
    assert (s.ledger_dir / "ledger_16-20.committed").exists()
    assert (s.ledger_dir / "ledger_26-30").exists()  # complete, not committed: kept
    # Every entry is still readable, from the archive where it is no longer local.
    assert s.read_entries(1, 1, 30).entries == raws


def test_an_archive_copy_that_differs_blocks_deletion_and_is_logged(
    tmp_path: Path, caplog: object
) -> None:
    import logging

    assert hasattr(caplog, "set_level")
    caplog.set_level(logging.WARNING)  # type: ignore[attr-defined]
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    written(s, 20)
    archive_all(s, archive)
    copy = archive / "ledger_6-10.committed"
    data = bytearray(copy.read_bytes())
    data[20] ^= 1  # same name, same size: only the digest tells
    copy.write_bytes(bytes(data))
    snapshot(s, 16)
    report = s.run_cleanup()
    # Oldest first, stopping there: the ledger directory stays one contiguous run.
    assert report.chunks_deleted == ["ledger_1-5.committed"]
    assert report.chunks_blocked == ["ledger_6-10.committed"]
    assert (s.ledger_dir / "ledger_6-10.committed").exists()
    assert (s.ledger_dir / "ledger_11-15.committed").exists()
    assert "ledger_6-10.committed reason=archive copy differs" in caplog.text  # type: ignore[attr-defined]
    assert s.run_cleanup().chunks_blocked == ["ledger_6-10.committed"]  # logged once only
    assert caplog.text.count("reason=archive copy differs") == 1  # type: ignore[attr-defined]
    # Repaired archive copy: deleted on the next pass, and the ones held back with it.
    shutil.copyfile(s.ledger_dir / "ledger_6-10.committed", copy)
    assert s.run_cleanup().chunks_deleted == ["ledger_6-10.committed", "ledger_11-15.committed"]
    assert s.read_entries(1, 1, 20).entries == [entry(i) for i in range(1, 21)]


def test_a_chunk_not_yet_archived_holds_back_the_later_ones(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    written(s, 20)
    archive_all(s, archive)
    (archive / "ledger_6-10.committed").unlink()
    snapshot(s, 16)
    assert s.run_cleanup().chunks_deleted == ["ledger_1-5.committed"]
    assert {p.name for p in s.ledger_dir.iterdir()} == {
        "ledger_6-10.committed",
        "ledger_11-15.committed",
        "ledger_16-20.committed",
    }


def test_no_chunk_is_deleted_without_a_committed_snapshot(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    written(s, 20)
    archive_all(s, archive)
    s.write_snapshot(16, 17, b"pending", False)
    assert s.run_cleanup().chunks_deleted == []
    assert len(list(s.ledger_dir.iterdir())) == 4


def test_a_restarted_writer_resumes_after_deleted_chunks(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    raws = written(s, 20)
    archive_all(s, archive)
    snapshot(s, 16)
    s.run_cleanup()
    s.close()
    again = make_storage(tmp_path, archive=archive)
    assert again.last_seqno == 20
    assert again.write_entries([(21, entry(21))])
    again.flush()
    assert again.read_entries(1, 1, 21).entries == [*raws, entry(21)]


def test_entries_missing_locally_are_read_from_read_only_directories(tmp_path: Path) -> None:
    # A node that joined from a snapshot at 10 holds 11.. only; another node's ledger, made
    # read-only, holds the rest.
    full = make_storage(tmp_path, name="full")
    raws = written(full, 20)
    joined = make_storage(tmp_path, name="joined", read_only=[full.ledger_dir])
    assert joined.write_entries([(i, raws[i - 1]) for i in range(11, 21)])
    joined.flush()
    assert joined.read_entries(1, 3, 12).entries == raws[2:12]
    assert joined.read_entries(1, 1, 20).entries == raws
    alone = make_storage(tmp_path, name="alone")
    assert alone.write_entries([(i, raws[i - 1]) for i in range(11, 21)])
    alone.flush()
    # Found nowhere: an empty answer, as the historical reader expects.
    assert alone.read_entries(1, 3, 12).entries == []


def test_a_node_that_has_written_nothing_yet_reads_old_entries_from_read_only_directories(
    tmp_path: Path,
) -> None:
    # Just joined from a snapshot, before its first entry reached its own ledger: what came
    # before is still found in the read-only directory (it was answered empty, a race the
    # snapshot e2e test hit now and then).
    full = make_storage(tmp_path, name="full")
    raws = written(full, 20)
    fresh = make_storage(tmp_path, name="fresh", read_only=[full.ledger_dir])
    assert fresh.last_seqno == 0
    assert fresh.read_entries(1, 2, 4).entries == raws[1:4]
    assert make_storage(tmp_path, name="bare").read_entries(1, 2, 4).entries == []


def test_uncommitted_chunks_of_a_read_only_directory_are_never_read(tmp_path: Path) -> None:
    full = make_storage(tmp_path, name="full")
    raws = written(full, 20, commit=10)
    joined = make_storage(tmp_path, name="joined", read_only=[full.ledger_dir])
    assert joined.write_entries([(i, raws[i - 1]) for i in range(16, 21)])
    joined.flush()
    assert joined.read_entries(1, 1, 20).entries == raws[:10]


def test_operator_file_lookups_find_committed_files_only(tmp_path: Path) -> None:
    s = make_storage(tmp_path)
    written(s, 20, commit=12)
    snapshot(s, 10)
    s.write_snapshot(15, 16, b"pending", False)
    found = s.read_operator_file(1, "ledger_chunk", "", 7)
    assert found == itf.OperatorFileRead(1, "ledger_6-10.committed", None, found.size_bytes)
    chunk = s.ledger_dir / "ledger_6-10.committed"
    assert s.read_operator_file(2, "ledger_chunk", chunk.name, 0).data == chunk.read_bytes()
    assert s.read_operator_file(3, "ledger_chunk", "", 13).name is None  # not committed
    assert s.read_operator_file(4, "ledger_chunk", "ledger_11-15", 0).name is None
    assert s.read_operator_file(5, "ledger_chunk", "../ws/sealed.bin", 0).name is None
    assert s.read_operator_file(6, "snapshot", "", 0).name == "snapshot_10_11.committed"
    assert s.read_operator_file(7, "snapshot", "", 11).name is None
    assert s.read_operator_file(8, "snapshot", "snapshot_15_16", 0).name is None
    read = s.read_operator_file(9, "snapshot", "snapshot_10_11.committed", 0)
    assert read.data == b"snapshot 10"


def test_chunks_moved_between_read_only_directories_are_still_found(tmp_path: Path) -> None:
    full = make_storage(tmp_path, name="full")
    raws = written(full, 20)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for f in full.ledger_dir.iterdir():
        shutil.copyfile(f, first / f.name)
    joined = make_storage(tmp_path, name="joined", read_only=[first, second])
    assert joined.write_entries([(i, raws[i - 1]) for i in range(16, 21)])
    joined.flush()
    assert joined.read_entries(1, 1, 15).entries == raws[:15]
    for f in list(first.iterdir()):  # the operator moves them after they were listed
        shutil.move(str(f), second / f.name)
    assert joined.read_entries(2, 1, 15).entries == raws[:15]


def _config(tmp_path: Path, **extra: object) -> itf.NodeConfig:
    return itf.NodeConfig.model_validate(
        {"workspace": str(tmp_path), "start": {"mode": "join", "join": JOIN}, **extra}
    )


JOIN = {"target": "127.0.0.1:1", "service_cert": "/nonexistent.pem"}


def test_operator_features_are_per_interface_and_the_older_field_adds_to_them(
    tmp_path: Path,
) -> None:
    assert _config(tmp_path).operator_features() == frozenset()
    per_interface = _config(
        tmp_path, rpc_interface={"enabled_operator_features": ["LedgerChunkRead"]}
    )
    assert per_interface.operator_features() == {"LedgerChunkRead"}
    both = _config(
        tmp_path,
        rpc_interface={"enabled_operator_features": ["LedgerChunkRead"]},
        enabled_operator_features=["SnapshotRead", "LedgerChunkRead"],
    )
    assert both.rpc_interface.enabled_operator_features == ["LedgerChunkRead", "SnapshotRead"]
    with pytest.raises(pydantic.ValidationError):
        _config(tmp_path, rpc_interface={"enabled_operator_features": ["SnapshotCreate"]})


def test_the_archive_cannot_be_the_ledger_directory(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="must not be the ledger_dir"):
        _config(tmp_path, files_cleanup={"ledger_archive_dir": str(tmp_path / "ledger")})
    with pytest.raises(pydantic.ValidationError):
        _config(tmp_path, files_cleanup={"max_snapshots": 0})
    config = _config(
        tmp_path,
        files_cleanup={"max_snapshots": 3, "ledger_archive_dir": str(tmp_path / "archive")},
        ledger_read_only_dirs=[str(tmp_path / "ro")],
    )
    assert config.files_cleanup.max_snapshots == 3
    assert config.ledger_read_only_dirs == [tmp_path / "ro"]


def test_an_entry_sent_again_after_its_chunk_was_archived_and_removed_is_skipped(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    raws = written(s, 20)
    archive_all(s, archive)
    snapshot(s, 16)
    assert s.run_cleanup().chunks_deleted[0] == "ledger_1-5.committed"
    assert s.write_entries([(3, raws[2]), (4, raws[3])])  # a duplicate delivery
    assert s.write_entries([(21, entry(21))])
    s.flush()
    assert s.read_entries(1, 1, 21).entries == [*raws, entry(21)]


def test_an_archive_directory_gone_or_replaced_by_a_file_keeps_every_chunk_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunks were held back silently: the operator could not tell why the disk kept filling.
    caplog.set_level(logging.INFO, logger="charter.host.ledger_files")
    archive = tmp_path / "archive"
    s = make_storage(tmp_path, archive=archive)
    written(s, 20)
    archive_all(s, archive)
    snapshot(s, 16)
    local = sorted(p.name for p in s.ledger_dir.iterdir())
    shutil.rmtree(archive)
    assert s.run_cleanup().chunks_deleted == []
    assert s.run_cleanup().chunks_deleted == []
    assert sorted(p.name for p in s.ledger_dir.iterdir()) == local
    gone = f"event=ledger_archive_unusable archive={archive} reason=No such file or directory"
    assert caplog.text.count(gone) == 1  # once, not every pass
    archive.write_bytes(b"a file where the archive directory should be")
    assert s.run_cleanup().chunks_deleted == []
    assert sorted(p.name for p in s.ledger_dir.iterdir()) == local
    assert "reason=not a directory kept_from=ledger_1-5.committed" in caplog.text
    # Put right: the next pass deletes what the archive holds, and says it is usable again.
    archive.unlink()
    archive_all(s, archive)
    assert s.run_cleanup().chunks_deleted == [
        "ledger_1-5.committed",
        "ledger_6-10.committed",
        "ledger_11-15.committed",
    ]
    assert f"event=ledger_archive_usable archive={archive}" in caplog.text
