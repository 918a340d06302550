"""What the host reads from read-only ledger directories and the archive is outside bytes (the
operator's, or whoever can write there): changed, cut, random and oddly named files never
make a read or a cleanup pass raise; a read answers the genuine entries it can, or fewer."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from test_host_files_cleanup import entry, make_storage, snapshot, written

ROUNDS = 300


def test_damaged_archive_files_never_break_reads_or_cleanup(tmp_path: Path) -> None:
    rng = random.Random(15)
    source = make_storage(tmp_path, name="source")
    raws = written(source, 40)
    originals = {p.name: p.read_bytes() for p in source.ledger_dir.iterdir()}
    archive = tmp_path / "archive"
    archive.mkdir()
    # Strange names beside the chunks: all skipped.
    for odd in ("ledger_x.committed", "ledger_5-2.committed", "ledger_.committed", "notes"):
        (archive / odd).write_bytes(b"junk")
    (archive / "ledger_99-120.committed").mkdir()
    joined = make_storage(tmp_path, name="joined", archive=archive)
    assert joined.write_entries([(i, raws[i - 1]) for i in range(36, 41)])
    joined.flush()
    joined.commit(40)
    for round_ in range(ROUNDS):
        for name, data in originals.items():
            kind = rng.randrange(5)
            if kind == 0:
                damaged = bytearray(data)
                for _ in range(rng.randint(1, 6)):
                    damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
                content = bytes(damaged)
            elif kind == 1:
                content = data[: rng.randrange(len(data))]
            elif kind == 2:
                content = rng.randbytes(rng.randint(0, 300))
            else:
                content = data
            (archive / name).write_bytes(content)
        first = rng.randint(1, 40)
        reply = joined.read_entries(round_, first, rng.randint(first, 45))
        assert reply.first_seqno == first
        assert len(reply.entries) <= 41 - first
        if round_ % 30 == 0:
            snapshot(joined, 38)
            joined.run_cleanup()
    # Put right, every entry reads back as written.
    for name, data in originals.items():
        (archive / name).write_bytes(data)
    assert joined.read_entries(0, 1, 40).entries == raws


def test_a_chunk_name_that_lies_about_its_range_is_not_read(tmp_path: Path) -> None:
    source = make_storage(tmp_path, name="source")
    raws = written(source, 10)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    # The entries of 1-5 under the name of 1-4: the entry count disagrees with the name.
    shutil.copyfile(source.ledger_dir / "ledger_1-5.committed", read_only / "ledger_1-4.committed")
    joined = make_storage(tmp_path, name="joined", read_only=[read_only])
    assert joined.write_entries([(i, raws[i - 1]) for i in range(6, 11)])
    joined.flush()
    assert joined.read_entries(1, 1, 5).entries == []
    assert joined.read_entries(2, 6, 7).entries == [entry(6), entry(7)]
