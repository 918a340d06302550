"""ControlChannel over a real AF_UNIX socketpair, with real fds passed by SCM_RIGHTS."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator

import msgpack
import pytest

from charter.enclave_app import interface as itf
from charter.enclave_app.interface import (
    LENGTH_PREFIX,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ChannelClosed,
    ControlChannel,
    InterfaceError,
)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[ControlChannel, ControlChannel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host, enclave = ControlChannel(a, name="host"), ControlChannel(b, name="enclave")
    yield host, enclave
    host.close()
    enclave.close()


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_passed_client_socket_is_usable_on_the_other_side(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    client, accepted = socket.socketpair()
    host.send(itf.ClientConnection(conn_id=7, peer="127.0.0.1:1234"), fds=[accepted.fileno()])
    accepted.close()  # the host drops its copy right after sending, as the host process does
    frame, fds = await asyncio.wait_for(enclave.receive(), 5)
    assert frame == itf.ClientConnection(conn_id=7, peer="127.0.0.1:1234")
    assert len(fds) == 1
    with socket.socket(fileno=fds[0]) as passed:
        passed.sendall(b"hello from the enclave")
        assert client.recv(100) == b"hello from the enclave"
        client.sendall(b"request")
        assert passed.recv(100) == b"request"
    client.close()


async def test_fds_stay_with_their_own_frame_among_many(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    clients = []
    for conn_id in range(50):
        host.send(itf.Tick(now_ms=conn_id))
        c, s = socket.socketpair()
        clients.append(c)
        host.send(itf.ClientConnection(conn_id=conn_id, peer=f"p{conn_id}"), fds=[s.fileno()])
        s.close()
        host.send(itf.NodeMessage(from_address="x", payload=bytes(20_000)))
    seen = 0
    while seen < 50:
        frame, fds = await asyncio.wait_for(enclave.receive(), 5)
        if not isinstance(frame, itf.ClientConnection):
            assert fds == []
            continue
        with socket.socket(fileno=fds[0]) as passed:
            passed.sendall(f"{frame.conn_id}".encode())
            assert clients[frame.conn_id].recv(10) == f"{frame.conn_id}".encode()
        seen += 1
    for c in clients:
        c.close()


async def test_frames_arrive_in_order_including_large_ones(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    big = os.urandom(8 * 1024 * 1024)
    host.send(itf.WriteEntries(entries=[(1, big), (2, b"x")]))
    for seqno in range(3, 203):
        enclave.send(itf.Durable(seqno=seqno))
        host.send(itf.Truncate(seqno=seqno))
    frame, _ = await asyncio.wait_for(enclave.receive(), 10)
    assert frame == itf.WriteEntries(entries=[(1, big), (2, b"x")])
    for seqno in range(3, 203):
        assert (await enclave.receive())[0] == itf.Truncate(seqno=seqno)
        assert (await host.receive())[0] == itf.Durable(seqno=seqno)


async def test_garbage_frames_are_dropped_and_the_channel_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    enclave = ControlChannel(b, name="enclave")
    secret_marker = b"SECRET-PAYLOAD-BYTES"
    garbage = [
        b"\xc1" + secret_marker,
        msgpack.packb([PROTOCOL_VERSION, "Durable", {"seqno": "x"}]),
        msgpack.packb([PROTOCOL_VERSION, "NoSuchFrame", {"p": secret_marker}]),
        msgpack.packb([99, "Durable", {"seqno": 1}]),
        b"",
    ]
    with caplog.at_level(logging.WARNING):
        for body in garbage:
            raw.sendall(LENGTH_PREFIX.pack(len(body)) + body)
        good = itf.encode_frame(itf.Durable(seqno=5))
        raw.sendall(LENGTH_PREFIX.pack(len(good)) + good)
        frame, fds = await asyncio.wait_for(enclave.receive(), 5)
    assert frame == itf.Durable(seqno=5) and fds == []
    assert enclave.dropped_frames == len(garbage)
    assert "dropped malformed frame" in caplog.text
    assert secret_marker.decode() not in caplog.text  # logs never carry frame bytes
    enclave.close()
    raw.close()


async def test_fd_sent_with_a_frame_that_declares_none_is_closed_not_leaked() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    enclave = ControlChannel(b, name="enclave")
    r, w = os.pipe()
    body = itf.encode_frame(itf.Durable(seqno=1))
    socket.send_fds(raw, [LENGTH_PREFIX.pack(len(body)) + body], [r])
    body2 = itf.encode_frame(itf.Durable(seqno=2))
    raw.sendall(LENGTH_PREFIX.pack(len(body2)) + body2)
    frame, fds = await asyncio.wait_for(enclave.receive(), 5)
    assert frame == itf.Durable(seqno=2) and fds == []
    assert enclave.dropped_frames == 1
    os.close(r)
    # The receiver closed its copy of the read end, so it is the only one left... none.
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)
    enclave.close()
    raw.close()


async def test_client_connection_without_its_fd_is_dropped() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    enclave = ControlChannel(b, name="enclave")
    body = itf.encode_frame(itf.ClientConnection(conn_id=1, peer="p"))
    raw.sendall(LENGTH_PREFIX.pack(len(body)) + body)
    body2 = itf.encode_frame(itf.Tick(now_ms=1))
    raw.sendall(LENGTH_PREFIX.pack(len(body2)) + body2)
    assert (await asyncio.wait_for(enclave.receive(), 5))[0] == itf.Tick(now_ms=1)
    assert enclave.dropped_frames == 1
    enclave.close()
    raw.close()


async def test_oversized_length_closes_the_channel_with_a_clear_error() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    enclave = ControlChannel(b, name="enclave")
    good = itf.encode_frame(itf.Tick(now_ms=1))
    raw.sendall(LENGTH_PREFIX.pack(len(good)) + good + LENGTH_PREFIX.pack(MAX_FRAME_BYTES + 1))
    assert (await asyncio.wait_for(enclave.receive(), 5))[0] == itf.Tick(now_ms=1)
    with pytest.raises(ChannelClosed, match="exceeds MAX_FRAME_BYTES"):
        await asyncio.wait_for(enclave.receive(), 5)
    assert enclave.closed
    with pytest.raises(ChannelClosed):
        enclave.send(itf.Durable(seqno=1))
    raw.close()


async def test_peer_hang_up_ends_iteration_after_pending_frames(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    host.send(itf.Tick(now_ms=1))
    host.send(itf.Shutdown())
    host.close()
    received = [frame async for frame, _ in enclave]
    assert received == [itf.Tick(now_ms=1), itf.Shutdown()]
    assert enclave.close_reason == "peer closed the channel"


async def test_send_checks_the_declared_fd_count(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, _ = pair
    with pytest.raises(InterfaceError, match="carries 1 fds"):
        host.send(itf.ClientConnection(conn_id=1, peer="p"))
    with pytest.raises(InterfaceError, match="carries 0 fds"):
        host.send(itf.Tick(now_ms=1), fds=[0])


async def test_sender_buffers_when_the_reader_is_slow_and_drain_waits(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    payload = bytes(1024 * 1024)
    for i in range(32):  # far beyond the socket buffer: the rest waits in the channel
        host.send(itf.NodeMessage(from_address=str(i), payload=payload))
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < 32:
            frame, _ = await enclave.receive()
            assert isinstance(frame, itf.NodeMessage) and frame.from_address == str(received)
            received += 1

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(host.drain(), 10)
    await asyncio.wait_for(consumer, 10)
    assert received == 32


async def test_fds_held_for_unsent_frames_are_released_on_close() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = ControlChannel(a, name="host")
    r, w = os.pipe()
    for i in range(40):  # fill the socket so later frames stay queued with their fds
        host.send(itf.NodeMessage(from_address=str(i), payload=bytes(1024 * 1024)))
    before = len(os.listdir("/proc/self/fd"))
    host.send(itf.ClientConnection(conn_id=1, peer="p"), fds=[r])
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the channel holds a dup
    host.close()
    assert len(os.listdir("/proc/self/fd")) == before - 1  # the dup and the channel's socket
    assert _fd_is_open(r)
    os.close(r)
    os.close(w)
    b.close()


async def test_receiver_pauses_reading_when_frames_pile_up_and_resumes(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    count = 60_000  # far more than the receiver keeps pending: it must stop reading, resume
    for i in range(count):
        host.send(itf.Tick(now_ms=i))
    await asyncio.sleep(0.2)
    # At most the bound plus the frames of the one read that crossed it.
    assert enclave.pending() < 4096 + 256 * 1024 // 20 < count
    for i in range(count):
        frame, _ = await asyncio.wait_for(enclave.receive(), 5)
        assert frame == itf.Tick(now_ms=i)


@pytest.mark.parametrize("bound", [None, 1010])
async def test_sender_refuses_to_hold_more_than_the_fd_bound(bound: int | None) -> None:
    """The default bound, and the one the host sets (the node's hard session cap, 1010 by
    default: a burst of new clients queues that many fds while the enclave is busy, where
    past 256 each new connection was reset)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if bound is None:
        host, bound = ControlChannel(a, name="host"), itf.MAX_QUEUED_FDS
    else:
        host = ControlChannel(a, name="host", fds_queued_max=bound)
    for i in range(40):  # fill the socket so fd frames stay queued in the channel
        host.send(itf.NodeMessage(from_address=str(i), payload=bytes(1024 * 1024)))
    r, w = os.pipe()
    for conn_id in range(bound):
        host.send(itf.ClientConnection(conn_id=conn_id, peer="p"), fds=[r])
    with pytest.raises(InterfaceError, match="too many fds queued"):
        host.send(itf.ClientConnection(conn_id=9999, peer="p"), fds=[r])
    host.close()
    os.close(r)
    os.close(w)
    b.close()


