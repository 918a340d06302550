"""Index strategies (CCF's `ccf::indexing::Strategy`): what an app asks the node to index.

An app declares a strategy when it is loaded (`app.install_index(SeqnosByKey("records"))`);
every node builds its own live index from the declaration (`build`) and feeds it each
committed transaction that wrote the strategy's map, in seqno order, exactly once
(`charter.enclave_app.indexing.indexer.Indexer`). Handlers query the node's live index
through `ctx.runtime.index(strategy)`.

`SeqnosByKey` is CCF's `SeqnosByKey_Bucketed`: for each key of one map, the seqnos of the
committed transactions that wrote it (removals included). The seqno space is cut into
buckets of `seqnos_per_bucket`; the bucket being filled and the `indexing.buckets_in_memory`
most recently used completed buckets stay in the enclave, older ones are sealed and kept by
the host (`blobs.py`) and fetched back when a query needs them. Unlike CCF's per-key
buckets, a bucket holds every key of its range: the enclave keeps one bit per completed
bucket (did it send the host a blob for it), so a host that pretends a bucket is missing is
caught instead of shortening an answer, and what the enclave holds of offloaded history is
that bitmap: 128 KiB per 2**20 buckets (268 million seqnos with 256 per bucket).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from charter.enclave_app import interface as itf
from charter.enclave_app.indexing.blobs import (
    INDEX_KEY_BYTES_MAX,
    PLAINTEXT_BYTES_MAX,
    decode_bucket,
    encode_bucket,
)
from charter.enclave_app.indexing.errors import (
    IndexBlobRejected,
    IndexNotReady,
    IndexRangeNotCovered,
    IndexRangeTooLarge,
)
from charter.enclave_app.kv import RAW, Codec

LOG = logging.getLogger(__name__)

SEQNOS_PER_BUCKET_MAX = 1 << 20


class BlobHost(Protocol):
    """What a live index asks of the node's blob store (`indexer.BlobStore`)."""

    def store(self, strategy: str, bucket: int, plaintext: bytes) -> None: ...

    def fetch(self, strategy: str, bucket: int) -> bool: ...

    def open(self, strategy: str, bucket: int, blob: bytes) -> bytes: ...

    def forget(self, strategy: str) -> None: ...


@dataclass(frozen=True, slots=True)
class IndexEnv:
    """What the node gives a strategy it builds: its memory bound and the blob store."""

    buckets_in_memory: int
    blobs: BlobHost
    count: Callable[[str], None] = lambda _metric: None


class LiveIndex(ABC):
    """One node's index built from a strategy; fed by the node, queried by handlers."""

    name: str
    map_name: str
    # The index answers for seqnos covers_from..indexed_to.
    covers_from: int
    indexed_to: int

    @abstractmethod
    def handle_committed(self, seqno: int, keys: frozenset[bytes]) -> None:
        """Transaction `seqno` (committed) wrote (or removed) `keys` of `map_name`."""

    @abstractmethod
    def committed_through(self, seqno: int) -> None:
        """Every transaction up to `seqno` has been handed over."""

    @abstractmethod
    def reset(self, covers_from: int) -> None:
        """Forget everything: the node's state now starts after `covers_from - 1`."""

    @abstractmethod
    def on_blob(self, bucket: int, blob: bytes | None) -> None:
        """The host's answer to a fetch of `bucket` (None: it has none)."""


L = TypeVar("L", bound=LiveIndex)


class IndexStrategy(ABC, Generic[L]):
    """A declaration of what to index; immutable, shared by every node of a process."""

    name: str
    map_name: str

    @abstractmethod
    def build(self, env: IndexEnv) -> L: ...


class SeqnosByKey(IndexStrategy["SeqnosByKeyIndex"]):
    """For each key of `map_name`, the seqnos of the committed transactions that wrote it.

    `key_codec` turns the keys a handler queries with into the map's bytes (`U64` for the
    logging sample's integer ids). `name` defaults to `seqnos_by_key.<map>` in the
    characters a host folder name may use.
    """

    def __init__(
        self,
        map_name: str,
        *,
        key_codec: Codec[Any] = RAW,
        seqnos_per_bucket: int = 1024,
        name: str | None = None,
    ) -> None:
        if not 1 <= seqnos_per_bucket <= SEQNOS_PER_BUCKET_MAX:
            raise ValueError(f"seqnos_per_bucket must be in 1..{SEQNOS_PER_BUCKET_MAX}")
        self.map_name = map_name
        self.key_codec = key_codec
        self.seqnos_per_bucket = seqnos_per_bucket
        default = "seqnos_by_key." + "".join(
            c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in map_name.lower()
        )
        self.name = itf.check_strategy_name(name if name is not None else default[:64])

    def build(self, env: IndexEnv) -> SeqnosByKeyIndex:
        return SeqnosByKeyIndex(self, env)


