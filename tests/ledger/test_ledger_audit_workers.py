"""Promises of charter.ledger.audit's worker processes: they change how fast, never what is found.

Serial (`workers=0`) and parallel audits must report the same report on good ledgers and
the same first failing seqno and reason on tampered ones, whichever process verified what.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from charter.ledger.audit import audit
from charter.ledger.audit_workers import (
    KIND_ROOT,
    PARALLEL_MIN_BYTES,
    Verifier,
    auto_workers,
    shutdown_workers,
)
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry
from charter.ledger.errors import AuditError
from charter.ledger.generate import GeneratedLedger, generate_ledger
from charter.ledger.signatures import COSE_SIGNATURES_TABLE, SIGNATURES_TABLE

Copy = Callable[[str | Path], Path]


@pytest.fixture(scope="module")
def one_chunk_ledger(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLedger:
    """2,500 transactions in one chunk, a signature every 10: scanned in several parts, with
    far more verifications than a worker's queue holds."""
    directory = tmp_path_factory.mktemp("one-chunk-ledger")
    return generate_ledger(str(directory), transactions=2_500, signature_interval=10, seed=3)


def _entry(directory: Path, seqno: int) -> tuple[Path, int, bytes]:
    """(chunk path, file offset, raw bytes) of entry `seqno`."""
    reader = LedgerReader(str(directory))
    for chunk, data, positions in reader.chunk_data():
        if chunk.first <= seqno <= chunk.first + len(positions) - 1:
            pos = positions[seqno - chunk.first]
            size = 8 + int.from_bytes(data[pos + 2 : pos + 8], "little")
            return directory / chunk.filename, pos, bytes(data[pos : pos + size])
    raise KeyError(seqno)


