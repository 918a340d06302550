"""Offline validation of a whole ledger directory, in constant memory.

Checks what `ccf.ledger.LedgerValidator.add_transaction` checks (FORMATS §3), in the same
order per transaction, plus the structural rules CCF's tools leave implicit:

- chunk files are well formed and contiguous, seqnos run 1, 2, 3, … and the IV seqno
  equals the public-domain seqno and the position in the ledger;
- node status and endorsed certificates are tracked from `public:ccf.gov.nodes.*`;
- every `public:ccf.internal.signatures` entry is signed by a known, non-Pending node over
  the root of the tree of all earlier leaves, and that root is the recomputed one;
- `public:ccf.gov.service.info` status transitions are legal (§4.3) and its `cert` verifies
  every later `public:ccf.internal.cose_signatures` COSE_Sign1 over the same root;
- deprecated entry types are refused unless `accept_deprecated_entry_types`.

Only the Merkle frontier (one hash per set bit of the tree size) and the governance state
needed for signatures are kept, so memory does not grow with the ledger. Private domains are
never decrypted, and public tables are decoded only when the entry can hold one of the
tables above (a table's name appears verbatim in the public domain when it is present).
With `workers`, forked processes scan chunks and verify signatures while this process keeps
the order-dependent state; the outcome, including the first failing seqno, is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import cose, merkle
from charter.ledger import service_state as ss
from charter.ledger.audit_attestation import AdmissionCheck
from charter.ledger.audit_checkpoint import (
    AuditCheckpoint,
    ExtensionFold,
    check_chunk_digests,
    chunk_digests,
    consistency_proof,
    frontier_ranges,
    frontier_root,
)
from charter.ledger.audit_locate import damaged_entry, entry_location, where
from charter.ledger.audit_scan import ChunkScan, scans
from charter.ledger.audit_snapshot import (
    SNAPSHOT_EVIDENCE_TABLE,
    evidence_matches,
    snapshot_start,
)
from charter.ledger.audit_workers import KIND_COSE, KIND_ROOT, Verifier, auto_workers
from charter.ledger.chunks import ChunkName, LedgerReader
from charter.ledger.entry import (
    WriteSet,
    decode_tables,
    entry_leaf,
)
from charter.ledger.errors import (
    AuditError,
    AuditInterrupted,
    LedgerError,
    VerificationError,
)
from charter.ledger.signatures import (
    MAX_COSE_SIGNATURE_BYTES,
    TREE_TABLE,
    NodeSignature,
    parse_cose_signature,
    parse_signature,
    verify_root,
)

logger = logging.getLogger(__name__)

NODES_INFO = ss.NODES_INFO
ENDORSED_CERTS = ss.NODES_ENDORSED_CERTIFICATES
SIGNATURES = ss.SIGNATURES
COSE_SIGNATURES = ss.COSE_SIGNATURES
SERVICE_INFO = ss.SERVICE_INFO
SINGLETON_KEY = ss.SINGLETON_KEY

SIGNATURE_JSON_BYTES_MAX = 1024 * 1024
NODE_INFO_JSON_BYTES_MAX = 4 * 1024 * 1024

_SERVICE_TRANSITIONS: dict[str, frozenset[str]] = {
    ss.ServiceStatus.OPENING: frozenset(
        {ss.ServiceStatus.OPEN, ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES}
    ),
    ss.ServiceStatus.RECOVERING: frozenset({ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES}),
    ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES: frozenset({ss.ServiceStatus.OPEN}),
    ss.ServiceStatus.OPEN: frozenset({ss.ServiceStatus.RECOVERING}),
}

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What an audit established about a ledger directory."""

    transactions: int
    signatures: int
    cose_signatures: int
    last_seqno: int
    last_view: int
    last_signed_txid: str | None
    # Transactions after the last signature: well formed, but not covered by any root.
    unsigned_transactions: int
    service_status: str | None
    service_cert_pem: str | None
    chunks: int
    deprecated_entries: int
    nodes: dict[str, str] = field(default_factory=dict)
    root: bytes = b""
    # With `checkpoint=True`: where this audit ended, for a later `since=` audit.
    checkpoint: AuditCheckpoint | None = None
    # With `since=`: the seqno it resumed after, and the proof that the last signed root
    # verified extends the checkpoint's (None when no signature followed the checkpoint).
    resumed_from: int | None = None
    extension: Extension | None = None


