"""A node checks a snapshot against its evidence before it installs or serves it (issue 11,
item 9), driven in-process: the snapshots it takes verify; a restart from a changed file is
refused naming the file; a joiner handed a changed snapshot joins from the ledger instead;
and nothing that failed the check is ever served."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import msgpack
import pytest
from test_node_inprocess import _config, _drain, _node, _start

from charter.enclave_app.channels import seal_to
from charter.enclave_app.node import Node
from charter.ledger import certs
from charter.ledger.errors import LedgerError
from charter.ledger.snapshot import decode_snapshot, parse_snapshot_file_name, verify_snapshot


def _snapshotting(tmp_path: Path) -> tuple[Node, bytes, str]:
    """A primary that has committed a snapshot; (node, sealed blob, its file name)."""
    node, _ = _start(
        tmp_path,
        snapshots={"tx_count": 5},
        signatures={"tx_count": 1000, "delay_ms": 1},
        enabled_operator_features=["SnapshotRead"],
    )
    _, sealed = _drain(node)
    node.tick(0)
    for ms in range(10, 200, 10):
        tx = node.store.begin()
        tx.put("public:review", b"k", str(ms).encode())
        tx.put("review", b"k", b"private " + str(ms).encode())
        node.commit_tx(tx)
        node.tick(ms)
        _, blob = _drain(node)
        sealed = blob or sealed
        if node.latest_snapshot is not None:
            break
    assert node.latest_snapshot is not None and node.latest_snapshot_name is not None
    return node, sealed, node.latest_snapshot_name


def _flipped(data: bytes, offset: int) -> bytes:
    tampered = bytearray(data)
    tampered[offset] ^= 0x01
    return bytes(tampered)


def test_the_snapshots_a_node_takes_verify_against_the_service_cert(tmp_path: Path) -> None:
    node, _, name = _snapshotting(tmp_path)
    assert node.latest_snapshot is not None and node.identity is not None
    verified = verify_snapshot(node.latest_snapshot, node.identity.service_cert_pem, name=name)
    assert parse_snapshot_file_name(name) == (
        verified.snapshot.seqno,
        verified.evidence_seqno,
        True,
    )


@pytest.mark.parametrize("where", ["public tables", "private tables", "receipt"])
def test_a_restart_from_a_changed_snapshot_is_refused_naming_the_file(
    tmp_path: Path, where: str
) -> None:
    node, sealed, name = _snapshotting(tmp_path)
    data = node.latest_snapshot
    assert data is not None
    snapshot = decode_snapshot(data)
    offset = {
        "public tables": len(snapshot.entry) - len(snapshot.private_ciphertext) - 3,
        "private tables": len(snapshot.entry) - 3,
        "receipt": len(snapshot.entry) + len(data[len(snapshot.entry) :]) // 2,
    }[where]
    restarted = _node(node.config, tmp_path)
    restarted.resume(sealed)
    with pytest.raises(LedgerError) as info:
        restarted.resume_from_snapshot(_flipped(data, offset), name)
    assert name in str(info.value)
    assert restarted.store.version == 0, "nothing of the refused snapshot was installed"
    assert restarted.latest_snapshot is None


def test_a_restart_from_an_intact_snapshot_installs_and_serves_it(tmp_path: Path) -> None:
    node, sealed, name = _snapshotting(tmp_path)
    data = node.latest_snapshot
    assert data is not None
    restarted = _node(node.config, tmp_path)
    restarted.resume(sealed)
    seqno = restarted.resume_from_snapshot(data, name)
    assert seqno == decode_snapshot(data).seqno == restarted.store.version
    restarted.resumed()
    response = restarted.handle("GET", "/node/snapshot", "", {}, b"", None)
    assert response.status == 200 and response.body == data


def test_a_changed_snapshot_file_on_disk_is_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node, sealed, name = _snapshotting(tmp_path)
    entries = (
        [node.raft.entry(i).data for i in range(1, node.commit_seqno + 1)] if node.raft else []
    )
    data = node.latest_snapshot
    assert data is not None
    restarted = _node(node.config, tmp_path)
    restarted.resume(sealed)
    with caplog.at_level(logging.ERROR):
        assert not restarted.offer_snapshot_from_disk(_flipped(data, 40), name)
    for raw in entries:
        restarted.replay(raw)
    restarted.resumed()
    assert f"event=snapshot_refused file={name}" in caplog.text
    response = restarted.handle("GET", "/node/snapshot", "", {}, b"", None)
    assert response.status == 404
    assert restarted.offer_snapshot_from_disk(data, name)
    assert restarted.handle("GET", "/node/snapshot", "", {}, b"", None).body == data


def _trusted_answer(primary: Node, joiner: Node, snapshot: bytes, name: str) -> dict[str, object]:
    """What a primary answers a trusted joiner (Node.join_request), with `snapshot` in it."""
    assert primary.identity is not None and primary.identity.service_key is not None
    assert joiner.identity is not None
    service_cert = certs.load_cert(primary.identity.service_cert_pem)
    endorsed = certs.endorse(
        joiner.identity.node_key.public_key(),
        primary.identity.service_key,
        service_cert,
        san_ips=["127.0.0.1"],
    )
    secrets = {
        "service_key": certs.key_pem(primary.identity.service_key),
        "ledger_secrets": [[s, k] for s, k in primary.identity.ledger_secrets],
        "snapshot": snapshot,
        "snapshot_name": name,
    }
    sealed = seal_to(
        joiner.identity.node_key.public_key(), msgpack.packb(secrets, use_bin_type=True)
    )
    return {
        "node_id": joiner.identity.node_id,
        "node_status": "Trusted",
        "peers": [],
        "network_info": {
            "service_cert": primary.identity.service_cert_pem,
            "endorsed_cert": certs.cert_pem(endorsed),
            "secrets": base64.b64encode(sealed).decode(),
        },
    }


def test_a_joiner_handed_a_changed_snapshot_joins_from_the_ledger_instead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary, _, name = _snapshotting(tmp_path / "primary")
    data = primary.latest_snapshot
    assert data is not None
    joiner_config = _config(tmp_path / "joiner", enabled_operator_features=["SnapshotRead"])
    joiner = _node(joiner_config, tmp_path / "joiner")
    joiner.start_joining()
    with caplog.at_level(logging.ERROR):
        joined = joiner.on_join_response(
            _trusted_answer(primary, joiner, _flipped(data, 100), name)
        )
    assert joined
    assert f"event=snapshot_refused file={name} (from the join answer)" in caplog.text
    assert "fallback=ledger" in caplog.text
    assert joiner.store.version == 0 and joiner.applied_seqno == 0
    assert joiner.raft is not None and joiner.raft.last_index == 0
    assert joiner.latest_snapshot is None
    response = joiner.handle("GET", "/node/snapshot", "", {}, b"", None)
    assert response.status == 404


def test_a_joiner_handed_an_intact_snapshot_starts_from_it(tmp_path: Path) -> None:
    primary, _, name = _snapshotting(tmp_path / "primary")
    data = primary.latest_snapshot
    assert data is not None
    joiner = _node(_config(tmp_path / "joiner"), tmp_path / "joiner")
    joiner.start_joining()
    assert joiner.on_join_response(_trusted_answer(primary, joiner, data, name))
    assert joiner.store.version == decode_snapshot(data).seqno
    assert joiner.latest_snapshot == data


def test_a_pending_joiner_restarted_on_a_changed_snapshot_refuses_it(tmp_path: Path) -> None:
    primary, _, name = _snapshotting(tmp_path / "primary")
    data = primary.latest_snapshot
    assert data is not None and primary.identity is not None
    joiner = _node(_config(tmp_path / "joiner"), tmp_path / "joiner")
    joiner.start_joining()
    joiner.resume_joining()
    with pytest.raises(LedgerError) as info:
        joiner.resume_pending_snapshot(
            _flipped(data, len(data) - 30), name, primary.identity.service_cert_pem
        )
    assert name in str(info.value)
    assert joiner.store.version == 0
    assert joiner.resume_pending_snapshot(data, name, primary.identity.service_cert_pem) == (
        decode_snapshot(data).seqno
    )
