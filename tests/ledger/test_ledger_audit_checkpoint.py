"""Promises of incremental audits (charter.ledger.audit with checkpoint= and since=): they
agree with full audits, prove the old signed root is a prefix of the new one, and refuse
ledgers rewritten before the checkpoint and checkpoints that were forged."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from charter.ledger.audit import AuditReport, audit
from charter.ledger.audit_checkpoint import AuditCheckpoint, frontier_root
from charter.ledger.chunks import LedgerReader, LedgerWriter
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER
from charter.ledger.errors import AuditError, AuditInterrupted, DecodeError, VerificationError
from charter.ledger.generate import GeneratedLedger, generate_ledger
from charter.ledger.history import History
from charter.ledger.merkle import MerkleTree, verify_consistency

Copy = Callable[[str | Path], Path]
_COMPARED = [
    "transactions",
    "signatures",
    "cose_signatures",
    "last_seqno",
    "last_view",
    "last_signed_txid",
    "unsigned_transactions",
    "service_status",
    "service_cert_pem",
    "chunks",
    "deprecated_entries",
    "nodes",
    "root",
]


def _chunk_names(directory: str | Path) -> list[str]:
    names = [n for n in os.listdir(directory) if n.startswith("ledger_")]
    return sorted(names, key=lambda n: int(n.split("_")[1].split("-")[0].split(".")[0]))


def _prefix(ledger: GeneratedLedger, chunks: int, target: Path) -> Path:
    """The ledger as it was when it had only its first `chunks` chunks."""
    target.mkdir()
    for name in _chunk_names(ledger.directory)[:chunks]:
        shutil.copy(os.path.join(ledger.directory, name), target / name)
    return target


def _same(a: AuditReport, b: AuditReport) -> None:
    for name in _COMPARED:
        assert getattr(a, name) == getattr(b, name), name


def _checkpoint_of_prefix(ledger: GeneratedLedger, tmp_path: Path) -> AuditCheckpoint:
    report = audit(str(_prefix(ledger, 3, tmp_path / "prefix")), checkpoint=True, workers=0)
    assert report.checkpoint is not None
    # What a later audit starts from is the file, not the object.
    return AuditCheckpoint.loads(report.checkpoint.dumps())


@pytest.mark.parametrize("workers", [0, 1])
def test_incremental_audit_over_an_appended_ledger_agrees_with_a_full_audit(
    small_ledger: GeneratedLedger, tmp_path: Path, workers: int
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    assert checkpoint.seqno < small_ledger.last_seqno
    full = audit(small_ledger.directory, workers=0, checkpoint=True)
    progress: list[tuple[int, int]] = []
    incremental = audit(
        small_ledger.directory,
        since=checkpoint,
        checkpoint=True,
        workers=workers,
        progress=lambda done, total: progress.append((done, total)),
    )
    _same(full, incremental)
    assert incremental.resumed_from == checkpoint.seqno
    # Progress starts after the checkpoint: the old entries are not scanned again.
    assert progress[0][0] > checkpoint.seqno and progress[-1][0] == small_ledger.last_seqno
    # The checkpoint it leaves is the one a full audit leaves, byte for byte.
    assert incremental.checkpoint is not None and full.checkpoint is not None
    assert incremental.checkpoint.dumps() == full.checkpoint.dumps()


def test_incremental_audit_proves_the_old_signed_root_is_a_prefix_of_the_new(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    report = audit(small_ledger.directory, since=checkpoint)
    extension = report.extension
    assert extension is not None
    last_signature = small_ledger.signature_seqnos[-1]
    assert (extension.old_size, extension.new_size) == (checkpoint.seqno, last_signature)
    # The proof stands on its own: checked against the two signed roots only, and it is the
    # proof a full Merkle tree of the ledger gives.
    tree = MerkleTree()
    for _seqno, raw in LedgerReader(small_ledger.directory).entries():
        from charter.ledger.entry import entry_leaf

        tree.append(entry_leaf(raw))
    assert extension.old_root == tree.root_at(checkpoint.seqno) == checkpoint.root
    assert extension.new_root == tree.root_at(last_signature)
    assert list(extension.proof) == tree.consistency_proof(checkpoint.seqno, last_signature)
    assert verify_consistency(
        extension.old_size,
        extension.new_size,
        extension.old_root,
        extension.new_root,
        list(extension.proof),
    )


def test_incremental_audit_still_finds_damage_after_the_checkpoint(
    small_ledger: GeneratedLedger, tmp_path: Path, copy_ledger: Copy
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    directory = copy_ledger(small_ledger.directory)
    seqno = checkpoint.seqno + 30
    reader = LedgerReader(str(directory))
    for chunk, _data, positions in reader.chunk_data():
        if chunk.first <= seqno < chunk.first + len(positions):
            path, pos = directory / chunk.filename, positions[seqno - chunk.first]
    blob = bytearray(path.read_bytes())
    blob[pos + 60] ^= 1  # inside the public domain's digests
    path.write_bytes(bytes(blob))
    with pytest.raises(AuditError) as info:
        audit(str(directory), since=checkpoint)
    assert info.value.seqno == seqno and f"(in {path.name} at offset {pos})" in str(info.value)


def test_a_byte_flipped_before_the_checkpoint_is_detected(
    small_ledger: GeneratedLedger, tmp_path: Path, copy_ledger: Copy
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    directory = copy_ledger(small_ledger.directory)
    second = directory / _chunk_names(directory)[1]
    blob = bytearray(second.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    second.write_bytes(bytes(blob))
    with pytest.raises(AuditError, match="changed since the checkpoint") as info:
        audit(str(directory), since=checkpoint)
    assert info.value.seqno == checkpoint.chunks[1].first
    assert second.name in str(info.value)


def _branch(ledger: GeneratedLedger, keep: int, total: int, directory: Path) -> Path:
    """The ledger rolled back to `keep` and grown again to `total` on another branch, signed
    by the same node and service keys (what a rollback followed by new writes leaves)."""
    history = History()
    writer = LedgerWriter(str(directory))
    for seqno, raw in LedgerReader(ledger.directory).entries(1, keep):
        history.append_raw(raw, secret=ledger.secret)
        writer.append(seqno, raw)
    while history.last_seqno < total:
        seqno = history.last_seqno + 1
        if seqno % 10 == 0 or seqno == total:
            record = history.add_signature(
                seqno=seqno,
                view=3,
                node_id=ledger.node_id,
                node_key=ledger.node_key,
                node_cert_pem=ledger.node_cert_pem,
                service_key=ledger.service_key,
                secret=ledger.secret,
                iat=2,
                flags=FLAG_FORCE_CHUNK_AFTER if seqno == total else 0,
            )
        else:
            record = history.add_transaction(
                seqno=seqno,
                view=3,
                public={"public:records": {b"k": f"branch-{seqno}".encode()}},
                private={},
                secret=ledger.secret,
            )
        writer.append(seqno, record.raw)
    writer.flush()
    writer.commit(total)
    writer.close()
    return directory


@pytest.mark.parametrize("keep", [100, 200], ids=["older-chunk", "checkpoint-chunk"])
def test_a_different_branch_after_a_rollback_before_the_checkpoint_is_detected(
    small_ledger: GeneratedLedger, tmp_path: Path, keep: int
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    assert keep < checkpoint.seqno
    branch = _branch(small_ledger, keep, 400, tmp_path / "branch")
    # On its own the branch is a valid ledger: only the checkpoint shows it is another history.
    audit(str(branch))
    with pytest.raises(AuditError, match="checkpoint") as info:
        audit(str(branch), since=checkpoint)
    assert info.value.seqno is not None and info.value.seqno <= keep + 1


def test_a_truncated_and_reappended_ledger_is_detected(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    checkpoint = _checkpoint_of_prefix(small_ledger, tmp_path)
    # Cut back to just before the checkpoint's signature and re-appended past it.
    branch = _branch(small_ledger, checkpoint.seqno - 1, 300, tmp_path / "branch")
    with pytest.raises(AuditError, match="checkpoint"):
        audit(str(branch), since=checkpoint)


def _edited(checkpoint: AuditCheckpoint, **changes: object) -> bytes:
    """A checkpoint file with fields changed and its digest recomputed (a careful forger)."""
    return dataclasses.replace(checkpoint, **changes).dumps()  # type: ignore[arg-type]


def test_an_edited_checkpoint_file_is_refused_by_its_digest(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    data = json.loads(_checkpoint_of_prefix(small_ledger, tmp_path).dumps())
    data["counts"]["signatures"] += 1
    with pytest.raises(VerificationError, match="digest"):
        AuditCheckpoint.loads(json.dumps(data).encode())
    with pytest.raises(DecodeError):
        AuditCheckpoint.loads(b"{" * 100_000)
    with pytest.raises(DecodeError):
        AuditCheckpoint.loads(b"[]")


def test_a_forged_checkpoint_is_refused(small_ledger: GeneratedLedger, tmp_path: Path) -> None:
    genuine = _checkpoint_of_prefix(small_ledger, tmp_path)
    other = bytes(32)
    frontier = (*genuine.frontier[:-1], other)
    forgeries = {
        # A frontier that does not fold to the signed root.
        "frontier": _edited(genuine, frontier=frontier),
        # A consistent frontier and root that no node signed.
        "root": _edited(genuine, frontier=frontier, root=frontier_root(frontier)),
        # The signing node demoted: the signature no longer comes from a trusted node.
        "node": _edited(genuine, node_status={genuine.node_id: "Pending"}),
        # Everything genuine but the leaf of the signature transaction.
        "leaf": _edited(genuine, leaf=other),
        # Every chunk digest genuine but one.
        "chunks": _edited(
            genuine,
            chunks=(dataclasses.replace(genuine.chunks[0], sha256=other), *genuine.chunks[1:]),
        ),
    }
    for what, data in forgeries.items():
        with pytest.raises(AuditError, match="checkpoint") as info:
            audit(small_ledger.directory, since=AuditCheckpoint.loads(data))
        assert info.value.seqno is not None, what


def test_a_checkpoint_of_another_ledger_is_refused(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    other = generate_ledger(
        str(tmp_path / "other"), transactions=400, signature_interval=20, chunk_size_bytes=30_000
    )
    checkpoint = _checkpoint_of_prefix(other, tmp_path)
    with pytest.raises(AuditError, match="checkpoint"):
        audit(small_ledger.directory, since=checkpoint)


def test_a_checkpoint_beyond_the_ledger_is_refused(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    report = audit(small_ledger.directory, checkpoint=True)
    assert report.checkpoint is not None
    prefix = _prefix(small_ledger, 2, tmp_path / "shorter")
    with pytest.raises(AuditError, match="checkpoint refused"):
        audit(str(prefix), since=report.checkpoint)


def test_an_audit_with_nothing_new_since_its_checkpoint_is_valid(
    small_ledger: GeneratedLedger,
) -> None:
    first = audit(small_ledger.directory, checkpoint=True)
    assert first.checkpoint is not None
    again = audit(small_ledger.directory, since=first.checkpoint, checkpoint=True)
    _same(first, again)
    assert again.extension is None
    assert again.checkpoint is not None and again.checkpoint.dumps() == first.checkpoint.dumps()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_interrupted_audit_says_how_far_it_got_and_resumes_from_its_checkpoint(
    big_ledger: GeneratedLedger, workers: int
) -> None:
    calls: list[int] = []

    def ctrl_c_after_a_few_chunks(seqno: int, total: int) -> None:
        calls.append(seqno)
        if len(calls) == 4:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread

    with pytest.raises(AuditInterrupted) as info:
        audit(
            big_ledger.directory,
            checkpoint=True,
            workers=workers,
            progress=ctrl_c_after_a_few_chunks,
        )
    stop = info.value
    assert stop.seqno == calls[-1] and stop.total == big_ledger.last_seqno
    assert isinstance(stop.checkpoint, AuditCheckpoint)
    assert 1 < stop.checkpoint.seqno <= stop.seqno
    resumed = audit(big_ledger.directory, since=AuditCheckpoint.loads(stop.checkpoint.dumps()))
    _same(audit(big_ledger.directory, workers=0), resumed)
