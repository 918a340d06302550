"""The code a node runs must stay approved: removing a measurement stops it coming back.

A node that is running when members remove its code's measurement runs on (CCF does the
same: retiring it is a separate, deliberate `remove_node`). Restarted from its sealed state,
the node replays its own ledger, finds that governance no longer admits its code, and stops
with a one-line reason before it talks to any peer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_node_attestation import MILAN_REPORT
from test_node_inprocess import _drain, _node, _start

from charter.enclave_app import interface as itf
from charter.enclave_app.attestation import UnapprovedCode, check_own_code
from charter.enclave_app.node import Node
from charter.enclave_app.platform import Evidence
from charter.enclave_app.snp_platform import SNP_FORMAT
from charter.governance import tables as gt

OTHER_MEASUREMENT = "ab" * 32


class Host:
    """What a host keeps of its enclave's output: the ledger, and the latest sealed state."""

    def __init__(self) -> None:
        self.ledger: list[bytes] = []
        self.sealed = b""

    def drain(self, node: Node) -> None:
        raws, sealed = _drain(node)
        self.ledger.extend(raws)
        self.sealed = sealed or self.sealed

    def restart(self, node: Node, tmp_path: Path) -> Node:
        """The same node started again on its sealed state, its own ledger replayed."""
        again = _node(node.config, tmp_path)
        again.resume(self.sealed)
        for raw in self.ledger:
            again.replay(raw)
        return again


def _set_measurements(node: Node, host: Host, *, add: list[str], remove: list[str]) -> None:
    """What `add_virtual_measurement` / `remove_virtual_measurement` write, committed."""
    tx = node.store.begin()
    for measurement in add:
        gt.put_json(tx, gt.NODES_VIRTUAL_MEASUREMENTS, measurement.encode(), gt.ALLOWED_TO_JOIN)
    for measurement in remove:
        tx.remove(gt.NODES_VIRTUAL_MEASUREMENTS, measurement.encode())
    node.commit_tx(tx)
    node.emit_signature()
    host.drain(node)


def _get(node: Node, path: str) -> tuple[int, dict[str, object]]:
    response = node.handle("GET", path, "", {}, b"", None)
    return response.status, json.loads(response.body)


def test_a_running_node_whose_measurement_is_removed_keeps_serving_and_committing(
    tmp_path: Path,
) -> None:
    node, _ = _start(tmp_path)
    host = Host()
    host.drain(node)
    own = node.platform.measurement
    _set_measurements(node, host, add=[OTHER_MEASUREMENT], remove=[own])
    assert node.store.begin().get(gt.NODES_VIRTUAL_MEASUREMENTS, own.encode()) is None

    before = node.commit_seqno
    _set_measurements(node, host, add=["cd" * 32], remove=[])
    assert node.commit_seqno > before, "a node running removed code stopped committing"
    assert node.state == "PartOfNetwork"
    status, state = _get(node, "/node/state")
    assert (status, state["state"]) == (200, "PartOfNetwork")
    status, quote = _get(node, "/node/quotes/self")
    assert (status, quote["measurement"]) == (200, own)


def test_a_node_restarted_after_its_measurement_was_removed_stops_with_the_reason(
    tmp_path: Path,
) -> None:
    node, _ = _start(tmp_path)
    host = Host()
    host.drain(node)
    own = node.platform.measurement
    _set_measurements(node, host, add=[OTHER_MEASUREMENT], remove=[own])
    restarted = host.restart(node, tmp_path)
    with pytest.raises(UnapprovedCode) as refused:
        restarted.resumed()
    reason = str(refused.value)
    assert "\n" not in reason
    assert own in reason and gt.NODES_VIRTUAL_MEASUREMENTS in reason
    assert "add_virtual_measurement" in reason
    # Refused before consensus restarts: it sends nothing to any peer, serves nothing.
    assert restarted.raft is None and restarted.state != "PartOfNetwork"
    assert not [f for f in restarted.outbox if isinstance(f, itf.SendToNode)]


def test_a_node_restarted_after_its_measurement_was_added_back_resumes(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    host = Host()
    host.drain(node)
    own = node.platform.measurement
    _set_measurements(node, host, add=[OTHER_MEASUREMENT], remove=[own])
    _set_measurements(node, host, add=[own], remove=[])
    restarted = host.restart(node, tmp_path)
    restarted.resumed()
    assert restarted.state == "PartOfNetwork" and restarted.raft is not None


def test_an_snp_nodes_own_code_needs_its_measurement_and_host_data_governed(
    tmp_path: Path,
) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    evidence = Evidence(format=SNP_FORMAT, quote=MILAN_REPORT)
    measurement = MILAN_REPORT[0x90:0xC0].hex()
    host_data = MILAN_REPORT[0xC0:0xE0].hex()

    with pytest.raises(UnapprovedCode, match=f"measurement {measurement} is not in"):
        check_own_code(node.store.begin(), evidence)
    tx = node.store.begin()
    gt.put_json(tx, gt.NODES_SNP_MEASUREMENTS, measurement.encode(), gt.ALLOWED_TO_JOIN)
    with pytest.raises(UnapprovedCode, match=f"host data {host_data} is not in"):
        check_own_code(tx, evidence)
    gt.put_json(tx, gt.NODES_SNP_HOST_DATA, host_data.encode(), "")
    check_own_code(tx, evidence)  # both governed: admitted
