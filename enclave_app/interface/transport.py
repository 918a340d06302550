"""Length-prefixed frames (and passed fds) over a Unix stream socket: the bytes, not the frames.

`FramedSocket` is the transport under both framed Unix-socket links of a node: the control
channel between host and enclave (`ControlChannel`) and the link between the enclave's
ordering process and its frontends (`frontend_link.Link`). It owns the socket, the outgoing
queue of `u32 big-endian length` + body frames with their fds, the `sendmsg` gathering and
the SCM_RIGHTS passing, the receive buffer and the tying of received fds to their frames.
What a body means, when sending starts, what a full queue does, how closing is reported and
what is logged are the subclass's, through the hooks below.

Fds are tied to the exact frame that carried them: a frame with fds is always sent by a
`sendmsg` that starts at the frame's first byte and holds no other frame's bytes, and Linux
delivers those fds with the `recvmsg` that reads that first byte and ends inside that frame.
So fds received with a chunk belong to the frame holding the chunk's last byte.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import os
import socket
from collections.abc import Sequence
from typing import ClassVar, Final

from charter.enclave_app.interface.limits import LENGTH_PREFIX

RECV_CHUNK_BYTES: Final = 256 * 1024
SEGMENTS_PER_SEND_MAX: Final = 64  # frames gathered into one `sendmsg` (IOV_MAX is 1024)


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class FramedSocket:
    """The shared transport; subclasses implement the hooks (`_frame_received`, `_hangup`,
    `_lose`, `_fds_truncated`) and decide when to call `_write_queued`."""

    # OSErrors of a send or receive that mean the peer hung up (`_hangup`), not a failure.
    _HANGUP_ERRORS: ClassVar[tuple[type[OSError], ...]] = ()
    # `_lose` reasons; `{length}` and `{limit}` are filled in.
    _OVERSIZED_REASON: ClassVar[str] = "frame length {length} exceeds {limit}"
    _STRAY_FDS_REASON: ClassVar[str] = "fds received without their frames"

    def __init__(
        self,
        sock: socket.socket,
        *,
        frame_bytes_max: int,
        fd_marks_max: int,
        anc_bytes: int,
    ) -> None:
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._frame_bytes_max = frame_bytes_max
        self._fd_marks_max = fd_marks_max
        self._anc_bytes = anc_bytes
        self._loop = asyncio.get_running_loop()
        self._inbuf = bytearray()
        self._inbuf_pos = 0  # stream offset of _inbuf[0]
        # (stream offset of the last byte of the chunk that brought them, fds)
        self._fd_marks: collections.deque[tuple[int, list[int]]] = collections.deque()
        self._out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._out_bytes = 0
        self._out_fds = 0
        self._writing = False  # the writer callback is armed
        self._reading = True  # the reader callback is armed
        self._closed = False
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- hooks ------------------------------------------------------------------------------

    def _frame_received(self, body: bytes, fds: list[int]) -> None:
        """One whole frame body and the fds it carried (now the subclass's to close)."""
        raise NotImplementedError

    def _hangup(self) -> None:
        """The peer closed its end (end of stream, or one of `_HANGUP_ERRORS`)."""
        raise NotImplementedError

    def _lose(self, reason: str, *, error: bool) -> None:
        """The transport failed (`error`: framing is lost or the socket failed); close it."""
        raise NotImplementedError

    def _fds_truncated(self) -> None:
        """The kernel dropped fds a frame carried (MSG_CTRUNC)."""
        raise NotImplementedError

    # -- sending ----------------------------------------------------------------------------

    def _enqueue(self, body: bytes, fds: Sequence[int]) -> None:
        """Queue one frame; its fds are duplicated (the caller keeps its copies). Limits on
        the queue are the caller's to check first."""
        data = LENGTH_PREFIX.pack(len(body)) + body
        owned = [os.dup(fd) for fd in fds]
        self._out_fds += len(owned)
        self._out.append((memoryview(data), owned))
        self._out_bytes += len(data)

    def _write_queued(self) -> bool:
        """Write queued frames until none is left (True) or the socket is full or the
        transport closed (False). A frame with fds leaves alone, from its first byte;
        up to SEGMENTS_PER_SEND_MAX frames without fds leave in one `sendmsg`."""
        while self._out:
            view, fds = self._out[0]
            try:
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self._sock.sendmsg([view], anc)
                    close_fds(fds)  # the kernel holds them now
                    self._out_fds -= len(fds)
                    fds.clear()
                else:
                    views: list[memoryview] = []
                    for v, f in self._out:
                        if f or len(views) == SEGMENTS_PER_SEND_MAX:
                            break
                        views.append(v)
                    sent = self._sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                return False
            except self._HANGUP_ERRORS:
                self._hangup()
                return False
            except OSError as e:
                self._lose(f"send failed: {errno.errorcode.get(e.errno or 0, e)}", error=True)
                return False
            self._out_bytes -= sent
            while sent:
                v, f = self._out[0]
                if sent >= len(v):
                    sent -= len(v)
                    self._out.popleft()
                else:
                    self._out[0] = (v[sent:], f)
                    sent = 0
        return True

    def _arm_writer(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _disarm_writer(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        raise NotImplementedError

    # -- receiving --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data, anc, flags, _ = self._sock.recvmsg(RECV_CHUNK_BYTES, self._anc_bytes)
        except (BlockingIOError, InterruptedError):
            return
        except self._HANGUP_ERRORS:
            self._hangup()
            return
        except OSError as e:
            self._lose(f"receive failed: {errno.errorcode.get(e.errno or 0, e)}", error=True)
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                fds.extend(arr)
        if flags & socket.MSG_CTRUNC:
            self._fds_truncated()
        if not data:
            close_fds(fds)
            self._hangup()
            return
        if fds:
            # They belong to the frame holding this chunk's last byte.
            self._fd_marks.append((self._inbuf_pos + len(self._inbuf) + len(data) - 1, fds))
            if len(self._fd_marks) > self._fd_marks_max:  # fds without their frames
                self._lose(self._STRAY_FDS_REASON, error=True)
                return
        self._inbuf += data
        self._parse()

    def _parse(self) -> None:
        buf, off = self._inbuf, 0
        while len(buf) - off >= 4 and not self._closed:
            (length,) = LENGTH_PREFIX.unpack_from(buf, off)
            if length > self._frame_bytes_max:
                reason = self._OVERSIZED_REASON.format(length=length, limit=self._frame_bytes_max)
                self._lose(reason, error=True)  # framing is lost
                return
            if len(buf) - off - 4 < length:
                break
            start = self._inbuf_pos + off
            body = bytes(buf[off + 4 : off + 4 + length])
            off += 4 + length
            self._frame_received(body, self._fds_of(start, self._inbuf_pos + off))
        if off and not self._closed:
            del buf[:off]
            self._inbuf_pos += off

    def _fds_of(self, start: int, end: int) -> list[int]:
        """The fds of the frame at stream offsets [start, end)."""
        fds: list[int] = []
        while self._fd_marks and self._fd_marks[0][0] < end:
            pos, marked = self._fd_marks.popleft()
            if pos < start:  # cannot happen with a FramedSocket peer; never leak them
                close_fds(marked)
            else:
                fds.extend(marked)
        return fds

    # -- closing ----------------------------------------------------------------------------

    def _release(self) -> None:
        """Mark closed, stop the callbacks, close queued and unclaimed fds and the socket."""
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._disarm_writer()
        for _, fds in self._out:
            close_fds(fds)
        self._out.clear()
        self._out_bytes = self._out_fds = 0
        for _, fds in self._fd_marks:
            close_fds(fds)
        self._fd_marks.clear()
        self._sock.close()
