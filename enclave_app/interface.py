"""The host ⇄ enclave boundary: frames, their codec, the control channel and the node config.

This module is to Charter what an EDL file is to an SGX enclave: the only module of
`enclave_app/` that `host/` imports. Both processes validate every frame they receive with
`decode_frame`, so neither trusts the other's bytes.

Wire format: each frame is `u32 big-endian length` + msgpack `[PROTOCOL_VERSION, tag,
{field: value}]`. `encode_frame`/`decode_frame` work on the msgpack body only; the channel
adds and strips the length prefix. A frame whose class declares `FD_COUNT > 0`
(`ClientConnection`) travels with that many file descriptors passed with SCM_RIGHTS.

Semantics the host implements (see host/):
- `Start` is the first frame; its `config` is `NodeConfig.model_dump(mode="json")` with every
  path absolute and `rpc_address` / `node_to_node_address` replaced by the addresses the host
  actually bound (port 0 resolved), `published_rpc_address` defaulting to `rpc_address`.
- `Tick.now_ms` is the host's wall clock in ms since the Unix epoch: untrusted, may jump.
- `ClientConnection` frames may follow `Start` at once, before the enclave sent `Started`;
  the host closes its copy of the socket as soon as the frame is queued.
- `Started(node_id, status, info)`: `info` is free-form plain data for the operator; the host
  logs it and adds `node_id` to `<workspace>/ports.json`.
- `WriteEntries` is appended in order; after the next group fsync the host answers
  `Durable(highest durable seqno)`. `Truncate(seqno)` drops entries > seqno (refused below
  the committed seqno) and is not answered. `CommitUpTo(seqno)` marks complete chunks
  ending at or below min(seqno, durable seqno) committed. A write that does not follow the
  ledger's last seqno stops the node.
- `ReadEntries(request_id, from, to)` is answered by `EntriesRead` holding the entries
  `first_seqno..` in order; it may hold fewer than asked (frame size cap, end of ledger) and
  is empty when none are available.
- `WriteSnapshot` writes `snapshot_<seqno>_<evidence_seqno>[.committed]` atomically; with
  `committed=True` and empty `data` it instead marks the existing uncommitted file committed.
  `ReadLatestSnapshot` is answered by `SnapshotRead` (the highest committed snapshot; `name`
  and `data` are None when there is none).
- `FetchEndorsements` is answered by one `EndorsementsFetched`, from a task of the host's own
  (the frame loop goes on meanwhile): what the first of `snp.endorsements_servers` from
  `first_server` on served, unchecked, or `error` naming every server's failure.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import pydantic

from charter.ledger.signatures import check_cose_issuer, check_cose_subject

# Snapshot file names: one definition, shared with auditors (`charter.ledger.snapshot`).
from charter.ledger.snapshot import parse_snapshot_file_name
from charter.ledger.snapshot import snapshot_file_name as snapshot_file_name

parse_snapshot_name = parse_snapshot_file_name

_log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
# One ledger entry may be 64 MiB (ledger.entry.ENTRY_SIZE_BYTES_MAX): leave room for framing.
MAX_FRAME_BYTES = 65 * 1024 * 1024
MAX_STRING_CHARS = 64 * 1024
MAX_FDS_PER_FRAME = 4
MAX_CONFIG_BYTES = 1024 * 1024
_MAX_DATA_DEPTH = 32
_MAX_U64 = 2**64 - 1
LENGTH_PREFIX = struct.Struct(">I")


class InterfaceError(Exception):
    """A frame or config that breaks this contract; the only error the codec raises."""

    code = "InterfaceError"


class ChannelClosed(InterfaceError):
    """The control channel is closed (peer hung up, fatal framing error, or `close()`)."""

    code = "ChannelClosed"


# ---------------------------------------------------------------------------------------------
# Field validators: each takes a decoded msgpack value and returns the typed value or raises.


def _check_int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= _MAX_U64:
        raise InterfaceError("expected an unsigned 64-bit int")
    return v


def _check_bool(v: object) -> bool:
    if type(v) is not bool:
        raise InterfaceError("expected a bool")
    return v


def _check_str(v: object) -> str:
    if type(v) is not str or len(v) > MAX_STRING_CHARS:
        raise InterfaceError(f"expected a str of at most {MAX_STRING_CHARS} chars")
    return v


def _check_bytes(v: object) -> bytes:
    if type(v) is not bytes:
        raise InterfaceError("expected bytes")
    return v


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def check_optional(v: object) -> Any:
        return None if v is None else check(v)

    return check_optional


def _check_data(v: object, depth: int = 0) -> Any:
    """Plain JSON-like data (the config): no ext types, str keys, bounded depth."""
    if depth > _MAX_DATA_DEPTH:
        raise InterfaceError("data nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, float, str, bytes):
        return v
    if t is list:
        return [_check_data(x, depth + 1) for x in v]  # type: ignore[attr-defined]
    if t is dict:
        out = {}
        for k, x in v.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise InterfaceError("data map keys must be str")
            out[k] = _check_data(x, depth + 1)
        return out
    raise InterfaceError("unsupported data type")


def _check_dict(v: object) -> dict[str, Any]:
    if type(v) is not dict:
        raise InterfaceError("expected a map")
    out: dict[str, Any] = _check_data(v)
    return out


def _check_bytes_list(v: object) -> list[bytes]:
    if type(v) is not list:
        raise InterfaceError("expected a list of bytes")
    for x in v:
        if type(x) is not bytes:
            raise InterfaceError("expected a list of bytes")
    return v


def _check_entries(v: object) -> list[tuple[int, bytes]]:
    if type(v) not in (list, tuple):
        raise InterfaceError("expected a list of [seqno, entry]")
    out = []
    for x in v:  # type: ignore[attr-defined]
        if type(x) not in (list, tuple) or len(x) != 2 or type(x[1]) is not bytes:
            raise InterfaceError("expected a list of [seqno, entry]")
        out.append((_check_int(x[0]), x[1]))
    return out


_CHECKS: dict[str, Callable[[object], Any]] = {
    "int": _check_int,
    "bool": _check_bool,
    "str": _check_str,
    "bytes": _check_bytes,
    "str | None": _optional(_check_str),
    "bytes | None": _optional(_check_bytes),
    "dict[str, Any]": _check_dict,
    "list[bytes]": _check_bytes_list,
    "list[tuple[int, bytes]]": _check_entries,
}


# ---------------------------------------------------------------------------------------------
# Frames. Field annotations (as strings) select the validators above.


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of every frame. `FD_COUNT` = number of fds that travel with the frame."""

    FD_COUNT: ClassVar[int] = 0


