"""Signature verifications of an audit, run here or in forked worker processes.

An audit's cost is dominated by the P-384 ECDSA verifications of signature transactions
(a node's root signature and the service's COSE_Sign1, ~0.5 ms each), and
pyca/cryptography holds the GIL while verifying, so only processes run them in parallel.
The auditing process submits each verification as it reaches it (in seqno order) and
keeps scanning; `workers` forked processes verify batches sent over pipes as raw bytes
(a key's SubjectPublicKeyInfo DER once per worker, then the root and signature bytes per
job). Whenever every worker already has enough queued, the auditing process verifies the
job itself, so both cores stay busy and at most a bounded number of jobs is outstanding.

A failure is reported as the serial audit would: jobs are numbered in submission order,
which is the serial validator's order, and `settle` raises for the lowest-numbered failed
job only once every earlier job has finished.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import select
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.ledger import cose
from charter.ledger.errors import AuditError, LedgerError
from charter.ledger.signatures import MAX_COSE_SIGNATURE_BYTES, verify_root

logger = logging.getLogger(__name__)

KIND_ROOT: Final = 0  # (root, DER signature): a node's signature over a root
KIND_COSE: Final = 1  # (COSE_Sign1 bytes, root): the service's signature over a root

# Jobs queued per worker before the auditing process verifies new ones itself: enough for
# the worker not to run dry while the auditor scans a part (~8 ms at 0.5 ms per job).
_WORKER_QUEUE_JOBS: Final = 16
# Jobs sent in one message at most, and how many wait here to be sent together (batches
# amortise pickling and the pipe's system calls) unless a worker is about to run dry.
_BATCH_JOBS_MAX: Final = 6
_QUEUED_JOBS_MAX: Final = _BATCH_JOBS_MAX
_WORKER_LOW_JOBS: Final = 4
_WORKER_NICE: Final = 10
# Size limits on what a worker is sent (the auditor has checked these already).
_ROOT_BYTES: Final = 32
_PAYLOAD_BYTES_MAX: Final = MAX_COSE_SIGNATURE_BYTES


@dataclass(frozen=True, slots=True)
class _Job:
    number: int  # submission order = the serial validator's order
    seqno: int
    what: str  # prefix of the AuditError message
    kind: int
    key: ec.EllipticCurvePublicKey
    spki: bytes
    first: bytes
    second: bytes


@functools.lru_cache(maxsize=64)
def _key_from_spki(spki: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def run_job(kind: int, key: ec.EllipticCurvePublicKey, first: bytes, second: bytes) -> str | None:
    """One verification; the error text, or None when the signature holds."""
    try:
        if kind == KIND_ROOT:
            verify_root(key, first, second)
        else:
            message = cose.decode_sign1(first, max_bytes=MAX_COSE_SIGNATURE_BYTES)
            cose.verify_sign1(message, key, detached_payload=second)
    except LedgerError as exc:
        return str(exc)
    return None


# The auditing process's ends of the workers' pipes. A forked child (a worker, or a scanning
# process of audit_scan) closes its copies at once: otherwise a worker whose auditing process
# died would never see its pipe close and would outlive it.
_PARENT_ENDS: list[Connection] = []


def close_inherited_pipes() -> None:
    """In a freshly forked child: close the copies of the auditing process's pipe ends."""
    for conn in _PARENT_ENDS:
        conn.close()
    _PARENT_ENDS.clear()


def _worker_main(conn: Connection, own_parent_end: Connection) -> None:
    """A worker's loop: receive (new keys, jobs), answer [(job number, error or None)]."""
    own_parent_end.close()
    close_inherited_pipes()
    keys: dict[int, ec.EllipticCurvePublicKey] = {}
    # Yield to the auditing process when the two share a core (a busy machine): it verifies
    # whatever the worker has not reached, so the worker only ever uses a spare core.
    with contextlib.suppress(OSError):
        os.nice(_WORKER_NICE)
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            new_keys, jobs = message
            for index, spki in new_keys:
                keys[index] = _key_from_spki(spki)
            results = [
                (number, run_job(kind, keys[key_index], first, second))
                for number, kind, key_index, first, second in jobs
            ]
            conn.send(results)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        conn.close()


