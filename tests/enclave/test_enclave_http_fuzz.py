"""The session protocol under arbitrary and mutated input, cut at arbitrary points: every
answer is the handler's or a 4xx/5xx JSON error that ends the session, no exception escapes
the protocol (nor its handler tasks), and no session is left stuck (it is closed, or has a
deadline by which it will be)."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from http_session_support import Answer, limits, ok_handler, open_session, parse_answers, settle
from hypothesis import given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=1000, derandomize=True, deadline=None)
SESSION_LIMITS = limits(idle_s=30.0, header_s=10.0, read_s=20.0)

VALID_REQUESTS = [
    b"GET /node/state HTTP/1.1\r\nHost: a\r\n\r\n",
    b'HEAD /console/index.html HTTP/1.1\r\nIf-None-Match: "x"\r\n\r\n',
    b"POST /app/log/private HTTP/1.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 19\r\n\r\n{"id":1,"msg":"hi"}',
    b"POST /app/log/private HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
    b"PUT /app/x?y=%20 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /gov/proposals HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
]


def _check(raw: bytes) -> list[Answer]:
    answers = parse_answers(raw)
    finals = [a for a in answers if a.status != 100]
    for index, answer in enumerate(finals):
        if answer.status == 200:
            assert answer.body == b""
            continue
        assert 400 <= answer.status < 600, answer
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["connection"] == "close"
        doc = json.loads(answer.body)
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
        assert index == len(finals) - 1, "an answer after an error answer"
    return answers


async def _scenario(pieces: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    session, transport, _ = open_session(ok_handler(b""), SESSION_LIMITS)
    for piece in pieces:
        session.data_received(piece)
        await settle(loop, 4)
    await settle(loop)
    assert not escaped, escaped
    _check(bytes(transport.written))
    if not transport.closed:
        # Not stuck: reading (or ending), and cut off by a deadline if nothing more comes.
        cut_off = session.cut_off_at()
        assert cut_off is not None
        assert cut_off <= loop.time() + SESSION_LIMITS.idle_timeout_s
        assert transport.reading  # nothing waits behind a handler: reading was resumed


def _run(pieces: list[bytes]) -> None:
    asyncio.run(_scenario(pieces))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [b""]


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_get_an_error_answer_or_a_close_and_never_a_stuck_session(
    data: bytes, cuts: list[int]
) -> None:
    _run(_split(data, cuts))


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(1, 40)),
    st.tuples(st.just("repeat"), st.integers(min_value=0), st.integers(1, 40)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, what in mutations:
        at = where % (len(buffer) + 1)
        if kind == "flip" and at < len(buffer):
            buffer[at] = what
        elif kind == "insert":
            buffer[at:at] = what
        elif kind == "delete":
            del buffer[at : at + what]
        elif kind == "repeat":
            buffer[at:at] = buffer[at : at + what]
        elif kind == "truncate":
            del buffer[at:]
    return bytes(buffer)


@FUZZ
@given(
    st.lists(st.sampled_from(VALID_REQUESTS), min_size=1, max_size=4),
    st.lists(_mutation, max_size=4),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_mutated_valid_requests_get_answers_or_an_error_and_never_a_stuck_session(
    requests: list[bytes], mutations: list[tuple[str, int, Any]], cuts: list[int]
) -> None:
    data = _mutate(b"".join(requests), mutations)
    _run(_split(data, cuts))


def test_valid_requests_pipelined_and_cut_anywhere_are_all_answered() -> None:
    data = b"".join(r for r in VALID_REQUESTS if b"close" not in r)

    async def scenario(cut: int) -> None:
        session, transport, _ = open_session(ok_handler(b""), SESSION_LIMITS)
        session.data_received(data[:cut])
        await settle(asyncio.get_running_loop())
        session.data_received(data[cut:])
        await settle(asyncio.get_running_loop())
        finals = [a for a in _check(bytes(transport.written)) if a.status != 100]
        assert [a.status for a in finals] == [200] * (len(VALID_REQUESTS) - 1)
        assert not transport.closed

    for cut in range(0, len(data) + 1, 7):
        asyncio.run(scenario(cut))
