"""Fuzzing chunk file parsing and the auditor over corrupted chunks: only ledger errors.

Each hypothesis example draws a seed and runs a batch of inputs from it (random bytes and
mutations of valid chunk files), which keeps 10,000+ inputs within a few seconds.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger.audit import audit
from charter.ledger.chunks import LedgerWriter, chunk_positions, parse_chunk, parse_chunk_name
from charter.ledger.entry import (
    FLAG_FORCE_CHUNK_AFTER,
    commit_evidence,
    commit_evidence_digest,
    encode_entry,
)
from charter.ledger.errors import AuditError, DecodeError
from charter.ledger.generate import generate_ledger

SECRET = bytes(range(32))
EXAMPLES = 500
INPUTS_PER_EXAMPLE = 24  # 500 x 24 = 12,000 inputs


def _chunk_bytes(complete: bool) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        with LedgerWriter(directory) as writer:
            for seqno in range(1, 6):
                raw = encode_entry(
                    seqno=seqno,
                    view=1,
                    public={"public:t": {bytes([seqno]): b"v" * seqno}},
                    private={"p": {b"k": b"s"}},
                    secret=SECRET,
                    commit_evidence_digest=commit_evidence_digest(
                        commit_evidence(SECRET, 1, seqno)
                    ),
                    flags=FLAG_FORCE_CHUNK_AFTER if complete and seqno == 5 else 0,
                )
                writer.append(seqno, raw)
        (name,) = os.listdir(directory)
        return (Path(directory) / name).read_bytes()


SEEDS = [_chunk_bytes(True), _chunk_bytes(False)]
NAMES = [parse_chunk_name("ledger_1-5.committed"), parse_chunk_name("ledger_1")]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out)) if out else 0
        kind = rng.randrange(5)
        if kind == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 12))
        elif kind == 3 and len(out) >= 8:
            value = rng.choice([0, 4, 8, len(out), len(out) - 4, 2**32, 2**64 - 1])
            out[0:8] = (value % 2**64).to_bytes(8, "little")
        elif len(out) >= 12:
            out[-4:] = rng.randbytes(4)
    return bytes(out)


def _parse_only_raises_ledger_errors(data: bytes, name_index: int) -> None:
    """Parsing the bytes raises only DecodeError; checking them against the chunk's name
    (entry count) may add an AuditError, which the reader documents."""
    try:
        positions, end = chunk_positions(data, NAMES[name_index].filename)
    except DecodeError:
        return
    assert all(8 <= p < end <= len(data) for p in positions)
    for walk in (True, False):
        try:
            checked = parse_chunk(data, NAMES[name_index], walk=walk)
        except AuditError:
            assert name_index == 0 and len(positions) != 5
            continue
        assert checked == positions


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.integers(0, 2**64 - 1))
def test_random_and_mutated_chunk_files_raise_only_ledger_errors(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(INPUTS_PER_EXAMPLE):
        name_index = rng.randrange(2)
        data = rng.randbytes(rng.randrange(400)) if i % 3 == 0 else _mutate(rng, SEEDS[name_index])
        _parse_only_raises_ledger_errors(data, name_index)


_LEDGER_DIR = tempfile.mkdtemp(prefix="fuzz-ledger-")
_LEDGER = generate_ledger(
    os.path.join(_LEDGER_DIR, "base"),
    transactions=40,
    signature_interval=15,
    chunk_size_bytes=8_000,
)
_FILES = {p.name: p.read_bytes() for p in sorted(Path(_LEDGER.directory).iterdir())}


@settings(
    max_examples=120, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(st.sampled_from(sorted(_FILES)), st.integers(0, 10**9), st.integers(0, 7))
def test_auditor_on_a_corrupted_chunk_raises_only_audit_error(
    name: str, where: int, bit: int
) -> None:
    directory = Path(tempfile.mkdtemp(dir=_LEDGER_DIR))
    for other, content in _FILES.items():
        data = bytearray(content)
        if other == name:
            data[where % len(data)] ^= 1 << bit
        (directory / other).write_bytes(bytes(data))
    try:
        report = audit(str(directory))
    except AuditError:
        return
    # Only bytes outside every entry (e.g. none) or covered by no later root may change.
    assert report.transactions == 40