def _patch(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def _break_node_signature(directory: Path, seqno: int) -> None:
    """Change one base64 character of the node's signature (the record stays well formed)."""
    path, pos, raw = _entry(directory, seqno)
    at = raw.index(b'"sig":"') + 20
    _patch(path, pos + at, ord("A") if raw[at] != ord("A") else ord("B"))


def _break_cose_signature(directory: Path, seqno: int) -> None:
    """Flip a bit in the last byte of the service's COSE_Sign1 (inside its signature)."""
    path, pos, raw = _entry(directory, seqno)
    entry, _ = decode_entry(raw)
    encoded = entry.public[COSE_SIGNATURES_TABLE][bytes(8)]
    assert encoded is not None
    at = raw.index(encoded) + len(encoded) - 1
    _patch(path, pos + at, raw[at] ^ 0x01)


def _both_ways(directory: Path) -> tuple[AuditError, AuditError]:
    with pytest.raises(AuditError) as serial:
        audit(str(directory), workers=0)
    with pytest.raises(AuditError) as parallel:
        audit(str(directory), workers=1)
    return serial.value, parallel.value


def test_parallel_audit_of_a_good_one_chunk_ledger_equals_the_serial_report(
    one_chunk_ledger: GeneratedLedger,
) -> None:
    serial = audit(one_chunk_ledger.directory, workers=0)
    assert serial.signatures == len(one_chunk_ledger.signature_seqnos) > 200
    assert audit(one_chunk_ledger.directory, workers=1) == serial
    assert audit(one_chunk_ledger.directory, workers=2) == serial


def test_parallel_audit_of_a_good_multi_chunk_ledger_equals_the_serial_report(
    small_ledger: GeneratedLedger,
) -> None:
    assert audit(small_ledger.directory, workers=1) == audit(small_ledger.directory, workers=0)


@pytest.mark.parametrize("index", [0, 117, -1])
def test_bad_node_signature_is_reported_at_the_same_seqno_either_way(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy, index: int
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[index]
    _break_node_signature(directory, signed)
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == signed
    assert str(serial) == str(parallel)
    assert "invalid root signature" in str(parallel)


def test_bad_cose_signature_is_reported_at_the_same_seqno_either_way(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[60]
    _break_cose_signature(directory, signed)
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == signed
    assert str(serial) == str(parallel)
    assert "COSE" in str(parallel)


def test_node_signature_failure_wins_over_cose_failure_in_the_same_transaction(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[40]
    _break_cose_signature(directory, signed)
    _break_node_signature(directory, signed)
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == signed
    assert str(serial) == str(parallel)
    assert "invalid root signature" in str(parallel)


def test_bad_signature_is_reported_before_later_structural_damage(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[150]
    _break_cose_signature(directory, signed)
    path, pos, raw = _entry(directory, signed + 3)  # same scan part, after the signature
    _patch(path, pos + 30, raw[30] ^ 0x01)  # IV seqno
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == signed
    assert str(serial) == str(parallel)


def test_structural_damage_before_a_bad_signature_is_reported_first(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[150]
    _break_node_signature(directory, signed)
    path, pos, raw = _entry(directory, signed - 5)
    _patch(path, pos + 30, raw[30] ^ 0x01)  # IV seqno
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == signed - 5
    assert str(serial) == str(parallel)


def test_every_signature_broken_reports_the_first_one_either_way(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    for signed in one_chunk_ledger.signature_seqnos:
        _break_cose_signature(directory, signed)
    serial, parallel = _both_ways(directory)
    assert serial.seqno == parallel.seqno == one_chunk_ledger.signature_seqnos[0]
    assert str(serial) == str(parallel)


def _signed_jobs(
    count: int, bad: set[int]
) -> tuple[ec.EllipticCurvePublicKey, bytes, list[tuple[int, bytes, bytes]]]:
    key = ec.derive_private_key(7, ec.SECP384R1())
    public = key.public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jobs: list[tuple[int, bytes, bytes]] = []
    for number in range(count):
        root = number.to_bytes(32, "big")
        sig = key.sign(root, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        if number in bad:
            root = (number + 1).to_bytes(32, "big")  # signature over another root
        jobs.append((number + 1, root, sig))
    return public, spki, jobs


def test_verifier_reports_the_earliest_failure_even_when_a_later_one_finishes_first() -> None:
    # Job 0 goes to the worker; once its queue is full, job 30 runs in this process and
    # fails long before the worker reaches the end of its queue.
    public, spki, jobs = _signed_jobs(40, bad={0, 30})
    verifier = Verifier(1)
    try:
        with pytest.raises(AuditError, match="bad root") as info:
            for seqno, root, sig in jobs:
                verifier.submit(seqno, "bad root", KIND_ROOT, public, spki, root, sig)
            verifier.settle()
        assert info.value.seqno == 1
    finally:
        verifier.close()


def test_verifier_accepts_good_signatures_and_bounds_what_is_outstanding() -> None:
    public, spki, jobs = _signed_jobs(60, bad=set())
    verifier = Verifier(1)
    try:
        for seqno, root, sig in jobs:
            verifier.submit(seqno, "bad root", KIND_ROOT, public, spki, root, sig)
            # Constant memory: nothing waits unsent; a worker holds a bounded batch.
            assert len(verifier._queue) <= 6 and len(verifier._sent) <= 16
        verifier.settle()
    finally:
        verifier.close()


def test_workers_are_chosen_only_for_big_ledgers_on_several_cpus() -> None:
    assert auto_workers(PARALLEL_MIN_BYTES, threads=1, cpus=2) == 1
    assert auto_workers(PARALLEL_MIN_BYTES - 1, threads=1, cpus=2) == 0
    assert auto_workers(PARALLEL_MIN_BYTES, threads=2, cpus=2) == 0
    assert auto_workers(PARALLEL_MIN_BYTES, threads=1, cpus=1) == 0


def test_workers_are_kept_for_the_next_audit_and_exit_on_shutdown(
    one_chunk_ledger: GeneratedLedger,
) -> None:
    import multiprocessing

    shutdown_workers()
    before = set(multiprocessing.active_children())
    first = audit(one_chunk_ledger.directory, workers=1)
    kept = set(multiprocessing.active_children()) - before
    assert len(kept) == 1
    assert audit(one_chunk_ledger.directory, workers=1) == first
    assert set(multiprocessing.active_children()) - before == kept  # no new fork
    shutdown_workers()
    assert set(multiprocessing.active_children()) <= before


def test_kept_worker_gives_right_answers_after_an_audit_that_failed(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[5]
    _break_node_signature(directory, signed)
    for _ in range(3):
        with pytest.raises(AuditError) as info:
            audit(str(directory), workers=1)
        assert info.value.seqno == signed
        assert audit(one_chunk_ledger.directory, workers=1).signatures > 200


def test_signature_record_tampering_used_here_keeps_the_record_well_formed(
    one_chunk_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    # Guards the helpers: the change must reach verification, not the JSON or base64 parser.
    directory = copy_ledger(one_chunk_ledger.directory)
    signed = one_chunk_ledger.signature_seqnos[3]
    _break_node_signature(directory, signed)
    _path, _pos, raw = _entry(directory, signed)
    entry, _ = decode_entry(raw)
    record = next(iter(entry.public[SIGNATURES_TABLE].values()))
    assert record is not None
    base64.b64decode(json.loads(record)["sig"], validate=True)


def test_verifier_finishes_the_jobs_of_a_killed_worker_here() -> None:
    public, spki, jobs = _signed_jobs(40, bad={25})
    verifier = Verifier(1)
    try:
        with pytest.raises(AuditError, match="bad root") as info:
            for seqno, root, sig in jobs:
                verifier.submit(seqno, "bad root", KIND_ROOT, public, spki, root, sig)
                if seqno == 5:
                    process = verifier._workers[0].process
                    process.kill()
                    process.join()
            verifier.settle()
        assert info.value.seqno == 26
        assert verifier._workers == []  # the dead worker was noticed and dropped
    finally:
        verifier.close()
