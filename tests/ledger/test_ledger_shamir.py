"""ledger/shamir.py: k-of-n secret sharing over GF(2^8)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.ledger import shamir


@st.composite
def splits(draw: st.DrawFn) -> tuple[bytes, int, int, list[bytes]]:
    secret = draw(st.binary(min_size=1, max_size=shamir.SECRET_BYTES_MAX))
    n = draw(st.integers(min_value=1, max_value=12))
    k = draw(st.integers(min_value=1, max_value=n))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    rng = random.Random(seed)
    shares = shamir.split(secret, n, k, random_bytes=rng.randbytes)
    return secret, n, k, shares


@settings(max_examples=200, deadline=None)
@given(splits(), st.randoms(use_true_random=False))
def test_any_k_shares_give_the_secret_back(
    split: tuple[bytes, int, int, list[bytes]], rnd: random.Random
) -> None:
    secret, n, k, shares = split
    assert len(shares) == n
    chosen = rnd.sample(shares, rnd.randint(k, n))
    rnd.shuffle(chosen)
    assert shamir.combine(chosen) == secret


@settings(max_examples=200, deadline=None)
@given(splits(), st.binary(min_size=1, max_size=shamir.SECRET_BYTES_MAX), st.randoms())
def test_k_minus_1_shares_are_consistent_with_every_secret(
    split: tuple[bytes, int, int, list[bytes]], other: bytes, rnd: random.Random
) -> None:
    """Whatever secret one guesses, there is a k-th share that makes the k-1 known shares
    combine to it: k-1 shares leave every secret possible, so they reveal nothing."""
    secret, _n, k, shares = split
    if k < 2:
        return
    target = (other * shamir.SECRET_BYTES_MAX)[: len(secret)]
    known = rnd.sample(shares, k - 1)
    used = {shamir.parse_share(s).x for s in known}
    x = next(x for x in range(1, 256) if x not in used)
    completing = shamir.complete_to(known, target, x)
    assert shamir.combine([*known, completing]) == target


def test_fewer_than_k_shares_combine_to_something_else() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 5, 3)
    for pair in itertools.combinations(shares, 2):
        assert shamir.combine(list(pair)) != secret


@settings(max_examples=100, deadline=None)
@given(splits(), st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_a_changed_share_changes_the_result(
    split: tuple[bytes, int, int, list[bytes]], which: int, flip: int
) -> None:
    secret, _n, k, shares = split
    chosen = shares[:k]
    i = which % k
    tampered = bytearray(chosen[i])
    tampered[2 + which % (len(tampered) - 2)] ^= flip
    chosen[i] = bytes(tampered)
    assert shamir.combine(chosen) != secret


@pytest.mark.parametrize(
    ("share", "code"),
    [
        (b"", "InvalidShare"),
        (b"\x01\x01", "InvalidShare"),
        (b"\x02\x01abc", "InvalidShare"),
        (b"\x01\x00abc", "InvalidShare"),
        (b"\x01\x01" + bytes(shamir.SECRET_BYTES_MAX + 1), "InvalidShare"),
    ],
)
def test_malformed_shares_raise_a_typed_error(share: bytes, code: str) -> None:
    with pytest.raises(shamir.ShamirError) as err:
        shamir.combine([share])
    assert err.value.code == code


def test_duplicate_and_mismatched_shares_raise_typed_errors() -> None:
    a, _b, _ = shamir.split(bytes(32), 3, 2)
    with pytest.raises(shamir.ShamirError) as err:
        shamir.combine([a, a])
    assert err.value.code == "DuplicateShare"
    short = shamir.split(bytes(16), 3, 2)[1]
    with pytest.raises(shamir.ShamirError) as err:
        shamir.combine([a, short])
    assert err.value.code == "InconsistentShares"
    with pytest.raises(shamir.ShamirError) as err:
        shamir.combine([])
    assert err.value.code == "NotEnoughShares"


@pytest.mark.parametrize(("n", "k"), [(0, 0), (3, 0), (3, 4), (256, 2)])
def test_impossible_thresholds_are_refused(n: int, k: int) -> None:
    with pytest.raises(shamir.ShamirError) as err:
        shamir.split(bytes(32), n, k)
    assert err.value.code == "InvalidThreshold"
