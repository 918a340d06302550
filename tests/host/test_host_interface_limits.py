"""The boundary's size limits derive from the ledger entry limit and hold together
(enclave_app/interface/limits.py), and the host dispatches every enclave frame by a table."""

from __future__ import annotations

import ast
from pathlib import Path

from charter.consensus.codec import MAX_MESSAGE_BYTES
from charter.consensus.types import MAX_ENTRY_BYTES, RaftConfig
from charter.enclave_app import channels
from charter.enclave_app import interface as itf
from charter.host import relay, storage
from charter.host.main import Host
from charter.ledger.entry import ENTRY_SIZE_BYTES_MAX

ROOT = Path(__file__).resolve().parents[2]


def test_frame_limits_are_computed_from_the_ledger_entry_limit() -> None:
    assert itf.MAX_FRAME_BYTES == ENTRY_SIZE_BYTES_MAX + itf.FRAME_ENVELOPE_BYTES
    assert itf.READ_REPLY_BYTES_MAX == ENTRY_SIZE_BYTES_MAX + itf.REPLY_ENTRY_OVERHEAD_BYTES
    assert itf.NODE_FRAME_BYTES_MAX == MAX_MESSAGE_BYTES + itf.NODE_FRAME_ENVELOPE_BYTES
    # Consensus's entry bound is one number, used by its config and its decoder alike.
    assert RaftConfig().max_entry_bytes == MAX_ENTRY_BYTES <= ENTRY_SIZE_BYTES_MAX


def test_the_node_to_node_limit_is_one_number_on_both_sides_of_the_relay() -> None:
    assert relay.MAX_NODE_FRAME_BYTES == channels.MAX_FRAME_BYTES == itf.NODE_FRAME_BYTES_MAX


def test_byte_size_limits_are_declared_only_in_the_limits_module() -> None:
    """No module of host/ or the boundary writes a frame or entry limit as a literal."""
    names = {"MAX_FRAME_BYTES", "MAX_NODE_FRAME_BYTES", "READ_REPLY_BYTES_MAX"}
    offenders = []
    for path in [*ROOT.glob("host/*.py"), *ROOT.glob("enclave_app/interface/*.py")]:
        if path.name == "limits.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if (
                        isinstance(target, ast.Name)
                        and target.id in names
                        and node.value is not None
                        and not isinstance(node.value, ast.Name)
                    ):
                        offenders.append(f"{path.name}:{node.lineno} {target.id}")
    assert offenders == []


def test_a_largest_ledger_entry_fits_one_write_frame_and_one_read_reply() -> None:
    entry = bytes(ENTRY_SIZE_BYTES_MAX)
    write = itf.encode_frame(itf.WriteEntries(entries=[(1, entry)]))
    assert len(write) <= itf.MAX_FRAME_BYTES
    read = itf.encode_frame(itf.EntriesRead(request_id=1, entries=[entry], first_seqno=1))
    assert len(read) <= itf.MAX_FRAME_BYTES
    assert len(entry) + itf.REPLY_ENTRY_OVERHEAD_BYTES <= storage.READ_REPLY_BYTES_MAX


def test_a_largest_sealed_node_frame_fits_one_control_frame_both_ways() -> None:
    payload = bytes(itf.NODE_FRAME_BYTES_MAX)
    out = itf.encode_frame(
        itf.SendToNode(node_id="ab" * 32, address="127.0.0.1:1", payload=payload)
    )
    assert itf.decode_frame(out) == itf.SendToNode("ab" * 32, "127.0.0.1:1", payload)
    back = itf.encode_frame(itf.NodeMessage(from_address="127.0.0.1:1", payload=payload))
    assert len(back) <= itf.MAX_FRAME_BYTES


async def test_the_host_has_exactly_one_handler_for_every_frame_the_enclave_sends(
    tmp_path: Path,
) -> None:
    config = itf.NodeConfig.model_validate(
        {"workspace": str(tmp_path), "start": {"members": [{"cert": str(tmp_path / "m.pem")}]}}
    )
    (tmp_path / "ledger").mkdir()
    (tmp_path / "snapshots").mkdir()
    host = Host(config)
    try:
        assert set(host._frame_handlers) == set(itf.ENCLAVE_TO_HOST)
        assert not set(host._frame_handlers) & set(itf.HOST_TO_ENCLAVE)
    finally:
        host.storage.close()
