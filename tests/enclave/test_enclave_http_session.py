"""`http_server._Session`, the server's connection protocol, fed bytes on a real event loop
through a transport that records what it is asked to do (no sockets: see
tests/enclave/test_enclave_http_tls.py for the same server over real TLS)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable

import pytest
from http_session_support import limits, ok_handler, open_session, parse_answers, settle

from charter.enclave_app.app import HttpResponse
from charter.enclave_app.http_server import Handler, PlainRequest

# Deadlines in these tests are short; a session must be gone well within this.
ENDED_WITHIN_S = 5.0


async def _until(condition: object, timeout_s: float = ENDED_WITHIN_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def _error_code(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    code: str = doc["error"]["code"]
    return code


async def test_pipelined_requests_are_answered_in_order_one_handler_at_a_time() -> None:
    release = asyncio.Event()
    running = 0
    most_running = 0
    seen: list[str] = []

    async def handler(request: PlainRequest) -> HttpResponse:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        seen.append(request.path)
        if request.path == "/a":
            await release.wait()
        running -= 1
        return HttpResponse(200, request.path.encode(), {}, "text/plain")

    session, transport, _ = open_session(handler)
    session.data_received(
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
    )
    await settle(asyncio.get_running_loop())
    # The later requests wait for the first; their session reads nothing more meanwhile.
    assert seen == ["/a"] and not transport.written and not transport.reading
    release.set()
    await settle(asyncio.get_running_loop())
    answers = parse_answers(bytes(transport.written))
    assert [a.body for a in answers] == [b"/a", b"/b", b"/c"]
    assert most_running == 1 and transport.reading and not transport.closed


async def test_a_request_arriving_while_one_is_handled_waits_for_its_answer() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def handler(request: PlainRequest) -> HttpResponse:
        order.append("start " + request.path)
        if request.path == "/slow":
            await release.wait()
        order.append("end " + request.path)
        return HttpResponse(200, b"", {}, None)

    session, transport, _ = open_session(handler)
    session.data_received(b"GET /slow HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    session.data_received(b"GET /next HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    assert order == ["start /slow"]
    release.set()
    await settle(asyncio.get_running_loop())
    assert order == ["start /slow", "end /slow", "start /next", "end /next"]
    assert [a.status for a in parse_answers(bytes(transport.written))] == [200, 200]


async def test_http10_keep_alive_is_answered_in_kind_and_the_session_stays_open() -> None:
    session, transport, _ = open_session(ok_handler())
    for _ in range(2):
        session.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await settle(asyncio.get_running_loop())
    answers = parse_answers(bytes(transport.written))
    assert [a.headers.get("connection") for a in answers] == ["keep-alive", "keep-alive"]
    assert not transport.closed
    # Without it, HTTP/1.0 gets one answer and the session closes.
    session, transport, _ = open_session(ok_handler())
    session.data_received(b"GET / HTTP/1.0\r\n\r\n")
    await settle(asyncio.get_running_loop())
    [answer] = parse_answers(bytes(transport.written))
    assert answer.headers["connection"] == "close" and transport.closed


async def test_connection_close_is_honoured_after_the_answer() -> None:
    session, transport, lost = open_session(ok_handler())
    session.data_received(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    await settle(asyncio.get_running_loop())
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert transport.closed and lost == [session]


async def test_head_gets_the_headers_and_length_of_the_answer_without_its_body() -> None:
    session, transport, _ = open_session(ok_handler(b"0123456789"))
    session.data_received(b"HEAD /x HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    assert bytes(transport.written).count(b"0123456789") == 1
    head, get = parse_answers(bytes(transport.written), heads=1)
    assert head.headers["content-length"] == "10" and head.body == b""
    assert get.body == b"0123456789"


async def test_a_304_answer_has_no_body_and_keeps_the_session() -> None:
    async def handler(request: PlainRequest) -> HttpResponse:
        assert request.headers.get("If-None-Match") == '"v1"'
        return HttpResponse(304, b"ignored", {"ETag": '"v1"'}, None)

    session, transport, _ = open_session(handler)
    session.data_received(b'GET /c HTTP/1.1\r\nif-none-match: "v1"\r\n\r\n')
    await settle(asyncio.get_running_loop())
    assert bytes(transport.written).endswith(b"\r\n\r\n")
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 304 and "content-length" not in answer.headers
    assert not transport.closed


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    bodies: list[bytes] = []

    async def handler(request: PlainRequest) -> HttpResponse:
        bodies.append(request.body)
        return HttpResponse(200, b"", {}, None)

    session, transport, _ = open_session(handler)
    body = b"x" * 2048  # curl asks for 100-continue over 1 KiB
    session.data_received(
        b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2048\r\n\r\n"
    )
    assert bytes(transport.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
    session.data_received(body)
    await settle(asyncio.get_running_loop())
    assert bodies == [body]
    assert [a.status for a in parse_answers(bytes(transport.written))] == [100, 200]


async def test_a_content_length_past_the_bound_is_refused_without_100_continue() -> None:
    session, transport, _ = open_session(ok_handler())
    session.data_received(
        b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n"
    )
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 413 and _error_code(answer.body) == "RequestTooLarge"
    assert answer.headers["connection"] == "close"


async def test_the_header_deadline_runs_from_the_first_byte_and_trickling_does_not_move_it() -> (
    None
):
    loop = asyncio.get_running_loop()
    session, transport, _ = open_session(ok_handler(), limits(header_s=0.3))
    started = loop.time()
    session.data_received(b"GET / HTTP/1.1\r\n")
    while not transport.written:
        session.data_received(b"X")  # a header that never ends
        await asyncio.sleep(0.05)
        assert loop.time() - started < ENDED_WITHIN_S
    assert loop.time() - started >= 0.3
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 408 and _error_code(answer.body) == "RequestTimeout"
    await _until(lambda: transport.closed)


async def test_a_body_that_does_not_arrive_in_time_is_refused_408() -> None:
    session, transport, _ = open_session(ok_handler(), limits(read_s=0.3))
    session.data_received(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    await _until(lambda: transport.written)
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 408
    await _until(lambda: transport.closed)


async def test_an_idle_session_is_closed_quietly_at_the_idle_timeout() -> None:
    session, transport, lost = open_session(ok_handler(), limits(idle_s=0.2))
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await _until(lambda: lost)  # the transport reports the loss on the next loop turn
    assert transport.closed and not transport.aborted
    assert [a.status for a in parse_answers(bytes(transport.written))] == [200]
    assert lost == [session]


async def test_no_deadline_runs_while_the_node_handles_a_request() -> None:
    async def slow(request: PlainRequest) -> HttpResponse:
        await asyncio.sleep(0.5)
        return HttpResponse(200, b"done", {}, None)

    session, transport, _ = open_session(slow, limits(idle_s=0.1, header_s=0.1, read_s=0.1))
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.05)
    assert session.cut_off_at() is None
    await _until(lambda: transport.written)
    [answer] = parse_answers(bytes(transport.written))
    assert answer.body == b"done"
    # Then the idle deadline runs from the answer.
    assert session.cut_off_at() is not None
    await _until(lambda: transport.closed)


async def test_a_failing_handler_gets_500_and_no_request_byte_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = secrets.token_hex(8)

    async def failing(request: PlainRequest) -> HttpResponse:
        raise ValueError(f"cannot handle {request.path} {request.body!r}")

    caplog.set_level(logging.DEBUG)
    session, transport, _ = open_session(failing)
    session.data_received(
        f"POST /p/{secret} HTTP/1.1\r\nX-S: {secret}\r\nContent-Length: 16\r\n\r\n{secret}".encode()
    )
    await settle(asyncio.get_running_loop())
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 500 and _error_code(answer.body) == "InternalError"
    assert secret not in caplog.text and "ValueError" in caplog.text
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")  # the session has ended: ignored
    await settle(asyncio.get_running_loop())
    assert len(parse_answers(bytes(transport.written))) == 1


async def test_a_handler_header_holding_a_line_break_is_answered_500_not_written() -> None:
    async def injecting(request: PlainRequest) -> HttpResponse:
        return HttpResponse(200, b"", {"Location": "/a\r\nSet-Cookie: x=1"}, None)

    session, transport, _ = open_session(injecting)
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    assert b"Set-Cookie" not in transport.written
    assert [a.status for a in parse_answers(bytes(transport.written))] == [500]


async def test_a_malformed_request_behind_a_good_one_is_refused_after_its_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = secrets.token_hex(8)
    caplog.set_level(logging.DEBUG)
    session, transport, _ = open_session(ok_handler())
    session.data_received(f"GET /a HTTP/1.1\r\n\r\nGET /{secret} HTTX/1.1\r\n\r\n".encode())
    await settle(asyncio.get_running_loop())
    good, bad = parse_answers(bytes(transport.written))
    assert good.status == 200 and bad.status == 400
    assert _error_code(bad.body) == "InvalidInput" and secret.encode() not in transport.written
    assert "event=http_request_refused status=400" in caplog.text
    assert secret not in caplog.text


async def test_after_an_error_answer_input_is_discarded_and_the_session_closes() -> None:
    session, transport, lost = open_session(ok_handler())
    session.data_received(b"BAD\x00 / HTTP/1.1\r\n\r\n")
    [answer] = parse_answers(bytes(transport.written))
    assert answer.status == 400 and answer.headers["connection"] == "close"
    cut_off = session.cut_off_at()
    assert cut_off is not None
    session.data_received(b"GET / HTTP/1.1\r\n\r\n" * 10)  # read and dropped while lingering
    await settle(asyncio.get_running_loop())
    assert len(parse_answers(bytes(transport.written))) == 1
    await _until(lambda: lost)
    assert transport.closed and lost == [session]


async def test_a_full_write_buffer_stops_reading_and_handling_until_it_drains() -> None:
    handled: list[str] = []

    async def handler(request: PlainRequest) -> HttpResponse:
        handled.append(request.path)
        return HttpResponse(200, b"x", {}, None)

    session, transport, _ = open_session(handler)
    session.pause_writing()  # the transport's buffer passed its high-water mark
    assert not transport.reading
    session.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    assert handled == [] and not transport.written
    session.resume_writing()
    await settle(asyncio.get_running_loop())
    assert handled == ["/a", "/b"] and transport.reading
    assert len(parse_answers(bytes(transport.written))) == 2


async def test_a_client_that_ends_its_input_still_gets_the_answer_being_prepared() -> None:
    release = asyncio.Event()

    async def handler(request: PlainRequest) -> HttpResponse:
        await release.wait()
        return HttpResponse(200, b"late", {}, None)

    session, transport, _ = open_session(handler)
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(asyncio.get_running_loop())
    assert session.eof_received() is True  # keep the transport open for the answer
    release.set()
    await settle(asyncio.get_running_loop())
    assert [a.body for a in parse_answers(bytes(transport.written))] == [b"late"]
    assert transport.closed


async def test_answers_given_at_once_are_written_in_order_without_a_task_however_many_are_pipelined() -> (
    None
):
    # More pipelined requests than Python's recursion limit: a session that recursed per
    # answer would fail here; it loops.
    count = 3000
    seen: list[str] = []

    def handler(request: PlainRequest) -> HttpResponse:
        seen.append(request.path)
        return HttpResponse(200, request.path.encode(), {}, "text/plain")

    session, transport, _ = open_session(handler)
    tasks_before = len(asyncio.all_tasks())
    session.data_received(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(count)))
    assert len(asyncio.all_tasks()) == tasks_before  # answered within the call, no task
    answers = parse_answers(bytes(transport.written))
    assert [a.body for a in answers] == [b"/%d" % i for i in range(count)]
    assert len(seen) == count and not transport.closed and not session.busy


async def test_an_answer_given_as_a_future_is_written_when_it_is_set_and_the_next_request_follows() -> (
    None
):
    futures: list[asyncio.Future[HttpResponse]] = []
    loop = asyncio.get_running_loop()

    def handler(request: PlainRequest) -> asyncio.Future[HttpResponse]:
        future: asyncio.Future[HttpResponse] = loop.create_future()
        futures.append(future)
        return future

    session, transport, _ = open_session(handler)
    session.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    await settle(loop)
    assert len(futures) == 1 and not transport.written and session.busy
    futures[0].set_result(HttpResponse(200, b"first", {}, "text/plain"))
    await settle(loop)
    assert len(futures) == 2  # the pipelined request started once the first was answered
    futures[1].set_result(HttpResponse(201, b"second", {}, "text/plain"))
    await settle(loop)
    answers = parse_answers(bytes(transport.written))
    assert [(a.status, a.body) for a in answers] == [(200, b"first"), (201, b"second")]
    assert not session.busy and not transport.closed


async def test_a_failing_handler_or_future_gets_a_500_and_an_aborted_future_is_cancelled() -> None:
    loop = asyncio.get_running_loop()

    async def sole_answer(handler: Handler, then: Callable[[], object] = lambda: None) -> None:
        session, transport, _ = open_session(handler)
        session.data_received(b"GET / HTTP/1.1\r\n\r\n")
        then()
        await settle(loop)
        [answer] = parse_answers(bytes(transport.written))
        assert answer.status == 500 and not session.busy

    def raises(request: PlainRequest) -> HttpResponse:
        raise RuntimeError("handler bug")

    await sole_answer(raises)
    failed: asyncio.Future[HttpResponse] = loop.create_future()
    await sole_answer(
        lambda request: failed, then=lambda: failed.set_exception(RuntimeError("answer failed"))
    )

    pending: asyncio.Future[HttpResponse] = loop.create_future()
    session, transport, _ = open_session(lambda request: pending)
    session.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(loop)
    session.abort()
    await settle(loop)
    assert pending.cancelled() and transport.aborted and not transport.written
