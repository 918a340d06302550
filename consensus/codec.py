"""msgpack codec for Raft messages.

A frame is one msgpack array: `[VERSION, tag, field...]`, fields in the dataclass's order
except AppendEntries, whose entries come last as `[term, data, flags, configuration|nil]`
(the index is implied: prev_index + 1 + position; flag bit 0 = signature). Decoding checks
every size and type and raises `DecodeError` (a `ConsensusError`) and nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack

from charter.consensus.errors import DecodeError
from charter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from charter.consensus.types import MAX_ENTRY_BYTES, LogEntry

VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
MAX_ENTRIES_PER_MESSAGE = 100_000
MAX_NODE_ID_CHARS = 256
MAX_CONFIGURATION_NODES = 64
_U63 = (1 << 63) - 1
_FLAG_SIGNATURE = 0x01

_PRE_VOTE, _PRE_VOTE_RESP, _VOTE, _VOTE_RESP, _APPEND, _APPEND_RESP, _TIMEOUT_NOW = range(1, 8)


def _config_out(c: frozenset[str] | None) -> list[str] | None:
    return None if c is None else sorted(c)


def encode_message(msg: Message) -> bytes:
    """Serialise a message (trusted input: our own objects)."""
    if isinstance(msg, AppendEntries):
        entries = [
            [e.term, e.data, _FLAG_SIGNATURE if e.signature else 0, _config_out(e.configuration)]
            for e in msg.entries
        ]
        frame: list[Any] = [
            VERSION,
            _APPEND,
            msg.term,
            msg.sender,
            msg.prev_index,
            msg.prev_term,
            msg.leader_commit,
            entries,
        ]
    elif isinstance(msg, AppendEntriesResponse):
        frame = [
            VERSION,
            _APPEND_RESP,
            msg.term,
            msg.sender,
            msg.success,
            msg.last_index,
            msg.durable_index,
            msg.reject_index,
            msg.hint_index,
            msg.hint_term,
            msg.commit_index,
        ]
    elif isinstance(msg, PreVote):
        frame = [VERSION, _PRE_VOTE, msg.term, msg.sender, msg.last_index, msg.last_term]
    elif isinstance(msg, RequestVote):
        frame = [VERSION, _VOTE, msg.term, msg.sender, msg.last_index, msg.last_term, msg.forced]
    elif isinstance(msg, PreVoteResponse):
        frame = [VERSION, _PRE_VOTE_RESP, msg.term, msg.sender, msg.granted]
    elif isinstance(msg, RequestVoteResponse):
        frame = [VERSION, _VOTE_RESP, msg.term, msg.sender, msg.granted]
    elif isinstance(msg, TimeoutNow):
        frame = [VERSION, _TIMEOUT_NOW, msg.term, msg.sender]
    else:  # pragma: no cover - the Message union is closed
        raise DecodeError(f"not a message: {type(msg).__name__}")
    out = msgpack.packb(frame, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _int(v: object, what: str) -> int:
    # bool is an int subclass: refuse it where a number is meant.
    if type(v) is not int or not 0 <= v <= _U63:
        raise DecodeError(f"{what}: expected an integer in [0, 2^63)")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise DecodeError(f"{what}: expected a boolean")
    return v


def _node(v: object, what: str) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_NODE_ID_CHARS:
        raise DecodeError(f"{what}: expected a node id of 1..{MAX_NODE_ID_CHARS} characters")
    return v


def _arity(frame: list[Any], n: int, name: str) -> None:
    if len(frame) != n:
        raise DecodeError(f"{name}: expected {n - 2} fields, got {len(frame) - 2}")


def _configuration(v: object) -> frozenset[str] | None:
    if v is None:
        return None
    if type(v) is not list or not 0 < len(v) <= MAX_CONFIGURATION_NODES:
        raise DecodeError(f"configuration: expected 1..{MAX_CONFIGURATION_NODES} node ids")
    nodes = frozenset(_node(n, "configuration node") for n in v)
    if len(nodes) != len(v):
        raise DecodeError("configuration: duplicate node id")
    return nodes


def _entries(
    v: object, prev_index: int, prev_term: int, term: int, max_entry_bytes: int
) -> tuple[LogEntry, ...]:
    if type(v) is not list or len(v) > MAX_ENTRIES_PER_MESSAGE:
        raise DecodeError(f"entries: expected a list of at most {MAX_ENTRIES_PER_MESSAGE}")
    if prev_index + len(v) > _U63:
        raise DecodeError("entries: index overflow")
    out: list[LogEntry] = []
    last_term = prev_term
    index = prev_index
    # The hot loop of the decoder (one pass per entry): checks are inlined, not calls.
    for item in v:
        if type(item) is not list or len(item) != 4:
            raise DecodeError("entry: expected [term, data, flags, configuration]")
        e_term, data, flags, conf = item
        if type(e_term) is not int or not last_term <= e_term <= term:
            raise DecodeError("entry term: must not decrease and not exceed the message's view")
        if type(data) is not bytes or len(data) > max_entry_bytes:
            raise DecodeError(f"entry data: expected at most {max_entry_bytes} bytes")
        if type(flags) is not int or flags not in (0, _FLAG_SIGNATURE):
            raise DecodeError("entry flags: expected 0 or 1 (signature)")
        index += 1
        out.append(
            LogEntry(
                index, e_term, data, flags == 1, None if conf is None else _configuration(conf)
            )
        )
        last_term = e_term
    return tuple(out)


def decode_message(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES
) -> Message:
    """Parse one frame from outside; raises `DecodeError` on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("frame: expected bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"frame: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_NODE_ID_CHARS * 4,  # UTF-8: up to 4 bytes a character
            max_bin_len=max_entry_bytes,
            max_array_len=MAX_ENTRIES_PER_MESSAGE,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types: fold them into ours
        raise DecodeError(f"frame: not valid msgpack ({type(exc).__name__})") from None
    if type(frame) is not list or len(frame) < 4:
        raise DecodeError("frame: expected [version, tag, term, sender, ...]")
    if frame[0] != VERSION or type(frame[0]) is not int:
        raise DecodeError("frame: unknown version")
    tag = frame[1]
    term = _int(frame[2], "term")
    sender = _node(frame[3], "sender")
    if tag == _APPEND:
        _arity(frame, 8, "AppendEntries")
        prev_index = _int(frame[4], "prev_index")
        prev_term = _int(frame[5], "prev_term")
        if prev_term > term or (prev_index == 0) != (prev_term == 0):
            raise DecodeError("AppendEntries: inconsistent prev_index/prev_term")
        commit = _int(frame[6], "leader_commit")
        entries = _entries(frame[7], prev_index, prev_term, term, max_entry_bytes)
        return AppendEntries(term, sender, prev_index, prev_term, entries, commit)
    if tag == _APPEND_RESP:
        _arity(frame, 11, "AppendEntriesResponse")
        return AppendEntriesResponse(
            term,
            sender,
            _bool(frame[4], "success"),
            _int(frame[5], "last_index"),
            _int(frame[6], "durable_index"),
            _int(frame[7], "reject_index"),
            _int(frame[8], "hint_index"),
            _int(frame[9], "hint_term"),
            _int(frame[10], "commit_index"),
        )
    if tag == _PRE_VOTE:
        _arity(frame, 6, "PreVote")
        return PreVote(term, sender, _int(frame[4], "last_index"), _int(frame[5], "last_term"))
    if tag == _VOTE:
        _arity(frame, 7, "RequestVote")
        return RequestVote(
            term,
            sender,
            _int(frame[4], "last_index"),
            _int(frame[5], "last_term"),
            _bool(frame[6], "forced"),
        )
    if tag == _PRE_VOTE_RESP:
        _arity(frame, 5, "PreVoteResponse")
        return PreVoteResponse(term, sender, _bool(frame[4], "granted"))
    if tag == _VOTE_RESP:
        _arity(frame, 5, "RequestVoteResponse")
        return RequestVoteResponse(term, sender, _bool(frame[4], "granted"))
    if tag == _TIMEOUT_NOW:
        _arity(frame, 4, "TimeoutNow")
        return TimeoutNow(term, sender)
    raise DecodeError("frame: unknown message tag")
