"""`http_parse.RequestReader`: requests framed from a session's bytes, with its bounds (no I/O)."""

from __future__ import annotations

import pytest

from charter.enclave_app.http_parse import (
    BODY,
    HEAD,
    HEADER_COUNT_MAX,
    HEADER_FIELD_BYTES_MAX,
    HEADER_SECTION_BYTES_MAX,
    IDLE,
    REQUEST_LINE_BYTES_MAX,
    ParsedRequest,
    RequestReader,
)
from charter.enclave_app.interface import REQUEST_BODY_BYTES_MAX


def _feed(*pieces: bytes, body_bytes_max: int = REQUEST_BODY_BYTES_MAX) -> RequestReader:
    reader = RequestReader(body_bytes_max)
    for piece in pieces:
        reader.feed(piece)
    return reader


def _requests(reader: RequestReader) -> list[ParsedRequest]:
    return [event for event in reader.events if isinstance(event, ParsedRequest)]


def _error(reader: RequestReader) -> int | None:
    errors = [event for event in reader.events if isinstance(event, int)]
    assert len(errors) <= 1
    return errors[0] if errors else None


def test_a_request_split_at_every_byte_is_parsed_whole_once() -> None:
    raw = (
        b"POST /app/log/private?id=42&x=a%20b HTTP/1.1\r\nHost: a\r\n"
        b'Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{"msg":"x"}'
    )
    reader = _feed(*(raw[i : i + 1] for i in range(len(raw))))
    [request] = _requests(reader)
    assert (request.method, request.path, request.query_string) == (
        "POST",
        "/app/log/private",
        "id=42&x=a%20b",
    )
    assert request.body == b'{"msg":"x"}'
    assert request.keep_alive and not request.http_10
    assert reader.phase == IDLE and not reader.finished


def test_headers_are_looked_up_case_insensitively_and_keep_repeats() -> None:
    reader = _feed(b'GET / HTTP/1.1\r\nIf-None-Match: "e1"\r\nX-A: 1\r\nx-a: 2\r\n\r\n')
    [request] = _requests(reader)
    assert request.headers.get("if-none-match") == '"e1"'
    assert request.headers.getall("X-A") == ["1", "2"]


def test_pipelined_requests_come_out_in_the_order_they_were_sent() -> None:
    reader = _feed(
        b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n"
    )
    assert [(r.method, r.path, r.body) for r in _requests(reader)] == [
        ("GET", "/a", b""),
        ("POST", "/b", b"hi"),
        ("GET", "/c", b""),
    ]


def test_path_and_query_are_handed_over_as_sent_also_in_absolute_form() -> None:
    [request] = _requests(_feed(b"GET /app/x%2Fy?q=%26&r=+ HTTP/1.1\r\n\r\n"))
    assert (request.path, request.query_string) == ("/app/x%2Fy", "q=%26&r=+")
    [request] = _requests(_feed(b"GET http://node:8000/node/state?a=1 HTTP/1.1\r\n\r\n"))
    assert (request.path, request.query_string) == ("/node/state", "a=1")


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, Close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
    ],
)
def test_keep_alive_is_http11s_default_and_http10s_on_request(
    version: bytes, connection: bytes | None, keep_alive: bool
) -> None:
    header = b"Connection: " + connection + b"\r\n" if connection else b""
    [request] = _requests(_feed(b"GET / HTTP/" + version + b"\r\n" + header + b"\r\n"))
    assert request.keep_alive is keep_alive
    assert request.http_10 is (version == b"1.0")


def test_bytes_after_a_request_that_ends_the_session_are_not_parsed() -> None:
    reader = _feed(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert [r.path for r in _requests(reader)] == ["/a"]
    assert reader.finished and _error(reader) is None
    reader.feed(b"garbage")
    assert len(reader.events) == 1


def test_an_upgrade_request_is_served_as_a_plain_one_that_ends_the_session() -> None:
    reader = _feed(
        b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x00\x01binary"
    )
    [request] = _requests(reader)
    assert request.path == "/a" and not request.keep_alive
    assert reader.finished and _error(reader) is None


@pytest.mark.parametrize(
    "raw",
    [b"GET /node/state\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n"],
)
def test_anything_but_http10_and_http11_is_refused_505(raw: bytes) -> None:
    reader = _feed(raw)
    assert _error(reader) == 505 and not _requests(reader) and reader.finished


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /node/state?token=x HTTX/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Secret: a\x01\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\n\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello sent as HTTP
        b"G\x00T / HTTP/1.1\r\n\r\n",
        # A non-ASCII byte in the target (so a path or query is ASCII, as long in UTF-8).
        b"GET /a\xff HTTP/1.1\r\n\r\n",
        b"GET /a?q=\xc3\xa9 HTTP/1.1\r\n\r\n",
    ],
)
def test_a_malformed_request_is_refused_400_and_nothing_after_it_is_parsed(raw: bytes) -> None:
    reader = _feed(raw)
    assert _error(reader) == 400 and not _requests(reader) and reader.finished
    reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert len(reader.events) == 1


