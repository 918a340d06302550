"""The download endpoints serve a ledger chunk only after checking the bytes the untrusted host
read back (enclave_app/operator_files.py): `check_chunk` refuses, and never raises on, any
changed, cut or random bytes, and passes the chunk exactly as written."""

from __future__ import annotations

import random
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app.operator_files import _since, check_chunk
from charter.ledger.chunks import parse_chunk, parse_chunk_name
from charter.ledger.generate import GeneratedLedger, generate_ledger
from charter.ledger.merkle import MerkleTree

MUTATIONS = 3000


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLedger:
    directory = tmp_path_factory.mktemp("opfiles") / "ledger"
    return generate_ledger(
        str(directory), transactions=60, signature_interval=10, chunk_size_bytes=2000
    )


def _chunks(ledger: GeneratedLedger) -> list[Path]:
    return sorted(Path(ledger.directory).iterdir(), key=lambda p: parse_chunk_name(p.name).first)


def test_a_chunk_as_written_passes_and_any_other_name_for_it_does_not(
    ledger: GeneratedLedger,
) -> None:
    tree = ledger.history.tree
    chunks = _chunks(ledger)
    for path in chunks:
        assert check_chunk(tree, path.read_bytes(), path.name) is None, path.name
    first, second = chunks[2], chunks[3]
    assert check_chunk(tree, first.read_bytes(), second.name) is not None
    assert check_chunk(tree, first.read_bytes(), "not a chunk") is not None


def test_changed_entry_bytes_are_refused_where_the_tree_holds_them(
    ledger: GeneratedLedger,
) -> None:
    tree = ledger.history.tree
    path = _chunks(ledger)[3]
    data = path.read_bytes()
    positions = parse_chunk(data, parse_chunk_name(path.name))
    # A byte near the end of each entry: inside its write set or its claims/evidence.
    for index, start in enumerate(positions):
        end = positions[index + 1] if index + 1 < len(positions) else len(data)
        changed = bytearray(data)
        changed[start + (end - start) * 3 // 4] ^= 0x01
        assert check_chunk(tree, bytes(changed), path.name) is not None, index


def test_mutated_cut_and_random_chunk_bytes_never_raise(ledger: GeneratedLedger) -> None:
    rng = random.Random(2026_12_06)
    tree = ledger.history.tree
    chunks = [(p.name, p.read_bytes()) for p in _chunks(ledger)]
    refused = 0
    for i in range(MUTATIONS):
        name, data = rng.choice(chunks)
        kind = i % 4
        if kind == 0:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            candidate = bytes(mutated)
        elif kind == 1:
            candidate = data[: rng.randrange(len(data))]
        elif kind == 2:
            candidate = data + rng.randbytes(rng.randint(1, 64))
        else:
            candidate = rng.randbytes(rng.randint(0, 256))
        if check_chunk(tree, candidate, name) is not None:
            refused += 1
    assert refused > MUTATIONS * 3 // 4


def test_entries_compacted_out_of_the_tree_are_not_checked_against_it(
    ledger: GeneratedLedger,
) -> None:
    path = _chunks(ledger)[-1]
    held = ledger.history.tree
    tree = MerkleTree()
    for seqno in range(1, held.size):
        tree.append(held.leaf(seqno))
    tree.drop_prefix(tree.size - 1)  # only the last leaf is still held
    data = path.read_bytes()
    assert check_chunk(tree, data, path.name) is None
    # The last entry is still checked: a change to it is refused.
    positions = parse_chunk(data, parse_chunk_name(path.name))
    changed = bytearray(data)
    changed[positions[-1] + (len(data) - positions[-1]) // 2] ^= 0x01
    assert check_chunk(tree, bytes(changed), path.name) is not None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=30), st.sampled_from(["²", "١٢", "٣", "1²", "0", "-1", "+1"])))
def test_a_since_query_value_is_an_ascii_seqno_or_refused_never_an_exception(value: str) -> None:
    # `GET /node/ledger-chunk?since=²` answered 500: "²".isdigit() is True, int("²") raises.
    since = _since("since=" + urllib.parse.quote(value))
    if since is None:
        assert not (value.isascii() and value.isdigit() and len(value) <= 19)
    else:
        assert value.isascii() and value.isdigit() and since == int(value)
