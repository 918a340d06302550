"""Node-to-node frames from the network are untrusted: random and mutated frames, and
well-sealed frames with malformed contents, are dropped without changing the node; the
message codec (`node.messages`) raises its DecodeError and nothing else on any bytes."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node_inprocess import _drain, _start

from charter.consensus import AppendEntries, AppendEntriesResponse, LogEntry, PreVote
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.channels import ChannelError, Channels
from charter.enclave_app.interface import FORWARD_BODY_BYTES_MAX
from charter.enclave_app.node import messages as m
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


# ---------------------------------------------------------------------- the message codec
ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
ints = st.integers(min_value=0, max_value=(1 << 63) - 1)
forward_ids = st.integers(min_value=1, max_value=(1 << 63) - 1)
texts = st.text(max_size=40)
headers = st.dictionaries(texts, texts, max_size=6).map(lambda d: tuple(d.items()))


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    term = draw(st.integers(min_value=1, max_value=1 << 40))
    prev_index = draw(st.integers(min_value=0, max_value=1 << 20))
    prev_term = 0 if prev_index == 0 else draw(st.integers(min_value=1, max_value=term))
    terms = sorted(draw(st.lists(st.integers(prev_term, term), max_size=4)))
    entries = tuple(
        LogEntry(prev_index + 1 + k, t, draw(st.binary(max_size=40)), draw(st.booleans()))
        for k, t in enumerate(terms)
    )
    return AppendEntries(term, draw(ids), prev_index, prev_term, entries, draw(ints))


node_messages: st.SearchStrategy[m.NodeMessage] = st.one_of(
    st.builds(
        m.RaftFrame,
        st.one_of(
            append_entries(),
            st.builds(PreVote, ints, ids, ints, ints),
            st.builds(
                AppendEntriesResponse, ints, ids, st.booleans(), ints, ints, ints, ints, ints
            ),
        ),
    ),
    st.builds(
        m.ForwardRequest,
        forward_ids,
        st.sampled_from(["POST", "PUT", "DELETE", "PATCH"]),
        st.text(max_size=60),
        st.text(max_size=60),
        headers,
        st.binary(max_size=200),
        st.binary(max_size=100),
    ),
    st.builds(
        m.ForwardAnswer,
        forward_ids,
        st.integers(min_value=100, max_value=599),
        headers,
        st.none() | texts,
        st.binary(max_size=200),
    ),
)

CODEC_FUZZ = settings(max_examples=500, derandomize=True, deadline=None)


def _decode_or_decode_error(data: bytes) -> m.NodeMessage | None:
    """`decode`'s whole contract on any bytes: a message, or DecodeError with a known code."""
    try:
        return m.decode(data)
    except m.DecodeError as exc:
        assert exc.code in {
            m.NOT_MSGPACK,
            m.TOO_LARGE,
            m.UNKNOWN_KIND,
            m.MALFORMED,
            m.BAD_RAFT_MESSAGE,
            m.DUPLICATE_HEADER,
        }
        return None


@CODEC_FUZZ
@given(node_messages)
def test_every_message_survives_a_round_trip(message: m.NodeMessage) -> None:
    data = m.encode(message)
    assert m.decode(data) == message
    assert m.encode(m.decode(data)) == data


@CODEC_FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_decode_or_raise_decode_error_only(data: bytes) -> None:
    decoded = _decode_or_decode_error(data)
    if decoded is not None:  # what decodes re-encodes to a message that decodes the same
        assert m.decode(m.encode(decoded)) == decoded