_FRAME_TYPES: dict[str, type[Frame]] = {}
_FRAME_FIELDS: dict[type[Frame], tuple[tuple[str, Callable[[object], Any]], ...]] = {}


def _frame(cls: type[Frame]) -> type[Frame]:
    fields = tuple((f.name, _CHECKS[str(f.type)]) for f in dataclasses.fields(cls))
    _FRAME_TYPES[cls.__name__] = cls
    _FRAME_FIELDS[cls] = fields
    return cls


# Host → enclave


@_frame
@dataclass(frozen=True, slots=True)
class Start(Frame):
    config: dict[str, Any]
    sealed: bytes | None
    ledger_last_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class Tick(Frame):
    now_ms: int


@_frame
@dataclass(frozen=True, slots=True)
class ClientConnection(Frame):
    """An accepted client TCP socket; its fd travels with the frame (SCM_RIGHTS)."""

    FD_COUNT: ClassVar[int] = 1
    conn_id: int
    peer: str


@_frame
@dataclass(frozen=True, slots=True)
class Durable(Frame):
    """Entries up to `seqno` are on disk; `view` is the view of the entry at `seqno` (0 when
    unknown), so a report overtaken by a truncation cannot vouch for replacement entries."""

    seqno: int
    view: int = 0


@_frame
@dataclass(frozen=True, slots=True)
class EntriesRead(Frame):
    request_id: int
    entries: list[bytes]
    first_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class SnapshotRead(Frame):
    request_id: int
    name: str | None
    data: bytes | None


@_frame
@dataclass(frozen=True, slots=True)
class NodeMessage(Frame):
    """A sealed node-to-node frame from a peer; `from_address` is the peer's claim, untrusted."""

    from_address: str
    payload: bytes


@_frame
@dataclass(frozen=True, slots=True)
class Shutdown(Frame):
    pass


