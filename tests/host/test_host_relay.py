"""Node-to-node relay between two host relays on 127.0.0.1, over real TCP."""

from __future__ import annotations

import asyncio
import struct

from charter.host.relay import MAX_NODE_FRAME_BYTES, PUMP_BATCH_BYTES_MAX, Relay


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    def __call__(self, from_address: str, payload: bytes) -> None:
        self.messages.append((from_address, payload))
        self.arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 10) -> None:
        async def wait() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(wait(), timeout_s)


async def test_payloads_are_delivered_in_order_with_the_senders_address() -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = Relay("127.0.0.1:0", inbox_a), Relay("127.0.0.1:0", inbox_b)
    addr_a, addr_b = await a.start(), await b.start()
    payloads = [bytes([i % 256]) * (i * 100) for i in range(100)]
    for p in payloads:
        a.send(addr_b, p)
    b.send(addr_a, b"reply")
    await inbox_b.wait_for(100)
    await inbox_a.wait_for(1)
    assert inbox_b.messages == [(addr_a, p) for p in payloads]
    assert inbox_a.messages == [(addr_b, b"reply")]
    await a.close()
    await b.close()


async def test_frames_queued_together_beyond_one_write_arrive_whole_and_in_order() -> None:
    # Queued frames leave joined in writes of up to PUMP_BATCH_BYTES_MAX; one larger frame
    # goes alone. The receiver must see the same frames, byte for byte, in order.
    inbox = Inbox()
    a, b = Relay("127.0.0.1:0", Inbox()), Relay("127.0.0.1:0", inbox)
    await a.start()
    addr_b = await b.start()
    third = PUMP_BATCH_BYTES_MAX // 3 + 1
    payloads = [bytes([i]) * third for i in range(4)]
    payloads += [b"", b"small", bytes([9]) * (2 * PUMP_BATCH_BYTES_MAX), b"last"]
    for p in payloads:
        a.send(addr_b, p)
    await inbox.wait_for(len(payloads))
    assert [m for _, m in inbox.messages] == payloads
    await a.close()
    await b.close()


async def test_sender_reconnects_after_the_peer_restarts() -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    a = Relay("127.0.0.1:0", inbox_a)
    await a.start()
    b = Relay("127.0.0.1:0", inbox_b)
    addr_b = await b.start()
    a.send(addr_b, b"before")
    await inbox_b.wait_for(1)
    await b.close()

    # While the peer is down, messages wait in the sender's queue (or are lost in flight:
    # consensus retransmits); once the peer is back on the same port they flow again.
    b2_inbox = Inbox()
    b2 = Relay(addr_b, b2_inbox)
    for attempt in range(50):
        a.send(addr_b, b"after-%d" % attempt)
        if attempt == 5:
            assert await b2.start() == addr_b
        await asyncio.sleep(0.02)
    await b2_inbox.wait_for(1)
    assert all(p.startswith(b"after-") for _, p in b2_inbox.messages)
    a.send(addr_b, b"final")
    await asyncio.wait_for(_until(lambda: (a.address, b"final") in b2_inbox.messages), 10)
    await a.close()
    await b2.close()


async def _until(cond: object) -> None:
    assert callable(cond)
    while not cond():
        await asyncio.sleep(0.01)


async def test_sending_to_an_unreachable_peer_does_not_block_other_peers() -> None:
    inbox = Inbox()
    a, b = Relay("127.0.0.1:0", Inbox()), Relay("127.0.0.1:0", inbox)
    await a.start()
    addr_b = await b.start()
    a.send("127.0.0.1:1", b"nobody listens here")
    a.send(addr_b, b"hello")
    await inbox.wait_for(1)
    assert inbox.messages[0][1] == b"hello"
    await a.close()
    await b.close()


async def test_oversized_inbound_frame_drops_that_connection_only() -> None:
    inbox = Inbox()
    b = Relay("127.0.0.1:0", inbox)
    addr_b = await b.start()
    host, port = addr_b.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    hello = b"127.0.0.1:4444"
    writer.write(struct.pack(">I", len(hello)) + hello + struct.pack(">I", 3) + b"one")
    writer.write(struct.pack(">I", MAX_NODE_FRAME_BYTES + 1))
    await writer.drain()
    await inbox.wait_for(1)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the relay hung up on us
    writer.close()
    a = Relay("127.0.0.1:0", Inbox())
    await a.start()
    a.send(addr_b, b"still works")
    await inbox.wait_for(2)
    assert inbox.messages == [("127.0.0.1:4444", b"one"), (a.address, b"still works")]
    await a.close()
    await b.close()
