"""The msgpack codec: round trips, and untrusted bytes raise ConsensusError and nothing else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.consensus import (
    AppendEntries,
    AppendEntriesResponse,
    ConsensusError,
    DecodeError,
    LogEntry,
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    decode_message,
    encode_message,
)

FUZZ = settings(
    max_examples=500,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
ints = st.integers(min_value=0, max_value=(1 << 63) - 1)
small = st.integers(min_value=0, max_value=1 << 20)


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    term = draw(st.integers(min_value=1, max_value=1 << 40))
    prev_index = draw(small)
    prev_term = 0 if prev_index == 0 else draw(st.integers(min_value=1, max_value=term))
    n = draw(st.integers(min_value=0, max_value=6))
    terms = sorted(draw(st.lists(st.integers(prev_term, term), min_size=n, max_size=n)))
    entries = tuple(
        LogEntry(
            prev_index + 1 + k,
            t,
            draw(st.binary(max_size=40)),
            draw(st.booleans()),
            draw(st.none() | st.frozensets(ids, min_size=1, max_size=5)),
        )
        for k, t in enumerate(terms)
    )
    return AppendEntries(term, draw(ids), prev_index, prev_term, entries, draw(small))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(PreVote, ints, ids, ints, ints),
    st.builds(PreVoteResponse, ints, ids, st.booleans()),
    st.builds(RequestVote, ints, ids, ints, ints, st.booleans()),
    st.builds(RequestVoteResponse, ints, ids, st.booleans()),
    st.builds(AppendEntriesResponse, ints, ids, st.booleans(), ints, ints, ints, ints, ints),
    st.builds(TimeoutNow, ints, ids),
    append_entries(),
)


MESSAGE_TYPES = (
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    TimeoutNow,
)


def _decodes_or_refuses(frame: bytes) -> None:
    """The decoder's whole promise: a message, or a DecodeError; never another exception."""
    try:
        out = decode_message(frame)
    except ConsensusError as exc:
        assert exc.code == "DecodeError"
    else:
        assert isinstance(out, MESSAGE_TYPES)


@FUZZ
@given(messages)
def test_every_message_survives_an_encode_decode_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_consensus_error_only(data: bytes) -> None:
    _decodes_or_refuses(data)


@FUZZ
@given(messages, st.data())
def test_mutated_frames_decode_to_a_message_or_raise_consensus_error_only(
    msg: Message, data: st.DataObject
) -> None:
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    _decodes_or_refuses(bytes(frame))


_structured = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.binary(max_size=8)
    | st.text(max_size=8)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(FUZZ, max_examples=300)
@given(st.integers(0, 9), st.lists(_structured, max_size=9))
def test_well_formed_msgpack_of_the_wrong_shape_raises_consensus_error_only(
    tag: int, fields: list[object]
) -> None:
    frame = msgpack.packb([1, tag, *fields], use_bin_type=True)
    _decodes_or_refuses(frame)


def test_oversized_frame_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError):
        decode_message(b"\x00" * 101, max_bytes=100)


def test_entry_larger_than_the_limit_is_refused() -> None:
    msg = AppendEntries(1, "a", 0, 0, (LogEntry(1, 1, bytes(1000)),), 0)
    with pytest.raises(DecodeError):
        decode_message(encode_message(msg), max_entry_bytes=999)


def test_entries_whose_view_goes_backwards_are_refused() -> None:
    frame = msgpack.packb(
        [1, 5, 3, "a", 0, 0, 0, [[2, b"x", 0, None], [1, b"y", 0, None]]], use_bin_type=True
    )
    with pytest.raises(DecodeError):
        decode_message(frame)


def test_boolean_is_not_accepted_where_a_number_is_meant() -> None:
    frame = msgpack.packb([1, 7, True, "a"], use_bin_type=True)
    with pytest.raises(DecodeError):
        decode_message(frame)


def test_decode_error_carries_a_stable_code() -> None:
    with pytest.raises(ConsensusError) as info:
        decode_message(b"\xc1")
    assert info.value.code == "DecodeError"
