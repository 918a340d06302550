"""A fault-injecting TCP relay between Charter nodes, for end-to-end tests.

Each node's peers dial the node's *published* node-to-node address; the tests publish a port
of this relay there, and the relay forwards to the node's real (bound) port. It speaks the
host relay's framing (`host/relay.py`: a hello frame naming the dialling host's bound
address, then u32 big-endian length-prefixed payloads), so it can:

- drop frames between chosen pairs of nodes (a network partition), in either direction;
- record the frames it forwarded (to replay or tamper with them later);
- inject frames of its own straight into a node's real node-to-node port.

It never opens a payload: the enclaves seal them, and the relay is as untrusted as a host.
It runs its own asyncio loop on a daemon thread, so synchronous fixtures and each test's own
event loop can drive it through thread-safe methods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
# Same bounds as the host relay: a frame larger than this is a protocol error.
FRAME_BYTES_MAX = 64 * 1024 * 1024
HELLO_BYTES_MAX = 1024
# Recorded frames per (source, destination), newest kept.
CAPTURE_FRAMES_MAX = 64
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def _read_frame(reader: asyncio.StreamReader, limit_bytes: int) -> bytes:
    (length,) = _LEN.unpack(await reader.readexactly(4))
    if length > limit_bytes:
        raise ValueError(f"frame of {length} bytes is over {limit_bytes}")
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    """A payload as the host relay puts it on the wire."""
    return _LEN.pack(len(payload)) + payload


@dataclass(slots=True)
class _Front:
    """The relay's listener standing in front of one node."""

    name: str
    listen_address: str
    target_address: str
    server: asyncio.Server | None = None


class FaultyRelay:
    """Relays node-to-node traffic for named nodes; see the module docstring."""

    def __init__(self) -> None:
        self._fronts: dict[str, _Front] = {}
        # The real bound node-to-node address of each node -> its name (read from hellos).
        self._names_by_address: dict[str, str] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.captured: dict[tuple[str, str], collections.deque[bytes]] = {}
        self.forwarded: collections.Counter[tuple[str, str]] = collections.Counter()
        self.dropped: collections.Counter[tuple[str, str]] = collections.Counter()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")
        self._thread.start()

    # ------------------------------------------------------------------ setup
    def add_node(self, name: str, bound_address: str) -> str:
        """Put a listener in front of `bound_address`; returns the address peers should dial."""
        listen = f"127.0.0.1:{free_port()}"
        front = _Front(name, listen, bound_address)
        with self._lock:
            self._fronts[name] = front
            self._names_by_address[bound_address] = name
        self._call(self._listen(front))
        return listen

    async def _listen(self, front: _Front) -> None:
        host, port = _split(front.listen_address)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._pipe(front, reader, writer)

        front.server = await asyncio.start_server(serve, host, port)

    def _call(self, coro: Coroutine[Any, Any, None], timeout_s: float = CALL_TIMEOUT_S) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    # ------------------------------------------------------------------ faults
    def partition(self, *groups: set[str]) -> None:
        """Drop every frame between nodes of different groups (both directions)."""
        blocked = set()
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        blocked.add((x, y))
                        blocked.add((y, x))
        with self._lock:
            self._blocked = blocked

    def block(self, source: str, destination: str) -> None:
        """Drop frames from `source` to `destination` only (a one-way link failure)."""
        with self._lock:
            self._blocked.add((source, destination))

    def heal(self) -> None:
        with self._lock:
            self._blocked = set()

    def is_blocked(self, source: str, destination: str) -> bool:
        with self._lock:
            return (source, destination) in self._blocked

    def captured_frames(self, source: str, destination: str) -> list[bytes]:
        with self._lock:
            return list(self.captured.get((source, destination), ()))

    def inject(
        self, destination: str, payloads: list[bytes], *, hello: bytes | None = None
    ) -> None:
        """Open a fresh connection to `destination`'s real port and send raw frames on it.

        `payloads` are sent length-prefixed after `hello` (default: a hello naming no real
        node); a test passes pre-framed garbage as a single payload with hello=b"" to send
        bytes as they are.
        """
        front = self._fronts[destination]
        self._call(self._inject(front.target_address, payloads, hello))

    async def _inject(self, target: str, payloads: list[bytes], hello: bytes | None) -> None:
        host, port = _split(target)
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
        )
        try:
            if hello is None:
                writer.write(frame(b"127.0.0.1:9"))
            elif hello:
                writer.write(frame(hello))
            for payload in payloads:
                writer.write(frame(payload) if hello != b"" else payload)
            await writer.drain()
            # Give the node time to read everything before the connection closes.
            await asyncio.sleep(0.2)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ------------------------------------------------------------------ forwarding
    async def _pipe(
        self, front: _Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream: asyncio.StreamWriter | None = None
        self._writers.add(writer)
        try:
            hello = await _read_frame(reader, HELLO_BYTES_MAX)
            source = self._names_by_address.get(hello.decode("utf-8", "replace"), "?")
            host, port = _split(front.target_address)
            _, up = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            upstream = up
            self._writers.add(up)
            up.write(frame(hello))
            key = (source, front.name)
            while True:
                payload = await _read_frame(reader, FRAME_BYTES_MAX)
                with self._lock:
                    blocked = key in self._blocked
                    if blocked:
                        self.dropped[key] += 1
                    else:
                        self.forwarded[key] += 1
                        self.captured.setdefault(
                            key, collections.deque(maxlen=CAPTURE_FRAMES_MAX)
                        ).append(payload)
                if not blocked:
                    up.write(frame(payload))
                    await up.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError, ValueError):
            pass  # either side went away: the hosts re-dial
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        async def stop() -> None:
            for front in self._fronts.values():
                if front.server is not None:
                    front.server.close()
            for w in list(self._writers):
                w.close()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