@dataclass(frozen=True, slots=True)
class Extension:
    """An RFC 9162 consistency proof between two signed roots of the same ledger: the tree
    of `new_size` leaves (root `new_root`) extends the one of `old_size` (root `old_root`).
    Check it with `check_consistency(old_root, old_size, new_root, new_size, proof)`."""

    old_size: int
    old_root: bytes
    new_size: int
    new_root: bytes
    proof: tuple[bytes, ...]


class MerkleFrontier:
    """The right edge of CCF's Merkle tree: enough to append leaves and compute the root.

    Holds one perfect-subtree root per set bit of the size (≤ 64 hashes), largest first.
    """

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self._nodes: list[bytes] = [merkle.ZERO_LEAF]  # leaf 0 is 32 zero bytes, not hashed
        self.size = 1

    @classmethod
    def resume(cls, nodes: Sequence[bytes], size: int) -> MerkleFrontier:
        """The frontier of a tree of `size` leaves, from its perfect-subtree roots."""
        assert len(nodes) == size.bit_count() and size >= 1
        frontier = cls()
        frontier._nodes = list(nodes)
        frontier.size = size
        return frontier

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        nodes = self._nodes
        nodes.append(leaf)
        index = self.size
        self.size = index + 1
        sha256 = hashlib.sha256
        # Each trailing 1 bit of the old size closes a pair of equal perfect subtrees.
        while index & 1:
            right = nodes.pop()
            nodes[-1] = sha256(nodes[-1] + right).digest()
            index >>= 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Append many 32-byte leaves: same result as `append` on each, level by level.

        At each level the new nodes are paired left to right (a frontier node whose right
        sibling is the first new node joins them first); an unpaired last node becomes the
        new frontier node of that level. Hashing a level in one comprehension is what makes
        this faster than appending one leaf at a time.
        """
        nodes = self._nodes
        old_size = self.size
        current = list(leaves)
        count = len(current)
        sha256 = hashlib.sha256
        new_low: list[bytes] = []  # new frontier nodes, lowest level first
        level = 0
        while current:
            if (old_size >> level) & 1:
                # The old tree has a perfect subtree at this level whose sibling is new.
                current.insert(0, nodes.pop())
            if len(current) & 1:
                new_low.append(current.pop())
            current = [
                sha256(a + b).digest() for a, b in zip(current[0::2], current[1::2], strict=True)
            ]
            level += 1
        nodes.extend(reversed(new_low))
        self.size = old_size + count

    def append_subtree(self, level: int, node: bytes) -> None:
        """Append the root of a perfect subtree of 2**level leaves (the size must be a
        multiple of that): same result as appending its leaves one by one."""
        index = self.size >> level
        assert index << level == self.size, "a subtree must start at a multiple of its size"
        nodes = self._nodes
        nodes.append(node)
        self.size += 1 << level
        sha256 = hashlib.sha256
        while index & 1:
            right = nodes.pop()
            nodes[-1] = sha256(nodes[-1] + right).digest()
            index >>= 1

    def root(self) -> bytes:
        nodes = self._nodes
        acc = nodes[-1]
        for node in reversed(nodes[:-1]):
            acc = hashlib.sha256(node + acc).digest()
        return acc


def check_consistency(
    old_root: bytes, old_size: int, new_root: bytes, new_size: int, proof: Sequence[bytes]
) -> None:
    """Check that the tree `old_root` (of `old_size` leaves) is a prefix of `new_root`.

    Raises VerificationError when the consistency proof does not show it.
    """
    if not merkle.verify_consistency(old_size, new_size, old_root, new_root, proof):
        raise VerificationError(
            f"no consistency between tree sizes {old_size} and {new_size}", field="proof"
        )


class _Auditor:
    """Validator state: the frontier plus what the governance tables say about signers."""

    def __init__(
        self,
        *,
        accept_deprecated: bool,
        verifier: Verifier | None = None,
        directory: str = "",
        chunks: Sequence[ChunkName] = (),
        checkpointing: bool = False,
    ) -> None:
        self.accept_deprecated = accept_deprecated
        self.frontier = MerkleFrontier()
        # Where the entries are, to name a damaged one's file and offset.
        self.directory = directory
        self.chunks = list(chunks)
        # With `checkpointing`, the state after the latest signature is kept (`mark`).
        self.checkpointing = checkpointing
        self.mark: AuditCheckpoint | None = None
        self._last_cose: tuple[int, bytes] | None = None
        self._last_sig: tuple[bytes, NodeSignature] | None = None  # frontier root, record
        # Resuming from a checkpoint: the fold behind the consistency proof, and the nodes
        # for a proof up to the latest signature verified.
        self.fold: ExtensionFold | None = None
        self.proof_point: tuple[int, bytes, dict[tuple[int, int], bytes]] | None = None
        # Starting from a snapshot: (its seqno, its digest), and where its evidence was found.
        self.expected_evidence: tuple[int, str] | None = None
        self.evidence_seqno: int | None = None
        # With a verifier, signature checks are deferred to it (and its worker processes).
        self.verifier = verifier
        # With the attestation check, governance's admissions replayed (audit_attestation).
        self.admissions: AdmissionCheck | None = None
        self.node_status: dict[str, str] = {}
        self.node_certs: dict[str, bytes] = {}
        self.service_status: str | None = None
        self.service_cert: str | None = None
        self.signatures = 0
        self.cose_signatures = 0
        self.deprecated = 0
        self.last_signed: tuple[int, int] | None = None
        self._keys: dict[bytes, _Key] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _public_key(self, pem: bytes, seqno: int, what: str) -> _Key:
        key = self._keys.get(pem)
        if key is None:
            try:
                loaded = x509.load_pem_x509_certificate(pem).public_key()
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise AuditError(f"{what} is not a PEM certificate", seqno=seqno) from None
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise AuditError(f"{what} does not hold an ECDSA key", seqno=seqno)
            if len(self._keys) > 1024:  # certificates rotate rarely; bound the cache anyway
                self._keys.clear()
            spki = loaded.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            kid = hashlib.sha256(spki).hexdigest().encode("ascii")
            self._keys[pem] = key = _Key(loaded, spki, kid)
        return key

    @staticmethod
    def _json(value: bytes | None, seqno: int, what: str, limit: int) -> Any:
        if value is None:
            raise AuditError(f"{what} removed", seqno=seqno)
        if len(value) > limit:
            raise AuditError(f"{what} exceeds {limit} bytes", seqno=seqno)
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AuditError(f"{what} is not JSON", seqno=seqno) from None

    # -- one chunk ---------------------------------------------------------------------------

    def absorb(self, scan: ChunkScan) -> tuple[int, int]:
        """Apply a chunk scan in seqno order: leaves into the tree, special entries through
        the validator's checks before their own leaf; then the scan's error, if any."""
        if scan.segments is not None:
            return self._absorb_folded(scan)
        frontier = self.frontier
        first = scan.first
        leaves = scan.leaves
        cursor = 0
        fold = self.fold
        for seqno, view, tables_bytes in scan.special:
            index = seqno - first
            frontier.extend(leaves[cursor:index])
            if fold is not None:
                fold.extend(leaves[cursor:index])
            cursor = index
            assert frontier.size == seqno, "tree size must equal the next seqno"
            try:
                tables = decode_tables(tables_bytes, 0, len(tables_bytes), base=0)
            except LedgerError as exc:
                raise AuditError(f"bad public domain: {exc}", seqno=seqno) from None
            self.governance(tables, seqno, view)
            if self.checkpointing and self.last_signed == (view, seqno):
                self._take_mark(seqno, view, leaves[index])
        frontier.extend(leaves[cursor:])
        if fold is not None:
            fold.extend(leaves[cursor:])
        self.deprecated += scan.deprecated
        if scan.error is not None:
            raise AuditError(
                scan.error[1].removeprefix(f"seqno {scan.error[0]}: "), seqno=scan.error[0]
            )
        return frontier.size - 1, scan.last_view

    def _absorb_folded(self, scan: ChunkScan) -> tuple[int, int]:
        """`absorb` for a scan whose leaves arrive folded into subtrees (see audit_scan)."""
        assert scan.segments is not None and self.fold is None
        frontier = self.frontier
        append = frontier.append_subtree
        for index, (seqno, view, tables_bytes) in enumerate(scan.special):
            for level, node in scan.segments[index]:
                append(level, node)
            assert frontier.size == seqno, "tree size must equal the next seqno"
            try:
                tables = decode_tables(tables_bytes, 0, len(tables_bytes), base=0)
            except LedgerError as exc:
                raise AuditError(f"bad public domain: {exc}", seqno=seqno) from None
            self.governance(tables, seqno, view)
            if self.checkpointing and self.last_signed == (view, seqno):
                self._take_mark(seqno, view, scan.special_leaves[index])
        for level, node in scan.segments[-1]:
            append(level, node)
        self.deprecated += scan.deprecated
        if scan.error is not None:
            raise AuditError(
                scan.error[1].removeprefix(f"seqno {scan.error[0]}: "), seqno=scan.error[0]
            )
        return frontier.size - 1, scan.last_view

    # -- one transaction ---------------------------------------------------------------------

    def governance(self, tables: WriteSet, seqno: int, view: int) -> None:
        """Steps 1-5 of LedgerValidator.add_transaction for an entry with interesting tables."""
        self_signed: set[str] = set()
        if self.admissions is not None:
            self.admissions.absorb(tables, seqno)
        for key, value in tables.get(NODES_INFO, {}).items():
            node_id = key.decode(errors="replace")
            if value is None:
                # CCF's tool pops unconditionally; a removal of an unknown id is harmless here.
                self.node_status.pop(node_id, None)
                continue
            info = self._json(value, seqno, f"nodes.info[{node_id}]", NODE_INFO_JSON_BYTES_MAX)
            if not isinstance(info, dict) or not isinstance(info.get("status"), str):
                raise AuditError(f"nodes.info[{node_id}] has no status", seqno=seqno)
            if isinstance(info.get("cert"), str):  # 1.x: the node's self-signed cert
                self.node_certs[node_id] = info["cert"].encode()
                self_signed.add(node_id)
            self.node_status[node_id] = info["status"]
        for key, value in tables.get(ENDORSED_CERTS, {}).items():
            node_id = key.decode(errors="replace")
            if node_id in self_signed:
                raise AuditError(
                    f"node {node_id} has both a self-signed and an endorsed certificate",
                    seqno=seqno,
                )
            if value is None:
                self.node_certs.pop(node_id, None)
            else:
                self.node_certs[node_id] = value
        signatures = tables.get(SIGNATURES)
        if signatures:
            self.signatures += 1
            tree = tables.get(TREE_TABLE, {}).get(SINGLETON_KEY)
            for value in signatures.values():
                self._check_signature(value, seqno, view, tree)
        if self.expected_evidence is not None and self.evidence_seqno is None:
            snapshot_seqno, digest = self.expected_evidence
            for value in tables.get(SNAPSHOT_EVIDENCE_TABLE, {}).values():
                if evidence_matches(value, snapshot_seqno, digest):
                    self.evidence_seqno = seqno
        service = tables.get(SERVICE_INFO)
        if service is not None:
            self._check_service(service.get(SINGLETON_KEY), seqno)
        cose_table = tables.get(COSE_SIGNATURES)
        if cose_table is not None:
            self._check_cose(cose_table.get(SINGLETON_KEY), seqno)

    def _check_signature(
        self, value: bytes | None, seqno: int, view: int, tree: bytes | None = None
    ) -> None:
        if value is None:
            raise AuditError("signature removed", seqno=seqno)
        try:
            sig = parse_signature(value)
        except LedgerError as exc:
            raise AuditError(f"malformed signature record: {exc}", seqno=seqno) from None
        if (sig.seqno, sig.view) != (seqno, view):
            # CCF's tool does not look, but a signature always names its own TxID.
            raise AuditError(
                f"signature record names {sig.view}.{sig.seqno}, not its txid {view}.{seqno}",
                seqno=seqno,
            )
        node_id = sig.node_id
        status = self.node_status.get(node_id)
        if status is None:
            raise AuditError(f"signing node {node_id} is not part of the network", seqno=seqno)
        if status == ss.NodeStatus.PENDING:
            raise AuditError(f"signing node {node_id} is still Pending", seqno=seqno)
        if self.admissions is not None:
            self.admissions.require_admitted(node_id, seqno)
        cert = self.node_certs.get(node_id)
        if cert is None:
            raise AuditError(f"signing node {node_id} has no certificate", seqno=seqno)
        key = self._public_key(cert, seqno, f"certificate of node {node_id}")
        if sig.cert_pem is not None:
            embedded = self._public_key(sig.cert_pem.encode(), seqno, "signature cert")
            if embedded.spki != key.spki:
                raise AuditError(f"public key mismatch for node {node_id}", seqno=seqno)
        what = f"invalid root signature by node {node_id}"
        if self.verifier is not None:
            self.verifier.submit(
                seqno, what, KIND_ROOT, key.public_key, key.spki, sig.root, sig.sig
            )
        else:
            try:
                verify_root(key.public_key, sig.root, sig.sig)
            except LedgerError as exc:
                raise AuditError(f"{what}: {exc}", seqno=seqno) from None
        expected = self.frontier.root()
        if sig.root != expected:
            # Name the changed entry when the signature's own tree table can show which.
            located = damaged_entry(
                self.directory, self.chunks, seqno, sig.root, key.public_key, sig.sig, tree
            )
            if located is not None:
                raise located
            raise AuditError(
                f"signed root {sig.root.hex()} differs from computed root {expected.hex()}",
                seqno=seqno,
            )
        self.last_signed = (view, seqno)
        if self.checkpointing:
            self._last_sig = (expected, sig)
        if self.fold is not None:
            self.proof_point = (seqno, sig.root, self.fold.known())

    def _check_service(self, value: bytes | None, seqno: int) -> None:
        info = self._json(value, seqno, "service.info", NODE_INFO_JSON_BYTES_MAX)
        if not isinstance(info, dict) or not isinstance(info.get("status"), str):
            raise AuditError("service.info has no status", seqno=seqno)
        status = info["status"]
        previous = self.service_status
        # Any → Opening (disaster recovery) and same → same are always allowed (§4.3).
        if status != ss.ServiceStatus.OPENING and previous is not None and previous != status:
            allowed = _SERVICE_TRANSITIONS.get(previous, frozenset())
            if status not in allowed:
                raise AuditError(
                    f"illegal service status transition {previous} -> {status}", seqno=seqno
                )
        cert = info.get("cert")
        if not isinstance(cert, str):
            raise AuditError("service.info has no cert", seqno=seqno)
        self.service_status = status
        self.service_cert = cert

    def _check_cose(self, value: bytes | None, seqno: int) -> None:
        if self.service_cert is None:
            raise AuditError("COSE signature before any service certificate", seqno=seqno)
        if value is None:
            raise AuditError("cose signature removed", seqno=seqno)
        what = "invalid COSE root signature"
        try:
            key = self._public_key(self.service_cert.encode(), seqno, "service certificate")
            encoded = parse_cose_signature(value)
            message = cose.decode_sign1(encoded, max_bytes=MAX_COSE_SIGNATURE_BYTES)
            # The checks of signatures.verify_cose_root_signature, with the kid cached.
            if message.kid != key.kid:
                raise VerificationError("kid does not match the service key", field="kid")
            if message.protected.get(cose.HEADER_VDS) != cose.VDS_CCF_LEDGER_SHA256:
                raise VerificationError("vds must be CCF_LEDGER_SHA256", field="vds")
            root = self.frontier.root()
            if self.verifier is not None:
                self.verifier.submit(
                    seqno, what, KIND_COSE, key.public_key, key.spki, encoded, root
                )
            else:
                cose.verify_sign1(message, key.public_key, detached_payload=root)
        except LedgerError as exc:
            raise AuditError(f"{what}: {exc}", seqno=seqno) from None
        self.cose_signatures += 1
        if self.checkpointing:
            self._last_cose = (seqno, encoded)

    # -- checkpoints -------------------------------------------------------------------------

    def _take_mark(self, seqno: int, view: int, leaf: bytes) -> None:
        """Keep the state just after signature transaction `seqno` (leaf not yet added)."""
        assert self._last_sig is not None and self.frontier.size == seqno
        root, sig = self._last_sig
        cose_sign1 = self._last_cose[1] if self._last_cose and self._last_cose[0] == seqno else None
        self.mark = AuditCheckpoint(
            seqno=seqno,
            view=view,
            root=root,
            frontier=self.frontier.nodes,
            leaf=leaf,
            node_id=sig.node_id,
            signature=sig.sig,
            cose_sign1=cose_sign1,
            service_status=self.service_status,
            service_cert_pem=self.service_cert,
            node_status=dict(self.node_status),
            node_certs={k: v.decode(errors="replace") for k, v in self.node_certs.items()},
            signatures=self.signatures,
            cose_signatures=self.cose_signatures,
            deprecated_entries=self.deprecated,
            chunks=(),
        )

    def resume(self, checkpoint: AuditCheckpoint, *, what: str = "checkpoint") -> None:
        """Start from a checkpoint after checking that it is what an audit produced: its
        frontier folds to its signed root, which its node (and the service) signed."""
        seqno = checkpoint.seqno
        if frontier_root(checkpoint.frontier) != checkpoint.root:
            raise AuditError(
                f"{what} refused: its Merkle frontier does not fold to its signed root",
                seqno=seqno,
            )
        status = checkpoint.node_status.get(checkpoint.node_id)
        cert = checkpoint.node_certs.get(checkpoint.node_id)
        if status is None or status == ss.NodeStatus.PENDING or cert is None:
            raise AuditError(
                f"{what} refused: its signing node {checkpoint.node_id} is not a trusted "
                "node of its own state",
                seqno=seqno,
            )
        key = self._public_key(cert.encode(), seqno, "checkpoint's node certificate")
        try:
            verify_root(key.public_key, checkpoint.root, checkpoint.signature)
            if checkpoint.cose_sign1 is not None:
                if checkpoint.service_cert_pem is None:
                    raise VerificationError("COSE signature without a service certificate")
                service = self._public_key(
                    checkpoint.service_cert_pem.encode(), seqno, "checkpoint's service certificate"
                )
                message = cose.decode_sign1(
                    checkpoint.cose_sign1, max_bytes=MAX_COSE_SIGNATURE_BYTES
                )
                if message.kid != service.kid:
                    raise VerificationError("kid does not match the service key", field="kid")
                cose.verify_sign1(message, service.public_key, detached_payload=checkpoint.root)
        except LedgerError:
            raise AuditError(
                f"{what} refused: the signatures over its root do not verify (forged or corrupted)",
                seqno=seqno,
            ) from None
        self.frontier = MerkleFrontier.resume(checkpoint.frontier, seqno)
        self.frontier.append(checkpoint.leaf)
        self.fold = ExtensionFold(seqno)
        self.fold.extend([checkpoint.leaf])
        self.node_status = dict(checkpoint.node_status)
        self.node_certs = {k: v.encode() for k, v in checkpoint.node_certs.items()}
        self.service_status = checkpoint.service_status
        self.service_cert = checkpoint.service_cert_pem
        self.signatures = checkpoint.signatures
        self.cose_signatures = checkpoint.cose_signatures
        self.deprecated = checkpoint.deprecated_entries
        self.last_signed = (checkpoint.view, seqno)
        self.mark = checkpoint if self.checkpointing else None

    def extension(self, checkpoint: AuditCheckpoint) -> Extension | None:
        """The consistency proof from the checkpoint's root to the last root verified."""
        if self.proof_point is None:
            return None
        new_size, new_root, known = self.proof_point
        old_size = checkpoint.seqno
        known.update(zip(frontier_ranges(old_size), checkpoint.frontier, strict=True))
        proof = consistency_proof(old_size, new_size, known)
        # Check what is handed out: it must hold for the two signed roots.
        check_consistency(checkpoint.root, old_size, new_root, new_size, proof)
        return Extension(old_size, checkpoint.root, new_size, new_root, tuple(proof))


