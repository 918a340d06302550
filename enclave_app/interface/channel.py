"""The control channel: length-prefixed frames (and passed fds) over a Unix socket, on asyncio."""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence

from charter.enclave_app.interface.errors import ChannelClosed, InterfaceError
from charter.enclave_app.interface.frames import Frame, decode_frame, encode_frame
from charter.enclave_app.interface.limits import (
    LENGTH_PREFIX,
    MAX_FDS_PER_FRAME,
    MAX_FRAME_BYTES,
    MAX_QUEUED_FDS,
)

_log = logging.getLogger(__name__)

_RECV_CHUNK_BYTES = 256 * 1024
_ANC_BUF_BYTES = socket.CMSG_SPACE(4 * MAX_FDS_PER_FRAME * 4)
_MAX_OUTGOING_BYTES = 2 * MAX_FRAME_BYTES + 16 * 1024 * 1024
_DRAIN_LOW_BYTES = 4 * 1024 * 1024
_MAX_PENDING_FRAMES = 4096
_MAX_PENDING_BYTES = 2 * MAX_FRAME_BYTES
_MAX_SEGMENTS_PER_SEND = 64


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class ControlChannel:
    """Frames (and passed fds) over a connected AF_UNIX SOCK_STREAM socket, on asyncio.

    Used by both sides. `send` never blocks: it writes what the socket takes and buffers the
    rest (bounded; `drain()` waits for room). `receive()` returns `(frame, fds)`; the caller
    owns the fds. A malformed frame is logged (never its bytes) and dropped; a length prefix
    above MAX_FRAME_BYTES closes the channel, since framing is then lost.

    Fds are tied to the exact frame that carried them: a frame with fds is always sent by a
    `sendmsg` that starts at the frame's first byte and holds no other frame's bytes, and Linux
    delivers those fds with the `recvmsg` that reads that first byte and ends inside that frame.
    So fds received with a chunk belong to the frame holding the chunk's last byte.
    """

    def __init__(self, sock: socket.socket, *, name: str = "control") -> None:
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        self.name = name
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._inbuf = bytearray()
        self._inbuf_pos = 0  # stream offset of _inbuf[0]
        self._fd_marks: collections.deque[tuple[int, list[int]]] = collections.deque()
        self._frames: collections.deque[tuple[Frame, list[int], int]] = collections.deque()
        self._pending_bytes = 0
        self._out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._out_bytes = 0
        self._out_fds = 0
        self._held = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading = True
        self._eof = False
        self._closed = False
        self.close_reason: str | None = None
        self.dropped_frames = 0
        # Called with every frame body sent and received (tests capture the boundary).
        self.tap: Callable[[bytes], None] | None = None
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    def from_fd(cls, fd: int, *, name: str = "control") -> ControlChannel:
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd), name=name)

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """Frames already received and waiting for `receive()`."""
        return len(self._frames)

    @property
    def outgoing_bytes(self) -> int:
        """Bytes queued to send that the peer has not taken yet (its backlog)."""
        return self._out_bytes

    # -- sending --------------------------------------------------------------------------

    def send(self, frame: Frame, fds: Sequence[int] = ()) -> None:
        """Queue `frame` (with `fds`, duplicated: the caller may close its copies at once)."""
        if self._closed:
            raise ChannelClosed(f"channel {self.name} is closed: {self.close_reason}")
        if len(fds) != type(frame).FD_COUNT:
            raise InterfaceError(f"{type(frame).__name__} carries {type(frame).FD_COUNT} fds")
        body = encode_frame(frame)
        if self.tap is not None:
            self.tap(body)
        if self._out_bytes + len(body) + 4 > _MAX_OUTGOING_BYTES:
            raise InterfaceError(f"channel {self.name}: outgoing buffer full")
        if fds and self._out_fds + len(fds) > MAX_QUEUED_FDS:
            raise InterfaceError(f"channel {self.name}: too many fds queued")
        data = LENGTH_PREFIX.pack(len(body)) + body
        owned = [os.dup(fd) for fd in fds]
        self._out_fds += len(owned)
        self._out.append((memoryview(data), owned))
        self._out_bytes += len(data)
        if len(self._out) == 1 and not self._held:
            self._start_sending()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Frames sent inside the block leave together when it ends, in as few `sendmsg`
        calls as the fds allow, and wake the peer once: the runtime sends each event-loop
        turn's frames (ledger writes, node-to-node messages, commit) this way. The block
        must not await; the order of frames is unchanged."""
        assert not self._held, "held() does not nest"
        idle = not self._out  # else a writer callback is already armed and will send them
        self._held = True
        try:
            yield
        finally:
            self._held = False
            if idle and self._out and not self._closed:
                self._start_sending()

    def _start_sending(self) -> None:
        self._flush_out()
        if self._out and not self._closed:
            self._loop.add_writer(self._fd, self._on_writable)

    async def drain(self) -> None:
        """Wait until the outgoing buffer is small again."""
        while self._out_bytes > _DRAIN_LOW_BYTES and not self._closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self._closed:
            raise ChannelClosed(f"channel {self.name} is closed: {self.close_reason}")

    def _flush_out(self) -> None:
        while self._out:
            view, fds = self._out[0]
            try:
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self._sock.sendmsg([view], anc)
                    _close_fds(fds)  # the kernel holds them now
                    self._out_fds -= len(fds)
                    fds.clear()
                else:
                    views: list[memoryview] = []
                    for v, f in self._out:
                        if f or len(views) == _MAX_SEGMENTS_PER_SEND:
                            break
                        views.append(v)
                    sent = self._sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionResetError, BrokenPipeError):
                self._eof = True
                self._close("peer closed the channel", error=False)
                return
            except OSError as e:
                self._close(f"send failed: {errno.errorcode.get(e.errno or 0, e)}", error=True)
                return
            self._out_bytes -= sent
            while sent:
                v, f = self._out[0]
                if sent >= len(v):
                    sent -= len(v)
                    self._out.popleft()
                else:
                    self._out[0] = (v[sent:], f)
                    sent = 0
        self._wake_drain()

    def _on_writable(self) -> None:
        self._flush_out()
        if not self._out:
            self._loop.remove_writer(self._fd)
        if self._out_bytes <= _DRAIN_LOW_BYTES:
            self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- receiving ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data, anc, flags, _ = self._sock.recvmsg(_RECV_CHUNK_BYTES, _ANC_BUF_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except (ConnectionResetError, BrokenPipeError):
            # The peer exited with our frames unread (e.g. ticks during shutdown): a hang-up.
            self._eof = True
            self._close("peer closed the channel", error=False)
            return
        except OSError as e:
            self._close(f"receive failed: {errno.errorcode.get(e.errno or 0, e)}", error=True)
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                fds.extend(arr)
        if flags & socket.MSG_CTRUNC:
            _log.error("control fds truncated channel=%s", self.name)
        if not data:
            _close_fds(fds)
            self._eof = True
            self._close("peer closed the channel", error=False)
            return
        end = self._inbuf_pos + len(self._inbuf) + len(data)
        if fds:
            self._fd_marks.append((end - 1, fds))
            if len(self._fd_marks) > MAX_QUEUED_FDS:  # fds without their frames: not our peer
                self._close("too many fds received without their frames", error=True)
                return
        self._inbuf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._inbuf
        off = 0
        while len(buf) - off >= 4:
            (length,) = LENGTH_PREFIX.unpack_from(buf, off)
            if length > MAX_FRAME_BYTES:
                self._close(
                    f"frame length {length} exceeds MAX_FRAME_BYTES {MAX_FRAME_BYTES}", error=True
                )
                return
            if len(buf) - off - 4 < length:
                break
            start = self._inbuf_pos + off
            body = bytes(buf[off + 4 : off + 4 + length])
            if self.tap is not None:
                self.tap(body)
            off += 4 + length
            self._deliver(body, start, self._inbuf_pos + off)
        if off:
            del buf[:off]
            self._inbuf_pos += off
        if self._reading and (
            len(self._frames) >= _MAX_PENDING_FRAMES or self._pending_bytes >= _MAX_PENDING_BYTES
        ):
            self._loop.remove_reader(self._fd)  # backpressure until the consumer catches up
            self._reading = False

    def _deliver(self, body: bytes, start: int, end: int) -> None:
        fds: list[int] = []
        while self._fd_marks and self._fd_marks[0][0] < end:
            pos, marked = self._fd_marks.popleft()
            if pos < start:  # cannot happen with a ControlChannel peer; never leak them
                _close_fds(marked)
            else:
                fds.extend(marked)
        try:
            frame = decode_frame(body)
            if len(fds) != type(frame).FD_COUNT:
                raise InterfaceError(
                    f"{type(frame).__name__} arrived with {len(fds)} fds, "
                    f"expected {type(frame).FD_COUNT}"
                )
        except InterfaceError as e:
            _close_fds(fds)
            self.dropped_frames += 1
            _log.warning(
                "dropped malformed frame channel=%s size_bytes=%d reason=%r",
                self.name,
                len(body),
                str(e),
            )
            return
        self._frames.append((frame, fds, len(body)))
        self._pending_bytes += len(body)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> tuple[Frame, list[int]]:
        """The next valid frame and its fds; raises `ChannelClosed` once the channel is done."""
        while not self._frames:
            if self._closed:
                raise ChannelClosed(f"channel {self.name} closed: {self.close_reason}")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame, fds, size_bytes = self._frames.popleft()
        self._pending_bytes -= size_bytes
        if (
            not self._reading
            and not self._closed
            and len(self._frames) < _MAX_PENDING_FRAMES // 2
            and self._pending_bytes < _MAX_PENDING_BYTES // 2
        ):
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        return frame, fds

    def __aiter__(self) -> ControlChannel:
        return self

    async def __anext__(self) -> tuple[Frame, list[int]]:
        """Iterates until the peer hangs up; a closure on error raises `ChannelClosed`."""
        try:
            return await self.receive()
        except ChannelClosed:
            if self._eof and not self._frames:
                raise StopAsyncIteration from None
            raise

    # -- closing --------------------------------------------------------------------------

    def _close(self, reason: str, *, error: bool) -> None:
        if self._closed:
            return
        if error:
            _log.error("control channel closed channel=%s reason=%r", self.name, reason)
        self._closed = True
        self.close_reason = reason
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._loop.remove_writer(self._fd)
        for _, fds in self._out:
            _close_fds(fds)
        self._out.clear()
        self._out_bytes = 0
        self._out_fds = 0
        for _, fds in self._fd_marks:
            _close_fds(fds)
        self._fd_marks.clear()
        self._sock.close()
        for fut in (self._waiter, self._drain_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Close now; frames already received stay readable, their fds stay the reader's."""
        self._close("closed locally", error=False)


# ---------------------------------------------------------------------------------------------
# Node config (the operator's JSON file)
