"""The enclave's transaction history: entries, Merkle tree and signature transactions.

Pure (no I/O): the enclave (and `charter.ledger.generate`) hands it write sets and gets back the
raw entries to persist and replicate, with what receipts need. A replica feeds it the raw
entries it receives (`append_raw`), which checks signature entries against its own tree
before accepting them. Rollback (`truncate`) keeps tree, receipts material and seqnos in
step with the ledger files and the KV store.

Memory: the tree holds ~64 bytes per leaf and this class ~150 bytes of leaf components per
transaction since the last `compact(seqno)`, which the caller invokes once receipts below a
committed seqno are no longer served from memory.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger.entry import (
    FLAG_FORCE_CHUNK_AFTER,
    FLAG_FORCE_CHUNK_BEFORE,
    ZERO_DIGEST,
    Entry,
    WriteSet,
    commit_evidence,
    commit_evidence_digest,
    decode_entry,
    decrypt_private,
    encode_entry,
    leaf_hash,
    write_set_digest,
)
from charter.ledger.errors import DecodeError, VerificationError
from charter.ledger.merkle import InclusionProof, MerkleTree
from charter.ledger.signatures import (
    COSE_SIGNATURES_TABLE,
    DEFAULT_COSE_ISSUER,
    DEFAULT_COSE_SUBJECT,
    SIGNATURES_TABLE,
    SINGLETON_KEY,
    cose_root_signature,
    parse_cose_signature,
    parse_signature,
    sign_root,
    signature_tables,
)

logger = logging.getLogger(__name__)

_KNOWN_FLAGS = FLAG_FORCE_CHUNK_AFTER | FLAG_FORCE_CHUNK_BEFORE


class TxRecord(NamedTuple):
    """One appended transaction: the entry bytes to persist and its Merkle leaf inputs.

    `commit_evidence` is None for entries a replica appended without the ledger secret.
    A named tuple, not a frozen dataclass, for the same immutability at a third of the
    cost: one is built for every write (a frozen dataclass sets each field through
    `object.__setattr__`).
    """

    seqno: int
    view: int
    raw: bytes
    leaf: bytes
    write_set_digest: bytes
    commit_evidence: str | None
    claims_digest: bytes
    flags: int = 0
    is_signature: bool = False


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    """A signature transaction: the root it signed (tree of leaves 0..seqno-1) and by whom."""

    seqno: int
    view: int
    node_id: str
    node_cert_pem: str | None
    root: bytes
    signature: bytes  # DER ECDSA by the node key over the root
    cose_sign1: bytes  # the service's COSE_Sign1 over the root (detached payload)


# What a receipt needs of one transaction, kept per seqno: (view, write_set_digest,
# commit_evidence, claims_digest, is_signature). An exact tuple, not a named one: a tuple of
# ints, bytes, str and None leaves the garbage collector's tracking at the first collection
# it survives, a NamedTuple (a tuple subclass) never does, and a node keeps one per retained
# transaction (`memory.receipt_transactions`, 100,000 by default): every full collection
# walked them all (17.5 ms of a 100,000-write node's 20; see docs/performance.md).
_Components = tuple[int, bytes, str | None, bytes, bool]


class History:
    """Transaction history over a `MerkleTree` whose leaf i is seqno i (leaf 0 is zero)."""

    def __init__(self, *, deterministic_signatures: bool = False) -> None:
        # RFC 6979 signatures (the seeded simulator's byte-identical ledgers); see sign_root.
        self.deterministic_signatures = deterministic_signatures
        self.tree = MerkleTree()
        self._components: dict[int, _Components] = {}
        self._signature_seqnos: list[int] = []
        self._signatures: dict[int, SignatureRecord] = {}

    @property
    def last_seqno(self) -> int:
        return self.tree.size - 1

    @property
    def last_signature(self) -> SignatureRecord | None:
        if not self._signature_seqnos:
            return None
        return self._signatures[self._signature_seqnos[-1]]

    def _append(
        self, raw: bytes, seqno: int, view: int, components: _Components, leaf: bytes
    ) -> None:
        assert self.tree.size == seqno, "tree size must equal the seqno being appended"
        self.tree.append(leaf)
        self._components[seqno] = components

    def add_transaction(
        self,
        *,
        seqno: int,
        view: int,
        public: WriteSet,
        private: WriteSet,
        secret: bytes,
        claims_digest: bytes = ZERO_DIGEST,
        flags: int = 0,
    ) -> TxRecord:
        """Encode and append one transaction at `seqno` (= last_seqno + 1)."""
        if seqno != self.tree.size:
            raise ValueError(f"next seqno is {self.tree.size}, not {seqno}")
        assert flags & ~_KNOWN_FLAGS == 0
        evidence = commit_evidence(secret, view, seqno)
        evidence_digest = commit_evidence_digest(evidence)
        raw = encode_entry(
            seqno=seqno,
            view=view,
            public=public,
            private=private,
            secret=secret,
            commit_evidence_digest=evidence_digest,
            claims_digest=claims_digest,
            flags=flags,
        )
        wsd = write_set_digest(raw)
        leaf = leaf_hash(wsd, evidence_digest, claims_digest)
        self._append(raw, seqno, view, (view, wsd, evidence, claims_digest, False), leaf)
        return TxRecord(seqno, view, raw, leaf, wsd, evidence, claims_digest, flags)

    def _tree_from(self) -> int:
        # CCF serialises the leaves it still holds in memory: those since its last flush,
        # which is about the previous signature. We use the previous signature's seqno.
        previous = self._signature_seqnos[-1] if self._signature_seqnos else 0
        return max(previous, self.tree.min_index)

    def add_signature(
        self,
        *,
        seqno: int,
        view: int,
        node_id: str,
        node_key: ec.EllipticCurvePrivateKey,
        node_cert_pem: str | None,
        service_key: ec.EllipticCurvePrivateKey,
        secret: bytes,
        iat: int,
        flags: int = 0,
        issuer: str = DEFAULT_COSE_ISSUER,
        subject: str = DEFAULT_COSE_SUBJECT,
    ) -> TxRecord:
        """Sign the root over leaves 0..seqno-1 and append the signature transaction; the
        service's COSE signature carries `issuer` and `subject` in its CWT claims."""
        if seqno != self.tree.size:
            raise ValueError(f"next seqno is {self.tree.size}, not {seqno}")
        root = self.tree.root_at(seqno)
        deterministic = self.deterministic_signatures
        sig = sign_root(node_key, root, deterministic=deterministic)
        cose_sign1 = cose_root_signature(
            service_key,
            root,
            txid=f"{view}.{seqno}",
            iat=iat,
            issuer=issuer,
            subject=subject,
            deterministic=deterministic,
        )
        tables = signature_tables(
            node_id=node_id,
            node_cert_pem=node_cert_pem,
            root=root,
            sig=sig,
            seqno=seqno,
            view=view,
            cose_sign1=cose_sign1,
            tree_bytes=self.tree.serialise(self._tree_from(), seqno - 1),
        )
        public: WriteSet = {name: dict(records) for name, records in tables.items()}
        record = self.add_transaction(
            seqno=seqno, view=view, public=public, private={}, secret=secret, flags=flags
        )
        self._components[seqno] = (
            view,
            record.write_set_digest,
            record.commit_evidence,
            ZERO_DIGEST,
            True,
        )
        self._record_signature(
            SignatureRecord(seqno, view, node_id, node_cert_pem, root, sig, cose_sign1)
        )
        return TxRecord(
            seqno,
            view,
            record.raw,
            record.leaf,
            record.write_set_digest,
            record.commit_evidence,
            ZERO_DIGEST,
            flags,
            is_signature=True,
        )

    def _record_signature(self, record: SignatureRecord) -> None:
        assert not self._signature_seqnos or self._signature_seqnos[-1] < record.seqno
        self._signature_seqnos.append(record.seqno)
        self._signatures[record.seqno] = record

    def append_raw(
        self, raw: bytes, *, secret: bytes | None = None, decoded: tuple[Entry, int] | None = None
    ) -> TxRecord:
        """Append an entry received from the primary or read back from the host.

        Checks the entry decodes, carries the next seqno, and, for a signature transaction,
        that the signed root is this replica's own root; with the ledger `secret`, also that
        the GCM tag authenticates the entry and the commit evidence matches. Raises
        DecodeError or VerificationError otherwise (nothing is appended then).
        """
        return self._append_checked(raw, secret, decoded)[0]

    def append_decrypted(
        self, raw: bytes, *, secret: bytes, decoded: tuple[Entry, int] | None = None
    ) -> tuple[TxRecord, WriteSet]:
        """`append_raw` with the ledger secret, and the private write set the check
        decrypted (empty when the entry has none): a replica applying the entry need not
        decrypt it a second time."""
        record, private = self._append_checked(raw, secret, decoded)
        assert private is not None
        return record, private

    def _append_checked(
        self, raw: bytes, secret: bytes | None, decoded: tuple[Entry, int] | None
    ) -> tuple[TxRecord, WriteSet | None]:
        entry, end = decode_entry(raw) if decoded is None else decoded  # `raw`, decoded
        if end != len(raw):
            raise DecodeError("trailing bytes after entry", offset=end, field="size")
        seqno = self.tree.size
        if entry.seqno != seqno or entry.public_seqno != seqno:
            raise VerificationError(f"entry seqno {entry.seqno} is not the next seqno {seqno}")
        if entry.commit_evidence_digest is None or entry.claims_digest is None:
            raise DecodeError("replicated entries must be of type 4", field="entry_type")
        evidence: str | None = None
        private: WriteSet | None = None
        if secret is not None:
            # The GCM tag authenticates the public domain (the AAD) even when the private
            # domain is empty: a node holding the secret detects any change by the host.
            private = decrypt_private(entry, secret)
            evidence = commit_evidence(secret, entry.view, seqno)
            if commit_evidence_digest(evidence) != entry.commit_evidence_digest:
                raise VerificationError("commit evidence digest does not match", field="evidence")
        wsd = write_set_digest(raw)
        leaf = leaf_hash(wsd, entry.commit_evidence_digest, entry.claims_digest)
        signature: SignatureRecord | None = None
        sig_table = entry.public.get(SIGNATURES_TABLE)
        if sig_table:
            value = sig_table.get(SINGLETON_KEY)
            if value is None:
                raise DecodeError("signature table without its value", field="signatures")
            sig = parse_signature(value)
            root = self.tree.root_at(seqno)
            if sig.root != root or (sig.seqno, sig.view) != (seqno, entry.view):
                raise VerificationError(f"signature at {seqno} does not sign this tree's root")
            cose_value = entry.public.get(COSE_SIGNATURES_TABLE, {}).get(SINGLETON_KEY)
            cose_sign1 = parse_cose_signature(cose_value) if cose_value is not None else b""
            signature = SignatureRecord(
                seqno, entry.view, sig.node_id, sig.cert_pem, root, sig.sig, cose_sign1
            )
        components = (entry.view, wsd, evidence, entry.claims_digest, signature is not None)
        self._append(raw, seqno, entry.view, components, leaf)
        if signature is not None:
            self._record_signature(signature)
        record = TxRecord(
            seqno,
            entry.view,
            raw,
            leaf,
            wsd,
            evidence,
            entry.claims_digest,
            entry.flags,
            is_signature=signature is not None,
        )
        return record, private

    def truncate(self, seqno: int) -> None:
        """Roll back every transaction after `seqno`."""
        assert seqno >= self.tree.min_index, "cannot truncate below the compacted prefix"
        if seqno >= self.last_seqno:
            return
        for dropped in range(seqno + 1, self.tree.size):
            self._components.pop(dropped, None)
        cut = bisect.bisect_right(self._signature_seqnos, seqno)
        for dropped in self._signature_seqnos[cut:]:
            del self._signatures[dropped]
        del self._signature_seqnos[cut:]
        self.tree.truncate(seqno + 1)
        logger.info("history truncated last_seqno=%d", seqno)

    def compact(self, seqno: int) -> None:
        """Forget receipts material below `seqno` (keeps everything receipts ≥ seqno need)."""
        # Receipts for seqnos ≥ `seqno` need only leaves ≥ seqno and signatures after them.
        seqno = min(seqno, self.last_seqno)
        if seqno <= self.tree.min_index:
            return
        self.tree.drop_prefix(seqno)
        for dropped in [s for s in self._components if s < seqno]:
            del self._components[dropped]
        cut = bisect.bisect_left(self._signature_seqnos, seqno)
        for dropped in self._signature_seqnos[:cut]:
            del self._signatures[dropped]
        del self._signature_seqnos[:cut]

    def signature_before(self, seqno: int) -> int:
        """The seqno of the last signature transaction held at S < seqno (0: none held)."""
        index = bisect.bisect_left(self._signature_seqnos, seqno)
        return self._signature_seqnos[index - 1] if index else 0

    def signature_after(self, seqno: int) -> SignatureRecord | None:
        """The first signature transaction at S > seqno, if one exists yet."""
        index = bisect.bisect_right(self._signature_seqnos, seqno)
        if index == len(self._signature_seqnos):
            return None
        return self._signatures[self._signature_seqnos[index]]

    def receipt_material(self, seqno: int) -> tuple[InclusionProof, SignatureRecord] | None:
        """Inclusion proof of `seqno` in the tree signed by the next signature, and that
        signature; None while no later signature exists (the receipt is not ready yet)."""
        if not self.tree.min_index <= seqno <= self.last_seqno or seqno < 1:
            raise KeyError(f"seqno {seqno} is not held by this history")
        signature = self.signature_after(seqno)
        if signature is None:
            return None
        return self.tree.inclusion_proof(seqno, signature.seqno), signature

    def leaf_components(self, seqno: int) -> tuple[bytes, str | None, bytes]:
        """(write_set_digest, commit_evidence, claims_digest) of a held transaction."""
        _, write_set_digest, commit_evidence, claims_digest, _ = self._components[seqno]
        return write_set_digest, commit_evidence, claims_digest

    def is_signature(self, seqno: int) -> bool:
        *_, is_signature = self._components[seqno]
        return is_signature

    def set_commit_evidence(self, seqno: int, evidence: str) -> None:
        """Fill in the commit evidence of a transaction appended without its ledger secret
        (a recovery's public replay), once the secret is known. The evidence must be the
        one the entry's digest commits to: the caller checked it."""
        view, write_set_digest, old, claims_digest, is_signature = self._components[seqno]
        assert old in (None, evidence)
        self._components[seqno] = (view, write_set_digest, evidence, claims_digest, is_signature)
