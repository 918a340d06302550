"""The enclave process: `python -m charter.enclave_app.main --control-fd N` (started by the host).

This is the thin runtime loop around `Node`: it reads host frames from the control channel,
serves the client sockets the host passes in (TLS terminates here, with aiohttp), and sends
whatever frames the node produced back to the host after every event.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import socket
import ssl
import sys
import traceback
from collections.abc import Awaitable
from typing import Any

from charter.enclave_app import (
    gc_pauses,
    jwt_refresh,
    node_endpoints,
    operator_files,
)
from charter.enclave_app import interface as itf
from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.attestation import UnapprovedCode
from charter.enclave_app.console import Console
from charter.enclave_app.deadline import DeadlineTimer
from charter.enclave_app.errors import AppLoadError, StartRefused
from charter.enclave_app.frontend_pool import FrontendPool
from charter.enclave_app.http_server import HttpServer, PlainRequest, SessionLimits
from charter.enclave_app.identity import IdentityError
from charter.enclave_app.interface.logs import REPEATS_LIMITED, limit_repeats
from charter.enclave_app.loop import run_loop
from charter.enclave_app.node import TXID_HEADER, Forwarded, Node
from charter.enclave_app.operator_files import SNAPSHOT_NAME_HEADER
from charter.enclave_app.platform import PlatformError
from charter.enclave_app.snapshot_fork import ForkSnapshotEncoder, SnapshotEncodeError
from charter.enclave_app.snp_platform import SnpPlatform, obtain_endorsements
from charter.enclave_app.startup import (
    genesis_constitution,
    include_governance,
    initial_members,
    load_app,
    make_platform,
)
from charter.ledger.errors import LedgerError
from charter.ledger.snapshot import parse_snapshot_file_name

LOG = logging.getLogger("enclave")

READ_BATCH_ENTRIES = 10_000
WRITE_BATCH_BYTES_MAX = 16 * 1024 * 1024
# Node-to-node frames are shed (consensus resends) while the host is this far behind.
N2N_BACKLOG_BYTES_MAX = 16 * 1024 * 1024
JOIN_POLL_S = 0.5
FORWARD_TIMEOUT_S = 5.0
# A forwarded write is answered once this backup has applied it too, so the client's
# next read here sees its own write ("read your writes" through a backup).
LOCAL_APPLY_WAIT_S = 2.0
# Forwarded writes waiting at once for this backup to apply them (more answer at once).
APPLIED_WAITERS_MAX = 10_000
RETIRED_LINGER_S = 2.0
# Client sockets received while the node is starting wait for it, within these bounds.
HELD_SOCKETS_MAX = 256
HELD_SOCKET_MAX_S = 30.0


class Runtime:
    """Owns the control channel, the HTTP server and the node."""

    def __init__(self, channel: itf.ControlChannel) -> None:
        self.channel = channel
        self.node: Node | None = None
        self.server: HttpServer | None = None
        # NodeConfig.frontends >= 1: the processes that serve TLS and HTTP for this one.
        self.frontends: FrontendPool | None = None
        self.pending_reads: dict[int, asyncio.Future[Any]] = {}
        self.request_ids = itertools.count(1)
        self.stopping = asyncio.Event()
        self.connections = 0
        self.forwarded: dict[int, asyncio.Future[HttpResponse]] = {}
        # (seqno, id, future) of forwarded writes waiting to be applied here, a min-heap.
        self.applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self.waiter_ids = itertools.count(1)
        self._flush_scheduled = False
        self.n2n_dropped = 0
        # (time received, socket) of clients waiting for the node to be able to serve them
        self.held_sockets: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self.console: Console | None = None
        # Tells the node when its next deadline (a signature) comes between the host's ticks.
        self.deadline: DeadlineTimer | None = None
        # Encodes the node's snapshots in a forked child, off this loop.
        self.snapshot_encoder: ForkSnapshotEncoder | None = None

    # ------------------------------------------------------------------ frames to the host
    def flush(self) -> None:
        """End the turn: the node settles what the turn's events made due, then its frames
        go to the host (`send_outbox`)."""
        self._flush_scheduled = False
        node = self.node
        if node is None:
            return
        # Ready/Advance once per turn: every write served this turn goes out together.
        node.end_turn()
        self._wake_applied()
        if self.deadline is not None:
            self.deadline.arm(node.next_deadline_ms())
        self.send_outbox()

    def send_outbox(self) -> None:
        """Send the frames the node holds now, in order, adjacent ledger writes merged into
        one frame (`flush` at the end of a turn; the node's `hand_off` in the middle of one).

        A frame with ledger writes is never dropped: the host would see a gap and stop the
        node, and the writes may already be answered 200. The node refuses new writes while
        the host is behind (`Node.host_backlog_bytes`), so this queue stays bounded. Only
        node-to-node frames give way when the host is behind: consensus sends them again.
        """
        node = self.node
        if node is None or not node.outbox:
            return
        frames, node.outbox = node.outbox, []
        node.outbox_write_bytes = 0
        batch: list[tuple[int, bytes]] = []
        batch_bytes = 0
        # What the host has not taken yet, before this turn's frames join it (they are held
        # back until the end of the turn, so they would count themselves otherwise).
        host_backlog_bytes = self.channel.outgoing_bytes
        # One `sendmsg` (and one wake-up of the host) for the whole turn, not one per frame.
        with self.channel.held():
            try:
                for frame in frames:
                    if isinstance(frame, itf.WriteEntries):
                        for seqno, raw in frame.entries:
                            if batch and batch_bytes + len(raw) > WRITE_BATCH_BYTES_MAX:
                                self.channel.send(itf.WriteEntries(batch))
                                batch, batch_bytes = [], 0
                            batch.append((seqno, raw))
                            batch_bytes += len(raw)
                        continue
                    if batch:
                        self.channel.send(itf.WriteEntries(batch))
                        batch, batch_bytes = [], 0
                    if (
                        isinstance(frame, itf.SendToNode)
                        and host_backlog_bytes > N2N_BACKLOG_BYTES_MAX
                    ):
                        self.n2n_dropped += 1
                        if self.n2n_dropped % 1000 == 1:
                            LOG.warning("event=n2n_frame_shed dropped=%d", self.n2n_dropped)
                        continue
                    self.channel.send(frame)
                if batch:
                    self.channel.send(itf.WriteEntries(batch))
            except itf.InterfaceError as exc:
                # Carrying on would leave a hole in the host's ledger: stop instead.
                self.fatal(f"cannot send to the host: {exc}")

    def _on_deadline(self, now_ms: int) -> None:
        """The node's deadline came before the host's next tick: act on it now."""
        if self.node is not None:
            self.node.deadline_reached(now_ms)
            self.schedule_flush()

    def _snapshot_encoded(self, seqno: int, entry: bytes) -> None:
        """The forked child's snapshot entry: the node records its evidence (primary)."""
        if self.node is not None:
            self.node.snapshot_encoded(seqno, entry)
            self.schedule_flush()

    def _snapshot_encode_failed(self, seqno: int, error: SnapshotEncodeError) -> None:
        if self.node is not None:
            self.node.snapshot_encode_failed(seqno, f"{error.code}: {error.message}")
            self.schedule_flush()

    def schedule_flush(self) -> None:
        """Settle and flush once per event-loop turn (scheduled by the turn's first event):
        requests served in one turn share one Ready, one AppendEntries per peer and one
        write frame to the host."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def fatal(self, reason: str) -> None:
        LOG.error("event=fatal reason=%s", reason)
        with contextlib.suppress(itf.InterfaceError):
            self.channel.send(itf.Fatal(reason[:1000]))
        self.stopping.set()

    # ------------------------------------------------------------------ start
    async def start(self, frame: itf.Start) -> None:
        config = itf.NodeConfig.model_validate(frame.config)
        limits = SessionLimits.from_config(config.rpc_interface)
        if config.frontends == 0:
            self.server = HttpServer(self.dispatch_now, limits, loop=asyncio.get_running_loop())
        platform = make_platform(config)
        if isinstance(platform, SnpPlatform):
            servers = len(config.snp.endorsements_servers)
            await obtain_endorsements(platform, servers, self._fetch_endorsements)
        app = load_app(config.app)
        self.snapshot_encoder = ForkSnapshotEncoder(
            asyncio.get_running_loop(), self._snapshot_encoded, self._snapshot_encode_failed
        )
        node = Node(config, platform, app, extra_apps=(), snapshot_encoder=self.snapshot_encoder)
        self.node = node
        node.core.hand_off = self.send_outbox
        self.deadline = DeadlineTimer(asyncio.get_running_loop(), self._on_deadline)
        if config.frontends > 0:
            self.frontends = FrontendPool(config.frontends, limits, self.dispatch_now, node.metrics)
        node.host_backlog_bytes = lambda: self.channel.outgoing_bytes + node.outbox_write_bytes
        self.console = Console(config.console)
        node.on_forward_response = self._forward_answered
        node.routes.include(node_endpoints.build(node))
        include_governance(node)
        self.jwt_refresh = jwt_refresh.start(node, config.jwt, self.schedule_flush)
        if frame.sealed is not None:
            node.resume(frame.sealed)
            rejoin = node.identity is not None and not node.identity.ledger_secrets
            if not rejoin and frame.ledger_last_seqno == 0 and config.start.join is not None:
                # Trusted, then stopped before any entry or snapshot reached its disk: it
                # holds none of the service's state (no peers, no governance), so it joins
                # again as itself and the answer brings it all (the seeded simulator found
                # it refused instead, "governance no longer admits this code").
                rejoin = (await self._request(itf.ReadLatestSnapshot)).data is None
            if rejoin:
                # Restarted before governance trusted it: join again as itself, keeping
                # the entries it already acknowledged as a learner.
                node.resume_joining()
                join = config.start.join
                await self._replay_own_ledger(
                    frame.ledger_last_seqno,
                    learner=True,
                    service_cert_pem=join.service_cert.read_text() if join else None,
                )
                node.resumed_joining()
                self.flush()
                asyncio.get_running_loop().create_task(self._join(config))
                return
            try:
                await self._replay_own_ledger(frame.ledger_last_seqno)
            except IdentityError as exc:
                if config.start.mode != "recover":
                    raise
                # Stopped before the members' shares gave it the old ledger secrets: what it
                # sealed cannot read the ledger it was recovering; the old copy is untouched.
                raise StartRefused(
                    "this recovery node was stopped before its recovery completed (its sealed "
                    f"state cannot read the old ledger: {exc}); it cannot be resumed: start "
                    "the recovery again from the old ledger copy in a new directory "
                    "(charter recovery start --ledger OLD --dir NEW)"
                ) from None
            node.resumed()
            self._serve_held()
        elif config.start.mode == "join":
            node.start_joining()
            await self._local_join_snapshot(config)
            self.flush()
            asyncio.get_running_loop().create_task(self._join(config))
            return
        elif config.start.mode == "start":
            if frame.ledger_last_seqno > 0:
                raise RuntimeError(
                    "the ledger directory holds a ledger but no sealed state was found: "
                    "refusing to start a new network over it"
                )
            node.start_new_network(initial_members(config), genesis_constitution(config))
        else:
            await self._recover(config, frame.ledger_last_seqno)
        self.flush()
        info: dict[str, Any] = {"service_status": node.service_status()}
        if node.recovery is not None:
            info["recovery_target_seqno"] = node.recovery.recovery_target_seqno
            if node.recovery.stop is not None:
                info["recovery_replay_stopped"] = {
                    "seqno": node.recovery.stop.seqno,
                    "reason": node.recovery.stop.reason,
                }
        self.channel.send(itf.Started(node.node_id, node.state, info))

    async def _recover(self, config: itf.NodeConfig, last_seqno: int) -> None:
        """Start mode `recover`: replay and verify the old ledger's public domains, then
        start the new service on it (see `node/recovery.py`)."""
        node = self.node
        assert node is not None and config.start.previous_service_identity is not None
        if last_seqno == 0:
            raise RuntimeError(
                "mode 'recover' needs a copy of the old ledger in the ledger directory "
                f"({config.ledger_dir}), which holds none"
            )
        node.start_recovery(config.start.previous_service_identity.read_text())
        next_seqno = 1
        while next_seqno <= last_seqno:
            to = min(last_seqno, next_seqno + READ_BATCH_ENTRIES - 1)
            reply = await self._request(itf.ReadEntries, next_seqno, to)
            if reply.first_seqno != next_seqno or not reply.entries:
                break  # what the host cannot read ends the copy: cut at the last signature
            for raw in reply.entries:
                node.replay_public(raw)
            next_seqno += len(reply.entries)
        node.public_ledger_replayed()
        self._serve_held()

    async def _local_join_snapshot(self, config: itf.NodeConfig) -> None:
        """A snapshot the operator put in a fresh joiner's snapshots directory: checked now
        against the pinned service certificate; one that does not verify stops the node,
        naming the file and why (it is never started from)."""
        assert self.node is not None and config.start.join is not None
        found = await self._request(itf.ReadLatestSnapshot)
        cert_pem = config.start.join.service_cert.read_text()
        if found.data is None:
            if config.start.join.fetch_recent_snapshot:
                await self._fetch_join_snapshot(config, cert_pem)
            return
        name = found.name or "snapshot"
        try:
            self.node.use_local_join_snapshot(found.data, name, cert_pem)
        except LedgerError as exc:
            raise RuntimeError(
                f"refusing the snapshot {name} in {config.snapshots_dir}: {exc}"
            ) from None

    async def _fetch_join_snapshot(self, config: itf.NodeConfig, cert_pem: str) -> None:
        """`start.join.fetch_recent_snapshot`: the target's latest committed snapshot (any
        trusted node serves its own), used only if it verifies; else the join goes on
        without it, logged (the join answer may still carry one)."""
        import aiohttp

        assert self.node is not None and config.start.join is not None
        target = config.start.join.target
        ctx = ssl.create_default_context(cafile=str(config.start.join.service_cert))
        ctx.check_hostname = False  # the service cert is the only trust anchor we accept
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ctx),
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as session,
                session.get(f"https://{target}/node/snapshot") as response,
            ):
                name = response.headers.get(SNAPSHOT_NAME_HEADER, "")
                data = await response.content.read(itf.SNAPSHOT_READ_BYTES_MAX + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            LOG.info("event=snapshot_fetch_failed target=%s error=%s", target, type(exc).__name__)
            return
        if status != 200 or len(data) > itf.SNAPSHOT_READ_BYTES_MAX:
            LOG.info("event=snapshot_fetch_failed target=%s status=%d", target, status)
            return
        parsed = parse_snapshot_file_name(name)
        if parsed is None or not parsed[2]:
            LOG.error("event=snapshot_refused target=%s reason=unnamed or misnamed", target)
            return
        try:
            self.node.use_local_join_snapshot(data, name, cert_pem)
        except LedgerError as exc:
            LOG.error(
                "event=snapshot_refused file=%s target=%s reason=%s fallback=join answer",
                name,
                target,
                exc,
            )

    async def _join(self, config: itf.NodeConfig) -> None:
        """Ask the target node to join until governance trusts this node."""
        import aiohttp

        node = self.node
        assert node is not None and config.start.join is not None
        target = config.start.join.target
        ctx = ssl.create_default_context(cafile=str(config.start.join.service_cert))
        ctx.check_hostname = False  # the service cert is the only trust anchor we accept
        url = f"https://{target}/node/join"
        started = False
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            while not self.stopping.is_set():
                try:
                    async with session.post(url, json=node.join_request_body()) as response:
                        doc = await response.json(content_type=None)
                        if response.status == 200 and isinstance(doc, dict):
                            done = node.on_join_response(doc)
                            self.flush()
                            if not started:
                                started = True
                                self.channel.send(itf.Started(node.node_id, node.state, {}))
                            if done:
                                self.channel.send(itf.Started(node.node_id, node.state, {}))
                                self._serve_held()
                                return
                        elif response.status in (401, 403):
                            self.fatal(f"join refused: {doc}")
                            return
                        else:
                            LOG.info("event=join_retry status=%d", response.status)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    LOG.info("event=join_retry error=%s", type(exc).__name__)
                except Exception as exc:
                    # A bad answer (snapshot, sealed secrets) must not leave a silent Pending.
                    LOG.error("event=join_failed\n%s", traceback.format_exc())
                    self.fatal(f"join failed: {type(exc).__name__}: {exc}")
                    return
                await asyncio.sleep(JOIN_POLL_S)

    async def _request(self, frame_type: Any, *args: int) -> Any:
        """Send `frame_type(request_id, *args)` to the host and await its answer."""
        request_id = next(self.request_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending_reads[request_id] = future
        self.channel.send(frame_type(request_id, *args))
        return await future

    async def _fetch_endorsements(self, request: itf.FetchEndorsements) -> itf.EndorsementsFetched:
        """Ask the host to fetch SEV-SNP endorsements; the answer is checked by the caller."""
        request_id = next(self.request_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending_reads[request_id] = future
        self.channel.send(dataclasses.replace(request, request_id=request_id))
        reply: itf.EndorsementsFetched = await future
        return reply

    async def _replay_own_ledger(
        self, last_seqno: int, *, learner: bool = False, service_cert_pem: str | None = None
    ) -> None:
        assert self.node is not None
        next_seqno = 1
        first = await self._request(itf.ReadEntries, 1, 1) if last_seqno > 0 else None
        holds_first = first is not None and bool(first.entries)
        snapshot = await self._request(itf.ReadLatestSnapshot)
        # A node that joined from a snapshot keeps ledger files only after it: none at all
        # if it stopped before an entry after the snapshot reached its disk, though it had
        # sealed the snapshot's seqno as committed. So an empty ledger beside a snapshot
        # means "joined from it" too; treating it as a whole (empty) ledger would skip the
        # snapshot and refuse to start as rolled back. (A pending joiner with an empty
        # ledger was given no snapshot yet: it rejoins afresh.)
        from_snapshot = not holds_first and (last_seqno > 0 or not learner)
        if from_snapshot and snapshot.data is None and last_seqno > 0:
            raise RuntimeError("the ledger starts after seqno 1 but no snapshot exists")
        if from_snapshot and snapshot.data is not None:
            # Its ledger starts after the snapshot, so there is no ledger to fall back to if
            # the snapshot does not verify (the error names it).
            name = snapshot.name or "snapshot"
            if learner:
                installed = self.node.resume_pending_snapshot(snapshot.data, name, service_cert_pem)
            else:
                installed = self.node.resume_from_snapshot(snapshot.data, name)
            next_seqno = installed + 1
        elif snapshot.data is not None and not learner:
            # The whole ledger is here and is replayed; the snapshot is only served, if it
            # verifies (a refused one is logged, naming the file, and left alone).
            self.node.offer_snapshot_from_disk(snapshot.data, snapshot.name or "snapshot")
        replay = self.node.replay_as_learner if learner else self.node.replay
        while next_seqno <= last_seqno:
            to = min(last_seqno, next_seqno + READ_BATCH_ENTRIES - 1)
            reply = await self._request(itf.ReadEntries, next_seqno, to)
            if reply.first_seqno != next_seqno or not reply.entries:
                raise RuntimeError(f"host returned no entries from seqno {next_seqno}")
            for raw in reply.entries:
                replay(raw)
            next_seqno += len(reply.entries)
        LOG.info("event=own_ledger_replayed last_seqno=%d", last_seqno)

    # ------------------------------------------------------------------ the loop
    async def run(self) -> int:
        frame, fds = await self.channel.receive()
        _close(fds)
        if not isinstance(frame, itf.Start):
            LOG.error("event=bad_first_frame type=%s", type(frame).__name__)
            return 2
        try:
            return await self._run(frame)
        finally:
            if self.snapshot_encoder is not None:
                self.snapshot_encoder.close()  # no child outlives the node

    async def _run(self, frame: itf.Start) -> int:
        loop = asyncio.get_running_loop()
        frames = loop.create_task(self.frame_loop())
        try:
            await self.start(frame)
        except (AppLoadError, StartRefused) as exc:
            # The operator's mistake, said in one line: a stack trace would only bury it.
            self.fatal(exc.message)
            await asyncio.sleep(0.2)
            return 1
        except UnapprovedCode as exc:
            # Governance removed this code while the node was down: say so, and stay down.
            self.fatal(f"{exc.code}: {exc}")
            await asyncio.sleep(0.2)
            return 1
        except PlatformError as exc:
            self.fatal(f"the attestation platform cannot be used here: {exc}")
            await asyncio.sleep(0.2)
            return 1
        except Exception as exc:
            LOG.error("event=start_failed\n%s", traceback.format_exc())
            self.fatal(f"start failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2)
            return 1
        frozen = gc_pauses.freeze_startup()
        LOG.info("event=gc_startup_frozen objects=%d", frozen)
        await self.stopping.wait()
        frames.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await frames
        if self.server is not None:
            await self.server.shutdown(1.0)
        if self.frontends is not None:
            await self.frontends.stop()
        await self.channel.drain()
        return 0

    async def frame_loop(self) -> None:
        try:
            async for frame, fds in self.channel:
                try:
                    self.on_frame(frame, fds)
                except Exception as exc:
                    LOG.error("event=frame_failed\n%s", traceback.format_exc())
                    self.fatal(f"{type(frame).__name__} failed: {type(exc).__name__}: {exc}")
                    return
        except itf.ChannelClosed as exc:
            LOG.error("event=control_channel_closed reason=%s", exc)
        self.stopping.set()

    def on_frame(self, frame: itf.Frame, fds: list[int]) -> None:
        node = self.node
        if isinstance(frame, itf.ClientConnection):
            self.accept(fds[0])
            return
        _close(fds)
        if isinstance(
            frame,
            itf.EntriesRead | itf.SnapshotRead | itf.EndorsementsFetched | itf.OperatorFileRead,
        ):
            future = self.pending_reads.pop(frame.request_id, None)
            if future is not None and not future.done():
                future.set_result(frame)
            elif isinstance(frame, itf.EntriesRead) and node is not None:
                node.on_entries_read(frame)
        elif isinstance(frame, itf.Shutdown):
            LOG.info("event=shutdown_requested")
            if node is not None:
                node.seal_progress()
                self.flush()
            self.stopping.set()
        elif node is None:
            return
        elif isinstance(frame, itf.Tick):
            if self.deadline is not None:
                self.deadline.host_tick(frame.now_ms)
            node.tick(frame.now_ms)
        elif isinstance(frame, itf.Durable):
            node.durable(frame.seqno, frame.view)
        elif isinstance(frame, itf.NodeMessage):
            node.receive_from_peer(frame.payload)
        elif isinstance(frame, itf.IndexBlobFetched):
            node.on_index_blob(frame)
        else:
            LOG.warning("event=unexpected_frame type=%s", type(frame).__name__)
        self._wake_applied()
        self.schedule_flush()
        self._serve_held()
        if node is not None and node.retired and not self.stopping.is_set():
            LOG.info("event=stopping_retired_node")
            asyncio.get_running_loop().call_later(RETIRED_LINGER_S, self.stopping.set)

    def accept(self, fd: int) -> None:
        """Serve a client socket once the node can authenticate its caller.

        A restarting node holds the sockets it receives until it has replayed its ledger
        (users' certificates included): a TLS session set up before that would ask for no
        client certificate and stay anonymous for its whole life. A joiner serves no TLS
        until governance trusts it, so its sockets are closed.
        """
        sock = socket.socket(fileno=fd)
        node = self.node
        if node is not None and node.serving:
            self._serve(sock)
        elif (node is not None and node.state == "Pending") or len(
            self.held_sockets
        ) >= HELD_SOCKETS_MAX:
            sock.close()
        else:
            self.held_sockets.append((asyncio.get_running_loop().time(), sock))

    def _serve_held(self) -> None:
        node = self.node
        pool = self.frontends
        if pool is not None and not pool.started and node is not None and node.serving:
            pool.start()  # the TLS identity exists: frontends can be given it
        if not self.held_sockets or node is None:
            return
        if node.serving:
            held, self.held_sockets = self.held_sockets, collections.deque()
            for _, sock in held:
                self._serve(sock)
            return
        expired = asyncio.get_running_loop().time() - HELD_SOCKET_MAX_S
        while self.held_sockets and (self.held_sockets[0][0] < expired or node.state == "Pending"):
            self.held_sockets.popleft()[1].close()

    def _serve(self, sock: socket.socket) -> None:
        node = self.node
        assert node is not None
        if self.frontends is not None:
            self.frontends.serve(sock, node.tls)
        else:
            assert self.server is not None
            self.server.serve(sock, node.tls.context)

    # ------------------------------------------------------------------ forwarding
    def _forward_answered(self, forward_id: int, response: HttpResponse) -> None:
        future = self.forwarded.pop(forward_id, None)
        if future is not None and not future.done():
            future.set_result(response)

    async def _await_forward(self, forwarded: Forwarded) -> HttpResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[HttpResponse] = loop.create_future()
        self.forwarded[forwarded.forward_id] = future
        try:
            response = await asyncio.wait_for(future, FORWARD_TIMEOUT_S)
        except TimeoutError:
            return _forward_timeout()
        finally:  # also when the client went away (cancelled)
            self.forwarded.pop(forwarded.forward_id, None)
        txid = response.headers.get(TXID_HEADER)
        node = self.node
        if txid and node is not None:
            seqno = int(txid.rpartition(".")[2])
            if node.applied_seqno < seqno and len(self.applied_waiters) < APPLIED_WAITERS_MAX:
                applied: asyncio.Future[None] = loop.create_future()
                heapq.heappush(self.applied_waiters, (seqno, next(self.waiter_ids), applied))
                # Not applied in time (a rollback, a slow backup): answer anyway, as before.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(applied, LOCAL_APPLY_WAIT_S)
        return response

    def _wake_applied(self) -> None:
        """Complete the waits of forwarded writes this node has now applied."""
        node, waiters = self.node, self.applied_waiters
        if node is None or not waiters:
            return
        applied = node.applied_seqno
        while waiters and waiters[0][0] <= applied:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------------ HTTP
    def dispatch_now(self, request: PlainRequest) -> HttpResponse | Awaitable[HttpResponse]:
        """Everything after TLS and HTTP: the console, operator files, or the node's request
        pipeline. Answers at once what needs no waiting (most requests: no task is made for
        them), else gives the awaitable of the answer (a write forwarded to the primary)."""
        node = self.node
        if node is None:
            return error_response("The node is starting", code="ServiceNotReady")
        if self.console is not None and Console.handles(request.path):
            return self.serve_console(request)
        if operator_files.handles(request.path):
            return self.serve_operator_file(request)
        try:
            result = node.handle(
                request.method,
                request.path,
                request.query_string,
                request.headers,
                request.body,
                request.peer_der,
                source=request.source,
            )
        except Exception as exc:
            # Neither the path nor the exception's text: both may quote request bytes.
            LOG.error(
                "event=request_failed error=%s at=%s",
                type(exc).__name__,
                _frames(exc),
                extra=REPEATS_LIMITED,
            )
            self.schedule_flush()
            return error_response("Internal error", code="InternalError")
        self.schedule_flush()
        if isinstance(result, Forwarded):
            return self._await_forward(result)
        return result

    async def serve_operator_file(self, request: PlainRequest) -> HttpResponse:
        """The ledger chunk and snapshot downloads (operator_files.py): the host reads the
        file, the enclave checks it before it is served."""
        node = self.node
        assert node is not None
        node.metrics["requests"] += 1

        async def read(kind: str, name: str, since: int) -> itf.OperatorFileRead:
            request_id = next(self.request_ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending_reads[request_id] = future
            self.channel.send(itf.ReadOperatorFile(request_id, kind, name, since))
            reply: itf.OperatorFileRead = await future
            return reply

        result = await operator_files.serve(
            node, request.method, request.path, request.query_string, read
        )
        if result.status >= 400:
            node.metrics["errors"] += 1
        return result

    async def serve_console(self, request: PlainRequest) -> HttpResponse:
        """The console's static files, and the explorer's ledger reads (which wait for the
        host to read the entries back from disk)."""
        node, console = self.node, self.console
        assert node is not None and console is not None
        node.metrics["requests"] += 1
        if request.path.startswith("/node/"):

            async def read(first: int, last: int) -> itf.EntriesRead:
                reply: itf.EntriesRead = await self._request(itf.ReadEntries, first, last)
                return reply

            result = await console.ledger_entries(
                node, request.method, request.query_string, request.peer_der, read
            )
        else:
            result = console.static(request.method, request.path, request.headers)
        if result.status >= 400:
            node.metrics["errors"] += 1
        return result


def _forward_timeout() -> HttpResponse:
    body = b'{"error":{"code":"ForwardingTimeout","message":"The primary did not answer"}}'
    return HttpResponse(503, body, {"Retry-After": "1"}, "application/json")


def _frames(exc: BaseException) -> str:
    return " <- ".join(
        f"{frame.filename}:{frame.lineno} {frame.name}"
        for frame in reversed(traceback.extract_tb(exc.__traceback__))
    )


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="charter.enclave_app.main")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s enclave %(levelname)s %(name)s %(message)s",
    )
    limit_repeats()

    gc_pauses.install()

    async def run() -> int:
        channel = itf.ControlChannel.from_fd(args.control_fd, name="enclave")
        return await Runtime(channel).run()

    try:
        return run_loop(run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
