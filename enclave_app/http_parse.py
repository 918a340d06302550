"""HTTP/1.1 request framing for the enclave's server, without I/O: bytes in, requests out.

`RequestReader.feed(data)` runs httptools (MagicStack's binding of llhttp, the parser
uvicorn uses) over the bytes of one session and appends to `RequestReader.events`, in order,
each complete request (`ParsedRequest`) or the status of the error that ends the session
(an `int`: 400, 413, 431 or 505). After an error nothing more is parsed.

llhttp checks the syntax (methods, tokens, header value characters, chunk sizes, conflicting
`Content-Length` and `Transfer-Encoding`) but bounds nothing; these are the bounds, in bytes:

| what | bound | answer past it |
|---|---|---|
| request line (method, target, version) | `REQUEST_LINE_BYTES_MAX` = 8190 | 431 |
| one header line (name and value) | `HEADER_FIELD_BYTES_MAX` = 8190 | 431 |
| request line and all headers | `HEADER_SECTION_BYTES_MAX` = 32 KiB | 431 |
| number of headers | `HEADER_COUNT_MAX` = 100 | 431 |
| body (`Content-Length` or chunked) | `REQUEST_BODY_BYTES_MAX` = 8 MiB | 413 |

httptools buffers a header's name and value until the header ends, so the reader also feeds
it at most `HEADER_SECTION_BYTES_MAX` bytes of an unfinished head (431 past that): memory per
session is bounded even when no header ever ends. A `Content-Length` over the body bound is
refused when the headers end, before any of the body is read; a chunked body as soon as its
chunks pass it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import httptools
from multidict import CIMultiDict

from charter.enclave_app.interface import REQUEST_BODY_BYTES_MAX

# aiohttp's bound on a request line, which `node/messages.py`'s path and query bounds rely on.
REQUEST_LINE_BYTES_MAX: Final = 8190
HEADER_FIELD_BYTES_MAX: Final = 8190
HEADER_SECTION_BYTES_MAX: Final = 32 * 1024
HEADER_COUNT_MAX: Final = 100
# Bytes llhttp does not hand to a callback, per header line (": " and CRLF) and per request
# line (two spaces, "HTTP/1.1" and CRLF): counted so the bounds are on bytes as sent.
_HEADER_LINE_OVERHEAD: Final = 4
_REQUEST_LINE_OVERHEAD: Final = 12

# What `RequestReader.phase` says the session is waiting for.
IDLE: Final = 0  # the first byte of a request
HEAD: Final = 1  # the rest of a request's line and headers
BODY: Final = 2  # the rest of a request's body


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    method: str
    path: str  # as sent: percent-encoded (`App.match` decodes path parameters)
    query_string: str  # as sent, without "?": the app's parse_qsl decodes it
    headers: CIMultiDict[str]
    body: bytes
    http_10: bool  # an HTTP/1.0 request (its keep-alive is answered explicitly)
    keep_alive: bool  # the session may serve another request after this one


# `_refusal` of a reader that stops without an error (after a `Connection: close` request).
_STOP: Final = -1


class _Refused(Exception):
    """Raised in a parser callback to stop parsing (the status is kept on the reader)."""


class RequestReader:
    """The requests in one session's bytes, with the bounds above applied."""

    def __init__(self, body_bytes_max: int = REQUEST_BODY_BYTES_MAX) -> None:
        assert body_bytes_max >= 0
        self.body_bytes_max = body_bytes_max
        # Complete requests and the final error, in the order they arrived; the caller pops
        # them. Bounded by what one `feed` holds: the caller stops reading while it has some.
        self.events: deque[ParsedRequest | int] = deque()
        self.phase = IDLE
        # A request asked `Expect: 100-continue` and its body has not all arrived.
        self.continue_wanted = False
        self.finished = False  # an error, or an upgrade: nothing more is parsed
        self._parser = httptools.HttpRequestParser(self)
        self._refusal = 0
        self._head_fed = 0  # bytes fed while a head was unfinished
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._header_list: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._body_parts: list[bytes] = []
        self._body_bytes = 0
        self._http_10 = False
        self._keep_alive = True

    def feed(self, data: bytes) -> None:
        """Parse `data`, the next bytes of the session; results go to `events`."""
        parser = self._parser
        while data and not self.finished:
            if self.phase == BODY:
                piece, data = data, b""
            else:
                # httptools holds an unfinished header line: feed it no more than the bound.
                room = HEADER_SECTION_BYTES_MAX - self._head_fed
                if room <= 0:
                    self._fail(431)
                    return
                if len(data) <= room:
                    piece, data = data, b""
                else:
                    piece, data = data[:room], data[room:]
                self._head_fed += len(piece)
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                # `Upgrade:` or CONNECT: served as a plain request, then the session ends
                # (nothing is upgraded, and the bytes after it are not HTTP/1.1).
                self._end_after_last_request()
            except httptools.HttpParserError:
                if self._refusal == _STOP:
                    self.finished = True
                else:
                    self._fail(self._refusal or 400)

    def _fail(self, status: int) -> None:
        self.events.append(status)
        self.finished = True
        self.continue_wanted = False

    def _end_after_last_request(self) -> None:
        self.finished = True
        last = self.events[-1] if self.events else None
        if isinstance(last, ParsedRequest) and last.keep_alive:
            self.events[-1] = ParsedRequest(
                last.method,
                last.path,
                last.query_string,
                last.headers,
                last.body,
                last.http_10,
                keep_alive=False,
            )

    def _refuse(self, status: int) -> None:
        self._refusal = status
        raise _Refused

    # ------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self.phase = HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url  # llhttp hands the target over in pieces when it spans feeds
        if len(self._url) > REQUEST_LINE_BYTES_MAX:
            self._refuse(431)  # the exact bound (with method and version) once it ends

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _HEADER_LINE_OVERHEAD
        self._head_bytes += size
        if size > HEADER_FIELD_BYTES_MAX or self._head_bytes > HEADER_SECTION_BYTES_MAX:
            self._refuse(431)
        if len(self._header_list) >= HEADER_COUNT_MAX:
            self._refuse(431)
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = parser.get_method()
        line_bytes = len(method) + len(self._url) + _REQUEST_LINE_OVERHEAD
        if line_bytes > REQUEST_LINE_BYTES_MAX:
            self._refuse(431)
        if self._head_bytes + line_bytes > HEADER_SECTION_BYTES_MAX:
            self._refuse(431)
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse(505)  # HTTP/0.9 (a request line without a version), HTTP/2.0, …
        self._http_10 = version == "1.0"
        headers = self._headers = CIMultiDict(self._header_list)
        # Decided here: llhttp forgets the message's flags once it is complete.
        connection = headers.get("connection")
        if connection is None:
            self._keep_alive = not self._http_10
        else:
            tokens = connection.lower()
            if self._http_10:
                self._keep_alive = "keep-alive" in _tokens(tokens)
            else:
                self._keep_alive = "close" not in _tokens(tokens)
        length = headers.get("content-length")
        if length is not None and int(length) > self.body_bytes_max:  # llhttp checked digits
            self._refuse(413)
        if self._url[:1] != b"/" and self._url != b"*":
            try:
                url = httptools.parse_url(self._url)  # absolute form: "http://host/path?q"
            except httptools.HttpParserInvalidURLError:
                self._refuse(400)
            self._path = (url.path or b"/").decode("latin-1")
            self._query = (url.query or b"").decode("latin-1")
        else:
            path, _, query = self._url.partition(b"?")
            self._path = path.partition(b"#")[0].decode("latin-1")
            self._query = query.partition(b"#")[0].decode("latin-1")
        self._head_fed = 0
        self.phase = BODY
        expect = headers.get("expect")
        if expect is not None and not self._http_10 and expect.lower() == "100-continue":
            self.continue_wanted = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.body_bytes_max:
            self._refuse(413)  # a chunked body past the bound, before the rest is read
        self._body_parts.append(body)

    def on_message_complete(self) -> None:
        parts = self._body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self._parser.get_method().decode("ascii")
        self.events.append(
            ParsedRequest(
                method,
                self._path,
                self._query,
                self._headers,
                body,
                self._http_10,
                self._keep_alive,
            )
        )
        self.phase = IDLE
        self.continue_wanted = False
        if not self._keep_alive:
            # Bytes after a request that ends the session are not parsed.
            self._refuse(_STOP)
        self._reset_message()


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",")]
