"""The link between the ordering process and one frontend process (`NodeConfig.frontends`).

Both ends run inside the trust boundary; the link is a Unix socketpair the ordering process
creates and hands to the frontend it spawns. The frames, and who sends them:

    ordering → frontend   Configure(limits)                 first frame: the session limits
                          Tls(generation, chain, key, cas)  the node's TLS bundle, and each
                                                            new one (users/members changed)
                          Session(seq) + 1 fd               an accepted client socket
                          Answer(request_id, status, headers, body, content_type)
    frontend → ordering   Request(request_id, cert_id, peer_der, method, path, query,
                                  headers, body, source)
                          ForgetCerts()                     the frontend emptied its cert table
                          Load(open_sessions, sessions_received)

Wire format: `u32 big-endian length` + msgpack `[LINK_VERSION, tag, field, …]` (fields by
position: this link carries every request and answer, so no field names on the wire; header
lines as one flat list of names and values). Every
frame is validated on receipt (`decode_link_frame` raises `LinkError` only); a malformed one
is logged by the `Link` and dropped, and a length prefix above `LINK_FRAME_BYTES_MAX` closes
the link (framing is lost; the frontend is then restarted). A frame with an fd leaves in a
`sendmsg` of its own that starts at its first byte, so the receiver ties the fd to it.

A client certificate travels once per frontend, not with every request: the frontend
numbers the certificates it has seen (`cert_id`, 0 = none) and sends the DER with the first
request that uses a number; the ordering process keeps the table (bounded: when the
frontend's table is full it empties it and says so with `ForgetCerts`).

`Link` writes each loop turn's frames in one `sendmsg` (one wake-up of the peer): `send`
queues and the flush runs once at the end of the turn.
"""

from __future__ import annotations

import logging
import operator
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar, Final

import msgpack

from charter.enclave_app.interface import MAX_FRAME_BYTES, MAX_STRING_CHARS, REQUEST_BODY_BYTES_MAX
from charter.enclave_app.interface.transport import FramedSocket, close_fds

LOG = logging.getLogger("enclave.frontend_link")

LINK_VERSION: Final = 2  # 2: header lines as one flat list
# The largest frame: a request with the largest body, or an answer as large as anything the
# ordering process serves (one control frame's payload: a snapshot, a ledger chunk), each
# with room for its headers.
LINK_ENVELOPE_BYTES: Final = 1024 * 1024
LINK_FRAME_BYTES_MAX: Final = max(REQUEST_BODY_BYTES_MAX, MAX_FRAME_BYTES) + LINK_ENVELOPE_BYTES
HEADERS_MAX: Final = 256  # header lines per request or answer (the HTTP layer allows fewer)
# Names and values of one frame's header lines together (a request's whole header section is
# at most 32 KiB: `http_parse.HEADER_SECTION_BYTES_MAX`; an app's answer may set more).
HEADER_CHARS_MAX: Final = 256 * 1024
CERT_DER_BYTES_MAX: Final = 64 * 1024
CERT_IDS_MAX: Final = 4096  # certificates a frontend numbers before it starts over
PEM_CHARS_MAX: Final = 16 * 1024 * 1024  # a client CA bundle of many registered certificates
# Bytes queued for a peer that does not read: past this the link is closed.
OUTGOING_BYTES_MAX: Final = 4 * LINK_FRAME_BYTES_MAX
FDS_QUEUED_MAX: Final = 256
_ANC_BYTES: Final = socket.CMSG_SPACE(4 * 4)
_MAX_U64: Final = 2**64 - 1


class LinkError(Exception):
    """A frame that cannot be encoded or that failed validation on receipt."""


# ------------------------------------------------------------------------------ field checks


def _int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= _MAX_U64:
        raise LinkError("expected an unsigned 64-bit int")
    return v


def _float(v: object) -> float:
    if type(v) not in (int, float) or not 0 < v <= 86_400:  # type: ignore[operator]
        raise LinkError("expected a positive number of seconds")
    return float(v)  # type: ignore[arg-type]


def _str(v: object) -> str:
    # isinstance: header names from the HTTP layer are a str subclass (case-insensitive);
    # msgpack sends them as str, and decoding only ever yields str.
    if not isinstance(v, str) or len(v) > MAX_STRING_CHARS:
        raise LinkError(f"expected a str of at most {MAX_STRING_CHARS} chars")
    return v