class SeqnosByKeyIndex(LiveIndex):
    """A node's live `SeqnosByKey` (see the module docstring for its memory bound)."""

    def __init__(self, strategy: SeqnosByKey, env: IndexEnv) -> None:
        self.strategy = strategy
        self.name = strategy.name
        self.map_name = strategy.map_name
        self.seqnos_per_bucket = strategy.seqnos_per_bucket
        self.buckets_in_memory = env.buckets_in_memory
        self._blobs = env.blobs
        self._count = env.count
        self.reset(1)

    # ------------------------------------------------------------------ feeding
    def reset(self, covers_from: int) -> None:
        assert covers_from >= 1
        self.covers_from = covers_from
        self.indexed_to = covers_from - 1
        self._current_bucket = -1
        self._current: dict[bytes, list[int]] = {}
        # Completed buckets held in memory, least recently used first.
        self._resident: OrderedDict[int, dict[bytes, list[int]]] = OrderedDict()
        # Completed buckets too large to offload (kept in memory, logged).
        self._pinned: dict[int, dict[bytes, list[int]]] = {}
        # One bit per completed bucket from `_base_bucket` on: set once its sealed blob went
        # to the host (a bucket with no write has none). This is all the enclave keeps of
        # offloaded buckets: 1 bit per `seqnos_per_bucket` seqnos of history.
        self._base_bucket = covers_from // self.seqnos_per_bucket
        self._on_host = bytearray()
        self._offloaded_count = 0
        self._fetching: set[int] = set()
        self._rejected: dict[int, IndexBlobRejected] = {}
        self._blobs.forget(self.name)

    def handle_committed(self, seqno: int, keys: frozenset[bytes]) -> None:
        assert seqno > self.indexed_to, f"{self.name}: seqno {seqno} fed after {self.indexed_to}"
        bucket = seqno // self.seqnos_per_bucket
        if bucket != self._current_bucket:
            self._close_current()
            self._current_bucket = bucket
        current = self._current
        for key in keys:
            if len(key) > INDEX_KEY_BYTES_MAX:
                # Such a key cannot be queried either (the query refuses it).
                LOG.warning("event=index_key_too_long strategy=%s seqno=%d", self.name, seqno)
                continue
            seqnos = current.get(key)
            if seqnos is None:
                current[key] = [seqno]
            else:
                seqnos.append(seqno)
        self.indexed_to = seqno

    def committed_through(self, seqno: int) -> None:
        if seqno <= self.indexed_to:
            return
        self.indexed_to = seqno
        if (self._current_bucket + 1) * self.seqnos_per_bucket - 1 <= seqno:
            self._close_current()  # its range is complete

    def _close_current(self) -> None:
        if self._current:
            self._resident[self._current_bucket] = self._current
            self._evict()
        self._current = {}
        self._current_bucket = -1

    def _evict(self) -> None:
        while len(self._resident) > self.buckets_in_memory:
            bucket, contents = self._resident.popitem(last=False)
            if self._is_on_host(bucket):
                continue  # the host already holds it: dropping is enough
            first = bucket * self.seqnos_per_bucket
            plaintext = encode_bucket(first, self.seqnos_per_bucket, contents)
            if len(plaintext) > PLAINTEXT_BYTES_MAX:
                LOG.error(
                    "event=index_bucket_too_large strategy=%s bucket=%d bytes=%d",
                    self.name,
                    bucket,
                    len(plaintext),
                )
                self._pinned[bucket] = contents
                continue
            # Sealed once per epoch: (epoch, bucket) is the nonce (see blobs.BlobSealer).
            self._blobs.store(self.name, bucket, plaintext)
            self._mark_on_host(bucket)

    def _is_on_host(self, bucket: int) -> bool:
        i = bucket - self._base_bucket
        return 0 <= i < 8 * len(self._on_host) and bool(self._on_host[i >> 3] >> (i & 7) & 1)

    def _mark_on_host(self, bucket: int) -> None:
        i = bucket - self._base_bucket
        assert i >= 0 and not self._is_on_host(bucket)
        if (i >> 3) >= len(self._on_host):
            self._on_host.extend(bytes((i >> 3) + 1 - len(self._on_host)))
        self._on_host[i >> 3] |= 1 << (i & 7)
        self._offloaded_count += 1

    def on_blob(self, bucket: int, blob: bytes | None) -> None:
        self._fetching.discard(bucket)
        if not self._is_on_host(bucket) or bucket in self._resident:
            return  # reset meanwhile, or answered twice
        try:
            if blob is None:
                raise IndexBlobRejected(
                    f"index blob {self.name}/{bucket}: the host has none", reason="Missing"
                )
            plaintext = self._blobs.open(self.name, bucket, blob)
            contents = decode_bucket(
                plaintext, bucket * self.seqnos_per_bucket, self.seqnos_per_bucket
            )
        except IndexBlobRejected as exc:
            LOG.error("event=index_blob_rejected reason=%s %s", exc.reason, exc.message)
            self._count("index_blobs_rejected")
            self._rejected[bucket] = exc
            return
        self._count("index_blobs_fetched")
        self._resident[bucket] = contents
        self._evict()

    # ------------------------------------------------------------------ queries
    @property
    def max_range_buckets(self) -> int:
        return self.buckets_in_memory

    def page_end(self, from_seqno: int) -> int:
        """The last seqno of the widest range from `from_seqno` that one query may ask."""
        first_bucket = from_seqno // self.seqnos_per_bucket
        return (first_bucket + self.max_range_buckets) * self.seqnos_per_bucket - 1

    def get_write_txs_in_range(self, key: Any, from_seqno: int, to_seqno: int) -> list[int]:
        """The seqnos in from_seqno..to_seqno (inclusive) of committed transactions that
        wrote `key` (CCF's name), ascending.

        Raises `IndexNotReady` while buckets come back from the host or when `to_seqno` is
        past what the index has seen committed; `IndexRangeNotCovered` before `covers_from`;
        `IndexRangeTooLarge` past `page_end(from_seqno)`; `IndexBlobRejected` when the host
        handed back a blob this node did not store (asked again next time).
        """
        raw_key = self.strategy.key_codec.encode(key)
        if not 1 <= from_seqno <= to_seqno:
            raise ValueError("a range needs 1 <= from_seqno <= to_seqno")
        if len(raw_key) > INDEX_KEY_BYTES_MAX:
            raise ValueError(f"an indexed key is at most {INDEX_KEY_BYTES_MAX} bytes")
        if from_seqno < self.covers_from:
            raise IndexRangeNotCovered(
                f"this node's index starts at seqno {self.covers_from} (it started from a "
                f"snapshot); ask from {self.covers_from} on",
                covers_from=self.covers_from,
            )
        if to_seqno > self.indexed_to:
            raise IndexNotReady(f"the index has reached seqno {self.indexed_to}, not {to_seqno}")
        if to_seqno > self.page_end(from_seqno):
            raise IndexRangeTooLarge(
                f"one query may reach seqno {self.page_end(from_seqno)} from {from_seqno} "
                f"({self.max_range_buckets} buckets of {self.seqnos_per_bucket})",
                max_range_seqnos=self.page_end(from_seqno) - from_seqno + 1,
            )
        found: list[int] = []
        missing: list[int] = []
        per_bucket = self.seqnos_per_bucket
        for bucket in range(from_seqno // per_bucket, to_seqno // per_bucket + 1):
            rejected = self._rejected.pop(bucket, None)
            if rejected is not None:
                raise rejected
            contents = self._contents(bucket)
            if contents is None:
                if self._is_on_host(bucket):
                    missing.append(bucket)
                continue  # no write at all in that range
            seqnos = contents.get(raw_key)
            if seqnos:
                found.extend(s for s in seqnos if from_seqno <= s <= to_seqno)
        if missing:
            for bucket in missing:
                if bucket not in self._fetching and self._blobs.fetch(self.name, bucket):
                    self._fetching.add(bucket)
            raise IndexNotReady(
                f"{len(missing)} bucket(s) of {self.name} are being fetched from the host"
            )
        return found

    def _contents(self, bucket: int) -> dict[bytes, list[int]] | None:
        if bucket == self._current_bucket:
            return self._current
        contents = self._resident.get(bucket)
        if contents is not None:
            self._resident.move_to_end(bucket)
            return contents
        return self._pinned.get(bucket)

    # ------------------------------------------------------------------ introspection
    @property
    def buckets_held(self) -> int:
        """Buckets in enclave memory: the one being filled, resident and pinned ones."""
        return len(self._resident) + len(self._pinned) + (1 if self._current else 0)

    @property
    def buckets_offloaded(self) -> int:
        return self._offloaded_count