# The product lines whose endorsements the host may be asked for (`charter.ledger.snp`).
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
SNP_CHIP_ID_BYTES = 64
ENDORSEMENTS_SERVERS_MAX = 16
# A VCEK is about 1.4 KiB and AMD's chain about 4.6 KiB (`ledger.snp.ENDORSEMENT_MAX_BYTES`).
ENDORSEMENT_PART_MAX_BYTES = 16 * 1024
ENDORSEMENTS_URL_MAX_CHARS = 2048
ENDORSEMENTS_ERROR_MAX_CHARS = 2048


@_frame
@dataclass(frozen=True, slots=True)
class EndorsementsFetched(Frame):
    """The host's answer to `FetchEndorsements`: what server `server` (an index into
    `snp.endorsements_servers`) served at `url`, unchecked; or `error` when no server from
    the requested one on answered (then `vcek` and `chain` are empty)."""

    request_id: int
    server: int
    url: str
    vcek: bytes
    chain: bytes
    error: str | None

    def __post_init__(self) -> None:
        if len(self.vcek) > ENDORSEMENT_PART_MAX_BYTES or len(self.chain) > (
            ENDORSEMENT_PART_MAX_BYTES
        ):
            raise InterfaceError(f"endorsements over {ENDORSEMENT_PART_MAX_BYTES} bytes")
        if len(self.url) > ENDORSEMENTS_URL_MAX_CHARS:
            raise InterfaceError(f"url over {ENDORSEMENTS_URL_MAX_CHARS} chars")
        if self.error is not None and len(self.error) > ENDORSEMENTS_ERROR_MAX_CHARS:
            raise InterfaceError(f"error over {ENDORSEMENTS_ERROR_MAX_CHARS} chars")
        if self.server > ENDORSEMENTS_SERVERS_MAX:
            raise InterfaceError(f"server index over {ENDORSEMENTS_SERVERS_MAX}")


# Enclave → host


@_frame
@dataclass(frozen=True, slots=True)
class Started(Frame):
    node_id: str
    status: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@_frame
@dataclass(frozen=True, slots=True)
class WriteEntries(Frame):
    entries: list[tuple[int, bytes]]


@_frame
@dataclass(frozen=True, slots=True)
class Truncate(Frame):
    seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class CommitUpTo(Frame):
    seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class ReadEntries(Frame):
    request_id: int
    from_seqno: int
    to_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class WriteSnapshot(Frame):
    seqno: int
    evidence_seqno: int
    data: bytes
    committed: bool


@_frame
@dataclass(frozen=True, slots=True)
class ReadLatestSnapshot(Frame):
    request_id: int


@_frame
@dataclass(frozen=True, slots=True)
class StoreSealed(Frame):
    blob: bytes


@_frame
@dataclass(frozen=True, slots=True)
class SendToNode(Frame):
    node_id: str
    address: str
    payload: bytes


@_frame
@dataclass(frozen=True, slots=True)
class Log(Frame):
    level: int
    message: str


@_frame
@dataclass(frozen=True, slots=True)
class Fatal(Frame):
    reason: str


@_frame
@dataclass(frozen=True, slots=True)
class FetchEndorsements(Frame):
    """Ask the host for the VCEK (and AMD's chain) of an SEV-SNP chip at a TCB, from the
    configured `snp.endorsements_servers`, trying them in order from index `first_server`.
    The host is not trusted with the answer: the enclave verifies it up to AMD's roots."""

    request_id: int
    product: str
    chip_id: bytes
    reported_tcb: int
    first_server: int

    def __post_init__(self) -> None:
        if self.product not in SNP_PRODUCTS:
            raise InterfaceError(f"product must be one of {', '.join(SNP_PRODUCTS)}")
        if len(self.chip_id) != SNP_CHIP_ID_BYTES:
            raise InterfaceError(f"chip_id must be {SNP_CHIP_ID_BYTES} bytes")
        if self.first_server >= ENDORSEMENTS_SERVERS_MAX:
            raise InterfaceError(f"first_server must be below {ENDORSEMENTS_SERVERS_MAX}")


HOST_TO_ENCLAVE = (
    Start,
    Tick,
    ClientConnection,
    Durable,
    EntriesRead,
    SnapshotRead,
    NodeMessage,
    Shutdown,
    EndorsementsFetched,
)
ENCLAVE_TO_HOST = (
    Started,
    WriteEntries,
    Truncate,
    CommitUpTo,
    ReadEntries,
    WriteSnapshot,
    ReadLatestSnapshot,
    StoreSealed,
    SendToNode,
    Log,
    Fatal,
    FetchEndorsements,
)


# ---------------------------------------------------------------------------------------------
# Codec


