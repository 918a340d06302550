"""Index strategies (enclave_app/indexing/): what the node feeds them, their memory bound, and
the sealed blobs the host keeps for them (CCF's LFS).

The enclave side is driven as the node drives it (a real `Store` whose hooks feed the
`Indexer`, `committed(seqno)` as commit advances); the host side is the real
`charter.host.index_blobs.IndexBlobs` on a temporary folder, answering the frames the
enclave sent.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app import interface as itf
from charter.enclave_app.indexing import (
    IndexBlobRejected,
    Indexer,
    IndexNotReady,
    IndexRangeNotCovered,
    IndexRangeTooLarge,
    SeqnosByKey,
    SeqnosByKeyIndex,
)
from charter.enclave_app.indexing.blobs import BlobSealer, decode_bucket, encode_bucket
from charter.enclave_app.kv import U64, Store
from charter.host.index_blobs import IndexBlobs

MAP = "records"


class Harness:
    """One node's store and indexer, with a host blob folder answering its frames."""

    def __init__(self, tmp: Path, *, buckets_in_memory: int = 2, seqnos_per_bucket: int = 4):
        self.store = Store()
        self.outbox: list[itf.Frame] = []
        self.host = IndexBlobs(tmp, lambda frame: None)
        self.host.reset()
        self.strategy = SeqnosByKey(MAP, key_codec=U64, seqnos_per_bucket=seqnos_per_bucket)
        self.metrics: dict[str, int] = {}
        self.indexer = Indexer(
            [self.strategy],
            store=self.store,
            buckets_in_memory=buckets_in_memory,
            key=lambda: os.urandom(32),
            send=self.outbox.append,
            metrics=self.metrics,
        )
        index = self.indexer.indexes[self.strategy.name]
        assert isinstance(index, SeqnosByKeyIndex)
        self.index = index
        # What was written, for the expected answers: id -> seqnos.
        self.writes: dict[int, list[int]] = {}

    def write(self, *ids: int, other_map: bool = False) -> int:
        seqno = self.store.version + 1
        write_set: dict[str, dict[bytes, bytes | None]] = {
            MAP: {U64.encode(i): b"msg" for i in ids}
        }
        if other_map:
            write_set["public:other"] = {b"k": b"v"}
        self.store.apply(write_set, seqno)
        for i in ids:
            self.writes.setdefault(i, []).append(seqno)
        return seqno

    def pump(self) -> None:
        """The host takes the enclave's frames and answers its fetches."""
        frames, self.outbox[:] = list(self.outbox), []
        for frame in frames:
            if isinstance(frame, itf.IndexBlobStore):
                self.host.store(frame)
            elif isinstance(frame, itf.IndexBlobFetch):
                blob = self.host.fetch(frame)
                self.indexer.on_blob_fetched(
                    itf.IndexBlobFetched(
                        request_id=frame.request_id,
                        strategy=frame.strategy,
                        bucket=frame.bucket,
                        blob=blob,
                    )
                )

    def query(self, key: int, from_seqno: int, to_seqno: int) -> list[int]:
        for _ in range(3):
            try:
                return self.index.get_write_txs_in_range(key, from_seqno, to_seqno)
            except IndexNotReady:
                self.pump()
        raise AssertionError("the index never became ready")

    def expected(self, key: int, from_seqno: int, to_seqno: int) -> list[int]:
        return [s for s in self.writes.get(key, []) if from_seqno <= s <= to_seqno]

    def blob_files(self) -> list[Path]:
        return sorted(self.host.directory.rglob("*.blob"))


def test_seqnos_by_key_answers_the_exact_seqnos_across_bucket_boundaries(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=64, seqnos_per_bucket=4)
    rng = random.Random(7)
    for _ in range(60):
        h.write(*rng.sample(range(5), rng.randint(1, 3)))
    h.indexer.committed(60)
    for key in range(6):
        for from_seqno in range(1, 61):
            for to_seqno in (from_seqno, from_seqno + 3, from_seqno + 4, 60):
                to_seqno = min(to_seqno, 60)
                assert h.query(key, from_seqno, to_seqno) == h.expected(key, from_seqno, to_seqno)


def test_only_committed_transactions_are_indexed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write(1)
    h.write(1)
    h.indexer.committed(1)
    assert h.index.indexed_to == 1
    assert h.query(1, 1, 1) == [1]
    # Seqno 2 is applied but not committed: the index does not claim it yet.
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(1, 1, 2)
    h.indexer.committed(2)
    assert h.query(1, 1, 2) == [1, 2]


