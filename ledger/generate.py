"""Generate a realistic, fully committed service ledger with Charter's own pieces.

Used by tests (interoperability with `ccf.ledger`, receipts, auditing) and benchmarks. The
ledger looks like a young CCF service's: a genesis transaction (service identity, status
Opening, one Trusted node with its endorsed certificate, one member, the constitution and
service config), signatures every `signature_interval` transactions, the member's ack and
the service's transition to Open, then application transactions writing private and public
records (with some removals and claims digests). Chunks are cut by `ChunkPolicy` exactly as
a node would, and the last entry is a signature that closes the last chunk, so every chunk is
complete and committed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import certs
from charter.ledger import service_state as ss
from charter.ledger.chunks import DEFAULT_CHUNK_SIZE_BYTES, ChunkPolicy, LedgerWriter
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER, ZERO_DIGEST, WriteSet
from charter.ledger.history import History, TxRecord

logger = logging.getLogger(__name__)

SINGLETON_KEY = ss.SINGLETON_KEY
VIEW = 2  # CCF services start their history in view 2
IAT_START_S = 1_750_000_000
_SIGNATURE_ENTRY_SIZE_BYTES_ESTIMATE = 3000  # cert + COSE + tree: what a signature adds


@dataclass(slots=True)
class GeneratedLedger:
    """What a test needs to check receipts and signatures against a generated ledger."""

    directory: str
    last_seqno: int
    view: int
    secret: bytes
    service_key: ec.EllipticCurvePrivateKey
    service_cert_pem: str
    node_key: ec.EllipticCurvePrivateKey
    node_id: str
    node_cert_pem: str
    member_key: ec.EllipticCurvePrivateKey
    member_cert_pem: str
    member_id: str
    history: History
    signature_seqnos: list[int] = field(default_factory=list)
    open_seqno: int = 0
    chunk_ends: list[int] = field(default_factory=list)
    app_seqnos_with_claims: list[int] = field(default_factory=list)


def _json(value: object) -> bytes:
    # CCF writes JSON with nlohmann: compact separators and sorted keys.
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _derived_key(seed: int, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-384 key derived from the seed, so generated identities are reproducible."""
    digest = hashlib.sha512(f"charter-generate:{seed}:{label}".encode()).digest()
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
    return ec.derive_private_key(int.from_bytes(digest, "big") % (order - 1) + 1, ec.SECP384R1())


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@functools.lru_cache(maxsize=1)
def _node_encryption_key_pem() -> str:
    """The node's RSA encryption public key (recovery secrets are wrapped to it). RSA keys
    cannot be derived from a seed and take ~0.1 s to make, so one serves the process."""
    return certs.public_key_pem(certs.new_rsa_encryption_key().public_key())


def _node_info(node_key: ec.EllipticCurvePrivateKey, status: str) -> dict[str, object]:
    """NodeInfo as CCF records it (FORMATS §4.2), for a virtual (insecure) platform node."""
    rpc = {
        "bind_address": "127.0.0.1:8000",
        "published_address": "127.0.0.1:8000",
        "endorsement": {"authority": "Service"},
    }
    return {
        "certificate_signing_request": certs.node_csr(node_key),
        "code_digest": hashlib.sha384(b"charter-virtual-enclave").hexdigest(),
        "encryption_pub_key": _node_encryption_key_pem(),
        "ledger_secret_seqno": 0,
        "node_data": None,
        "node_to_node_interface": {
            "bind_address": "127.0.0.1:8001",
            "published_address": "127.0.0.1:8001",
            "protocol": "tcp",
        },
        "nodehost": "127.0.0.1",
        "nodeport": "8001",
        "pubhost": "127.0.0.1",
        "pubport": "8000",
        "public_key": _public_pem(node_key),
        "quote_info": {"endorsements": "", "format": "Insecure_Virtual", "quote": ""},
        "retired_committed": False,
        "rpc_interfaces": {"primary": rpc},
        "rpchost": "127.0.0.1",
        "rpcport": "8000",
        "status": status,
    }


class _Builder:
    """Appends transactions to history + writer and cuts chunks with the chunk policy."""

    def __init__(self, out: GeneratedLedger, writer: LedgerWriter, policy: ChunkPolicy) -> None:
        self.out = out
        self.writer = writer
        self.policy = policy
        self.history = out.history
        self.iat_s = IAT_START_S

    @property
    def next_seqno(self) -> int:
        return self.history.last_seqno + 1

    def _persist(self, record: TxRecord) -> None:
        self.writer.append(record.seqno, record.raw)
        self.policy.record(len(record.raw), record.flags)
        if record.flags & FLAG_FORCE_CHUNK_AFTER:
            self.out.chunk_ends.append(record.seqno)

    def transaction(
        self, public: WriteSet, private: WriteSet, claims_digest: bytes = ZERO_DIGEST
    ) -> int:
        record = self.history.add_transaction(
            seqno=self.next_seqno,
            view=VIEW,
            public=public,
            private=private,
            secret=self.out.secret,
            claims_digest=claims_digest,
        )
        self._persist(record)
        return record.seqno

    def signature(self, *, last: bool = False) -> int:
        flags = self.policy.flags_for_signature(_SIGNATURE_ENTRY_SIZE_BYTES_ESTIMATE)
        if last:
            flags = FLAG_FORCE_CHUNK_AFTER  # close the final chunk so it can be committed
        self.iat_s += 1
        record = self.history.add_signature(
            seqno=self.next_seqno,
            view=VIEW,
            node_id=self.out.node_id,
            node_key=self.out.node_key,
            node_cert_pem=self.out.node_cert_pem,
            service_key=self.out.service_key,
            secret=self.out.secret,
            iat=self.iat_s,
            flags=flags,
        )
        self._persist(record)
        self.out.signature_seqnos.append(record.seqno)
        return record.seqno