def encode_frame(frame: Frame) -> bytes:
    """The msgpack body of `frame` (no length prefix). Fields are validated as on receipt."""
    cls = type(frame)
    fields = _FRAME_FIELDS.get(cls)
    if fields is None:
        raise InterfaceError(f"not a frame type: {cls.__name__}")
    body: dict[str, Any] = {}
    for name, check in fields:
        try:
            body[name] = check(getattr(frame, name))
        except InterfaceError as e:
            raise InterfaceError(f"{cls.__name__}.{name}: {e}") from None
    try:
        data: bytes = msgpack.packb([PROTOCOL_VERSION, cls.__name__, body], use_bin_type=True)
    except (ValueError, OverflowError, TypeError) as e:
        raise InterfaceError(f"{cls.__name__}: cannot encode: {type(e).__name__}") from None
    if len(data) > MAX_FRAME_BYTES:
        raise InterfaceError(f"{cls.__name__} frame of {len(data)} bytes exceeds MAX_FRAME_BYTES")
    return data


def _unpack(data: bytes) -> tuple[type[Frame], dict[Any, Any]]:
    if len(data) > MAX_FRAME_BYTES:
        raise InterfaceError(f"frame of {len(data)} bytes exceeds MAX_FRAME_BYTES")
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise InterfaceError(f"not msgpack: {type(e).__name__}") from None
    if type(obj) is not list or len(obj) != 3:
        raise InterfaceError("frame is not [version, tag, fields]")
    version, tag, fields = obj
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise InterfaceError(f"unsupported protocol version (expected {PROTOCOL_VERSION})")
    cls = _FRAME_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        raise InterfaceError("unknown frame tag")
    if type(fields) is not dict:
        raise InterfaceError(f"{tag}: fields are not a map")
    return cls, fields


def _build(cls: type[Frame], fields: dict[Any, Any]) -> Frame:
    spec = _FRAME_FIELDS[cls]
    if len(fields) != len(spec):
        raise InterfaceError(f"{cls.__name__}: expected {len(spec)} fields, got {len(fields)}")
    values = {}
    for name, check in spec:
        if name not in fields:
            raise InterfaceError(f"{cls.__name__}: missing field {name}")
        try:
            values[name] = check(fields[name])
        except InterfaceError as e:
            raise InterfaceError(f"{cls.__name__}.{name}: {e}") from None
    return cls(**values)


def decode_frame(data: bytes) -> Frame:
    """Parse and validate one msgpack frame body; raises `InterfaceError` only."""
    if type(data) is not bytes:
        raise InterfaceError("frame data must be bytes")
    cls, fields = _unpack(data)
    return _build(cls, fields)


# ---------------------------------------------------------------------------------------------
# Control channel


