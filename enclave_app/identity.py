"""The enclave's secrets: node key, service identity, ledger secrets, and their sealing.

Everything here stays inside the enclave process. What leaves it is sealed by the platform
(`seal`), so a node restarted on its workspace resumes as the same node.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import certs

SEALED_FORMAT_VERSION = 1
LEDGER_SECRET_BYTES = 32


class IdentityError(Exception):
    code = "InvalidSealedState"


@dataclass(slots=True)
class Identity:
    """Keys and secrets of one node. `ledger_secrets` is sorted by start seqno."""

    node_key: ec.EllipticCurvePrivateKey
    node_cert_pem: str = ""  # endorsed by the service key once the node is trusted
    service_key: ec.EllipticCurvePrivateKey | None = None
    service_cert_pem: str = ""
    ledger_secrets: list[tuple[int, bytes]] = field(default_factory=list)
    # Raft's hard state (term, vote) rides along: it must survive a restart too.
    term: int = 0
    voted_for: str | None = None
    # Node-to-node channel epoch: one more on every start, so frame nonces never repeat.
    epoch: int = 0
    # The highest seqno this node knows committed, sealed now and then: a restart on a
    # ledger the host cut short of it is refused (the host cannot roll back commits).
    committed_seqno: int = 0
    # (key, its node id): the id is hashed from the key's DER once, not on every signature
    # transaction (it cost about as much as one of the signature's two ECDSA signs).
    _node_id: tuple[ec.EllipticCurvePrivateKey, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def node_id(self) -> str:
        cached = self._node_id
        if cached is None or cached[0] is not self.node_key:
            cached = self._node_id = (self.node_key, certs.node_id(self.node_key.public_key()))
        return cached[1]

    @property
    def public_key_der(self) -> bytes:
        return certs.spki_der(self.node_key.public_key())

    @property
    def service_cert(self) -> x509.Certificate:
        return certs.load_cert(self.service_cert_pem)

    def secret_for(self, seqno: int) -> bytes:
        """The ledger secret that encrypts `seqno`: the latest one starting at or before it."""
        starts = [start for start, _ in self.ledger_secrets]
        at = bisect.bisect_right(starts, seqno) - 1
        if at < 0:
            raise IdentityError(f"no ledger secret applies to seqno {seqno}")
        return self.ledger_secrets[at][1]

    def add_ledger_secret(self, start_seqno: int, secret: bytes | None = None) -> bytes:
        secret = secret if secret is not None else os.urandom(LEDGER_SECRET_BYTES)
        assert len(secret) == LEDGER_SECRET_BYTES
        assert not self.ledger_secrets or self.ledger_secrets[-1][0] < start_seqno
        self.ledger_secrets.append((start_seqno, secret))
        return secret

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "v": SEALED_FORMAT_VERSION,
            "node_key": certs.key_pem(self.node_key),
            "node_cert": self.node_cert_pem,
            "service_key": certs.key_pem(self.service_key) if self.service_key else None,
            "service_cert": self.service_cert_pem,
            "ledger_secrets": [[start, secret] for start, secret in self.ledger_secrets],
            "term": self.term,
            "voted_for": self.voted_for,
            "epoch": self.epoch,
            "committed_seqno": self.committed_seqno,
        }
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        try:
            doc = msgpack.unpackb(data, raw=False)
            if doc.get("v") != SEALED_FORMAT_VERSION:
                raise IdentityError("unknown sealed state version")
            service_key = doc["service_key"]
            secrets = [(int(s), bytes(k)) for s, k in doc["ledger_secrets"]]
            return cls(
                node_key=certs.load_key(doc["node_key"]),
                node_cert_pem=str(doc["node_cert"]),
                service_key=certs.load_key(service_key) if service_key else None,
                service_cert_pem=str(doc["service_cert"]),
                ledger_secrets=secrets,
                term=int(doc["term"]),
                voted_for=doc["voted_for"],
                epoch=int(doc.get("epoch", 0)),
                committed_seqno=int(doc.get("committed_seqno", 0)),
            )
        except IdentityError:
            raise
        except Exception as exc:
            raise IdentityError(f"sealed state is damaged: {type(exc).__name__}") from None
