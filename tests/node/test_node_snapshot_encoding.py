"""The node core's side of snapshot encoding (node/snapshots.py): it hands `encode` to its
encoder and completes the snapshot when the result comes back as an event. Driven here by an
encoder that holds each job until the test completes or fails it: plain, deterministic
calls, no fork (tests/enclave/test_enclave_snapshot_fork.py has the fork)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.node import Node
from charter.enclave_app.node.snapshots import IN_FLIGHT_MAX
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.ledger import certs
from charter.ledger.snapshot import decode_snapshot, parse_snapshot_file_name

SNAPSHOT_TX = 10


class HeldEncoder:
    """Encodes at once (as a fork sees the state at the fork) but tells the node only when
    the test says: `jobs` are (seqno, view, entry) as the node asked."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, int, bytes]] = []

    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None:
        self.jobs.append((seqno, view, encode()))


def _node(tmp: Path, encoder: HeldEncoder | None, snapshot_tx: int = SNAPSHOT_TX) -> Node:
    key = certs.new_key()
    cert = tmp / "member0_cert.pem"
    cert.write_text(certs.cert_pem(certs.identity_cert(key, "member0")))
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(tmp),
            "start": {"mode": "start", "members": [{"cert": str(cert)}]},
            "snapshots": {"tx_count": snapshot_tx},
            "signatures": {"tx_count": 1000, "delay_ms": 1},
        }
    )
    node = Node(config, VirtualPlatform(tmp), load_app(config.app), snapshot_encoder=encoder)
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    node.start_new_network(initial_members(config), None)
    _drain(node)
    return node


def _drain(node: Node) -> list[itf.WriteSnapshot]:
    """Act as a host that makes every write durable at once; the snapshot frames sent."""
    snapshots = []
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.WriteEntries):
                node.durable(max(s for s, _ in frame.entries))
            elif isinstance(frame, itf.WriteSnapshot):
                snapshots.append(frame)
    return snapshots


def _writes_and_signature(node: Node, count: int, tag: str) -> list[itf.WriteSnapshot]:
    for i in range(count):
        tx = node.store.begin()
        tx.put("records", f"{tag}{i}".encode(), b"value")
        node.commit_tx(tx)
    node.emit_signature()
    return _drain(node)


def _evidence(node: Node) -> list[itf.WriteSnapshot]:
    """Two signatures: the evidence's, then one after it, so the snapshots complete; the
    snapshot frames sent."""
    frames = []
    for _ in range(2):
        node.emit_signature()
        frames += _drain(node)
    return frames


def test_the_primary_records_evidence_when_the_encoding_comes_back_at_the_seqno_next_then(
    tmp_path: Path,
) -> None:
    """Writes go on while the snapshot encodes; the evidence then takes the next seqno (not
    the snapshot's + 1), and the file completes and verifies with that evidence in its
    name."""
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    _writes_and_signature(node, SNAPSHOT_TX, "a")
    assert len(encoder.jobs) == 1
    seqno, _, entry = encoder.jobs[0]
    assert node.applied_seqno == seqno
    _writes_and_signature(node, 2, "b")  # in the same interval: nothing more is due
    assert len(encoder.jobs) == 1
    next_seqno = node.applied_seqno + 1
    assert next_seqno > seqno + 1
    node.snapshot_encoded(seqno, entry)
    frames = _drain(node)
    assert [(f.seqno, f.evidence_seqno, f.committed) for f in frames] == [
        (seqno, next_seqno, False)
    ]
    _evidence(node)
    assert node.latest_snapshot is not None and node.latest_snapshot_name is not None
    assert parse_snapshot_file_name(node.latest_snapshot_name) == (seqno, next_seqno, True)
    assert decode_snapshot(node.latest_snapshot).seqno == seqno


def test_snapshots_due_while_others_encode_fork_too_and_complete_in_seqno_order(
    tmp_path: Path,
) -> None:
    """Each interval's first signature forks a snapshot whether or not the last one is back
    (a backup must encode where the primary does, however slow its own child is). Results
    that come back out of order complete in the order of their seqnos, and every file
    completes."""
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    for tag in "abc":
        _writes_and_signature(node, SNAPSHOT_TX, tag)
    assert len(encoder.jobs) == 3
    (first, _, entry1), (second, _, entry2), (third, _, entry3) = encoder.jobs
    assert first // SNAPSHOT_TX < second // SNAPSHOT_TX < third // SNAPSHOT_TX
    node.snapshot_encoded(third, entry3)
    assert _drain(node) == [], "the last waits for those before it"
    node.snapshot_encoded(first, entry1)
    assert [f.seqno for f in _drain(node)] == [first]
    node.snapshot_encoded(second, entry2)
    assert [f.seqno for f in _drain(node)] == [second, third]
    committed = _evidence(node)
    assert [(f.seqno, f.committed) for f in committed] == [
        (s, True) for s in (first, second, third)
    ]
    assert node.latest_snapshot is not None and node.latest_snapshot_name is not None
    assert decode_snapshot(node.latest_snapshot).seqno == third


def test_a_node_with_the_most_snapshots_on_the_way_skips_the_next_until_one_is_done(
    tmp_path: Path,
) -> None:
    """At most `IN_FLIGHT_MAX` snapshots are on the way (a forked child or an entry in memory
    each): the interval after that takes none; once one is done, the next interval does."""
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    for i in range(IN_FLIGHT_MAX + 1):
        _writes_and_signature(node, SNAPSHOT_TX, f"w{i}")
    assert len(encoder.jobs) == IN_FLIGHT_MAX
    seqno, _, entry = encoder.jobs[0]
    node.snapshot_encoded(seqno, entry)
    _drain(node)
    assert [f.seqno for f in _evidence(node)] == [seqno]
    _writes_and_signature(node, SNAPSHOT_TX, "next")
    assert len(encoder.jobs) == IN_FLIGHT_MAX + 1


