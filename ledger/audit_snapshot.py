"""Starting an audit from a snapshot, for a node whose ledger files begin after one.

A snapshot taken at signature transaction S holds the service's public tables as of S,
among them S's own signature records and its `public:ccf.internal.tree` (the leaves signed
since the previous signature, with the left edge of the tree). From those this module
builds the state an audit needs to carry on at S+1, as an `AuditCheckpoint` without chunk
digests: the Merkle frontier at size S (which must fold to the root S signed), the leaf of
S (`hash_at_snapshot`), the nodes and the service identity.

`audit(..., snapshot=data)` then checks, as for any checkpoint, that the node's signature
and the service's COSE signature over that root verify; audits the ledger from S+1 on,
whose signatures must sign trees that extend that frontier; and requires the snapshot's
evidence transaction among the audited entries (`public:ccf.internal.snapshot_evidence`
recording the SHA-256 of the snapshot entry and S) with a signature after it. So the
snapshot's bytes are vouched for by a signature the audit verified.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from charter.ledger import service_state as ss
from charter.ledger.audit_checkpoint import AuditCheckpoint
from charter.ledger.entry import decode_tables
from charter.ledger.errors import DecodeError
from charter.ledger.merkle import HASH_SIZE_BYTES, hash_node
from charter.ledger.signatures import (
    COSE_SIGNATURES_TABLE,
    SIGNATURES_TABLE,
    SINGLETON_KEY,
    TREE_TABLE,
    parse_cose_signature,
    parse_signature,
)
from charter.ledger.snapshot import decode_snapshot, snapshot_digest

SNAPSHOT_EVIDENCE_TABLE = ss.SNAPSHOT_EVIDENCE
_NODES_INFO = ss.NODES_INFO
_ENDORSED_CERTS = ss.NODES_ENDORSED_CERTIFICATES
_SERVICE_INFO = ss.SERVICE_INFO
_TREE_HEADER = struct.Struct(">QQ")  # leaf count, first leaf index (merklecpp, FORMATS §2.5)
_JSON_BYTES_MAX = 4 * 1024 * 1024
_NODES_MAX = 10_000


@dataclass(frozen=True, slots=True)
class SnapshotStart:
    """Where an audit of a snapshot-started ledger begins, and what must vouch for it."""

    checkpoint: AuditCheckpoint
    digest: str  # hex SHA-256 of the snapshot entry: what its evidence transaction records


def snapshot_start(data: bytes) -> SnapshotStart:
    """The audit state at a snapshot's seqno; DecodeError if the snapshot cannot provide it."""
    snapshot = decode_snapshot(data)
    seqno = snapshot.seqno
    tables = decode_tables(
        snapshot.public_tables, 0, len(snapshot.public_tables), base=0, snapshot=True
    )
    signature_value = tables.get(SIGNATURES_TABLE, {}).get(SINGLETON_KEY)
    tree_bytes = tables.get(TREE_TABLE, {}).get(SINGLETON_KEY)
    if signature_value is None or tree_bytes is None:
        raise DecodeError("snapshot holds no signature and tree of its seqno", field="tables")
    signature = parse_signature(signature_value)
    if signature.seqno != seqno:
        raise DecodeError(
            f"snapshot at {seqno} holds the signature of {signature.seqno}: snapshots are "
            "taken at signature transactions",
            field="signatures",
        )
    frontier = _frontier_from_tree(tree_bytes, seqno)
    cose_value = tables.get(COSE_SIGNATURES_TABLE, {}).get(SINGLETON_KEY)
    node_status: dict[str, str] = {}
    node_certs: dict[str, str] = {}
    for key, value in tables.get(_NODES_INFO, {}).items():
        info = _json(value, "nodes.info")
        if not isinstance(info, dict) or not isinstance(info.get("status"), str):
            raise DecodeError("snapshot nodes.info entry has no status", field="nodes.info")
        node_status[key.decode(errors="replace")] = info["status"]
        if isinstance(info.get("cert"), str):
            node_certs[key.decode(errors="replace")] = info["cert"]
    for key, value in tables.get(_ENDORSED_CERTS, {}).items():
        if value is not None:
            node_certs[key.decode(errors="replace")] = value.decode(errors="replace")
    if len(node_status) > _NODES_MAX or len(node_certs) > _NODES_MAX:
        raise DecodeError(f"snapshot lists more than {_NODES_MAX} nodes", field="nodes")
    service = _json(tables.get(_SERVICE_INFO, {}).get(SINGLETON_KEY), "service.info")
    if not isinstance(service, dict):
        raise DecodeError("snapshot service.info is not an object", field="service.info")
    status, cert = service.get("status"), service.get("cert")
    checkpoint = AuditCheckpoint(
        seqno=seqno,
        view=signature.view,
        root=signature.root,
        frontier=frontier,
        leaf=snapshot.hash_at_snapshot,
        node_id=signature.node_id,
        signature=signature.sig,
        cose_sign1=parse_cose_signature(cose_value) if cose_value is not None else None,
        service_status=status if isinstance(status, str) else None,
        service_cert_pem=cert if isinstance(cert, str) else None,
        node_status=node_status,
        node_certs=node_certs,
        signatures=0,
        cose_signatures=0,
        deprecated_entries=0,
        chunks=(),
    )
    return SnapshotStart(checkpoint, snapshot_digest(snapshot.entry))


def evidence_matches(value: bytes | None, snapshot_seqno: int, digest: str) -> bool:
    """Whether a `snapshot_evidence` value records this snapshot (its seqno and digest)."""
    if value is None or len(value) > _JSON_BYTES_MAX:
        return False
    try:
        evidence = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return (
        isinstance(evidence, dict)
        and evidence.get("version") == snapshot_seqno
        and evidence.get("hash") == digest
    )


def _frontier_from_tree(tree_bytes: bytes, seqno: int) -> tuple[bytes, ...]:
    """The frontier of the tree of `seqno` leaves, from the serialised tree that signature
    `seqno` wrote: its left edge is the frontier at its first leaf, then its leaves follow."""
    if len(tree_bytes) < _TREE_HEADER.size or len(tree_bytes) % HASH_SIZE_BYTES != 16:
        raise DecodeError("snapshot tree table has a bad size", field="tree")
    count, first = _TREE_HEADER.unpack_from(tree_bytes, 0)
    if count == 0 or first + count != seqno:
        raise DecodeError(
            f"snapshot tree covers leaves {first}.. ({count}), not up to {seqno - 1}", field="tree"
        )
    hashes = [
        tree_bytes[i : i + HASH_SIZE_BYTES]
        for i in range(_TREE_HEADER.size, len(tree_bytes), HASH_SIZE_BYTES)
    ]
    if len(hashes) != count + first.bit_count():
        raise DecodeError("snapshot tree table holds the wrong number of hashes", field="tree")
    nodes = list(reversed(hashes[count:]))  # the left edge, bottom-up: reversed = frontier
    size = first
    for leaf in hashes[:count]:
        nodes.append(leaf)
        index = size
        size += 1
        while index & 1:  # each trailing 1 bit closes a pair of equal perfect subtrees
            right = nodes.pop()
            nodes[-1] = hash_node(nodes[-1], right)
            index >>= 1
    assert size == seqno and len(nodes) == seqno.bit_count()
    return tuple(nodes)


def _json(value: bytes | None, what: str) -> object:
    if value is None or len(value) > _JSON_BYTES_MAX:
        raise DecodeError(f"snapshot {what} is missing or too large", field=what)
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DecodeError(f"snapshot {what} is not JSON", field=what) from None