def generate_ledger(
    directory: str,
    *,
    transactions: int,
    signature_interval: int = 100,
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
    seed: int = 0,
) -> GeneratedLedger:
    """Write a committed ledger of exactly `transactions` entries (≥ 8) into `directory`."""
    assert transactions >= 8, "genesis, signatures and the opening need a few transactions"
    assert signature_interval >= 1
    rng = random.Random(seed)
    service_key = _derived_key(seed, "service")
    service_cert = certs.service_cert(service_key)
    node_key = _derived_key(seed, "node")
    node_cert = certs.endorse(
        node_key.public_key(), service_key, service_cert, san_ips=["127.0.0.1"]
    )
    member_key = _derived_key(seed, "member0")
    member_cert = certs.identity_cert(member_key, "member0")
    out = GeneratedLedger(
        directory=directory,
        last_seqno=0,
        view=VIEW,
        secret=hashlib.sha256(f"charter-ledger-secret:{seed}".encode()).digest(),
        service_key=service_key,
        service_cert_pem=certs.cert_pem(service_cert),
        node_key=node_key,
        node_id=certs.node_id(node_key.public_key()),
        node_cert_pem=certs.cert_pem(node_cert),
        member_key=member_key,
        member_cert_pem=certs.cert_pem(member_cert),
        member_id=certs.cert_id(member_cert),
        history=History(),
    )
    writer = LedgerWriter(directory, chunk_size_bytes=chunk_size_bytes)
    if writer.last_seqno:
        raise ValueError(f"{directory} already holds a ledger")
    build = _Builder(out, writer, ChunkPolicy(chunk_size_bytes))
    service_info = {
        "cert": out.service_cert_pem,
        "current_service_create_txid": f"{VIEW}.1",
        "recovery_count": 0,
        "service_data": {},
        "status": ss.ServiceStatus.OPENING,
    }
    member_key_id = out.member_id.encode()
    node_key_id = out.node_id.encode()
    constitution = {
        "actions": {},
        "default": {"approvals": "majority", "proposers": "active_members", "veto": False},
    }
    build.transaction(
        {
            ss.CONSTITUTION: {SINGLETON_KEY: _json(constitution)},
            ss.MEMBERS_ACKS: {member_key_id: _json({"state_digest": ""})},
            ss.MEMBERS_CERTS: {member_key_id: out.member_cert_pem.encode()},
            ss.MEMBERS_INFO: {
                member_key_id: _json({"member_data": None, "status": ss.MemberStatus.ACCEPTED})
            },
            ss.NODES_ENDORSED_CERTIFICATES: {node_key_id: out.node_cert_pem.encode()},
            ss.NODES_INFO: {node_key_id: _json(_node_info(node_key, ss.NodeStatus.TRUSTED))},
            ss.SERVICE_CONFIG: {
                SINGLETON_KEY: _json(
                    {"recovery_threshold": 1, "reconfiguration_type": "OneTransaction"}
                )
            },
            ss.SERVICE_INFO: {SINGLETON_KEY: _json(service_info)},
        },
        {},
    )
    build.signature()
    root_hex = out.history.last_signature.root.hex() if out.history.last_signature else ""
    build.transaction(
        {
            ss.MEMBERS_ACKS: {member_key_id: _json({"state_digest": root_hex})},
            ss.MEMBERS_INFO: {
                member_key_id: _json({"member_data": None, "status": ss.MemberStatus.ACTIVE})
            },
        },
        {},
    )
    proposal_id = hashlib.sha256(f"open:{seed}".encode()).hexdigest().encode()
    build.transaction(
        {
            ss.PROPOSALS: {
                proposal_id: _json(
                    {
                        "actions": [
                            {
                                "args": {"next_service_identity": out.service_cert_pem},
                                "name": "transition_service_to_open",
                            }
                        ]
                    }
                )
            },
            ss.PROPOSALS_INFO: {
                proposal_id: _json(
                    {"ballots": {}, "proposer_id": out.member_id, "state": "Accepted"}
                )
            },
            ss.SERVICE_INFO: {
                SINGLETON_KEY: _json({**service_info, "status": ss.ServiceStatus.OPEN})
            },
        },
        {},
    )
    out.open_seqno = build.history.last_seqno
    build.signature()
    since_signature = 0
    while build.next_seqno < transactions:
        seqno = build.next_seqno
        if since_signature == signature_interval:
            build.signature()
            since_signature = 0
            continue
        key = rng.randrange(1 << 20).to_bytes(8, "little")
        private: WriteSet = {"records": {key: rng.randbytes(rng.randrange(8, 64))}}
        public: WriteSet = {}
        claims = ZERO_DIGEST
        if seqno % 7 == 0:
            public["public:records"] = {key: f"value-{seqno}".encode()}
        if seqno % 13 == 0:
            private["records"][rng.randrange(1 << 20).to_bytes(8, "little")] = None
        if seqno % 29 == 0:
            claims = hashlib.sha256(f"claim-{seqno}".encode()).digest()
            out.app_seqnos_with_claims.append(seqno)
        build.transaction(public, private, claims)
        since_signature += 1
    build.signature(last=True)
    out.last_seqno = build.history.last_seqno
    assert out.last_seqno == transactions
    writer.flush()
    writer.commit(out.last_seqno)
    writer.close()
    logger.info(
        "generated ledger directory=%s transactions=%d signatures=%d chunks=%d",
        directory,
        out.last_seqno,
        len(out.signature_seqnos),
        len(out.chunk_ends),
    )
    return out
