"""The operator download endpoints for files the host keeps (CCF's `SnapshotRead` and
`LedgerChunkRead` operator features), served after the enclave has decided.

- `GET /node/ledger-chunk?since=N`: `308` to `/node/ledger-chunk/{name}` on this node, for the
  committed chunk holding seqno N (in the ledger directory, a read-only ledger directory or
  the archive); `404 ResourceNotFound` if none does.
- `GET /node/ledger-chunk/{name}`: the committed chunk's bytes as on disk (private domains
  stay encrypted), with `x-ms-ccf-ledger-chunk-name`. Served only when the name is a
  committed chunk's, it ends at or below this node's commit, its bytes parse as that chunk,
  and every entry still in this node's Merkle tree has the leaf the tree holds.
- `GET /node/snapshot/{name}`: a committed snapshot's bytes, with `x-ms-ccf-snapshot-name`,
  only once they verify against the service certificate (as anything served as a snapshot).
  `GET /node/snapshot` (the latest one) is a node endpoint (node_endpoints.py).

Each answers `403 OperatorFeatureNotEnabled` unless its feature is enabled on the RPC
interface the request came in on. The host finds and reads the files (`ReadOperatorFile`);
nothing it returns is served unchecked.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from charter.enclave_app import interface as itf
from charter.enclave_app.app import BINARY_CONTENT_TYPE, HttpResponse, error_response
from charter.ledger.chunks import parse_chunk, parse_chunk_name
from charter.ledger.entry import entry_leaf, read_header
from charter.ledger.errors import LedgerError
from charter.ledger.merkle import MerkleTree

if TYPE_CHECKING:
    from charter.enclave_app.node import Node

LOG = logging.getLogger(__name__)

LEDGER_CHUNK_PATH = "/node/ledger-chunk"
SNAPSHOT_PATH = "/node/snapshot"
LEDGER_CHUNK_NAME_HEADER = "x-ms-ccf-ledger-chunk-name"
SNAPSHOT_NAME_HEADER = "x-ms-ccf-snapshot-name"
FEATURE_BY_KIND = {"ledger_chunk": "LedgerChunkRead", "snapshot": "SnapshotRead"}
SEQNO_DIGITS_MAX = 19
# ASCII digits only: str.isdigit() also accepts e.g. "²", which int() refuses.
_SEQNO = re.compile(rf"[0-9]{{1,{SEQNO_DIGITS_MAX}}}")

ReadFile = Callable[[str, str, int], Awaitable[itf.OperatorFileRead]]


def handles(path: str) -> bool:
    """The paths served here (`/node/snapshot` itself is a node endpoint)."""
    return path == LEDGER_CHUNK_PATH or (
        path.startswith((LEDGER_CHUNK_PATH + "/", SNAPSHOT_PATH + "/"))
    )


def _since(query_string: str) -> int | None:
    values = urllib.parse.parse_qs(query_string[:1024], max_num_fields=8).get("since", [])
    if len(values) != 1 or _SEQNO.fullmatch(values[0]) is None:
        return None
    return int(values[0])


async def serve(
    node: Node, method: str, path: str, query_string: str, read: ReadFile
) -> HttpResponse:
    kind = "ledger_chunk" if path.startswith(LEDGER_CHUNK_PATH) else "snapshot"
    feature = FEATURE_BY_KIND[kind]
    if feature not in node.config.operator_features():
        return error_response(
            f"{feature} is not enabled on this RPC interface", code="OperatorFeatureNotEnabled"
        )
    if method != "GET":
        return error_response(f"{method} is not allowed here", code="MethodNotAllowed")
    if path == LEDGER_CHUNK_PATH:
        return await _find_chunk(node, query_string, read)
    prefix = LEDGER_CHUNK_PATH if kind == "ledger_chunk" else SNAPSHOT_PATH
    name = urllib.parse.unquote(path[len(prefix) + 1 :])
    if not name or "/" in name or len(name) > itf.OPERATOR_FILE_NAME_CHARS_MAX:
        return error_response("Not a file name", code="InvalidResourceName")
    if kind == "ledger_chunk":
        return await _chunk(node, name, read)
    return await _snapshot(node, name, read)


async def _find_chunk(node: Node, query_string: str, read: ReadFile) -> HttpResponse:
    since = _since(query_string)
    if since is None:
        return error_response(
            "Query parameter 'since' (a seqno) is required", code="InvalidQueryParameterValue"
        )
    found = await read("ledger_chunk", "", since)
    if found.name is None:
        return error_response(
            f"This node has no committed ledger chunk including seqno {since}",
            code="ResourceNotFound",
        )
    address = node.config.published_rpc_address or node.config.rpc_address
    location = f"https://{address}{LEDGER_CHUNK_PATH}/{urllib.parse.quote(found.name)}"
    return HttpResponse(308, b"", {"Location": location}, None)


async def _chunk(node: Node, name: str, read: ReadFile) -> HttpResponse:
    try:
        chunk = parse_chunk_name(name)
    except LedgerError:
        return error_response(f"{name} is not a ledger chunk name", code="InvalidResourceName")
    if not chunk.committed or chunk.recovery or chunk.ignored or chunk.last is None:
        return error_response(f"{name} is not a committed chunk", code="ResourceNotFound")
    if chunk.last > node.commit_seqno:
        return error_response(
            f"{name} ends after this node's commit seqno", code="ResourceNotFound"
        )
    found = await read("ledger_chunk", name, 0)
    if found.name != name:
        return error_response(
            f"This node does not have a ledger chunk named {name}", code="ResourceNotFound"
        )
    if found.data is None:
        return error_response(
            f"{name} is {found.size_bytes} bytes, more than one answer carries",
            code="ResponseTooLarge",
        )
    problem = check_chunk(node.log.history.tree, found.data, name)
    if problem is not None:
        LOG.error("event=ledger_chunk_refused file=%s reason=%s", name, problem)
        return error_response(f"{name} read back from disk is refused", code="HostFileInvalid")
    return HttpResponse(200, found.data, {LEDGER_CHUNK_NAME_HEADER: name}, BINARY_CONTENT_TYPE)


def check_chunk(tree: MerkleTree, data: bytes, name: str) -> str | None:
    """Why the host's bytes for chunk `name` must not be served, or None: they must parse as
    that chunk (sizes bounded by the chunk parser), and each entry the Merkle tree still
    holds must be the tree's leaf. Never raises on any bytes."""
    try:
        chunk = parse_chunk_name(name)
        positions = parse_chunk(data, chunk)
        for index, start in enumerate(positions):
            seqno = chunk.first + index
            try:
                expected = tree.leaf(seqno)
            except IndexError:
                continue  # compacted out of memory: the auditor checks it offline
            raw = data[start : start + 8 + read_header(data, start)[2]]
            if entry_leaf(raw) != expected:
                return f"entry {seqno} is not the one this node's Merkle tree holds"
    except LedgerError as exc:
        return str(exc)
    return None


async def _snapshot(node: Node, name: str, read: ReadFile) -> HttpResponse:
    found = await read("snapshot", name, 0)
    if found.name != name:
        return error_response(
            f"This node does not have a committed snapshot named {name}",
            code="ResourceNotFound",
        )
    if found.data is None:
        return error_response(
            f"{name} is {found.size_bytes} bytes, more than one answer carries",
            code="ResponseTooLarge",
        )
    try:
        node.snapshots.verify(found.data, name)
    except LedgerError as exc:
        LOG.error("event=snapshot_refused file=%s reason=%s", name, exc)
        return error_response(f"{name} read back from disk is refused", code="HostFileInvalid")
    return HttpResponse(200, found.data, {SNAPSHOT_NAME_HEADER: name}, BINARY_CONTENT_TYPE)
