"""The ordering process ⇄ frontend link (enclave_app/frontend_link.py): every frame survives
the codec unchanged; random, cut and mutated bytes raise `LinkError` and nothing else; over a
real socketpair a malformed or misdirected frame is dropped and logged while the link goes on,
a passed fd arrives with its own frame, a turn's frames leave together, and a length prefix
over the limit closes the link."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app import frontend_link as fl
from charter.enclave_app.frontend_pool import frontend_limits
from charter.enclave_app.http_server import SessionLimits

text = st.text(max_size=40)
headers = st.lists(st.tuples(text, text), max_size=8)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
seconds = st.floats(min_value=0.001, max_value=3600, allow_nan=False)


@st.composite
def limits(draw: st.DrawFn) -> tuple[int, int, float, float, float]:
    soft = draw(st.integers(min_value=1, max_value=10_000))
    hard = draw(st.integers(min_value=soft, max_value=20_000))
    return soft, hard, draw(seconds), draw(seconds), draw(seconds)


frames = st.one_of(
    st.builds(fl.Configure, limits()),
    st.builds(fl.Tls, u64, text, text, text),
    st.builds(fl.Session, u64),
    st.builds(fl.Answer, u64, st.integers(100, 599), headers, st.binary(max_size=64),
              st.none() | text),
    st.builds(fl.Request, u64, u64, st.none() | st.binary(min_size=1, max_size=64), text, text,
              text, headers, st.binary(max_size=64), st.none() | text),
    st.just(fl.ForgetCerts()),
    st.builds(fl.Load, u64, u64),
)  # fmt: skip


@given(frames)
@settings(max_examples=400, deadline=None)
def test_every_frame_decodes_to_itself(frame: fl.LinkFrame) -> None:
    decoded = fl.decode_link_frame(fl.encode_link_frame(frame))
    assert decoded == frame


@given(st.binary(max_size=300))
@settings(max_examples=1500, deadline=None)
def test_random_bytes_raise_link_error_only(data: bytes) -> None:
    try:
        decoded = fl.decode_link_frame(data)
    except fl.LinkError:
        return
    assert fl.decode_link_frame(fl.encode_link_frame(decoded)) == decoded


@given(frames, st.data())
@settings(max_examples=1500, deadline=None)
def test_cut_or_mutated_frames_raise_link_error_or_decode_to_a_valid_frame(
    frame: fl.LinkFrame, data: st.DataObject
) -> None:
    body = bytearray(fl.encode_link_frame(frame))
    if data.draw(st.booleans()) and len(body) > 1:
        del body[data.draw(st.integers(1, len(body) - 1)) :]
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = fl.decode_link_frame(bytes(body))
    except fl.LinkError:
        return
    assert fl.decode_link_frame(fl.encode_link_frame(decoded)) == decoded


@pytest.mark.parametrize(
    "fields",
    [
        [fl.LINK_VERSION + 1, fl.Load.TAG, 1, 1],  # another version
        [fl.LINK_VERSION, 99, 1, 1],  # unknown tag
        [fl.LINK_VERSION, fl.Load.TAG, 1],  # a field missing
        [fl.LINK_VERSION, fl.Load.TAG, -1, 1],  # negative
        [fl.LINK_VERSION, fl.Load.TAG, True, 1],  # a bool is not an int
        [fl.LINK_VERSION, fl.Configure.TAG, [5, 4, 1.0, 1.0, 1.0]],  # soft above hard
        [fl.LINK_VERSION, fl.Answer.TAG, 1, 200, ["a"], b"", None],  # half a header
        [fl.LINK_VERSION, fl.Answer.TAG, 1, 200, ["a", "b"] * 257, b"", None],  # too many
        [fl.LINK_VERSION, fl.Answer.TAG, 1, 200, [["a", "b"]], b"", None],  # a line as an array
        [fl.LINK_VERSION, fl.Answer.TAG, 1, 200, ["a", 1], b"", None],  # a value not a str
        [fl.LINK_VERSION, fl.Answer.TAG, 1, 200, ["a", "b" * fl.HEADER_CHARS_MAX], b"", None],
        [fl.LINK_VERSION, fl.Request.TAG, 1, 1, b"", "GET", "/", "", [], b"", None],  # empty cert
        [fl.LINK_VERSION, fl.Request.TAG, 1, 1, b"x" * 70_000, "GET", "/", "", [], b"", None],
        [fl.LINK_VERSION, fl.Session.TAG, "1"],  # a str for an int
    ],
)
def test_frames_breaking_their_schema_are_refused(fields: list[object]) -> None:
    with pytest.raises(fl.LinkError):
        fl.decode_link_frame(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    "headers",
    [
        [("a", "b", "c")],  # not a (name, value) line
        [("a", 1)],  # a value that is not a str
        [("a", "b")] * (fl.HEADERS_MAX + 1),  # too many lines
        [("a", "b" * fl.HEADER_CHARS_MAX)],  # too many chars
    ],
)
def test_header_lines_the_peer_would_refuse_are_refused_when_sent(headers: list[object]) -> None:
    with pytest.raises(fl.LinkError):
        fl.encode_link_frame(fl.Answer(1, 200, headers, b"", None))  # type: ignore[arg-type]


def test_a_frame_over_the_size_limit_is_neither_encoded_nor_decoded() -> None:
    huge = b"x" * (fl.LINK_FRAME_BYTES_MAX + 1)
    with pytest.raises(fl.LinkError):
        fl.decode_link_frame(huge)
    with pytest.raises(fl.LinkError):
        fl.encode_link_frame(fl.Answer(1, 200, [], huge, None))


def test_each_frontend_gets_its_share_of_the_session_caps_rounded_up() -> None:
    node = SessionLimits(1000, 1010, 60.0, 10.0, 10.0)
    assert frontend_limits(node, 1) == node
    three = frontend_limits(node, 3)
    assert (three.max_open_sessions_soft, three.max_open_sessions_hard) == (334, 337)
    tiny = frontend_limits(SessionLimits(1, 1, 1.0, 1.0, 1.0), 4)
    assert (tiny.max_open_sessions_soft, tiny.max_open_sessions_hard) == (1, 1)


# ---------------------------------------------------------------------------- the Link itself


class Peer:
    """One end of a real socketpair as a `Link`, recording what it receives."""

    def __init__(self, sock: socket.socket, accepts: frozenset[type[object]]) -> None:
        self.frames: list[tuple[fl.LinkFrame, list[int]]] = []
        self.closed: list[str] = []
        self.arrived = asyncio.Event()
        self.link = fl.Link(
            sock, name="test", accepts=accepts, on_frame=self.on_frame, on_closed=self.on_closed
        )

    def on_frame(self, frame: fl.LinkFrame, fds: list[int]) -> None:
        self.frames.append((frame, fds))
        self.arrived.set()

    def on_closed(self, reason: str) -> None:
        self.closed.append(reason)
        self.arrived.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.frames) < count and not self.closed:
                self.arrived.clear()
                await self.arrived.wait()


def _raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def test_malformed_and_misdirected_frames_are_dropped_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours, theirs = socket.socketpair()
    orderer = Peer(ours, fl.TO_ORDERER)
    good = fl.encode_link_frame(fl.Load(3, 4))
    misdirected = fl.encode_link_frame(fl.Session(1))  # only the orderer sends these
    theirs.sendall(_raw(b"\xc1 not msgpack") + _raw(misdirected) + _raw(good[:-1]) + _raw(good))
    await orderer.wait(1)
    assert [f for f, _ in orderer.frames] == [fl.Load(3, 4)]
    assert orderer.link.dropped_frames == 3 and not orderer.closed
    assert "link_frame_dropped" in caplog.text
    orderer.link.close()
    theirs.close()


async def test_a_session_fd_arrives_with_its_frame_and_a_turns_frames_leave_together() -> None:
    a, b = socket.socketpair()
    orderer = Peer(a, fl.TO_ORDERER)
    frontend = Peer(b, fl.TO_FRONTEND)
    client, server_side = socket.socketpair()
    orderer.link.send(fl.Configure((1, 2, 1.0, 1.0, 1.0)))
    orderer.link.send(fl.Session(1), [server_side.fileno()])
    server_side.close()  # the link holds its own duplicate until it is sent
    orderer.link.send(fl.Answer(7, 200, [("x-a", "b")], b"{}", "application/json"))
    await frontend.wait(3)
    kinds = [type(f) for f, _ in frontend.frames]
    assert kinds == [fl.Configure, fl.Session, fl.Answer]
    (fd,) = frontend.frames[1][1]
    passed = socket.socket(fileno=fd)
    passed.sendall(b"ping")
    assert client.recv(4) == b"ping"
    passed.close()
    client.close()
    orderer.link.close()
    await frontend.wait(4)
    assert frontend.closed == ["peer closed the link"]


async def test_a_length_over_the_limit_closes_the_link() -> None:
    ours, theirs = socket.socketpair()
    orderer = Peer(ours, fl.TO_ORDERER)
    theirs.sendall(struct.pack(">I", fl.LINK_FRAME_BYTES_MAX + 1) + b"x" * 16)
    await orderer.wait(1)
    assert orderer.closed and "LINK_FRAME_BYTES_MAX" in orderer.closed[0]
    theirs.close()


async def test_fds_sent_with_a_frame_that_takes_none_are_closed_not_leaked() -> None:
    ours, theirs = socket.socketpair()
    orderer = Peer(ours, fl.TO_ORDERER)
    r, w = os.pipe()
    body = fl.encode_link_frame(fl.Load(0, 0))
    theirs.sendmsg([_raw(body)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
    os.close(r)
    await asyncio.sleep(0.2)
    assert orderer.frames == [] and orderer.link.dropped_frames == 1
    with pytest.raises(BrokenPipeError):  # the only read end left was closed by the link
        os.write(w, b"x")
    os.close(w)
    orderer.link.close()
    theirs.close()


def test_a_frame_the_peer_would_refuse_is_refused_when_encoded() -> None:
    # The sender finds out at once and answers its client, instead of the peer dropping it.
    too_many = [("a", "b")] * (fl.HEADERS_MAX + 1)
    with pytest.raises(fl.LinkError, match="header"):
        fl.encode_link_frame(fl.Request(1, 0, None, "GET", "/", "", too_many, b"", None))
    with pytest.raises(fl.LinkError):
        fl.encode_link_frame(fl.Request(1, 1, b"", "GET", "/", "", [], b"", None))
    with pytest.raises(fl.LinkError):
        fl.encode_link_frame(fl.Load(-1, 0))


def test_header_names_from_the_http_layer_cross_as_plain_strings() -> None:
    # The HTTP layer's case-insensitive names are a str subclass; the link carries them.
    from multidict import CIMultiDict, istr

    headers = CIMultiDict([(istr("Content-Type"), "application/json"), ("X-A", "1")])
    frame = fl.Request(1, 0, None, "GET", "/x", "", list(headers.items()), b"", None)
    decoded = fl.decode_link_frame(fl.encode_link_frame(frame))
    assert isinstance(decoded, fl.Request)
    assert decoded.headers == [("Content-Type", "application/json"), ("X-A", "1")]
    assert all(type(name) is str for name, _ in decoded.headers)


async def test_session_fds_queue_up_to_the_bound_the_link_was_given_while_the_peer_is_busy() -> (
    None
):
    # A frontend busy with a burst of TLS handshakes reads its link late; the sockets passed
    # meanwhile queue in the ordering process up to the node's hard session cap (given to the
    # link), not the default 256, past which a session would be closed before its handshake.
    sessions = 500
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    client, server_side = socket.socketpair()

    def link(sock: socket.socket, **bound: int) -> fl.Link:
        return fl.Link(
            sock,
            name="orderer",
            accepts=fl.TO_ORDERER,
            on_frame=lambda frame, fds: None,
            on_closed=lambda reason: None,
            **bound,
        )

    busy, default = link(a, fds_queued_max=sessions), link(c)
    try:
        # Queued in this loop turn, none sent yet: each link's bound is what decides.
        assert all(busy.send(fl.Session(i + 1), [server_side.fileno()]) for i in range(sessions))
        refused = [
            default.send(fl.Session(i + 1), [server_side.fileno()])
            for i in range(fl.FDS_QUEUED_MAX + 1)
        ]
        assert all(refused[:-1]) and refused[-1] is False
        frontend = Peer(b, fl.TO_FRONTEND)  # the frontend reads at last: every session arrives
        await frontend.wait(sessions)
        assert [f.seq for f, _ in frontend.frames] == list(range(1, sessions + 1))
        for _, fds in frontend.frames:
            for fd in fds:
                os.close(fd)
    finally:
        busy.close()
        default.close()
        for sock in (d, server_side, client):
            sock.close()