def test_the_request_line_bound_is_exact() -> None:
    def line(target_bytes: int) -> bytes:
        return b"GET /" + b"a" * (target_bytes - 1) + b" HTTP/1.1\r\n\r\n"

    longest = REQUEST_LINE_BYTES_MAX - len(b"GET  HTTP/1.1\r\n")
    [request] = _requests(_feed(line(longest)))
    assert len(request.path) == longest
    assert _error(_feed(line(longest + 1))) == 431
    # A target that never ends is refused once it passes the bound, not buffered.
    reader = RequestReader()
    reader.feed(b"GET /")
    for _ in range(REQUEST_LINE_BYTES_MAX // 1000 + 1):
        reader.feed(b"a" * 1000)
    assert _error(reader) == 431


def test_one_header_past_its_bound_is_refused_431() -> None:
    name = b"X-Long"
    fits = b"v" * (HEADER_FIELD_BYTES_MAX - len(name) - len(b": \r\n"))
    assert _requests(_feed(b"GET / HTTP/1.1\r\n" + name + b": " + fits + b"\r\n\r\n"))
    assert _error(_feed(b"GET / HTTP/1.1\r\n" + name + b": " + fits + b"v\r\n\r\n")) == 431


def test_more_headers_than_the_count_bound_are_refused_431() -> None:
    def request(count: int) -> bytes:
        return b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(count)) + b"\r\n"

    assert _requests(_feed(request(HEADER_COUNT_MAX)))
    assert _error(_feed(request(HEADER_COUNT_MAX + 1))) == 431


def test_a_head_past_the_section_bound_is_refused_431_though_each_header_fits() -> None:
    value = b"v" * 8000
    count = HEADER_SECTION_BYTES_MAX // len(value) + 1
    assert count <= HEADER_COUNT_MAX
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, value) for i in range(count))
    assert _error(_feed(raw + b"\r\n")) == 431


def test_a_header_that_never_ends_is_refused_once_the_head_bound_was_fed() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nX-Endless: ")
    fed = 0
    while not reader.finished:
        reader.feed(b"v" * 1000)
        fed += 1000
        assert fed <= HEADER_SECTION_BYTES_MAX + 1000, "the reader kept buffering the header"
    assert _error(reader) == 431


def test_a_content_length_past_the_body_bound_is_refused_413_with_the_head_alone() -> None:
    reader = _feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (REQUEST_BODY_BYTES_MAX + 1))
    assert _error(reader) == 413
    reader = _feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % REQUEST_BODY_BYTES_MAX)
    assert _error(reader) is None and reader.phase == BODY


def test_a_chunked_body_is_joined_and_refused_413_once_past_the_bound() -> None:
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    [request] = _requests(_feed(chunked + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", body_bytes_max=5))
    assert request.body == b"abcde"
    reader = _feed(chunked, b"3\r\nabc\r\n", b"3\r\nde", b"f", body_bytes_max=5)
    assert _error(reader) == 413


def test_expect_100_continue_is_wanted_until_the_body_arrives() -> None:
    reader = _feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert reader.continue_wanted and reader.phase == BODY
    reader.feed(b"ok")
    assert not reader.continue_wanted and [r.body for r in _requests(reader)] == [b"ok"]
    # With its body in the same bytes, or over HTTP/1.0, nothing is wanted.
    reader = _feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
    assert not reader.continue_wanted
    reader = _feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not reader.continue_wanted


def test_the_phase_says_what_the_session_waits_for() -> None:
    reader = RequestReader()
    assert reader.phase == IDLE
    reader.feed(b"\r\n")  # blank lines between requests are not a request
    assert reader.phase == IDLE
    reader.feed(b"POST / HT")
    assert reader.phase == HEAD
    reader.feed(b"TP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert reader.phase == BODY
    reader.feed(b"cd")
    assert reader.phase == IDLE and len(reader.events) == 1
