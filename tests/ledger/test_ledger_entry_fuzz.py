"""Fuzzing decode_entry: random and mutated inputs raise DecodeError and nothing else.

Each hypothesis example draws a seed and runs a batch of inputs from it (half random bytes,
half mutations of valid entries), which keeps 10,000+ inputs within a few seconds.
"""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.ledger.entry import (
    commit_evidence,
    commit_evidence_digest,
    decode_entry,
    decrypt_private,
    encode_entry,
    entry_leaf,
)
from charter.ledger.errors import DecodeError, VerificationError

SECRET = bytes(range(32))
EXAMPLES = 500
INPUTS_PER_EXAMPLE = 24  # 500 x 24 = 12,000 inputs


def _seed_entries() -> list[bytes]:
    out = []
    for seqno, public, private in [
        (1, {"public:a": {b"k": b"v", b"gone": None}}, {"p": {b"1": b"x" * 40}}),
        (2, {}, {}),
        (3, {"public:ccf.gov.nodes.info": {b"n" * 64: b'{"status":"Trusted"}'}}, {}),
        (4, {"public:x": {bytes(8): b""}, "public:y": {b"": b"z"}}, {"q": {b"r": None}}),
    ]:
        out.append(
            encode_entry(
                seqno=seqno,
                view=3,
                public=public,
                private=private,
                secret=SECRET,
                commit_evidence_digest=commit_evidence_digest(commit_evidence(SECRET, 3, seqno)),
            )
        )
    return out


SEEDS = _seed_entries()
_INTERESTING_U64 = [0, 1, 7, 8, 2**31, 2**48 - 1, 2**63, 2**64 - 1]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out)) if out else 0
        kind = rng.randrange(5)
        if kind == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[at] = rng.randrange(256)
        elif kind == 2:
            del out[at:]
        elif kind == 3:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif len(out) >= at + 8:
            out[at : at + 8] = rng.choice(_INTERESTING_U64).to_bytes(8, "little")
    return bytes(out)


def _decode_only_raises_decode_error(data: bytes) -> None:
    try:
        entry, end = decode_entry(data)
    except DecodeError:
        return
    assert end <= len(data) and len(entry.raw) == end
    with contextlib.suppress(VerificationError, DecodeError):
        decrypt_private(entry, SECRET)
    with contextlib.suppress(DecodeError):
        entry_leaf(entry.raw)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.integers(0, 2**64 - 1))
def test_random_and_mutated_inputs_never_crash_decode_entry(seed: int) -> None:
    rng = random.Random(seed)
    for i in range(INPUTS_PER_EXAMPLE):
        data = rng.randbytes(rng.randrange(600)) if i % 2 else mutate(rng, rng.choice(SEEDS))
        _decode_only_raises_decode_error(data)


def test_unmutated_seed_entries_decode() -> None:
    for raw in SEEDS:
        entry, end = decode_entry(raw)
        assert end == len(raw)
        decrypt_private(entry, SECRET)