def _pem(v: object) -> str:
    if type(v) is not str or len(v) > PEM_CHARS_MAX:
        raise LinkError(f"expected PEM text of at most {PEM_CHARS_MAX} chars")
    return v


def _body(v: object) -> bytes:
    if type(v) is not bytes or len(v) > LINK_FRAME_BYTES_MAX - LINK_ENVELOPE_BYTES:
        raise LinkError("expected a body within the frame limit")
    return v


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _opt_der(v: object) -> bytes | None:
    if v is None:
        return None
    if type(v) is not bytes or not 0 < len(v) <= CERT_DER_BYTES_MAX:
        raise LinkError(f"expected a certificate of at most {CERT_DER_BYTES_MAX} bytes")
    return v


def _flat_headers(headers: object) -> list[str]:
    """Header lines as the wire carries them, one flat list `[name, value, name, value, …]`
    (no array per line, so the receiver checks them in a few C calls), checked as on
    receipt."""
    if type(headers) is not list or len(headers) > HEADERS_MAX:
        raise LinkError(f"expected a list of at most {HEADERS_MAX} header lines")
    try:
        flat = list(chain.from_iterable(headers))
    except TypeError:
        raise LinkError("a header line is (name, value)") from None
    if len(flat) != 2 * len(headers):
        raise LinkError("a header line is (name, value)")
    _check_header_parts(flat)
    return flat


def _paired_headers(flat: object) -> list[tuple[str, str]]:
    """The header lines of a received flat list."""
    if type(flat) is not list or len(flat) % 2 or len(flat) > 2 * HEADERS_MAX:
        raise LinkError(f"expected names and values of at most {HEADERS_MAX} header lines")
    _check_header_parts(flat)
    parts = iter(flat)
    return list(zip(parts, parts, strict=False))  # an even count: checked above


def _check_header_parts(parts: list[Any]) -> None:
    # `join` accepts only str (header names from the HTTP layer are a case-insensitive str
    # subclass; decoding only ever yields str), and bounds them all in one C call.
    try:
        chars = len("".join(parts))
    except TypeError:
        raise LinkError("header names and values are str") from None
    if chars > HEADER_CHARS_MAX:
        raise LinkError(f"header names and values exceed {HEADER_CHARS_MAX} chars")