@CODEC_FUZZ
@given(node_messages, st.data())
def test_mutated_encodings_decode_or_raise_decode_error_only(
    message: m.NodeMessage, data: st.DataObject
) -> None:
    frame = bytearray(m.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    _decode_or_decode_error(bytes(frame))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


@CODEC_FUZZ
@given(node_messages, st.data())
def test_fields_of_the_wrong_type_raise_decode_error_only(
    message: m.NodeMessage, data: st.DataObject
) -> None:
    """Each field of a valid message replaced by an arbitrary msgpack value (or dropped, or
    one added): a message that still decodes must have kept the fields' types."""
    fields = msgpack.unpackb(m.encode(message), raw=False)
    position = data.draw(st.integers(0, len(fields)))
    op = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if op == "replace" and position < len(fields):
        fields[position] = data.draw(msgpack_values)
    elif op == "drop" and position < len(fields):
        del fields[position]
    else:
        fields.insert(position, data.draw(msgpack_values))
    decoded = _decode_or_decode_error(msgpack.packb(fields, use_bin_type=True))
    if decoded is not None:
        assert type(decoded) is type(message)


_REQUEST = m.ForwardRequest(1, "POST", "/app/log", "id=1", (("content-type", "x"),), b"{}", b"")
_ANSWER = m.ForwardAnswer(1, 200, (("x-a", "b"),), "application/json", b"{}")
# (message with one field at its bound, the same message one byte over)
_AT_AND_OVER_BOUNDS = {
    "method": (
        {"method": "M" * m.METHOD_BYTES_MAX},
        {"method": "M" * (m.METHOD_BYTES_MAX + 1)},
    ),
    "path": ({"path": "/" * m.PATH_BYTES_MAX}, {"path": "/" * (m.PATH_BYTES_MAX + 1)}),
    "path_utf8": (
        {"path": "é" * (m.PATH_BYTES_MAX // 2)},
        {"path": "é" * (m.PATH_BYTES_MAX // 2) + "x"},
    ),
    "query": ({"query": "q" * m.QUERY_BYTES_MAX}, {"query": "q" * (m.QUERY_BYTES_MAX + 1)}),
    "header_count": (
        {"headers": tuple((f"h{i}", "") for i in range(m.HEADERS_COUNT_MAX))},
        {"headers": tuple((f"h{i}", "") for i in range(m.HEADERS_COUNT_MAX + 1))},
    ),
    "header_bytes": (
        {"headers": (("h", "v" * (m.HEADERS_BYTES_MAX - 1)),)},
        {"headers": (("h", "v" * m.HEADERS_BYTES_MAX),)},
    ),
    "caller_der": (
        {"caller_der": b"c" * m.CALLER_CERT_BYTES_MAX},
        {"caller_der": b"c" * (m.CALLER_CERT_BYTES_MAX + 1)},
    ),
    "body": (
        {"body": bytes(FORWARD_BODY_BYTES_MAX)},
        {"body": bytes(FORWARD_BODY_BYTES_MAX + 1)},
    ),
    "content_type": (
        {"content_type": "t" * m.CONTENT_TYPE_BYTES_MAX},
        {"content_type": "t" * (m.CONTENT_TYPE_BYTES_MAX + 1)},
    ),
}


def _with(fields: dict[str, object]) -> m.ForwardRequest | m.ForwardAnswer:
    base: m.ForwardRequest | m.ForwardAnswer = _ANSWER if "content_type" in fields else _REQUEST
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", sorted(_AT_AND_OVER_BOUNDS))
def test_a_field_at_its_bound_passes_and_one_byte_over_is_refused_both_ways(field: str) -> None:
    """The bounds `decode` enforces are the ones `encode` enforces: a node never sends a
    message its peer would drop, and a peer's oversize message is a TooLarge DecodeError."""
    at_bound, over_bound = (_with(f) for f in _AT_AND_OVER_BOUNDS[field])
    assert m.decode(m.encode(at_bound)) == at_bound
    with pytest.raises(m.EncodeError) as refused:
        m.encode(over_bound)
    assert refused.value.code == m.TOO_LARGE
    # What an unchecked sender would put on the wire, for the decoder to refuse.
    fields = msgpack.unpackb(m.encode(at_bound), raw=False)
    oversize = msgpack.unpackb(_encode_unchecked(over_bound), raw=False)
    assert len(fields) == len(oversize)
    with pytest.raises(m.DecodeError) as dropped:
        m.decode(_encode_unchecked(over_bound))
    assert dropped.value.code == m.TOO_LARGE


def _encode_unchecked(message: m.ForwardRequest | m.ForwardAnswer) -> bytes:
    """The wire form of `message` without `encode`'s checks (a compromised peer's bytes)."""
    if isinstance(message, m.ForwardRequest):
        frame: list[object] = [
            "fwd",
            message.forward_id,
            message.method,
            message.path,
            message.query,
            [list(p) for p in message.headers],
            message.body,
            message.caller_der,
        ]
    else:
        frame = [
            "fwd_resp",
            message.forward_id,
            message.status,
            [list(p) for p in message.headers],
            message.content_type,
            message.body,
        ]
    out = msgpack.packb(frame, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def test_a_message_larger_than_a_sealed_frame_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(m.DecodeError) as refused:
        m.decode(bytes(m.MESSAGE_BYTES_MAX + 1))
    assert refused.value.code == m.TOO_LARGE


def test_the_wire_format_is_the_untyped_lists_it_replaced() -> None:
    """Nodes from before the typed codec send these lists; they still decode."""
    old_forward = ["fwd", 7, "POST", "/app/x", "", [["content-type", "a"]], b"{}", b""]
    old_answer = ["fwd_resp", 7, 200, [["x", "y"]], None, b"ok"]
    assert m.decode(msgpack.packb(old_forward, use_bin_type=True)) == m.ForwardRequest(
        7, "POST", "/app/x", "", (("content-type", "a"),), b"{}", b""
    )
    assert m.decode(msgpack.packb(old_answer, use_bin_type=True)) == m.ForwardAnswer(
        7, 200, (("x", "y"),), None, b"ok"
    )


def test_repeated_header_names_and_out_of_range_numbers_are_refused() -> None:
    def codes(frame: list[object]) -> str:
        with pytest.raises(m.DecodeError) as refused:
            m.decode(msgpack.packb(frame, use_bin_type=True))
        return refused.value.code

    assert codes(["fwd_resp", 1, 200, [["a", "1"], ["a", "2"]], None, b""]) == m.DUPLICATE_HEADER
    assert codes(["fwd_resp", 0, 200, [], None, b""]) == m.MALFORMED  # ids start at 1
    assert codes(["fwd_resp", True, 200, [], None, b""]) == m.MALFORMED  # a bool is no id
    assert codes(["fwd_resp", 1, 600, [], None, b""]) == m.MALFORMED
    assert codes(["fwd", 1, "", "/", "", [], b"", b""]) == m.MALFORMED  # no method
    assert codes(["raft", b"\x93\x01"]) == m.BAD_RAFT_MESSAGE
    assert codes(["gossip", b""]) == m.UNKNOWN_KIND
    assert codes([{"kind": "raft"}]) == m.NOT_MSGPACK  # maps are never part of a message


def test_what_is_too_large_to_forward_is_answered_not_dropped(tmp_path: Path) -> None:
    """A backup never sends a forward its primary would drop: it answers 413 itself; and a
    primary whose answer is too large for the channel sends a 502 in its place, so the
    caller on the backup is not left waiting for an answer that cannot come."""
    node, _ = _start(tmp_path)
    _drain(node)
    peer_key = certs.new_key()
    peer_id = certs.node_id(peer_key.public_key())
    assert node.peers is not None and node.identity is not None
    node.peers.know(peer_id, certs.public_key_pem(peer_key.public_key()), "x:1")
    peer = Channels(peer_key, epoch=1)
    peer.know(node.identity.node_key.public_key())
    node.outbox.clear()

    refused = node.peers.forward(peer_id, "POST", "/" * (m.PATH_BYTES_MAX + 1), "", {}, b"", None)
    assert isinstance(refused, HttpResponse) and refused.status == 413
    assert b"RequestTooLarge" in refused.body
    assert node.outbox == []

    huge = HttpResponse(200, bytes(FORWARD_BODY_BYTES_MAX + 1), {}, None)
    node.peers.answer(peer_id, 5, huge)
    (frame,) = node.outbox
    sender, plaintext = peer.open(frame.payload)  # type: ignore[attr-defined]
    answer = m.decode(plaintext)
    assert sender == node.node_id
    assert isinstance(answer, m.ForwardAnswer) and answer.forward_id == 5
    assert answer.status == 502 and b"ResponseTooLarge" in answer.body