def test_an_encoding_that_failed_is_tried_again_at_the_next_signature(tmp_path: Path) -> None:
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    _writes_and_signature(node, SNAPSHOT_TX, "a")
    failed_seqno = encoder.jobs[0][0]
    node.snapshot_encode_failed(failed_seqno, "child killed")
    assert _drain(node) == []
    # One write and a signature: still due (counted from the last snapshot, none yet).
    _writes_and_signature(node, 1, "b")
    assert len(encoder.jobs) == 2
    seqno, _, entry = encoder.jobs[1]
    assert seqno > failed_seqno
    node.snapshot_encoded(seqno, entry)
    assert [f.seqno for f in _drain(node)] == [seqno]
    _evidence(node)
    assert node.latest_snapshot_name is not None
    assert node.latest_snapshot_name.startswith(f"snapshot_{seqno}_")


def test_a_result_for_a_snapshot_not_being_encoded_changes_nothing(tmp_path: Path) -> None:
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    _writes_and_signature(node, SNAPSHOT_TX, "a")
    seqno, _, entry = encoder.jobs[0]
    node.snapshot_encoded(seqno + 1, entry)  # not the one asked for
    node.snapshot_encode_failed(seqno + 1, "stale")
    assert _drain(node) == []
    node.snapshot_encoded(seqno, entry)
    assert [f.seqno for f in _drain(node)] == [seqno]
    node.snapshot_encoded(seqno, entry)  # twice: the second is ignored
    assert _drain(node) == []


def test_the_synchronous_encoder_records_evidence_right_after_the_snapshot(
    tmp_path: Path,
) -> None:
    """The default encoder (in-process tests, the simulator) encodes at once: the evidence
    follows the snapshot's signature, as before encoding moved off the loop."""
    node = _node(tmp_path, None)
    frames = _writes_and_signature(node, SNAPSHOT_TX, "a")
    assert [(f.evidence_seqno - f.seqno, f.committed) for f in frames] == [(1, False)]


def test_a_snapshot_skipped_at_its_signature_is_taken_at_the_next_one(tmp_path: Path) -> None:
    """A snapshot falls due at the first signature of each `tx_count` interval. When the
    primary's loop finds the store moved past that signature before it could fork (a
    write came first), it skips it; the next signature then takes the snapshot, rather than
    the service going a whole interval without one."""
    encoder = HeldEncoder()
    interval = 100  # what follows stays in one interval
    node = _node(tmp_path, encoder, interval)
    _writes_and_signature(node, interval, "a")
    seqno, _, entry = encoder.jobs[-1]
    node.snapshot_encoded(seqno, entry)
    _drain(node)
    _evidence(node)
    jobs = len(encoder.jobs)
    # Another signature in the same interval: not due.
    _writes_and_signature(node, 1, "b")
    assert len(encoder.jobs) == jobs
    # Due at a signature the store has already moved past: skipped...
    raft = node.raft
    assert raft is not None
    node.snapshots.due = (node.applied_seqno - 1, raft.view)
    assert _drain(node) == [] and len(encoder.jobs) == jobs
    # ...and taken at the next signature, though not the first of an interval.
    _writes_and_signature(node, 1, "c")
    assert len(encoder.jobs) == jobs + 1
    assert encoder.jobs[-1][0] == node.applied_seqno
    assert encoder.jobs[-1][0] // interval == seqno // interval


def test_a_truncation_forgets_the_snapshots_of_the_entries_it_took_away(tmp_path: Path) -> None:
    """What the log's truncation (`LocalLog.on_rollback`) tells the snapshots: an encoding
    of a signature that is gone is dropped when it comes back, and a snapshot whose
    evidence is gone never completes; those before the truncation point are kept."""
    encoder = HeldEncoder()
    node = _node(tmp_path, encoder)
    _writes_and_signature(node, SNAPSHOT_TX, "a")
    kept, _, kept_entry = encoder.jobs[0]
    node.snapshot_encoded(kept, kept_entry)
    [frame] = _drain(node)
    evidence = frame.evidence_seqno
    # The next interval's signature: it also completes the first snapshot's file.
    frames = _writes_and_signature(node, SNAPSHOT_TX, "b")
    assert [(f.seqno, f.committed) for f in frames] == [(kept, True)]
    gone, _, gone_entry = encoder.jobs[1]
    assert evidence < gone
    # A truncation between the first snapshot's evidence and the second's signature.
    node.snapshots.rolled_back(gone - 1)
    node.snapshot_encoded(gone, gone_entry)
    assert _drain(node) == [], "no evidence for a snapshot whose signature is gone"
    assert _evidence(node) == []
    # Below the evidence: the first snapshot's file is forgotten too.
    (tmp_path / "second").mkdir()
    node2 = _node(tmp_path / "second", encoder := HeldEncoder())
    _writes_and_signature(node2, SNAPSHOT_TX, "a")
    seqno, _, entry = encoder.jobs[0]
    node2.snapshot_encoded(seqno, entry)
    [frame] = _drain(node2)
    node2.snapshots.rolled_back(frame.evidence_seqno - 1)
    assert _evidence(node2) == []
