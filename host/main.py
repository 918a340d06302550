"""The host process: binds ports, starts and supervises the enclave, serves its I/O.

`python -m charter.host --config node.json`. The host restarts nothing silently: when the enclave
process exits the host logs `enclave exited with code X` and exits non-zero. On SIGTERM or
SIGINT it asks the enclave to shut down, waits briefly, stops it and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from charter.enclave_app.interface import (
    ENCLAVE_TO_HOST,
    MAX_QUEUED_FDS,
    ChannelClosed,
    ClientConnection,
    ControlChannel,
    Fatal,
    FetchEndorsements,
    Frame,
    IndexBlobFetch,
    IndexBlobStore,
    InterfaceError,
    Log,
    NodeConfig,
    NodeMessage,
    SendToNode,
    Shutdown,
    Start,
    Started,
    StoreSealed,
    Tick,
    load_config,
)
from charter.enclave_app.interface.logs import REPEATS_LIMITED, limit_repeats
from charter.host.endorsements import EndorsementsFetcher
from charter.host.index_blobs import IndexBlobs
from charter.host.relay import Relay, split_address
from charter.host.storage import STORAGE_FRAMES, Storage, StorageWorker, write_atomically
from charter.ledger.errors import LedgerWriteError

_log = logging.getLogger(__name__)
_enclave_log = logging.getLogger("enclave")

PORTS_FILE_NAME = "ports.json"
CAPTURE_ENV = "CHARTER_CAPTURE_CONTROL_FRAMES"
LOG_FILE_NAME = "host.log"
SHUTDOWN_GRACE_S = 5.0
KILL_GRACE_S = 2.0
FATAL_GRACE_S = 2.0
ACCEPT_BACKLOG = 512
ENCLAVE_LOG_CHARS_MAX = 4096
# Only what Python needs: the enclave inherits no secrets or settings from the operator
# (CHARTER_COMMIT_TRACE is a developer's on/off switch for timestamps in the log).
_ENV_PASSTHROUGH = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "CHARTER_COMMIT_TRACE")


def enclave_environment() -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", os.defpath)
    if "PYTHONPATH" in env:
        # The enclave runs in the node's workspace folder: a relative entry (`PYTHONPATH=.`,
        # as one types it for an app beside the config) would point somewhere else there.
        # Entries mean what they meant where the host was started.
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(entry or os.curdir) for entry in env["PYTHONPATH"].split(os.pathsep)
        )
    return env


def _format_address(sockname: tuple[str, int], host: str) -> str:
    return f"{host}:{sockname[1]}"


class Host:
    """One node's host process state; `run()` returns the process exit code."""

    def __init__(self, config: NodeConfig, *, enclave_argv: list[str] | None = None) -> None:
        self.config = config
        self.enclave_argv = enclave_argv or [sys.executable, "-m", "charter.enclave_app.main"]
        assert config.ledger_dir is not None and config.snapshots_dir is not None
        self.storage = Storage(
            workspace=config.workspace,
            ledger_dir=config.ledger_dir,
            snapshots_dir=config.snapshots_dir,
            chunk_size_bytes=config.ledger_chunk_bytes,
            read_only_dirs=list(config.ledger_read_only_dirs),
            archive_dir=config.files_cleanup.ledger_archive_dir,
            max_snapshots=config.files_cleanup.max_snapshots,
        )
        self.relay = Relay(config.node_to_node_address, self._on_node_message)
        self.channel: ControlChannel | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.rpc_address = config.rpc_address
        self.ports: dict[str, object] = {}
        self._stop = asyncio.Event()
        self._exit_code = 0
        self.storage_worker = StorageWorker(
            self.storage,
            self._reply,
            self._on_storage_failure,
            self.relay.send,  # a `SendWhenDurable` payload, once the worker made it due
            cleanup_interval_ms=config.files_cleanup.interval_ms,
        )
        self._next_conn_id = 1
        self._tasks: list[asyncio.Task[None]] = []
        self.endorsements = EndorsementsFetcher(config.snp.endorsements_servers, self._reply)
        self.index_blobs = IndexBlobs(config.workspace, self._reply)
        self._frame_handlers = self._enclave_frame_handlers()

    # -- setup ---------------------------------------------------------------------------

    def _bind_client_socket(self) -> socket.socket:
        host, port = split_address(self.config.rpc_address)
        sock = socket.create_server((host, port), backlog=ACCEPT_BACKLOG, reuse_port=False)
        sock.setblocking(False)
        self.rpc_address = _format_address(sock.getsockname(), host)
        return sock

    def _write_ports(self) -> None:
        write_atomically(
            self.config.workspace / PORTS_FILE_NAME,
            json.dumps(self.ports, indent=2).encode(),
        )

    async def _spawn_enclave(self) -> ControlChannel:
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.enclave_argv,
                "--control-fd",
                str(child_end.fileno()),
                pass_fds=[child_end.fileno()],
                env=enclave_environment(),
                stdin=asyncio.subprocess.DEVNULL,
                cwd=str(self.config.workspace),
            )
        finally:
            child_end.close()
        _log.info("enclave started pid=%d", self.process.pid)
        # A burst of new clients is a burst of fds for the enclave to take: queue up to the
        # node's hard session cap of them (the enclave refuses sessions past it anyway),
        # not the channel's default, past which each new connection was reset.
        channel = ControlChannel(
            host_end,
            name="host",
            fds_queued_max=max(MAX_QUEUED_FDS, self.config.rpc_interface.max_open_sessions_hard),
        )
        capture = os.environ.get(CAPTURE_ENV)
        if capture:
            # Every frame crossing the boundary, as the host sees it (privacy tests read it).
            out = open(capture, "ab")  # noqa: SIM115 - lives as long as the channel

            def tap(body: bytes) -> None:
                out.write(len(body).to_bytes(4, "big") + body)
                out.flush()

            channel.tap = tap
        return channel

    # -- running -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Before anything observable (ports.json, the enclave pid), so a prompt SIGTERM is
        # always a clean stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, f"signal {sig.name}", 0)
        # A previous run's file would point scripts at dead ports and pids.
        (self.config.workspace / PORTS_FILE_NAME).unlink(missing_ok=True)
        listener = self._bind_client_socket()
        # The previous enclave's index blobs are sealed under a key that died with it.
        self.index_blobs.reset()
        n2n_address = await self.relay.start()
        self.ports = {
            "rpc_address": self.rpc_address,
            "node_to_node_address": n2n_address,
            "host_pid": os.getpid(),
        }
        self._write_ports()
        _log.info("listening rpc_address=%s node_to_node_address=%s", self.rpc_address, n2n_address)
        self.channel = await self._spawn_enclave()
        assert self.process is not None
        self.ports["enclave_pid"] = self.process.pid
        self._write_ports()

        config = self.config.model_dump(mode="json")
        config["rpc_address"] = self.rpc_address
        config["node_to_node_address"] = n2n_address
        if config.get("published_rpc_address") is None:
            config["published_rpc_address"] = self.rpc_address
        self.channel.send(
            Start(
                config=config,
                sealed=self.storage.load_sealed(),
                ledger_last_seqno=self.storage.last_seqno,
            )
        )
        self._tasks = [
            loop.create_task(self._accept_loop(listener), name="accept"),
            loop.create_task(self._tick_loop(), name="tick"),
            loop.create_task(self._frame_loop(), name="frames"),
            loop.create_task(self.storage_worker.run(), name="storage"),
            loop.create_task(self._watch_enclave(), name="watch"),
        ]
        for t in self._tasks:
            t.add_done_callback(self._task_done)
        await self._stop.wait()
        await self._shutdown()
        listener.close()
        return self._exit_code

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("host task failed task=%s error=%r", task.get_name(), repr(exc))
            self._request_stop(f"task {task.get_name()} failed", 1)

    def _request_stop(self, reason: str, exit_code: int) -> None:
        if self._stop.is_set():
            return
        _log.info("stopping reason=%r", reason)
        self._exit_code = exit_code
        self._stop.set()

    async def _shutdown(self) -> None:
        proc = self.process
        assert proc is not None and self.channel is not None
        if proc.returncode is None:
            with contextlib.suppress(InterfaceError):
                self.channel.send(Shutdown())
            grace_s = SHUTDOWN_GRACE_S if self._exit_code == 0 else FATAL_GRACE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace_s)
        if proc.returncode is None:
            _log.warning("enclave did not stop in time, terminating pid=%d", proc.pid)
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.endorsements.close()
        await self.index_blobs.close()
        self.channel.close()
        await self.relay.close()
        await self.storage_worker.wait_idle()
        self.storage.close()
        _log.info("host stopped exit_code=%d", self._exit_code)

    async def _watch_enclave(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        if not self._stop.is_set():
            if code == 0:
                # The enclave chose to stop (e.g. its node was retired by governance).
                _log.info("enclave exited with code 0")
                self._request_stop("enclave stopped", 0)
            else:
                _log.error("enclave exited with code %s", code)
                self._request_stop(f"enclave exited with code {code}", 1)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert self.channel is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and friends: keep serving once fds free up
                _log.error("accept failed error=%r", str(e))
                await asyncio.sleep(0.1)
                continue
            conn_id = self._next_conn_id
            self._next_conn_id += 1
            try:
                self.channel.send(
                    ClientConnection(conn_id=conn_id, peer=f"{addr[0]}:{addr[1]}"),
                    fds=[conn.fileno()],
                )
            except InterfaceError as e:
                _log.warning(
                    "client connection dropped conn_id=%d reason=%r",
                    conn_id,
                    str(e),
                    extra=REPEATS_LIMITED,
                )
            finally:
                conn.close()  # the enclave has its own copy now

    async def _tick_loop(self) -> None:
        assert self.channel is not None
        period_s = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(period_s)
            with contextlib.suppress(InterfaceError):
                self.channel.send(Tick(now_ms=time.time_ns() // 1_000_000))

    def _on_node_message(self, from_address: str, payload: bytes) -> None:
        if self.channel is None or self.channel.closed:
            return
        try:
            self.channel.send(NodeMessage(from_address=from_address, payload=payload))
        except InterfaceError as e:
            _log.warning(
                "node message dropped from=%s reason=%r",
                from_address,
                str(e),
                extra=REPEATS_LIMITED,
            )

    async def _frame_loop(self) -> None:
        assert self.channel is not None
        try:
            async for frame, fds in self.channel:
                for fd in fds:  # no enclave frame carries fds
                    os.close(fd)
                handler = self._frame_handlers.get(type(frame))
                if handler is None:
                    _log.warning("unexpected frame from enclave type=%s", type(frame).__name__)
                elif not await handler(frame):
                    return
        except ChannelClosed as e:
            _log.error("control channel failed reason=%r", str(e))
        # The channel is gone: the enclave is exiting; the watcher reports its exit code.
        if not self._stop.is_set():
            _log.warning("control channel closed by the enclave")
            with contextlib.suppress(TimeoutError):
                assert self.process is not None
                await asyncio.wait_for(self.process.wait(), FATAL_GRACE_S)
            self._request_stop("control channel closed", 1)

    # -- one handler per enclave → host frame; each returns False to end the frame loop ----

    def _enclave_frame_handlers(self) -> dict[type[Frame], Callable[[Any], Awaitable[bool]]]:
        handlers: dict[type[Frame], Callable[[Any], Awaitable[bool]]] = {
            StoreSealed: self._on_store_sealed,
            SendToNode: self._on_send_to_node,
            FetchEndorsements: self._on_fetch_endorsements,
            IndexBlobStore: self._on_index_blob_frame,
            IndexBlobFetch: self._on_index_blob_frame,
            Started: self._on_started,
            Log: self._on_log,
            Fatal: self._on_fatal,
        }
        for frame_type in STORAGE_FRAMES:
            handlers.setdefault(frame_type, self._on_storage_frame)
        # Every frame the enclave may send has a row; none the host sends has one.
        assert set(handlers) == set(ENCLAVE_TO_HOST), set(handlers) ^ set(ENCLAVE_TO_HOST)
        return handlers

    async def _on_store_sealed(self, frame: StoreSealed) -> bool:
        # Raft's vote and term ride in the sealed blob: it must be on disk before any later
        # frame (a vote to a peer) leaves this host, so it is written here, not queued.
        try:
            self.storage.store_sealed(frame.blob)
        except LedgerWriteError as e:
            _log.error("storage write failed path=%s reason=%r", e.path, str(e))
            self._request_stop(str(e), 1)
            return False
        return True

    async def _on_storage_frame(self, frame: Frame) -> bool:
        await self.storage_worker.submit(frame)
        return True

    async def _on_send_to_node(self, frame: SendToNode) -> bool:
        self.relay.send(frame.address, frame.payload)
        return True

    async def _on_fetch_endorsements(self, frame: FetchEndorsements) -> bool:
        # HTTP to AMD or a cache takes seconds: answered from its own task.
        self.endorsements.submit(frame)
        return True

    async def _on_index_blob_frame(self, frame: IndexBlobStore | IndexBlobFetch) -> bool:
        await self.index_blobs.submit(frame)
        return True

    async def _on_started(self, frame: Started) -> bool:
        _log.info("enclave ready node_id=%s status=%s", frame.node_id, frame.status)
        self.ports["node_id"] = frame.node_id
        self._write_ports()
        return True

    async def _on_log(self, frame: Log) -> bool:
        level = frame.level if 0 < frame.level <= logging.CRITICAL else logging.INFO
        _enclave_log.log(level, "%s", frame.message[:ENCLAVE_LOG_CHARS_MAX])
        return True

    async def _on_fatal(self, frame: Fatal) -> bool:
        reason = self.storage.name_ledger_file(frame.reason)
        _log.error("enclave fatal error reason=%r", reason)
        # Whoever started this node (the sandbox, a script) reads why it stopped here,
        # without digging the reason out of the log.
        self.ports["fatal"] = reason
        self._write_ports()
        self._request_stop(f"enclave fatal error: {reason}", 1)
        return True

    def _reply(self, frame: Frame) -> None:
        assert self.channel is not None
        try:
            self.channel.send(frame)
        except InterfaceError as e:
            _log.warning("reply dropped type=%s reason=%r", type(frame).__name__, str(e))

    def _on_storage_failure(self, reason: str) -> None:
        self._request_stop(reason, 1)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """`asyncio.run(main)` on uvloop when installed: less CPU per relayed byte and frame."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio works too
        return asyncio.run(main)
    return uvloop.run(main)


def setup_logging(workspace: Path) -> None:
    fmt = logging.Formatter(
        "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(workspace / LOG_FILE_NAME),
    ):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    limit_repeats(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m charter.host", description="Charter host process"
    )
    parser.add_argument("--config", required=True, help="node config file (JSON)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        config.workspace.mkdir(parents=True, exist_ok=True)
    except (InterfaceError, OSError) as e:
        print(f"charter host: {e}", file=sys.stderr)
        return 2
    setup_logging(config.workspace)

    async def run() -> int:
        return await Host(config).run()

    try:
        return run_loop(run())
    except Exception as e:
        _log.exception("host failed error=%r", str(e))
        return 1
