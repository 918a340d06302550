"""The control channel: length-prefixed frames (and passed fds) over a Unix socket, on asyncio."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence

from charter.enclave_app.interface.errors import ChannelClosed, InterfaceError
from charter.enclave_app.interface.frames import Frame, decode_frame, encode_frame
from charter.enclave_app.interface.limits import (
    MAX_FDS_PER_FRAME,
    MAX_FRAME_BYTES,
    MAX_QUEUED_FDS,
)
from charter.enclave_app.interface.transport import FramedSocket, close_fds

_log = logging.getLogger(__name__)

_ANC_BUF_BYTES = socket.CMSG_SPACE(4 * MAX_FDS_PER_FRAME * 4)
_MAX_OUTGOING_BYTES = 2 * MAX_FRAME_BYTES + 16 * 1024 * 1024
_DRAIN_LOW_BYTES = 4 * 1024 * 1024
_MAX_PENDING_FRAMES = 4096
_MAX_PENDING_BYTES = 2 * MAX_FRAME_BYTES


class ControlChannel(FramedSocket):
    """Frames (and passed fds) over a connected AF_UNIX SOCK_STREAM socket, on asyncio.

    Used by both sides. `send` never blocks: it writes what the socket takes and buffers the
    rest (bounded; `drain()` waits for room). `receive()` returns `(frame, fds)`; the caller
    owns the fds. A malformed frame is logged (never its bytes) and dropped; a length prefix
    above MAX_FRAME_BYTES closes the channel, since framing is then lost. The bytes and fds
    travel by `FramedSocket` (`interface/transport.py`), which ties each fd to its frame.
    """

    _HANGUP_ERRORS = (ConnectionResetError, BrokenPipeError)
    _OVERSIZED_REASON = "frame length {length} exceeds MAX_FRAME_BYTES {limit}"
    _STRAY_FDS_REASON = "too many fds received without their frames"

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str = "control",
        fds_queued_max: int = MAX_QUEUED_FDS,
    ) -> None:
        """`fds_queued_max` bounds the fds sent and not yet taken by the peer: past it
        `send` refuses the frame. The host raises it to the node's hard session cap, since
        each new client connection is an fd the enclave may take a moment to read."""
        assert fds_queued_max >= 1
        self.name = name
        self._fds_queued_max = fds_queued_max
        self._frames: collections.deque[tuple[Frame, list[int], int]] = collections.deque()
        self._pending_bytes = 0
        self._held = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self.close_reason: str | None = None
        self.dropped_frames = 0
        # Called with every frame body sent and received (tests capture the boundary).
        self.tap: Callable[[bytes], None] | None = None
        super().__init__(
            sock,
            frame_bytes_max=MAX_FRAME_BYTES,
            fd_marks_max=MAX_QUEUED_FDS,
            anc_bytes=_ANC_BUF_BYTES,
        )

    @classmethod
    def from_fd(cls, fd: int, *, name: str = "control") -> ControlChannel:
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd), name=name)

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
        if fds and self._out_fds + len(fds) > self._fds_queued_max:
            raise InterfaceError(f"channel {self.name}: too many fds queued")
        self._enqueue(body, fds)
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
            self._arm_writer()

    async def drain(self) -> None:
        """Wait until the outgoing buffer is small again."""
        while self._out_bytes > _DRAIN_LOW_BYTES and not self._closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self._closed:
            raise ChannelClosed(f"channel {self.name} is closed: {self.close_reason}")

    def _flush_out(self) -> None:
        if self._write_queued():
            self._wake_drain()

    def _on_writable(self) -> None:
        self._flush_out()
        if not self._out:
            self._disarm_writer()
        if self._out_bytes <= _DRAIN_LOW_BYTES:
            self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- receiving ------------------------------------------------------------------------

    def _fds_truncated(self) -> None:
        _log.error("control fds truncated channel=%s", self.name)

    def _parse(self) -> None:
        super()._parse()
        if self._reading and (
            len(self._frames) >= _MAX_PENDING_FRAMES or self._pending_bytes >= _MAX_PENDING_BYTES
        ):
            self._loop.remove_reader(self._fd)  # backpressure until the consumer catches up
            self._reading = False

    def _frame_received(self, body: bytes, fds: list[int]) -> None:
        if self.tap is not None:
            self.tap(body)
        try:
            frame = decode_frame(body)
            if len(fds) != type(frame).FD_COUNT:
                raise InterfaceError(
                    f"{type(frame).__name__} arrived with {len(fds)} fds, "
                    f"expected {type(frame).FD_COUNT}"
                )
        except InterfaceError as e:
            close_fds(fds)
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

    def _hangup(self) -> None:
        self._eof = True
        self._close("peer closed the channel", error=False)

    def _lose(self, reason: str, *, error: bool) -> None:
        self._close(reason, error=error)

    def _close(self, reason: str, *, error: bool) -> None:
        if self._closed:
            return
        if error:
            _log.error("control channel closed channel=%s reason=%r", self.name, reason)
        self.close_reason = reason
        self._release()
        for fut in (self._waiter, self._drain_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Close now; frames already received stay readable, their fds stay the reader's."""
        self._close("closed locally", error=False)


# ---------------------------------------------------------------------------------------------
# Node config (the operator's JSON file)
