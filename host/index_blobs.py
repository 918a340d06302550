"""The host's side of index blobs (CCF's LFS): sealed index buckets kept on disk.

The enclave sends `IndexBlobStore(strategy, bucket, blob)` and asks `IndexBlobFetch(
request_id, strategy, bucket)`; this keeps each blob as `<workspace>/index_blobs/<strategy>/
<bucket>.blob` and answers `IndexBlobFetched` with the file's bytes (None when absent, too
large or unreadable). The host cannot read the blobs and is not trusted with them: the
enclave checks each one it gets back. Blobs are a cache of what the enclave can rebuild from
the ledger, so they are not fsynced, and the folder is emptied when the host starts (a new
enclave holds a new key and could not read the old ones).

Operations run in order on one worker task (file I/O in a thread), so a fetch that follows a
store of the same bucket sees it, and the host's frame loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from charter.enclave_app.interface import (
    INDEX_BLOB_BYTES_MAX,
    Frame,
    IndexBlobFetch,
    IndexBlobFetched,
    IndexBlobStore,
    check_strategy_name,
)

_log = logging.getLogger(__name__)

INDEX_BLOBS_DIR_NAME = "index_blobs"
# Operations queued for the worker; the enclave's frames wait (backpressure) beyond it.
QUEUE_MAX = 1024


class IndexBlobs:
    """One node's blob folder; `submit` queues a frame, answers go to `reply`."""

    def __init__(self, workspace: Path, reply: Callable[[Frame], None]) -> None:
        self.directory = workspace / INDEX_BLOBS_DIR_NAME
        self._reply = reply
        self._queue: asyncio.Queue[IndexBlobStore | IndexBlobFetch] = asyncio.Queue(QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        """Empty the folder (at host start: the enclave's key is new)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, strategy: str, bucket: int) -> Path:
        return self.directory / check_strategy_name(strategy) / f"{bucket}.blob"

    async def submit(self, frame: IndexBlobStore | IndexBlobFetch) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._queue.put(frame)

    async def _run(self) -> None:
        while True:
            frame = await self._queue.get()
            if isinstance(frame, IndexBlobStore):
                await asyncio.to_thread(self.store, frame)
            else:
                try:
                    blob = await asyncio.to_thread(self.fetch, frame)
                except Exception as e:  # answered all the same: the enclave must not wait
                    _log.error("index blob fetch failed reason=%r", type(e).__name__)
                    blob = None
                self._reply(
                    IndexBlobFetched(
                        request_id=frame.request_id,
                        strategy=frame.strategy,
                        bucket=frame.bucket,
                        blob=blob,
                    )
                )

    def store(self, frame: IndexBlobStore) -> None:
        path = self.path(frame.strategy, frame.bucket)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(frame.blob)
            os.replace(tmp, path)
        except OSError as e:
            # A lost blob costs a query an error, never the node: the enclave refuses to
            # answer from a bucket it cannot get back.
            _log.error("index blob write failed file=%s reason=%r", path.name, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def fetch(self, frame: IndexBlobFetch) -> bytes | None:
        path = self.path(frame.strategy, frame.bucket)
        try:
            with path.open("rb") as f:
                data = f.read(INDEX_BLOB_BYTES_MAX + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            _log.error("index blob read failed file=%s reason=%r", path.name, e.strerror)
            return None
        if len(data) > INDEX_BLOB_BYTES_MAX:
            _log.error("index blob too large file=%s", path.name)
            return None
        return data

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
