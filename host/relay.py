"""Node-to-node relay: moves sealed frames between enclaves over TCP, never opening them.

Wire format on a relay connection: the dialling host first sends a hello frame holding its
own listening address (UTF-8), then payload frames; every frame is a u32 big-endian length
and that many bytes, at most `MAX_NODE_FRAME_BYTES`. The address in the hello is only a
claim: the enclaves authenticate each other inside the sealed payloads.

Outgoing: one connection per peer address, opened lazily, re-dialled with exponential
back-off after any failure. Each peer has a bounded queue; when it is full the oldest
payload is dropped, since consensus retransmits and fresh messages matter more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable

from charter.enclave_app.interface import NODE_FRAME_BYTES_MAX
from charter.enclave_app.interface.logs import REPEATS_LIMITED

_log = logging.getLogger(__name__)

# A sealed node-to-node frame (`enclave_app/interface/limits.py` derives it).
MAX_NODE_FRAME_BYTES = NODE_FRAME_BYTES_MAX
MAX_HELLO_BYTES = 1024
PEER_QUEUE_BYTES_MAX = 128 * 1024 * 1024
PEER_QUEUE_FRAMES_MAX = 10_000
assert MAX_NODE_FRAME_BYTES <= PEER_QUEUE_BYTES_MAX  # a queue holds the largest frame
MAX_PEERS = 256
# Frames to one peer joined into one write (a frame larger than this goes alone).
PUMP_BATCH_BYTES_MAX = 1024 * 1024
MAX_INBOUND_CONNECTIONS = 256
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
CONNECT_TIMEOUT_S = 5.0
_LEN = struct.Struct(">I")

OnMessage = Callable[[str, bytes], None]


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {address!r}")
    return host.strip("[]"), int(port)


async def _read_frame(reader: asyncio.StreamReader, limit_bytes: int) -> bytes:
    (length,) = _LEN.unpack(await reader.readexactly(4))
    if length > limit_bytes:
        raise ValueError(f"frame length {length} exceeds limit {limit_bytes}")
    return await reader.readexactly(length)


class _Peer:
    """Outgoing queue and connection to one peer address."""

    def __init__(self, relay: Relay, address: str) -> None:
        self.relay = relay
        self.address = address
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"relay-{address}")

    def push(self, payload: bytes) -> None:
        self.queue.append(payload)
        self.queued_bytes += len(payload)
        while self.queued_bytes > PEER_QUEUE_BYTES_MAX or len(self.queue) > PEER_QUEUE_FRAMES_MAX:
            self.queued_bytes -= len(self.queue.popleft())
            self.dropped += 1
            if self.dropped % 1000 == 1:
                _log.warning(
                    "relay queue full, dropping peer=%s dropped=%d", self.address, self.dropped
                )
        self.wakeup.set()

    async def _run(self) -> None:
        backoff_s = BACKOFF_INITIAL_S
        failures = 0
        while True:
            try:
                host, port = split_address(self.address)
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError, ValueError) as e:
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    _log.info(
                        "relay connect failed peer=%s failures=%d error=%r",
                        self.address,
                        failures,
                        str(e),
                    )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                continue
            if failures:
                _log.info("relay connected peer=%s after_failures=%d", self.address, failures)
            failures = 0
            backoff_s = BACKOFF_INITIAL_S
            try:
                await self._pump(reader, writer)
            except (OSError, ConnectionError) as e:
                _log.info("relay connection lost peer=%s error=%r", self.address, str(e))
            except Exception as e:  # never let one peer's surprise end its reconnect loop
                _log.error("relay peer failed peer=%s error=%r", self.address, repr(e))
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await asyncio.sleep(BACKOFF_INITIAL_S)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = self.relay.address.encode()
        writer.write(_LEN.pack(len(hello)) + hello)
        # The peer never sends on this connection: reading only detects that it went away.
        eof = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                while self.queue:
                    # Everything queued leaves in one write (one send, a few TCP segments),
                    # not two sends per frame: the length prefix alone went out as its own
                    # segment with TCP_NODELAY, and woke the peer's host twice per frame.
                    parts: list[bytes] = []
                    batch_bytes = 0
                    while self.queue and batch_bytes < PUMP_BATCH_BYTES_MAX:
                        payload = self.queue.popleft()
                        self.queued_bytes -= len(payload)
                        parts += (_LEN.pack(len(payload)), payload)
                        batch_bytes += _LEN.size + len(payload)
                    writer.write(b"".join(parts))
                    await writer.drain()
                self.wakeup.clear()
                wake = asyncio.ensure_future(self.wakeup.wait())
                done, _ = await asyncio.wait({wake, eof}, return_when=asyncio.FIRST_COMPLETED)
                if eof in done:
                    wake.cancel()
                    raise ConnectionError("peer closed the connection")
        finally:
            eof.cancel()


class Relay:
    """Listens for peers' frames and sends frames to peers, by address."""

    def __init__(self, listen_address: str, on_message: OnMessage) -> None:
        self._listen_address = listen_address
        self._on_message = on_message
        self._server: asyncio.Server | None = None
        self._peers: dict[str, _Peer] = {}
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.address = listen_address  # the bound address once started

    async def start(self) -> str:
        host, port = split_address(self._listen_address)
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        self.address = f"{host}:{bound[1]}"
        _log.info("relay listening address=%s", self.address)
        return self.address

    def send(self, address: str, payload: bytes) -> None:
        if len(payload) > MAX_NODE_FRAME_BYTES:
            _log.error("relay payload too large peer=%s size_bytes=%d", address, len(payload))
            return
        peer = self._peers.get(address)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                _log.error("too many relay peers, dropping peer=%s", address)
                return
            peer = self._peers[address] = _Peer(self, address)
        peer.push(payload)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._inbound) >= MAX_INBOUND_CONNECTIONS:
            _log.warning("too many inbound relay connections, refusing one", extra=REPEATS_LIMITED)
            writer.close()
            return
        self._inbound[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            hello = await _read_frame(reader, MAX_HELLO_BYTES)
            claimed = hello.decode("utf-8", errors="strict")
            while True:
                self._on_message(claimed, await _read_frame(reader, MAX_NODE_FRAME_BYTES))
        except asyncio.IncompleteReadError:
            pass  # peer closed
        except (ValueError, UnicodeDecodeError, OSError) as e:
            _log.warning(
                "relay inbound connection dropped peer=%s reason=%r",
                peer,
                str(e),
                extra=REPEATS_LIMITED,
            )
        finally:
            self._inbound.pop(task, None)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Inbound handlers end on their own once their sockets close (cancelling them would
        # make asyncio's stream callback log a spurious error on Python 3.11).
        inbound = list(self._inbound.items())
        for _, writer in inbound:
            writer.close()
        tasks = [p.task for p in self._peers.values()]
        for t in tasks:
            t.cancel()
        for t in tasks + [t for t, _ in inbound]:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, 1.0)
        self._peers.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
