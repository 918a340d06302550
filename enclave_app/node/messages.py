"""Node-to-node messages: what one enclave says to another inside a sealed channel frame.

Three kinds, each a frozen class: `RaftFrame` (one consensus message), `ForwardRequest` (a
write a backup hands to the primary, with its caller's certificate) and `ForwardAnswer` (the
primary's response to it). `encode` turns one into bytes, `decode` turns bytes from a peer
back into one or raises `DecodeError` and nothing else.

Wire format (msgpack, unchanged from the untyped lists it replaces, so nodes before and after
this module understand each other): one array `[kind, field...]` with

    ["raft", consensus frame (bin)]
    ["fwd", forward id, method, path, query, [[name, value]...], body (bin), caller DER (bin)]
    ["fwd_resp", forward id, status, [[name, value]...], content type | nil, body (bin)]

A channel frame is opened before its contents are read, so only an authenticated peer can
reach this decoder; it still treats the bytes as hostile (a peer may be compromised): every
field has a type and a bound, and the bounds are the ones `encode` enforces, so a node never
sends what its peers would drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from charter.consensus import Message, decode_message, encode_message
from charter.consensus.errors import DecodeError as ConsensusDecodeError
from charter.enclave_app.channels import HEADER, TAG_BYTES
from charter.enclave_app.interface.limits import (
    FORWARD_BODY_BYTES_MAX,
    NODE_FRAME_BYTES_MAX,
    NODE_FRAME_ENVELOPE_BYTES,
)

# Bounds of the fields around a forwarded body, in UTF-8 bytes. The HTTP server refuses a
# request line over 8190 bytes or with a non-ASCII byte (`http_parse`), so no path or query a
# client could send is longer than these.
METHOD_BYTES_MAX: Final = 16
PATH_BYTES_MAX: Final = 8 * 1024
QUERY_BYTES_MAX: Final = 8 * 1024
# A backup forwards two headers (content-type, accept); an answer carries the app's own.
HEADERS_COUNT_MAX: Final = 64
HEADERS_BYTES_MAX: Final = 16 * 1024  # names and values together
CONTENT_TYPE_BYTES_MAX: Final = 256
# A client certificate (DER); an RSA-4096 certificate is about 1.5 KiB.
CALLER_CERT_BYTES_MAX: Final = 16 * 1024
_ID_MAX: Final = (1 << 63) - 1
# msgpack's own framing of a forward: array headers, tags and length prefixes (generous).
_MSGPACK_FRAMING_BYTES: Final = 1024

# A forward of the largest body, with every other field at its bound and the channel's seal,
# fits one sealed node frame: nothing a client may send is too large to forward.
assert (
    METHOD_BYTES_MAX
    + PATH_BYTES_MAX
    + QUERY_BYTES_MAX
    + HEADERS_BYTES_MAX
    + CONTENT_TYPE_BYTES_MAX
    + CALLER_CERT_BYTES_MAX
    + _MSGPACK_FRAMING_BYTES
    + HEADER.size
    + TAG_BYTES
    <= NODE_FRAME_ENVELOPE_BYTES
)
assert FORWARD_BODY_BYTES_MAX + NODE_FRAME_ENVELOPE_BYTES <= NODE_FRAME_BYTES_MAX

# The largest message plaintext: a sealed frame without its seal.
MESSAGE_BYTES_MAX: Final = NODE_FRAME_BYTES_MAX - HEADER.size - TAG_BYTES

Headers = tuple[tuple[str, str], ...]


class MessageError(Exception):
    """A node-to-node message that breaks this format; `code` is stable, for logs/metrics."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class DecodeError(MessageError):
    """Bytes from a peer that are not a valid message: the only error `decode` raises."""


class EncodeError(MessageError):
    """A message of ours that a peer would refuse as too large (`encode` sends nothing)."""


# Codes of `MessageError`s.
NOT_MSGPACK: Final = "NotMsgpack"
TOO_LARGE: Final = "TooLarge"
UNKNOWN_KIND: Final = "UnknownKind"
MALFORMED: Final = "Malformed"
BAD_RAFT_MESSAGE: Final = "BadRaftMessage"
DUPLICATE_HEADER: Final = "DuplicateHeader"


