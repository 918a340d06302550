"""The browser console every node serves at `/console`, and the explorer's ledger reads.

The console is static files shipped in this package (`console/`: HTML, CSS, JavaScript
modules; no build step, nothing fetched from elsewhere). They are read once, when the node
starts, and served with a strict Content-Security-Policy: scripts and styles only from this
node, requests only to this node, nothing inline, no framing.

The explorer reads ledger entries with `GET /node/ledger/entries?from_seqno=S&count=N`. The
entries come from the host's ledger files, so each one is checked against the enclave's
Merkle tree before it is shown (`leaf_checked`); only committed entries are served, public
write sets decoded, private domains reported as encrypted (their size only). Who may call it
is the node config's `console.ledger_explorer` (DESIGN §9: the same callers as elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from charter.enclave_app import interface as itf
from charter.enclave_app.app import JSON_CONTENT_TYPE, HttpResponse, error_response
from charter.enclave_app.node import AuthError, Node
from charter.governance import tables as gt
from charter.ledger.entry import decode_entry, entry_leaf
from charter.ledger.errors import LedgerError
from charter.ledger.signatures import SIGNATURES_TABLE

LOG = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console"
LEDGER_ENTRIES_PATH = "/node/ledger/entries"
ENTRIES_PER_READ_MAX = 100
ENTRIES_PER_READ_DEFAULT = 20
# Each key and value is shown up to this many bytes (with its full size), so that one page
# of entries stays small whatever the application wrote.
VALUE_PREVIEW_BYTES_MAX = 1024
# All console files together; a larger asset directory is a packaging mistake.
ASSETS_BYTES_MAX = 2 * 1024 * 1024
GOVERNANCE_MAP_PREFIX = gt.GOV_TABLE_PREFIX

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Everything from this node only; nothing inline, no plugins, no framing, no form posts.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

# Which console setting admits which authentication policy of `Node.authenticate`.
_POLICIES = {"user_cert": "user_cert", "member_cert": "member_cert", "anonymous": "none"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The console's files by URL path (`/console/app.js`), read from the package."""
    root = importlib.resources.files("charter.enclave_app").joinpath("console")
    assets: dict[str, Asset] = {}
    total = 0
    for item in root.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if not item.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = item.read_bytes()
        total += len(body)
        if total > ASSETS_BYTES_MAX:
            raise RuntimeError(f"console assets exceed {ASSETS_BYTES_MAX} bytes")
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[f"{CONSOLE_PREFIX}/{item.name}"] = Asset(body, CONTENT_TYPES[suffix], etag)
    if f"{CONSOLE_PREFIX}/index.html" not in assets:
        raise RuntimeError("the console's index.html is missing from the package")
    return assets


