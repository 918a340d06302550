"""Where the enclave's randomness comes from: the system's, or one seed's.

Every random choice the node makes (its identity key, the service key, ledger secrets,
Raft's election jitter, certificate serials, sealing nonces, the ephemeral keys of sealed
join answers) draws from an `Entropy`. Production uses `SystemEntropy` (the OS's CSPRNG, as
before). The seeded simulator (tests/sim) gives every node a `SeededEntropy`, so that one
seed replays a whole cluster's run byte for byte — ledgers included, since a seeded entropy
also asks for RFC 6979 (deterministic) ECDSA signatures. Never use a seeded entropy for a
real node: anyone who knows the seed knows its keys.
"""

from __future__ import annotations

import random
import secrets
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import certs

# P-384's group order: private scalars are drawn from [1, order).
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
TOKEN_BYTES_MAX = 1024 * 1024
RNG_SEED_BITS = 64
CERT_SERIAL_BITS = 158


class Entropy(Protocol):
    """The source of every random value in the enclave's path."""

    # True: sign with RFC 6979 nonces, so equal inputs give equal signatures.
    deterministic: bool

    def token_bytes(self, n: int) -> bytes: ...

    def randrange(self, stop: int) -> int: ...

    def new_ec_key(self) -> ec.EllipticCurvePrivateKey: ...

    def rng_seed(self) -> int: ...

    def issuance(self, now_s: float) -> certs.Issuance | None: ...


class SystemEntropy:
    """The operating system's CSPRNG (production)."""

    deterministic = False

    def token_bytes(self, n: int) -> bytes:
        assert 0 <= n <= TOKEN_BYTES_MAX
        return secrets.token_bytes(n)

    def randrange(self, stop: int) -> int:
        assert stop > 0
        return secrets.randbelow(stop)

    def new_ec_key(self) -> ec.EllipticCurvePrivateKey:
        return certs.new_key()

    def rng_seed(self) -> int:
        return secrets.randbits(RNG_SEED_BITS)

    def issuance(self, now_s: float) -> certs.Issuance | None:
        """Certificates are issued with a random serial at the wall clock (`None`)."""
        return None


class SeededEntropy:
    """Every value follows from `seed` (tests and the simulator only)."""

    deterministic = True

    def __init__(self, seed: int | str) -> None:
        self._rng = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        assert 0 <= n <= TOKEN_BYTES_MAX
        return self._rng.randbytes(n)

    def randrange(self, stop: int) -> int:
        assert stop > 0
        return self._rng.randrange(stop)

    def new_ec_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.derive_private_key(1 + self._rng.randrange(_P384_ORDER - 1), certs.DEFAULT_CURVE)

    def rng_seed(self) -> int:
        return self._rng.getrandbits(RNG_SEED_BITS)

    def issuance(self, now_s: float) -> certs.Issuance:
        """A serial from the seed, issued at the (simulated) clock, signed deterministically."""
        return certs.Issuance(serial=1 + self._rng.getrandbits(CERT_SERIAL_BITS), now_s=now_s)


SYSTEM_ENTROPY: Entropy = SystemEntropy()
