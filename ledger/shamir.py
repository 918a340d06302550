"""k-of-n secret sharing (Shamir) over GF(2^8), byte by byte.

Each byte of the secret is the constant term of its own random polynomial of degree k-1
over GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1); a share is the value of every
polynomial at one non-zero point x. Any k shares give the secret back by Lagrange
interpolation at 0; k-1 shares are consistent with every possible secret, so they say
nothing about it (information-theoretically, not just computationally).

A share on the wire is `[SHARE_FORMAT_VERSION][x][y_0 .. y_{L-1}]`, L the secret's length.
Shares are outside bytes when a member submits one: `parse_share` checks the version, the
size and x, and raises `ShamirError` (with a stable `code`) on anything else.

Pure: no I/O; randomness comes from the caller (`random_bytes`), so tests can be seeded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from charter.ledger.errors import LedgerError

SHARE_FORMAT_VERSION: Final = 1
SECRET_BYTES_MAX: Final = 64
# x runs over the non-zero field elements: at most 255 shares.
SHARES_MAX: Final = 255
SHARE_BYTES_MAX: Final = 2 + SECRET_BYTES_MAX

_POLY: Final = 0x11B


class ShamirError(LedgerError):
    """A share or a request that secret sharing cannot work with."""

    code = "InvalidShare"

    def __init__(self, message: str, *, code: str = "InvalidShare") -> None:
        super().__init__(message)
        self.code = code


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        # multiply by the generator 3 = x + 1
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= _POLY
        value = doubled ^ value
    for power in range(255, 512):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    assert b != 0, "division by zero in GF(2^8)"
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


@dataclass(frozen=True, slots=True)
class Share:
    x: int
    y: bytes

    def to_bytes(self) -> bytes:
        return bytes((SHARE_FORMAT_VERSION, self.x)) + self.y


def parse_share(data: bytes) -> Share:
    """One share from its wire form; `ShamirError` if it cannot be one."""
    if not isinstance(data, bytes | bytearray):
        raise ShamirError("a share is bytes")
    if not 3 <= len(data) <= SHARE_BYTES_MAX:
        raise ShamirError(f"a share is 3 to {SHARE_BYTES_MAX} bytes, got {len(data)}")
    if data[0] != SHARE_FORMAT_VERSION:
        raise ShamirError(f"unknown share format version {data[0]}")
    if data[1] == 0:
        raise ShamirError("a share's x is never 0 (that point is the secret)")
    return Share(data[1], bytes(data[2:]))


def split(
    secret: bytes,
    n: int,
    k: int,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[bytes]:
    """`n` shares of `secret`, any `k` of which give it back; share i has x = i + 1."""
    if not 1 <= len(secret) <= SECRET_BYTES_MAX:
        raise ShamirError(f"a secret is 1 to {SECRET_BYTES_MAX} bytes", code="InvalidSecret")
    if not 1 <= k <= n <= SHARES_MAX:
        raise ShamirError(
            f"need 1 <= k <= n <= {SHARES_MAX}, got k={k} n={n}", code="InvalidThreshold"
        )
    # coefficients[j][i]: coefficient of x^(j+1) of byte i's polynomial
    coefficients = [random_bytes(len(secret)) for _ in range(k - 1)]
    assert all(len(c) == len(secret) for c in coefficients)
    shares = []
    for x in range(1, n + 1):
        y = bytearray(len(secret))
        for i, constant in enumerate(secret):
            # Horner: ((c_{k-1} x + c_{k-2}) x + ...) x + secret
            acc = 0
            for row in reversed(coefficients):
                acc = _mul(acc, x) ^ row[i]
            y[i] = _mul(acc, x) ^ constant
        shares.append(Share(x, bytes(y)).to_bytes())
    return shares


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret at x = 0 of the polynomial through `shares` (all of them are used).

    With at least k shares of one split this is the secret; with fewer, or with a share
    changed, it is some other value: the caller checks the result (e.g. an AES-GCM tag)."""
    if not shares:
        raise ShamirError("no shares to combine", code="NotEnoughShares")
    if len(shares) > SHARES_MAX:
        raise ShamirError(f"at most {SHARES_MAX} shares", code="TooManyShares")
    parsed = [parse_share(s) for s in shares]
    length = len(parsed[0].y)
    if any(len(s.y) != length for s in parsed):
        raise ShamirError("shares of different lengths", code="InconsistentShares")
    xs = [s.x for s in parsed]
    if len(set(xs)) != len(xs):
        raise ShamirError("two shares have the same x", code="DuplicateShare")
    # Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j); minus is xor here.
    weights = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = _mul(num, xm)
                den = _mul(den, xm ^ xj)
        weights.append(_div(num, den))
    secret = bytearray(length)
    for weight, share in zip(weights, parsed, strict=True):
        for i, value in enumerate(share.y):
            secret[i] ^= _mul(weight, value)
    return bytes(secret)


def complete_to(shares: Sequence[bytes], target: bytes, x: int) -> bytes:
    """The one share at `x` that, with the k-1 `shares`, combines to `target`.

    It exists for every target: the proof that k-1 shares reveal nothing (tests use it)."""
    parsed = [parse_share(s) for s in shares]
    if x in {s.x for s in parsed} or not 1 <= x <= SHARES_MAX:
        raise ShamirError("x must be new and non-zero", code="DuplicateShare")
    length = len(target)
    if any(len(s.y) != length for s in parsed):
        raise ShamirError("shares of different lengths", code="InconsistentShares")
    xs = [s.x for s in parsed] + [x]

    # secret = sum_j l_j(0) y_j, so y_x = (target - sum_{j<k-1} l_j y_j) / l_x
    def weight(j: int) -> int:
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = _mul(num, xm)
                den = _mul(den, xm ^ xs[j])
        return _div(num, den)

    weights = [weight(j) for j in range(len(xs))]
    y = bytearray(length)
    for i in range(length):
        acc = target[i]
        for w, share in zip(weights[:-1], parsed, strict=True):
            acc ^= _mul(w, share.y[i])
        y[i] = _div(acc, weights[-1])
    return Share(x, bytes(y)).to_bytes()
