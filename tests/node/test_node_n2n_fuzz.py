"""Node-to-node frames from the network are untrusted: random and mutated frames, and
well-sealed frames with malformed contents, are dropped without changing the node."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node_inprocess import _drain, _start

from charter.enclave_app.channels import ChannelError, Channels
from charter.ledger import certs

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_random_and_mutated_frames_never_open(tmp_path: Path) -> None:
    """Channels.open raises ChannelError only, for 10,000 random and bit-flipped frames."""
    a_key, b_key = certs.new_key(), certs.new_key()
    a, b = Channels(a_key, epoch=1), Channels(b_key, epoch=1)
    a.know(b_key.public_key())
    b.know(a_key.public_key())
    genuine = a.seal(b.own_id, b"hello")
    rng = random.Random(7)
    for i in range(10_000):
        if i % 2:
            frame = bytearray(genuine)
            for _ in range(rng.randint(1, 4)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            data = bytes(frame)
        else:
            data = rng.randbytes(rng.randrange(0, 200))
        if data == genuine:
            continue
        try:
            b.open(data)
        except ChannelError:
            continue
        raise AssertionError(f"a forged frame opened: {data.hex()[:80]}")
    assert b.open(genuine) == (a.own_id, b"hello")


def test_sealed_frames_with_malformed_contents_change_nothing(tmp_path: Path) -> None:
    """A known, trusted-looking peer sends well-sealed garbage: every message is dropped,
    the node keeps its state and keeps serving."""
    node, _ = _start(tmp_path)
    _drain(node)
    peer_key = certs.new_key()
    node.peers.know(  # type: ignore[union-attr]
        certs.node_id(peer_key.public_key()), certs.public_key_pem(peer_key.public_key()), "x:1"
    )
    peer = Channels(peer_key, epoch=1)
    assert node.identity is not None and node.raft is not None
    peer.know(node.identity.node_key.public_key())
    before = (node.applied_seqno, node.commit_seqno, node.raft.view, node.raft.leader_id)

    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.binary(max_size=64)
        | st.text(max_size=16),
        lambda inner: st.lists(inner, max_size=8),
        max_leaves=20,
    )
    kinds = st.sampled_from(["raft", "fwd", "fwd_resp", "other", ""])

    @FUZZ
    @given(kind=kinds, fields=st.lists(values, max_size=9))
    def send(kind: str, fields: list[object]) -> None:
        payload = msgpack.packb([kind, *fields], use_bin_type=True)
        node.receive_from_peer(peer.seal(node.node_id, payload))
        node.outbox.clear()

    send()
    node.receive_from_peer(peer.seal(node.node_id, b"\xc1 not msgpack"))
    assert (node.applied_seqno, node.commit_seqno, node.raft.view, node.raft.leader_id) == before
    assert node.is_primary