class Console:
    """Serves the console's files and the explorer's ledger reads for one node."""

    def __init__(self, config: itf.ConsoleConfig) -> None:
        self.config = config
        self.assets = load_assets() if config.enabled else {}
        self.policies = tuple(_POLICIES[name] for name in config.ledger_explorer)

    @staticmethod
    def handles(path: str) -> bool:
        return path in (CONSOLE_PREFIX, LEDGER_ENTRIES_PATH) or path.startswith(
            CONSOLE_PREFIX + "/"
        )

    def static(self, method: str, path: str, headers: Mapping[str, str]) -> HttpResponse:
        if not self.config.enabled:
            return error_response("The console is disabled on this node", code="ResourceNotFound")
        if method not in ("GET", "HEAD"):
            return HttpResponse(
                405,
                b'{"error":{"code":"MethodNotAllowed","message":"Allowed methods: GET, HEAD"}}',
                {"Allow": "GET, HEAD"},
                JSON_CONTENT_TYPE,
            )
        if path in (CONSOLE_PREFIX, CONSOLE_PREFIX + "/"):
            path = f"{CONSOLE_PREFIX}/index.html"
        asset = self.assets.get(path)
        if asset is None:
            return error_response(f"Unknown path: {path[:256]}", code="ResourceNotFound")
        response_headers = {**SECURITY_HEADERS, "ETag": asset.etag}
        if headers.get("If-None-Match") == asset.etag:
            return HttpResponse(304, b"", response_headers, None)
        return HttpResponse(200, asset.body, response_headers, asset.content_type)

    async def ledger_entries(
        self,
        node: Node,
        method: str,
        query: str,
        peer_der: bytes | None,
        read: Callable[[int, int], Awaitable[itf.EntriesRead]],
    ) -> HttpResponse:
        """`GET /node/ledger/entries?from_seqno=S&count=N`: committed entries S..S+N-1."""
        if method != "GET":
            return HttpResponse(
                405,
                b'{"error":{"code":"MethodNotAllowed","message":"Allowed methods: GET"}}',
                {"Allow": "GET"},
                JSON_CONTENT_TYPE,
            )
        if not self.policies:
            return error_response(
                "This node's config allows nobody to read entries", code="LedgerExplorerDisabled"
            )
        if node.raft is None or node.identity is None:
            return error_response("The node is starting", code="ServiceNotReady")
        tx = node.store.begin()
        try:
            node.authenticate(self.policies, tx, peer_der)
        except AuthError:
            return error_response(
                "Reading ledger entries needs a registered "
                + " or ".join(self.config.ledger_explorer).replace("_cert", " certificate"),
                code="InvalidAuthentication",
            )
        try:
            first, count = _entries_query(query)
        except ValueError as exc:
            return error_response(str(exc), code="InvalidInput")
        commit = node.commit_seqno
        last = min(commit, first + count - 1)
        entries: list[dict[str, Any]] = []
        if first <= last:
            reply = await read(first, last)
            if reply.first_seqno != first:
                return error_response("The host returned other entries", code="InternalError")
            for offset, raw in enumerate(reply.entries[: last - first + 1]):
                try:
                    entries.append(_describe(node, first + offset, raw))
                except LedgerError as exc:
                    LOG.warning("event=host_returned_bad_entry seqno=%d", first + offset)
                    return error_response(
                        f"Entry {first + offset} is unreadable: {exc.code}", code="InternalError"
                    )
        body = {"commit_seqno": commit, "entries": entries}
        return HttpResponse(200, _json(body), {"Cache-Control": "no-store"}, JSON_CONTENT_TYPE)


def _entries_query(query: str) -> tuple[int, int]:
    if len(query) > 256:
        raise ValueError("query string too long")
    values = dict(urllib.parse.parse_qsl(query, max_num_fields=4))
    unknown = set(values) - {"from_seqno", "count"}
    if unknown:
        raise ValueError(f"unknown query parameter {sorted(unknown)[0]!r}")
    try:
        first = int(values.get("from_seqno", "1"))
        count = int(values.get("count", str(ENTRIES_PER_READ_DEFAULT)))
    except ValueError:
        raise ValueError("from_seqno and count are integers") from None
    if first < 1 or first > 2**63:
        raise ValueError("from_seqno starts at 1")
    if not 1 <= count <= ENTRIES_PER_READ_MAX:
        raise ValueError(f"count is between 1 and {ENTRIES_PER_READ_MAX}")
    return first, count


def _preview(data: bytes) -> dict[str, Any]:
    shown = data[:VALUE_PREVIEW_BYTES_MAX]
    out: dict[str, Any] = {"size": len(data), "hex": shown.hex()}
    with contextlib.suppress(UnicodeDecodeError):
        out["text"] = shown.decode("utf-8")
    return out


def _describe(node: Node, seqno: int, raw: bytes) -> dict[str, Any]:
    entry, _ = decode_entry(raw)
    if entry.seqno != seqno:
        raise LedgerError(f"entry names seqno {entry.seqno}", field="seqno")
    tree = node.history.tree
    leaf_checked = False
    if tree.min_index <= seqno < tree.size:
        if entry_leaf(raw) != tree.leaf(seqno):
            raise LedgerError("entry does not match the Merkle tree", field="leaf")
        leaf_checked = True
    public: dict[str, list[dict[str, Any]]] = {}
    for table, writes in sorted(entry.public.items()):
        public[table] = [
            {"key": _preview(key), "value": None if value is None else _preview(value)}
            for key, value in writes.items()
        ]
    return {
        "seqno": seqno,
        "view": entry.view,
        "txid": f"{entry.view}.{seqno}",
        "is_signature": SIGNATURES_TABLE in entry.public,
        "is_governance": any(t.startswith(GOVERNANCE_MAP_PREFIX) for t in entry.public),
        "leaf_checked": leaf_checked,
        "size": len(raw),
        "public": public,
        "private": {
            "encrypted": bool(entry.private_ciphertext),
            "size": len(entry.private_ciphertext),
        },
    }


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