class _Worker:
    """One forked verifier process, its pipe and what it has been sent."""

    __slots__ = ("conn", "key_indexes", "outstanding", "poller", "process")

    outstanding: set[int]  # numbers of the jobs sent and not yet answered

    def __init__(self, context: Any) -> None:
        parent, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, parent), daemon=True)
        self.process.start()
        child.close()
        _PARENT_ENDS[:] = [end for end in _PARENT_ENDS if not end.closed]
        _PARENT_ENDS.append(parent)
        self.conn: Connection = parent
        self.poller = select.poll()
        self.poller.register(parent.fileno(), select.POLLIN)
        self.key_indexes: dict[bytes, int] = {}  # spki -> index known to this worker
        self.outstanding = set()


class _Pool:
    """Workers kept from one audit to the next: forking, and the copy-on-write page faults
    it causes in this process afterwards, cost ~5 ms per audit otherwise. One Verifier at a
    time uses them (a concurrent one forks its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []
        self.pid = os.getpid()

    def forget(self) -> None:
        """In a forked copy of this process: the workers belong to the parent."""
        self.lock = threading.Lock()
        self.workers = []
        self.pid = os.getpid()


_POOL = _Pool()
# Job numbers are unique across audits: a kept worker may still answer an earlier audit's
# job that the auditor verified itself (see `Verifier.settle`); such answers are ignored.
_NUMBERS = itertools.count()


def shutdown_workers() -> None:
    """Stop the kept worker processes and wait for them (they also end with this process)."""
    with _POOL.lock:
        workers, _POOL.workers = _POOL.workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


class Verifier:
    """Runs verification jobs in submission order semantics; see the module docstring."""

    def __init__(self, workers: int) -> None:
        assert workers >= 0
        self._queue: deque[_Job] = deque()  # submitted, not yet sent nor run
        self._sent: dict[int, _Job] = {}  # job number -> job a worker is verifying
        self._failures: dict[int, tuple[int, str]] = {}  # job number -> (seqno, message)
        self._workers: list[_Worker] = []
        self._pooled = False
        if workers:
            self._workers = self._take_workers(workers)

    @staticmethod
    def _fork(count: int) -> list[_Worker]:
        context = multiprocessing.get_context("fork")
        return [_Worker(context) for _ in range(count)]

    def _take_workers(self, count: int) -> list[_Worker]:
        if _POOL.pid != os.getpid():
            _POOL.forget()
        if not _POOL.lock.acquire(blocking=False):
            return self._fork(count)  # another thread's audit holds the kept workers
        self._pooled = True
        try:
            _POOL.workers = [w for w in _POOL.workers if w.process.is_alive()]
            _POOL.workers.extend(self._fork(max(0, count - len(_POOL.workers))))
        except BaseException:
            self._pooled = False
            _POOL.lock.release()
            raise
        return _POOL.workers[:count]

    def submit(
        self,
        seqno: int,
        what: str,
        kind: int,
        key: ec.EllipticCurvePublicKey,
        spki: bytes,
        first: bytes,
        second: bytes,
    ) -> None:
        """Verify later (or now, without workers); a failure surfaces through `settle`."""
        job = _Job(next(_NUMBERS), seqno, what, kind, key, spki, first, second)
        if not self._workers:
            self._run_here(job)
            self._raise_first()
            return
        self._queue.append(job)
        self._pump()
        # The workers are busy enough: verify the newest jobs here rather than let the queue
        # grow (constant memory, and this process keeps its core busy too).
        while len(self._queue) > _QUEUED_JOBS_MAX:
            self._run_here(self._queue.pop())
            self._pump()
        self._raise_first()

    def settle(self) -> None:
        """Finish every submitted job; raise the AuditError of the first failed one."""
        while self._queue or self._sent:
            self._pump(force=True)
            if self._queue:
                self._run_here(self._queue.pop())
            elif self._sent:
                # Rather than wait on a worker (which a loaded machine may not be running),
                # verify its newest job here too: the two meet in the middle of its queue.
                number = max(self._sent)
                job = self._sent.pop(number)
                for worker in self._workers:
                    worker.outstanding.discard(number)
                self._run_here(job)
        self._raise_first()

    def close(self) -> None:
        """Release the workers (idempotent); outstanding jobs are abandoned.

        Kept workers stay for the next audit if nothing is half sent or half answered.
        Others are told to exit but not waited for (that costs milliseconds, more on a busy
        machine): multiprocessing reaps finished children on its next start.
        """
        workers, self._workers = self._workers, []
        clean = not self._sent and not any(worker.outstanding for worker in workers)
        if self._pooled:
            self._pooled = False
            try:
                if clean:
                    return
                for worker in workers:  # an interrupted audit: the pipes' state is unknown
                    _POOL.workers.remove(worker)
            finally:
                _POOL.lock.release()
        for worker in workers:
            if worker.outstanding:
                worker.process.kill()  # its remaining answers are not needed
            else:
                with contextlib.suppress(OSError):  # a dead worker needs no goodbye
                    worker.conn.send(None)
            worker.conn.close()

    # -- internals -------------------------------------------------------------------------

    def _run_here(self, job: _Job) -> None:
        error = run_job(job.kind, job.key, job.first, job.second)
        if error is not None:
            self._failures[job.number] = (job.seqno, f"{job.what}: {error}")

    def _raise_first(self) -> None:
        if not self._failures:
            return
        number = min(self._failures)
        # Every earlier job must have finished, or it might be the first failure.
        if any(other < number for other in self._sent) or any(
            other.number < number for other in self._queue
        ):
            return
        seqno, message = self._failures[number]
        raise AuditError(message, seqno=seqno)

    def _collect(self) -> None:
        """Take in the answers workers have sent (without waiting)."""
        for worker in list(self._workers):
            # A poll object made once per worker: far cheaper than `connection.wait`.
            if not worker.outstanding or not worker.poller.poll(0):
                continue
            try:
                results: list[tuple[int, str | None]] = worker.conn.recv()
            except (EOFError, OSError):
                self._lose(worker)
                continue
            for number, error in results:
                job = self._sent.pop(number, None)
                worker.outstanding.discard(number)
                if job is None:
                    continue  # verified here meanwhile (see `settle`)
                if error is not None:
                    self._failures[number] = (job.seqno, f"{job.what}: {error}")

    def _lose(self, worker: _Worker) -> None:
        """A worker died (killed, out of memory): its jobs go back to the queue, in order."""
        logger.warning("signature verification worker %s died", worker.process.pid)
        self._workers.remove(worker)
        if self._pooled and worker in _POOL.workers:
            _POOL.workers.remove(worker)
        returned = [self._sent.pop(number) for number in sorted(worker.outstanding)]
        self._queue.extendleft(reversed(returned))
        worker.conn.close()
        worker.process.join(timeout=5)

    def _pump(self, *, force: bool = False) -> None:
        """Collect finished results, then send queued jobs (oldest first) where there is room:
        a full batch, or whatever is queued to a worker about to run dry (or if `force`)."""
        self._collect()
        for worker in list(self._workers):
            room = min(_WORKER_QUEUE_JOBS - len(worker.outstanding), _BATCH_JOBS_MAX)
            busy = len(worker.outstanding) >= _WORKER_LOW_JOBS
            if busy and not force and min(len(self._queue), room) < _BATCH_JOBS_MAX:
                continue
            while self._queue and room > 0:
                count = min(room, len(self._queue))
                if not self._send(worker, [self._queue.popleft() for _ in range(count)]):
                    break
                room = min(_WORKER_QUEUE_JOBS - len(worker.outstanding), _BATCH_JOBS_MAX)

    def _send(self, worker: _Worker, jobs: list[_Job]) -> bool:
        """Send jobs to a worker; False (jobs requeued, worker dropped) if it is gone."""
        new_keys: list[tuple[int, bytes]] = []
        wire: list[tuple[int, int, int, bytes, bytes]] = []
        for job in jobs:
            assert len(job.first) <= _PAYLOAD_BYTES_MAX and len(job.second) <= _PAYLOAD_BYTES_MAX
            index = worker.key_indexes.get(job.spki)
            if index is None:
                index = worker.key_indexes[job.spki] = len(worker.key_indexes)
                new_keys.append((index, job.spki))
            wire.append((job.number, job.kind, index, job.first, job.second))
            self._sent[job.number] = job
            worker.outstanding.add(job.number)
        try:
            worker.conn.send((new_keys, wire))
        except OSError:
            self._lose(worker)
            return False
        return True


def auto_workers(size_bytes: int, *, threads: int, cpus: int | None = None) -> int:
    """Verifier processes worth forking for a ledger of `size_bytes`: one fewer than the
    CPUs (this process verifies too), none for small ledgers, none from a threaded process
    (forking one can deadlock) or where fork is unavailable."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    if cpus < 2 or threads > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(cpus - 1, 3) if size_bytes >= PARALLEL_MIN_BYTES else 0


# Below this, forking costs more than it saves (a fork is a few ms; 1 MiB audits in ~40 ms).
PARALLEL_MIN_BYTES: Final = 1024 * 1024
