"""Anyone who reaches the RPC port may ask to join (issue 11, item 4): until governance
trusts a node, the primary tells it its status only, never contacts it, and hands no one
the snapshot; joins are rate-limited per source; snapshot download is an operator feature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_node_inprocess import _drain, _start, _write_and_tick

from charter.enclave_app import interface as itf
from charter.enclave_app.node import Node
from charter.enclave_app.startup import initial_members
from charter.governance import tables as gt
from charter.ledger import certs


def _join_body(node: Node, *, n2n: str = "127.0.0.1:2") -> bytes:
    key = certs.new_key()
    evidence = node.platform.evidence(certs.spki_der(key.public_key())).quote_info()
    return json.dumps(
        {
            "public_key": certs.public_key_pem(key.public_key()),
            "quote": evidence["quote"],
            "quote_format": evidence["format"],
            "endorsements": evidence["endorsements"],
            "rpc_address": "127.0.0.1:1",
            "node_to_node_address": n2n,
            "want_snapshot": True,
        }
    ).encode()


def _join(node: Node, body: bytes, source: str | None = None) -> Any:
    return node.handle(
        "POST", "/node/join", "", {"content-type": "application/json"}, body, None, source=source
    )


def _with_snapshot(tmp_path: Path) -> Node:
    node, _ = _start(
        tmp_path, snapshots={"tx_count": 5}, signatures={"tx_count": 1000, "delay_ms": 1}
    )
    _write_and_tick(node, until=lambda: node.latest_snapshot is not None)
    assert node.latest_snapshot is not None
    return node


def test_pending_joiner_learns_its_own_status_and_nothing_else(tmp_path: Path) -> None:
    node = _with_snapshot(tmp_path)
    response = _join(node, _join_body(node))
    assert response.status == 200, response.body
    assert set(json.loads(response.body)) == {"node_id", "node_status"}
    assert json.loads(response.body)["node_status"] == "Pending"


def test_primary_never_contacts_a_node_governance_has_not_trusted(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    for i in range(8):
        assert _join(node, _join_body(node, n2n=f"10.0.0.{i}:9")).status == 200
    sent: list[itf.SendToNode] = []
    for ms in range(0, 3000, 50):  # heartbeats, signatures, commits
        node.tick(ms)
        tx = node.store.begin()
        tx.put("public:review", b"k", str(ms).encode())
        node.commit_tx(tx)
        sent += [f for f in node.outbox if isinstance(f, itf.SendToNode)]
        _drain(node)
    assert not sent, f"{len(sent)} frames sent to {sorted({f.address for f in sent})}"
    assert not node.peer_addresses


def test_join_requests_are_rate_limited_per_source(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    body = _join_body(node)
    statuses = [_join(node, body, source="192.0.2.1").status for _ in range(30)]
    assert 429 in statuses and statuses[0] == 200
    refused = _join(node, body, source="192.0.2.1")
    assert refused.status == 429 and refused.headers.get("Retry-After") == "1"
    assert json.loads(refused.body)["error"]["code"] == "TooManyRequests"
    assert _join(node, body, source="192.0.2.2").status == 200, "another source is not limited"


def _get_snapshot(node: Node) -> Any:
    return node.handle("GET", "/node/snapshot", "", {}, b"", None)


def test_snapshot_download_is_off_unless_the_operator_enables_snapshot_read(
    tmp_path: Path,
) -> None:
    node = _with_snapshot(tmp_path / "off")
    off = _get_snapshot(node)
    assert off.status == 403
    assert json.loads(off.body)["error"]["code"] == "OperatorFeatureNotEnabled"

    from test_node_inprocess import _config, _node

    config = _config(
        tmp_path / "on",
        snapshots={"tx_count": 5},
        signatures={"tx_count": 1000, "delay_ms": 1},
        enabled_operator_features=["SnapshotRead"],
    )
    enabled = _node(config, tmp_path / "on")
    enabled.start_new_network(initial_members(config), None)
    assert _get_snapshot(enabled).status == 404  # none committed yet
    assert json.loads(_get_snapshot(enabled).body)["error"]["code"] == "SnapshotNotFound"
    _drain(enabled)
    enabled.tick(0)
    for ms in range(10, 200, 10):
        tx = enabled.store.begin()
        tx.put("public:review", b"k", str(ms).encode())
        enabled.commit_tx(tx)
        enabled.tick(ms)
        _drain(enabled)
    response = _get_snapshot(enabled)
    assert response.status == 200 and response.body == enabled.latest_snapshot


def test_a_joiner_gets_the_secrets_only_once_its_trust_has_committed(tmp_path: Path) -> None:
    """Seed 2339 of the node simulator: the primary answered a join with the ledger secrets
    while the vote that trusted the node was not yet committed; a view change rolled the
    trust back, and a node the service does not know held its secrets. The answer now waits
    for the trust to commit."""
    node, _ = _start(tmp_path)
    _drain(node)
    body = _join_body(node)
    first = _join(node, body)
    assert json.loads(first.body)["node_status"] == "Pending"
    node_id = json.loads(first.body)["node_id"]
    _drain(node)
    tx = node.store.begin()
    key = gt.id_key(node_id)
    info = gt.load_json(tx.get(gt.NODES_INFO, key) or b"{}", what=gt.NODES_INFO)
    gt.put_json(tx, gt.NODES_INFO, key, {**info, "status": "Trusted"})
    _, trusted_at = node.commit_tx(tx)  # trusted, not yet committed
    assert node.commit_seqno < trusted_at
    uncommitted = _join(node, body)
    assert uncommitted.status == 200
    assert set(json.loads(uncommitted.body)) == {"node_id", "node_status"}  # no secrets
    assert json.loads(uncommitted.body)["node_status"] == "Pending"
    _write_and_tick(node, until=lambda: node.commit_seqno >= trusted_at)
    assert node.commit_seqno >= trusted_at
    committed = _join(node, body)
    assert json.loads(committed.body)["node_status"] == "Trusted"
    assert "network_info" in json.loads(committed.body)
