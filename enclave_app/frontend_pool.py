"""The ordering process's side of `NodeConfig.frontends` (K ≥ 1): K frontend processes.

`FrontendPool` spawns K fresh interpreters (`python -m charter.enclave_app.frontend_process
--fd N`, never a fork of this running process) once the node's TLS identity exists, each
with one end of its own socketpair (`frontend_link.Link`). Each client socket the host hands
the enclave goes on (SCM_RIGHTS) to the frontend with the fewest open sessions, preceded by
the TLS bundle (certificate chain, key, client CAs) whenever `ServerTls` was rebuilt since
that frontend last got one: new sessions take the new context, as in one process.

Each `Request` frame becomes a `PlainRequest` for the runtime's dispatch (routing, auth,
body validation, handler, commit, forwarding, console, operator files), and its response
goes back as an `Answer`, the turn's frames in one `sendmsg` per frontend.

Session caps stay per node: a socket is closed before TLS once the frontends' open sessions
(as last reported, plus sockets sent since) reach `max_open_sessions_hard`, and each
frontend applies the soft and hard caps divided by K (rounded up).

A frontend that exits is logged and started again (its sessions drop; answers to requests
it had sent are dropped), after a pause that grows while it keeps dying at once. `stop()`
closes the links (frontends exit on EOF) and waits for them; one that does not exit in
time is killed. If this process dies, the kernel closes its ends and the frontends exit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from charter.enclave_app import frontend_link as fl
from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.http_server import PlainRequest, SessionLimits
from charter.enclave_app.interface.logs import REPEATS_LIMITED
from charter.enclave_app.tls import ServerTls

LOG = logging.getLogger("enclave.frontends")

FRONTENDS_MAX = 64
STOP_WAIT_S = 3.0
RESTART_PAUSE_MIN_S = 0.1
RESTART_PAUSE_MAX_S = 5.0
# A frontend that lived this long before exiting is restarted after the shortest pause.
STABLE_LIFE_S = 10.0

# What the runtime does with a request: an answer at once, or one to await.
Dispatch = Callable[[PlainRequest], HttpResponse | Awaitable[HttpResponse]]


def frontend_limits(limits: SessionLimits, count: int) -> SessionLimits:
    """Each of `count` frontends' share of the node's session caps (rounded up)."""
    assert 1 <= count <= FRONTENDS_MAX
    soft = math.ceil(limits.max_open_sessions_soft / count)
    hard = max(soft, math.ceil(limits.max_open_sessions_hard / count))
    return SessionLimits(
        max_open_sessions_soft=soft,
        max_open_sessions_hard=hard,
        idle_timeout_s=limits.idle_timeout_s,
        header_timeout_s=limits.header_timeout_s,
        read_timeout_s=limits.read_timeout_s,
    )


class _Frontend:
    """One incarnation of frontend `index` (a restart makes a new one)."""

    def __init__(self, index: int, restarts: int) -> None:
        self.index = index
        self.restarts = restarts
        self.link: fl.Link | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.started_s = time.monotonic()
        self.tls_generation = -1
        self.sessions_sent = 0
        self.sessions_received = 0
        self.reported_open = 0
        self.certs: dict[int, bytes] = {}

    @property
    def open_sessions(self) -> int:
        """Sessions it reported open, plus those sent that it had not received then."""
        return self.reported_open + self.sessions_sent - self.sessions_received


class FrontendPool:
    def __init__(
        self,
        count: int,
        limits: SessionLimits,
        dispatch: Dispatch,
        metrics: dict[str, int],
    ) -> None:
        assert 1 <= count <= FRONTENDS_MAX
        self.count = count
        self.node_limits = limits
        self.limits = frontend_limits(limits, count)
        self.dispatch = dispatch
        self.metrics = metrics
        self.frontends: list[_Frontend] = []
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.metrics["frontends"] = count

    @property
    def started(self) -> bool:
        return bool(self.frontends)

    def pids(self) -> list[int]:
        return [f.process.pid for f in self.frontends if f.process is not None]

    # ------------------------------------------------------------------ processes
    def start(self) -> None:
        assert not self.frontends
        for index in range(self.count):
            self.frontends.append(self._spawn(index, restarts=0))
        LOG.info("event=frontends_started count=%d", self.count)

    def _spawn(self, index: int, *, restarts: int, pause_s: float = 0.0) -> _Frontend:
        fe = _Frontend(index, restarts)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fe.link = fl.Link(
            ours,
            name=f"frontend{index}",
            accepts=fl.TO_ORDERER,
            on_frame=lambda frame, fds: self._on_frame(fe, frame, fds),
            on_closed=lambda reason: LOG.info(
                "event=frontend_link_closed index=%d reason=%s", index, reason
            ),
            # A burst of new sessions waits here while the frontend is busy with handshakes,
            # instead of being closed: bounded by the node's hard cap, checked before.
            fds_queued_max=max(fl.FDS_QUEUED_MAX, self.node_limits.max_open_sessions_hard),
        )
        limits = self.limits
        fe.link.send(
            fl.Configure(
                (
                    limits.max_open_sessions_soft,
                    limits.max_open_sessions_hard,
                    limits.idle_timeout_s,
                    limits.header_timeout_s,
                    limits.read_timeout_s,
                )
            )
        )
        self._publish(fe)
        task = self.loop.create_task(self._run(fe, theirs, pause_s))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return fe

    async def _run(self, fe: _Frontend, theirs: socket.socket, pause_s: float) -> None:
        try:
            if pause_s:
                await asyncio.sleep(pause_s)
            if self.stopping:
                return
            fd = theirs.fileno()
            fe.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "charter.enclave_app.frontend_process",
                "--fd",
                str(fd),
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            LOG.error("event=frontend_spawn_failed index=%d error=%s", fe.index, exc)
            code: int | None = None
        else:
            fe.started_s = time.monotonic()
            LOG.info("event=frontend_spawned index=%d pid=%d", fe.index, fe.process.pid)
            code = await fe.process.wait()
        finally:
            theirs.close()  # the child has its copy (or there is no child)
        if fe.link is not None:
            fe.link.close("the frontend exited")
        if self.stopping:
            return
        lived_s = time.monotonic() - fe.started_s
        LOG.warning(
            "event=frontend_exited index=%d code=%s lived_s=%.1f restarting=yes",
            fe.index,
            code,
            lived_s,
        )
        if lived_s >= STABLE_LIFE_S:
            pause = RESTART_PAUSE_MIN_S
        else:
            pause = min(RESTART_PAUSE_MAX_S, max(RESTART_PAUSE_MIN_S, 2 * pause_s))
        self.frontends[fe.index] = self._spawn(fe.index, restarts=fe.restarts + 1, pause_s=pause)

    async def stop(self) -> None:
        """Close every link (frontends exit on EOF), wait for them, kill laggards."""
        self.stopping = True
        for fe in self.frontends:
            if fe.link is not None:
                fe.link.close("the node is stopping", flush=True)  # answers already made
        processes = [f.process for f in self.frontends if f.process is not None]
        waits = [self.loop.create_task(p.wait()) for p in processes if p.returncode is None]
        if waits:
            _, late = await asyncio.wait(waits, timeout=STOP_WAIT_S)
            for process in processes:
                if process.returncode is None:
                    LOG.warning("event=frontend_killed pid=%d", process.pid)
                    process.kill()
            if late:
                await asyncio.wait(late, timeout=STOP_WAIT_S)
        for task in list(self.tasks):
            task.cancel()

    # ------------------------------------------------------------------ sessions
    def serve(self, sock: socket.socket, tls: ServerTls) -> None:
        """Pass one accepted client socket to the least loaded frontend (or refuse it)."""
        if not self.frontends:
            self.start()
        live = [f for f in self.frontends if f.link is not None and not f.link.closed]
        # One being restarted (after a pause) takes sockets only if no other one can.
        running = [f for f in live if f.process is not None and f.process.returncode is None]
        live = running or live
        total = sum(f.open_sessions for f in self.frontends)
        if not live or total >= self.node_limits.max_open_sessions_hard:
            LOG.warning(
                "event=session_refused open=%d frontends_up=%d",
                total,
                len(live),
                extra=REPEATS_LIMITED,
            )
            sock.close()
            return
        fe = min(live, key=lambda f: f.open_sessions)
        link = fe.link
        assert link is not None
        if fe.tls_generation != tls.generation:
            chain, key, cas = tls.bundle()
            if not link.send(fl.Tls(tls.generation, chain, key, cas)):
                sock.close()
                return
            fe.tls_generation = tls.generation
        fe.sessions_sent += 1
        if not link.send(fl.Session(fe.sessions_sent), [sock.fileno()]):
            fe.sessions_sent -= 1
        sock.close()  # the link holds a duplicate until it is sent
        self._publish(fe)

    # ------------------------------------------------------------------ requests
    def _on_frame(self, fe: _Frontend, frame: fl.LinkFrame, fds: list[int]) -> None:
        del fds  # no frame sent this way carries any
        if isinstance(frame, fl.Request):
            self._on_request(fe, frame)
        elif isinstance(frame, fl.Load):
            fe.reported_open = frame.open_sessions
            fe.sessions_received = min(frame.sessions_received, fe.sessions_sent)
            self._publish(fe)
        elif isinstance(frame, fl.ForgetCerts):
            fe.certs.clear()

    def _on_request(self, fe: _Frontend, frame: fl.Request) -> None:
        peer_der = None
        if frame.cert_id:
            if frame.peer_der is not None:
                if len(fe.certs) >= fl.CERT_IDS_MAX and frame.cert_id not in fe.certs:
                    LOG.warning("event=frontend_cert_table_full index=%d", fe.index)
                    fe.certs.clear()
                fe.certs[frame.cert_id] = frame.peer_der
            peer_der = fe.certs.get(frame.cert_id)
            if peer_der is None:
                LOG.warning("event=frontend_unknown_cert_id index=%d", fe.index)
                self._answer(fe, frame.request_id, _internal_error())
                return
        request = PlainRequest(
            frame.method,
            frame.path,
            frame.query_string,
            CIMultiDict(frame.headers),
            frame.body,
            peer_der,
            frame.source,
        )
        try:
            result = self.dispatch(request)
        except Exception as exc:
            LOG.error("event=dispatch_failed error=%s", type(exc).__name__, extra=REPEATS_LIMITED)
            result = _internal_error()
        if isinstance(result, HttpResponse):
            self._answer(fe, frame.request_id, result)
            return
        task = self.loop.create_task(_awaited(result))

        def done(task: asyncio.Task[HttpResponse]) -> None:
            if not task.cancelled():
                self._answer(fe, frame.request_id, task.result())

        task.add_done_callback(done)

    def _answer(self, fe: _Frontend, request_id: int, response: HttpResponse) -> None:
        link = fe.link
        if link is None or link.closed:
            return  # the frontend that asked is gone: so is its client's session
        link.send(
            fl.Answer(
                request_id,
                response.status,
                list(response.headers.items()),
                response.body,
                response.content_type,
            )
        )

    def _publish(self, fe: _Frontend) -> None:
        self.metrics[f"frontend_{fe.index}_open_sessions"] = fe.open_sessions
        self.metrics[f"frontend_{fe.index}_restarts"] = fe.restarts


async def _awaited(result: Awaitable[HttpResponse]) -> HttpResponse:
    try:
        return await result
    except Exception as exc:
        LOG.error("event=dispatch_failed error=%s", type(exc).__name__, extra=REPEATS_LIMITED)
        return _internal_error()


def _internal_error() -> HttpResponse:
    return error_response("Internal error", code="InternalError")
