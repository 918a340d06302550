"""Introductions (enclave_app/channels.py, node/peers.py): a node whose state is from before
a peer was trusted cannot open that peer's frames, and so could never be brought up to date
by it. A sender whose peer has been silent attaches its certificate and address; the
receiver learns the key only from a certificate the service's key issued, and only once the
sealed frame it carries opens under that key. Forged, foreign and malformed introductions
teach nothing and are dropped."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node_inprocess import _drain, _start

from charter.consensus import PreVote
from charter.enclave_app import interface as itf
from charter.enclave_app.channels import (
    HEADER,
    ChannelError,
    Channels,
    introduce,
    is_introduction,
    parse_introduction,
)
from charter.enclave_app.node import Node
from charter.enclave_app.node import messages as m
from charter.enclave_app.node.peers import INTRODUCE_AFTER_SILENT_MS, UNKNOWN_INTRODUCTIONS_PER_S
from charter.ledger import certs

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PEER_ADDRESS = "127.0.0.1:4321"


def _started(tmp: Path) -> Node:
    node, _ = _start(tmp)
    _drain(node)
    return node


def _issued(node: Node, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A node certificate for `key` issued by `node`'s service key (as a trust does)."""
    identity = node.identity
    assert identity is not None and identity.service_key is not None
    cert = certs.endorse(
        key.public_key(), identity.service_key, identity.service_cert, san_ips=["127.0.0.1"]
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _sender(key: ec.EllipticCurvePrivateKey, node: Node) -> Channels:
    """The channels of the holder of `key`, which knows `node` (`node` may not know it)."""
    sender = Channels(key, epoch=1)
    assert node.identity is not None
    sender.know(node.identity.node_key.public_key())
    return sender


def _sealed_from(key: ec.EllipticCurvePrivateKey | Channels, node: Node) -> bytes:
    """A PreVote sealed to `node` by the holder of `key` (a fresh sender for a bare key)."""
    sender = key if isinstance(key, Channels) else _sender(key, node)
    message = m.RaftFrame(PreVote(1, sender.own_id, 0, 0))
    return sender.seal(node.node_id, m.encode(message))


def _node_and_stranger(
    tmp: Path,
) -> tuple[Node, ec.EllipticCurvePrivateKey, str]:
    """A started node, and the key and id of a node it knows nothing of."""
    key = certs.new_key()
    return _started(tmp), key, certs.node_id(key.public_key())


def _knows(node: Node, peer_id: str) -> bool:
    assert node.peers is not None
    return peer_id in node.peers.channels.public_keys or peer_id in node.peers.addresses


def test_a_node_learns_a_peer_it_did_not_know_from_an_introduction_the_service_issued(
    tmp_path: Path,
) -> None:
    node, key, peer_id = _node_and_stranger(tmp_path)
    assert node.peers is not None
    sender = _sender(key, node)
    assert node.peers.open(_sealed_from(sender, node)) is None, "an unknown sender's frame"
    assert not _knows(node, peer_id)
    opened = node.peers.open(
        introduce(_issued(node, key), PEER_ADDRESS, _sealed_from(sender, node))
    )
    assert opened is not None
    opened_by, message = opened
    assert opened_by == peer_id and isinstance(message, m.RaftFrame)
    assert node.peers.addresses[peer_id] == PEER_ADDRESS
    # From now on its plain frames open too.
    assert node.peers.open(_sealed_from(sender, node)) is not None


def test_an_introduction_the_service_did_not_issue_is_dropped_and_teaches_nothing(
    tmp_path: Path,
) -> None:
    node, key, peer_id = _node_and_stranger(tmp_path)
    assert node.peers is not None
    self_signed = certs.self_signed_cert(key, "CCF Node", ca=False).public_bytes(
        serialization.Encoding.DER
    )
    # A certificate from another service's key.
    (tmp_path / "other").mkdir()
    other = _started(tmp_path / "other")
    foreign = _issued(other, key)
    for cert_der in (self_signed, foreign, b"not a certificate"):
        dropped = node.metrics["peer_messages_dropped"]
        assert node.peers.open(introduce(cert_der, PEER_ADDRESS, _sealed_from(key, node))) is None
        assert node.metrics["peer_messages_dropped"] == dropped + 1
        assert not _knows(node, peer_id)


def test_an_introduction_whose_frame_its_certificates_key_did_not_seal_teaches_nothing(
    tmp_path: Path,
) -> None:
    """A genuine certificate (copied from a real introduction) with a frame sealed by
    someone else under that node's name: the frame fails authentication, the key is not
    kept, and the genuine node's own introduction still works afterwards."""
    node = _started(tmp_path)
    assert node.peers is not None
    key, attacker = certs.new_key(), certs.new_key()
    peer_id = certs.node_id(key.public_key())
    forged = bytearray(_sealed_from(attacker, node))
    forged[1:33] = bytes.fromhex(peer_id)  # the attacker's frame under the peer's id
    assert node.peers.open(introduce(_issued(node, key), PEER_ADDRESS, bytes(forged))) is None
    assert not _knows(node, peer_id)
    # Under its own name, the attacker's frame does not match the certificate either.
    assert (
        node.peers.open(introduce(_issued(node, key), PEER_ADDRESS, _sealed_from(attacker, node)))
        is None
    )
    assert not _knows(node, peer_id)
    assert certs.node_id(attacker.public_key()) not in node.peers.channels.public_keys
    assert node.peers.open(introduce(_issued(node, key), PEER_ADDRESS, _sealed_from(key, node)))
    assert _knows(node, peer_id)


def test_an_introduction_never_replaces_the_address_governance_gave(tmp_path: Path) -> None:
    node, key, peer_id = _node_and_stranger(tmp_path)
    assert node.peers is not None
    node.peers.know(peer_id, certs.public_key_pem(key.public_key()), "127.0.0.1:1111")
    framed = introduce(_issued(node, key), "10.9.9.9:1", _sealed_from(key, node))
    assert node.peers.open(framed) is not None
    assert node.peers.addresses[peer_id] == "127.0.0.1:1111"


def _sent_to(node: Node, peer_id: str, now_ms: int) -> bytes:
    assert node.peers is not None
    node.core.last_tick_ms = now_ms
    node.peers.send_raft(peer_id, PreVote(1, node.node_id, 0, 0))
    [frame] = [f for f in node.outbox if isinstance(f, itf.SendToNode)]
    node.outbox.clear()
    return frame.payload


def test_a_silent_peer_gets_the_nodes_introduction_after_a_while_and_then_at_that_interval(
    tmp_path: Path,
) -> None:
    node = _started(tmp_path)
    assert node.peers is not None and node.identity is not None
    key = certs.new_key()
    peer = Channels(key, epoch=1)
    peer.know(node.identity.node_key.public_key())
    node.peers.know(peer.own_id, certs.public_key_pem(key.public_key()), PEER_ADDRESS)
    node.outbox.clear()
    wait = INTRODUCE_AFTER_SILENT_MS
    introduced = [
        is_introduction(_sent_to(node, peer.own_id, t))
        for t in (10_000, 10_000 + wait // 2, 10_000 + wait, 10_000 + wait * 3 // 2)
    ]
    assert introduced == [False, False, True, False]
    payload = _sent_to(node, peer.own_id, 10_000 + 2 * wait)
    assert is_introduction(payload)
    introduction = parse_introduction(payload)
    cert = x509.load_der_x509_certificate(introduction.cert_der)
    assert certs.issued_by(cert, node.identity.service_cert)
    assert certs.node_id(cert.public_key()) == node.node_id  # type: ignore[arg-type]
    assert introduction.address == node.core.n2n_published()
    assert peer.open(introduction.sealed)[0] == node.node_id
    # The peer answers: it is not introduced to while it is heard from.
    node.core.last_tick_ms = 10_000 + 2 * wait + 100
    reply = peer.seal(node.node_id, m.encode(m.RaftFrame(PreVote(1, peer.own_id, 0, 0))))
    assert node.peers.open(reply) is not None
    later = [
        is_introduction(_sent_to(node, peer.own_id, 10_000 + 2 * wait + 100 + t))
        for t in (wait // 2, wait - 1, wait + 1)
    ]
    assert later == [False, False, True]


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_are_no_introduction_or_raise_channel_error(data: bytes) -> None:
    try:
        introduction = parse_introduction(bytes([2]) + data)
    except ChannelError:
        return
    assert len(introduction.sealed) >= HEADER.size + 16


def test_mutated_introductions_are_dropped_and_teach_nothing_but_the_genuine_one(
    tmp_path: Path,
) -> None:
    """Every byte of a genuine introduction flipped in turn (certificate, address, lengths,
    the sealed frame): each is dropped without raising or teaching the key; the genuine
    one still teaches it."""
    node, key, peer_id = _node_and_stranger(tmp_path)
    assert node.peers is not None
    genuine = introduce(_issued(node, key), PEER_ADDRESS, _sealed_from(key, node))
    rng = random.Random(11)
    positions = sorted(rng.sample(range(len(genuine)), min(len(genuine), 300)))
    for position in positions:
        mutated = bytearray(genuine)
        mutated[position] ^= 1 << rng.randrange(8)
        # Below the rate of introductions from unknown senders, so that the checks judge
        # each one.
        node.core.last_tick_ms = (node.core.last_tick_ms or 0) + 100
        opened = node.peers.open(bytes(mutated))
        if opened is not None:
            # Only the address's bytes are outside what the certificate and the sealed
            # frame authenticate (a host can misroute anyway); the key is the genuine one.
            assert opened[0] == peer_id
            node.peers.channels.forget(peer_id)
            node.peers.addresses.pop(peer_id, None)
        assert not _knows(node, peer_id)
    node.core.last_tick_ms += 100
    assert node.peers.open(genuine) is not None
    assert _knows(node, peer_id)


def test_a_flood_of_introductions_from_unknown_senders_is_cut_off_before_its_certificates_are_checked(
    tmp_path: Path,
) -> None:
    """Each introduction from a sender the node does not know costs a certificate check: at
    most `UNKNOWN_INTRODUCTIONS_PER_S` a second are checked, the rest dropped unchecked; a
    genuine one a second later still teaches its key."""
    node, key, peer_id = _node_and_stranger(tmp_path)
    assert node.peers is not None
    node.core.last_tick_ms = 50_000
    self_signed = certs.self_signed_cert(key, "CCF Node", ca=False).public_bytes(
        serialization.Encoding.DER
    )
    forged = introduce(self_signed, PEER_ADDRESS, _sealed_from(key, node))
    checked = 0
    original = certs.issued_by

    def counting(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        nonlocal checked
        checked += 1
        return original(cert, issuer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certs, "issued_by", counting)
        for _ in range(10 * UNKNOWN_INTRODUCTIONS_PER_S):
            assert node.peers.open(forged) is None
    assert checked == UNKNOWN_INTRODUCTIONS_PER_S
    assert node.metrics["peer_messages_dropped"] >= 10 * UNKNOWN_INTRODUCTIONS_PER_S
    node.core.last_tick_ms += 1_000
    genuine = introduce(_issued(node, key), PEER_ADDRESS, _sealed_from(key, node))
    assert node.peers.open(genuine) is not None and _knows(node, peer_id)


def test_an_introduction_carrying_another_known_nodes_frame_teaches_nothing_and_spends_nothing() -> (
    None
):
    """At the channel level: a certificate's key with a frame genuinely sealed by another,
    known node. It is refused before it is opened: the certificate's key is not kept, and
    the known node's frame still opens afterwards (its replay window was not spent)."""
    own, known, stranger = certs.new_key(), certs.new_key(), certs.new_key()
    receiver = Channels(own, epoch=1)
    receiver.know(known.public_key())
    sender = Channels(known, epoch=1)
    sender.know(own.public_key())
    frame = sender.seal(receiver.own_id, b"hello")
    with pytest.raises(ChannelError, match="another node's frame"):
        receiver.open_introduced(stranger.public_key(), frame)
    assert certs.node_id(stranger.public_key()) not in receiver.public_keys
    assert receiver.open(frame) == (sender.own_id, b"hello")