_RECV_CHUNK_BYTES = 256 * 1024
_ANC_BUF_BYTES = socket.CMSG_SPACE(4 * MAX_FDS_PER_FRAME * 4)
_MAX_OUTGOING_BYTES = 2 * MAX_FRAME_BYTES + 16 * 1024 * 1024
_DRAIN_LOW_BYTES = 4 * 1024 * 1024
_MAX_PENDING_FRAMES = 4096
_MAX_PENDING_BYTES = 2 * MAX_FRAME_BYTES
# Each queued fd is a dup held by this process: bound them well below the fd limit.
MAX_QUEUED_FDS = 256
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
        if len(self._out) == 1:
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


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _check_address(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' with a port in 0..65535, got {v!r}")
    return v


Address = Annotated[str, pydantic.AfterValidator(_check_address)]


def _resolve_path(v: Path, info: pydantic.ValidationInfo) -> Path:
    # load_config passes the config file's directory: relative paths are relative to it.
    base = (info.context or {}).get("base_dir")
    return v if base is None or v.is_absolute() else Path(base) / v


ConfigPath = Annotated[Path, pydantic.AfterValidator(_resolve_path)]


class SignaturesConfig(_Model):
    tx_count: int = pydantic.Field(default=100, ge=1)
    delay_ms: int = pydantic.Field(default=50, ge=1)


class MemoryConfig(_Model):
    """What the enclave keeps in memory; older data is read back from the ledger files."""

    raft_log_entries: int = pydantic.Field(default=20_000, ge=10)
    receipt_transactions: int = pydantic.Field(default=200_000, ge=10)


class SnapshotsConfig(_Model):
    tx_count: int = pydantic.Field(default=10_000, ge=1)


class ConsensusConfig(_Model):
    election_timeout_ms: tuple[int, int] = (1000, 2000)
    heartbeat_ms: int = pydantic.Field(default=100, ge=1)
    # Backpressure (CCF's name): the primary answers writes with 503 while this many
    # transactions are uncommitted; 0 means no limit.
    max_uncommitted_tx_count: int = pydantic.Field(default=10_000, ge=0)

    @pydantic.model_validator(mode="after")
    def _timeouts(self) -> ConsensusConfig:
        low, high = self.election_timeout_ms
        if not 0 < low <= high:
            raise ValueError("election_timeout_ms must be [low, high] with 0 < low <= high")
        if self.heartbeat_ms >= low:
            raise ValueError("heartbeat_ms must be below the election timeout")
        return self


class RpcInterfaceConfig(_Model):
    """Limits of the client (RPC) interface; the session caps keep CCF's names and defaults."""

    # Past the soft cap a new session is answered 503 and closed; past the hard cap it is
    # closed at once, before any TLS.
    max_open_sessions_soft: int = pydantic.Field(default=1000, ge=1)
    max_open_sessions_hard: int = pydantic.Field(default=1010, ge=1)
    # A session that sends nothing for this long between requests is closed (CCF's
    # idle_connection_timeout).
    idle_connection_timeout_ms: int = pydantic.Field(default=60_000, ge=100)
    # The TLS handshake, and each request line with its headers from its first byte, must
    # arrive within this (against clients that trickle a byte at a time).
    request_header_timeout_ms: int = pydantic.Field(default=10_000, ge=100)
    # A request's whole body must arrive within this after its headers.
    request_read_timeout_ms: int = pydantic.Field(default=30_000, ge=100)

    @pydantic.model_validator(mode="after")
    def _caps(self) -> RpcInterfaceConfig:
        if self.max_open_sessions_hard < self.max_open_sessions_soft:
            raise ValueError("max_open_sessions_hard must be at least max_open_sessions_soft")
        return self


class ConsoleConfig(_Model):
    """The browser console served at /console on the node's RPC interface."""

    enabled: bool = True
    # Who may read ledger entries through the console's explorer (/node/ledger/entries):
    # callers with a registered user or member TLS certificate, or (with "anonymous") anyone.
    ledger_explorer: list[Literal["user_cert", "member_cert", "anonymous"]] = [
        "user_cert",
        "member_cert",
    ]


class JwtConfig(_Model):
    """JWT issuers' keys: how often the primary fetches those of auto-refreshed issuers."""

    # CCF's `jwt.key_refresh_interval_s` (default 30 minutes).
    key_refresh_interval_s: int = pydantic.Field(default=1800, ge=1, le=7 * 24 * 3600)


class MemberConfig(_Model):
    cert: ConfigPath
    encryption_key: ConfigPath | None = None
    data: Any = None


class JoinConfig(_Model):
    target: Address
    service_cert: ConfigPath


class EndorsementsServer(_Model):
    """Where the host may fetch a VCEK chain (CCF's `attestation.snp_endorsements_servers`)."""

    # "AMD": AMD's Key Distribution Service paths (/vcek/v1/{product}/{hwid}?…SPL=…, and
    # /vcek/v1/{product}/cert_chain), at AMD or at a cache that mirrors them. "Azure": the
    # Azure attestation cache (/SevSnpVM/certificates/{chip id}/{tcb}, JSON answer).
    type: Literal["AMD", "Azure"] = "AMD"
    # host[:port] (HTTPS, as CCF), or a base URL with its scheme: http://127.0.0.1:8080.
    url: str = pydantic.Field(default="kdsintf.amd.com", min_length=1, max_length=512)
    # Further tries of this server after a connection failure, timeout or 5xx answer.
    max_retries_count: int = pydantic.Field(default=3, ge=0, le=10)
    # Each HTTP request to this server must complete within this.
    timeout_ms: int = pydantic.Field(default=10_000, ge=100, le=120_000)

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if sep and scheme not in ("http", "https"):
            raise ValueError("url scheme must be http or https")
        host = (rest if sep else v).split("/", 1)[0]
        if not host or any(c.isspace() for c in v) or "?" in v or "#" in v:
            raise ValueError(f"expected host[:port] or http(s)://host[:port][/path], got {v!r}")
        return v.rstrip("/")


class SnpConfig(_Model):
    """Settings of the `snp` platform (ignored on `virtual`)."""

    # PEM: the chip's VCEK, then AMD's ASK and ARK. Without it, the certificates the host
    # provisioned with the report (configfs-tsm's auxblob) are used, else the host fetches
    # them from `endorsements_servers`; the enclave verifies them up to AMD's pinned roots
    # whichever way they came.
    endorsements_file: str | None = pydantic.Field(default=None, max_length=4096)
    # Tried in order (the next one when one fails or serves endorsements the enclave refuses).
    endorsements_servers: list[EndorsementsServer] = pydantic.Field(
        default=[], max_length=ENDORSEMENTS_SERVERS_MAX
    )


class CoseSignaturesConfig(_Model):
    """CCF's `cose_signatures`: the CWT claims of the service's COSE root signatures, so of
    every COSE receipt. Both fields are required when the section is given, as in CCF."""

    issuer: Annotated[str, pydantic.AfterValidator(check_cose_issuer)]
    subject: Annotated[str, pydantic.AfterValidator(check_cose_subject)]


class StartConfig(_Model):
    mode: Literal["start", "join", "recover"] = "start"
    members: list[MemberConfig] = []
    constitution: ConfigPath | None = None
    service_config: dict[str, Any] = {}
    join: JoinConfig | None = None
    cose_signatures: CoseSignaturesConfig | None = None

    @pydantic.model_validator(mode="after")
    def _mode(self) -> StartConfig:
        if self.mode == "start" and not self.members:
            raise ValueError("mode 'start' needs at least one member")
        if self.mode == "join" and self.join is None:
            raise ValueError("mode 'join' needs a 'join' section (target, service_cert)")
        if self.mode == "join" and self.cose_signatures is not None:
            # A joining node signs with the service's setting, recorded when it started.
            raise ValueError("mode 'join' takes cose_signatures from the service; remove it")
        return self


class NodeConfig(_Model):
    """The operator's node config. `load_config` makes every path absolute."""

    workspace: ConfigPath
    ledger_dir: ConfigPath | None = None
    snapshots_dir: ConfigPath | None = None
    rpc_address: Address = "127.0.0.1:0"
    published_rpc_address: Address | None = None
    rpc_interface: RpcInterfaceConfig = pydantic.Field(default_factory=RpcInterfaceConfig)
    node_to_node_address: Address = "127.0.0.1:0"
    # What peers dial (e.g. a relay in front of this node); defaults to node_to_node_address.
    published_node_to_node_address: Address | None = None
    app: str = "charter.enclave_app.samples.logging"
    platform: Literal["virtual", "snp"] = "virtual"
    snp: SnpConfig = pydantic.Field(default_factory=SnpConfig)
    tick_ms: int = pydantic.Field(default=10, ge=1, le=10_000)
    ledger_chunk_bytes: int = pydantic.Field(default=5_000_000, ge=1024)
    signatures: SignaturesConfig = pydantic.Field(default_factory=SignaturesConfig)
    snapshots: SnapshotsConfig = pydantic.Field(default_factory=SnapshotsConfig)
    memory: MemoryConfig = pydantic.Field(default_factory=MemoryConfig)
    consensus: ConsensusConfig = pydantic.Field(default_factory=ConsensusConfig)
    # Operator features served on this node's RPC interface (CCF's name); none by default.
    enabled_operator_features: list[Literal["SnapshotRead"]] = []
    console: ConsoleConfig = pydantic.Field(default_factory=ConsoleConfig)
    jwt: JwtConfig = pydantic.Field(default_factory=JwtConfig)
    start: StartConfig

    @pydantic.model_validator(mode="after")
    def _defaults(self) -> NodeConfig:
        # Frozen model: fill the defaulted directories in place, once, at validation.
        if self.ledger_dir is None:
            object.__setattr__(self, "ledger_dir", self.workspace / "ledger")
        if self.snapshots_dir is None:
            object.__setattr__(self, "snapshots_dir", self.workspace / "snapshots")
        return self


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a JSON node config; relative paths are relative to the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise InterfaceError(f"cannot read config {p}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InterfaceError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InterfaceError(f"config {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InterfaceError(f"config {p} must be a JSON object")
    try:
        return NodeConfig.model_validate(data, context={"base_dir": p.resolve().parent})
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise InterfaceError(f"invalid config {p}: {problems}") from None
