"""A frontend process: `python -m charter.enclave_app.frontend_process --fd N`.

Started by the ordering process (`enclave_app/frontend_pool.py`) when `NodeConfig.frontends`
is 1 or more, as a fresh interpreter holding one end of a socketpair (`--fd`). It terminates
TLS and parses HTTP for the client sockets the ordering process passes it
(`http_server.HttpServer`, with the limits of the `Configure` frame) and sends each request
to the ordering process as one `Request` frame, awaiting its `Answer`. It holds the node's
TLS certificate and key and the client CA bundle (`Tls` frames), nothing else: no ledger
secret, no service key, no state. When the ordering process goes away (the link's EOF) it
writes the answers it already has, then exits at once: its sessions drop as they would with
the enclave process, and no frontend outlives its node. (It does not answer 503 meanwhile:
to a client, a node whose ordering process is gone is a node that is gone.)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

from charter.enclave_app import frontend_link as fl
from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.http_server import HttpServer, PlainRequest, SessionLimits
from charter.enclave_app.interface.logs import limit_repeats
from charter.enclave_app.loop import run_loop
from charter.enclave_app.tls import server_context

LOG = logging.getLogger("enclave.frontend")

# How often the open-session count is reported when it changed (the ordering process places
# new sessions by it; a report also goes out with every session received).
LOAD_REPORT_S = 0.2
# After the link's EOF: time for answers already received to be written, then exit.
EXIT_AFTER_EOF_S = 0.2


class Frontend:
    """One frontend's state: its link, its HTTP server, its TLS context, requests in flight."""

    def __init__(self, sock: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.link = fl.Link(
            sock,
            name="frontend",
            accepts=fl.TO_FRONTEND,
            on_frame=self.on_frame,
            on_closed=self.on_closed,
        )
        self.server: HttpServer | None = None
        self.context: ssl.SSLContext | None = None
        self.pending: dict[int, asyncio.Future[HttpResponse]] = {}
        self.request_ids = itertools.count(1)
        self.cert_ids: dict[bytes, int] = {}
        self.sessions_received = 0
        self.reported_open = -1
        self.closed = asyncio.Event()
        # What a request arriving after the EOF waits for: nothing, until the process exits.
        self.never: asyncio.Future[HttpResponse] = self.loop.create_future()

    def on_frame(self, frame: fl.LinkFrame, fds: list[int]) -> None:
        if isinstance(frame, fl.Answer):
            future = self.pending.pop(frame.request_id, None)
            if future is not None and not future.done():
                future.set_result(
                    HttpResponse(frame.status, frame.body, dict(frame.headers), frame.content_type)
                )
        elif isinstance(frame, fl.Session):
            self.sessions_received = frame.seq
            sock = socket.socket(fileno=fds[0])
            if self.server is None or self.context is None:
                LOG.warning("event=session_before_configuration")
                sock.close()
            else:
                self.server.serve(sock, self.context)
            self.report_load()
        elif isinstance(frame, fl.Tls):
            self.context = server_context(frame.cert_chain_pem, frame.key_pem, frame.client_cas_pem)
            LOG.info("event=tls_context_set generation=%d", frame.generation)
        elif isinstance(frame, fl.Configure):
            if self.server is not None:
                LOG.warning("event=configure_again")  # the limits of the first one hold
                return
            self.server = HttpServer(self.handle, SessionLimits(*frame.limits), loop=self.loop)

    def on_closed(self, reason: str) -> None:
        LOG.info("event=link_closed reason=%s", reason)
        for future in self.pending.values():
            if not future.done():
                future.cancel()
        self.pending.clear()
        self.closed.set()

    def report_load(self) -> None:
        if self.server is None:
            return
        open_sessions = self.server.open_sessions
        self.reported_open = open_sessions
        self.link.send(fl.Load(open_sessions, self.sessions_received))

    async def report_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(LOAD_REPORT_S)
            if self.server is not None and self.server.open_sessions != self.reported_open:
                self.report_load()

    def handle(self, request: PlainRequest) -> HttpResponse | asyncio.Future[HttpResponse]:
        """The HTTP server's handler: the request to the ordering process; the future of its
        answer (set when the answer comes back: no task per request)."""
        if self.link.closed:
            return self.never
        headers = list(request.headers.items())
        if len(headers) > fl.HEADERS_MAX:
            return error_response("Too many header lines", code="RequestHeaderTooLarge")
        cert_id, first_use = 0, None
        if request.peer_der:
            known = self.cert_ids.get(request.peer_der)
            if known is None:
                if len(self.cert_ids) >= fl.CERT_IDS_MAX:
                    self.cert_ids.clear()
                    self.link.send(fl.ForgetCerts())
                known = len(self.cert_ids) + 1
                self.cert_ids[request.peer_der] = known
                first_use = request.peer_der
            cert_id = known
        request_id = next(self.request_ids)
        sent = self.link.send(
            fl.Request(
                request_id,
                cert_id,
                first_use,
                request.method,
                request.path,
                request.query_string,
                headers,
                request.body,
                request.source,
            )
        )
        if not sent:  # a field beyond the link's limits, or the link is gone (logged)
            if first_use is not None:
                del self.cert_ids[first_use]  # the ordering process never learned it
            return error_response("Request could not be passed on", code="InternalError")
        # Removed from `pending` when its answer arrives, or all at once when the link
        # closes (an answer that never comes means the ordering process is gone).
        future: asyncio.Future[HttpResponse] = self.loop.create_future()
        self.pending[request_id] = future
        return future


async def serve(fd: int) -> int:
    frontend = Frontend(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd))
    reporter = asyncio.get_running_loop().create_task(frontend.report_loop())
    await frontend.closed.wait()
    reporter.cancel()
    await asyncio.sleep(EXIT_AFTER_EOF_S)
    # At once, from inside the loop: no graceful close of the sessions, no cancelled handler
    # answering anything (the ordering process is gone, as if this process had been too).
    logging.shutdown()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="charter.enclave_app.frontend_process")
    parser.add_argument("--fd", type=int, required=True, help="this frontend's end of the link")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s frontend %(levelname)s %(name)s %(message)s",
    )
    limit_repeats()
    # A Ctrl-C in the operator's terminal reaches the whole process group: the ordering
    # process decides when frontends stop (they exit when it closes the link).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> Any:
        return await serve(args.fd)

    result: int = run_loop(run())
    return result


if __name__ == "__main__":
    sys.exit(main())