def _limits(v: object) -> tuple[int, int, float, float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 5:
        raise LinkError("limits are [soft, hard, idle_s, header_s, read_s]")
    soft, hard = _int(v[0]), _int(v[1])
    if not 1 <= soft <= hard:
        raise LinkError("limits need 1 <= soft <= hard")
    return soft, hard, _float(v[2]), _float(v[3]), _float(v[4])


# ------------------------------------------------------------------------------ frames


@dataclass(slots=True)
class Configure:
    TAG: ClassVar[int] = 1
    FD_COUNT: ClassVar[int] = 0
    limits: tuple[int, int, float, float, float]  # SessionLimits, in its field order


@dataclass(slots=True)
class Tls:
    TAG: ClassVar[int] = 2
    FD_COUNT: ClassVar[int] = 0
    generation: int
    cert_chain_pem: str
    key_pem: str
    client_cas_pem: str


@dataclass(slots=True)
class Session:
    TAG: ClassVar[int] = 3
    FD_COUNT: ClassVar[int] = 1
    seq: int  # the ordering process's count of sessions sent to this frontend


@dataclass(slots=True)
class Answer:
    TAG: ClassVar[int] = 4
    FD_COUNT: ClassVar[int] = 0
    request_id: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_type: str | None


@dataclass(slots=True)
class Request:
    TAG: ClassVar[int] = 5
    FD_COUNT: ClassVar[int] = 0
    request_id: int
    cert_id: int  # 0: no client certificate
    peer_der: bytes | None  # only with the first request that uses cert_id
    method: str
    path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    source: str | None


@dataclass(slots=True)
class ForgetCerts:
    TAG: ClassVar[int] = 6
    FD_COUNT: ClassVar[int] = 0


@dataclass(slots=True)
class Load:
    TAG: ClassVar[int] = 7
    FD_COUNT: ClassVar[int] = 0
    open_sessions: int
    sessions_received: int


LinkFrame = Configure | Tls | Session | Answer | Request | ForgetCerts | Load


_Fields = Callable[[Any], tuple[Any, ...]]


def _fields_getter(names: tuple[str, ...]) -> _Fields:
    """A frame's field values in order, read in C (attrgetter gives a tuple for two or more)."""
    if not names:
        return lambda frame: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda frame: (one(frame),)
    return operator.attrgetter(*names)


# Per frame, in field order: the check of each received field (it returns the value the
# frame holds), and the check of each field sent (it returns what the wire carries). They
# differ only for header lines, which travel as one flat list.
_CHECKS: dict[type[Any], tuple[Callable[[object], Any], ...]] = {
    Configure: (_limits,),
    Tls: (_int, _pem, _pem, _pem),
    Session: (_int,),
    Answer: (_int, _int, _paired_headers, _body, _opt_str),
    Request: (_int, _int, _opt_der, _str, _str, _str, _paired_headers, _body, _opt_str),
    ForgetCerts: (),
    Load: (_int, _int),
}
# Per frame: the checks of the fields sent, and what reads the frame's field values in order.
_SENDING: dict[type[Any], tuple[tuple[Callable[[object], Any], ...], _Fields]] = {
    cls: (
        tuple(_flat_headers if check is _paired_headers else check for check in checks),
        _fields_getter(cls.__slots__),
    )
    for cls, checks in _CHECKS.items()
}
assert all(len(checks) == len(cls.__slots__) for cls, checks in _CHECKS.items())
# One packer for the process (a frame is packed whole before the next: no interleaving).
_PACKER: Final = msgpack.Packer(use_bin_type=True)
_BY_TAG: dict[int, type[Any]] = {cls.TAG: cls for cls in _CHECKS}
assert len(_BY_TAG) == len(_CHECKS)
TO_FRONTEND: Final = frozenset({Configure, Tls, Session, Answer})
TO_ORDERER: Final = frozenset({Request, ForgetCerts, Load})


def encode_link_frame(frame: LinkFrame) -> bytes:
    """The msgpack body of `frame` (no length prefix); raises `LinkError`. Fields are checked
    as on receipt, so a frame the peer would drop is refused here, where the sender can still
    answer its client (a dropped request would leave its client waiting)."""
    cls = type(frame)
    sending = _SENDING.get(cls)
    if sending is None:
        raise LinkError(f"not a link frame: {cls.__name__}")
    checks, values = sending
    try:
        # As many checks as fields (checked at import).
        fields = [LINK_VERSION, cls.TAG]
        fields += [c(v) for c, v in zip(checks, values(frame), strict=False)]
    except LinkError as exc:
        raise LinkError(f"{cls.__name__}: {exc}") from None
    try:
        data: bytes = _PACKER.pack(fields)
    except (ValueError, OverflowError, TypeError) as exc:
        raise LinkError(f"{cls.__name__}: cannot encode: {type(exc).__name__}") from None
    if len(data) > LINK_FRAME_BYTES_MAX:
        raise LinkError(f"{cls.__name__} of {len(data)} bytes exceeds LINK_FRAME_BYTES_MAX")
    return data


def decode_link_frame(data: bytes) -> LinkFrame:
    """Parse and validate one frame body; raises `LinkError` only."""
    if type(data) is not bytes or len(data) > LINK_FRAME_BYTES_MAX:
        raise LinkError("a frame is bytes within LINK_FRAME_BYTES_MAX")
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, max_bin_len=len(data))
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise LinkError(f"not msgpack: {type(exc).__name__}") from None
    if type(obj) is not list or len(obj) < 2:
        raise LinkError("a frame is [version, tag, fields...]")
    if type(obj[0]) is not int or obj[0] != LINK_VERSION:
        raise LinkError(f"unsupported link version (expected {LINK_VERSION})")
    cls = _BY_TAG.get(obj[1]) if type(obj[1]) is int else None
    if cls is None:
        raise LinkError("unknown frame tag")
    checks = _CHECKS[cls]
    if len(obj) != 2 + len(checks):
        raise LinkError(f"{cls.__name__} has {len(checks)} fields")
    try:
        # As many fields as checks: checked above.
        frame: LinkFrame = cls(*[check(v) for check, v in zip(checks, obj[2:], strict=False)])
    except LinkError as exc:
        raise LinkError(f"{cls.__name__}: {exc}") from None
    return frame


