"""Feeding the app's indexes with committed transactions, and their blobs on the host.

`Indexer` watches the maps the app's strategies index through KV store hooks: each applied
transaction that wrote one (on the primary as it commits, on a backup as it applies, on a
restart as the own ledger is replayed) is noted as pending; a rollback drops the pending
ones above the rollback point; when commit advances (`Replication._on_commit`) the pending
transactions up to it are handed to the strategies in seqno order. Only committed
transactions are ever indexed, each exactly once per node incarnation: a restarted node
replays its ledger and rebuilds, and a node that starts from a snapshot indexes from the
snapshot's seqno + 1 on (its indexes say so: `covers_from`).

`BlobStore` is the enclave's side of CCF's LFS: it seals buckets (`blobs.BlobSealer`),
sends `IndexBlobStore` / `IndexBlobFetch` frames, and routes `IndexBlobFetched` back,
checking that the answer is to a request it made, for the bucket it asked.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from charter.enclave_app import interface as itf
from charter.enclave_app.indexing.blobs import BlobSealer
from charter.enclave_app.indexing.strategy import IndexEnv, IndexStrategy, LiveIndex
from charter.enclave_app.kv import MapChange, Store

LOG = logging.getLogger(__name__)

# Fetches the host has not answered yet; beyond it a query waits (IndexNotReady).
FETCHES_PENDING_MAX = 256


class BlobStore:
    """Sealed buckets kept by the host for this enclave (CCF's LFS)."""

    def __init__(self, key: Callable[[], bytes], send: Callable[[itf.Frame], None]) -> None:
        # The key is drawn at the first store: a node whose indexes fit in memory draws none.
        self._key = key
        self._sealer_: BlobSealer | None = None
        self._send = send
        self._next_request = 0
        self._pending: dict[int, tuple[str, int]] = {}
        self.stored = 0

    @property
    def _sealer(self) -> BlobSealer:
        if self._sealer_ is None:
            self._sealer_ = BlobSealer(self._key())
        return self._sealer_

    def store(self, strategy: str, bucket: int, plaintext: bytes) -> None:
        blob = self._sealer.seal(strategy, bucket, plaintext)
        self._send(itf.IndexBlobStore(strategy=strategy, bucket=bucket, blob=blob))
        self.stored += 1

    def fetch(self, strategy: str, bucket: int) -> bool:
        if len(self._pending) >= FETCHES_PENDING_MAX:
            return False
        self._next_request += 1
        self._pending[self._next_request] = (strategy, bucket)
        self._send(
            itf.IndexBlobFetch(request_id=self._next_request, strategy=strategy, bucket=bucket)
        )
        return True

    def open(self, strategy: str, bucket: int, blob: bytes) -> bytes:
        return self._sealer.open(strategy, bucket, blob)

    def forget(self, strategy: str) -> None:
        # Before the first store there is no blob to disown (and no key yet).
        if self._sealer_ is not None:
            self._sealer_.forget(strategy)

    def answered(self, frame: itf.IndexBlobFetched) -> tuple[str, int] | None:
        """The (strategy, bucket) this answer is for, or None if no request matches."""
        asked = self._pending.pop(frame.request_id, None)
        if asked is None or asked != (frame.strategy, frame.bucket):
            LOG.warning("event=index_blob_unrequested request_id=%d", frame.request_id)
            return None
        return asked


class Indexer:
    """The node's live indexes and what feeds them (see the module docstring)."""

    def __init__(
        self,
        strategies: Sequence[IndexStrategy[Any]],
        *,
        store: Store,
        buckets_in_memory: int,
        key: Callable[[], bytes],
        send: Callable[[itf.Frame], None],
        metrics: dict[str, int] | None = None,
    ) -> None:
        self._store = store
        self.blobs = BlobStore(key, send)
        metrics = metrics if metrics is not None else {}

        def count(name: str) -> None:
            metrics[name] = metrics.get(name, 0) + 1

        env = IndexEnv(buckets_in_memory=buckets_in_memory, blobs=self.blobs, count=count)
        self.indexes: dict[str, LiveIndex] = {}
        self._by_map: dict[str, list[LiveIndex]] = {}
        for strategy in strategies:
            if strategy.name in self.indexes:
                raise ValueError(f"two index strategies are named {strategy.name!r}")
            live = strategy.build(env)
            self.indexes[strategy.name] = live
            self._by_map.setdefault(strategy.map_name, []).append(live)
        # (seqno, map, keys) applied but not yet committed, ascending.
        self._pending: deque[tuple[int, str, frozenset[bytes]]] = deque()
        self.fed_seqno = 0
        for map_name in self._by_map:
            store.add_hook(map_name, self._on_change)

    def __bool__(self) -> bool:
        return bool(self.indexes)

    def _on_change(self, change: MapChange) -> None:
        reason = change.reason
        if reason == "commit" or reason == "apply":
            self._pending.append((change.version, change.map_name, change.keys))
        elif reason == "rollback":
            pending = self._pending
            while pending and pending[-1][0] > change.version:
                pending.pop()
        else:  # restore: a snapshot replaced the state
            self.restart_at(change.version)

    def restart_at(self, seqno: int) -> None:
        """The node's state now starts after a snapshot at `seqno`."""
        if not self.indexes:
            return
        self._pending.clear()
        self.fed_seqno = seqno
        for live in self.indexes.values():
            live.reset(seqno + 1)
        LOG.info("event=index_restart covers_from=%d", seqno + 1)

    def committed(self, seqno: int) -> None:
        """Commit reached `seqno`: hand what it committed to the strategies, in order."""
        if not self.indexes:
            return
        # A joiner may commit entries it has not applied yet (no ledger secret): the
        # indexes only ever claim what they were fed.
        through = min(seqno, self._store.version)
        if through <= self.fed_seqno:
            return
        pending, by_map = self._pending, self._by_map
        while pending and pending[0][0] <= through:
            at, map_name, keys = pending.popleft()
            for live in by_map[map_name]:
                live.handle_committed(at, keys)
        self.fed_seqno = through
        for live in self.indexes.values():
            live.committed_through(through)

    def on_blob_fetched(self, frame: itf.IndexBlobFetched) -> None:
        asked = self.blobs.answered(frame)
        if asked is None:
            return
        live = self.indexes.get(asked[0])
        if live is not None:
            live.on_blob(asked[1], frame.blob)