@dataclass(frozen=True, slots=True)
class _Key:
    """A certificate's public key with its SPKI DER and CCF kid, computed once."""

    public_key: ec.EllipticCurvePublicKey
    spki: bytes
    kid: bytes


def audit(
    directory: str,
    *,
    service_cert_pem: str | None = None,
    progress: ProgressCallback | None = None,
    accept_deprecated_entry_types: bool = False,
    committed_only: bool = True,
    workers: int | None = None,
    since: AuditCheckpoint | None = None,
    checkpoint: bool = False,
    snapshot: bytes | None = None,
    check_attestation: bool = False,
) -> AuditReport:
    """Validate every transaction of the ledger in `directory`; AuditError at the first bad one.

    `service_cert_pem`, when given, must be the service identity the ledger ends with.
    `committed_only` (default, as `ccf.ledger.Ledger`) reads only `*.committed` chunks.
    `workers` > 0 forks that many processes that verify signatures (see `charter.ledger.audit_workers`)
    while this one scans, hashes and applies the validator's checks in order, verifying
    signatures too whenever the workers have enough queued; the result, including which
    seqno fails first and why, is the same as with `workers=0` (everything in this process).
    None picks a number from the CPUs and the ledger's size (0 for small ledgers, or when
    this process runs other threads; 1 on a 2-core machine).

    `checkpoint=True` puts in the report an `AuditCheckpoint` of the state after the last
    signature verified. `since=` a checkpoint audits only the entries after it: the
    checkpoint is refused unless its signatures verify and every chunk it covered still
    holds the bytes it was taken from, and the report's `extension` is the consistency
    proof from its signed root to the last one verified.

    `snapshot=` the bytes of a snapshot file audits a ledger that starts after it (see
    `charter.ledger.audit_snapshot`): the snapshot's signed root and frontier are checked,
    the ledger is audited from the snapshot's seqno + 1, and the snapshot's evidence
    transaction must be among the audited entries, followed by a signature.

    `check_attestation=True` also replays governance's admissions (see
    `charter.ledger.audit_attestation`): every node's evidence must pass the join policy of
    the transaction that recorded it, and every signer must have been admitted so. It needs
    the whole ledger, so it refuses `since=` and `snapshot=`.
    """
    if check_attestation and (since is not None or snapshot is not None):
        raise ValueError("the attestation check needs the ledger from seqno 1")
    evidence: tuple[int, str] | None = None
    if snapshot is not None:
        if since is not None:
            raise ValueError("give a checkpoint or a snapshot to start from, not both")
        try:
            start = snapshot_start(snapshot)
        except LedgerError as exc:
            raise AuditError(f"snapshot refused: {exc}") from None
        since = start.checkpoint
        evidence = (since.seqno, start.digest)
    try:
        reader = LedgerReader(directory, committed_only=committed_only)
    except LedgerError as exc:
        raise _as_audit_error(exc) from None
    if not reader.chunks:
        raise AuditError(f"no ledger chunks in {directory}")
    # Where the ledger must start: at 1, or (for a ledger that a node started from a
    # snapshot) right after the snapshot, or where the checkpoint's first chunk started.
    must_start = 1
    if evidence is not None:
        must_start = evidence[0] + 1
    elif since is not None and since.chunks:
        must_start = since.chunks[0].first
    if reader.chunks[0].first > must_start or (since is None and reader.chunks[0].first != 1):
        raise AuditError(f"ledger does not start at seqno {must_start}", seqno=must_start)
    total = max(c.last or c.first for c in reader.chunks)
    resume_at = since.seqno + 1 if since is not None else 1
    jobs = [
        (
            os.path.join(directory, c.filename),
            c.first,
            c.last,
            accept_deprecated_entry_types,
            max(c.first, resume_at),
        )
        for c in reader.chunks
        if c.last is None or c.last >= resume_at
    ]
    if workers is None:
        size_bytes = sum(os.path.getsize(job[0]) for job in jobs)
        workers = auto_workers(size_bytes, threads=threading.active_count())
    state = _Auditor(
        accept_deprecated=accept_deprecated_entry_types,
        directory=directory,
        chunks=reader.chunks,
        checkpointing=checkpoint,
    )
    if check_attestation:
        state.admissions = AdmissionCheck()
    seqno = view = 0
    chunk_count = len(reader.chunks) - len(jobs)
    if since is not None:
        state.resume(since, what="checkpoint" if evidence is None else "snapshot")
        if evidence is None:
            _check_checkpoint_matches(since, directory, reader.chunks)
        state.expected_evidence = evidence
        seqno, view = since.seqno, since.view
    verifier = Verifier(workers) if workers > 0 else None
    state.verifier = verifier
    try:
        # With workers, chunks are scanned in parts by a pool of processes while this one
        # applies the validator's checks in order (see audit_scan).
        for scan in scans(jobs, processes=workers, leaves=since is not None):
            chunk_count += scan.ends_chunk
            seqno, view = state.absorb(scan)
            total = max(total, seqno)
            if progress is not None:
                progress(seqno, total)
        if verifier is not None:
            verifier.settle()
    except KeyboardInterrupt:
        # Stop cleanly: the last signature point is a valid checkpoint once every
        # verification submitted before it has finished (a few ms of queued jobs).
        if verifier is not None:
            try:
                verifier.settle()
            except AuditError as first:
                raise _located(first, directory, reader.chunks) from None
        mark = state.mark
        if mark is not None:
            mark = dataclasses.replace(
                mark,
                chunks=chunk_digests(
                    directory, reader.chunks, mark.seqno, since.chunks if since else ()
                ),
            )
        done = state.frontier.size - 1  # leaves appended: entries scanned in order
        raise AuditInterrupted(seqno=done, total=total, checkpoint=mark) from None
    except AuditError as failure:
        # Every verification submitted so far precedes this failure in the serial order,
        # so a failed one among them is the first failure.
        if verifier is not None:
            try:
                verifier.settle()
            except AuditError as first:
                raise _located(first, directory, reader.chunks) from None
        raise _located(failure, directory, reader.chunks) from None
    finally:
        if verifier is not None:
            verifier.close()
    if evidence is not None:
        evidence_seqno = state.evidence_seqno
        if evidence_seqno is None:
            raise AuditError(
                f"snapshot refused: no transaction after it records its digest {evidence[1]} "
                f"as the evidence of the snapshot at seqno {evidence[0]}"
            )
        if state.last_signed is None or state.last_signed[1] <= evidence_seqno:
            raise AuditError(
                f"snapshot refused: its evidence at seqno {evidence_seqno} is not covered by "
                "a signature",
                seqno=evidence_seqno,
            )
    if service_cert_pem is not None:
        if state.service_cert is None:
            raise AuditError("ledger records no service certificate")
        given = state._public_key(service_cert_pem.encode(), seqno, "given service certificate")
        found = state._public_key(state.service_cert.encode(), seqno, "service certificate")
        if given.spki != found.spki:
            raise AuditError("ledger's service identity is not the given service certificate")
    last_signed = state.last_signed
    mark = state.mark
    if mark is not None:
        digests = chunk_digests(
            directory, reader.chunks, mark.seqno, since.chunks if since is not None else ()
        )
        mark = dataclasses.replace(mark, chunks=digests)
    return AuditReport(
        transactions=seqno,
        signatures=state.signatures,
        cose_signatures=state.cose_signatures,
        last_seqno=seqno,
        last_view=view,
        last_signed_txid=f"{last_signed[0]}.{last_signed[1]}" if last_signed else None,
        unsigned_transactions=seqno - (last_signed[1] if last_signed else 0),
        service_status=state.service_status,
        service_cert_pem=state.service_cert,
        chunks=chunk_count,
        deprecated_entries=state.deprecated,
        nodes=dict(state.node_status),
        root=state.frontier.root(),
        checkpoint=mark,
        resumed_from=since.seqno if since is not None else None,
        extension=state.extension(since) if since is not None else None,
    )