# ------------------------------------------------------------------------------ the link


class Link(FramedSocket):
    """Frames (and passed fds) over a connected AF_UNIX stream socket, on the running loop.

    `on_frame(frame, fds)` is called for every valid frame the peer sends that `accepts`
    holds (the receiver owns the fds); `on_closed(reason)` once, when the peer hangs up or
    the link fails. `send` never blocks: frames queue and leave at the end of the loop turn.
    The bytes and fds travel by `FramedSocket` (`interface/transport.py`).
    """

    _OVERSIZED_REASON = "frame length {length} exceeds LINK_FRAME_BYTES_MAX"
    _STRAY_FDS_REASON = "fds received without their frames"

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str,
        accepts: frozenset[type[Any]],
        on_frame: Callable[[LinkFrame, list[int]], None],
        on_closed: Callable[[str], None],
        fds_queued_max: int = FDS_QUEUED_MAX,
    ) -> None:
        self.name = name
        # Passed fds waiting to be sent: the ordering process raises this to the node's hard
        # session cap (every queued fd is a session already admitted under that cap).
        self._fds_queued_max = fds_queued_max
        self._accepts = accepts
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._flush_scheduled = False
        self.dropped_frames = 0
        super().__init__(
            sock,
            frame_bytes_max=LINK_FRAME_BYTES_MAX,
            fd_marks_max=FDS_QUEUED_MAX,
            anc_bytes=_ANC_BYTES,
        )

    # -- sending ------------------------------------------------------------------------
    def send(self, frame: LinkFrame, fds: Sequence[int] = ()) -> bool:
        """Queue `frame` (its fds duplicated: the caller keeps its copies). False if the link
        is closed or the frame could not be queued (logged; the link closes when full)."""
        if self._closed:
            return False
        assert len(fds) == type(frame).FD_COUNT
        try:
            body = encode_link_frame(frame)
        except LinkError as exc:
            LOG.error("event=link_frame_not_sent link=%s reason=%s", self.name, exc)
            return False
        if self._out_bytes + len(body) > OUTGOING_BYTES_MAX:
            self.close("the peer does not read its frames")
            return False
        if fds and self._out_fds + len(fds) > self._fds_queued_max:
            LOG.warning("event=link_fds_full link=%s", self.name)
            return False
        self._enqueue(body, fds)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        if self._write_queued():
            self._disarm_writer()
        elif not self._closed:  # the socket is full: go on when it takes more
            self._arm_writer()

    def _on_writable(self) -> None:
        self._flush()

    # -- receiving ----------------------------------------------------------------------
    def _fds_truncated(self) -> None:
        LOG.error("event=link_fds_truncated link=%s", self.name)

    def _frame_received(self, body: bytes, fds: list[int]) -> None:
        try:
            frame = decode_link_frame(body)
            if type(frame) not in self._accepts:
                raise LinkError(f"{type(frame).__name__} is not sent this way")
            if len(fds) != type(frame).FD_COUNT:
                raise LinkError(f"{type(frame).__name__} arrived with {len(fds)} fds")
        except LinkError as exc:
            close_fds(fds)
            self.dropped_frames += 1
            # Never the frame's bytes: they may be a client's request.
            LOG.warning(
                "event=link_frame_dropped link=%s size_bytes=%d reason=%s",
                self.name,
                len(body),
                exc,
            )
            return
        try:
            self._on_frame(frame, fds)
        except Exception as exc:
            LOG.error(
                "event=link_frame_failed link=%s frame=%s error=%s",
                self.name,
                type(frame).__name__,
                type(exc).__name__,
                exc_info=True,
            )

    # -- closing ------------------------------------------------------------------------
    def _hangup(self) -> None:
        self.close("peer closed the link")

    def _lose(self, reason: str, *, error: bool) -> None:
        self.close(reason)

    def close(self, reason: str = "closed locally", *, flush: bool = False) -> None:
        """Close now; with `flush`, first write what is queued if the socket takes it."""
        if self._closed:
            return
        if flush and self._out:
            self._flush()
            if self._closed:
                return
        self._release()
        self._on_closed(reason)