async def test_flood_of_fds_without_frames_closes_the_channel_and_leaks_nothing() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    baseline = len(os.listdir("/proc/self/fd"))
    enclave = ControlChannel(b, name="enclave")
    r, w = os.pipe()
    raw.sendall(LENGTH_PREFIX.pack(100_000))  # a frame that never completes
    for _ in range(itf.MAX_QUEUED_FDS + 10):
        socket.send_fds(raw, [b"x"], [r])
    with pytest.raises(ChannelClosed, match="too many fds"):
        await asyncio.wait_for(enclave.receive(), 10)
    os.close(r)
    os.close(w)
    raw.close()
    # Every fd the channel received was closed, and so was its socket.
    assert len(os.listdir("/proc/self/fd")) == baseline - 2


async def test_frames_sent_while_held_leave_together_in_order_when_the_block_ends() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = ControlChannel(b, name="enclave"), ControlChannel(raw, name="host")
    try:
        c, s = socket.socketpair()
        with sender.held():
            sender.send(itf.WriteEntries(entries=[(1, b"a")]))
            sender.send(itf.ClientConnection(conn_id=3, peer="p"), fds=[s.fileno()])
            sender.send(itf.CommitUpTo(seqno=1))
            # Nothing has reached the socket yet: the turn's frames wait for the block's end.
            with pytest.raises(BlockingIOError):
                raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        s.close()
        got = [await asyncio.wait_for(receiver.receive(), 5) for _ in range(3)]
        assert [f for f, _ in got] == [
            itf.WriteEntries(entries=[(1, b"a")]),
            itf.ClientConnection(conn_id=3, peer="p"),
            itf.CommitUpTo(seqno=1),
        ]
        assert [len(fds) for _, fds in got] == [0, 1, 0]  # the fd stays with its frame
        with socket.socket(fileno=got[1][1][0]) as passed:
            passed.sendall(b"ok")
            assert c.recv(10) == b"ok"
        c.close()
    finally:
        sender.close()
        receiver.close()


async def test_held_frames_larger_than_the_socket_buffer_are_all_delivered(
    pair: tuple[ControlChannel, ControlChannel],
) -> None:
    host, enclave = pair
    chunk = os.urandom(1024 * 1024)
    with enclave.held():
        for seqno in range(1, 9):
            enclave.send(itf.WriteEntries(entries=[(seqno, chunk)]))
    for seqno in range(1, 9):
        frame, _ = await asyncio.wait_for(host.receive(), 10)
        assert frame == itf.WriteEntries(entries=[(seqno, chunk)])