def _located(error: AuditError, directory: str, chunks: Sequence[ChunkName]) -> AuditError:
    """The error with the chunk file and offset of its entry, if it does not name them."""
    if error.seqno is None or " (in ledger_" in str(error):
        return error
    message = str(error).removeprefix(f"seqno {error.seqno}: ")
    return AuditError(message + where(directory, chunks, error.seqno), seqno=error.seqno)


def _check_checkpoint_matches(
    since: AuditCheckpoint, directory: str, chunks: Sequence[ChunkName]
) -> None:
    """AuditError unless the ledger still holds, byte for byte, what the checkpoint covered."""
    last = max(c.last or c.first for c in chunks)
    if last < since.seqno:
        raise AuditError(
            f"checkpoint refused: it ends at seqno {since.seqno} but the ledger at {last}",
            seqno=last + 1,
        )
    check_chunk_digests(directory, chunks, since.chunks)
    location = entry_location(directory, chunks, since.seqno)
    reader_leaf = None
    if location is not None:
        with open(os.path.join(directory, location[0]), "rb") as f:
            f.seek(location[1])
            header = f.read(8)
            size = 8 + int.from_bytes(header[2:8], "little")
            f.seek(location[1])
            try:
                reader_leaf = entry_leaf(f.read(size))
            except LedgerError:
                reader_leaf = None
    if reader_leaf != since.leaf:
        raise AuditError(
            "checkpoint refused: the ledger's signature transaction at its seqno is not "
            "the one it was taken at",
            seqno=since.seqno,
        )


def _as_audit_error(exc: LedgerError) -> AuditError:
    if isinstance(exc, AuditError):
        return exc
    return AuditError(f"{type(exc).__name__}: {exc}")