def test_a_rolled_back_suffix_is_never_indexed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write(1)
    h.write(2)
    h.indexer.committed(1)
    h.write(2)  # seqno 3, rolled back with seqno 2 by a view change
    h.store.rollback(1)
    h.writes = {1: [1]}
    h.write(3)  # the new primary's seqno 2
    h.write(1)  # seqno 3
    h.indexer.committed(3)
    assert h.query(2, 1, 3) == []
    assert h.query(3, 1, 3) == [2]
    assert h.query(1, 1, 3) == [1, 3]


def test_each_committed_transaction_is_fed_once_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=64)
    for seqno in range(1, 31):
        h.write(seqno % 3, other_map=seqno % 2 == 0)
        if seqno % 7 == 0:
            h.indexer.committed(seqno)
            h.indexer.committed(seqno)  # a repeated commit report feeds nothing twice
    h.indexer.committed(30)
    for key in range(3):
        assert h.query(key, 1, 30) == h.expected(key, 1, 30)


def test_buckets_beyond_the_memory_bound_go_to_the_host_and_come_back(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=2, seqnos_per_bucket=4)
    for seqno in range(1, 101):
        h.write(seqno % 5)
        h.indexer.committed(seqno)
        # The bucket being filled plus at most `buckets_in_memory` completed ones.
        assert h.index.buckets_held <= 3
    h.pump()
    assert h.index.buckets_offloaded == 100 // 4 + 1 - 3
    assert len(h.blob_files()) == h.index.buckets_offloaded
    # An old range is not in memory: the first ask answers "not ready", the fetch follows.
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(3, 4, 11)
    h.pump()
    assert h.index.get_write_txs_in_range(3, 4, 11) == h.expected(3, 4, 11)
    for key in range(5):
        for start in range(1, 100, 3):
            end = min(100, h.index.page_end(start), start + 6)
            assert h.query(key, start, end) == h.expected(key, start, end)
    assert h.index.buckets_held <= 3
    assert h.metrics["index_blobs_fetched"] > 0


def test_blobs_hold_no_plaintext_key(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=4)
    marker = 0x5EC12E7_5EC12E7
    for _ in range(40):
        h.write(marker)
    h.indexer.committed(40)
    h.pump()
    files = h.blob_files()
    assert files
    for path in files:
        data = path.read_bytes()
        assert U64.encode(marker) not in data
        assert b"CIX1" not in data  # the plaintext's magic: nothing is in clear


def test_a_blob_the_host_altered_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=4)
    for seqno in range(1, 41):
        h.write(seqno % 2)
    h.indexer.committed(40)
    h.pump()
    path = h.host.path(h.strategy.name, 1)  # seqnos 4..7
    good = path.read_bytes()
    altered = bytearray(good)
    altered[len(altered) // 2] ^= 0x01
    path.write_bytes(bytes(altered))
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(1, 4, 7)
    h.pump()
    with pytest.raises(IndexBlobRejected, match="failed authentication") as refused:
        h.index.get_write_txs_in_range(1, 4, 7)
    assert refused.value.reason == "Tampered"
    assert refused.value.code == "IndexBlobRejected"
    assert h.metrics["index_blobs_rejected"] == 1
    # The host puts the right blob back: the next query asks again and is answered.
    path.write_bytes(good)
    assert h.query(1, 4, 7) == h.expected(1, 4, 7)


def test_a_blob_swapped_from_another_bucket_is_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=4)
    for seqno in range(1, 41):
        h.write(seqno % 2)
    h.indexer.committed(40)
    h.pump()
    name = h.strategy.name
    h.host.path(name, 1).write_bytes(h.host.path(name, 2).read_bytes())
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(0, 4, 7)
    h.pump()
    with pytest.raises(IndexBlobRejected, match=r"index blob seqnos_by_key\.records/1:"):
        h.index.get_write_txs_in_range(0, 4, 7)


def test_a_blob_replayed_from_an_earlier_epoch_is_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=4)
    for _ in range(20):
        h.write(1)
    h.indexer.committed(20)
    h.pump()
    name = h.strategy.name
    old = h.host.path(name, 1).read_bytes()
    # The node's state restarts from a snapshot at seqno 0 (as when a node installs one)
    # and the index fills bucket 1 again, differently: a new blob for the same bucket.
    h.store.restore(*Store().snapshot(), 0)
    h.writes = {}
    for seqno in range(1, 21):
        h.write(2 if seqno < 8 else 1)
    h.indexer.committed(20)
    h.pump()
    current = h.host.path(name, 1).read_bytes()
    assert current != old
    h.host.path(name, 1).write_bytes(old)
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(1, 4, 7)
    h.pump()
    with pytest.raises(IndexBlobRejected, match="earlier index") as refused:
        h.index.get_write_txs_in_range(1, 4, 7)
    assert refused.value.reason == "Tampered"
    # With the current blob back, the query is answered.
    h.host.path(name, 1).write_bytes(current)
    assert h.query(2, 4, 7) == h.expected(2, 4, 7)