@dataclass(frozen=True, slots=True)
class RaftFrame:
    """One consensus message (consensus's own codec checks its contents)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A write a backup forwarded, with its caller's certificate (DER, or empty)."""

    forward_id: int
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    caller_der: bytes


@dataclass(frozen=True, slots=True)
class ForwardAnswer:
    """The primary's response to the forwarded request `forward_id`."""

    forward_id: int
    status: int
    headers: Headers
    content_type: str | None
    body: bytes


NodeMessage = RaftFrame | ForwardRequest | ForwardAnswer

_RAFT, _FORWARD, _ANSWER = "raft", "fwd", "fwd_resp"
_ARITY: Final = {_RAFT: 1, _FORWARD: 7, _ANSWER: 5}


# ---------------------------------------------------------------------- encoding
def encode(message: NodeMessage) -> bytes:
    """Serialise one of our own messages; `EncodeError` if a peer would refuse its size."""
    if isinstance(message, RaftFrame):
        frame: list[Any] = [_RAFT, encode_message(message.message)]
    else:
        try:
            _check_forward(message)
        except DecodeError as exc:
            raise EncodeError(exc.message, code=exc.code) from None
        if isinstance(message, ForwardRequest):
            frame = [
                _FORWARD,
                message.forward_id,
                message.method,
                message.path,
                message.query,
                [list(pair) for pair in message.headers],
                message.body,
                message.caller_der,
            ]
        else:
            frame = [
                _ANSWER,
                message.forward_id,
                message.status,
                [list(pair) for pair in message.headers],
                message.content_type,
                message.body,
            ]
    try:
        out = msgpack.packb(frame, use_bin_type=True)
    except UnicodeEncodeError:  # e.g. a lone surrogate from an undecodable path
        raise EncodeError(f"{frame[0]}: a string is not valid UTF-8", code=MALFORMED) from None
    assert isinstance(out, bytes)
    return out


def _check_forward(message: ForwardRequest | ForwardAnswer) -> None:
    """The bounds `decode` enforces, on a message of ours (DecodeError if one is broken)."""
    _forward_id(message.forward_id)
    _headers([list(pair) for pair in message.headers])
    _body(message.body, "body", FORWARD_BODY_BYTES_MAX)
    if isinstance(message, ForwardRequest):
        _text(message.method, "method", METHOD_BYTES_MAX, non_empty=True)
        _text(message.path, "path", PATH_BYTES_MAX)
        _text(message.query, "query", QUERY_BYTES_MAX)
        _body(message.caller_der, "caller certificate", CALLER_CERT_BYTES_MAX)
    else:
        _status(message.status)
        _content_type(message.content_type)


# ---------------------------------------------------------------------- decoding
def decode(data: bytes) -> NodeMessage:
    """Parse one message from a peer; raises `DecodeError` (and nothing else) if malformed."""
    if type(data) is not bytes:
        raise DecodeError("message: expected bytes", code=MALFORMED)
    if len(data) > MESSAGE_BYTES_MAX:
        raise DecodeError(
            f"message: {len(data)} bytes exceeds the limit of {MESSAGE_BYTES_MAX}", code=TOO_LARGE
        )
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            # msgpack's bounds are a backstop above the fields' own (checked below, so an
            # oversize field is reported as TooLarge): they stop a length prefix from
            # making the parser build a huge list or string before any field is looked at.
            max_str_len=2 * max(PATH_BYTES_MAX, QUERY_BYTES_MAX, HEADERS_BYTES_MAX),
            max_bin_len=MESSAGE_BYTES_MAX,
            max_array_len=2 * max(HEADERS_COUNT_MAX, 1 + max(_ARITY.values())),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types: fold them into ours
        raise DecodeError(
            f"message: not valid msgpack ({type(exc).__name__})", code=NOT_MSGPACK
        ) from None
    if type(frame) is not list or not frame or type(frame[0]) is not str:
        raise DecodeError("message: expected [kind, field...]", code=MALFORMED)
    kind = frame[0]
    arity = _ARITY.get(kind)
    if arity is None:
        raise DecodeError(f"message: unknown kind {kind[:32]!r}", code=UNKNOWN_KIND)
    if len(frame) != 1 + arity:
        raise DecodeError(f"{kind}: expected {arity} fields, got {len(frame) - 1}", code=MALFORMED)
    if kind == _RAFT:
        raft = _body(frame[1], "raft message", FORWARD_BODY_BYTES_MAX)
        try:
            return RaftFrame(decode_message(raft))
        except ConsensusDecodeError as exc:
            raise DecodeError(f"raft: {exc}", code=BAD_RAFT_MESSAGE) from None
    if kind == _FORWARD:
        _, forward_id, method, path, query, headers, body, caller_der = frame
        return ForwardRequest(
            _forward_id(forward_id),
            _text(method, "method", METHOD_BYTES_MAX, non_empty=True),
            _text(path, "path", PATH_BYTES_MAX),
            _text(query, "query", QUERY_BYTES_MAX),
            _headers(headers),
            _body(body, "body", FORWARD_BODY_BYTES_MAX),
            _body(caller_der, "caller certificate", CALLER_CERT_BYTES_MAX),
        )
    _, forward_id, status, headers, content_type, body = frame
    return ForwardAnswer(
        _forward_id(forward_id),
        _status(status),
        _headers(headers),
        _content_type(content_type),
        _body(body, "body", FORWARD_BODY_BYTES_MAX),
    )


