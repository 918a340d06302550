"""Snapshots encoded in a forked child, off the loop that orders transactions.

Encoding a snapshot walks the whole key-value state (sort and pack every key, encrypt the
private tables): about 1.7 us a key, so 35-70 ms at 20-40k keys and seconds at a million,
during which a node that did it on its loop would serve nobody. `ForkSnapshotEncoder.start`
forks at the moment the node asks (its store is then at exactly the snapshot's signature):
the child sees that state copy-on-write and encodes it while the parent goes on serving.

The child, which shares every fd of the parent (the loop's epoll, its sockets, the signal
wake-up fd): runs at the lowest priority (`CHILD_NICE`), closes all of them but its pipe,
undoes the signal wake-up fd and handlers, turns the garbage collector off (no finaliser of
a parent object may run), dies with its parent (PR_SET_PDEATHSIG on Linux; EPIPE
elsewhere), runs `encode()`, writes the entry with an 8-byte length before it to the pipe
and leaves with `os._exit` (0, or 1 on any exception: never atexit handlers, never the
loop). It logs nothing: the log is an inherited fd.

The parent reads the pipe from a loop reader, at most `READ_CHUNK_BYTES` a turn, refuses
more than `entry_bytes_max` (`SnapshotEncodeError` code `SnapshotTooLarge`, the child
killed), reaps the child without blocking (a pidfd reader, else a short poll) and then
delivers: `on_encoded(seqno, entry)` only if the child exited 0 having written exactly what
its length said; otherwise `on_failed(seqno, error)`. A child still running after
`timeout_s` is killed (a failure too). Several children may run at once, each with its own
pipe (the node bounds how many, `node/snapshots.py`); each delivers on its own. `close()`
kills and reaps every running child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import resource
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from charter.enclave_app import interface as itf
from charter.enclave_app.errors import EnclaveAppError

LOG = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
# What one loop turn reads of the pipe: the parent stays responsive while a large entry
# streams in (a memory copy of 1 MiB is well under a millisecond).
READ_CHUNK_BYTES = 1 << 20
# Asked of the kernel for the pipe (the default 64 KiB means a wake-up per 64 KiB);
# unprivileged processes may get up to /proc/sys/fs/pipe-max-size (1 MiB by default).
PIPE_BYTES = 1 << 20
# The entry must fit in the frame that takes it to the host (`WriteSnapshot`).
ENTRY_BYTES_MAX = itf.SNAPSHOT_READ_BYTES_MAX
# A child that has not finished by then is taken as wedged and killed: encoding the largest
# entry a frame can carry takes well under a minute here.
TIMEOUT_S = 600.0
# Without a pidfd, how often the parent looks whether a child that closed its pipe has exited.
REAP_POLL_S = 0.005
# The child's nice value: the encoding is background work, and on a node whose cores are
# busy serving it must wait for them, not take its fair share (three nodes on two cores:
# the children of a snapshot at the same signature delayed the nodes' loops by up to 67 ms
# at nice 0, by at most ~20 ms at 19; docs/performance.md). `TIMEOUT_S` still bounds it.
CHILD_NICE = 19
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1

try:  # looked up before any fork: the child must not load libraries
    _LIBC: ctypes.CDLL | None = (
        ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    )
except OSError:  # pragma: no cover - no libc to ask: the child relies on EPIPE
    _LIBC = None


class SnapshotEncodeError(EnclaveAppError):
    """A snapshot the child could not deliver. Codes: `SnapshotForkFailed`,
    `SnapshotTooLarge`, `SnapshotTruncated` (fewer or more bytes than its length said),
    `SnapshotEncoderDied` (exited non-zero or by a signal), `SnapshotEncoderTimeout`."""

    default_code = "SnapshotEncoderDied"


@dataclass(slots=True)
class _Job:
    seqno: int
    pid: int
    fd: int
    pidfd: int | None
    timer: asyncio.TimerHandle | None = None
    header: bytearray = field(default_factory=bytearray)
    body: bytearray | None = None
    received: int = 0
    error: SnapshotEncodeError | None = None
    eof: bool = False


class ForkSnapshotEncoder:
    """A `SnapshotEncoder` (see `node/snapshots.py`) that encodes in a forked child."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_encoded: Callable[[int, bytes], None],
        on_failed: Callable[[int, SnapshotEncodeError], None],
        *,
        entry_bytes_max: int = ENTRY_BYTES_MAX,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        assert entry_bytes_max > 0 and timeout_s > 0
        self._loop = loop
        self._on_encoded = on_encoded
        self._on_failed = on_failed
        self._entry_bytes_max = entry_bytes_max
        self._timeout_s = timeout_s
        self._jobs: dict[int, _Job] = {}  # by pid

    @property
    def child_pids(self) -> list[int]:
        """The pids of the children encoding now, oldest first."""
        return list(self._jobs)

    # ------------------------------------------------------------------ the parent
    def start(self, seqno: int, view: int, encode: Callable[[], bytes]) -> None:
        """Fork now; the child encodes the state as it is at this moment. The result is
        delivered from a later loop callback, never from inside this call."""
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            error = SnapshotEncodeError(f"fork failed: {exc}", code="SnapshotForkFailed")
            self._loop.call_soon(self._on_failed, seqno, error)
            return
        if pid == 0:
            _child(write_fd, parent, encode)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(pid)
        job = self._jobs[pid] = _Job(seqno, pid, read_fd, pidfd)
        job.timer = self._loop.call_later(self._timeout_s, self._timed_out, job)
        self._loop.add_reader(read_fd, self._readable, job)
        LOG.info("event=snapshot_encode_forked seqno=%d view=%d pid=%d", seqno, view, pid)

    def _readable(self, job: _Job) -> None:
        try:
            if job.body is None:
                chunk = os.read(job.fd, _LENGTH.size - len(job.header))
                if not chunk:
                    self._closed(job)
                    return
                job.header += chunk
                if len(job.header) == _LENGTH.size:
                    (size,) = _LENGTH.unpack(job.header)
                    if size > self._entry_bytes_max:
                        self._fail(
                            job,
                            SnapshotEncodeError(
                                f"the snapshot entry of {size} bytes is over the "
                                f"{self._entry_bytes_max} bytes allowed",
                                code="SnapshotTooLarge",
                            ),
                        )
                        return
                    job.body = bytearray(size)
                return
            free = len(job.body) - job.received
            if free == 0:
                # All the bytes the length said are in: anything but EOF now is too much.
                if os.read(job.fd, 1):
                    self._fail(
                        job,
                        SnapshotEncodeError(
                            "the child wrote more than its length said", code="SnapshotTruncated"
                        ),
                    )
                    return
                self._closed(job)
                return
            view = memoryview(job.body)[job.received : job.received + min(free, READ_CHUNK_BYTES)]
            count = os.readv(job.fd, [view])
            view.release()
            if count == 0:
                self._closed(job)
                return
            job.received += count
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(job, SnapshotEncodeError(f"reading the pipe failed: {exc}"))

    def _fail(self, job: _Job, error: SnapshotEncodeError) -> None:
        """Stop a child whose output is refused; the failure is delivered once it is reaped."""
        job.error = job.error or error
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGKILL)
        self._closed(job)

    def _closed(self, job: _Job) -> None:
        """The pipe is done with (EOF, or refused): reap the child, then deliver."""
        if job.eof:
            return
        job.eof = True
        self._loop.remove_reader(job.fd)
        os.close(job.fd)
        if job.pidfd is not None:
            self._loop.add_reader(job.pidfd, self._reap, job)
        else:
            self._reap(job)

    def _reap(self, job: _Job) -> None:
        if self._jobs.get(job.pid) is not job:
            return  # closed meanwhile: `close` reaped it
        try:
            pid, status = os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its status is unknown
            pid, status = job.pid, -1
        if pid == 0:
            if job.pidfd is None:
                self._loop.call_later(REAP_POLL_S, self._reap, job)
            return
        self._finish(job, status)

    def _finish(self, job: _Job, status: int) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if job.pidfd is not None:
            self._loop.remove_reader(job.pidfd)
            os.close(job.pidfd)
        del self._jobs[job.pid]
        error = job.error
        if error is None and status != 0:
            how = (
                f"killed by signal {os.WTERMSIG(status)}"
                if status > 0 and os.WIFSIGNALED(status)
                else f"exit status {os.WEXITSTATUS(status) if status > 0 else 'unknown'}"
            )
            error = SnapshotEncodeError(f"the encoding child ended with {how}")
        if error is None and (job.body is None or job.received != len(job.body)):
            expected = "its length" if job.body is None else f"{len(job.body)} bytes"
            error = SnapshotEncodeError(
                f"the child wrote {job.received} bytes of {expected}", code="SnapshotTruncated"
            )
        if error is not None:
            LOG.error(
                "event=snapshot_encode_failed seqno=%d pid=%d code=%s reason=%s",
                job.seqno,
                job.pid,
                error.code,
                error.message,
            )
            self._on_failed(job.seqno, error)
            return
        assert job.body is not None
        LOG.info("event=snapshot_encoded seqno=%d bytes=%d", job.seqno, len(job.body))
        self._on_encoded(job.seqno, bytes(job.body))

    def _timed_out(self, job: _Job) -> None:
        job.timer = None
        if self._jobs.get(job.pid) is job and not job.eof:
            self._fail(
                job,
                SnapshotEncodeError(
                    f"no snapshot after {self._timeout_s:g} s", code="SnapshotEncoderTimeout"
                ),
            )

    def close(self) -> None:
        """Kill and reap every running child (runtime shutdown); nothing is delivered."""
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            self._stop(job)

    def _stop(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if not job.eof:
            self._loop.remove_reader(job.fd)
            os.close(job.fd)
        if job.pidfd is not None:
            self._loop.remove_reader(job.pidfd)
            os.close(job.pidfd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(job.pid, 0)  # at once: the child was killed
        LOG.info("event=snapshot_encode_stopped seqno=%d pid=%d", job.seqno, job.pid)


# ---------------------------------------------------------------------- the child
def _child(write_fd: int, parent: int, encode: Callable[[], bytes]) -> NoReturn:
    """Runs in the forked child; never returns, never raises, never runs the parent's code."""
    status = 1
    try:
        gc.disable()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, CHILD_NICE)
        # A signal must not wake the parent's loop through the shared wake-up fd, nor run
        # the parent's handlers here.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        # Every inherited fd but the pipe: the child must not hold the parent's sockets
        # open (a client the parent closes would stay connected), nor its epoll set.
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, limit if limit != resource.RLIM_INFINITY else 1 << 20)
        # SIGPIPE stays ignored (as Python sets it): a write to a parent gone fails, EPIPE.
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the line above took effect
        entry = encode()
        _write_all(write_fd, _LENGTH.pack(len(entry)))
        _write_all(write_fd, entry)
        status = 0
    except BaseException:  # whatever it is, the child only reports failure
        status = 1
    finally:
        os._exit(status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