def test_a_sealer_refuses_a_blob_of_an_earlier_epoch_or_another_bucket() -> None:
    sealer = BlobSealer(os.urandom(32))
    first = sealer.seal("s", 3, b"first")
    assert sealer.open("s", 3, first) == b"first"
    sealer.forget("s")
    second = sealer.seal("s", 3, b"second")
    assert sealer.open("s", 3, second) == b"second"
    with pytest.raises(IndexBlobRejected, match="earlier index"):
        sealer.open("s", 3, first)
    with pytest.raises(IndexBlobRejected, match="failed authentication"):
        sealer.open("s", 4, second)
    with pytest.raises(IndexBlobRejected, match="failed authentication"):
        sealer.open("t", 3, second)


def test_offloaded_buckets_cost_the_enclave_one_bit_each(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=1)
    for seqno in range(1, 4001):
        h.write(seqno % 3)
        if seqno % 100 == 0:
            h.indexer.committed(seqno)
    assert h.index.buckets_offloaded == 4000 - 2
    assert len(h.index._on_host) <= 4000 // 8 + 1
    assert h.index.buckets_held <= 2
    assert h.query(1, 1, 1) == [1]


def test_a_missing_blob_is_an_error_not_an_empty_answer(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=1, seqnos_per_bucket=4)
    for _ in range(20):
        h.write(1)
    h.indexer.committed(20)
    h.pump()
    h.host.path(h.strategy.name, 1).unlink()
    with pytest.raises(IndexNotReady):
        h.index.get_write_txs_in_range(1, 4, 7)
    h.pump()
    with pytest.raises(IndexBlobRejected, match="the host has none"):
        h.index.get_write_txs_in_range(1, 4, 7)


def test_an_index_started_from_a_snapshot_says_which_seqnos_it_covers(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.indexer.restart_at(50)
    h.store = Store()
    h.store.restore(*Store().snapshot(), 50)
    assert h.index.covers_from == 51
    with pytest.raises(IndexRangeNotCovered, match="starts at seqno 51") as refused:
        h.index.get_write_txs_in_range(1, 10, 51)
    assert refused.value.covers_from == 51


def test_a_store_restore_restarts_the_index_after_the_snapshot(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write(1)
    h.indexer.committed(1)
    snapshot = h.store.snapshot()
    h.store.restore(*snapshot, 40)
    assert h.index.covers_from == 41
    h.writes = {}
    h.write(1)
    h.indexer.committed(41)
    assert h.query(1, 41, 41) == [41]


def test_a_range_wider_than_the_memory_bound_is_refused_with_its_page_end(tmp_path: Path) -> None:
    h = Harness(tmp_path, buckets_in_memory=2, seqnos_per_bucket=4)
    for _ in range(40):
        h.write(1)
    h.indexer.committed(40)
    assert h.index.page_end(5) == 11
    with pytest.raises(IndexRangeTooLarge) as refused:
        h.index.get_write_txs_in_range(1, 5, 12)
    assert refused.value.max_range_seqnos == 7
    assert h.query(1, 5, 11) == list(range(5, 12))


def test_bucket_plaintext_round_trips() -> None:
    bucket = {b"a": [8, 9, 15], b"b": [10], b"": [11, 12]}
    data = encode_bucket(8, 8, bucket)
    assert decode_bucket(data, 8, 8) == bucket
    with pytest.raises(IndexBlobRejected, match="another bucket"):
        decode_bucket(data, 16, 8)


_VALID = encode_bucket(64, 16, {b"k1": [64, 70], b"k2": [79], b"longer-key": [65, 66, 67]})


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    cut=st.integers(0, len(_VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)), max_size=4),
    tail=st.binary(max_size=16),
)
def test_malformed_bucket_plaintext_raises_only_index_blob_rejected(
    cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    data = bytearray(_VALID)
    for at, xor in flips:
        data[at] ^= xor
    data = data[:cut] + tail
    try:
        decoded = decode_bucket(bytes(data), 64, 16)
    except IndexBlobRejected as exc:
        assert exc.reason == "Malformed"
        return
    # Whatever parses is a well-formed bucket of the right range.
    for seqnos in decoded.values():
        assert seqnos == sorted(set(seqnos))
        assert all(64 <= s < 80 for s in seqnos)


def test_strategy_names_are_checked_as_host_folder_names() -> None:
    assert SeqnosByKey("public:records").name == "seqnos_by_key.public_records"
    for bad in ("", "..", "a/b", "A", "x" * 65):
        with pytest.raises(itf.InterfaceError):
            SeqnosByKey(MAP, name=bad)