def _forward_id(value: object) -> int:
    # bool is an int subclass: refuse it where a number is meant.
    if type(value) is not int or not 0 < value <= _ID_MAX:
        raise DecodeError("forward id: expected an integer in [1, 2^63)", code=MALFORMED)
    return value


def _status(value: object) -> int:
    if type(value) is not int or not 100 <= value <= 599:
        raise DecodeError("status: expected an HTTP status in [100, 599]", code=MALFORMED)
    return value


def _utf8_bytes(value: str, what: str) -> int:
    try:
        return len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: only possible in a message of ours
        raise DecodeError(f"{what}: not encodable as UTF-8", code=MALFORMED) from None


def _text(value: object, what: str, bytes_max: int, *, non_empty: bool = False) -> str:
    if type(value) is not str:
        raise DecodeError(f"{what}: expected a string", code=MALFORMED)
    # A str holds at least one UTF-8 byte per character: skip encoding the short ones.
    if len(value) > bytes_max or (
        len(value) * 4 > bytes_max and _utf8_bytes(value, what) > bytes_max
    ):
        raise DecodeError(f"{what}: longer than {bytes_max} bytes", code=TOO_LARGE)
    if non_empty and not value:
        raise DecodeError(f"{what}: empty", code=MALFORMED)
    return value


def _content_type(value: object) -> str | None:
    return None if value is None else _text(value, "content type", CONTENT_TYPE_BYTES_MAX)


def _body(value: object, what: str, bytes_max: int) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"{what}: expected bytes", code=MALFORMED)
    if len(value) > bytes_max:
        raise DecodeError(f"{what}: {len(value)} bytes exceeds {bytes_max}", code=TOO_LARGE)
    return value


def _headers(value: object) -> Headers:
    if type(value) is not list:
        raise DecodeError("headers: expected a list of [name, value]", code=MALFORMED)
    if len(value) > HEADERS_COUNT_MAX:
        raise DecodeError(f"headers: more than {HEADERS_COUNT_MAX}", code=TOO_LARGE)
    pairs: list[tuple[str, str]] = []
    names: set[str] = set()
    size = 0
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise DecodeError("header: expected [name, value]", code=MALFORMED)
        name, text = pair
        if type(name) is not str or type(text) is not str:
            raise DecodeError("header: name and value must be strings", code=MALFORMED)
        size += _utf8_bytes(name, "header name") + _utf8_bytes(text, "header value")
        if size > HEADERS_BYTES_MAX:
            raise DecodeError(f"headers: more than {HEADERS_BYTES_MAX} bytes", code=TOO_LARGE)
        # Exact repeats only: they would collapse in a dict; case variants are the app's.
        if name in names:
            raise DecodeError("headers: a name appears twice", code=DUPLICATE_HEADER)
        names.add(name)
        pairs.append((name, text))
    return tuple(pairs)
